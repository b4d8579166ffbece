package benchpeer

import (
	"bytes"
	"context"
	"os/exec"
	"path/filepath"
	"testing"
	"time"

	"github.com/cloudskin/cloudskin/edge-agent/internal/cells"
)

var cellNames = []string{"minimal", "go"}

func discard(string, []byte) {}

// BenchmarkColdStart starts a cell from compiled code that is already cached, and closes it
// outside the measured part. Sub-benchmarks, per cell:
//
//	cells         Runtime.Start from a loaded Module (compiled code in memory)
//	cells-load    Runtime.LoadCached from the warm disk cache + Start: nothing in memory but the
//	              runtime (the first cell of a module after an agent restart)
//	wazero        the peer, InstantiateModule + _initialize from a CompiledModule
//	wazero-load   the peer, CompileModule from its warm file cache + instantiate
//	process       the peer, exec of cmd/oneshot: new process, runtime, LoadCached from the cache,
//	              Start, one event, exit (the whole per-event cost of that design)
func BenchmarkColdStart(b *testing.B) {
	f := getFixtures(b)
	ctx := context.Background()
	for _, name := range cellNames {
		wasm, path, outputs := f.module(name)
		spec := cells.Spec{ID: "bench", Limits: benchLimits, Outputs: outputs}

		b.Run(name+"/cells", func(b *testing.B) {
			rt := newCells(b, f.cacheDir)
			m, err := rt.Load(wasm, digest(wasm))
			if err != nil {
				b.Fatal(err)
			}
			defer m.Close()
			var lat latencies
			for b.Loop() {
				t0 := time.Now()
				c, err := rt.Start(ctx, m, spec, discard)
				lat = append(lat, time.Since(t0))
				if err != nil {
					b.Fatal(err)
				}
				c.Close()
			}
			lat.report(b)
		})

		b.Run(name+"/cells-load", func(b *testing.B) {
			rt := newCells(b, f.cacheDir)
			dig := digest(wasm)
			var lat latencies
			for b.Loop() {
				t0 := time.Now()
				m, err := rt.LoadCached(dig)
				if err != nil {
					b.Fatal(err)
				}
				c, err := rt.Start(ctx, m, spec, discard)
				lat = append(lat, time.Since(t0))
				if err != nil {
					b.Fatal(err)
				}
				if !m.FromCache {
					b.Fatal("compiled code did not come from the cache")
				}
				c.Close()
				m.Close()
			}
			lat.report(b)
		})

		wzCache := filepath.Join(f.dir, "wazero-cache")
		b.Run(name+"/wazero", func(b *testing.B) {
			w := newWz(b, wzCache)
			compiled, err := w.rt.CompileModule(ctx, wasm)
			if err != nil {
				b.Fatal(err)
			}
			var lat latencies
			for b.Loop() {
				t0 := time.Now()
				c, err := w.start(compiled, discard)
				lat = append(lat, time.Since(t0))
				if err != nil {
					b.Fatal(err)
				}
				c.Close()
			}
			lat.report(b)
		})

		b.Run(name+"/wazero-load", func(b *testing.B) {
			w := newWz(b, wzCache)
			warm, err := w.rt.CompileModule(ctx, wasm) // fills the file cache
			if err != nil {
				b.Fatal(err)
			}
			warm.Close(ctx) // and drops the in-memory copy, so each op reads the file
			var lat latencies
			for b.Loop() {
				t0 := time.Now()
				compiled, err := w.rt.CompileModule(ctx, wasm)
				if err != nil {
					b.Fatal(err)
				}
				c, err := w.start(compiled, discard)
				lat = append(lat, time.Since(t0))
				if err != nil {
					b.Fatal(err)
				}
				c.Close()
				compiled.Close(ctx)
			}
			lat.report(b)
		})

		b.Run(name+"/process", func(b *testing.B) {
			event := readings(1)[0].Payload
			var lat latencies
			for b.Loop() {
				t0 := time.Now()
				oneshot(b, f, path, event)
				lat = append(lat, time.Since(t0))
			}
			lat.report(b)
		})
	}
}

