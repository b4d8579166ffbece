package model

import (
	"fmt"
	"math"
	"strings"
	"time"
)

// ForecastOptions configure TrainForecast.
type ForecastOptions struct {
	Period     int // steps per season (e.g. 24 for hourly data with daily seasonality); required
	Holdout    int // held-out steps at the end (default: Period)
	MinPeriods int // full periods of training data required besides the holdout (default 2)
	Min, Max   *float64
	MAPEFloor  float64 // |actual| below this is left out of MAPE (default: 1% of the series' max |value|)
	MaxGapFrac float64 // more missing than this fraction → ErrBadSeries (default 0.2); shorter gaps are filled by interpolation
	// Origins is how many forecast origins the held-out error averages
	// over (default 4), spread evenly over one period before the last: a
	// single origin at the same time of day every training would judge a
	// solar forecast against "last value" at midnight — zero all day —
	// which on a dark day is hard to beat and no forecast at all. Fewer
	// origins are used when the data are short.
	Origins int
}

// ForecastResult is a trained forecast and the evidence for serving it.
type ForecastResult struct {
	Model        *Forecast          `json:"model"`     // Holt-Winters refit on all the data (also when not Ready)
	Metrics      Metrics            `json:"metrics"`   // Holt-Winters on the holdout
	Baselines    map[string]Metrics `json:"baselines"` // "last-value", "seasonal-naive", "mean" on the holdout
	BestBaseline string             `json:"best_baseline"`
	Ready        bool               `json:"ready"`   // MAE strictly below the best baseline's
	Reason       string             `json:"reason"`  // why not ready, in words with the numbers; or what it beat
	Origins      int                `json:"origins"` // forecast origins the metrics average over
	// Fallback is the best baseline refit on all the data, set when
	// Holt-Winters is not ready: the forecast that beat it, for a caller
	// that needs some outlook (named by its Method, never mistaken for the
	// model).
	Fallback *Forecast `json:"fallback,omitempty"`
}

// baselineOrder is the order baselines are reported and tie-broken in.
var baselineOrder = []string{MethodSeasonalNaive, MethodLastValue, MethodMean}

// TrainForecast fits additive Holt-Winters to s and measures it on the last
// Holdout steps against three baselines, the way the Planner uses it: one
// multi-step forecast from the end of training across the whole holdout.
// Parameters are chosen on the training part only. The returned model is
// refitted on all of s, ready or not, so the caller can store it either way.
//
// Gaps (NaN) are filled by interpolation for fitting but never scored.
func TrainForecast(s Series, opt ForecastOptions) (*ForecastResult, error) {
	if err := opt.defaults(); err != nil {
		return nil, err
	}
	y, obs, err := fill(s, opt.MaxGapFrac)
	if err != nil {
		return nil, err
	}
	n, per, hold := len(y), opt.Period, opt.Holdout
	if need := hold + opt.MinPeriods*per; n < need {
		return nil, fmt.Errorf("%w: %d steps, need %d (%d periods of %d besides a holdout of %d)",
			ErrTooLittleData, n, need, opt.MinPeriods, per, hold)
	}
	stride := max(1, per/opt.Origins)
	origins := opt.Origins
	for origins > 1 && n-hold-(origins-1)*stride < opt.MinPeriods*per {
		origins--
	}
	lo, hi := math.Inf(-1), math.Inf(1)
	if opt.Min != nil {
		lo = *opt.Min
	}
	if opt.Max != nil {
		hi = *opt.Max
	}
	floor := opt.MAPEFloor
	if floor == 0 {
		floor = defaultFloor(s.Values)
	}

	// Parameters are chosen on the data before the first origin, so no
	// held-out step informs them; each origin then filters its own
	// training part with them and forecasts the holdout after it.
	first := n - hold - (origins-1)*stride
	params := newHWFitter(y[:first], obs[:first], per, hold, lo, hi).fit()
	var pred, actual []float64
	var actualObs []bool
	base := make(map[string][]float64, len(baselineOrder))
	for k := range origins {
		o := first + k*stride
		train := y[:o]
		endTrain := s.Time(o - 1)
		m := newHWFitter(train, obs[:o], per, hold, lo, hi).model(params)
		m.finish(train, endTrain, s.Step, opt)
		pred = append(pred, m.Next(hold)...)
		actual = append(actual, y[o:o+hold]...)
		actualObs = append(actualObs, obs[o:o+hold]...)
		for _, b := range baselineOrder {
			base[b] = append(base[b], baseline(b, train, per, endTrain, s.Step, opt).Next(hold)...)
		}
	}
	res := &ForecastResult{
		Metrics:   metrics(pred, actual, actualObs, floor),
		Baselines: make(map[string]Metrics, len(baselineOrder)),
		Origins:   origins,
	}
	for _, b := range baselineOrder {
		res.Baselines[b] = metrics(base[b], actual, actualObs, floor)
	}
	res.BestBaseline = baselineOrder[0]
	for _, b := range baselineOrder[1:] {
		if res.Baselines[b].MAE < res.Baselines[res.BestBaseline].MAE {
			res.BestBaseline = b
		}
	}

	all := newHWFitter(y, obs, per, hold, lo, hi)
	res.Model = all.model(all.fit())
	res.Model.finish(y, s.End(), s.Step, opt)

	ok := res.Model.finite() && finite(res.Metrics.MAE)
	for _, b := range res.Baselines {
		ok = ok && finite(b.MAE)
	}
	if !ok {
		// Only values near the float64 limit get here; JSON cannot carry
		// the Inf they overflow to.
		return nil, fmt.Errorf("%w: values too large to fit", ErrBadSeries)
	}
	best := res.Baselines[res.BestBaseline]
	res.Ready = res.Metrics.N > 0 && res.Metrics.MAE < best.MAE
	res.Reason = forecastReason(res, hold)
	if !res.Ready && res.Metrics.N > 0 {
		res.Fallback = baseline(res.BestBaseline, y, per, s.End(), s.Step, opt)
	}
	return res, nil
}

