package model

import (
	"math"
	"math/rand/v2"
	"sync"
	"testing"
	"time"

	"github.com/cloudskin/cloudskin/console/internal/planner"
)

// latencySamples are cells whose p99 is 5 ms, plus 3 ms per unit of the
// queueing factor 1/(1-load) (the shape the Encoder's node.queue feature is
// for), plus 0.04 ms per record/s, plus 1 ms per 10 km, plus noise.
func latencySamples(n int, seed uint64) []Sample {
	r := rand.New(rand.NewPCG(seed, 6))
	mods := []string{"sha256:aaaa", "sha256:bbbb", "sha256:cccc"}
	out := make([]Sample, n)
	for i := range out {
		s := Sample{
			Time:       t0.Add(time.Duration(i) * time.Minute),
			Module:     mods[r.IntN(len(mods))],
			Arch:       []string{"amd64", "arm64"}[r.IntN(2)],
			Power:      []string{"green", "grid"}[r.IntN(2)],
			Cores:      []int{2, 4, 8}[r.IntN(3)],
			MemBytes:   uint64(1+r.IntN(16)) << 30,
			Load:       0.9 * r.Float64(),
			InputRate:  50 + 150*r.Float64(),
			CellCPU:    0.5,
			DistanceKm: 50 * r.Float64(),
		}
		q := 1 / (1 - s.Load)
		s.LatencyMs = 5 + 3*q + 0.04*s.InputRate + s.DistanceKm/10 + 0.5*r.NormFloat64()
		out[i] = s
	}
	return out
}

func trainedPredictor(t testing.TB) *Predictor {
	t.Helper()
	samples := latencySamples(2000, 1)
	enc := NewEncoder(samples)
	res, err := TrainLinear(enc.Table(samples, func(s Sample) float64 { return s.LatencyMs }), LinearOptions{NonNegative: true})
	if err != nil {
		t.Fatal(err)
	}
	if !res.Ready {
		t.Fatalf("latency model not ready: %s", res.Reason)
	}
	return &Predictor{Latency: res.Model, Enc: enc, Now: func() time.Time { return t0 }}
}

func TestPredictorWithoutModels(t *testing.T) {
	for name, p := range map[string]*Predictor{
		"zero":                       {},
		"model, no encoder":          {Latency: &Linear{}},
		"encoder, no model":          {Enc: &Encoder{}},
		"model and encoder disagree": {Latency: &Linear{Features: []string{"x"}, Means: []float64{0}, Scales: []float64{1}, Coefs: []float64{1}}, Enc: &Encoder{}},
		"damaged model":              {Latency: &Linear{Features: baseNames[:], Coefs: []float64{1}}, Enc: &Encoder{}},
	} {
		if ms, ok := p.LatencyMs(planner.Cell{}, planner.Node{}); ok {
			t.Errorf("%s: LatencyMs = %v, ok", name, ms)
		}
		if h, ok := p.EnergyHours("a"); ok {
			t.Errorf("%s: EnergyHours = %v, ok", name, h)
		}
	}
}

