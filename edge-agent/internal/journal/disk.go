package journal

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"

	"golang.org/x/sys/unix"
)

const lockName = "journal.lock"

// segment is one segment file as the library names it.
type segment struct {
	path  string
	index uint64 // index of its first record
	size  int64
}

// SegmentInfo is one segment file of a journal directory: the index of its
// first record and its size in bytes.
type SegmentInfo struct {
	Index uint64
	Size  int64
}

// ListSegments returns the segment files of a journal directory in index
// order, without opening the journal. A file removed while listing (a
// concurrent truncation) is left out.
func ListSegments(dir string) ([]SegmentInfo, error) {
	segs, err := listSegments(dir)
	out := make([]SegmentInfo, len(segs))
	for i, sg := range segs {
		out[i] = SegmentInfo{Index: sg.index, Size: sg.size}
	}
	return out, err
}

// listSegments returns the directory's segment files in index order. Like
// the library, it takes every file named by 20 decimal digits (index > 0).
func listSegments(dir string) ([]segment, error) {
	des, err := os.ReadDir(dir) // sorted by name, and so by index
	if err != nil {
		return nil, err
	}
	var segs []segment
	for _, de := range des {
		name := de.Name()
		if len(name) != 20 || !de.Type().IsRegular() {
			continue
		}
		index, err := strconv.ParseUint(name, 10, 64)
		if err != nil || index == 0 {
			continue
		}
		info, err := de.Info()
		if errors.Is(err, os.ErrNotExist) {
			continue
		} else if err != nil {
			return nil, err
		}
		segs = append(segs, segment{path: filepath.Join(dir, name), index: index, size: info.Size()})
	}
	return segs, nil
}

// diskUsage returns the bytes in all segment files and in the last one.
func diskUsage(dir string) (total, tail int64, err error) {
	segs, err := listSegments(dir)
	if err != nil {
		return 0, 0, err
	}
	for _, s := range segs {
		total += s.size
	}
	if len(segs) > 0 {
		tail = segs[len(segs)-1].size
	}
	return total, tail, nil
}

// removeStaleTemp removes the NNN.START.TEMP / NNN.END.TEMP files that a
// crash during the library's TruncateFront can leave behind. Such a file was
// never renamed into place, so the truncation it belonged to never happened.
func removeStaleTemp(dir string) ([]string, error) {
	des, err := os.ReadDir(dir)
	if err != nil {
		return nil, err
	}
	var removed []string
	for _, de := range des {
		name := de.Name()
		if len(name) < 20 || !strings.HasSuffix(name, ".TEMP") {
			continue
		}
		if _, err := strconv.ParseUint(name[:20], 10, 64); err != nil {
			continue
		}
		if err := os.Remove(filepath.Join(dir, name)); err != nil {
			return removed, err
		}
		removed = append(removed, name)
	}
	return removed, nil
}

// lockDir takes an exclusive advisory lock on the journal directory, so two
// processes (or two Opens in one process) never write the same log.
func lockDir(dir string) (*os.File, error) {
	f, err := os.OpenFile(filepath.Join(dir, lockName), os.O_CREATE|os.O_RDWR, 0o640)
	if err != nil {
		return nil, err
	}
	if err := unix.Flock(int(f.Fd()), unix.LOCK_EX|unix.LOCK_NB); err != nil {
		f.Close()
		if errors.Is(err, unix.EWOULDBLOCK) {
			return nil, fmt.Errorf("%w: %s", ErrLocked, dir)
		}
		return nil, fmt.Errorf("journal: lock %s: %w", dir, err)
	}
	return f, nil
}

// syncDir makes file creations, renames and removals in dir durable; the
// library fsyncs segment files but never their directory.
func syncDir(dir string) error {
	d, err := os.Open(dir)
	if err != nil {
		return err
	}
	err = d.Sync()
	if cerr := d.Close(); err == nil {
		err = cerr
	}
	return err
}

// freeBytes returns the space an unprivileged writer may still use on the
// file system that holds dir.
func freeBytes(dir string) (int64, error) {
	var st unix.Statfs_t
	if err := unix.Statfs(dir, &st); err != nil {
		return 0, err
	}
	return int64(st.Bavail) * int64(st.Bsize), nil
}
