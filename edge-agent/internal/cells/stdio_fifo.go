//go:build unix && !linux

package cells

import (
	"fmt"
	"os"
	"path/filepath"
	"syscall"

	"github.com/bytecodealliance/wasmtime-go/v39"
)

// openStdio uses a FIFO, unlinked once both ends are open.
func (r *Runtime) openStdio(c *Cell, wasi *wasmtime.WasiConfig) (*stdio, error) {
	path := filepath.Join(r.stdioDir, fmt.Sprintf("cell-%d.fifo", r.cellSeq.Add(1)))
	if err := syscall.Mkfifo(path, 0o600); err != nil {
		return nil, fmt.Errorf("cells: stdout fifo: %w", err)
	}
	defer os.Remove(path)
	// Non-blocking so the open does not wait for a writer.
	f, err := os.OpenFile(path, os.O_RDONLY|syscall.O_NONBLOCK, 0)
	if err != nil {
		return nil, fmt.Errorf("cells: stdout fifo: %w", err)
	}
	s, err := startStdio(c, wasi, f, path)
	if err != nil {
		f.Close()
	}
	return s, err
}
