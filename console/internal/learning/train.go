package learning

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"math"
	"runtime"
	"sync"
	"time"

	"github.com/cloudskin/cloudskin/console/internal/learning/model"
	"github.com/cloudskin/cloudskin/console/internal/planner"
	"github.com/cloudskin/cloudskin/console/internal/store"
)

// params is a registry entry's model, by kind.
type params struct {
	Forecast *model.Forecast `json:"forecast,omitempty"`
	// Fallback is the baseline that beat a not-ready forecast: the energy
	// outlook runs it while no version of the forecast is served.
	Fallback   *model.Forecast `json:"fallback,omitempty"`
	Linear     *model.Linear   `json:"linear,omitempty"`
	Encoder    *model.Encoder  `json:"encoder,omitempty"`
	CapacityWh *float64        `json:"capacity_wh,omitempty"`
	// WPerLoad is how many watts the node draws per unit of CPU load (a
	// least-squares slope over the window): a cell's share of the draw.
	WPerLoad *float64 `json:"w_per_load,omitempty"`
}

// evaluation is a registry entry's held-out metrics.
type evaluation struct {
	Model        model.Metrics            `json:"model"`
	Baselines    map[string]model.Metrics `json:"baselines"`
	BestBaseline string                   `json:"best_baseline"`
}

// Trained is one model version a training produced.
type Trained struct {
	ID      uint64 `json:"id"`
	Kind    string `json:"kind"`
	Subject string `json:"subject"`
	Version int    `json:"version"`
	Status  string `json:"status"`
	Reason  string `json:"reason"`
}

// Report is what one training did.
type Report struct {
	Trigger  string        `json:"trigger"`
	From     time.Time     `json:"from"`
	To       time.Time     `json:"to"`
	Took     time.Duration `json:"took_ns"`
	Models   []Trained     `json:"models"`
	Ready    int           `json:"ready"`
	NotReady int           `json:"not_ready"`
	Failed   int           `json:"failed"`

	mu sync.Mutex // guards the counts and Models while nodes train in parallel
}

// keepVersions is how many versions of one model the registry keeps
// besides the served one.
const keepVersions = 20

// Train trains every model from the window of history ending now and adds
// each to the registry; a ready version is served at once. Models that
// cannot train (too little data, bad series) are recorded as failed, once
// per unchanged reason.
func (s *Service) Train(ctx context.Context, trigger string) (*Report, error) {
	s.training.Lock()
	defer s.training.Unlock()
	start := time.Now()
	to := s.now().UTC().Truncate(s.cfg.Step)
	from := to.Add(-s.cfg.Window)
	rep := &Report{Trigger: trigger, From: from, To: to}
	nodes, err := s.nodes(ctx)
	if err != nil {
		return nil, err
	}
	series, err := s.seriesByNode(ctx, from, to, s.cfg.Step)
	if err != nil {
		return nil, err
	}
	period := int(24 * time.Hour / s.cfg.Step)
	// Nodes train in parallel, one per core: fitting a forecast is pure
	// CPU, and a fleet's worth of them is most of a training.
	var wg sync.WaitGroup
	sem := make(chan struct{}, runtime.GOMAXPROCS(0))
	for _, n := range nodes {
		ns := series[n.ID]
		if ns == nil {
			ns = &nodeSeries{Start: from, Step: s.cfg.Step}
		}
		sem <- struct{}{}
		wg.Go(func() {
			defer func() { <-sem }()
			s.trainNode(ctx, rep, n, ns, period)
		})
	}
	wg.Wait()
	samples, err := s.perfSamples(ctx, from, to, nodes)
	if err != nil {
		return nil, err
	}
	s.performance(ctx, rep, samples)
	if err := s.store.PruneModels(ctx, keepVersions); err != nil {
		s.log.Warn("old model versions not pruned", "err", err)
	}
	if err := s.Reload(ctx); err != nil {
		return nil, err
	}
	rep.Took = time.Since(start)
	s.m.trainSecs.Observe(rep.Took.Seconds())
	s.log.Info("models trained", "trigger", trigger, "ready", rep.Ready, "not_ready", rep.NotReady, "failed", rep.Failed,
		"took", rep.Took.Round(time.Millisecond))
	return rep, nil
}

// trainNode trains one node's forecasts and battery model.
func (s *Service) trainNode(ctx context.Context, rep *Report, n nodeFacts, ns *nodeSeries, period int) {
	s.forecast(ctx, rep, KindLoad, n.Name, ns, ns.Load, period, 0, 1, nil)
	var slope *float64
	if v, ok := wattsPerLoad(ns.Load, ns.Power); ok {
		slope = &v
	}
	s.forecast(ctx, rep, KindPower, n.Name, ns, ns.Power, period, 0, math.NaN(), slope)
	if n.Power != planner.PowerGreen {
		return
	}
	if observed(ns.Solar) > 0 || !math.IsNaN(n.Solar) {
		s.forecast(ctx, rep, KindSolar, n.Name, ns, ns.Solar, period, 0, math.NaN(), nil)
	}
	if observed(ns.Battery) > 0 || !math.IsNaN(n.Battery) {
		s.battery(ctx, rep, n.Name, ns)
	}
}

