package planner

import (
	"math"
	"testing"
)

// TestScoreDirections: two nodes differ in one respect; the better one
// must win and score higher on that component.
func TestScoreDirections(t *testing.T) {
	cases := []struct {
		name      string
		pred      Predictor
		better    Node
		worse     Node
		cell      Cell
		component string
	}{
		{
			name:      "capacity: more free memory",
			better:    node("better", free(6*gib)),
			worse:     node("worse", free(1*gib)),
			cell:      cell("c"),
			component: ScoreCapacity,
		},
		{
			name:      "capacity: more idle cores",
			better:    node("better", func(n *Node) { n.CPUs = 16 }),
			worse:     node("worse", func(n *Node) { n.CPUs = 2 }),
			cell:      cell("c"),
			component: ScoreCapacity,
		},
		{
			name:      "load: lower utilisation",
			better:    node("better", load(0.1)),
			worse:     node("worse", load(0.7)),
			cell:      cell("c"),
			component: ScoreLoad,
		},
		{
			name:      "locality: holds the input streams",
			better:    node("better", holds("s1", "s2")),
			worse:     node("worse", holds("s2", "s3")),
			cell:      cell("c", reads("s1", "s2")),
			component: ScoreLocality,
		},
		{
			name:      "distance: closer to the affinity point",
			better:    node("better", at(north(castelloli, 300))),
			worse:     node("worse", at(north(castelloli, 3000))),
			cell:      cell("c", with(func(k *Constraints) { k.Point = &castelloli })),
			component: ScoreDistance,
		},
		{
			name:      "distance: inside coverage beats just outside",
			better:    node("better", cover(north(castelloli, 450), 500)),
			worse:     node("worse", cover(north(castelloli, 200), 100)),
			cell:      cell("c", with(func(k *Constraints) { k.Point = &castelloli })),
			component: ScoreDistance,
		},
		{
			name:      "distance: a known position beats an unknown one",
			better:    node("better", at(north(castelloli, 20000))),
			worse:     node("worse"),
			cell:      cell("c", with(func(k *Constraints) { k.Point = &castelloli })),
			component: ScoreDistance,
		},
		{
			name:      "energy: grid beats a draining green node",
			better:    node("better"),
			worse:     node("worse", green(60, -5)),
			cell:      cell("c"),
			component: ScoreEnergy,
		},
		{
			name:      "energy: a longer outlook",
			better:    node("better", green(90, -2)),
			worse:     node("worse", green(40, -10)),
			cell:      cell("c"),
			component: ScoreEnergy,
		},
		{
			name:      "energy: preferring green",
			better:    node("better", green(80, 2)),
			worse:     node("worse"),
			cell:      cell("c", with(func(k *Constraints) { k.Power = PowerGreen })),
			component: ScoreEnergy,
		},
		{
			name:      "energy: preferring grid",
			better:    node("better"),
			worse:     node("worse", green(100, 5)),
			cell:      cell("c", with(func(k *Constraints) { k.Power = PowerGrid })),
			component: ScoreEnergy,
		},
		{
			name:      "latency: predicted inside the SLO",
			pred:      fakePredictor{latency: map[string]float64{"better": 20, "worse": 70}},
			better:    node("better"),
			worse:     node("worse"),
			cell:      cell("c", slo(50, 0)),
			component: ScoreLatency,
		},
		{
			name:      "latency: a known good prediction beats unknown",
			pred:      fakePredictor{latency: map[string]float64{"better": 10}},
			better:    node("better"),
			worse:     node("worse"),
			cell:      cell("c", slo(50, 0)),
			component: ScoreLatency,
		},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			p := newPlanner(t, DefaultConfig(), tc.pred)
			// Both orders, so the name tie-break cannot be what decides.
			for _, nodes := range [][]Node{{tc.better, tc.worse}, {tc.worse, tc.better}} {
				d := p.Place(nodes, tc.cell, nil, t0)
				if d.To != "better" {
					t.Fatalf("to = %q; why: %s", d.To, d.Why)
				}
				b, _ := candidate(d, "better")
				w, _ := candidate(d, "worse")
				if !(b.Scores[tc.component] > w.Scores[tc.component]) {
					t.Errorf("%s: better %v, worse %v", tc.component, b.Scores, w.Scores)
				}
			}
		})
	}
}

