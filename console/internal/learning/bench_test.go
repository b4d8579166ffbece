package learning

import (
	"context"
	"encoding/json"
	"io"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/cloudskin/cloudskin/console/internal/planner"
	"github.com/cloudskin/cloudskin/console/internal/store"
)

// benchFleet is the trained test fleet with eight more nodes: ten
// candidates, each with its newest telemetry.
func benchFleet(b *testing.B) (*fleet, []string, []planner.Node) {
	b.Helper()
	ctx := context.Background()
	f := newFleet(b, "")
	f.addCellSamples(b, 600)
	names := []string{f.green.Name, f.grid.Name}
	for i := range 8 {
		arch := []string{"amd64", "arm64"}[i%2]
		n := enroll(b, f.st, "edge-"+strconv.Itoa(i)+"x", arch, nil)
		smp := telemetry(n, f.end.Add(-time.Minute), 0.1*float64(i), 20, nil, nil)
		if _, _, err := f.st.InsertSample(ctx, smp, store.Seen{NowUS: smp.TimeUS}); err != nil {
			b.Fatal(err)
		}
		names = append(names, n.Name)
	}
	if _, err := f.svc.Train(ctx, "manual"); err != nil {
		b.Fatal(err)
	}
	var nodes []planner.Node
	for _, nf := range f.svc.cur.Load().nodes {
		nodes = append(nodes, planner.Node{Name: nf.Name, Arch: nf.Arch, Online: true, CPUs: nf.Cores, MemTotal: nf.MemBytes,
			MemFree: nf.MemBytes / 2, Load: nf.Load, Power: nf.Power})
	}
	return f, names, nodes
}

// BenchmarkRecommend10 answers "which of these ten placements is best?"
// (predictions, contributions, ranking and the JSON answer) beside the
// Planner's own decision over the same ten nodes with the learning plane as
// its Predictor. p99-µs is the 99th percentile of one answer.
func BenchmarkRecommend10(b *testing.B) {
	f, names, nodes := benchFleet(b)
	q := Query{Module: strings.Repeat("ab", 32), CPU: 0.5, InputRate: 50, SLOms: 12}
	pl, err := planner.New(planner.DefaultConfig(), f.svc)
	if err != nil {
		b.Fatal(err)
	}
	cell := planner.Cell{ID: "c", Module: q.Module, CPU: q.CPU, InputRate: q.InputRate, LatencySLOms: q.SLOms, MemBytes: 1 << 20}
	p99 := func(b *testing.B, one func()) {
		took := make([]time.Duration, 0, b.N)
		for b.Loop() {
			t := time.Now()
			one()
			took = append(took, time.Since(t))
		}
		slices.Sort(took)
		b.ReportMetric(float64(took[len(took)*99/100].Microseconds()), "p99-µs")
	}
	b.Run("recommend", func(b *testing.B) {
		p99(b, func() {
			r, err := f.svc.Recommend(q, names, 2)
			if err != nil || len(r) != 10 || r[0].LatencyMs == nil {
				b.Fatalf("recommend: %d ranked, %v", len(r), err)
			}
			json.NewEncoder(io.Discard).Encode(r)
		})
	})
	b.Run("planner-place", func(b *testing.B) {
		p99(b, func() {
			d := pl.Place(nodes, cell, nil, f.end)
			if d.To == "" {
				b.Fatalf("unplaced: %s", d.Why)
			}
			json.NewEncoder(io.Discard).Encode(d)
		})
	})
}

// BenchmarkTrain is one training of every model of the two-node fleet
// (two weeks at 15 minutes, 600 cell samples), beside reading its inputs
// alone (the data retriever's part).
func BenchmarkTrain(b *testing.B) {
	f := newFleet(b, "")
	f.addCellSamples(b, 600)
	ctx := context.Background()
	b.Run("train", func(b *testing.B) {
		for b.Loop() {
			if _, err := f.svc.Train(ctx, "bench"); err != nil {
				b.Fatal(err)
			}
		}
	})
	b.Run("retrieve", func(b *testing.B) {
		for b.Loop() {
			nodes, err := f.svc.nodes(ctx)
			if err != nil {
				b.Fatal(err)
			}
			if _, err := f.svc.seriesByNode(ctx, f.end.Add(-f.svc.cfg.Window), f.end, f.svc.cfg.Step); err != nil {
				b.Fatal(err)
			}
			if _, err := f.svc.perfSamples(ctx, f.end.Add(-f.svc.cfg.Window), f.end, nodes); err != nil {
				b.Fatal(err)
			}
		}
	})
}
