package model

import (
	"cmp"
	"fmt"
	"math"
	"slices"

	"gonum.org/v1/gonum/mat"
)

// Linear is a ridge regression on standardised features, the performance
// model of cells on nodes.
//
// Why ridge regression and not a tree ensemble, which would fit the
// non-linear corners of latency better: the reference architecture asks for
// models that are lightweight and explainable, and a linear model is both
// exactly. Its prediction is the training mean plus one additive effect per
// feature, so the console can say "+38 ms because the node is at 90% load"
// and the numbers add up to the figure the Planner used, with no SHAP-style
// approximation; it trains on thousands of rows in milliseconds on one CPU
// core, so the console can retrain on every new batch of telemetry; and it
// predicts with one dot product, cheap enough for the Planner to ask once
// per feasible node. The non-linearity that matters most, latency exploding
// as a node saturates, enters as the node.queue feature.
//
// The intercept is not penalised: features are centred, so it is the
// training mean of Y (Base). A feature that was constant in training has
// Scale 0 and coefficient 0.
type Linear struct {
	Features    []string  `json:"features"`
	Means       []float64 `json:"means"`  // of each feature in training
	Scales      []float64 `json:"scales"` // standard deviation; 0 for a constant feature
	Coefs       []float64 `json:"coefs"`  // per standardised feature
	Base        float64   `json:"base"`   // training mean of Y
	Lambda      float64   `json:"lambda"` // ridge penalty on the standardised scale
	NonNegative bool      `json:"non_negative,omitempty"`
	Rows        int       `json:"rows"` // trained on
}

// Contribution is one feature's share of a prediction.
type Contribution struct {
	Feature string  `json:"feature"`
	Value   float64 `json:"value"`  // the feature's raw value
	Effect  float64 `json:"effect"` // what it adds to the base
}

// ClampFeature names the contribution Predict appends when NonNegative
// raises a negative prediction to 0.
const ClampFeature = "clamp.non_negative"

// Predict returns the prediction for x, the base (training mean of Y), and
// each feature's effect sorted by |Effect|, largest first. y is base plus
// the effects added in the order returned, so summing them that way gives
// y bit for bit. When NonNegative lifts a negative sum to 0, one more
// contribution, ClampFeature, is appended last (out of the sort order) with
// Value the unclamped sum and Effect its negation. Missing trailing values
// of x count as the training mean (no effect); extra ones are ignored. A
// non-finite x, or a model whose slices differ in length, gives a NaN y.
func (m *Linear) Predict(x []float64) (y, base float64, contribs []Contribution) {
	if !m.consistent() {
		return math.NaN(), m.Base, nil
	}
	contribs = make([]Contribution, len(m.Features), len(m.Features)+1)
	for j, name := range m.Features {
		v := m.Means[j]
		if j < len(x) {
			v = x[j]
		}
		contribs[j] = Contribution{Feature: name, Value: v, Effect: m.effect(j, v)}
	}
	slices.SortStableFunc(contribs, func(a, b Contribution) int {
		return cmp.Compare(math.Abs(b.Effect), math.Abs(a.Effect))
	})
	y = m.Base
	for _, c := range contribs {
		y += c.Effect
	}
	if m.NonNegative && y < 0 {
		contribs = append(contribs, Contribution{Feature: ClampFeature, Value: y, Effect: -y})
		y += -y
	}
	return y, m.Base, contribs
}

// consistent reports whether the per-feature slices agree, which a model
// decoded from a damaged registry entry might not.
func (m *Linear) consistent() bool {
	k := len(m.Features)
	return len(m.Means) == k && len(m.Scales) == k && len(m.Coefs) == k
}

// Value is the prediction for x without the explanation: no allocation, the
// same figure as Predict up to rounding in the last bits.
func (m *Linear) Value(x []float64) float64 {
	if !m.consistent() {
		return math.NaN()
	}
	y := m.Base
	for j := range m.Features {
		if j < len(x) {
			y += m.effect(j, x[j])
		}
	}
	if m.NonNegative && y < 0 {
		return 0
	}
	return y
}

func (m *Linear) effect(j int, v float64) float64 {
	if m.Scales[j] == 0 {
		if !finite(v) {
			return math.NaN()
		}
		return 0
	}
	return m.Coefs[j] * (v - m.Means[j]) / m.Scales[j]
}

// LinearOptions configure TrainLinear.
type LinearOptions struct {
	Holdout     float64   // fraction of rows held out at the end (default 0.2)
	Lambdas     []float64 // ridge penalties to choose from on a validation split inside training (default 1e-4 … 10)
	MinRows     int       // usable rows required (default 30)
	MAPEFloor   float64   // |actual| below this is left out of MAPE (default: 1% of max |Y|)
	NonNegative bool      // clamp predictions at 0
}

