package cells

import (
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"hash/crc32"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"

	"github.com/bytecodealliance/wasmtime-go/v39"
)

// repoRoot is the module root, three levels above this package.
const repoRoot = "../../.."

var (
	examplesMu sync.Mutex
	examples   = map[string][]byte{}
)

// exampleCell returns an example cell from cells/ as `make cells` builds it into bin/cells/;
// without that build it builds the cell itself (Go) or assembles it (WAT), so the tests
// never skip.
func exampleCell(t testing.TB, name string) []byte {
	t.Helper()
	examplesMu.Lock()
	defer examplesMu.Unlock()
	if b, ok := examples[name]; ok {
		return b
	}
	b, err := os.ReadFile(filepath.Join(repoRoot, "bin/cells", name+".wasm"))
	if errors.Is(err, os.ErrNotExist) {
		if wat, werr := os.ReadFile(filepath.Join(repoRoot, "cells", name+".wat")); werr == nil {
			b, err = wasmtime.Wat2Wasm(string(wat))
		} else {
			out := filepath.Join(t.TempDir(), name+".wasm")
			cmd := exec.Command("go", "build", "-buildmode=c-shared", "-trimpath", "-ldflags=-s -w", "-o", out, "./cells/"+name)
			cmd.Dir = repoRoot
			cmd.Env = append(os.Environ(), "GOOS=wasip1", "GOARCH=wasm")
			if msg, berr := cmd.CombinedOutput(); berr != nil {
				t.Fatalf("build cell %s (or run make cells): %v\n%s", name, berr, msg)
			}
			b, err = os.ReadFile(out)
		}
	}
	if err != nil {
		t.Fatalf("example cell %s: %v", name, err)
	}
	examples[name] = b
	return b
}

// readings are JSON readings of sensors t0…t(sensors-1), batch by batch, for the aggregator.
func readings(batches, perBatch, sensors, seed int) [][]Record {
	out := make([][]Record, batches)
	x := uint32(seed)*2654435761 + 1
	for b := range out {
		for i := range perBatch {
			x ^= x << 13
			x ^= x >> 17
			x ^= x << 5
			out[b] = append(out[b], Record{
				Offset:  uint64(b*perBatch + i),
				TimeNS:  int64(1_700_000_000_000_000_000 + b*perBatch + i),
				Topic:   "site/a/readings",
				Payload: fmt.Appendf(nil, `{"sensor":"t%d","value":%d.%d}`, int(x)%sensors, int(x>>8)%60-20, x%10),
			})
		}
	}
	return out
}

// feed hands each batch to the cell and returns what it emitted for them.
func feed(t testing.TB, c *Cell, col *collector, batches [][]Record) []string {
	t.Helper()
	before := len(col.all())
	for i, b := range batches {
		if err := c.Handle(context.Background(), "in", b); err != nil {
			t.Fatalf("batch %d: %v", i, err)
		}
	}
	return col.all()[before:]
}

// encode serializes a snapshot and reads it back, as a migration does over the network.
func encode(t testing.TB, s *Snapshot) []byte {
	t.Helper()
	var buf bytes.Buffer
	n, err := s.WriteTo(&buf)
	if err != nil || n != int64(buf.Len()) {
		t.Fatalf("WriteTo: %d, %v (buffer %d)", n, err, buf.Len())
	}
	return buf.Bytes()
}

// memoryOf decompresses a snapshot's memory, as Restore does.
func memoryOf(t testing.TB, s *Snapshot) []byte {
	t.Helper()
	mem := make([]byte, s.MemoryBytes())
	if err := decompressPages(mem, s); err != nil {
		t.Fatal(err)
	}
	return mem
}

// migrate moves a cell the way two agents would: snapshot, encode, then in a new Runtime
// with its own engine (and a compiled-code cache, warm or not), decode and restore.
func migrate(t *testing.T, c *Cell, wasm []byte, cacheDir string, cached bool, spec Spec, out Output) *Cell {
	t.Helper()
	s, err := c.Snapshot()
	if err != nil {
		t.Fatalf("snapshot: %v", err)
	}
	b := encode(t, s)
	c.Close()

	r := newRuntime(t, cacheDir)
	var m *Module
	if cached {
		m, err = r.LoadCached(digestOf(wasm))
	} else {
		m, err = r.Load(wasm, digestOf(wasm))
	}
	if err != nil {
		t.Fatalf("load on the target: %v", err)
	}
	t.Cleanup(m.Close)
	if m.FromCache != cached {
		t.Fatalf("FromCache = %v, want %v", m.FromCache, cached)
	}
	got, err := ReadSnapshot(bytes.NewReader(b), 256<<20)
	if err != nil {
		t.Fatalf("ReadSnapshot: %v", err)
	}
	moved, err := r.Restore(context.Background(), m, spec, out, got)
	if err != nil {
		t.Fatalf("restore: %v", err)
	}
	t.Cleanup(moved.Close)
	if ev := moved.Events(); len(ev) != 1 || ev[0].Kind != EventRestored {
		t.Fatalf("events of the restored cell: %+v", ev)
	}
	return moved
}

