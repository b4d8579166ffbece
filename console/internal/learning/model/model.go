// Package model is the numeric core of the learning plane: seasonal
// forecasts of solar power, load and battery charge, a linear performance
// model of cells on nodes, battery arithmetic, and the Predictor the Planner
// asks. It holds no state beyond the models it returns, which encode to JSON
// for the registry.
package model

import (
	"errors"
	"fmt"
	"math"
	"strconv"
)

// Errors a caller can tell apart with errors.Is; each is returned wrapped
// with the numbers behind it.
var (
	// ErrTooLittleData: the input is sound but too short to train and
	// evaluate a model.
	ErrTooLittleData = errors.New("too little data")
	// ErrBadSeries: the input cannot be trained on (non-finite values, too
	// many gaps, no relation, mismatched lengths).
	ErrBadSeries = errors.New("bad series")
	// ErrBadOptions: the options are invalid, e.g. a forecast without a
	// period. This is the caller's mistake, not the data's.
	ErrBadOptions = errors.New("bad options")
)

// Metrics is how well a model did on held-out data.
type Metrics struct {
	MAE float64 `json:"mae"`
	// MAPE is in percent, over the points whose |actual| is at least the
	// floor; nil when there are none.
	MAPE *float64 `json:"mape,omitempty"`
	N    int      `json:"n"` // points evaluated
}

// metrics scores pred against actual. Points where use is false (a gap in
// the data) are left out; use may be nil. Non-finite predictions never
// reach here (models clamp and are finite by construction).
func metrics(pred, actual []float64, use []bool, floor float64) Metrics {
	var m Metrics
	var sumAbs, sumPct float64
	nPct := 0
	for i, a := range actual {
		if use != nil && !use[i] {
			continue
		}
		e := math.Abs(pred[i] - a)
		sumAbs += e
		m.N++
		if aa := math.Abs(a); aa >= floor && aa > 0 {
			sumPct += e / aa
			nPct++
		}
	}
	if m.N > 0 {
		m.MAE = sumAbs / float64(m.N)
	}
	if nPct > 0 {
		v := 100 * sumPct / float64(nPct)
		m.MAPE = &v
	}
	return m
}

// defaultFloor is the MAPE floor when the caller sets none: 1% of the
// largest |value|, which leaves night-time solar and idle CPU out of a
// percentage they would blow up.
func defaultFloor(vs []float64) float64 {
	m := 0.0
	for _, v := range vs {
		if a := math.Abs(v); a > m && !math.IsInf(a, 0) {
			m = a
		}
	}
	return m / 100
}

func finite(v float64) bool { return !math.IsNaN(v) && !math.IsInf(v, 0) }

// num formats a figure for a Reason: four significant digits are what a
// person compares.
func num(v float64) string { return strconv.FormatFloat(v, 'g', 4, 64) }

func mapeText(m Metrics) string {
	if m.MAPE == nil {
		return ""
	}
	return fmt.Sprintf(", MAPE %s%%", num(*m.MAPE))
}
