package planner

import (
	"fmt"
	"testing"
	"time"
)

// TestMoveRules: each rule moves a placed cell when it fires — and only
// then, and only as far as residence and margin allow.
func TestMoveRules(t *testing.T) {
	vehicle := north(castelloli, 2000)
	cases := []struct {
		name    string
		cfg     func(*Config)
		pred    Predictor
		nodes   []Node
		cell    Cell
		targets map[string]Point
		want    string // where the cell ends up; "" = nowhere
		kind    string // the decision's kind; "" = no decision
		reason  string
		why     string // in the decision's sentence
	}{
		{
			name:  "stays without a reason",
			nodes: []Node{node("a", load(0.5)), node("b", free(8*gib), load(0))},
			cell:  cell("x", on("a", time.Hour)),
			want:  "a",
		},
		{
			name:  "node offline past the grace",
			nodes: []Node{node("a", offline(3*time.Minute)), node("b")},
			cell:  cell("x", on("a", 0)), // just arrived: residence does not hold it
			want:  "b",
			kind:  KindMove, reason: ReasonNodeOffline,
			why: "moved from a because a offline for 3m0s (grace 2m0s); b won with",
		},
		{
			name:  "node offline within the grace",
			nodes: []Node{node("a", offline(time.Minute)), node("b")},
			cell:  cell("x", on("a", time.Hour)),
			want:  "a",
		},
		{
			name:  "node gone",
			nodes: []Node{node("b")},
			cell:  cell("x", on("a", time.Hour)),
			want:  "b",
			kind:  KindMove, reason: ReasonNodeOffline,
			why: "because a is not in the fleet",
		},
		{
			name:  "node offline and nowhere to go",
			nodes: []Node{node("a", offline(time.Hour)), node("b", arch("arm64"))},
			cell:  cell("x", on("a", time.Hour), with(func(k *Constraints) { k.Arch = "amd64" })),
			want:  "",
			kind:  KindUnplaceable, reason: ReasonNodeOffline,
			why: "cannot move it from a (a offline for 1h0m0s (grace 2m0s)): no node can take it; rejected 2 of 2 nodes: b by arch (arm64, the cell needs amd64), a by current",
		},
		{
			name:  "pinned elsewhere",
			nodes: []Node{node("a", free(8*gib)), node("b")},
			cell:  cell("x", on("a", 0), with(func(k *Constraints) { k.Pinned = "b" })),
			want:  "b",
			kind:  KindMove, reason: ReasonPinned,
			why: "because it is pinned to b",
		},
		{
			name:  "pinned to a node without room: stays and says so",
			nodes: []Node{node("a"), node("b", free(100*mib))},
			cell:  cell("x", on("a", time.Hour), with(func(k *Constraints) { k.Pinned = "b" })),
			want:  "a",
			kind:  KindUnplaceable, reason: ReasonPinned,
			why: "b by memory (100 MiB free < 256 MiB requested); it stays on a",
		},
		{
			name:  "constraints: the node's labels changed",
			nodes: []Node{node("a", label("zone", "b")), node("b", label("zone", "a"))},
			cell:  cell("x", on("a", 0), with(func(k *Constraints) { k.NodeLabels = map[string]string{"zone": "a"} })),
			want:  "b",
			kind:  KindMove, reason: ReasonConstraints,
			why: "because a no longer fits (label zone=b, the cell needs zone=a)",
		},
		{
			name: "energy: to the grid, even past a healthier-scoring green node",
			nodes: []Node{node("a", green(20, -15)), node("b", free(16*gib), load(0), green(100, 5)),
				node("c", load(0.6), free(1*gib))},
			cell: cell("x", on("a", time.Hour)),
			want: "c",
			kind: KindMove, reason: ReasonEnergy,
			why: "because a: battery 20% draining 15%/h lasts 1.3 h < 2 h horizon; c won with",
		},
		{
			name:  "energy: another green node when no grid node fits",
			nodes: []Node{node("a", green(20, -15)), node("b", green(100, 5)), node("c", free(0))},
			cell:  cell("x", on("a", time.Hour)),
			want:  "b",
			kind:  KindMove, reason: ReasonEnergy,
		},
		{
			name:  "energy: forecast by the predictor",
			pred:  fakePredictor{hours: map[string]float64{"a": 0.5}},
			nodes: []Node{node("a", green(90, 1)), node("b")},
			cell:  cell("x", on("a", time.Hour)),
			want:  "b",
			kind:  KindMove, reason: ReasonEnergy,
			why: "because a: energy forecast 0.5 h < 2 h horizon",
		},
		{
			name:  "energy: nowhere to go is recorded",
			nodes: []Node{node("a", green(20, -15)), node("b", free(0))},
			cell:  cell("x", on("a", time.Hour)),
			want:  "a",
			kind:  KindUnplaceable, reason: ReasonEnergy,
			why: "it stays on a",
		},
		{
			name:  "energy: held by the minimum residence",
			nodes: []Node{node("a", green(20, -15)), node("b")},
			cell:  cell("x", on("a", time.Minute)),
			want:  "a",
		},
		{
			name: "follow-target: into the covering node",
			nodes: []Node{node("a", cover(castelloli, 500), free(8*gib)),
				node("b", cover(north(vehicle, 120), 500))},
			cell:    cell("x", on("a", time.Hour), with(func(k *Constraints) { k.Target = "vehicle-7" })),
			targets: map[string]Point{"vehicle-7": vehicle},
			want:    "b",
			kind:    KindMove, reason: ReasonFollowTarget,
			why: "because target vehicle-7 is 2.0 km from a, outside its 500 m coverage; b won with",
		},
		{
			name: "follow-target: within the coverage slack it stays",
			nodes: []Node{node("a", cover(castelloli, 500)),
				node("b", cover(north(castelloli, 530), 500))},
			cell:    cell("x", on("a", time.Hour), with(func(k *Constraints) { k.Target = "vehicle-7" })),
			targets: map[string]Point{"vehicle-7": north(castelloli, 530)},
			want:    "a",
		},
		{
			name: "follow-target: nobody covers and the current node is closest",
			nodes: []Node{node("a", cover(castelloli, 500)),
				node("b", cover(north(castelloli, -3000), 500))},
			cell:    cell("x", on("a", time.Hour), with(func(k *Constraints) { k.Target = "vehicle-7" })),
			targets: map[string]Point{"vehicle-7": north(castelloli, 1500)},
			want:    "a",
		},
		{
			name:  "slo: to a node with more headroom",
			nodes: []Node{node("a", load(0.85), free(512*mib)), node("b", load(0.05), free(8*gib))},
			cell:  cell("x", on("a", time.Hour), slo(50, 80)),
			want:  "b",
			kind:  KindMove, reason: ReasonSLO,
			why: "because p99 80 ms > 50 ms SLO; b won with",
		},
		{
			name:  "slo: no better node, no move",
			nodes: []Node{node("a", load(0.3)), node("b", load(0.3))},
			cell:  cell("x", on("a", time.Hour), slo(50, 80)),
			want:  "a",
		},
		{
			name:  "overload",
			nodes: []Node{node("a", load(0.97)), node("b", load(0.1))},
			cell:  cell("x", on("a", time.Hour)),
			want:  "b",
			kind:  KindMove, reason: ReasonOverload,
			why: "because a load 97% > 90%; b won with",
		},
		{
			name:  "overload: held by the minimum residence",
			nodes: []Node{node("a", load(0.97)), node("b", load(0.1))},
			cell:  cell("x", on("a", 90*time.Second)),
			want:  "a",
		},
		{
			name:  "overload: held by the margin",
			cfg:   func(c *Config) { c.MoveMargin = 40 },
			nodes: []Node{node("a", load(0.97)), node("b", load(0.1))},
			cell:  cell("x", on("a", time.Hour)),
			want:  "a",
		},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			cfg := DefaultConfig()
			if tc.cfg != nil {
				tc.cfg(&cfg)
			}
			p := newPlanner(t, cfg, tc.pred)
			got, ds := p.Plan(tc.nodes, []Cell{tc.cell}, tc.targets, t0)
			if got[tc.cell.ID] != tc.want {
				t.Errorf("runs on %q, want %q; decisions %+v", got[tc.cell.ID], tc.want, ds)
			}
			if tc.kind == "" {
				if len(ds) > 0 {
					t.Errorf("unexpected decisions %+v", ds)
				}
				return
			}
			if len(ds) != 1 {
				t.Fatalf("decisions %+v", ds)
			}
			d := ds[0]
			if d.Kind != tc.kind || d.Reason != tc.reason || d.From != tc.cell.Node {
				t.Errorf("kind %q reason %q from %q; want %q %q %q", d.Kind, d.Reason, d.From, tc.kind, tc.reason, tc.cell.Node)
			}
			if tc.kind == KindMove && d.To != tc.want {
				t.Errorf("to %q, want %q", d.To, tc.want)
			}
			mustContain(t, d.Why, tc.why)
			if tc.kind == KindMove {
				var cur *Candidate
				for i := range d.Candidates {
					if d.Candidates[i].Current {
						cur = &d.Candidates[i]
					}
				}
				if _, gone := tc.targets[""]; cur == nil && tc.reason != ReasonNodeOffline && !gone {
					t.Errorf("no current candidate in %+v", d.Candidates)
				}
			}
		})
	}
}

