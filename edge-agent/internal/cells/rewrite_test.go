package cells

import (
	"bytes"
	"errors"
	"fmt"
	"slices"
	"strings"
	"testing"

	"github.com/bytecodealliance/wasmtime-go/v39"
)

// scanAll uses most kinds of instruction the code scan must step over without taking them
// for a table change: SIMD with lanes and memargs, bulk memory, br_table, typed select,
// call_indirect, tail calls, references, a block typed by a type index, sign extension,
// saturating truncation.
const scanAll = `
  (type $pair (func (param i32) (result i32 i32)))
  (table $t 2 funcref)
  (elem (table $t) (i32.const 0) func $noop)
  (func $noop)
  (func $pair (type $pair) (local.get 0) (local.get 0))
  (func (export "busy") (param $x i32) (result i32) (local $v v128) (local $r funcref)
    (local.set $v (v128.const i32x4 1 2 3 4))
    (local.set $v (i8x16.shuffle 0 1 2 3 4 5 6 7 8 9 10 11 12 13 14 15 (local.get $v) (local.get $v)))
    (local.set $v (i32x4.replace_lane 2 (local.get $v) (i32.const 9)))
    (local.set $v (v128.load32_lane offset=4 1 (i32.const 0) (local.get $v)))
    (v128.store offset=16 align=8 (i32.const 0) (local.get $v))
    (memory.copy (i32.const 64) (i32.const 0) (i32.const 16))
    (memory.fill (i32.const 128) (i32.const 0) (i32.const 8))
    (local.set $r (ref.func $noop))
    (drop (ref.is_null (local.get $r)))
    (drop (table.get $t (i32.const 0)))
    (drop (table.size $t))
    (call_indirect $t (i32.const 0))
    (block $a (block $b (br_table $a $b $a (local.get $x))))
    (drop (select (result i64) (i64.const -1) (i64.const 0x7fffffffffffffff) (local.get $x)))
    (drop (i32.extend8_s (i32.trunc_sat_f64_s (f64.const 1e300))))
    (drop (f32.const -0.5))
    (local.get $x) (block (type $pair) (call $pair)) (drop) (drop)
    (drop (i32.reinterpret_f32 (f32x4.extract_lane 3 (local.get $v))))
    (return_call $pair2 (local.get $x)))
  (func $pair2 (param i32) (result i32) (local.get 0))
`

func TestRewrite(t *testing.T) {
	engine := wasmtime.NewEngine()
	tests := []struct {
		name    string
		wat     string
		bin     func([]byte) []byte // edits the assembled module
		globals string              // "index:kind=value …" of the exports added, in order
		refusal string              // part of the refusal, "" for none
		same    bool                // returned unchanged
		imports []wasmtime.AsExtern // to instantiate with
	}{
		{name: "no globals", wat: `(module (memory (export "memory") 1))`, same: true},
		{name: "immutable globals only", wat: `(module (global i32 (i32.const 1)) (global (export "g") i64 (i64.const 2)))`, same: true},
		{name: "no export section", wat: `(module (global (mut i32) (i32.const 100)) (global (mut i64) (i64.const 101))
			(func $s) (start $s) (func (drop (i32.const 0))))`,
			globals: "0:i32=100 1:i64=101"},
		{name: "imported globals come first",
			wat: `(module (import "env" "a" (global i32)) (import "env" "f" (func)) (import "env" "b" (global (mut i64)))
				(global (mut i32) (i32.const 102)) (global f32 (f32.const 0)) (global (mut f64) (f64.const 104))
				(export "f" (func 0)))`,
			globals: "2:i32=102 4:f64=104"},
		{name: "already exported", wat: `(module (global $g (export "g") (mut i32) (i32.const 100)) (global (mut f32) (f32.const 101))
			(export "h" (global $g)))`,
			globals: "0:i32=100 1:f32=101"},
		{name: "custom sections kept in place", wat: `(module (global (mut i32) (i32.const 100)) (func))`,
			bin: func(b []byte) []byte { // custom sections at the front, before the code, at the end
				custom := []byte{0, 6, 4, 'n', 'o', 't', 'e', 0}
				code := bytes.LastIndex(b, []byte{10, 4, 1, 2, 0, 0x0b})
				out := append(slices.Clone(b[:8]), custom...)
				out = append(out, b[8:code]...)
				out = append(out, custom...)
				out = append(out, b[code:]...)
				return append(out, custom...)
			},
			globals: "0:i32=100"},
		{name: "v128 global", wat: `(module (global (mut i32) (i32.const 100)) (global (mut v128) (v128.const i64x2 0 0)))`,
			globals: "0:i32=100", refusal: "global 1 is a mutable v128"},
		{name: "funcref global", wat: `(module (global (mut funcref) (ref.null func)) (global (mut i64) (i64.const 101)))`,
			globals: "1:i64=101", refusal: "global 0 is a mutable funcref"},
		{name: "code of every kind", wat: `(module (memory 1) (global (mut i32) (i32.const 100))` + scanAll + `)`, globals: "0:i32=100"},
		{name: "table.fill", wat: `(module (table $t 1 funcref) (global (mut i32) (i32.const 100))
			(func (table.fill $t (i32.const 0) (ref.null func) (i32.const 1))))`,
			globals: "0:i32=100", refusal: "function 0 changes a table (table.fill"},
		{name: "table.copy after imports", wat: `(module (import "env" "f" (func)) (table $t 2 funcref)
			(func) (func (table.copy (i32.const 0) (i32.const 1) (i32.const 1))))`,
			same: true, refusal: "function 2 changes a table (table.copy"},
		{name: "not wasm", bin: func([]byte) []byte { return []byte("\x00asm\x0d\x00\x01\x00") }, same: true, refusal: "not a WebAssembly 1.0 module"},
		{name: "section past the end", wat: `(module (global (mut i32) (i32.const 1)))`,
			bin: func(b []byte) []byte { return b[:len(b)-1] }, same: true, refusal: "runs past the end"},
		{name: "sections out of order", wat: `(module (global (mut i32) (i32.const 1)) (func))`,
			bin: func(b []byte) []byte { return append(b, 6, 1, 0) }, same: true, refusal: "out of order"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var in []byte
			if tt.wat != "" {
				in = wasmOf(t, tt.wat)
			}
			if tt.bin != nil {
				in = tt.bin(in)
			}
			out, info, err := rewriteModule(in)
			if err != nil {
				t.Fatal(err)
			}
			if tt.refusal == "" && info.refusal != "" || !strings.Contains(info.refusal, tt.refusal) {
				t.Fatalf("refusal %q, want %q", info.refusal, tt.refusal)
			}
			if tt.same {
				if !bytes.Equal(out, in) {
					t.Fatal("module changed")
				}
				return
			}
			if err := wasmtime.ModuleValidate(engine, in); err != nil {
				t.Fatalf("test module does not validate: %v", err)
			}
			if err := wasmtime.ModuleValidate(engine, out); err != nil {
				t.Fatalf("rewritten module does not validate: %v", err)
			}
			mod, err := wasmtime.NewModule(engine, out)
			if err != nil {
				t.Fatal(err)
			}
			defer mod.Close()
			// The original exports come first and unchanged.
			var want, got []string
			orig, _ := wasmtime.NewModule(engine, in)
			for _, e := range orig.Exports() {
				want = append(want, e.Name())
			}
			orig.Close()
			for _, e := range mod.Exports()[:len(want)] {
				got = append(got, e.Name())
			}
			if !slices.Equal(got, want) {
				t.Fatalf("exports %v, want %v first", got, want)
			}
			store := wasmtime.NewStore(engine)
			defer store.Close()
			inst, err := wasmtime.NewInstance(store, mod, instantiateImports(t, store, mod))
			if err != nil {
				t.Fatal(err)
			}
			var values []string
			for _, g := range info.globals {
				ext := inst.GetExport(store, globalExportName(g.index))
				if ext == nil || ext.Global() == nil {
					t.Fatalf("global %d not exported", g.index)
				}
				v := ext.Global().Get(store)
				values = append(values, fmt.Sprintf("%d:%s=%v", g.index, g.kind, v.Get()))
			}
			if s := strings.Join(values, " "); s != tt.globals {
				t.Fatalf("exported globals %q, want %q", s, tt.globals)
			}
		})
	}
}

