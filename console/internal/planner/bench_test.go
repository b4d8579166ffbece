package planner

import (
	"testing"
	"time"
)

// The fleet of the benchmarks: 1,000 nodes (35% arm64, 25 sites, zones and
// GPUs as labels, 90% with a position and coverage radius, 30% green, 5%
// offline, 3–8 streams each) and 10,000 cells (20% need an arch, 15% a
// label, 10% a site, 2% are pinned, 25% have an affinity point or moving
// target, half read streams, 10% have an SLO).
const benchNodes, benchCells = 1000, 10000

// BenchmarkPlan is a full plan of 10,000 unplaced cells over 1,000 nodes,
// next to its peers: naive (same decisions, no indexing or precomputation)
// and firstfit (first node that passes the filters, no scores, no
// explanations). planner-steady re-plans the placed fleet: every cell is
// checked against the move rules, and those on offline, dying or
// overloaded nodes move.
func BenchmarkPlan(b *testing.B) {
	nodes, cells, targets := genFleet(1, benchNodes, benchCells)
	cfg := DefaultConfig()
	p := newPlanner(b, cfg, nil)
	b.Run("planner", func(b *testing.B) {
		for b.Loop() {
			p.Plan(nodes, cells, targets, t0)
		}
	})
	b.Run("planner+predictor", func(b *testing.B) {
		pp := newPlanner(b, cfg, hashPredictor{})
		for b.Loop() {
			pp.Plan(nodes, cells, targets, t0)
		}
	})
	b.Run("naive", func(b *testing.B) {
		nv := naive{cfg: cfg}
		for b.Loop() {
			nv.plan(nodes, cells, targets, t0)
		}
	})
	b.Run("firstfit", func(b *testing.B) {
		for b.Loop() {
			firstFit(cfg, nodes, cells)
		}
	})
	b.Run("planner-steady", func(b *testing.B) {
		got, _ := p.Plan(nodes, cells, targets, t0)
		placed := make([]Cell, len(cells))
		copy(placed, cells)
		for i := range placed {
			placed[i].Node, placed[i].Since = got[placed[i].ID], t0
		}
		later := t0.Add(time.Hour) // past every grace and residence
		var ds []Decision
		for b.Loop() {
			_, ds = p.Plan(nodes, placed, targets, later)
		}
		b.ReportMetric(float64(len(ds)), "decisions/op")
	})
}

// BenchmarkPlace is one incremental decision over the 1,000 nodes: a new
// analytics cell that follows a vehicle, reads two streams and needs amd64.
// The burst rows place 100 generated cells one after another (a bursty
// batch job): on one View, and with the naive peer; ns/cell is the cost
// of each decision.
func BenchmarkPlace(b *testing.B) {
	nodes, burst, targets := genFleet(1, benchNodes, 100)
	c := Cell{ID: "analytics-new", App: "analytics", MemBytes: 128 << 20, CPU: 0.5,
		Constraints:  Constraints{Arch: "amd64", Target: "vehicle-07"},
		InputStreams: []string{"stream-001", "stream-002"}, LatencySLOms: 40}
	cfg := DefaultConfig()
	p := newPlanner(b, cfg, nil)
	nv := naive{cfg: cfg}
	perCell := func(b *testing.B) {
		b.ReportMetric(float64(b.Elapsed().Nanoseconds())/float64(b.N*len(burst)), "ns/cell")
	}
	b.Run("planner", func(b *testing.B) {
		for b.Loop() {
			p.Place(nodes, c, targets, t0)
		}
	})
	b.Run("naive", func(b *testing.B) {
		cells := []Cell{c}
		for b.Loop() {
			nv.plan(nodes, cells, targets, t0)
		}
	})
	b.Run("planner-burst100", func(b *testing.B) {
		for b.Loop() {
			vw := p.View(nodes, targets, t0)
			for i := range burst {
				vw.Place(burst[i])
			}
		}
		perCell(b)
	})
	b.Run("naive-burst100", func(b *testing.B) {
		for b.Loop() {
			nv.plan(nodes, burst, targets, t0)
		}
		perCell(b)
	})
}