// forecast trains one forecast of vals and records it.
func (s *Service) forecast(ctx context.Context, rep *Report, kind, subject string, ns *nodeSeries, vals []float64, period int, lo, hi float64, slope *float64) {
	opt := model.ForecastOptions{Period: period}
	if !math.IsNaN(lo) {
		opt.Min = &lo
	}
	if !math.IsNaN(hi) {
		opt.Max = &hi
	}
	// The series starts at the node's first sample in the window: a node
	// enrolled yesterday has a day of data, not thirteen days of gaps.
	first := 0
	for first < len(vals) && math.IsNaN(vals[first]) {
		first++
	}
	start := ns.Start.Add(time.Duration(first) * ns.Step)
	vals = vals[first:]
	row := &store.LearningModel{Kind: kind, Subject: subject, TrainFrom: start, TrainTo: start.Add(time.Duration(len(vals)) * ns.Step),
		Rows: observed(vals), Features: `["time of day","level","trend"]`}
	res, err := model.TrainForecast(model.Series{Start: start, Step: ns.Step, Values: vals}, opt)
	if err != nil {
		if errors.Is(err, model.ErrTooLittleData) {
			err = fmt.Errorf("%w (%s of history at %s steps; a forecast needs three days: two to fit, one held out)",
				err, (time.Duration(len(vals)) * ns.Step).String(), ns.Step)
		}
		s.record(ctx, rep, row, nil, nil, err)
		return
	}
	ev := evaluation{Model: res.Metrics, Baselines: res.Baselines, BestBaseline: res.BestBaseline}
	s.record(ctx, rep, row, &params{Forecast: res.Model, Fallback: res.Fallback, WPerLoad: slope}, &ev, readyErr(res.Ready, res.Reason))
}

// notReady carries a trained model's reason for not being served.
type notReady struct{ reason string }

func (e notReady) Error() string { return e.reason }

func readyErr(ready bool, reason string) error {
	if ready {
		return nil
	}
	return notReady{reason}
}

// record adds a trained (err nil), not-ready (notReady) or failed model to
// the registry. A failure with the same reason as the newest version is not
// recorded again.
func (s *Service) record(ctx context.Context, rep *Report, row *store.LearningModel, prm *params, ev *evaluation, err error) {
	var nr notReady
	switch {
	case err == nil:
		row.Status = store.ModelReady
		if ev != nil {
			row.Reason = beatText(ev)
		}
	case errors.As(err, &nr):
		row.Status, row.Reason = store.ModelNotReady, nr.reason
	default:
		row.Status, row.Reason = store.ModelFailed, err.Error()
		last, lerr := s.store.ListModels(ctx, store.ModelQuery{Kind: row.Kind, Subject: row.Subject, Limit: 1})
		if lerr == nil && len(last) == 1 && last[0].Status == store.ModelFailed && last[0].Reason == row.Reason {
			rep.mu.Lock()
			rep.Failed++
			rep.mu.Unlock()
			return
		}
	}
	row.Trigger = rep.Trigger
	if prm != nil {
		b, _ := json.Marshal(prm)
		row.Params = string(b)
	}
	if ev != nil {
		b, _ := json.Marshal(ev)
		row.Metrics = string(b)
	}
	if aerr := s.store.AddModel(ctx, row, true); aerr != nil {
		s.log.Error("model not recorded", "kind", row.Kind, "subject", row.Subject, "err", aerr)
		return
	}
	rep.mu.Lock()
	defer rep.mu.Unlock()
	switch row.Status {
	case store.ModelReady:
		rep.Ready++
	case store.ModelNotReady:
		rep.NotReady++
	default:
		rep.Failed++
	}
	s.m.trainings.WithLabelValues(row.Kind, row.Status).Inc()
	rep.Models = append(rep.Models, Trained{ID: row.ID, Kind: row.Kind, Subject: row.Subject, Version: row.Version, Status: row.Status, Reason: row.Reason})
}

func beatText(ev *evaluation) string {
	b, ok := ev.Baselines[ev.BestBaseline]
	if !ok {
		return fmt.Sprintf("held-out MAE %.4g", ev.Model.MAE)
	}
	return fmt.Sprintf("held-out MAE %.4g beats %s %.4g", ev.Model.MAE, ev.BestBaseline, b.MAE)
}

