package model

import (
	"fmt"
	"math"
	"time"
)

// HoursLeft runs a battery forward from pct (0..100) with capacityWh: each
// step adds (solarW[i]-drawW[i])*step, clamped at 100%. It returns the hours
// until the charge falls to reservePct, or len*step hours and false when it
// never does within the forecast. The crossing is interpolated within its
// step. The forecast is as long as the shorter of solarW and drawW; a
// non-finite power counts as 0. A battery already at or below its reserve,
// or one with no capacity, has 0 hours left.
func HoursLeft(pct, reservePct, capacityWh float64, solarW, drawW []float64, step time.Duration) (hours float64, depletes bool) {
	n := min(len(solarW), len(drawW))
	return drain(pct, reservePct, capacityWh, n, step, func(i int) float64 {
		return orZero(solarW[i]) - orZero(drawW[i])
	})
}

// drain is HoursLeft over n steps of net power netW(i).
func drain(pct, reservePct, capacityWh float64, n int, step time.Duration, netW func(i int) float64) (float64, bool) {
	if !(capacityWh > 0) || math.IsInf(capacityWh, 0) || !(pct > reservePct) {
		return 0, true
	}
	h := step.Hours()
	if !(h > 0) {
		return 0, false
	}
	e := min(pct, 100) / 100 * capacityWh // Wh in the battery
	floor := reservePct / 100 * capacityWh
	full := capacityWh
	for i := range n {
		d := netW(i) * h
		if e+d <= floor {
			return (float64(i) + (e-floor)/-d) * h, true
		}
		e = min(e+d, full)
	}
	return float64(n) * h, false
}

func orZero(v float64) float64 {
	if finite(v) {
		return v
	}
	return 0
}

// FitCapacity estimates a battery's capacity (Wh) from a node's consecutive
// samples, taken step apart: Δpct·capacity/100 ≈ (solar-draw)·Δt, where the
// power is the one sampled at the start of the step (as HoursLeft counts
// it). It is least squares through the origin. Steps that start or end at
// 0 or 100% are left out (the battery was clamped, not charging), and so
// are steps with a non-finite sample. Fewer than 3 usable steps is
// ErrTooLittleData; a charge that never moves, a correlation between
// energy and charge below 0.5, or a non-positive capacity is ErrBadSeries.
func FitCapacity(pct, solarW, drawW []float64, step time.Duration) (capacityWh float64, err error) {
	if len(solarW) != len(pct) || len(drawW) != len(pct) {
		return 0, fmt.Errorf("%w: %d charge, %d solar and %d draw samples", ErrBadSeries, len(pct), len(solarW), len(drawW))
	}
	h := step.Hours()
	if !(h > 0) {
		return 0, fmt.Errorf("%w: step %v is not positive", ErrBadSeries, step)
	}
	var sxy, sxx, syy float64 // x: Δpct/100, y: energy in Wh
	used := 0
	for i := 1; i < len(pct); i++ {
		a, b := pct[i-1], pct[i]
		s, d := solarW[i-1], drawW[i-1]
		if !finite(a) || !finite(b) || !finite(s) || !finite(d) || a <= 0 || a >= 100 || b <= 0 || b >= 100 {
			continue
		}
		x, y := (b-a)/100, (s-d)*h
		sxy += x * y
		sxx += x * x
		syy += y * y
		used++
	}
	if used < 3 {
		return 0, fmt.Errorf("%w: %d usable steps (charge strictly between 0 and 100%%), need 3", ErrTooLittleData, used)
	}
	if sxx == 0 || syy == 0 {
		return 0, fmt.Errorf("%w: over %d steps the charge or the net power never changes", ErrBadSeries, used)
	}
	if r := sxy / math.Sqrt(sxx*syy); r < 0.5 {
		return 0, fmt.Errorf("%w: charge and net energy barely relate over %d steps (r=%s, need 0.5)", ErrBadSeries, used, num(r))
	}
	capacityWh = sxy / sxx
	if !(capacityWh > 0) || math.IsInf(capacityWh, 0) {
		return 0, fmt.Errorf("%w: capacity estimate %s Wh is not positive", ErrBadSeries, num(capacityWh))
	}
	return capacityWh, nil
}
