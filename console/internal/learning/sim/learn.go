package sim

import (
	"encoding/binary"
	"fmt"
	"hash/fnv"
	"math"
	"time"

	"github.com/cloudskin/cloudskin/console/internal/learning/model"
	"github.com/cloudskin/cloudskin/console/internal/planner"
)

// LearnConfig is how the learning plane is trained and asked. These are
// the knobs tuned on the learning side; the world is not.
type LearnConfig struct {
	// ReservePct is the charge the Predictor counts as empty: a node whose
	// forecast charge falls to it within the Planner's EnergyHorizon sheds
	// its cells. 0 derives it per node from the history (see
	// Models.Reserve): what the site draws with no cells through the
	// longest dark stretch observed, since a site that has shed its cells
	// keeps drawing that until the sun is back.
	ReservePct float64
	// Horizon is how far EnergyHours runs the forecasts: a day, so that a
	// node's outlook at dusk includes the night and the next morning's sun.
	Horizon time.Duration
	// RetrainEvery refits the solar forecasts on everything observed so
	// far (never the future) this often during the day; 0 keeps the
	// models trained before the day.
	RetrainEvery time.Duration
	// CapacityStep is the resolution of the battery history FitCapacity
	// reads: the charge is reported to 0.1%, which a minute of a 3.6 kWh
	// battery barely moves.
	CapacityStep time.Duration
	// ServeUnready serves a solar forecast that did not beat its best
	// baseline on the held-out day. The gate compares one day, and the
	// warm-up's last day is the darkest of the spell (0.7 kWh/m²), on which
	// "last value" — the last midnight's 0 W, all day long — is hard to
	// beat though it is no forecast of a panel at all. Unserved, a node
	// falls back to the Planner's battery trend.
	ServeUnready bool
	// NoFallback leaves a node whose forecast is not ready to the
	// Planner's battery trend, instead of the baseline that beat the
	// forecast (which the console runs).
	NoFallback bool
}

// DefaultLearn is the configuration the results are reported with: the
// console's own defaults (--battery-reserve 10, hourly retraining, a day's
// energy horizon, only models that beat their baselines served).
func DefaultLearn() LearnConfig {
	return LearnConfig{ReservePct: 10, Horizon: 24 * time.Hour, RetrainEvery: time.Hour, CapacityStep: 15 * time.Minute}
}

// SolarPeriod is a day of hourly values.
const SolarPeriod = 24

// Models are what the learning plane trains once on a history: the
// latency model and each green battery's capacity. Solar forecasts are
// refitted as the day goes (LearnConfig.RetrainEvery) and memoised here:
// every strategy sees the same sky, so a refit on the same observations
// is the same model.
type Models struct {
	Latency *model.Linear // nil when it was not trained or not ready
	Enc     *model.Encoder
	Caps    map[int]float64 // per green node
	// Reserve is the derived reserve (%) per green node.
	Reserve map[int]float64
	Notes   []string
	solar   map[uint64]*model.ForecastResult
}

// TrainModels trains the latency model and fits the battery capacities on
// s's history.
func TrainModels(s *State, cfg LearnConfig) *Models {
	m := &Models{Caps: map[int]float64{}, Reserve: map[int]float64{}, solar: map[uint64]*model.ForecastResult{}}
	m.trainLatency(s)
	for i, n := range s.W.Nodes {
		if n.BatteryWh == 0 {
			continue
		}
		c, err := fitCapacity(s.Hist.Nodes[i], cfg.CapacityStep)
		if err != nil {
			m.Notes = append(m.Notes, fmt.Sprintf("%s: no capacity (%v): the Planner uses the battery trend", n.Name, err))
			continue
		}
		m.Caps[i] = c
		idle, dark := idleDark(s.Hist.Nodes[i])
		m.Reserve[i] = min(max(100*idle*dark/c, MinReservePct), MaxReservePct)
		m.Notes = append(m.Notes, fmt.Sprintf("%s: capacity %.0f Wh fitted (true %.0f); derived reserve %.1f%% = %.0f W idle × %.0f h dark (used when ReservePct is 0)",
			n.Name, c, n.BatteryWh, m.Reserve[i], idle, dark))
	}
	return m
}

// Bounds of a derived reserve: some margin always, and never so much that
// a node is unusable most of the time.
const (
	MinReservePct = 5
	MaxReservePct = 50
)

// DarkFrac is the share of its brightest hour below which an hour of a
// panel's output counts as dark.
const DarkFrac = 0.02