func TestPredictorLatency(t *testing.T) {
	p := trainedPredictor(t)
	cell := planner.Cell{ID: "c", Module: "sha256:bbbb", InputRate: 150, CPU: 1,
		Constraints: planner.Constraints{Point: &planner.Point{Lat: 45, Lon: 8}}}
	node := planner.Node{Name: "n", Arch: "arm64", CPUs: 4, MemTotal: 8 << 30, Load: 0.5, Power: planner.PowerGreen,
		Position: &planner.Point{Lat: 45.1, Lon: 8}}

	s := p.SampleFor(cell, node, t0)
	if s.Load != 0.75 || s.Cores != 4 || s.Module != cell.Module || s.InputRate != 150 || s.CellCPU != 1 || s.Power != "green" {
		t.Errorf("sample %+v: want load 0.5 + 1/4 CPUs", s)
	}
	if math.Abs(s.DistanceKm-11.12) > 0.01 { // 0.1° of latitude
		t.Errorf("distance %v km, want 11.12", s.DistanceKm)
	}
	ms, ok := p.LatencyMs(cell, node)
	if !ok {
		t.Fatal("no prediction")
	}
	want, _, _ := p.Latency.Predict(p.Enc.Row(s))
	if math.Abs(ms-want) > 1e-9 {
		t.Errorf("LatencyMs %v, Predict %v", ms, want)
	}
	// True p99 there: 5 + 3·4 + 0.04·150 + 1.112 ≈ 24.11 ms.
	if math.Abs(ms-24.11) > 0.5 {
		t.Errorf("predicted %v ms, true ≈ 24.11", ms)
	}

	// Already on the node: its CPU is in the load, not added again.
	here := cell
	here.Node = "n"
	if s := p.SampleFor(here, node, t0); s.Load != 0.5 {
		t.Errorf("load %v for a cell already on the node, want 0.5", s.Load)
	}
	if msHere, _ := p.LatencyMs(here, node); !(msHere < ms) {
		t.Errorf("on a less loaded node: %v ms, not below %v", msHere, ms)
	}
	busy := node
	busy.Load = 0.85
	if msBusy, _ := p.LatencyMs(cell, busy); !(msBusy > ms) {
		t.Errorf("on a busier node: %v ms, not above %v", msBusy, ms)
	}
}

func TestPredictorLatencyEdges(t *testing.T) {
	p := trainedPredictor(t)
	cell := planner.Cell{Module: "sha256:unknown", InputRate: 100, CPU: 2}
	cases := []struct {
		name   string
		cell   planner.Cell
		node   planner.Node
		wantOK bool
	}{
		{"zero CPUs", cell, planner.Node{Name: "n"}, true},
		{"no position", planner.Cell{Constraints: planner.Constraints{Point: &planner.Point{}}}, planner.Node{Name: "n", CPUs: 2}, true},
		{"overloaded", cell, planner.Node{Name: "n", CPUs: 1, Load: 3}, true},
		{"negative load", cell, planner.Node{Name: "n", CPUs: 1, Load: -1}, true},
		{"NaN load", cell, planner.Node{Name: "n", CPUs: 4, Load: math.NaN()}, false},
		{"Inf input rate", planner.Cell{InputRate: math.Inf(1)}, planner.Node{Name: "n", CPUs: 4}, false},
		{"NaN cell CPU", planner.Cell{CPU: math.NaN()}, planner.Node{Name: "n", CPUs: 4}, false},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			ms, ok := p.LatencyMs(c.cell, c.node)
			if ok != c.wantOK {
				t.Fatalf("LatencyMs = %v, %v; want ok=%v", ms, ok, c.wantOK)
			}
			if ok && (!finite(ms) || ms < 0) {
				t.Errorf("LatencyMs = %v", ms)
			}
		})
	}
	if s := p.SampleFor(cell, planner.Node{Name: "n", CPUs: 1, Load: 0.9}, t0); s.Load != 1 {
		t.Errorf("load %v, want capped at 1", s.Load)
	}

	// Hosts fills what the node leaves empty, nothing else.
	p.Hosts = func(node string) (Sample, bool) {
		return Sample{Cores: 16, Arch: "arm64", MemBytes: 1 << 30, Power: "grid"}, node == "n"
	}
	s := p.SampleFor(cell, planner.Node{Name: "n", Arch: "amd64"}, t0)
	if s.Cores != 16 || s.Arch != "amd64" || s.MemBytes != 1<<30 || s.Power != "grid" || s.Load != 2.0/16 {
		t.Errorf("sample with host facts %+v", s)
	}

	// A model that would go negative answers 0.
	neg := *p.Latency
	neg.Base = -1e6
	p.Latency = &neg
	if ms, ok := p.LatencyMs(cell, planner.Node{Name: "n", CPUs: 4}); !ok || ms != 0 {
		t.Errorf("negative model: %v, %v; want 0, true", ms, ok)
	}
}