// TestMarginIsApplied: an optional move happens only when the winner beats
// staying by the margin; forced moves ignore it.
func TestMarginIsApplied(t *testing.T) {
	nodes := []Node{node("a", load(0.95)), node("b", load(0.1))}
	c := cell("x", on("a", time.Hour))
	base := DefaultConfig()
	d := newPlanner(t, base, nil).Place(nodes, c, nil, t0) // manual: no margin
	var win, stay float64
	for _, cand := range d.Candidates {
		if cand.Node == "b" {
			win = cand.Total
		}
		if cand.Current {
			stay = cand.Total
		}
	}
	gap := win - stay
	if gap <= 0 {
		t.Fatalf("b %v vs staying %v", win, stay)
	}
	for _, tc := range []struct {
		margin float64
		moves  bool
	}{{gap - 0.5, true}, {gap + 0.5, false}} {
		cfg := base
		cfg.MoveMargin = tc.margin
		got, _ := newPlanner(t, cfg, nil).Plan(nodes, []Cell{c}, nil, t0)
		if (got["x"] == "b") != tc.moves {
			t.Errorf("margin %.2f (gap %.2f): runs on %s", tc.margin, gap, got["x"])
		}
		// A manual migrate ignores the margin.
		if d := newPlanner(t, cfg, nil).Place(nodes, c, nil, t0); d.To != "b" || d.Reason != ReasonManual {
			t.Errorf("manual with margin %.2f: %+v", tc.margin, d)
		}
	}
}

