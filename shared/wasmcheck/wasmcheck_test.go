package wasmcheck_test

import (
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/cloudskin/cloudskin/shared/wasmcheck"
	wt "github.com/cloudskin/cloudskin/shared/wasmcheck/wasmtest"
)

func TestWasmCheckValid(t *testing.T) {
	rep, err := wasmcheck.Check(wt.Cell(wt.Options{Init: true, Imports: true, MinPages: 2, MaxPages: 40}).Bytes())
	if err != nil {
		t.Fatal(err)
	}
	if rep.ABIVersion != 1 || rep.MemoryMinPages != 2 || rep.MemoryMaxPages == nil || *rep.MemoryMaxPages != 40 {
		t.Fatalf("report %+v", rep)
	}
	var exports []string
	for _, e := range rep.Exports {
		exports = append(exports, e.Name+":"+e.Kind)
	}
	want := []string{"memory:memory", "_initialize:func", "cloudskin_abi_version:func", "cloudskin_alloc:func", "cloudskin_free:func", "cloudskin_init:func", "cloudskin_handle:func"}
	if !slices.Equal(exports, want) {
		t.Fatalf("exports %v, want %v", exports, want)
	}
	wantImports := []wasmcheck.Import{{Module: "cloudskin", Name: "log", Kind: "func"}, {Module: "wasi_snapshot_preview1", Name: "fd_write", Kind: "func"}}
	if !slices.Equal(rep.Imports, wantImports) {
		t.Fatalf("imports %v", rep.Imports)
	}

	// No maximum; an ABI version only running can tell.
	m := wt.Cell(wt.Options{MaxPages: -1, Skip: map[string]bool{"cloudskin_abi_version": true}})
	m.Export("cloudskin_abi_version", wt.KindFunc, m.Func(nil, []byte{wt.I32}, []byte{0, 0x41, 1, 0x41, 0, 0x6a, 0x0b}))
	m.Custom("name", []byte{1, 2, 3})
	rep, err = wasmcheck.Check(m.Bytes())
	if err != nil {
		t.Fatal(err)
	}
	if rep.ABIVersion != 0 || rep.MemoryMaxPages != nil || rep.MemoryMinPages != 1 {
		t.Fatalf("report %+v", rep)
	}
}

// TestGoToolchainCell makes sure a reactor built by the Go toolchain, the
// way cells are built, passes.
func TestWasmGoToolchainCell(t *testing.T) {
	dir := t.TempDir()
	src := `package main

import "unsafe"

//go:wasmimport cloudskin log
func hostLog(level, ptr, n int32)

//go:wasmexport cloudskin_abi_version
func abiVersion() int32 { return 1 }

var bufs = map[uintptr][]byte{}

//go:wasmexport cloudskin_alloc
func alloc(size int32) unsafe.Pointer {
	b := make([]byte, max(size, 1))
	p := unsafe.Pointer(unsafe.SliceData(b))
	bufs[uintptr(p)] = b
	return p
}

//go:wasmexport cloudskin_free
func free(p unsafe.Pointer, size int32) { delete(bufs, uintptr(p)) }

//go:wasmexport cloudskin_handle
func handle(p unsafe.Pointer, n int32) int32 { hostLog(1, int32(uintptr(p)), n); return 0 }

func main() {}
`
	if err := os.WriteFile(filepath.Join(dir, "main.go"), []byte(src), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, "go.mod"), []byte("module cell\n\ngo 1.24\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	out := filepath.Join(dir, "cell.wasm")
	cmd := exec.Command("go", "build", "-buildmode=c-shared", "-o", out, ".")
	cmd.Dir = dir
	cmd.Env = append(os.Environ(), "GOOS=wasip1", "GOARCH=wasm", "GOWORK=off", "GOFLAGS=")
	if msg, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("go build: %v\n%s", err, msg)
	}
	wasm, err := os.ReadFile(out)
	if err != nil {
		t.Fatal(err)
	}
	rep, err := wasmcheck.Check(wasm)
	if err != nil {
		t.Fatalf("a Go-built reactor was refused: %v", err)
	}
	t.Logf("Go-built cell: %d bytes, ABI version %d, %d imports, memory %d pages", len(wasm), rep.ABIVersion, len(rep.Imports), rep.MemoryMinPages)
	if rep.MemoryMinPages == 0 || len(rep.Imports) == 0 {
		t.Fatalf("report %+v", rep)
	}
}

