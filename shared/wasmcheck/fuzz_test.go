package wasmcheck_test

import (
	"errors"
	"testing"

	"github.com/cloudskin/cloudskin/shared/wasmcheck"
	wt "github.com/cloudskin/cloudskin/shared/wasmcheck/wasmtest"
)

// FuzzCheck holds Check to its promise: any input gives a report or one of
// the three errors, never a panic, and a report only for sane memory.
func FuzzCheck(f *testing.F) {
	f.Add([]byte{})
	f.Add([]byte("\x00asm\x01\x00\x00\x00"))
	f.Add(wt.Cell(wt.Options{}).Bytes())
	f.Add(wt.Cell(wt.Options{Init: true, Imports: true, MaxPages: -1}).Bytes())
	f.Add(wt.Cell(wt.Options{ABIVersion: -7, MinPages: 65536}).Bytes())
	f.Add(importedMemory())
	f.Add(twoBadImports())
	f.Add(codeless())
	f.Add(memory([]byte{5, 1, 2}))
	f.Fuzz(func(t *testing.T, wasm []byte) {
		rep, err := wasmcheck.Check(wasm)
		if err != nil {
			if !errors.Is(err, wasmcheck.ErrNotWasm) && !errors.Is(err, wasmcheck.ErrMalformed) && !errors.Is(err, wasmcheck.ErrABI) {
				t.Fatalf("untyped error %v", err)
			}
			if rep != nil {
				t.Fatal("a report with an error")
			}
			return
		}
		if rep.MemoryMinPages > wasmcheck.MaxMemoryPages || (rep.MemoryMaxPages != nil && *rep.MemoryMaxPages < rep.MemoryMinPages) {
			t.Fatalf("accepted memory %d..%v", rep.MemoryMinPages, rep.MemoryMaxPages)
		}
		if rep.ABIVersion != 0 && rep.ABIVersion != wasmcheck.ABIVersion {
			t.Fatalf("accepted ABI version %d", rep.ABIVersion)
		}
	})
}
