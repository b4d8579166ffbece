package planner

import (
	"fmt"
	"hash/fnv"
	"math/rand/v2"
	"strings"
	"testing"
	"time"
)

const (
	mib = uint64(1) << 20
	gib = uint64(1) << 30
)

// t0 is the planning time of the tests.
var t0 = time.Date(2026, 6, 1, 12, 0, 0, 0, time.UTC)

// castelloli is the circuit the positions in the tests are near.
var castelloli = Point{Lat: 41.5800, Lon: 1.7000}

// north returns the point m metres north of p.
func north(p Point, m float64) Point {
	return Point{Lat: p.Lat + m/earthRadius*180/3.141592653589793, Lon: p.Lon}
}

// node is an online amd64 grid node with 4 of 8 GiB free, 4 CPUs at 20%.
func node(name string, opts ...func(*Node)) Node {
	n := Node{Name: name, Arch: "amd64", Online: true, MemTotal: 8 * gib, MemFree: 4 * gib,
		CPUs: 4, Load: 0.2, Power: PowerGrid, Labels: map[string]string{}}
	for _, o := range opts {
		o(&n)
	}
	return n
}

func offline(since time.Duration) func(*Node) {
	return func(n *Node) { n.Online, n.OfflineSince = false, t0.Add(-since) }
}
func arch(a string) func(*Node)     { return func(n *Node) { n.Arch = a } }
func free(b uint64) func(*Node)     { return func(n *Node) { n.MemFree = b } }
func load(l float64) func(*Node)    { return func(n *Node) { n.Load = l } }
func label(k, v string) func(*Node) { return func(n *Node) { n.Labels[k] = v } }
func at(p Point) func(*Node)        { return func(n *Node) { n.Position = &p } }
func holds(s ...string) func(*Node) { return func(n *Node) { n.Streams = s } }
func cover(p Point, m float64) func(*Node) {
	return func(n *Node) { n.Position = &p; n.Labels[LabelCoverage] = fmt.Sprint(m) }
}
func green(pct, trend float64) func(*Node) {
	return func(n *Node) { n.Power, n.Battery = PowerGreen, &Battery{Percent: pct, TrendPctPerHour: trend} }
}

// cell is an unplaced cell asking for 256 MiB and a quarter core.
func cell(id string, opts ...func(*Cell)) Cell {
	c := Cell{ID: id, App: "app", MemBytes: 256 * mib, CPU: 0.25}
	for _, o := range opts {
		o(&c)
	}
	return c
}

func on(node string, since time.Duration) func(*Cell) {
	return func(c *Cell) { c.Node, c.Since = node, t0.Add(-since) }
}
func mem(b uint64) func(*Cell)  { return func(c *Cell) { c.MemBytes = b } }
func cpu(v float64) func(*Cell) { return func(c *Cell) { c.CPU = v } }
func with(f func(*Constraints)) func(*Cell) {
	return func(c *Cell) { f(&c.Constraints) }
}
func reads(s ...string) func(*Cell) { return func(c *Cell) { c.InputStreams = s } }
func slo(ms float64, observed float64) func(*Cell) {
	return func(c *Cell) {
		c.LatencySLOms = ms
		if observed > 0 {
			c.Observed = &Observed{LatencyP99ms: observed}
		}
	}
}

func newPlanner(t testing.TB, cfg Config, pred Predictor) *Planner {
	t.Helper()
	p, err := New(cfg, pred)
	if err != nil {
		t.Fatal(err)
	}
	return p
}

func defaultPlanner(t testing.TB) *Planner {
	t.Helper()
	return newPlanner(t, DefaultConfig(), nil)
}

// rejection returns the decision's rejection under filter, if any.
func rejection(d Decision, filter string) (Rejection, bool) {
	for _, r := range d.Rejected {
		if r.Filter == filter {
			return r, true
		}
	}
	return Rejection{}, false
}

func candidate(d Decision, node string) (Candidate, bool) {
	for _, c := range d.Candidates {
		if c.Node == node && c.Filtered == "" {
			return c, true
		}
	}
	return Candidate{}, false
}

func mustContain(t *testing.T, s string, parts ...string) {
	t.Helper()
	for _, p := range parts {
		if !strings.Contains(s, p) {
			t.Errorf("%q\ndoes not contain %q", s, p)
		}
	}
}

// fakePredictor answers from fixed tables; missing entries are unknown.
type fakePredictor struct {
	hours   map[string]float64
	latency map[string]float64 // by node name
}

func (f fakePredictor) EnergyHours(node string) (float64, bool) {
	h, ok := f.hours[node]
	return h, ok
}

func (f fakePredictor) LatencyMs(c Cell, n Node) (float64, bool) {
	ms, ok := f.latency[n.Name]
	return ms, ok
}

// hashPredictor is a deterministic, cheap predictor for generated fleets.
type hashPredictor struct{}