// instantiateImports makes a value for every import of mod: globals of their type, zero
// valued; functions that do nothing.
func instantiateImports(t *testing.T, store *wasmtime.Store, mod *wasmtime.Module) []wasmtime.AsExtern {
	t.Helper()
	var out []wasmtime.AsExtern
	for _, imp := range mod.Imports() {
		switch ty := imp.Type(); {
		case ty.FuncType() != nil:
			out = append(out, wasmtime.NewFunc(store, ty.FuncType(), func(*wasmtime.Caller, []wasmtime.Val) ([]wasmtime.Val, *wasmtime.Trap) {
				return nil, nil
			}))
		case ty.GlobalType() != nil:
			gt := ty.GlobalType()
			zero := map[wasmtime.ValKind]wasmtime.Val{wasmtime.KindI32: wasmtime.ValI32(0), wasmtime.KindI64: wasmtime.ValI64(0)}[gt.Content().Kind()]
			g, err := wasmtime.NewGlobal(store, gt, zero)
			if err != nil {
				t.Fatal(err)
			}
			out = append(out, g)
		default:
			t.Fatalf("import %s of an unexpected kind", imp.Module())
		}
	}
	return out
}

func TestRewriteRefusesReservedNames(t *testing.T) {
	wasm := wasmOf(t, `(module (global (export "cloudskin:global:0") (mut i32) (i32.const 0)))`)
	if _, _, err := rewriteModule(wasm); !errors.Is(err, ErrABI) || !strings.Contains(err.Error(), "reserved") {
		t.Fatalf("rewrite: %v", err)
	}
	r := newRuntime(t, "")
	if _, err := r.Load(wasm, digestOf(wasm)); !errors.Is(err, ErrABI) || !strings.Contains(err.Error(), `"cloudskin:global:0"`) {
		t.Fatalf("Load: %v", err)
	}
}

// TestRewriteExampleCells: the Go example cells keep their 8 mutable globals (the Go
// runtime's stack pointer and friends) and change no table, so they can move.
func TestRewriteExampleCells(t *testing.T) {
	for _, name := range []string{"aggregator", "minimal"} {
		_, info, err := rewriteModule(exampleCell(t, name))
		if err != nil || info.refusal != "" || len(info.globals) == 0 {
			t.Fatalf("%s: %+v, %v", name, info, err)
		}
		t.Logf("%s: %d mutable globals", name, len(info.globals))
	}
}
