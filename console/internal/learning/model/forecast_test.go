package model

import (
	"encoding/json"
	"errors"
	"math"
	"math/rand/v2"
	"strings"
	"testing"
	"time"
)

var t0 = time.Date(2025, 6, 1, 0, 0, 0, 0, time.UTC)

// seasonal is level + slope·t + amp·sin(2πt/24) + N(0, noise) hourly.
func seasonal(hours int, level, slope, amp, noise float64, seed uint64) Series {
	r := rand.New(rand.NewPCG(seed, 1))
	s := Series{Start: t0, Step: time.Hour, Values: make([]float64, hours)}
	for i := range s.Values {
		s.Values[i] = seasonalAt(i, level, slope, amp) + noise*r.NormFloat64()
	}
	return s
}

func seasonalAt(i int, level, slope, amp float64) float64 {
	return level + slope*float64(i) + amp*math.Sin(2*math.Pi*float64(i)/24)
}

func TestTrainForecastRecoversSeasonal(t *testing.T) {
	const hours = 16 * 24
	s := seasonal(hours, 50, 0.05, 20, 1, 1)
	res, err := TrainForecast(s, ForecastOptions{Period: 24})
	if err != nil {
		t.Fatal(err)
	}
	t.Log(res.Reason)
	if !res.Ready {
		t.Fatalf("not ready: %s", res.Reason)
	}
	// Noise of σ=1 has a mean absolute value of 0.8: a model that found
	// the shape is not far above it.
	if res.Metrics.MAE > 1.5 {
		t.Errorf("holdout MAE %.3f, want below 1.5 (noise alone is 0.8)", res.Metrics.MAE)
	}
	if res.Metrics.N != 4*24 || res.Origins != 4 {
		t.Errorf("scored %d points from %d origins, want 4 × 24", res.Metrics.N, res.Origins)
	}
	for name, b := range res.Baselines {
		if res.Metrics.MAE >= b.MAE {
			t.Errorf("holt-winters MAE %.3f does not beat %s %.3f", res.Metrics.MAE, name, b.MAE)
		}
	}
	if !strings.Contains(res.Reason, "beats") || !strings.Contains(res.Reason, res.BestBaseline) {
		t.Errorf("reason %q should say what it beat", res.Reason)
	}

	m := res.Model
	if m.Method != MethodHoltWinters || !m.End.Equal(s.End()) || m.Step != time.Hour || len(m.Season) != 24 {
		t.Fatalf("model %+v", m)
	}
	// The refit model continues the noiseless curve past the data.
	var mae float64
	for k, v := range m.Next(24) {
		mae += math.Abs(v-seasonalAt(hours+k, 50, 0.05, 20)) / 24
	}
	if mae > 1.5 {
		t.Errorf("next 24 h off the true curve by %.3f on average", mae)
	}
}

func TestTrainForecastNotReady(t *testing.T) {
	t.Run("random walk", func(t *testing.T) {
		// A random walk has no season; with this seed last-value wins the
		// holdout and Holt-Winters must say so.
		r := rand.New(rand.NewPCG(7, 7))
		s := Series{Start: t0, Step: time.Hour, Values: make([]float64, 10*24)}
		v := 100.0
		for i := range s.Values {
			v += r.NormFloat64()
			s.Values[i] = v
		}
		res, err := TrainForecast(s, ForecastOptions{Period: 24})
		if err != nil {
			t.Fatal(err)
		}
		t.Log(res.Reason)
		best := res.Baselines[res.BestBaseline]
		if res.Ready || res.Metrics.MAE < best.MAE {
			t.Fatalf("ready=%v: holt-winters %.4g vs %s %.4g", res.Ready, res.Metrics.MAE, res.BestBaseline, best.MAE)
		}
		for _, want := range []string{"not below", num(res.Metrics.MAE), num(best.MAE), res.BestBaseline} {
			if !strings.Contains(res.Reason, want) {
				t.Errorf("reason %q lacks %q", res.Reason, want)
			}
		}
		if res.Model == nil || len(res.Model.Next(3)) != 3 {
			t.Error("a model must come back even when not ready")
		}
	})
	t.Run("constant", func(t *testing.T) {
		// Every method is exact: a tie is not a win.
		s := Series{Start: t0, Step: time.Hour, Values: make([]float64, 3*24)}
		for i := range s.Values {
			s.Values[i] = 42
		}
		res, err := TrainForecast(s, ForecastOptions{Period: 24})
		if err != nil {
			t.Fatal(err)
		}
		if res.Ready || res.Metrics.MAE != 0 {
			t.Errorf("ready=%v MAE=%v: %s", res.Ready, res.Metrics.MAE, res.Reason)
		}
		if _, err := json.Marshal(res); err != nil {
			t.Errorf("result does not encode: %v", err)
		}
	})
}