// TestOverloadShedsOnlyEnough: an overloaded node loses its biggest CPU
// users until it is projected back under the threshold, not all its cells.
func TestOverloadShedsOnlyEnough(t *testing.T) {
	p := defaultPlanner(t)
	nodes := []Node{node("a", load(0.98)), node("b", load(0.05), free(16*gib), func(n *Node) { n.CPUs = 16 })}
	// a has 4 CPUs: 0.98 → 0.9 needs 0.32 cores gone.
	cells := []Cell{
		cell("c1", on("a", time.Hour), cpu(0.1)),
		cell("c2", on("a", time.Hour), cpu(0.25)),
		cell("c3", on("a", time.Hour), cpu(0.2)),
		cell("c4", on("a", time.Hour), cpu(0.05)),
	}
	got, ds := p.Plan(nodes, cells, nil, t0)
	want := map[string]string{"c1": "a", "c2": "b", "c3": "b", "c4": "a"}
	for id, n := range want {
		if got[id] != n {
			t.Errorf("%s on %s, want %s", id, got[id], n)
		}
	}
	if len(ds) != 2 || ds[0].Cell != "c2" || ds[1].Cell != "c3" {
		t.Errorf("decisions %+v", ds)
	}
}

// TestRulePriority: a cell with several problems moves for the most
// pressing one, and moves come before new placements.
func TestRulePriority(t *testing.T) {
	p := defaultPlanner(t)
	nodes := []Node{node("a", green(10, -10), load(0.99)), node("b", free(300*mib))}
	cells := []Cell{cell("new"), cell("old", on("a", time.Hour), slo(10, 50))}
	got, ds := p.Plan(nodes, cells, nil, t0)
	if got["old"] != "b" || got["new"] != "" {
		t.Fatalf("assignments %v", got)
	}
	if len(ds) != 2 || ds[0].Reason != ReasonEnergy || ds[1].Kind != KindUnplaceable || ds[1].Cell != "new" {
		t.Fatalf("decisions %+v", ds)
	}
}

// TestPlaceManual: a manual migrate never picks the current node, even
// when it is the best, and ignores the minimum residence.
func TestPlaceManual(t *testing.T) {
	p := defaultPlanner(t)
	nodes := []Node{node("a", free(16*gib), load(0)), node("b"), node("c", load(0.6))}
	d := p.Place(nodes, cell("x", on("a", 0)), nil, t0)
	if d.Kind != KindMove || d.Reason != ReasonManual || d.From != "a" || d.To != "b" {
		t.Fatalf("decision %+v", d)
	}
	mustContain(t, d.Why, "moved from a because an operator asked to migrate it; b won with")
	if r, ok := rejection(d, FilterCurrent); !ok || r.Example != "a" {
		t.Errorf("rejections %+v", d.Rejected)
	}
	// Nowhere else to go.
	d = p.Place(nodes[:1], cell("x", on("a", 0)), nil, t0)
	if d.Kind != KindUnplaceable || d.To != "" {
		t.Fatalf("decision %+v", d)
	}
	mustContain(t, d.Why, "cannot move it from a (an operator asked to migrate it): no node can take it", "it stays on a")
}