// checkMoves feeds a cell `before` batches, moves it, feeds it `after`, and compares what it
// emitted for `after` with a cell that got every batch without moving.
func checkMoves(t *testing.T, wasm []byte, spec Spec, before, after [][]Record) {
	t.Helper()
	cacheDir := t.TempDir() // the source's: the first run fills it, the second uses it
	for _, cached := range []bool{false, true} {
		t.Run(fmt.Sprintf("from cache %v", cached), func(t *testing.T) {
			r := newRuntime(t, cacheDir)
			m, err := r.Load(wasm, digestOf(wasm))
			if err != nil {
				t.Fatal(err)
			}
			t.Cleanup(m.Close)

			var stayCol collector
			stay := start(t, r, m, spec, stayCol.out)
			feed(t, stay, &stayCol, before)
			want := feed(t, stay, &stayCol, after)

			var col collector
			c := start(t, r, m, spec, col.out)
			if got, first := feed(t, c, &col, before), stayCol.all()[:len(stayCol.all())-len(want)]; strings.Join(got, "\n") != strings.Join(first, "\n") {
				t.Fatal("two fresh cells disagree before the move: the cell is not deterministic")
			}
			var movedCol collector
			target := t.TempDir() // another node: compiles the module itself …
			if cached {
				target = cacheDir // … or the same node, after a restart, from its cache
			}
			moved := migrate(t, c, wasm, target, cached, spec, movedCol.out)
			got := feed(t, moved, &movedCol, after)
			if len(want) == 0 {
				t.Fatal("the cell emitted nothing to compare")
			}
			if strings.Join(got, "\n") != strings.Join(want, "\n") {
				t.Fatalf("after the move the cell emitted\n%s\nwithout moving\n%s", strings.Join(got, "\n"), strings.Join(want, "\n"))
			}
			if st := moved.Stats(); !st.Running || st.Invocations != uint64(len(after)) {
				t.Fatalf("stats of the moved cell: %+v", st)
			}
		})
	}
}

func TestSnapshotMovesTheAggregator(t *testing.T) {
	rs := readings(30, 40, 25, 1)
	spec := Spec{ID: "agg", Outputs: []string{"aggregates"}}
	checkMoves(t, exampleCell(t, "aggregator"), spec, rs[:17], rs[17:])
}

func TestSnapshotMovesTheWATCell(t *testing.T) {
	// cells/minimal.wat: a hand-written cell without WASI; its state is its bump allocator.
	checkMoves(t, exampleCell(t, "minimal"), Spec{ID: "min", Outputs: []string{"count"}}, readings(5, 3, 2, 2), readings(4, 7, 2, 3))
}

// statefulWAT keeps its state in every kind of global it can have and in memory: a count
// of records (i64), sums (f32, f64), a global it already exports itself (i32), a page it
// grows per batch, and a data segment it wipes on its first batch. Each batch emits all of
// it, so a restore that misses any part shows in the output.
const statefulWAT = `(module
  (import "cloudskin" "emit" (func $emit (param i32 i32 i32 i32) (result i32)))
  (memory (export "memory") 2)
  (global $bump (mut i32) (i32.const 1024))
  (global $n (mut i64) (i64.const 0))
  (global $f (mut f32) (f32.const 0))
  (global $d (mut f64) (f64.const 0))
  (global $calls (export "calls") (mut i32) (i32.const 7))
  (global $k i32 (i32.const 3))
  (data (i32.const 16) "state")
  (data (i32.const 65536) "X")
  (func (export "cloudskin_abi_version") (result i32) (i32.const 1))
  (func (export "cloudskin_alloc") (param $n i32) (result i32)
    (local $p i32)
    (local.set $p (global.get $bump))
    (global.set $bump (i32.add (global.get $bump) (local.get $n)))
    (local.get $p))
  (func (export "cloudskin_free") (param i32 i32) (global.set $bump (i32.const 1024)))
  (func (export "cloudskin_handle") (param $p i32) (param $len i32) (result i32)
    (local $count i32) (local $page i32)
    (local.set $count (i32.load (i32.add (i32.add (local.get $p) (i32.const 6))
                                         (i32.load16_u (i32.add (local.get $p) (i32.const 4))))))
    (global.set $n (i64.add (global.get $n) (i64.extend_i32_u (local.get $count))))
    (global.set $f (f32.add (global.get $f) (f32.const 0.1)))
    (global.set $d (f64.add (global.get $d) (f64.div (f64.const 1) (f64.convert_i32_u (local.get $count)))))
    (global.set $calls (i32.add (global.get $calls) (global.get $k)))
    ;; a new page per batch, holding the count; the sum over the pages so far goes out
    (local.set $page (memory.grow (i32.const 1)))
    (i32.store (i32.mul (local.get $page) (i32.const 65536)) (local.get $count))
    (i32.store (i32.const 32) (i32.add (i32.load (i32.const 32)) (local.get $count)))
    (i64.store (i32.const 40) (global.get $n))
    (f32.store (i32.const 48) (global.get $f))
    (f64.store (i32.const 56) (global.get $d))
    (i32.store (i32.const 64) (global.get $calls))
    (i32.store (i32.const 68) (memory.size))
    (i32.store8 (i32.const 72) (i32.load8_u (i32.const 65536)))
    (i32.store8 (i32.const 65536) (i32.const 0))
    (call $emit (i32.const 16) (i32.const 5) (i32.const 32) (i32.const 41)))
)`