func TestPredictorEnergy(t *testing.T) {
	// Solar: 0 W at night, 200 W from 08:00 to 16:00, as a seasonal
	// forecast that ends at t0 (midnight).
	season := make([]float64, 24)
	for h := 8; h < 16; h++ {
		season[h-1] = 200 // Season[i] is hour i+1
	}
	solar := &Forecast{Method: MethodSeasonalNaive, Step: time.Hour, End: t0, Period: 24, Season: season}
	p := &Predictor{
		Now: func() time.Time { return t0 },
		Energy: map[string]NodeEnergy{
			"drain":   {BatteryPct: 50, CapacityWh: 100, ReservePct: 10, DrawW: 10, Green: true},
			"sun":     {BatteryPct: 50, CapacityWh: 1000, ReservePct: 10, DrawW: 30, Solar: solar, Green: true},
			"forever": {BatteryPct: 50, CapacityWh: 100, ReservePct: 10, DrawW: 0, Green: true},
			"grid":    {Green: false},
			"broken":  {BatteryPct: 50, CapacityWh: 0, DrawW: 10, Green: true},
			"nan":     {BatteryPct: math.NaN(), CapacityWh: 100, DrawW: 10, Green: true},
			"drawfc":  {BatteryPct: 50, CapacityWh: 100, ReservePct: 10, Draw: &Forecast{Step: time.Hour, End: t0, Level: 20}, DrawW: math.NaN(), Green: true},
		},
	}
	cases := []struct {
		node   string
		want   float64
		wantOK bool
	}{
		{"drain", 4, true},
		// 400 Wh above the reserve at 30 W until 08:00 (240 Wh), then
		// +170 W for 8 h to full (1000 Wh), then 30 W: never within 24 h.
		{"sun", 24, true},
		{"forever", 24, true},
		{"grid", 24, true},
		{"broken", 0, false},
		{"nan", 0, false},
		{"drawfc", 2, true},
		{"missing", 0, false},
	}
	for _, c := range cases {
		h, ok := p.EnergyHours(c.node)
		if ok != c.wantOK || math.Abs(h-c.want) > 1e-9 {
			t.Errorf("%s: EnergyHours = %v, %v; want %v, %v", c.node, h, ok, c.want, c.wantOK)
		}
	}

	// The same battery with a 2 h horizon answers the horizon; with more
	// draw it runs out before the sun rises.
	p.Horizon = 2 * time.Hour
	if h, _ := p.EnergyHours("drain"); h != 2 {
		t.Errorf("2 h horizon: %v", h)
	}
	p.Horizon = 0
	e := p.Energy["sun"]
	e.DrawW = 100
	p.Energy = map[string]NodeEnergy{"sun": e}
	if h, ok := p.EnergyHours("sun"); !ok || math.Abs(h-4) > 1e-9 {
		t.Errorf("100 W before sunrise: %v, %v; want 4 h", h, ok)
	}
}

func TestPredictorConcurrent(t *testing.T) {
	p := trainedPredictor(t)
	p.Energy = map[string]NodeEnergy{"n": {BatteryPct: 80, CapacityWh: 500, ReservePct: 10, DrawW: 20, Green: true}}
	cell := planner.Cell{Module: "sha256:aaaa", InputRate: 100, CPU: 1}
	node := planner.Node{Name: "n", CPUs: 4, Load: 0.3}
	want, _ := p.LatencyMs(cell, node)
	wantH, _ := p.EnergyHours("n") // 350 Wh above the reserve at 20 W
	if wantH != 17.5 {
		t.Fatalf("EnergyHours %v, want 17.5", wantH)
	}
	var wg sync.WaitGroup
	for range 8 {
		wg.Go(func() {
			for range 200 {
				if ms, _ := p.LatencyMs(cell, node); ms != want {
					t.Errorf("LatencyMs %v, want %v", ms, want)
					return
				}
				if h, ok := p.EnergyHours("n"); !ok || h != wantH {
					t.Errorf("EnergyHours %v, %v", h, ok)
					return
				}
			}
		})
	}
	wg.Wait()
}