func TestTrainForecastErrors(t *testing.T) {
	good := seasonal(5*24, 10, 0, 5, 0.1, 3)
	with := func(f func(v []float64)) Series {
		s := good
		s.Values = append([]float64(nil), good.Values...)
		f(s.Values)
		return s
	}
	cases := []struct {
		name string
		s    Series
		opt  ForecastOptions
		want error
	}{
		{"too short", good.Slice(0, 70), ForecastOptions{Period: 24}, ErrTooLittleData},
		{"too short for min periods", good, ForecastOptions{Period: 24, MinPeriods: 5}, ErrTooLittleData},
		{"empty", Series{Start: t0, Step: time.Hour}, ForecastOptions{Period: 24}, ErrTooLittleData},
		{"all NaN", with(func(v []float64) {
			for i := range v {
				v[i] = math.NaN()
			}
		}), ForecastOptions{Period: 24}, ErrBadSeries},
		{"Inf", with(func(v []float64) { v[50] = math.Inf(1) }), ForecastOptions{Period: 24}, ErrBadSeries},
		{"too many gaps", with(func(v []float64) {
			for i := 10; i < 40; i++ { // 30 of 120
				v[i] = math.NaN()
			}
		}), ForecastOptions{Period: 24}, ErrBadSeries},
		{"zero step", Series{Start: t0, Values: good.Values}, ForecastOptions{Period: 24}, ErrBadSeries},
		{"no period", good, ForecastOptions{}, ErrBadOptions},
		{"min above max", good, ForecastOptions{Period: 24, Min: ptr(5), Max: ptr(1)}, ErrBadOptions},
		{"gap fraction", good, ForecastOptions{Period: 24, MaxGapFrac: 1.5}, ErrBadOptions},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			res, err := TrainForecast(c.s, c.opt)
			if !errors.Is(err, c.want) {
				t.Fatalf("err = %v, want %v", err, c.want)
			}
			if res != nil {
				t.Error("result with an error")
			}
		})
	}
}

func TestTrainForecastGaps(t *testing.T) {
	s := seasonal(6*24, 20, 0, 10, 0.2, 5)
	// 3-step gaps every day (12.5%, below the default 20%), one of them in
	// the holdout.
	missing := 0
	for d := range 6 {
		for i := d*24 + 5; i < d*24+8; i++ {
			s.Values[i] = math.NaN()
			missing++
		}
	}
	res, err := TrainForecast(s, ForecastOptions{Period: 24})
	if err != nil {
		t.Fatal(err)
	}
	// Four origins six hours apart: each 24-step holdout holds one 3-step
	// gap.
	if res.Metrics.N != 4*(24-3) {
		t.Errorf("scored %d holdout points, want 4 × 21: gaps are never scored", res.Metrics.N)
	}
	if !res.Ready {
		t.Errorf("not ready with short gaps: %s", res.Reason)
	}
	// The same series with a higher gap limit failing at a lower one.
	if _, err := TrainForecast(s, ForecastOptions{Period: 24, MaxGapFrac: 0.1}); !errors.Is(err, ErrBadSeries) {
		t.Errorf("%d/%d missing with MaxGapFrac 0.1: err = %v", missing, len(s.Values), err)
	}
}

