package model

import (
	"errors"
	"math"
	"math/rand/v2"
	"testing"
	"time"
)

func constant(n int, v float64) []float64 {
	out := make([]float64, n)
	for i := range out {
		out[i] = v
	}
	return out
}

func TestHoursLeft(t *testing.T) {
	q := 15 * time.Minute
	// 12 hours of 100 W sun, then none, at 15 minutes.
	sunny := append(constant(48, 100), constant(48, 0)...)
	cases := []struct {
		name                string
		pct, reserve, capWh float64
		solar, draw         []float64
		wantHours           float64
		wantDepletes        bool
	}{
		// 40 Wh above the reserve at 10 W: 4 h, crossing mid-step.
		{"constant draw", 50, 10, 100, constant(96, 0), constant(96, 10), 4, true},
		{"crossing inside a step", 50, 10, 100, constant(96, 0), constant(96, 12), 40.0 / 12, true},
		// Charged to 100% (not 140%) by noon, then 90 Wh above the
		// reserve at 30 W: 12 + 3 h.
		{"clamped at full", 90, 10, 100, sunny, constant(96, 30), 15, true},
		{"never depletes", 50, 10, 100, constant(96, 20), constant(96, 10), 24, false},
		{"at the reserve", 10, 10, 100, constant(96, 50), constant(96, 0), 0, true},
		{"no capacity", 50, 10, 0, constant(96, 0), constant(96, 10), 0, true},
		{"shorter draw", 50, 10, 100, constant(96, 0), constant(8, 1), 2, false},
		{"NaN power is none", 50, 10, 100, []float64{math.NaN(), 0, 0, 0}, constant(4, 0), 1, false},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			h, dep := HoursLeft(c.pct, c.reserve, c.capWh, c.solar, c.draw, q)
			if math.Abs(h-c.wantHours) > 1e-9 || dep != c.wantDepletes {
				t.Errorf("HoursLeft = %v, %v; want %v, %v", h, dep, c.wantHours, c.wantDepletes)
			}
		})
	}
}

// battery simulates a node the way HoursLeft counts: the power sampled at
// the start of a step moves the charge during it, clamped to 0..100%.
// Solar follows the sun (peak 300 W), draw is 60 W plus noise.
func battery(capWh float64, steps int, step time.Duration, seed uint64) (pct, solar, draw []float64) {
	r := rand.New(rand.NewPCG(seed, 4))
	pct, solar, draw = make([]float64, steps), make([]float64, steps), make([]float64, steps)
	p := 50.0
	for i := range steps {
		hour := math.Mod(float64(i)*step.Hours(), 24)
		solar[i] = max(0, 300*math.Sin(math.Pi*(hour-6)/12))
		draw[i] = 60 + 20*r.Float64()
		pct[i] = p
		p = min(100, max(0, p+(solar[i]-draw[i])*step.Hours()/capWh*100))
	}
	return pct, solar, draw
}

func TestFitCapacity(t *testing.T) {
	const capWh = 1500
	q := 15 * time.Minute
	pct, solar, draw := battery(capWh, 4*96, q, 1)
	got, err := FitCapacity(pct, solar, draw, q)
	if err != nil {
		t.Fatal(err)
	}
	if math.Abs(got-capWh) > 1e-6*capWh {
		t.Errorf("capacity %v Wh, want %v", got, capWh)
	}

	// A gauge reporting whole percent: within a few percent.
	rounded := make([]float64, len(pct))
	for i, p := range pct {
		rounded[i] = math.Round(p)
	}
	got, err = FitCapacity(rounded, solar, draw, q)
	if err != nil {
		t.Fatal(err)
	}
	if math.Abs(got-capWh) > 0.05*capWh {
		t.Errorf("capacity from whole percents %v Wh, want %v ± 5%%", got, capWh)
	}

	// Round trip: HoursLeft on the fitted capacity agrees with the
	// simulation.
	h, dep := HoursLeft(80, 20, got, constant(96, 0), constant(96, 90), q)
	if want := 0.6 * got / 90; !dep || math.Abs(h-want) > 1e-9 {
		t.Errorf("HoursLeft = %v, %v; want %v", h, dep, want)
	}
}

func TestFitCapacityErrors(t *testing.T) {
	q := 15 * time.Minute
	pct, solar, draw := battery(1000, 96, q, 2)
	r := rand.New(rand.NewPCG(5, 5))
	noise := make([]float64, len(pct))
	for i := range noise {
		noise[i] = 20 + 60*r.Float64()
	}
	backwards := make([]float64, len(pct))
	for i, p := range pct {
		backwards[i] = 100 - p
	}
	cases := []struct {
		name             string
		pct, solar, draw []float64
		step             time.Duration
		want             error
	}{
		{"two samples", pct[:3], solar[:3], draw[:3], q, ErrTooLittleData},
		{"always full", constant(96, 100), solar, draw, q, ErrTooLittleData},
		{"charge never moves", constant(96, 50), solar, draw, q, ErrBadSeries},
		{"charge unrelated to power", noise, solar, draw, q, ErrBadSeries},
		{"charge against power", backwards, solar, draw, q, ErrBadSeries},
		{"lengths differ", pct, solar[:10], draw, q, ErrBadSeries},
		{"no step", pct, solar, draw, 0, ErrBadSeries},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			if got, err := FitCapacity(c.pct, c.solar, c.draw, c.step); !errors.Is(err, c.want) {
				t.Errorf("FitCapacity = %v, %v; want %v", got, err, c.want)
			}
		})
	}
}