// DefaultLambdas are the ridge penalties TrainLinear tries by default.
var DefaultLambdas = []float64{1e-4, 1e-3, 1e-2, 0.1, 1, 10}

// RegressionResult is a trained regression and the evidence for serving it.
type RegressionResult struct {
	Model        *Linear `json:"model"`
	Metrics      Metrics `json:"metrics"`
	Baseline     Metrics `json:"baseline"` // the training mean
	BaselineName string  `json:"baseline_name"`
	Ready        bool    `json:"ready"` // MAE strictly below the baseline's
	Reason       string  `json:"reason"`
}

// TrainLinear fits a ridge regression to t. Rows with a non-finite value
// are dropped (more than half of them: ErrBadSeries). The last Holdout of
// the rows, in time order, are held out: the penalty is chosen on the last
// fifth of the rest, the model refit on the rest is scored on the holdout
// against predicting the training mean, and the returned model is refit on
// all rows with the chosen penalty.
func TrainLinear(t Table, opt LinearOptions) (*RegressionResult, error) {
	if opt.Holdout <= 0 || opt.Holdout >= 1 || math.IsNaN(opt.Holdout) {
		opt.Holdout = 0.2
	}
	if len(opt.Lambdas) == 0 {
		opt.Lambdas = DefaultLambdas
	}
	for _, l := range opt.Lambdas {
		if !(l >= 0) || math.IsInf(l, 0) {
			return nil, fmt.Errorf("%w: lambda %v", ErrBadOptions, l)
		}
	}
	if opt.MinRows <= 0 {
		opt.MinRows = 30
	}
	opt.MinRows = max(opt.MinRows, 4) // a fit, a validation and a holdout row at least
	if len(t.X) != len(t.Y) {
		return nil, fmt.Errorf("%w: %d rows of features but %d targets", ErrBadSeries, len(t.X), len(t.Y))
	}
	p := len(t.Features)
	var xs [][]float64
	var ys []float64
	for i, row := range t.X {
		if len(row) != p {
			return nil, fmt.Errorf("%w: row %d has %d values for %d features", ErrBadSeries, i, len(row), p)
		}
		if finite(t.Y[i]) && !slices.ContainsFunc(row, func(v float64) bool { return !finite(v) }) {
			xs, ys = append(xs, row), append(ys, t.Y[i])
		}
	}
	if dropped := len(t.X) - len(xs); dropped > 0 && 2*dropped > len(t.X) {
		return nil, fmt.Errorf("%w: %d of %d rows have a NaN or infinite value", ErrBadSeries, dropped, len(t.X))
	}
	n := len(xs)
	if n < opt.MinRows {
		return nil, fmt.Errorf("%w: %d usable rows, need %d", ErrTooLittleData, n, opt.MinRows)
	}
	floor := opt.MAPEFloor
	if floor <= 0 {
		floor = defaultFloor(ys)
	}

	nHold := max(1, int(math.Round(opt.Holdout*float64(n))))
	nTrain := n - nHold
	nVal := max(1, int(math.Round(0.2*float64(nTrain))))
	nFit := nTrain - nVal
	if nFit < 2 {
		return nil, fmt.Errorf("%w: %d usable rows leave %d to fit", ErrTooLittleData, n, nFit)
	}

	// The penalty: best validation MAE, the larger on a tie (simpler).
	lambdas := slices.Clone(opt.Lambdas)
	slices.Sort(lambdas)
	g := newGram(xs[:nFit], ys[:nFit])
	lambda, bestMAE := lambdas[0], math.Inf(1)
	for _, l := range lambdas {
		m := g.solve(t.Features, l, opt.NonNegative)
		if e := predictAll(m, xs[nFit:nTrain], ys[nFit:nTrain], floor).MAE; e <= bestMAE {
			lambda, bestMAE = l, e
		}
	}

	m := newGram(xs[:nTrain], ys[:nTrain]).solve(t.Features, lambda, opt.NonNegative)
	res := &RegressionResult{
		Metrics:      predictAll(m, xs[nTrain:], ys[nTrain:], floor),
		BaselineName: "training mean",
	}
	mean := m.Base
	if opt.NonNegative {
		mean = max(mean, 0)
	}
	pred := make([]float64, nHold)
	for i := range pred {
		pred[i] = mean
	}
	res.Baseline = metrics(pred, ys[nTrain:], nil, floor)
	res.Model = newGram(xs, ys).solve(t.Features, lambda, opt.NonNegative)
	if !res.Model.finite() || !finite(res.Metrics.MAE) || !finite(res.Baseline.MAE) {
		// Only values near the float64 limit get here; JSON cannot carry
		// the Inf they overflow to.
		return nil, fmt.Errorf("%w: values too large to fit", ErrBadSeries)
	}
	res.Ready = res.Metrics.MAE < res.Baseline.MAE
	verb := "beats"
	if !res.Ready {
		verb = "is not below"
	}
	res.Reason = fmt.Sprintf("ridge MAE %s%s %s the %s (MAE %s%s) on %d held-out rows (λ=%s, trained on %d rows, %d dropped)",
		num(res.Metrics.MAE), mapeText(res.Metrics), verb, res.BaselineName, num(res.Baseline.MAE), mapeText(res.Baseline),
		nHold, num(res.Model.Lambda), nTrain, len(t.X)-n)
	return res, nil
}