func TestFill(t *testing.T) {
	nan := math.NaN()
	s := Series{Start: t0, Step: time.Minute, Values: []float64{nan, 1, nan, nan, 4, 5, nan}}
	got, obs, err := fill(s, 0.6)
	if err != nil {
		t.Fatal(err)
	}
	want := []float64{1, 1, 2, 3, 4, 5, 5}
	wantObs := []bool{false, true, false, false, true, true, false}
	for i := range want {
		if got[i] != want[i] || obs[i] != wantObs[i] {
			t.Errorf("sample %d: %v (observed %v), want %v (%v)", i, got[i], obs[i], want[i], wantObs[i])
		}
	}
	if !math.IsNaN(s.Values[0]) {
		t.Error("fill changed its input")
	}
}

func TestForecastAtAndNext(t *testing.T) {
	f := &Forecast{
		Method: MethodHoltWinters, Step: time.Hour, End: t0, Period: 4,
		Phi: 0.5, Level: 10, Trend: 2, Season: []float64{1, -1, 3, -3},
		Min: ptr(0), Max: ptr(13),
	}
	// k steps ahead: 10 + (0.5+…+0.5^k)·2 + season, clamped to [0, 13].
	want := []float64{10 + 1 + 1, 10 + 1.5 - 1, 13, 10 + 1.875 - 3, 10 + 1.9375 + 1}
	next := f.Next(5)
	for k, w := range want {
		if math.Abs(next[k]-w) > 1e-12 {
			t.Errorf("step %d: %v, want %v", k+1, next[k], w)
		}
		if at := f.At(t0.Add(time.Duration(k+1) * time.Hour)); at != next[k] {
			t.Errorf("At step %d = %v, Next = %v", k+1, at, next[k])
		}
	}
	if mid := f.At(t0.Add(90 * time.Minute)); math.Abs(mid-(next[0]+next[1])/2) > 1e-12 {
		t.Errorf("half way between steps 1 and 2: %v, want %v", mid, (next[0]+next[1])/2)
	}
	// In sample: level plus season, no trend. End itself is the step
	// before Season[0], i.e. Season[3].
	if v := f.At(t0); v != 10-3 {
		t.Errorf("At(End) = %v, want 7", v)
	}
	if v := f.At(t0.Add(-2 * time.Hour)); v != 10-1 {
		t.Errorf("At(End-2h) = %v, want 9", v)
	}
	if f.Next(0) != nil {
		t.Error("Next(0) should be empty")
	}

	// A seasonal-naive baseline repeats the last period of training.
	train := []float64{1, 2, 3, 4, 5, 6, 7, 8}
	sn := baseline(MethodSeasonalNaive, train, 4, t0, time.Hour, ForecastOptions{Period: 4})
	if got := sn.Next(6); !equal(got, []float64{5, 6, 7, 8, 5, 6}) {
		t.Errorf("seasonal-naive next = %v", got)
	}
	if lv := baseline(MethodLastValue, train, 4, t0, time.Hour, ForecastOptions{Period: 4}); lv.At(t0.Add(5*time.Hour)) != 8 {
		t.Error("last-value is not the last value")
	}
	if mv := baseline(MethodMean, train, 4, t0, time.Hour, ForecastOptions{Period: 4}); mv.Next(1)[0] != 4.5 {
		t.Error("mean is not the mean")
	}
}

func TestForecastJSON(t *testing.T) {
	s := seasonal(4*24, 0, 0, 100, 5, 9)
	res, err := TrainForecast(s, ForecastOptions{Period: 24, Min: ptr(0), MAPEFloor: 1e9})
	if err != nil {
		t.Fatal(err)
	}
	if res.Metrics.MAPE != nil {
		t.Errorf("MAPE %v with no point above the floor", *res.Metrics.MAPE)
	}
	b, err := json.Marshal(res)
	if err != nil {
		t.Fatal(err)
	}
	if strings.Contains(string(b), "mape") {
		t.Errorf("nil MAPE encoded: %s", b)
	}
	var back ForecastResult
	if err := json.Unmarshal(b, &back); err != nil {
		t.Fatal(err)
	}
	if !equal(back.Model.Next(30), res.Model.Next(30)) {
		t.Error("the decoded model forecasts differently")
	}
	for _, v := range res.Model.Next(48) {
		if v < 0 {
			t.Fatalf("forecast %v below Min 0", v)
		}
	}
}

