package model

import (
	"math"
	"time"
)

// Forecast methods.
const (
	MethodHoltWinters   = "holt-winters"
	MethodSeasonalNaive = "seasonal-naive"
	MethodLastValue     = "last-value"
	MethodMean          = "mean"
)

// Forecast is a served forecasting model: additive Holt-Winters with a
// damped trend, or one of the baselines it is measured against, all in one
// shape so that the registry stores and the Predictor runs them alike.
//
// The value k steps after End is
//
//	Level + (Phi + Phi² + … + Phi^k)·Trend + Season[(k-1) mod Period]
//
// clamped to [Min, Max]; the baselines are special cases (last-value and
// mean: a Level alone; seasonal-naive: the last period as Season).
type Forecast struct {
	Method string        `json:"method"`
	Step   time.Duration `json:"step"` // nanoseconds in JSON, as time.Duration encodes
	End    time.Time     `json:"end"`  // time of the last observation
	Period int           `json:"period"`
	Alpha  float64       `json:"alpha"` // level smoothing
	Beta   float64       `json:"beta"`  // trend smoothing
	Gamma  float64       `json:"gamma"` // season smoothing
	Phi    float64       `json:"phi"`   // trend damping; 0 when there is no trend
	Level  float64       `json:"level"`
	Trend  float64       `json:"trend"`
	// Season[i] is the seasonal term of step End + (i+1)·Step, and so on
	// every Period steps before and after.
	Season []float64 `json:"season,omitempty"`
	Mean   float64   `json:"mean"` // of the data it was fitted on
	Last   float64   `json:"last"` // last observed value
	Min    *float64  `json:"min,omitempty"`
	Max    *float64  `json:"max,omitempty"`
}

// Next returns the n steps after End.
func (f *Forecast) Next(n int) []float64 {
	if n <= 0 {
		return nil
	}
	out := make([]float64, n)
	for k := range out {
		out[k] = f.step(k + 1)
	}
	return out
}

// At returns the value at t, interpolated between steps. After End it is
// the forecast; at or before End it is the in-sample estimate Level plus the
// seasonal term, with no trend.
func (f *Forecast) At(t time.Time) float64 {
	if f.Step <= 0 {
		return f.clamp(f.Level)
	}
	x := float64(t.Sub(f.End)) / float64(f.Step)
	k := math.Floor(x)
	fr := x - k
	v := f.step(int(k))
	if fr > 1e-9 {
		v += fr * (f.step(int(k)+1) - v)
	}
	return v
}

// step is the value k steps after End (k <= 0: in sample).
func (f *Forecast) step(k int) float64 {
	v := f.Level
	if k >= 1 && f.Trend != 0 {
		v += damped(f.Phi, k) * f.Trend
	}
	if p := len(f.Season); p > 0 {
		j := (k - 1) % p
		if j < 0 {
			j += p
		}
		v += f.Season[j]
	}
	return f.clamp(v)
}

func (f *Forecast) clamp(v float64) float64 {
	if f.Min != nil && v < *f.Min {
		v = *f.Min
	}
	if f.Max != nil && v > *f.Max {
		v = *f.Max
	}
	return v
}

// damped is Phi + Phi² + … + Phi^k.
func damped(phi float64, k int) float64 {
	if phi >= 1 {
		return float64(k)
	}
	if phi <= 0 {
		return 0
	}
	return phi * (1 - math.Pow(phi, float64(k))) / (1 - phi)
}