func TestSnapshotMovesEveryKindOfState(t *testing.T) {
	wasm := wasmOf(t, statefulWAT)
	checkMoves(t, wasm, Spec{ID: "st", Outputs: []string{"state"}}, readings(3, 5, 2, 4), readings(3, 2, 2, 5))
}

func TestSnapshotRoundTrip(t *testing.T) {
	r := newRuntime(t, "")
	m := load(t, r, statefulWAT)
	c := start(t, r, m, Spec{Outputs: []string{"state"}}, nil)
	var col collector
	feed(t, c, &col, readings(3, 5, 2, 6))
	s, err := c.Snapshot()
	if err != nil {
		t.Fatal(err)
	}
	if s.Pages != 5 || s.MemoryBytes() != 5*pageSize || s.storedPages() != 4 || s.Digest != m.Digest {
		t.Fatalf("snapshot: %d pages, %d stored, digest %s", s.Pages, s.storedPages(), s.Digest)
	}
	// Globals by index: $bump 0, $n 1, $f 2, $d 3, $calls 4 ($k is immutable).
	var idx []uint32
	for _, g := range s.globals {
		idx = append(idx, g.index)
	}
	if fmt.Sprint(idx) != "[0 1 2 3 4]" || s.globals[1].bits != 15 || s.globals[4].bits != 7+3*3 {
		t.Fatalf("globals %+v", s.globals)
	}
	got, err := ReadSnapshot(bytes.NewReader(encode(t, s)), 1<<30)
	if err != nil {
		t.Fatal(err)
	}
	if fmt.Sprint(got.globals) != fmt.Sprint(s.globals) || got.Pages != s.Pages || fmt.Sprint(got.present) != fmt.Sprint(s.present) ||
		!bytes.Equal(memoryOf(t, got), memoryOf(t, s)) || got.Digest != s.Digest {
		t.Fatal("snapshot changed in a round trip")
	}
	mem := memoryOf(t, s)
	if string(mem[16:21]) != "state" || binary.LittleEndian.Uint32(mem[32:]) != 15 || mem[65536] != 0 || binary.LittleEndian.Uint32(mem[4*pageSize:]) != 5 {
		t.Fatalf("memory does not hold the state: % x", mem[:80])
	}
	if ev := c.Events(); ev[len(ev)-1].Kind != EventSnapshot {
		t.Fatalf("events %+v", ev)
	}
	// The snapshot is a copy: the cell runs on and the snapshot does not change.
	feed(t, c, &col, readings(1, 1, 1, 7))
	if again, _ := c.Snapshot(); bytes.Equal(memoryOf(t, again), mem) {
		t.Fatal("a later snapshot equals an earlier one")
	}
	if !bytes.Equal(memoryOf(t, s), mem) {
		t.Fatal("snapshot changed while the cell ran on")
	}
	// A snapshot is followed by whatever the stream carries next, untouched.
	stream := append(encode(t, s), "next"...)
	rd := bytes.NewReader(stream)
	if _, err := ReadSnapshot(rd, 1<<30); err != nil || rd.Len() != 4 {
		t.Fatalf("ReadSnapshot read %d bytes too many: %v", 4-rd.Len(), err)
	}
}