func TestWasmCheckRefuses(t *testing.T) {
	valid := wt.Cell(wt.Options{}).Bytes()
	skip := func(names ...string) []byte {
		s := map[string]bool{}
		for _, n := range names {
			s[n] = true
		}
		return wt.Cell(wt.Options{Skip: s}).Bytes()
	}
	withImport := func(mod, name string, params, results []byte) []byte {
		m := &wt.Module{}
		m.ImportFunc(mod, name, params, results)
		return appendCell(m).Bytes()
	}
	header := valid[:8]
	sec := func(id byte, content ...byte) []byte { return append(slices.Clone(header), wt.Section(id, content)...) }

	tests := []struct {
		name string
		wasm []byte
		want error
		msg  string
	}{
		{"empty", nil, wasmcheck.ErrNotWasm, "header"},
		{"text", []byte("(module)"), wasmcheck.ErrNotWasm, "header"},
		{"elf", []byte("\x7fELF\x02\x01\x01\x00\x00\x00"), wasmcheck.ErrNotWasm, "header"},
		{"magic only", []byte("\x00asm"), wasmcheck.ErrNotWasm, "header"},
		{"version 2", []byte("\x00asm\x02\x00\x00\x00"), wasmcheck.ErrNotWasm, "version"},
		{"component", []byte("\x00asm\x0d\x00\x01\x00"), wasmcheck.ErrNotWasm, "component"},
		{"header only", header, wasmcheck.ErrABI, "missing required export memory, cloudskin_abi_version, cloudskin_alloc, cloudskin_free, cloudskin_handle"},

		{"truncated", valid[:len(valid)-3], wasmcheck.ErrMalformed, "more than the module has left"},
		{"section size past end", sec(1, 0)[:10], wasmcheck.ErrMalformed, ""},
		{"unknown section", sec(14), wasmcheck.ErrMalformed, "unknown section id 14"},
		{"repeated section", append(sec(1, 0), wt.Section(1, []byte{0})...), wasmcheck.ErrMalformed, "out of order"},
		{"out of order", append(sec(3, 0), wt.Section(1, []byte{0})...), wasmcheck.ErrMalformed, "out of order"},
		{"leftover bytes", sec(1, 0, 0), wasmcheck.ErrMalformed, "left over"},
		{"leb too long", sec(1, 0x80, 0x80, 0x80, 0x80, 0x80, 0x00), wasmcheck.ErrMalformed, "too long"},
		{"leb too large", sec(1, 0xff, 0xff, 0xff, 0xff, 0x7f), wasmcheck.ErrMalformed, "too large"},
		{"huge count", sec(1, 0xff, 0xff, 0xff, 0xff, 0x0f), wasmcheck.ErrMalformed, "cannot fit"},
		{"bad value type", sec(1, 1, 0x60, 1, 0x40, 0), wasmcheck.ErrMalformed, "unknown value type"},
		{"gc type", sec(1, 1, 0x5f, 0, 0), wasmcheck.ErrABI, "not a function type"},
		{"type index", sec(3, 1, 0), wasmcheck.ErrMalformed, "type index 0 out of range"},
		{"bad utf8 name", sec(0, 2, 0xc3, 0x28), wasmcheck.ErrMalformed, "UTF-8"},
		{"code count mismatch", codeless(), wasmcheck.ErrMalformed, "bodies"},
		{"export index", exportPast(), wasmcheck.ErrMalformed, "names func 99"},
		{"duplicate export", duplicateExport(), wasmcheck.ErrMalformed, "appears twice"},
		{"memory over 4 GiB", memory([]byte{0, 0x81, 0x80, 0x04}), wasmcheck.ErrMalformed, "65537 pages"},
		{"max below min", memory([]byte{1, 4, 2}), wasmcheck.ErrMalformed, "below minimum"},
		{"memory64", memory([]byte{4, 1}), wasmcheck.ErrABI, "64-bit"},
		{"limits flags", memory([]byte{9, 1}), wasmcheck.ErrMalformed, "limits flags"},

		{"missing exports", skip("cloudskin_alloc", "cloudskin_handle"), wasmcheck.ErrABI, "missing required export cloudskin_alloc, cloudskin_handle"},
		{"missing memory", skip("memory"), wasmcheck.ErrABI, "missing required export memory"},
		{"memory as func", exportAs("memory", wt.KindFunc), wasmcheck.ErrABI, "export memory is a func, want a memory"},
		{"alloc signature", withSig("cloudskin_alloc", []byte{wt.I64}, []byte{wt.I32}), wasmcheck.ErrABI, "export cloudskin_alloc has type (i64) -> (i32), want (i32) -> (i32)"},
		{"free signature", withSig("cloudskin_free", []byte{wt.I32, wt.I32}, []byte{wt.I32}), wasmcheck.ErrABI, "cloudskin_free has type"},
		{"handle signature", withSig("cloudskin_handle", []byte{wt.I32}, []byte{wt.I32}), wasmcheck.ErrABI, "cloudskin_handle has type"},
		{"version signature", withSig("cloudskin_abi_version", nil, []byte{wt.I64}), wasmcheck.ErrABI, "cloudskin_abi_version has type"},
		{"init signature", withSig("cloudskin_init", []byte{wt.I32, wt.I32}, nil), wasmcheck.ErrABI, "cloudskin_init has type"},
		{"initialize signature", withSig("_initialize", nil, []byte{wt.I32}), wasmcheck.ErrABI, "_initialize has type"},
		{"abi version 2", wt.Cell(wt.Options{ABIVersion: 2}).Bytes(), wasmcheck.ErrABI, "returns 2"},
		{"command", command(), wasmcheck.ErrABI, "reactor"},

		{"import env", withImport("env", "abort", nil, nil), wasmcheck.ErrABI, "import env.abort is not allowed"},
		{"first bad import", twoBadImports(), wasmcheck.ErrABI, "import env.first"},
		{"unknown host function", withImport("cloudskin", "exec", nil, nil), wasmcheck.ErrABI, "cloudskin.exec is not a host function"},
		{"host function type", withImport("cloudskin", "now", nil, []byte{wt.I32}), wasmcheck.ErrABI, "cloudskin.now has type () -> (i32), want () -> (i64)"},
		{"unknown wasi function", withImport("wasi_snapshot_preview1", "sock_open", nil, nil), wasmcheck.ErrABI, "not a WASI preview1 function"},
		{"imported memory", importedMemory(), wasmcheck.ErrABI, "import env.memory is a memory"},
		{"imported version", importedVersion(), wasmcheck.ErrABI, "cloudskin_abi_version is an imported function"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			rep, err := wasmcheck.Check(tt.wasm)
			if !errors.Is(err, tt.want) {
				t.Fatalf("got %v (report %+v), want %v", err, rep, tt.want)
			}
			if !strings.Contains(err.Error(), tt.msg) {
				t.Fatalf("error %q does not say %q", err, tt.msg)
			}
		})
	}
}

