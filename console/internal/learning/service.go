// Package learning is the console's learning plane: it retrieves feature
// tables from the fleet's telemetry and cells' samples, trains small,
// explainable models on a schedule or on demand, keeps every version in
// the registry with its held-out metrics against a baseline, and serves the
// promoted ones to the Planner (EnergyHours, LatencyMs) and to the
// prediction API. A model that does not beat its baseline is kept, marked
// not ready, and never served.
package learning

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"math"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/cloudskin/cloudskin/console/internal/learning/model"
	"github.com/cloudskin/cloudskin/console/internal/planner"
	"github.com/cloudskin/cloudskin/console/internal/store"
)

// Model kinds in the registry. Subject is "fleet" for the performance
// models and a node's name for the others.
const (
	KindLatency    = "latency"    // a cell's p99 latency on a node (ridge regression)
	KindThroughput = "throughput" // the records per second a cell handles on a node
	KindLoad       = "load"       // a node's CPU utilisation ahead (Holt-Winters, daily season)
	KindPower      = "power"      // a node's power draw ahead, watts
	KindSolar      = "solar"      // a green node's solar input ahead, watts
	KindBattery    = "battery"    // a green node's battery capacity, from how its charge moves
	SubjectFleet   = "fleet"
)

// Config tunes the learning plane.
type Config struct {
	// Interval between scheduled trainings (0: only on demand).
	Interval time.Duration
	// Window is how much history a training reads.
	Window time.Duration
	// Step is the grid the forecasts work on; a day must be a whole number
	// of steps (daily seasonality).
	Step time.Duration
	// ReservePct is the battery charge a green node keeps back: its energy
	// lasts until the forecast reaches it.
	ReservePct float64
	// Horizon is how far the energy outlook looks ahead.
	Horizon time.Duration
	// MaxRows bounds the cell samples one training reads.
	MaxRows int
	// MaxCandidates bounds a recommendation request.
	MaxCandidates int
}

// DefaultConfig is what the console runs with unless told otherwise.
func DefaultConfig() Config {
	return Config{
		Interval: time.Hour, Window: 7 * 24 * time.Hour, Step: 5 * time.Minute,
		ReservePct: 10, Horizon: 24 * time.Hour, MaxRows: 200_000, MaxCandidates: 256,
	}
}

// Validate says which field is wrong.
func (c *Config) Validate() error {
	var errs []error
	if c.Interval < 0 {
		errs = append(errs, fmt.Errorf("learning interval %s must not be negative", c.Interval))
	}
	if c.Step < time.Minute || (24*time.Hour)%c.Step != 0 {
		errs = append(errs, fmt.Errorf("learning step %s must be at least a minute and divide a day", c.Step))
	}
	if c.Window < 3*24*time.Hour {
		errs = append(errs, fmt.Errorf("learning window %s must cover at least three days (two to train, one held out)", c.Window))
	}
	if !(c.ReservePct >= 0 && c.ReservePct < 100) {
		errs = append(errs, fmt.Errorf("battery reserve %v%% must be in [0, 100)", c.ReservePct))
	}
	if c.Horizon < time.Hour {
		errs = append(errs, fmt.Errorf("energy horizon %s must be at least an hour", c.Horizon))
	}
	if c.MaxRows < 100 || c.MaxCandidates < 1 {
		errs = append(errs, fmt.Errorf("max rows %d must be ≥ 100 and max candidates %d ≥ 1", c.MaxRows, c.MaxCandidates))
	}
	return errors.Join(errs...)
}

// served are the promoted models, decoded, with the node state the energy
// outlook starts from. Replaced whole, never changed in place.
type served struct {
	pred       *model.Predictor
	throughput *model.Linear
	thrEnc     *model.Encoder
	versions   map[string]int    // "kind/subject" → version
	outlooks   map[string]string // "solar/node" → the baseline standing in for a not-ready forecast
	wPerLoad   map[string]float64
	nodes      []nodeFacts
	nodeIx     map[string]int
	at         time.Time
}

// Service is the learning plane.
type Service struct {
	cfg   Config
	store *store.Store
	log   *slog.Logger
	m     *svcMetrics
	now   func() time.Time
	// appCPU tells a cell's CPU request by app (set by the console).
	appCPU func(app string) float64

	mu    sync.Mutex
	last  map[string]lastSample
	rates map[string]float64 // cell → records/s, newest

	cur      atomic.Pointer[served]
	training sync.Mutex // one training at a time
	kick     chan string
}

type svcMetrics struct {
	cellSamples prometheus.Counter
	trainings   *prometheus.CounterVec
	trainSecs   prometheus.Histogram
	served      prometheus.Gauge
	predictions *prometheus.CounterVec
}

