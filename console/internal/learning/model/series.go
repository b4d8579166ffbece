package model

import (
	"fmt"
	"math"
	"time"
)

// Series is a regularly sampled time series.
type Series struct {
	Start  time.Time
	Step   time.Duration
	Values []float64 // NaN marks a missing sample
}

// Time is the time of sample i.
func (s Series) Time(i int) time.Time { return s.Start.Add(time.Duration(i) * s.Step) }

// End is the time of the last sample; Start for an empty series.
func (s Series) End() time.Time {
	if len(s.Values) == 0 {
		return s.Start
	}
	return s.Time(len(s.Values) - 1)
}

// Slice is samples [i, j) with Start moved to sample i.
func (s Series) Slice(i, j int) Series {
	return Series{Start: s.Time(i), Step: s.Step, Values: s.Values[i:j]}
}

// Resample averages the samples into buckets of step (a multiple of
// s.Step), ignoring missing ones; a bucket with none is NaN. Telemetry
// arrives every few minutes but the Planner looks hours ahead: an hourly
// mean is less noisy to forecast and 12 times cheaper.
func (s Series) Resample(step time.Duration) (Series, error) {
	if s.Step <= 0 || step <= 0 || step%s.Step != 0 {
		return Series{}, fmt.Errorf("%w: resample step %v is not a positive multiple of %v", ErrBadOptions, step, s.Step)
	}
	k := int(step / s.Step)
	out := Series{Start: s.Start, Step: step, Values: make([]float64, 0, (len(s.Values)+k-1)/k)}
	for i := 0; i < len(s.Values); i += k {
		sum, n := 0.0, 0
		for _, v := range s.Values[i:min(i+k, len(s.Values))] {
			if !math.IsNaN(v) {
				sum += v
				n++
			}
		}
		if n == 0 {
			out.Values = append(out.Values, math.NaN())
		} else {
			out.Values = append(out.Values, sum/float64(n))
		}
	}
	return out, nil
}

// fill checks a series and fills its gaps: linearly between the samples
// either side, and with the nearest sample at either end. observed reports
// which samples were measured, so that accuracy is only ever scored on real
// data. More than maxGap of the samples missing, or any infinite sample, is
// ErrBadSeries.
func fill(s Series, maxGap float64) (vals []float64, observed []bool, err error) {
	n := len(s.Values)
	if s.Step <= 0 {
		return nil, nil, fmt.Errorf("%w: step %v is not positive", ErrBadSeries, s.Step)
	}
	if n == 0 {
		return nil, nil, fmt.Errorf("%w: no samples", ErrTooLittleData)
	}
	vals = make([]float64, n)
	observed = make([]bool, n)
	missing := 0
	for i, v := range s.Values {
		switch {
		case math.IsInf(v, 0):
			return nil, nil, fmt.Errorf("%w: sample %d (%s) is %v", ErrBadSeries, i, s.Time(i).Format(time.RFC3339), v)
		case math.IsNaN(v):
			missing++
		default:
			observed[i] = true
		}
		vals[i] = v
	}
	if missing == n {
		return nil, nil, fmt.Errorf("%w: all %d samples are missing", ErrBadSeries, n)
	}
	if frac := float64(missing) / float64(n); frac > maxGap {
		return nil, nil, fmt.Errorf("%w: %d of %d samples missing (%.1f%%), more than the %.1f%% allowed",
			ErrBadSeries, missing, n, 100*frac, 100*maxGap)
	}
	prev := -1 // last observed index
	for i := range n {
		if !observed[i] {
			continue
		}
		switch {
		case prev == -1:
			for j := range i {
				vals[j] = vals[i]
			}
		case i-prev > 1:
			a, b := vals[prev], vals[i]
			for j := prev + 1; j < i; j++ {
				f := float64(j-prev) / float64(i-prev)
				vals[j] = a + f*(b-a)
			}
		}
		prev = i
	}
	for j := prev + 1; j < n; j++ {
		vals[j] = vals[prev]
	}
	return vals, observed, nil
}
