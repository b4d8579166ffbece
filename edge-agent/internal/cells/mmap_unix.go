//go:build unix

package cells

import (
	"fmt"
	"syscall"
)

// mapAbove is the size from which mapping a file beats reading it (mmap and munmap cost
// more syscalls and a TLB flush; copying costs per byte).
const mapAbove = 256 << 10

// withContents calls fn with the file's contents, valid only during the call: a read-only
// mapping of a large file, a copy of a small one. Raw syscalls, because os.File registers
// every file with the poller and reads a small file in several calls: on the cold-start
// path of a small cell that was a fifth of the time.
func withContents(path string, fn func([]byte)) error {
	fd, err := syscall.Open(path, syscall.O_RDONLY|syscall.O_CLOEXEC, 0)
	if err != nil {
		return &pathError{path, err}
	}
	defer syscall.Close(fd)
	var st syscall.Stat_t
	if err := syscall.Fstat(fd, &st); err != nil {
		return &pathError{path, err}
	}
	if st.Size < mapAbove {
		b := make([]byte, st.Size)
		n, err := syscall.Pread(fd, b, 0)
		if err != nil {
			return &pathError{path, err}
		}
		if int64(n) != st.Size {
			return fmt.Errorf("%s: short read (%d of %d bytes)", path, n, st.Size)
		}
		fn(b)
		return nil
	}
	b, err := syscall.Mmap(fd, 0, int(st.Size), syscall.PROT_READ, syscall.MAP_SHARED)
	if err != nil {
		return &pathError{path, err}
	}
	defer syscall.Munmap(b)
	fn(b)
	return nil
}

type pathError struct {
	path string
	err  error
}

func (e *pathError) Error() string { return e.path + ": " + e.err.Error() }
func (e *pathError) Unwrap() error { return e.err }