func TestSnapshotRefusals(t *testing.T) {
	ctx := context.Background()
	r := newRuntime(t, "")
	m := load(t, r, statefulWAT)
	spec := Spec{ID: "st", Outputs: []string{"state"}}

	t.Run("dead cell", func(t *testing.T) {
		mt := load(t, r, cellWAT{Handle: `unreachable`}.String())
		c := start(t, r, mt, Spec{}, nil)
		if err := c.Handle(ctx, "in", records(1)); !errors.Is(err, ErrTrap) {
			t.Fatalf("Handle: %v", err)
		}
		if _, err := c.Snapshot(); !errors.Is(err, ErrDead) || !strings.Contains(err.Error(), "trap") {
			t.Fatalf("Snapshot of a trapped cell: %v", err)
		}
		closed := start(t, r, m, spec, nil)
		closed.Close()
		if _, err := closed.Snapshot(); !errors.Is(err, ErrDead) || !strings.Contains(err.Error(), "closed") {
			t.Fatalf("Snapshot of a closed cell: %v", err)
		}
	})

	c := start(t, r, m, spec, nil)
	var col collector
	feed(t, c, &col, readings(2, 3, 1, 8))
	s, err := c.Snapshot()
	if err != nil {
		t.Fatal(err)
	}

	t.Run("wrong module", func(t *testing.T) {
		other := load(t, r, cellWAT{}.String())
		if _, err := r.Restore(ctx, other, spec, nil, s); !errors.Is(err, ErrDigest) || !strings.Contains(err.Error(), m.Digest[:12]) {
			t.Fatalf("Restore into another module: %v", err)
		}
	})
	t.Run("over the memory limit", func(t *testing.T) {
		small := spec
		small.Limits.MemoryBytes = 3 * pageSize // the snapshot holds 4 pages
		if _, err := r.Restore(ctx, m, small, nil, s); !errors.Is(err, ErrLimit) || !strings.Contains(err.Error(), "memory limit") {
			t.Fatalf("Restore over the limit: %v", err)
		}
		if _, err := ReadSnapshot(bytes.NewReader(encode(t, s)), 3*pageSize); !errors.Is(err, ErrLimit) {
			t.Fatalf("ReadSnapshot over the limit: %v", err)
		}
		small.Limits.MemoryBytes = 4 * pageSize
		c, err := r.Restore(ctx, m, small, nil, s)
		if err != nil {
			t.Fatalf("Restore at the limit: %v", err)
		}
		c.Close()
	})
	t.Run("no or hand-made snapshot", func(t *testing.T) {
		for _, bad := range []*Snapshot{nil, {}, {Digest: m.Digest, Pages: 4}} {
			if _, err := r.Restore(ctx, m, spec, nil, bad); !errors.Is(err, ErrSnapshot) {
				t.Fatalf("Restore(%+v): %v", bad, err)
			}
		}
		if _, err := (&Snapshot{Pages: 1}).WriteTo(io.Discard); !errors.Is(err, ErrSnapshot) {
			t.Fatalf("WriteTo of a hand-made snapshot: %v", err)
		}
	})
	t.Run("globals of another layout", func(t *testing.T) {
		bad := *s
		bad.globals = bad.globals[1:]
		if _, err := r.Restore(ctx, m, spec, nil, &bad); !errors.Is(err, ErrSnapshot) || !strings.Contains(err.Error(), "globals") {
			t.Fatalf("Restore: %v", err)
		}
	})
}

// TestSnapshotNotMigratable: state a snapshot cannot hold is refused by name, at Snapshot
// and at Restore, while the cell itself runs normally.
func TestSnapshotNotMigratable(t *testing.T) {
	tests := []struct {
		name, extra, mention string
	}{
		{"table.grow", `(table $t 1 funcref) (func (export "grow") (drop (table.grow $t (ref.null func) (i32.const 1))))`, "table.grow"},
		{"table.set", `(table $t 1 funcref) (func $f) (elem declare func $f) (func (export "set") (table.set $t (i32.const 0) (ref.func $f)))`, "table.set"},
		{"v128 global", `(global $v (mut v128) (v128.const i64x2 0 0))`, "global 1 is a mutable v128"},
		{"externref global", `(global $e (mut externref) (ref.null extern))`, "global 1 is a mutable externref"},
	}
	r := newRuntime(t, t.TempDir())
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			wasm := wasmOf(t, cellWAT{Extra: tt.extra}.String())
			m, err := r.Load(wasm, digestOf(wasm))
			if err != nil {
				t.Fatal(err)
			}
			defer m.Close()
			var col collector
			c := start(t, r, m, Spec{Outputs: []string{"count"}}, col.out)
			if err := c.Handle(context.Background(), "in", records(2)); err != nil {
				t.Fatal(err)
			}
			_, err = c.Snapshot()
			if !errors.Is(err, ErrNotMigratable) || !strings.Contains(err.Error(), tt.mention) {
				t.Fatalf("Snapshot: %v, want ErrNotMigratable mentioning %q", err, tt.mention)
			}
			// The refusal survives the compiled-code cache.
			cached, err := r.LoadCached(digestOf(wasm))
			if err != nil {
				t.Fatal(err)
			}
			defer cached.Close()
			if cached.snap.refusal != m.snap.refusal {
				t.Fatalf("from the cache: %q, compiled: %q", cached.snap.refusal, m.snap.refusal)
			}
			s := &Snapshot{Digest: m.Digest, Pages: 1, present: []uint64{0}, chunk: chunkPages}
			if _, err := r.Restore(context.Background(), cached, Spec{}, nil, s); !errors.Is(err, ErrNotMigratable) {
				t.Fatalf("Restore: %v", err)
			}
		})
	}
}

