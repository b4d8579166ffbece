// Command wat2wasm assembles a WebAssembly text file into a validated binary module; the
// cells make target uses it for the hand-written cells.
//
//	wat2wasm -o out.wasm in.wat
package main

import (
	"flag"
	"fmt"
	"os"
	"path/filepath"

	"github.com/bytecodealliance/wasmtime-go/v39"
)

func main() {
	out := flag.String("o", "", "output `file` (required)")
	flag.Parse()
	if *out == "" || flag.NArg() != 1 {
		fmt.Fprintln(os.Stderr, "usage: wat2wasm -o out.wasm in.wat")
		os.Exit(2)
	}
	if err := assemble(flag.Arg(0), *out); err != nil {
		fmt.Fprintln(os.Stderr, "wat2wasm:", err)
		os.Exit(1)
	}
}

func assemble(in, out string) error {
	wat, err := os.ReadFile(in)
	if err != nil {
		return err
	}
	wasm, err := wasmtime.Wat2Wasm(string(wat))
	if err != nil {
		return fmt.Errorf("%s: %w", in, err)
	}
	if err := wasmtime.ModuleValidate(wasmtime.NewEngine(), wasm); err != nil {
		return fmt.Errorf("%s: invalid module: %w", in, err)
	}
	if err := os.MkdirAll(filepath.Dir(out), 0o755); err != nil {
		return err
	}
	return os.WriteFile(out, wasm, 0o644)
}