func (m *Linear) finite() bool {
	for _, vs := range [][]float64{m.Means, m.Scales, m.Coefs, {m.Base, m.Lambda}} {
		if slices.ContainsFunc(vs, func(v float64) bool { return !finite(v) }) {
			return false
		}
	}
	return true
}

func predictAll(m *Linear, xs [][]float64, ys []float64, floor float64) Metrics {
	pred := make([]float64, len(xs))
	for i, x := range xs {
		pred[i] = m.Value(x)
	}
	return metrics(pred, ys, nil, floor)
}

// gram holds the standardised normal equations of a data set, so that
// several penalties can be solved for at the cost of one pass over it.
type gram struct {
	n             int
	means, scales []float64
	active        []int // features that vary
	ata           *mat.SymDense
	atb           *mat.VecDense
	ymean         float64
}

func newGram(xs [][]float64, ys []float64) *gram {
	n, p := len(xs), 0
	if n > 0 {
		p = len(xs[0])
	}
	g := &gram{n: n, means: make([]float64, p), scales: make([]float64, p)}
	for _, y := range ys {
		g.ymean += y
	}
	g.ymean /= float64(n)
	for _, row := range xs {
		for j, v := range row {
			g.means[j] += v
		}
	}
	for j := range g.means {
		g.means[j] /= float64(n)
	}
	for _, row := range xs {
		for j, v := range row {
			d := v - g.means[j]
			g.scales[j] += d * d / float64(n)
		}
	}
	for j := range g.scales {
		g.scales[j] = math.Sqrt(g.scales[j])
		// Below this a column is the mean plus rounding: constant.
		if !finite(g.scales[j]) || g.scales[j] <= 1e-10*max(1, math.Abs(g.means[j])) {
			g.scales[j] = 0
			continue
		}
		g.active = append(g.active, j)
	}
	k := len(g.active)
	if k == 0 {
		return g
	}
	z := mat.NewDense(n, k, nil)
	yc := mat.NewVecDense(n, nil)
	for i, row := range xs {
		for c, j := range g.active {
			z.Set(i, c, (row[j]-g.means[j])/g.scales[j])
		}
		yc.SetVec(i, ys[i]-g.ymean)
	}
	g.ata = mat.NewSymDense(k, nil)
	g.ata.SymOuterK(1/float64(n), z.T())
	g.atb = mat.NewVecDense(k, nil)
	g.atb.MulVec(z.T(), yc)
	g.atb.ScaleVec(1/float64(n), g.atb)
	return g
}

// solve minimises mean squared error + lambda·|coefs|² on the standardised
// features. A penalty too small for the data's collinearity is raised
// tenfold until the system is positive definite; Lambda records the one
// used.
func (g *gram) solve(features []string, lambda float64, nonNeg bool) *Linear {
	m := &Linear{
		Features:    slices.Clone(features),
		Means:       slices.Clone(g.means),
		Scales:      slices.Clone(g.scales),
		Coefs:       make([]float64, len(g.means)),
		Base:        g.ymean,
		Lambda:      lambda,
		NonNegative: nonNeg,
		Rows:        g.n,
	}
	k := len(g.active)
	if k == 0 {
		return m
	}
	a := mat.NewSymDense(k, nil)
	var chol mat.Cholesky
	beta := mat.NewVecDense(k, nil)
	solved := false
	for l, try := lambda, 0; try < 20 && !solved; l, try = max(10*l, 1e-8), try+1 {
		a.CopySym(g.ata)
		for i := range k {
			a.SetSym(i, i, a.At(i, i)+l)
		}
		if chol.Factorize(a) && chol.SolveVecTo(beta, g.atb) == nil {
			m.Lambda, solved = l, true
		}
	}
	if !solved {
		return m // the training mean: better than a wrong fit
	}
	for c, j := range g.active {
		if v := beta.AtVec(c); finite(v) {
			m.Coefs[j] = v
		}
	}
	return m
}