// wattsPerLoad is the least-squares slope of power on load.
func wattsPerLoad(load, power []float64) (float64, bool) {
	var n, sx, sy, sxx, sxy float64
	for i := range load {
		if math.IsNaN(load[i]) || math.IsNaN(power[i]) {
			continue
		}
		n++
		sx += load[i]
		sy += power[i]
		sxx += load[i] * load[i]
		sxy += load[i] * power[i]
	}
	den := n*sxx - sx*sx
	if n < 10 || den <= 1e-12 {
		return 0, false
	}
	v := (n*sxy - sx*sy) / den
	return v, !math.IsNaN(v) && !math.IsInf(v, 0)
}

// battery fits a green node's battery capacity on the training part and
// checks it on the held-out day: predicting the next step's charge from
// solar input and draw must beat assuming the charge stays (last value).
func (s *Service) battery(ctx context.Context, rep *Report, subject string, ns *nodeSeries) {
	row := &store.LearningModel{Kind: KindBattery, Subject: subject, TrainFrom: ns.Start,
		TrainTo: ns.Start.Add(time.Duration(len(ns.Battery)) * ns.Step), Rows: observed(ns.Battery),
		Features: `["battery %","solar W","draw W"]`}
	hold := int(24 * time.Hour / ns.Step)
	n := len(ns.Battery)
	if n < 2*hold || observed(ns.Battery[:n-hold]) < hold/2 {
		s.record(ctx, rep, row, nil, nil, fmt.Errorf("%w: battery needs a day of samples to fit and a day to check, has %d of %d steps",
			model.ErrTooLittleData, observed(ns.Battery), n))
		return
	}
	solar := make([]float64, n)
	for i, v := range ns.Solar {
		solar[i] = v
		if math.IsNaN(v) {
			solar[i] = 0 // no solar reading: nothing came in
		}
	}
	capWh, err := model.FitCapacity(ns.Battery[:n-hold], solar[:n-hold], ns.Power[:n-hold], ns.Step)
	if err != nil {
		s.record(ctx, rep, row, nil, nil, err)
		return
	}
	var mod, last, cnt float64
	for i := n - hold; i < n-1; i++ {
		a, b := ns.Battery[i], ns.Battery[i+1]
		if math.IsNaN(a) || math.IsNaN(b) || math.IsNaN(ns.Power[i]) {
			continue
		}
		pred := a + (solar[i]-ns.Power[i])*ns.Step.Hours()/capWh*100
		pred = min(max(pred, 0), 100)
		mod += math.Abs(pred - b)
		last += math.Abs(a - b)
		cnt++
	}
	if cnt == 0 {
		s.record(ctx, rep, row, nil, nil, fmt.Errorf("%w: no consecutive battery samples in the held-out day", model.ErrTooLittleData))
		return
	}
	ev := &evaluation{Model: model.Metrics{MAE: mod / cnt, N: int(cnt)},
		Baselines: map[string]model.Metrics{"last-value": {MAE: last / cnt, N: int(cnt)}}, BestBaseline: "last-value"}
	var rerr error
	if ev.Model.MAE >= ev.Baselines["last-value"].MAE {
		rerr = notReady{fmt.Sprintf("capacity %.0f Wh predicts the next step's charge with MAE %.3g %%, no better than last-value %.3g %%",
			capWh, ev.Model.MAE, ev.Baselines["last-value"].MAE)}
	}
	s.record(ctx, rep, row, &params{CapacityWh: &capWh}, ev, rerr)
}

// performance trains the latency and throughput models on cell samples.
func (s *Service) performance(ctx context.Context, rep *Report, samples []model.Sample) {
	enc := model.NewEncoder(samples)
	names := enc.Names()
	feats, _ := json.Marshal(names)
	x := make([][]float64, len(samples))
	lat := make([]float64, len(samples))
	thr := make([]float64, len(samples))
	var from, to time.Time
	for i := range samples {
		x[i] = enc.Row(samples[i])
		lat[i], thr[i] = samples[i].LatencyMs, samples[i].Throughput
	}
	if len(samples) > 0 {
		from, to = samples[0].Time, samples[len(samples)-1].Time
	}
	for _, k := range []struct {
		kind string
		y    []float64
	}{{KindLatency, lat}, {KindThroughput, thr}} {
		row := &store.LearningModel{Kind: k.kind, Subject: SubjectFleet, TrainFrom: from, TrainTo: to, Rows: len(samples), Features: string(feats)}
		res, err := model.TrainLinear(model.Table{Features: names, X: x, Y: k.y}, model.LinearOptions{NonNegative: true})
		if err != nil {
			s.record(ctx, rep, row, nil, nil, err)
			continue
		}
		ev := &evaluation{Model: res.Metrics, Baselines: map[string]model.Metrics{res.BaselineName: res.Baseline}, BestBaseline: res.BaselineName}
		s.record(ctx, rep, row, &params{Linear: res.Model, Encoder: enc}, ev, readyErr(res.Ready, res.Reason))
	}
}
