package cells

import (
	"context"
	"testing"
)

var benchLimits = Limits{MaxOutputPerSec: 1e12}

func BenchmarkColdStart(b *testing.B) {
	r := newRuntime(b, b.TempDir())
	m := load(b, r, cellWAT{}.String())
	ctx := context.Background()
	b.ReportAllocs()
	for b.Loop() {
		c, err := r.Start(ctx, m, Spec{ID: "bench", Limits: benchLimits, Outputs: []string{"count"}}, nil)
		if err != nil {
			b.Fatal(err)
		}
		c.Close()
	}
}

func benchHandle(b *testing.B, n int) {
	r := newRuntime(b, "")
	m := load(b, r, cellWAT{}.String())
	c := start(b, r, m, Spec{Limits: benchLimits, Outputs: []string{"count"}}, func(string, []byte) {})
	recs := records(n)
	ctx := context.Background()
	b.ReportAllocs()
	for b.Loop() {
		if err := c.Handle(ctx, "in", recs); err != nil {
			b.Fatal(err)
		}
	}
	b.ReportMetric(float64(b.Elapsed().Nanoseconds())/float64(b.N*n), "ns/record")
}

func BenchmarkHandleEmpty(b *testing.B)    { benchHandle(b, 1) }
func BenchmarkHandleBatch100(b *testing.B) { benchHandle(b, 100) }