// BenchmarkHandle is the per-event overhead of calling the minimal cell (which reads the
// batch header and emits one record per batch), one event per call and 100 per call.
func BenchmarkHandle(b *testing.B) {
	f := getFixtures(b)
	ctx := context.Background()
	spec := cells.Spec{ID: "bench", Limits: benchLimits, Outputs: []string{"count"}}
	for _, n := range []int{1, 100} {
		size := "one"
		if n > 1 {
			size = "batch100"
		}
		recs := readings(n)

		b.Run(size+"/cells", func(b *testing.B) {
			rt := newCells(b, "")
			m, err := rt.Load(f.minimal, digest(f.minimal))
			if err != nil {
				b.Fatal(err)
			}
			defer m.Close()
			c, err := rt.Start(ctx, m, spec, discard)
			if err != nil {
				b.Fatal(err)
			}
			defer c.Close()
			b.ReportAllocs()
			for b.Loop() {
				if err := c.Handle(ctx, "in", recs); err != nil {
					b.Fatal(err)
				}
			}
			perEvent(b, b.N*n)
		})

		b.Run(size+"/wazero", func(b *testing.B) {
			w := newWz(b, "")
			compiled, err := w.rt.CompileModule(ctx, f.minimal)
			if err != nil {
				b.Fatal(err)
			}
			c, err := w.start(compiled, discard)
			if err != nil {
				b.Fatal(err)
			}
			defer c.Close()
			b.ReportAllocs()
			for b.Loop() {
				if err := c.Handle("in", recs); err != nil {
					b.Fatal(err)
				}
			}
			perEvent(b, b.N*n)
		})
	}
	b.Run("one/process", func(b *testing.B) {
		event := readings(1)[0].Payload
		for b.Loop() {
			oneshot(b, f, f.minimalPath, event)
		}
		perEvent(b, b.N)
	})
}

// BenchmarkAggregator is throughput through the Go aggregator cell, batches of 100 JSON
// readings over 10 sensors (10 aggregates emitted per batch).
func BenchmarkAggregator(b *testing.B) {
	f := getFixtures(b)
	ctx := context.Background()
	recs := readings(100)
	var emitted int
	count := func(string, []byte) { emitted++ }

	b.Run("batch100/cells", func(b *testing.B) {
		rt := newCells(b, f.cacheDir)
		m, err := rt.Load(f.aggregator, digest(f.aggregator))
		if err != nil {
			b.Fatal(err)
		}
		defer m.Close()
		c, err := rt.Start(ctx, m, cells.Spec{ID: "agg", Limits: benchLimits, Outputs: []string{"aggregates"}}, count)
		if err != nil {
			b.Fatal(err)
		}
		defer c.Close()
		emitted = 0
		for b.Loop() {
			if err := c.Handle(ctx, "in", recs); err != nil {
				b.Fatal(err)
			}
		}
		if emitted != 10*b.N {
			b.Fatalf("emitted %d aggregates, want %d", emitted, 10*b.N)
		}
		perEvent(b, b.N*len(recs))
	})

	b.Run("batch100/wazero", func(b *testing.B) {
		w := newWz(b, filepath.Join(f.dir, "wazero-cache"))
		compiled, err := w.rt.CompileModule(ctx, f.aggregator)
		if err != nil {
			b.Fatal(err)
		}
		c, err := w.start(compiled, count)
		if err != nil {
			b.Fatal(err)
		}
		defer c.Close()
		emitted = 0
		for b.Loop() {
			if err := c.Handle("in", recs); err != nil {
				b.Fatal(err)
			}
		}
		if emitted != 10*b.N {
			b.Fatalf("emitted %d aggregates, want %d", emitted, 10*b.N)
		}
		perEvent(b, b.N*len(recs))
	})

	b.Run("one/process", func(b *testing.B) {
		for b.Loop() {
			out := oneshot(b, f, f.aggregatorPath, recs[0].Payload)
			if !bytes.HasPrefix(out, []byte("aggregates {")) {
				b.Fatalf("oneshot output %q", out)
			}
		}
		perEvent(b, b.N)
	})
}

func newCells(tb testing.TB, cacheDir string) *cells.Runtime {
	tb.Helper()
	rt, err := cells.NewRuntime(cacheDir, nil)
	if err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(func() { rt.Close() })
	return rt
}

func newWz(tb testing.TB, cacheDir string) *wzRuntime {
	tb.Helper()
	w, err := newWazero(cacheDir)
	if err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(w.Close)
	return w
}

// oneshot runs cmd/oneshot on one event and returns what the cell emitted.
func oneshot(tb testing.TB, f *fixtures, module string, event []byte) []byte {
	tb.Helper()
	cmd := exec.Command(f.oneshot, "-module", module, "-digest", f.digestOf(module), "-cache", f.cacheDir)
	cmd.Stdin = bytes.NewReader(event)
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		tb.Fatalf("oneshot: %v: %s", err, stderr.Bytes())
	}
	return out
}