// idleDark reads a node's history for its reserve: its lowest draw (the
// site with no cells) and its longest run of dark hours (a night, or a
// night and a dark morning).
func idleDark(obs []NodeObs) (idleW, darkHours float64) {
	idleW = math.Inf(1)
	for _, o := range obs {
		if !math.IsNaN(o.DrawW) {
			idleW = min(idleW, o.DrawW)
		}
	}
	if math.IsInf(idleW, 1) {
		idleW = 0
	}
	hours := hourlySolar(obs).Values
	peak := 0.0
	for _, v := range hours {
		if !math.IsNaN(v) {
			peak = max(peak, v)
		}
	}
	run, longest := 0, 0
	for _, v := range hours {
		if !math.IsNaN(v) && v < DarkFrac*peak {
			run++
			longest = max(longest, run)
		} else {
			run = 0
		}
	}
	return idleW, float64(longest)
}

// Learner refreshes the Predictor's view of the fleet before each plan
// and refits the solar forecasts when due.
type Learner struct {
	cfg   LearnConfig
	m     *Models
	Pred  *model.Predictor
	now   time.Time
	solar map[int]*model.Forecast // per green node
	last  time.Time               // last refit
	Notes []string
}

// NewLearningStrategy returns the Planner with the Predictor the console
// serves, built from models trained on s's history — the warm-up, nothing
// of the day ahead.
func NewLearningStrategy(s *State, m *Models, cfg LearnConfig) (*PlannerStrategy, *Learner, error) {
	l := &Learner{cfg: cfg, m: m, solar: map[int]*model.Forecast{}, now: s.Now}
	l.Pred = &model.Predictor{
		Latency: m.Latency,
		Enc:     m.Enc,
		Energy:  map[string]model.NodeEnergy{},
		Horizon: cfg.Horizon,
		Step:    15 * time.Minute,
		Now:     func() time.Time { return l.now },
		Hosts: func(name string) (model.Sample, bool) {
			i, ok := s.W.NodeIndex(name)
			if !ok {
				return model.Sample{}, false
			}
			n := &s.W.Nodes[i]
			return model.Sample{Arch: n.Arch, Power: n.Power, Cores: n.CPUs, MemBytes: n.Mem}, true
		},
	}
	l.trainSolar(s, true)
	l.last = s.Now
	p, err := planner.New(planner.DefaultConfig(), l.Pred)
	if err != nil {
		return nil, nil, err
	}
	return &PlannerStrategy{Label: NameLearning, P: p, Before: l.update}, l, nil
}

// update gives the Predictor the latest telemetry (charge, draw) and the
// time, and refits the solar forecasts when due.
func (l *Learner) update(s *State) {
	l.now = s.Now
	if l.cfg.RetrainEvery > 0 && s.Now.Sub(l.last) >= l.cfg.RetrainEvery {
		l.trainSolar(s, false)
		l.last = s.Now
	}
	for i, n := range s.W.Nodes {
		if n.Power != planner.PowerGreen {
			l.Pred.Energy[n.Name] = model.NodeEnergy{Green: false}
			continue
		}
		f, okF := l.solar[i]
		c, okC := l.m.Caps[i]
		if !okF || !okC {
			delete(l.Pred.Energy, n.Name) // the Planner falls back to the battery trend
			continue
		}
		ns := &s.Nodes[i]
		reserve := l.cfg.ReservePct
		if reserve == 0 {
			reserve = l.m.Reserve[i]
		}
		l.Pred.Energy[n.Name] = model.NodeEnergy{
			BatteryPct: ns.Pct, CapacityWh: c, ReservePct: reserve,
			Solar: f, DrawW: ns.DrawW, Green: true,
		}
	}
}

// trainSolar fits a Holt-Winters forecast per green node to its observed
// hourly panel output (NaN while the node was down), clamped to [0, 1.2×
// the brightest hour seen]. A model that does not beat its best baseline
// on the held-out last day is served only with ServeUnready; otherwise the
// Planner uses the battery trend for that node.
func (l *Learner) trainSolar(s *State, note bool) {
	for i, n := range s.W.Nodes {
		if n.BatteryWh == 0 {
			continue
		}
		series := hourlySolar(s.Hist.Nodes[i])
		lo, hi := 0.0, 0.0
		for _, v := range series.Values {
			if !math.IsNaN(v) {
				hi = max(hi, v)
			}
		}
		hi *= 1.2 // a sunnier hour than any seen yet is possible, not likely
		key := seriesKey(series)
		res, ok := l.m.solar[key]
		var err error
		if !ok {
			res, err = model.TrainForecast(series, model.ForecastOptions{Period: SolarPeriod, Min: &lo, Max: &hi})
			if err == nil {
				l.m.solar[key] = res
			}
		}
		switch {
		case err != nil:
			delete(l.solar, i)
			if note {
				l.Notes = append(l.Notes, fmt.Sprintf("%s: no solar forecast: %v", n.Name, err))
			}
		case !res.Ready && !l.cfg.ServeUnready && res.Fallback != nil && !l.cfg.NoFallback:
			// As the console does: Holt-Winters is not served; the energy
			// outlook runs the baseline that beat it.
			l.solar[i] = res.Fallback
			if note {
				l.Notes = append(l.Notes, fmt.Sprintf("%s: solar forecast not served, outlook from %s: %s", n.Name, res.Fallback.Method, res.Reason))
			}
		case !res.Ready && !l.cfg.ServeUnready:
			delete(l.solar, i)
			if note {
				l.Notes = append(l.Notes, fmt.Sprintf("%s: solar forecast not served: %s", n.Name, res.Reason))
			}
		default:
			l.solar[i] = res.Model
			if note {
				l.Notes = append(l.Notes, fmt.Sprintf("%s: solar forecast served (ready=%v): %s", n.Name, res.Ready, res.Reason))
			}
		}
	}
}