func TestResample(t *testing.T) {
	nan := math.NaN()
	s := Series{Start: t0, Step: 5 * time.Minute, Values: []float64{1, 2, 3, nan, nan, nan, 7}}
	r, err := s.Resample(15 * time.Minute)
	if err != nil {
		t.Fatal(err)
	}
	if len(r.Values) != 3 || r.Values[0] != 2 || !math.IsNaN(r.Values[1]) || r.Values[2] != 7 || r.Step != 15*time.Minute {
		t.Errorf("resampled %v", r.Values)
	}
	if _, err := s.Resample(7 * time.Minute); !errors.Is(err, ErrBadOptions) {
		t.Errorf("7m from 5m: err = %v", err)
	}
}

func equal(a, b []float64) bool {
	if len(a) != len(b) {
		return false
	}
	for i := range a {
		if a[i] != b[i] {
			return false
		}
	}
	return true
}

func TestTrainForecastHugeValues(t *testing.T) {
	s := seasonal(4*24, 0, 0, 1, 0, 1)
	for i := range s.Values {
		s.Values[i] = math.MaxFloat64 * (0.9 + 0.1*s.Values[i])
	}
	res, err := TrainForecast(s, ForecastOptions{Period: 24})
	if err == nil {
		if _, err := json.Marshal(res); err != nil {
			t.Fatalf("no error, but the result does not encode: %v", err)
		}
	} else if !errors.Is(err, ErrBadSeries) {
		t.Fatalf("err = %v, want ErrBadSeries or a result that encodes", err)
	}
}

func TestTrainForecastHoldoutUnobserved(t *testing.T) {
	// 74 observed steps, then 20 missing: the whole holdout (21% gaps).
	s := seasonal(94, 10, 0, 5, 0.1, 11)
	for i := 74; i < 94; i++ {
		s.Values[i] = math.NaN()
	}
	res, err := TrainForecast(s, ForecastOptions{Period: 24, Holdout: 20, MaxGapFrac: 0.3, Origins: 1})
	if err != nil {
		t.Fatal(err)
	}
	if res.Ready || res.Metrics.N != 0 || !strings.Contains(res.Reason, "nothing to compare") {
		t.Errorf("ready=%v n=%d: %s", res.Ready, res.Metrics.N, res.Reason)
	}
}

// TestTrainForecastOrigins: the held-out error averages over origins at
// several times of day, fewer when the data are short, and one origin is
// the plain last-holdout evaluation.
func TestTrainForecastOrigins(t *testing.T) {
	long := seasonal(10*24, 50, 0, 20, 1, 3)
	res, err := TrainForecast(long, ForecastOptions{Period: 24})
	if err != nil || res.Origins != 4 || res.Metrics.N != 96 {
		t.Fatalf("10 days: %d origins, %d points, %v", res.Origins, res.Metrics.N, err)
	}
	short := seasonal(3*24+6, 50, 0, 20, 1, 3)
	res, err = TrainForecast(short, ForecastOptions{Period: 24})
	if err != nil || res.Origins != 2 || res.Metrics.N != 48 {
		t.Fatalf("3 days and 6 hours: %d origins, %d points, %v", res.Origins, res.Metrics.N, err)
	}
	res, err = TrainForecast(long, ForecastOptions{Period: 24, Origins: 1})
	if err != nil || res.Origins != 1 || res.Metrics.N != 24 {
		t.Fatalf("one origin: %d origins, %d points, %v", res.Origins, res.Metrics.N, err)
	}
}
