package cells

import (
	"testing"
)

// FuzzLoad feeds Load random and mutated modules: it returns a module or an error, and
// never panics or crashes.
func FuzzLoad(f *testing.F) {
	f.Add(wasmOf(f, cellWAT{}.String()))
	f.Add(wasmOf(f, cellWAT{Imports: `(import "env" "x" (func))`}.String()))
	f.Add(wasmOf(f, cellWAT{Memory: `(memory (export "memory") 65536)`}.String()))
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
	})
}
