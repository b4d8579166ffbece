package planner

import (
	"math"
	"testing"
)

// TestDecisionCitesPredictions: a decision shows the learning plane's
// figures each candidate was scored with, and none without a Predictor.
func TestDecisionCitesPredictions(t *testing.T) {
	nodes := []Node{node("a", green(90, -1)), node("b", green(90, -1)), node("c")}
	c := cell("x", slo(50, 0))
	pred := fakePredictor{
		hours:   map[string]float64{"a": 30, "b": math.Inf(1)},
		latency: map[string]float64{"a": 20, "c": 80},
	}
	d := newPlanner(t, DefaultConfig(), pred).Place(nodes, c, nil, t0)
	got := map[string]*Predicted{}
	for _, cand := range d.Candidates {
		got[cand.Node] = cand.Predicted
	}
	if p := got["a"]; p == nil || p.EnergyHours == nil || *p.EnergyHours != 30 || p.LatencyMs == nil || *p.LatencyMs != 20 {
		t.Fatalf("a: %+v", p)
	}
	if p := got["b"]; p != nil {
		t.Fatalf("b: an endless forecast and no latency cite nothing: %+v", p)
	}
	if p := got["c"]; p == nil || p.EnergyHours != nil || p.LatencyMs == nil || *p.LatencyMs != 80 {
		t.Fatalf("c (grid): %+v", p)
	}
	if d.To != "a" {
		t.Fatalf("to %s: a is predicted inside the SLO, c outside", d.To)
	}
	d = defaultPlanner(t).Place(nodes, c, nil, t0)
	for _, cand := range d.Candidates {
		if cand.Predicted != nil {
			t.Fatalf("no Predictor, yet %s cites %+v", cand.Node, cand.Predicted)
		}
	}
}

// pointPredictor records the affinity point it was asked about.
type pointPredictor struct{ seen *[]*Point }

func (pointPredictor) EnergyHours(string) (float64, bool) { return 0, false }
func (p pointPredictor) LatencyMs(c Cell, n Node) (float64, bool) {
	*p.seen = append(*p.seen, c.Constraints.Point)
	return 10, true
}

// TestPredictorSeesTarget: a cell following a moving target is predicted at
// the target's current position.
func TestPredictorSeesTarget(t *testing.T) {
	var seen []*Point
	vehicle := north(castelloli, 2000)
	c := cell("x", slo(50, 0), with(func(k *Constraints) { k.Target = "vehicle-7" }))
	newPlanner(t, DefaultConfig(), pointPredictor{&seen}).Place([]Node{node("a"), node("b")}, c, map[string]Point{"vehicle-7": vehicle}, t0)
	if len(seen) == 0 {
		t.Fatal("the predictor was not asked")
	}
	for _, p := range seen {
		if p == nil || *p != vehicle {
			t.Fatalf("asked about %v, the target is at %v", p, vehicle)
		}
	}
	if c.Constraints.Point != nil {
		t.Fatal("the caller's cell was changed")
	}
}
