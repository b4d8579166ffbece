//go:build !unix

package cells

import "github.com/bytecodealliance/wasmtime-go/v39"

// stdio: without FIFOs a cell's stdout and stderr are discarded (WASI's default).
type stdio struct{}

func (r *Runtime) openStdio(*Cell, *wasmtime.WasiConfig) (*stdio, error) { return nil, nil }

func (s *stdio) wait() {}
