package model

import "math"

// hwParams are the smoothing parameters of additive Holt-Winters with a
// damped trend.
type hwParams struct{ alpha, beta, gamma, phi float64 }

// The grid the parameters are first chosen from. Small gammas matter most:
// a daily profile learned over two weeks should move slowly, which is what
// makes Holt-Winters steadier than repeating yesterday.
var (
	hwAlphas = []float64{0.02, 0.05, 0.1, 0.2, 0.35, 0.5, 0.7, 0.9}
	hwBetas  = []float64{0, 0.02, 0.1, 0.3}
	hwGammas = []float64{0, 0.02, 0.05, 0.1, 0.2, 0.35, 0.5, 0.8}
	hwPhis   = []float64{0.8, 0.9, 0.98}
)

// hwFitter chooses Holt-Winters parameters for one stretch of data by
// minimising the mean absolute error of multi-step forecasts, horizons 1 to
// h, from origins spread over the data after its first period: the error
// the Planner feels when it looks hours ahead, not the one-step error the
// textbook minimises.
type hwFitter struct {
	y        []float64
	obs      []bool // false: filled gap, not scored
	period   int
	horizon  int
	stride   int // between scored origins
	lo, hi   float64
	level0   float64
	trend0   float64
	season0  []float64
	season   []float64 // scratch, indexed by t mod period
	dampSums []float64 // scratch, damped(phi, h) for h = 0..horizon
}

func newHWFitter(y []float64, obs []bool, period, horizon int, lo, hi float64) *hwFitter {
	h := &hwFitter{
		y: y, obs: obs, period: period, horizon: horizon,
		stride: max(1, horizon/6),
		lo:     lo, hi: hi,
		season:   make([]float64, period),
		dampSums: make([]float64, horizon+1),
	}
	h.level0, h.trend0, h.season0 = hwInit(y, period)
	return h
}

// hwInit starts the state from the data's full periods: the season as the
// average deviation from each period's mean, the trend from the first to
// the last period's mean, and the level at the step before the first.
func hwInit(y []float64, p int) (level, trend float64, season []float64) {
	k := max(1, len(y)/p)
	means := make([]float64, k)
	season = make([]float64, p)
	for c := range k {
		for _, v := range y[c*p : min((c+1)*p, len(y))] {
			means[c] += v
		}
		means[c] /= float64(min((c+1)*p, len(y)) - c*p)
	}
	for c := range k {
		for j := range p {
			if i := c*p + j; i < len(y) {
				season[j] += (y[i] - means[c]) / float64(k)
			}
		}
	}
	if k >= 2 {
		trend = (means[k-1] - means[0]) / float64((k-1)*p)
	}
	// The first period's mean is the level at its middle.
	level = means[0] - trend*float64(p+1)/2
	return level, trend, season
}

// run filters the data with p and returns the scored multi-step error and
// the final level and trend; h.season holds the final seasonal terms.
func (h *hwFitter) run(p hwParams) (loss, level, trend float64) {
	copy(h.season, h.season0)
	level, trend = h.level0, h.trend0
	ds := h.dampSums
	ds[0] = 0
	pk := 1.0
	for k := 1; k < len(ds); k++ {
		pk *= p.phi
		ds[k] = ds[k-1] + pk
	}
	n, per := len(h.y), h.period
	sum, cnt := 0.0, 0
	for t, v := range h.y {
		j := t % per
		s := h.season[j]
		prev := level
		level = p.alpha*(v-s) + (1-p.alpha)*(prev+p.phi*trend)
		trend = p.beta*(level-prev) + (1-p.beta)*p.phi*trend
		h.season[j] = p.gamma*(v-level) + (1-p.gamma)*s
		if t < per-1 || (t-per+1)%h.stride != 0 {
			continue
		}
		for k := 1; k <= h.horizon && t+k < n; k++ {
			if h.obs != nil && !h.obs[t+k] {
				continue
			}
			f := level + ds[k]*trend + h.season[(t+k)%per]
			f = min(max(f, h.lo), h.hi)
			sum += math.Abs(f - h.y[t+k])
			cnt++
		}
	}
	if cnt == 0 {
		return math.Inf(1), level, trend
	}
	return sum / float64(cnt), level, trend
}

// fit chooses the parameters: the best of a grid, refined by Nelder-Mead
// when that finds better.
func (h *hwFitter) fit() hwParams {
	best, bestLoss := hwParams{0.2, 0, 0.1, 0.9}, math.Inf(1)
	for _, a := range hwAlphas {
		for _, b := range hwBetas {
			for _, g := range hwGammas {
				for _, ph := range hwPhis {
					p := hwParams{a, b, g, ph}
					if l, _, _ := h.run(p); l < bestLoss {
						best, bestLoss = p, l
					}
				}
			}
		}
	}
	if math.IsInf(bestLoss, 0) {
		return best
	}
	// Nelder-Mead in unbounded coordinates: logits of alpha, beta, gamma in
	// (0, 1) and of phi in (0.5, 1). (gonum/optimize would pull in
	// golang.org/x/tools, which go.sum does not have.)
	x0 := []float64{logit(best.alpha), logit(best.beta), logit(best.gamma), logit(2*best.phi - 1)}
	x, l := nelderMead(func(x []float64) float64 {
		l, _, _ := h.run(hwFromX(x))
		return l
	}, x0, 0.5, 150)
	if l < bestLoss {
		return hwFromX(x)
	}
	return best
}

func hwFromX(x []float64) hwParams {
	return hwParams{sigmoid(x[0]), sigmoid(x[1]), sigmoid(x[2]), 0.5 + 0.5*sigmoid(x[3])}
}

func sigmoid(x float64) float64 { return 1 / (1 + math.Exp(-x)) }

func logit(p float64) float64 {
	p = min(max(p, 1e-4), 1-1e-4)
	return math.Log(p / (1 - p))
}

// model runs the filter with p over all of h.y and returns the fitted
// state as a Forecast ending at the last sample.
func (h *hwFitter) model(p hwParams) *Forecast {
	_, level, trend := h.run(p)
	n, per := len(h.y), h.period
	season := make([]float64, per)
	for i := range season {
		season[i] = h.season[(n+i)%per]
	}
	return &Forecast{
		Method: MethodHoltWinters,
		Period: per,
		Alpha:  p.alpha, Beta: p.beta, Gamma: p.gamma, Phi: p.phi,
		Level: level, Trend: trend, Season: season,
	}
}