// TestScoreRanges: every weighted component lies within [0, weight], the
// total is their sum, and components that do not apply are left out.
func TestScoreRanges(t *testing.T) {
	cfg := DefaultConfig()
	p := newPlanner(t, cfg, hashPredictor{})
	nodes, cells, targets := genFleet(7, 200, 300)
	weights := map[string]float64{
		ScoreCapacity: cfg.Weights.Capacity, ScoreLoad: cfg.Weights.Load, ScoreLocality: cfg.Weights.Locality,
		ScoreDistance: cfg.Weights.Distance, ScoreEnergy: cfg.Weights.Energy, ScoreLatency: cfg.Weights.Latency,
	}
	_, ds := p.Plan(nodes, cells, targets, t0)
	byID := map[string]Cell{}
	for _, c := range cells {
		byID[c.ID] = c
	}
	for _, d := range ds {
		c := byID[d.Cell]
		for _, cand := range d.Candidates {
			if cand.Filtered != "" {
				continue
			}
			sum := 0.0
			for k, v := range cand.Scores {
				if v < 0 || v > weights[k]+1e-9 {
					t.Fatalf("%s on %s: %s = %v outside [0, %v]", d.Cell, cand.Node, k, v, weights[k])
				}
				sum += v
			}
			if math.Abs(sum-cand.Total) > 0.05 {
				t.Fatalf("%s on %s: components add to %v, total %v", d.Cell, cand.Node, sum, cand.Total)
			}
			_, hasLoc := cand.Scores[ScoreLocality]
			_, hasLat := cand.Scores[ScoreLatency]
			_, hasDist := cand.Scores[ScoreDistance]
			if hasLoc != (len(c.InputStreams) > 0) || hasLat != (c.LatencySLOms > 0) ||
				hasDist != (c.Constraints.Point != nil || c.Constraints.Target != "") {
				t.Fatalf("%s: components %v do not fit the cell %+v", d.Cell, cand.Scores, c)
			}
		}
	}
}

// TestWeights: the weights decide a trade-off, and a zero weight turns a
// component off.
func TestWeights(t *testing.T) {
	nodes := []Node{
		node("near", at(north(castelloli, 100)), free(1*gib), load(0.6)),
		node("roomy", at(north(castelloli, 5000)), free(16*gib), load(0.05)),
	}
	c := cell("c", with(func(k *Constraints) { k.Point = &castelloli }))
	cases := []struct {
		name string
		w    Weights
		want string
	}{
		{"distance heavy", Weights{Capacity: 5, Load: 5, Distance: 60}, "near"},
		{"capacity heavy", Weights{Capacity: 60, Load: 20, Distance: 5}, "roomy"},
		{"distance only", Weights{Distance: 1}, "near"},
		{"load only", Weights{Load: 1}, "roomy"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			cfg := DefaultConfig()
			cfg.Weights = tc.w
			d := newPlanner(t, cfg, nil).Place(nodes, c, nil, t0)
			if d.To != tc.want {
				t.Fatalf("to = %q, want %q; why: %s", d.To, tc.want, d.Why)
			}
			win, _ := candidate(d, d.To)
			for k, v := range map[string]float64{ScoreCapacity: tc.w.Capacity, ScoreLoad: tc.w.Load,
				ScoreDistance: tc.w.Distance, ScoreEnergy: tc.w.Energy} {
				if _, ok := win.Scores[k]; ok != (v > 0) {
					t.Errorf("weight %s=%v but scores %v", k, v, win.Scores)
				}
			}
		})
	}
}

// TestDistance checks the haversine and that the hot loop's chord math
// agrees with it.
func TestDistance(t *testing.T) {
	barcelona, madrid := Point{41.3874, 2.1686}, Point{40.4168, -3.7038}
	if d := Distance(barcelona, madrid); math.Abs(d-505_000) > 2_000 {
		t.Errorf("Barcelona–Madrid = %.0f m, want about 505 km", d)
	}
	for _, m := range []float64{1, 120, 500, 12_345, 1_000_000} {
		q := north(castelloli, m)
		if d := Distance(castelloli, q); math.Abs(d-m) > 1e-6*m+1e-6 {
			t.Errorf("haversine %v m = %v", m, d)
		}
		if d := chordMetres(chord2(unitVec(castelloli), unitVec(q))); math.Abs(d-m) > 1e-6*m+1e-6 {
			t.Errorf("chord %v m = %v", m, d)
		}
		if c2 := metresChord2(m); math.Abs(chordMetres(c2)-m) > 1e-6*m {
			t.Errorf("round trip %v m = %v", m, chordMetres(c2))
		}
	}
}
