package model

import (
	"math"
	"testing"
	"time"

	"github.com/cloudskin/cloudskin/console/internal/planner"
)

// BenchmarkTrainForecast trains on 14 days of hourly data (13 of training,
// a 24 h holdout), next to its peers: the three baselines scored on the
// same holdout, and one pass of the Holt-Winters filter (what each of the
// ~900 parameter trials of a fit costs). Both fits (on training and on all
// the data) are in holt-winters.
func BenchmarkTrainForecast(b *testing.B) {
	s := seasonal(14*24, 50, 0.05, 20, 2, 1)
	opt := ForecastOptions{Period: 24, Min: ptr(0)}
	b.Run("holt-winters", func(b *testing.B) {
		var res *ForecastResult
		for b.Loop() {
			var err error
			if res, err = TrainForecast(s, opt); err != nil {
				b.Fatal(err)
			}
		}
		b.ReportMetric(res.Metrics.MAE, "mae")
		b.ReportMetric(res.Baselines[res.BestBaseline].MAE, "best-baseline-mae")
	})
	b.Run("baselines", func(b *testing.B) {
		o := opt
		if err := o.defaults(); err != nil {
			b.Fatal(err)
		}
		for b.Loop() {
			y, obs, err := fill(s, o.MaxGapFrac)
			if err != nil {
				b.Fatal(err)
			}
			n := len(y) - o.Holdout
			floor := defaultFloor(s.Values)
			for _, m := range baselineOrder {
				f := baseline(m, y[:n], o.Period, s.Time(n-1), s.Step, o)
				metrics(f.Next(o.Holdout), y[n:], obs[n:], floor)
			}
		}
	})
	b.Run("filter-pass", func(b *testing.B) {
		h := newHWFitter(s.Values[:len(s.Values)-24], nil, 24, 24, 0, math.Inf(1))
		for b.Loop() {
			h.run(hwParams{0.2, 0.02, 0.1, 0.9})
		}
	})
}

// BenchmarkTrainLinear trains the latency model on 5,000 encoded samples
// (11 features and 3 modules), next to its peers: one ridge fit on all
// rows (TrainLinear does three normal-equation passes and seven solves)
// and the training-mean baseline it is scored against.
func BenchmarkTrainLinear(b *testing.B) {
	samples := latencySamples(5000, 2)
	enc := NewEncoder(samples)
	tab := enc.Table(samples, func(s Sample) float64 { return s.LatencyMs })
	b.Run("ridge", func(b *testing.B) {
		var res *RegressionResult
		for b.Loop() {
			var err error
			if res, err = TrainLinear(tab, LinearOptions{NonNegative: true}); err != nil {
				b.Fatal(err)
			}
		}
		b.ReportMetric(float64(len(tab.Y))*float64(b.N)/b.Elapsed().Seconds(), "rows/s")
		b.ReportMetric(res.Metrics.MAE, "mae-ms")
		b.ReportMetric(res.Baseline.MAE, "baseline-mae-ms")
	})
	b.Run("single-fit", func(b *testing.B) {
		for b.Loop() {
			newGram(tab.X, tab.Y).solve(tab.Features, 1e-3, true)
		}
	})
	b.Run("mean-baseline", func(b *testing.B) {
		hold := len(tab.Y) / 5
		for b.Loop() {
			mean := 0.0
			for _, y := range tab.Y[:len(tab.Y)-hold] {
				mean += y
			}
			mean /= float64(len(tab.Y) - hold)
			pred := make([]float64, hold)
			for i := range pred {
				pred[i] = mean
			}
			metrics(pred, tab.Y[len(tab.Y)-hold:], nil, 0.1)
		}
	})
}

// BenchmarkPredictorLatency is one LatencyMs call, as the Planner makes it
// once per feasible node for a cell with an SLO, next to the naive formula
// a hand-written predictor would use (the floor for any predictor) and the
// explained prediction the prediction API serves.
func BenchmarkPredictorLatency(b *testing.B) {
	p := trainedPredictor(b)
	cell := planner.Cell{ID: "c", Module: "sha256:bbbb", InputRate: 150, CPU: 1,
		Constraints: planner.Constraints{Point: &planner.Point{Lat: 45, Lon: 8}}}
	node := planner.Node{Name: "n", Arch: "arm64", CPUs: 4, MemTotal: 8 << 30, Load: 0.5, Power: planner.PowerGreen,
		Position: &planner.Point{Lat: 45.1, Lon: 8}}
	var sink float64
	b.Run("predictor", func(b *testing.B) {
		for b.Loop() {
			ms, _ := p.LatencyMs(cell, node)
			sink += ms
		}
	})
	b.Run("naive-formula", func(b *testing.B) {
		for b.Loop() {
			load := min(node.Load+cell.CPU/float64(node.CPUs), 0.95)
			d := planner.Distance(*cell.Constraints.Point, *node.Position) / 1000
			sink += 5 + 3/(1-load) + 0.04*cell.InputRate + d/10
		}
	})
	b.Run("explained", func(b *testing.B) {
		for b.Loop() {
			y, _, _ := p.Latency.Predict(p.Enc.Row(p.SampleFor(cell, node, t0)))
			sink += y
		}
	})
	_ = sink
}

// BenchmarkEnergyHours is one EnergyHours call (24 h at 15 min against an
// hourly solar forecast), next to the Planner's own fallback, the battery
// percentage over its trend.
func BenchmarkEnergyHours(b *testing.B) {
	season := make([]float64, 24)
	for h := 8; h < 16; h++ {
		season[h-1] = 200
	}
	p := &Predictor{
		Now: func() time.Time { return t0 },
		Energy: map[string]NodeEnergy{"n": {BatteryPct: 50, CapacityWh: 1000, ReservePct: 10, DrawW: 30, Green: true,
			Solar: &Forecast{Step: time.Hour, End: t0, Period: 24, Season: season}}},
	}
	bat := planner.Battery{Percent: 50, TrendPctPerHour: -3}
	var sink float64
	b.Run("predictor", func(b *testing.B) {
		for b.Loop() {
			h, _ := p.EnergyHours("n")
			sink += h
		}
	})
	b.Run("battery-trend", func(b *testing.B) {
		for b.Loop() {
			sink += max(bat.Percent, 0) / -bat.TrendPctPerHour
		}
	})
	_ = sink
}
