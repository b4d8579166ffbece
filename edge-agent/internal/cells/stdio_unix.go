//go:build unix

package cells

import (
	"bufio"
	"fmt"
	"log/slog"
	"os"
	"strings"
	"time"

	"github.com/bytecodealliance/wasmtime-go/v39"
)

// stdio forwards a cell's WASI stdout and stderr, line by line, into the agent log.
// wasmtime-go can only point them at a path, so both point at a path naming one pipe whose
// read end the agent holds (/proc/self/fd/N of a pipe on Linux, a FIFO elsewhere). The
// forwarder ends at EOF, when the store (holding the write ends) is closed.
type stdio struct {
	f    *os.File
	done chan struct{}
}

// startStdio points the cell's stdout and stderr at path (which must already have a
// reader, f) and starts forwarding. Only with the writers open may the reader start:
// before that it would read EOF.
func startStdio(c *Cell, wasi *wasmtime.WasiConfig, f *os.File, path string) (*stdio, error) {
	if err := wasi.SetStdoutFile(path); err != nil {
		return nil, fmt.Errorf("cells: wasi stdout: %w", err)
	}
	if err := wasi.SetStderrFile(path); err != nil {
		return nil, fmt.Errorf("cells: wasi stderr: %w", err)
	}
	s := &stdio{f: f, done: make(chan struct{})}
	go s.forward(c)
	return s, nil
}

func (s *stdio) forward(c *Cell) {
	defer close(s.done)
	defer s.f.Close()
	br := bufio.NewReaderSize(s.f, maxLogLineBytes)
	for {
		line, err := br.ReadSlice('\n')
		if len(line) > 0 {
			full := err == bufio.ErrBufferFull
			c.logLine(slog.LevelInfo, "cell output", strings.TrimRight(string(line), "\r\n"), full)
		}
		if err != nil && err != bufio.ErrBufferFull {
			return
		}
	}
}

// wait lets the forwarder drain what the closed store wrote; if something still holds
// the write end, it cuts the forwarder off.
func (s *stdio) wait() {
	select {
	case <-s.done:
	case <-time.After(2 * time.Second):
		s.f.Close()
		<-s.done
	}
}