func (o *ForecastOptions) defaults() error {
	switch {
	case o.Period < 2:
		return fmt.Errorf("%w: period %d, need at least 2 steps per season", ErrBadOptions, o.Period)
	case o.Holdout < 0 || o.MinPeriods < 0:
		return fmt.Errorf("%w: negative holdout (%d) or min periods (%d)", ErrBadOptions, o.Holdout, o.MinPeriods)
	case o.MAPEFloor < 0 || math.IsNaN(o.MAPEFloor):
		return fmt.Errorf("%w: MAPE floor %v", ErrBadOptions, o.MAPEFloor)
	case o.MaxGapFrac < 0 || o.MaxGapFrac > 1 || math.IsNaN(o.MaxGapFrac):
		return fmt.Errorf("%w: max gap fraction %v is outside [0, 1]", ErrBadOptions, o.MaxGapFrac)
	case o.Min != nil && o.Max != nil && *o.Min > *o.Max:
		return fmt.Errorf("%w: min %v above max %v", ErrBadOptions, *o.Min, *o.Max)
	case o.Min != nil && !finite(*o.Min), o.Max != nil && !finite(*o.Max):
		return fmt.Errorf("%w: min and max must be finite", ErrBadOptions)
	}
	if o.Holdout == 0 {
		o.Holdout = o.Period
	}
	if o.MinPeriods == 0 {
		o.MinPeriods = 2
	}
	if o.MaxGapFrac == 0 {
		o.MaxGapFrac = 0.2
	}
	if o.Origins <= 0 {
		o.Origins = 4
	}
	return nil
}

// finish fills in what every Forecast carries besides its method's state.
func (f *Forecast) finish(y []float64, end time.Time, step time.Duration, opt ForecastOptions) {
	f.End, f.Step = end, step
	f.Period = opt.Period
	sum := 0.0
	for _, v := range y {
		sum += v
	}
	f.Mean, f.Last = sum/float64(len(y)), y[len(y)-1]
	f.Min, f.Max = copyPtr(opt.Min), copyPtr(opt.Max)
}

// baseline builds a baseline forecast from the training data.
func baseline(method string, train []float64, per int, end time.Time, step time.Duration, opt ForecastOptions) *Forecast {
	f := &Forecast{Method: method}
	f.finish(train, end, step, opt)
	switch method {
	case MethodLastValue:
		f.Level = f.Last
	case MethodMean:
		f.Level = f.Mean
	case MethodSeasonalNaive:
		f.Season = append([]float64(nil), train[len(train)-per:]...)
	}
	return f
}

func forecastReason(r *ForecastResult, hold int) string {
	var b strings.Builder
	best := r.Baselines[r.BestBaseline]
	hw := r.Metrics
	if hw.N == 0 {
		return fmt.Sprintf("none of the %d held-out steps was observed: nothing to compare", hold)
	}
	if r.Ready {
		fmt.Fprintf(&b, "holt-winters MAE %s%s beats the best baseline, %s (MAE %s%s)",
			num(hw.MAE), mapeText(hw), r.BestBaseline, num(best.MAE), mapeText(best))
	} else {
		fmt.Fprintf(&b, "holt-winters MAE %s%s is not below the best baseline, %s (MAE %s%s)",
			num(hw.MAE), mapeText(hw), r.BestBaseline, num(best.MAE), mapeText(best))
	}
	fmt.Fprintf(&b, ", forecasting %d held-out steps from %d origins (%d observed)", hold, r.Origins, hw.N)
	others := make([]string, 0, len(baselineOrder))
	for _, name := range baselineOrder {
		if name != r.BestBaseline {
			others = append(others, fmt.Sprintf("%s %s", name, num(r.Baselines[name].MAE)))
		}
	}
	fmt.Fprintf(&b, "; other baselines' MAE: %s", strings.Join(others, ", "))
	return b.String()
}

func (f *Forecast) finite() bool {
	for _, v := range append([]float64{f.Alpha, f.Beta, f.Gamma, f.Phi, f.Level, f.Trend, f.Mean, f.Last}, f.Season...) {
		if !finite(v) {
			return false
		}
	}
	return true
}

func copyPtr(p *float64) *float64 {
	if p == nil {
		return nil
	}
	v := *p
	return &v
}