// New returns the learning plane; reg may be nil.
func New(cfg Config, st *store.Store, reg prometheus.Registerer, appCPU func(string) float64, log *slog.Logger) (*Service, error) {
	if err := cfg.Validate(); err != nil {
		return nil, fmt.Errorf("learning: %w", err)
	}
	m := &svcMetrics{
		cellSamples: prometheus.NewCounter(prometheus.CounterOpts{Name: "cloudskin_learning_cell_samples_total", Help: "Cell samples stored for the performance model."}),
		trainings:   prometheus.NewCounterVec(prometheus.CounterOpts{Name: "cloudskin_learning_models_trained_total", Help: "Model versions trained, by kind and status."}, []string{"kind", "status"}),
		trainSecs:   prometheus.NewHistogram(prometheus.HistogramOpts{Name: "cloudskin_learning_training_seconds", Help: "Time one training of every model took.", Buckets: prometheus.ExponentialBuckets(0.01, 4, 8)}),
		served:      prometheus.NewGauge(prometheus.GaugeOpts{Name: "cloudskin_learning_models_served", Help: "Model versions served (promoted and ready)."}),
		predictions: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "cloudskin_learning_predictions_total", Help: "Predictions answered, by kind and whether a model answered."}, []string{"kind", "answered"}),
	}
	if reg != nil {
		for _, c := range []prometheus.Collector{m.cellSamples, m.trainings, m.trainSecs, m.served, m.predictions} {
			if err := reg.Register(c); err != nil {
				return nil, err
			}
		}
	}
	s := &Service{cfg: cfg, store: st, log: log.With("component", "learning"), m: m, now: time.Now, appCPU: appCPU,
		last: map[string]lastSample{}, rates: map[string]float64{}, kick: make(chan string, 1)}
	s.cur.Store(&served{pred: &model.Predictor{}, versions: map[string]int{}, outlooks: map[string]string{}, nodeIx: map[string]int{}})
	return s, nil
}

// Config returns the learning plane's configuration.
func (s *Service) Config() Config { return s.cfg }

// Run collects cell samples, refreshes the served models' node state, and
// trains on schedule until ctx ends.
func (s *Service) Run(ctx context.Context) error {
	if err := s.Reload(ctx); err != nil {
		s.log.Error("served models not loaded", "err", err)
	}
	collect := time.NewTicker(cellSampleEvery)
	defer collect.Stop()
	refresh := time.NewTicker(30 * time.Second)
	defer refresh.Stop()
	prune := time.NewTicker(time.Hour)
	defer prune.Stop()
	var train <-chan time.Time
	if s.cfg.Interval > 0 {
		t := time.NewTicker(s.cfg.Interval)
		defer t.Stop()
		train = t.C
	}
	for {
		select {
		case <-ctx.Done():
			return nil
		case <-collect.C:
			if err := s.collect(ctx); err != nil && ctx.Err() == nil {
				s.log.Warn("cell samples not collected", "err", err)
			}
		case <-refresh.C:
			if err := s.Reload(ctx); err != nil && ctx.Err() == nil {
				s.log.Warn("served models not refreshed", "err", err)
			}
		case <-prune.C:
			// Cell samples older than the window are never read again.
			n, err := s.store.DeleteCellSamplesBefore(ctx, s.now().Add(-s.cfg.Window).UnixMicro())
			if err != nil && ctx.Err() == nil {
				s.log.Warn("old cell samples not pruned", "err", err)
			} else if n > 0 {
				s.log.Debug("old cell samples pruned", "rows", n)
			}
		case <-train:
			if _, err := s.Train(ctx, "schedule"); err != nil && ctx.Err() == nil {
				s.log.Error("scheduled training failed", "err", err)
			}
		case trigger := <-s.kick:
			if _, err := s.Train(ctx, trigger); err != nil && ctx.Err() == nil {
				s.log.Error("training failed", "err", err)
			}
		}
	}
}

// TrainAsync asks Run to train now; false when a training is already asked.
func (s *Service) TrainAsync() bool {
	select {
	case s.kick <- "manual":
		return true
	default:
		return false
	}
}

// EnergyHours is the planner.Predictor's energy outlook: from the served
// solar forecast, draw and battery capacity of the node.
func (s *Service) EnergyHours(node string) (float64, bool) {
	h, ok := s.cur.Load().pred.EnergyHours(node)
	s.m.predictions.WithLabelValues("energy", answered(ok)).Inc()
	return h, ok
}

// LatencyMs is the planner.Predictor's performance prediction. A cell with
// no input rate of its own gets its newest observed one.
func (s *Service) LatencyMs(c planner.Cell, n planner.Node) (float64, bool) {
	if c.InputRate == 0 {
		c.InputRate = s.rate(c.ID)
	}
	ms, ok := s.cur.Load().pred.LatencyMs(c, n)
	s.m.predictions.WithLabelValues("latency", answered(ok)).Inc()
	return ms, ok
}

func answered(ok bool) string {
	if ok {
		return "yes"
	}
	return "no"
}

func (s *Service) rate(cell string) float64 {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.rates[cell]
}