// appendCell adds a valid cell's functions, memory and exports to m.
func appendCell(m *wt.Module) *wt.Module {
	m.Export("cloudskin_abi_version", wt.KindFunc, m.Func(nil, []byte{wt.I32}, wt.Const(1)))
	m.Export("cloudskin_alloc", wt.KindFunc, m.Func([]byte{wt.I32}, []byte{wt.I32}, wt.Const(8)))
	m.Export("cloudskin_free", wt.KindFunc, m.Func([]byte{wt.I32, wt.I32}, nil, wt.Empty()))
	m.Export("cloudskin_handle", wt.KindFunc, m.Func([]byte{wt.I32, wt.I32}, []byte{wt.I32}, wt.Const(0)))
	m.Memory(1, -1)
	m.Export("memory", wt.KindMemory, 0)
	return m
}

func withSig(name string, params, results []byte) []byte {
	m := wt.Cell(wt.Options{Init: true, Skip: map[string]bool{name: true}})
	var body []byte
	switch {
	case len(results) == 0:
		body = wt.Empty()
	case results[0] == wt.I64:
		body = []byte{0, 0x42, 0, 0x0b}
	default:
		body = wt.Const(0)
	}
	m.Export(name, wt.KindFunc, m.Func(params, results, body))
	return m.Bytes()
}

func exportAs(name string, kind byte) []byte {
	m := wt.Cell(wt.Options{Skip: map[string]bool{name: true}})
	m.Export(name, kind, 0)
	return m.Bytes()
}

func exportPast() []byte {
	m := wt.Cell(wt.Options{})
	m.Export("extra", wt.KindFunc, 99)
	return m.Bytes()
}

func duplicateExport() []byte {
	m := wt.Cell(wt.Options{})
	m.Export("cloudskin_handle", wt.KindFunc, 0)
	return m.Bytes()
}

func memory(limits []byte) []byte {
	m := wt.Cell(wt.Options{})
	m.MemoryLimits(limits)
	return m.Bytes()
}

func command() []byte {
	m := wt.Cell(wt.Options{})
	m.Export("_start", wt.KindFunc, m.Func(nil, nil, wt.Empty()))
	return m.Bytes()
}

func twoBadImports() []byte {
	m := &wt.Module{}
	m.ImportFunc("cloudskin", "log", []byte{wt.I32, wt.I32, wt.I32}, nil)
	m.ImportFunc("env", "first", nil, nil)
	m.ImportFunc("env", "second", nil, nil)
	return appendCell(m).Bytes()
}

func importedMemory() []byte {
	m := &wt.Module{}
	m.ImportMemory("env", "memory", 1)
	return appendCell(m).Bytes()
}

// importedVersion re-exports a host function as cloudskin_abi_version.
func importedVersion() []byte {
	m := &wt.Module{}
	m.ImportFunc("wasi_snapshot_preview1", "sched_yield", nil, []byte{wt.I32})
	m.Export("cloudskin_alloc", wt.KindFunc, m.Func([]byte{wt.I32}, []byte{wt.I32}, wt.Const(8)))
	m.Export("cloudskin_free", wt.KindFunc, m.Func([]byte{wt.I32, wt.I32}, nil, wt.Empty()))
	m.Export("cloudskin_handle", wt.KindFunc, m.Func([]byte{wt.I32, wt.I32}, []byte{wt.I32}, wt.Const(0)))
	m.Memory(1, -1)
	m.Export("memory", wt.KindMemory, 0)
	m.Export("cloudskin_abi_version", wt.KindFunc, 0)
	return m.Bytes()
}

// codeless declares a function without giving its body.
func codeless() []byte {
	header := []byte{0, 'a', 's', 'm', 1, 0, 0, 0}
	out := append(header, wt.Section(1, wt.Vector([]byte{0x60, 0, 0}))...)
	return append(out, wt.Section(3, wt.Vector([]byte{0}))...)
}
