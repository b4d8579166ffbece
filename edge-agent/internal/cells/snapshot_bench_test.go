//go:build unix

package cells

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"os"
	"syscall"
	"testing"
	"time"
)

// cpuTime is the CPU time this process has used. Benchmarks report it next to wall time
// because the machines they run on are shared: wall time grows with other load, CPU time
// hardly does, and on an idle node with n cores the wall time is about CPU time / n.
func cpuTime() time.Duration {
	var ru syscall.Rusage
	syscall.Getrusage(syscall.RUSAGE_SELF, &ru)
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

// reportCPU reports the CPU time per operation since start.
func reportCPU(b *testing.B, start time.Duration) {
	b.ReportMetric(float64(cpuTime()-start)/float64(b.N)/1e6, "cpu-ms/op")
}

// windowWAT is the example cell cells/window.wat: it keeps every record it is given, as a
// window of raw readings would, so its state is exactly what it was fed.
func windowWAT(tb testing.TB) string {
	tb.Helper()
	b, err := os.ReadFile("../../../cells/window.wat")
	if err != nil {
		tb.Fatal(err)
	}
	return string(b)
}

// stationReadings are readings of the agriculture dataspace's weather stations: JSON, 500
// stations, values on a random walk, about 140 bytes each.
func stationReadings(n int, seed uint32) []Record {
	x := seed*2654435761 + 1
	next := func() uint32 { x ^= x << 13; x ^= x >> 17; x ^= x << 5; return x }
	temp, hum, wind := 18.0, 60.0, 3.0
	rs := make([]Record, n)
	for i := range rs {
		temp += float64(int(next()%21)-10) / 100
		hum += float64(int(next()%21)-10) / 50
		wind = max(0, wind+float64(int(next()%11)-5)/20)
		station := next() % 500
		t := int64(1_760_000_000_000_000_000) + int64(i)*1_000_000_000
		rs[i] = Record{
			Offset: uint64(i), TimeNS: t, Topic: fmt.Sprintf("agri/stations/%03d", station),
			Payload: fmt.Appendf(nil, `{"station":"ES-CT-%03d","ts":%d,"temp_c":%.2f,"rh":%.1f,"wind_ms":%.2f,"rain_mm":%d.%d,"lat":41.%05d,"lon":1.%05d}`,
				station, t/1e9, temp, hum, wind, next()%3, next()%10, 50000+station*7, 80000+station*11),
		}
	}
	return rs
}

// fillWindow feeds the window cell until its log holds about size bytes.
func fillWindow(b *testing.B, c *Cell, size int) {
	b.Helper()
	fed := 0
	for seed := uint32(1); fed < size; seed++ {
		recs := stationReadings(5000, seed)
		if err := c.Handle(context.Background(), "in", recs); err != nil {
			b.Fatal(err)
		}
		for _, r := range recs {
			fed += 8 + len(r.Payload)
		}
	}
}

// fillAggregator feeds the Go aggregator readings of n distinct sensors.
func fillAggregator(b *testing.B, c *Cell, sensors int) {
	b.Helper()
	for i := 0; i < sensors; i += 2000 {
		recs := make([]Record, 2000)
		for j := range recs {
			recs[j] = Record{Offset: uint64(i + j), Topic: "agri/s", Payload: fmt.Appendf(nil, `{"sensor":"station-%06d","value":%d.%d}`, i+j, (i+j)%40, j%10)}
		}
		if err := c.Handle(context.Background(), "in", recs); err != nil {
			b.Fatal(err)
		}
	}
}

// BenchmarkSnapshot measures what a migration costs a cell, by the state it holds: on the
// source, Snapshot and WriteTo (capture+encode); on the target, ReadSnapshot and Restore
// (decode+restore); both ends with an HTTP upload on loopback between them (migrate-http,
// the downtime: the cell takes no events from the snapshot until the restored cell is
// up); and, as the peer, a cold start of the same module without its state. pause is how
// long Snapshot holds the cell (a periodic checkpoint's cost to its latency); the -dense
// variants store every page, without skipping the all-zero ones.
func BenchmarkSnapshot(b *testing.B) {
	cases := []struct {
		name   string
		wasm   func(testing.TB) []byte
		spec   Spec
		fill   func(*testing.B, *Cell)
		output string
	}{
		{"wat-1MiB", func(tb testing.TB) []byte { return wasmOf(tb, windowWAT(tb)) }, Spec{}, func(b *testing.B, c *Cell) { fillWindow(b, c, 1<<20) }, "size"},
		{"wat-16MiB", func(tb testing.TB) []byte { return wasmOf(tb, windowWAT(tb)) }, Spec{}, func(b *testing.B, c *Cell) { fillWindow(b, c, 16<<20) }, "size"},
		{"wat-64MiB", func(tb testing.TB) []byte { return wasmOf(tb, windowWAT(tb)) }, Spec{}, func(b *testing.B, c *Cell) { fillWindow(b, c, 64<<20) }, "size"},
		// 1 MiB of readings in a memory grown to 64 MiB and not touched beyond: what the
		// skipped zero pages save.
		{"wat-1MiB-in-64MiB", func(tb testing.TB) []byte { return wasmOf(tb, windowWAT(tb)) }, Spec{}, func(b *testing.B, c *Cell) {
			fillWindow(b, c, 1<<20)
			c.mu.Lock()
			defer c.mu.Unlock()
			if _, err := c.mem.Grow(c.store, 64<<4-c.mem.Size(c.store)); err != nil {
				b.Fatal(err)
			}
		}, "size"},
		{"go-aggregator-100k-sensors", func(tb testing.TB) []byte { return exampleCell(tb, "aggregator") }, Spec{},
			func(b *testing.B, c *Cell) { fillAggregator(b, c, 100_000) }, "aggregates"},
	}
	ctx := context.Background()
	for _, tc := range cases {
		b.Run(tc.name, func(b *testing.B) {
			wasm := tc.wasm(b)
			cacheDir := b.TempDir()
			spec := tc.spec
			spec.ID, spec.Outputs = "bench", []string{tc.output}
			spec.Limits = Limits{MemoryBytes: 256 << 20, MaxOutputPerSec: 1e12, MaxInputBytes: 2 << 20, CallTimeout: 10e9}
			src := newRuntime(b, cacheDir)
			m, err := src.Load(wasm, digestOf(wasm))
			if err != nil {
				b.Fatal(err)
			}
			b.Cleanup(m.Close)
			c := start(b, src, m, spec, nil)
			tc.fill(b, c)
			s, err := c.Snapshot()
			if err != nil {
				b.Fatal(err)
			}
			encoded := encode(b, s)
			// The same state with every page stored, zero or not.
			all := make([]uint64, len(s.present))
			for p := range int(s.Pages) {
				all[p/64] |= 1 << (p % 64)
			}
			dense := *s
			dense.present = all
			c.mu.Lock()
			mem := bytes.Clone(c.mem.UnsafeData(c.store))
			c.mu.Unlock()
			if dense.frames, err = compress(mem); err != nil {
				b.Fatal(err)
			}
			encodedDense := encode(b, &dense)
			// The target is another runtime (another engine), with the module loaded ahead
			// of the migration, as the cell manager would.
			dst := newRuntime(b, cacheDir)
			dm, err := dst.LoadCached(m.Digest)
			if err != nil {
				b.Fatal(err)
			}
			b.Cleanup(dm.Close)
			report := func(b *testing.B) {
				b.ReportMetric(float64(s.MemoryBytes())/(1<<20), "memory-MiB")
				b.ReportMetric(float64(len(encoded)), "snapshot-bytes")
			}

			b.Run("capture+encode", func(b *testing.B) {
				var buf bytes.Buffer
				defer reportCPU(b, cpuTime())
				for b.Loop() {
					buf.Reset()
					s, err := c.Snapshot()
					if err != nil {
						b.Fatal(err)
					}
					if _, err := s.WriteTo(&buf); err != nil {
						b.Fatal(err)
					}
				}
				report(b)
			})
			b.Run("pause", func(b *testing.B) {
				// How long Snapshot holds the cell: the copy, not the compression.
				defer reportCPU(b, cpuTime())
				for b.Loop() {
					if _, _, err := c.capture(); err != nil {
						b.Fatal(err)
					}
				}
			})
			b.Run("capture+encode-dense", func(b *testing.B) {
				var buf bytes.Buffer
				defer reportCPU(b, cpuTime())
				for b.Loop() {
					buf.Reset()
					d := dense
					c.mu.Lock()
					mem := bytes.Clone(c.mem.UnsafeData(c.store))
					c.mu.Unlock()
					var err error
					if d.frames, err = compress(mem); err != nil {
						b.Fatal(err)
					}
					if _, err := d.WriteTo(&buf); err != nil {
						b.Fatal(err)
					}
				}
				b.ReportMetric(float64(buf.Len()), "snapshot-bytes")
			})
			restore := func(encoded []byte) func(*testing.B) {
				return func(b *testing.B) {
					defer reportCPU(b, cpuTime())
					for b.Loop() {
						got, err := ReadSnapshot(bytes.NewReader(encoded), spec.Limits.MemoryBytes)
						if err != nil {
							b.Fatal(err)
						}
						rc, err := dst.Restore(ctx, dm, spec, nil, got)
						if err != nil {
							b.Fatal(err)
						}
						b.StopTimer()
						rc.Close()
						b.StartTimer()
					}
					b.ReportMetric(float64(len(encoded)), "snapshot-bytes")
				}
			}
			b.Run("decode+restore", restore(encoded))
			b.Run("decode+restore-dense", restore(encodedDense))
			b.Run("migrate-http", func(b *testing.B) {
				restored := make(chan *Cell, 1)
				srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
					got, err := ReadSnapshot(r.Body, spec.Limits.MemoryBytes)
					if err == nil {
						var rc *Cell
						if rc, err = dst.Restore(r.Context(), dm, spec, nil, got); err == nil {
							restored <- rc
							return
						}
					}
					http.Error(w, err.Error(), http.StatusBadRequest)
				}))
				defer srv.Close()
				defer reportCPU(b, cpuTime())
				for b.Loop() {
					s, err := c.Snapshot()
					if err != nil {
						b.Fatal(err)
					}
					pr, pw := io.Pipe()
					go func() { _, err := s.WriteTo(pw); pw.CloseWithError(err) }()
					resp, err := http.Post(srv.URL, "application/octet-stream", pr)
					if err != nil {
						b.Fatal(err)
					}
					if resp.StatusCode != http.StatusOK {
						msg, _ := io.ReadAll(resp.Body)
						b.Fatalf("%s: %s", resp.Status, msg)
					}
					resp.Body.Close()
					b.StopTimer()
					(<-restored).Close()
					b.StartTimer()
				}
				report(b)
			})
			b.Run("cold-start", func(b *testing.B) {
				defer reportCPU(b, cpuTime())
				for b.Loop() {
					rc, err := dst.Start(ctx, dm, spec, nil)
					if err != nil {
						b.Fatal(err)
					}
					b.StopTimer()
					rc.Close()
					b.StartTimer()
				}
			})
		})
	}
}