// Reload loads the promoted models from the registry and the nodes'
// newest battery, draw and solar figures into a new served set.
func (s *Service) Reload(ctx context.Context) error {
	rows, err := s.store.ActiveModels(ctx)
	if err != nil {
		return err
	}
	nodes, err := s.nodes(ctx)
	if err != nil {
		return err
	}
	sv := &served{versions: map[string]int{}, outlooks: map[string]string{}, wPerLoad: map[string]float64{}, nodes: nodes, nodeIx: make(map[string]int, len(nodes)), at: s.now()}
	for i := range nodes {
		sv.nodeIx[nodes[i].Name] = i
	}
	p := &model.Predictor{Energy: map[string]model.NodeEnergy{}, Horizon: s.cfg.Horizon, Step: 15 * time.Minute, Now: s.now}
	fc := map[string]map[string]*model.Forecast{} // kind → node → forecast
	capacity := map[string]float64{}
	for i := range rows {
		r := &rows[i]
		if r.Status != store.ModelReady {
			continue
		}
		var prm params
		if err := json.Unmarshal([]byte(r.Params), &prm); err != nil {
			s.log.Error("served model unreadable; skipped", "kind", r.Kind, "subject", r.Subject, "version", r.Version, "err", err)
			continue
		}
		sv.versions[r.Kind+"/"+r.Subject] = r.Version
		switch r.Kind {
		case KindLatency:
			p.Latency, p.Enc = prm.Linear, prm.Encoder
		case KindThroughput:
			sv.throughput, sv.thrEnc = prm.Linear, prm.Encoder
		case KindLoad, KindPower, KindSolar:
			if fc[r.Kind] == nil {
				fc[r.Kind] = map[string]*model.Forecast{}
			}
			fc[r.Kind][r.Subject] = prm.Forecast
			if r.Kind == KindPower && prm.WPerLoad != nil {
				sv.wPerLoad[r.Subject] = *prm.WPerLoad
			}
		case KindBattery:
			if prm.CapacityWh != nil {
				capacity[r.Subject] = *prm.CapacityWh
			}
		}
	}
	// A green node whose solar forecast has no ready version yet still
	// gets an outlook: from the baseline that beat the newest version
	// (seasonal-naive through a cloudy spell, typically). The model itself
	// is not served; Outlooks says which baseline stands in.
	latest, err := s.store.LatestModels(ctx, KindSolar)
	if err != nil {
		return err
	}
	for i := range latest {
		r := &latest[i]
		if fc[KindSolar][r.Subject] != nil || r.Status != store.ModelNotReady {
			continue
		}
		var prm params
		if json.Unmarshal([]byte(r.Params), &prm) != nil || prm.Fallback == nil {
			continue
		}
		if fc[KindSolar] == nil {
			fc[KindSolar] = map[string]*model.Forecast{}
		}
		fc[KindSolar][r.Subject] = prm.Fallback
		sv.outlooks[KindSolar+"/"+r.Subject] = prm.Fallback.Method + " (version " + strconv.Itoa(r.Version) + " not ready)"
	}
	for _, n := range nodes {
		// The energy outlook needs the node's charge now, its capacity and
		// what will come in: without any of them the Planner falls back on
		// its own battery-trend heuristic.
		capWh, ok := capacity[n.Name]
		if n.Power != planner.PowerGreen || !ok || math.IsNaN(n.Battery) || fc[KindSolar][n.Name] == nil {
			continue
		}
		p.Energy[n.Name] = model.NodeEnergy{
			BatteryPct: n.Battery, CapacityWh: capWh, ReservePct: s.cfg.ReservePct,
			Solar: fc[KindSolar][n.Name], Draw: fc[KindPower][n.Name], DrawW: n.PowerW, Green: true,
		}
	}
	sv.pred = p
	s.cur.Store(sv)
	s.m.served.Set(float64(len(sv.versions)))
	return nil
}

// Versions returns the served version of each "kind/subject".
func (s *Service) Versions() map[string]int {
	v := s.cur.Load().versions
	out := make(map[string]int, len(v))
	for k, x := range v {
		out[k] = x
	}
	return out
}

// Outlooks names the baselines standing in for not-ready solar forecasts,
// by "solar/node".
func (s *Service) Outlooks() map[string]string {
	o := s.cur.Load().outlooks
	out := make(map[string]string, len(o))
	for k, v := range o {
		out[k] = v
	}
	return out
}

// Promote serves version id and reloads.
func (s *Service) Promote(ctx context.Context, id uint64) (*store.LearningModel, error) {
	m, err := s.store.PromoteModel(ctx, id)
	if err != nil {
		return nil, err
	}
	s.log.Info("model promoted", "kind", m.Kind, "subject", m.Subject, "version", m.Version)
	return m, s.Reload(ctx)
}

// Rollback serves the previous ready version of kind/subject and reloads.
func (s *Service) Rollback(ctx context.Context, kind, subject string) (*store.LearningModel, error) {
	m, err := s.store.RollbackModel(ctx, kind, subject)
	if err != nil {
		return nil, err
	}
	s.log.Info("model rolled back", "kind", m.Kind, "subject", m.Subject, "version", m.Version)
	return m, s.Reload(ctx)
}