func (hashPredictor) EnergyHours(node string) (float64, bool) {
	h := hash(node)
	if h%3 == 0 {
		return 0, false
	}
	return float64(h%480) / 10, true
}

func (hashPredictor) LatencyMs(c Cell, n Node) (float64, bool) {
	h := hash(n.Name) ^ hash(c.App)
	if h%5 == 0 {
		return 0, false
	}
	return 5 + float64(h%1500)/10, true
}

func hash(s string) uint64 {
	h := fnv.New64a()
	h.Write([]byte(s))
	return h.Sum64()
}

// genFleet makes a reproducible fleet near the circuit: mixed arch, sites,
// labels, coverage radii, positions, green nodes with batteries, offline
// nodes and durable streams; and unplaced cells with a realistic mix of
// constraints, affinities, input streams and SLOs.
func genFleet(seed uint64, nNodes, nCells int) ([]Node, []Cell, map[string]Point) {
	rng := rand.New(rand.NewPCG(seed, 42))
	near := func(spread float64) *Point {
		return &Point{Lat: castelloli.Lat + (rng.Float64()-0.5)*spread, Lon: castelloli.Lon + (rng.Float64()-0.5)*spread}
	}
	const sites, streams, nTargets = 25, 400, 100
	zones := []string{"a", "b", "c"}
	nodes := make([]Node, nNodes)
	for i := range nodes {
		n := Node{
			Name:   fmt.Sprintf("edge-%04d", i),
			Arch:   "amd64",
			Online: true,
			Labels: map[string]string{
				LabelSite: fmt.Sprintf("site-%02d", rng.IntN(sites)),
				"zone":    zones[rng.IntN(len(zones))],
			},
			CPUs: []int{2, 4, 8, 16}[rng.IntN(4)],
			Load: 0.05 + 0.9*rng.Float64(),
		}
		if rng.IntN(100) < 35 {
			n.Arch = "arm64"
		}
		if rng.IntN(10) == 0 {
			n.Labels["gpu"] = "true"
		}
		if rng.IntN(100) < 5 {
			n.Online, n.OfflineSince = false, t0.Add(-time.Duration(rng.IntN(600))*time.Second)
		}
		n.MemTotal = []uint64{4, 8, 16, 32}[rng.IntN(4)] * gib
		n.MemFree = uint64(float64(n.MemTotal) * (0.3 + 0.6*rng.Float64()))
		if rng.IntN(10) > 0 {
			n.Position = near(0.3)
			n.Labels[LabelCoverage] = fmt.Sprint(300 + rng.IntN(1700))
		}
		n.Power = PowerGrid
		if rng.IntN(100) < 30 {
			n.Power = PowerGreen
			if rng.IntN(10) < 7 {
				n.Battery = &Battery{Percent: 5 + 95*rng.Float64(), TrendPctPerHour: -10 + 20*rng.Float64()}
			}
		}
		for range 3 + rng.IntN(6) {
			n.Streams = append(n.Streams, fmt.Sprintf("stream-%03d", rng.IntN(streams)))
		}
		nodes[i] = n
	}
	targets := make(map[string]Point, nTargets)
	for i := range nTargets {
		targets[fmt.Sprintf("vehicle-%02d", i)] = *near(0.3)
	}
	cells := make([]Cell, nCells)
	for i := range cells {
		c := Cell{
			ID:       fmt.Sprintf("cell-%05d", i),
			App:      fmt.Sprintf("app-%03d", i%300),
			MemBytes: (16 + uint64(rng.IntN(240))) * mib,
			CPU:      0.05 + 0.45*rng.Float64(),
		}
		k := &c.Constraints
		switch r := rng.IntN(100); {
		case r < 20:
			k.Arch = []string{"amd64", "arm64"}[rng.IntN(2)]
		case r < 30:
			k.NodeLabels = map[string]string{"zone": zones[rng.IntN(len(zones))]}
		case r < 35:
			k.NodeLabels = map[string]string{"gpu": "true"}
		case r < 45:
			k.Site = fmt.Sprintf("site-%02d", rng.IntN(sites))
		case r < 47:
			k.Pinned = nodes[rng.IntN(nNodes)].Name
		}
		switch r := rng.IntN(100); {
		case r < 15:
			k.Point = near(0.3)
		case r < 25:
			k.Target = fmt.Sprintf("vehicle-%02d", rng.IntN(nTargets))
		}
		if rng.IntN(10) == 0 {
			k.Power = []string{PowerGreen, PowerGrid}[rng.IntN(2)]
		}
		if rng.IntN(100) < 5 {
			k.MinFreeMem = 2 * gib
		}
		if rng.IntN(2) == 0 {
			for range 1 + rng.IntN(3) {
				c.InputStreams = append(c.InputStreams, fmt.Sprintf("stream-%03d", rng.IntN(streams)))
			}
		}
		if rng.IntN(10) == 0 {
			c.LatencySLOms = 20 + float64(rng.IntN(80))
		}
		cells[i] = c
	}
	return nodes, cells, targets
}
