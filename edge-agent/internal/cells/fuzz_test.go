package cells

import (
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"hash/crc32"
	"testing"

	"github.com/bytecodealliance/wasmtime-go/v39"
)

// FuzzLoad feeds Load random and mutated modules: it returns a module or an error, and
// never panics or crashes. Load rewrites every module before compiling it, so this fuzzes
// the rewriter too; on top, a rewritten module must be valid exactly when the original is.
func FuzzLoad(f *testing.F) {
	f.Add(wasmOf(f, cellWAT{}.String()))
	f.Add(wasmOf(f, cellWAT{Imports: `(import "env" "x" (func))`}.String()))
	f.Add(wasmOf(f, cellWAT{Memory: `(memory (export "memory") 65536)`}.String()))
	f.Add(wasmOf(f, statefulWAT))
	f.Add(wasmOf(f, `(module (import "env" "g" (global (mut i64))) (global (mut f64) (f64.const 1)) (func) (start 0))`))
	f.Add(wasmOf(f, `(module (memory 1) (global (mut i32) (i32.const 100))`+scanAll+`)`))
	f.Add([]byte("\x00asm\x01\x00\x00\x00"))
	f.Add([]byte{})
	r, err := NewRuntime("", quiet)
	if err != nil {
		f.Fatal(err)
	}
	f.Cleanup(func() { r.Close() })
	f.Fuzz(func(t *testing.T, b []byte) {
		m, err := r.Load(b, digestOf(b))
		if (m == nil) == (err == nil) {
			t.Fatalf("Load returned module %v and error %v", m, err)
		}
		if m != nil {
			m.Close()
		}
		out, info, err := rewriteModule(b)
		if err != nil || bytes.Equal(out, b) {
			return
		}
		before, after := wasmtime.ModuleValidate(r.engine, b), wasmtime.ModuleValidate(r.engine, out)
		if (before == nil) != (after == nil) {
			t.Fatalf("validity changed by the rewrite (%+v): before %v, after %v", info, before, after)
		}
	})
}

// FuzzReadSnapshot feeds ReadSnapshot random and mutated snapshots: it returns a snapshot or
// an error, never panics, and never allocates much more than the memory it allows (4 MiB
// here). Each input is tried as it is and with its CRC made right, so that mutations reach
// past the checksum into the header, page map and zstd frames. What it accepts, it writes
// back the same.
func FuzzReadSnapshot(f *testing.F) {
	r, err := NewRuntime("", quiet)
	if err != nil {
		f.Fatal(err)
	}
	f.Cleanup(func() { r.Close() })
	m := load(f, r, statefulWAT)
	c := start(f, r, m, Spec{Outputs: []string{"state"}}, nil)
	for i := range 3 {
		s, err := c.Snapshot()
		if err != nil {
			f.Fatal(err)
		}
		var buf bytes.Buffer
		if _, err := s.WriteTo(&buf); err != nil {
			f.Fatal(err)
		}
		f.Add(buf.Bytes())
		if err := c.Handle(context.Background(), "in", records(i+1)); err != nil {
			f.Fatal(err)
		}
	}
	f.Add([]byte("CSKS\x01\x00"))
	f.Add([]byte{})
	const limit = 4 << 20
	f.Fuzz(func(t *testing.T, b []byte) {
		checkSnapshotBytes(t, b, limit)
		if len(b) >= 4 {
			fixed := bytes.Clone(b)
			binary.LittleEndian.PutUint32(fixed[len(b)-4:], crc32.Checksum(b[:len(b)-4], castagnoli))
			checkSnapshotBytes(t, fixed, limit)
		}
	})
}

func checkSnapshotBytes(t *testing.T, b []byte, limit int64) {
	s, err := ReadSnapshot(bytes.NewReader(b), limit)
	if err != nil {
		if !errors.Is(err, ErrSnapshot) && !errors.Is(err, ErrLimit) {
			t.Fatalf("error %v wraps neither ErrSnapshot nor ErrLimit", err)
		}
		return
	}
	if err := s.check(); err != nil {
		t.Fatalf("accepted an inconsistent snapshot: %v", err)
	}
	// What Restore does with the frames, on plain memory.
	if err := decompressPages(make([]byte, s.MemoryBytes()), s); err != nil && !errors.Is(err, ErrSnapshot) {
		t.Fatalf("decompress: %v wraps no ErrSnapshot", err)
	}
	var buf bytes.Buffer
	if _, err := s.WriteTo(&buf); err != nil {
		t.Fatalf("cannot write back what was read: %v", err)
	}
	if !bytes.Equal(buf.Bytes(), b) {
		t.Fatal("written back differently")
	}
}