func TestReadSnapshotRefuses(t *testing.T) {
	r := newRuntime(t, "")
	m := load(t, r, statefulWAT)
	c := start(t, r, m, Spec{Outputs: []string{"state"}}, nil)
	var col collector
	feed(t, c, &col, readings(3, 4, 1, 9))
	s, err := c.Snapshot()
	if err != nil {
		t.Fatal(err)
	}
	good := encode(t, s)
	if _, err := ReadSnapshot(bytes.NewReader(good), 1<<30); err != nil {
		t.Fatal(err)
	}

	// Every truncation and every flipped byte is caught.
	for n := range len(good) {
		if _, err := ReadSnapshot(bytes.NewReader(good[:n]), 1<<30); !errors.Is(err, ErrSnapshot) {
			t.Fatalf("truncated to %d of %d bytes: %v", n, len(good), err)
		}
	}
	for i := range good {
		bad := bytes.Clone(good)
		bad[i] ^= 0x20
		if _, err := ReadSnapshot(bytes.NewReader(bad), 1<<30); err == nil {
			t.Fatalf("byte %d flipped: accepted", i)
		}
	}

	// What a CRC cannot catch (the writer was wrong, or hostile) is caught by the checks.
	withCRC := func(b []byte) []byte {
		b = b[:len(b)-4]
		return binary.LittleEndian.AppendUint32(b, crc32.Checksum(b, castagnoli))
	}
	set := func(off int, v ...byte) []byte {
		b := bytes.Clone(good)
		copy(b[off:], v)
		return withCRC(b)
	}
	globals := snapHeaderSize
	pageMap := globals + len(s.globals)*snapGlobalSize
	chunk := pageMap + 1
	tests := []struct {
		name    string
		b       []byte
		mention string
	}{
		{"empty", nil, "truncated in the header"},
		{"not a snapshot", set(0, 'X'), "not a cell snapshot"},
		{"version 2", set(4, 2), "format version 2"},
		{"flags", set(6, 1), "unknown flags"},
		{"pages past wasm32", set(40, 1, 0, 1, 0), "more than wasm32"},
		{"chunk pages 0", set(44, 0), "chunks of 0 pages"},
		{"chunk pages 17", set(44, 17), "chunks of 17 pages"},
		{"a million globals and more", set(48, 0x41, 0x42, 0x0f, 0), "more than a module may have"},
		{"global type", set(globals+4, 0x7b), "type v128"},
		{"globals out of order", set(globals+snapGlobalSize, 0), "out of order"},
		{"i32 with high bits", set(globals+5+4, 1), "high bits"},
		{"page past the end", set(pageMap, 0xff), "past the end"},
		{"chunk too long", set(chunk, 0xff, 0xff, 0xff, 0x7f), "claims"},
	}
	t.Run("chunk of garbage", func(t *testing.T) {
		// Frames are decompressed by Restore, straight into the new cell's memory.
		s, err := ReadSnapshot(bytes.NewReader(set(chunk+4, 0xde, 0xad, 0xbe, 0xef)), 1<<30)
		if err != nil {
			t.Fatal(err)
		}
		if _, err := r.Restore(context.Background(), m, Spec{}, nil, s); !errors.Is(err, ErrSnapshot) || !strings.Contains(err.Error(), "chunk 0") {
			t.Fatalf("Restore: %v", err)
		}
	})
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := ReadSnapshot(bytes.NewReader(tt.b), 1<<30)
			if !errors.Is(err, ErrSnapshot) || !strings.Contains(err.Error(), tt.mention) {
				t.Fatalf("ReadSnapshot: %v, want ErrSnapshot mentioning %q", err, tt.mention)
			}
		})
	}
}
