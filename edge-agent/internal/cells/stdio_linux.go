package cells

import (
	"fmt"
	"os"

	"github.com/bytecodealliance/wasmtime-go/v39"
)

// openStdio uses a pipe: wasmtime opens the write end again through /proc/self/fd, which
// is much cheaper than creating a FIFO per cell; the agent then drops its own write end so
// that the reader sees EOF once the store is closed.
func (r *Runtime) openStdio(c *Cell, wasi *wasmtime.WasiConfig) (*stdio, error) {
	pr, pw, err := os.Pipe()
	if err != nil {
		return nil, fmt.Errorf("cells: stdout pipe: %w", err)
	}
	defer pw.Close()
	s, err := startStdio(c, wasi, pr, fmt.Sprintf("/proc/self/fd/%d", pw.Fd()))
	if err != nil {
		pr.Close()
	}
	return s, err
}
