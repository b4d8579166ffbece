package model

import (
	"math"
	"time"

	"github.com/cloudskin/cloudskin/console/internal/planner"
)

// NodeEnergy is what the Predictor knows about a node's energy.
type NodeEnergy struct {
	BatteryPct float64 // now, 0..100
	CapacityWh float64
	ReservePct float64   // the charge at which the node counts as out of energy
	Solar      *Forecast // W; nil: no solar input
	Draw       *Forecast // W; nil: DrawW constant
	DrawW      float64
	// Green is false for a node on grid power, which does not run out:
	// EnergyHours answers the whole horizon.
	Green bool
}

// Predictor adapts trained models to planner.Predictor. Set its fields,
// then only read them: it is then safe for concurrent use, as the Planner
// requires.
type Predictor struct {
	Latency *Linear // nil: LatencyMs answers ok=false
	Enc     *Encoder
	// Energy maps node → state; a node missing from it gets ok=false.
	Energy map[string]NodeEnergy
	// Horizon is how far EnergyHours looks (default 24h); a node that
	// lasts beyond it gets Horizon hours.
	Horizon time.Duration
	Step    time.Duration    // of the EnergyHours simulation (default 15m)
	Now     func() time.Time // default time.Now
	// Hosts optionally supplies node facts the planner.Node leaves empty
	// (Arch, Power, Cores, MemBytes); may be nil.
	Hosts func(node string) (Sample, bool)
}

var _ planner.Predictor = (*Predictor)(nil)

const (
	defaultHorizon = 24 * time.Hour
	defaultStep    = 15 * time.Minute
)

// EnergyHours forecasts how long the node's battery stays above its
// reserve, running the solar and draw forecasts forward from now.
func (p *Predictor) EnergyHours(node string) (float64, bool) {
	e, ok := p.Energy[node]
	if !ok {
		return 0, false
	}
	horizon, step := p.Horizon, p.Step
	if horizon <= 0 {
		horizon = defaultHorizon
	}
	if step <= 0 {
		step = defaultStep
	}
	if !e.Green {
		return horizon.Hours(), true
	}
	if !finite(e.BatteryPct) || !finite(e.ReservePct) || !(e.CapacityWh > 0) || math.IsInf(e.CapacityWh, 0) {
		return 0, false
	}
	if e.Draw == nil && !finite(e.DrawW) {
		return 0, false
	}
	now := p.now()
	n := int((horizon + step - 1) / step)
	h, depletes := drain(e.BatteryPct, e.ReservePct, e.CapacityWh, n, step, func(i int) float64 {
		t := now.Add(time.Duration(i) * step)
		var solar, draw float64
		if e.Solar != nil {
			solar = orZero(e.Solar.At(t))
		}
		if e.Draw != nil {
			draw = orZero(e.Draw.At(t))
		} else {
			draw = e.DrawW
		}
		return solar - draw
	})
	if !depletes || h > horizon.Hours() {
		return horizon.Hours(), true
	}
	return h, true
}

// LatencyMs predicts the cell's p99 latency on n with the latency model,
// never below 0; ok=false without a model or when the prediction is not a
// number.
func (p *Predictor) LatencyMs(c planner.Cell, n planner.Node) (float64, bool) {
	if p.Latency == nil || p.Enc == nil || len(p.Latency.Features) != len(baseNames)+len(p.Enc.Modules) {
		return 0, false
	}
	var buf [len(baseNames) + MaxModules]float64 // on the stack: the Planner asks per node
	var row []float64
	if k := len(p.Latency.Features); k <= len(buf) {
		row = buf[:k]
	} else {
		row = make([]float64, k) // an encoder decoded with more modules than MaxModules
	}
	p.Enc.fill(row, p.SampleFor(c, n, p.now()))
	ms := p.Latency.Value(row)
	if !finite(ms) {
		return 0, false
	}
	return max(ms, 0), true
}

// SampleFor is the Sample LatencyMs predicts from: the cell's module, input
// rate, CPU and distance to its affinity point, on n's arch, CPUs, memory,
// power and load. Unless the cell already runs on n, its CPU is added to
// the load (as a share of n's CPUs, counting unknown CPUs as one), capped at
// 1. A moving Target's position is not known here, so only
// Constraints.Point counts for distance.
func (p *Predictor) SampleFor(c planner.Cell, n planner.Node, now time.Time) Sample {
	s := Sample{
		Time:      now,
		Module:    c.Module,
		Arch:      n.Arch,
		Power:     n.Power,
		Cores:     n.CPUs,
		MemBytes:  n.MemTotal,
		Load:      n.Load,
		InputRate: c.InputRate,
		CellCPU:   c.CPU,
	}
	if p.Hosts != nil {
		if h, ok := p.Hosts(n.Name); ok {
			if s.Arch == "" {
				s.Arch = h.Arch
			}
			if s.Power == "" {
				s.Power = h.Power
			}
			if s.Cores <= 0 {
				s.Cores = h.Cores
			}
			if s.MemBytes == 0 {
				s.MemBytes = h.MemBytes
			}
		}
	}
	if s.Load < 0 {
		s.Load = 0 // a NaN load stays NaN: the prediction is then unknown
	}
	if c.Node != n.Name && c.CPU > 0 && finite(c.CPU) {
		s.Load += c.CPU / float64(max(s.Cores, 1))
	}
	s.Load = min(s.Load, 1)
	if pt := c.Constraints.Point; pt != nil && n.Position != nil {
		if d := planner.Distance(*pt, *n.Position) / 1000; finite(d) {
			s.DistanceKm = d
		}
	}
	return s
}

func (p *Predictor) now() time.Time {
	if p.Now != nil {
		return p.Now()
	}
	return time.Now()
}