// hourlySolar averages a node's per-minute panel telemetry into hours,
// each placed at the middle of its hour; an hour with no reading is NaN.
func hourlySolar(obs []NodeObs) model.Series {
	per := int(time.Hour / Step)
	n := len(obs) / per
	vals := make([]float64, n)
	for h := range n {
		sum, k := 0.0, 0
		for _, o := range obs[h*per : (h+1)*per] {
			if !math.IsNaN(o.SolarW) {
				sum += o.SolarW
				k++
			}
		}
		vals[h] = math.NaN()
		if k > 0 {
			vals[h] = sum / float64(k)
		}
	}
	return model.Series{Start: WarmupStart.Add(time.Hour / 2), Step: time.Hour, Values: vals}
}

// fitCapacity estimates the battery's capacity from the node's telemetry
// at step resolution: the charge at the start of each block and the mean
// solar and draw over it.
func fitCapacity(obs []NodeObs, step time.Duration) (float64, error) {
	per := int(step / Step)
	var pct, solar, draw []float64
	for b := 1; (b+1)*per <= len(obs); b++ {
		pct = append(pct, obs[b*per-1].Pct)
		ss, dd := 0.0, 0.0
		for _, o := range obs[b*per : (b+1)*per] {
			ss += o.SolarW
			dd += o.DrawW
		}
		solar = append(solar, ss/float64(per))
		draw = append(draw, dd/float64(per))
	}
	return model.FitCapacity(pct, solar, draw, step)
}

// seriesKey identifies a series by its start, step and values.
func seriesKey(s model.Series) uint64 {
	h := fnv.New64a()
	var b [8]byte
	binary.LittleEndian.PutUint64(b[:], uint64(s.Start.UnixNano()))
	h.Write(b[:])
	binary.LittleEndian.PutUint64(b[:], uint64(s.Step))
	h.Write(b[:])
	for _, v := range s.Values {
		binary.LittleEndian.PutUint64(b[:], math.Float64bits(v))
		h.Write(b[:])
	}
	return h.Sum64()
}

// trainLatency fits the performance model to every SLO cell-minute of the
// history. A moving target's position is not known to the Predictor when
// it is asked (model.Predictor.SampleFor), so the training rows of the
// vehicle cell carry no distance either: what the model can learn for it
// is the node's kind and load.
func (m *Models) trainLatency(s *State) {
	w := s.W
	samples := make([]model.Sample, 0, len(s.Hist.Cells))
	for _, o := range s.Hist.Cells {
		c, n := &w.Cells[o.Cell], &w.Nodes[o.Node]
		dist := o.DistKm
		if c.Target != "" {
			dist = 0
		}
		samples = append(samples, model.Sample{
			Time: WarmupStart.Add(time.Duration(o.Minute) * Step), Module: c.Module,
			Arch: n.Arch, Power: n.Power, Cores: n.CPUs, MemBytes: n.Mem, Load: o.Util,
			InputRate: c.InputRate, CellCPU: c.CPU, DistanceKm: dist, LatencyMs: o.P99, Throughput: c.InputRate,
		})
	}
	enc := model.NewEncoder(samples)
	res, err := model.TrainLinear(enc.Table(samples, func(s model.Sample) float64 { return s.LatencyMs }),
		model.LinearOptions{NonNegative: true})
	if err != nil {
		m.Notes = append(m.Notes, fmt.Sprintf("latency model not trained: %v", err))
		return
	}
	m.Notes = append(m.Notes, fmt.Sprintf("latency model (%d samples): %s", len(samples), res.Reason))
	if res.Ready {
		m.Latency, m.Enc = res.Model, enc
	}
}