// TestNoFlapping runs the planner every 30 s for two hours while every
// figure it reads wobbles back and forth a little — load, battery, target
// position, observed latency — applying its assignments as the console
// would. A cell may move once if a rule truly fires; it must never go
// back, with or without the minimum residence. With the protections off,
// the same wobble does make cells ping-pong, so the test can tell.
func TestNoFlapping(t *testing.T) {
	for _, residence := range []time.Duration{0, DefaultConfig().MinResidence} {
		t.Run(fmt.Sprint("residence ", residence), func(t *testing.T) {
			cfg := DefaultConfig()
			cfg.MinResidence = residence
			history := wobble(t, cfg)
			for id, moves := range history {
				if len(moves) > 1 {
					t.Errorf("%s ping-pongs: %v", id, moves)
				}
			}
			// The moves that must happen: g's battery runs out within the
			// horizon, b's load is over the line on odd cycles.
			if len(history["green"]) != 1 || len(history["busy"]) != 1 {
				t.Errorf("moves %v, want green and busy to move once", history)
			}
		})
	}
	t.Run("without protections", func(t *testing.T) {
		cfg := DefaultConfig()
		cfg.MinResidence, cfg.MoveMargin, cfg.CoverageSlack, cfg.OverloadTarget = 0, 0, 0, cfg.OverloadLoad
		pingPong := false
		for _, moves := range wobble(t, cfg) {
			pingPong = pingPong || len(moves) > 2
		}
		if !pingPong {
			t.Error("no cell ping-pongs: the simulation does not exercise the protections")
		}
	})
}

// wobble runs the simulation of TestNoFlapping and returns each cell's moves.
func wobble(t *testing.T, cfg Config) map[string][]string {
	t.Helper()
	p := newPlanner(t, cfg, nil)
	base := castelloli
	cells := []Cell{
		cell("slo", on("a", time.Hour), slo(50, 49)),
		cell("busy", on("b", time.Hour)),
		cell("follow", on("c", time.Hour), with(func(k *Constraints) { k.Target = "vehicle-1" })),
		cell("green", on("g", time.Hour)),
		cell("edge", on("e", time.Hour), with(func(k *Constraints) { k.Target = "vehicle-2" })),
	}
	history := map[string][]string{}
	now := t0
	for i := range 240 {
		odd := i%2 == 1
		wob := func(x, d float64) float64 {
			if odd {
				return x + d
			}
			return x - d
		}
		nodes := []Node{
			node("a", load(wob(0.35, 0.04))),
			node("b", load(wob(0.9, 0.03))), // crosses the overload line
			node("d", load(wob(0.35, -0.04))),
			// c and f overlap around vehicle-1.
			node("c", cover(base, 500), load(wob(0.3, 0.05))),
			node("f", cover(north(base, 600), 500), load(wob(0.3, -0.05))),
			// vehicle-2 jitters across e's coverage edge, about as far from h.
			node("e", cover(north(base, 3000), 500)),
			node("h", cover(north(base, 4010), 500), free(6*gib)),
			// g's battery lasts about the horizon, one way or the other.
			node("g", green(wob(20, 0.5), -10)),
		}
		targets := map[string]Point{
			"vehicle-1": north(base, wob(300, 40)),
			"vehicle-2": north(base, wob(3500, 40)),
		}
		cells[0].Observed.LatencyP99ms = wob(50, 2) // around its SLO
		got, ds := p.Plan(nodes, cells, targets, now)
		for _, d := range ds {
			if d.Kind != KindMove {
				t.Fatalf("cycle %d: %+v", i, d)
			}
		}
		for j := range cells {
			c := &cells[j]
			if got[c.ID] == "" {
				t.Fatalf("cycle %d: %s lost its node", i, c.ID)
			}
			if got[c.ID] != c.Node {
				history[c.ID] = append(history[c.ID], fmt.Sprintf("%d:%s→%s", i, c.Node, got[c.ID]))
				c.Node, c.Since = got[c.ID], now
			}
		}
		now = now.Add(30 * time.Second)
	}
	return history
}
