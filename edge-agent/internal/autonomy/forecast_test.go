package autonomy

import (
	"encoding/json"
	"math"
	"testing"
	"time"
)

var day0 = time.Date(2026, 6, 1, 0, 0, 0, 0, time.UTC)

// node simulates a solar node: a battery of known capacity, a constant
// draw, and a sun that follows a sine between 06:00 and 18:00 UTC. Its
// gauge reports whole percent, as sysfs capacity does.
type node struct {
	capWh, chargeWh, drawW, peakW float64
	sky                           func(t time.Time) float64 // 1: clear
}

func (n *node) solar(t time.Time) float64 {
	h := float64(t.UTC().Hour()) + float64(t.UTC().Minute())/60
	s := n.peakW * math.Max(0, math.Sin(math.Pi*(h-6)/12))
	if n.sky != nil {
		s *= n.sky(t)
	}
	return s
}

func (n *node) reading(t time.Time) Reading {
	pct := math.Floor(n.chargeWh / n.capWh * 100)
	solar := n.solar(t)
	charging := solar > n.drawW
	return Reading{Time: t, DrawW: n.drawW, BatteryPct: &pct, SolarW: &solar, Charging: &charging}
}

// run feeds the forecaster a reading every step from `from` to `to`,
// moving the battery in between.
func (n *node) run(f *Forecaster, from, to time.Time, step time.Duration) {
	for t := from; t.Before(to); t = t.Add(step) {
		f.Observe(n.reading(t))
		net := n.solar(t.Add(step/2)) - n.drawW
		n.chargeWh = math.Min(math.Max(n.chargeWh+net*step.Hours(), 0), n.capWh)
	}
}

// at observes one reading with the battery at pct, as the gauge would
// report it now.
func at(f *Forecaster, t time.Time, pct, drawW, solarW float64) {
	f.Observe(Reading{Time: t, DrawW: drawW, BatteryPct: &pct, SolarW: &solarW})
}

func near(got, want, tol float64) bool { return math.Abs(got-want) <= tol }

// A node learns its battery's capacity, the sun's profile and its draw in
// three days, and then forecasts the night exactly enough.
func TestForecastSyntheticDays(t *testing.T) {
	n := &node{capWh: 400, chargeWh: 200, drawW: 25, peakW: 100}
	f := New(Config{}, State{})
	n.run(f, day0, day0.Add(3*24*time.Hour+20*time.Hour), time.Minute)
	now := day0.Add(3*24*time.Hour + 20*time.Hour)

	fc := f.Forecast(now)
	if fc.CapacitySource != CapacityLearned || !near(fc.CapacityWh, 400, 40) {
		t.Fatalf("capacity %.0f Wh (%s), want ≈ 400 learned", fc.CapacityWh, fc.CapacitySource)
	}
	if !near(fc.DrawW, 25, 0.01) {
		t.Fatalf("draw %.2f W, want 25", fc.DrawW)
	}
	st := f.State()
	for _, h := range []int{2, 9, 12, 15} {
		// The true mean of the hour h..h+1.
		var want float64
		for m := 0; m < 60; m++ {
			want += n.solar(day0.Add(time.Duration(h)*time.Hour+time.Duration(m)*time.Minute)) / 60
		}
		if b := st.Solar[h]; b.Hours < 2 || !near(b.W, want, 1+0.03*want) {
			t.Errorf("profile at %02d:00: %.1f W over %d hours, want %.1f", h, b.W, b.Hours, want)
		}
	}

	// At 20:00 the gauge says 40%: 30 points above the reserve, 120 Wh, at
	// 25 W and no sun until 06:00: 4.8 h.
	at(f, now.Add(time.Minute), 40, 25, 0)
	if got := f.HoursLeft(now.Add(time.Minute)); !near(got, 4.8, 0.5) {
		t.Errorf("hours left at 20:00 with 40%%: %.2f, want ≈ 4.8", got)
	}
	// At 03:00 at 30%: 80 Wh; the 3 h to sunrise take 75 Wh, and the
	// remaining 5 Wh do not see the weak sun of 06:00-07:00 (≈ 13 W, short
	// of the draw) through: 3.4 h.
	night := day0.Add(4*24*time.Hour + 3*time.Hour)
	at(f, night, 30, 25, 0)
	if got := f.HoursLeft(night); !near(got, 3.4, 0.15) {
		t.Errorf("hours left at 03:00 with 30%%: %.2f, want ≈ 3.4", got)
	}
	// At 35% it bridges that hour; then the sun outgrows the draw and
	// charges the battery: it lasts.
	at(f, night.Add(time.Minute), 35, 25, 0)
	if got := f.HoursLeft(night.Add(time.Minute)); !math.IsInf(got, 1) {
		t.Errorf("hours left at 03:00 with 35%%: %.2f, want it to last", got)
	}
	// At 04:00 at 15%: 20 Wh, 0.8 h, before the sun rises.
	dawn := night.Add(time.Hour)
	at(f, dawn, 15, 25, 0)
	if got := f.HoursLeft(dawn); !near(got, 0.8, 0.1) {
		t.Errorf("hours left at 04:00 with 15%%: %.2f, want ≈ 0.8", got)
	}
	// At the reserve, nothing is left.
	at(f, dawn.Add(time.Minute), 10, 25, 0)
	if got := f.HoursLeft(dawn.Add(time.Minute)); got != 0 {
		t.Errorf("hours left at the reserve: %v, want 0", got)
	}
}

// A cloudy morning lowers the afternoon's expected sun: the same battery
// that lasts on a sunny day does not on a cloudy one.
func TestForecastCloudyDay(t *testing.T) {
	const days = 3
	morning := day0.Add(days*24*time.Hour + 11*time.Hour)
	learn := func(sky func(time.Time) float64) *Forecaster {
		n := &node{capWh: 400, chargeWh: 200, drawW: 25, peakW: 100}
		f := New(Config{}, State{})
		n.run(f, day0, day0.Add(days*24*time.Hour), time.Minute)
		n.sky = sky
		n.run(f, day0.Add(days*24*time.Hour), morning, time.Minute)
		at(f, morning, 20, 25, n.solar(morning))
		return f
	}
	sunny := learn(nil)
	cloudy := learn(func(t time.Time) float64 { return 0.2 })

	s, c := sunny.HoursLeft(morning), cloudy.HoursLeft(morning)
	if !math.IsInf(s, 1) {
		t.Errorf("sunny 11:00 at 20%%: %.1f h left, want it to last", s)
	}
	if math.IsInf(c, 1) || c > 12 {
		t.Errorf("cloudy 11:00 at 20%%: %.1f h left, want it to run out tonight", c)
	}
	if st := cloudy.State(); st.Sky > 0.3 {
		t.Errorf("sky factor %.2f after a cloudy morning, want ≈ 0.2", st.Sky)
	}
}

// A node on the grid never runs out: no battery at all, or a battery that
// charges with no solar input measured (a UPS on mains).
func TestForecastGrid(t *testing.T) {
	f := New(Config{}, State{})
	for i := range 10 {
		f.Observe(Reading{Time: day0.Add(time.Duration(i) * time.Minute), DrawW: 40})
	}
	if fc := f.Forecast(day0.Add(10 * time.Minute)); !math.IsInf(fc.HoursLeft, 1) || fc.Battery {
		t.Fatalf("no battery: %+v, want it to last", fc)
	}
	yes := true
	for i := range 10 {
		pct := 100.0 - float64(i) // even a gauge that drifts
		f.Observe(Reading{Time: day0.Add(time.Duration(20+i) * time.Minute), DrawW: 40, BatteryPct: &pct, Charging: &yes})
	}
	if fc := f.Forecast(day0.Add(30 * time.Minute)); !math.IsInf(fc.HoursLeft, 1) || !fc.OnMains {
		t.Fatalf("UPS on mains: %+v, want it to last", fc)
	}
}

// Until the profile knows an hour: 0 at night, the latest reading by day
// (by the node's longitude), and without a longitude the latest reading for
// a couple of hours only. Until the capacity is learned, a night's worth of
// the draw, flagged.
func TestForecastUnlearned(t *testing.T) {
	noon := day0.Add(12 * time.Hour)
	lon := 0.0
	f := New(Config{Longitude: &lon}, State{})
	at(f, noon, 50, 10, 30)
	fc := f.Forecast(noon)
	if fc.CapacitySource != CapacityDefault || fc.CapacityWh != 120 {
		t.Fatalf("capacity %v (%s), want the default 12 h × 10 W", fc.CapacityWh, fc.CapacitySource)
	}
	if got := f.solarAt(noon, noon.Add(3*time.Hour)); got != 30 {
		t.Errorf("15:00 by day: %v W, want the latest 30", got)
	}
	if got := f.solarAt(noon, noon.Add(10*time.Hour)); got != 0 {
		t.Errorf("22:00 at night: %v W, want 0", got)
	}
	// 120° east: 22:00 UTC is 06:00 solar time, sunrise.
	east := 120.0
	fe := New(Config{Longitude: &east}, f.State())
	if got := fe.solarAt(noon, noon.Add(10*time.Hour)); got != 30 {
		t.Errorf("22:00 UTC at 120°E: %v W, want the latest 30 (morning there)", got)
	}
	fn := New(Config{}, f.State())
	if got := fn.solarAt(noon, noon.Add(time.Hour)); got != 30 {
		t.Errorf("no longitude, an hour ahead: %v W, want the latest 30", got)
	}
	if got := fn.solarAt(noon, noon.Add(3*time.Hour)); got != 0 {
		t.Errorf("no longitude, three hours ahead: %v W, want 0", got)
	}
	// The operator's capacity wins.
	fc2 := New(Config{CapacityWh: 500, ReservePct: 20}, f.State()).Forecast(noon)
	if fc2.CapacityWh != 500 || fc2.CapacitySource != CapacityConfigured || fc2.ReservePct != 20 {
		t.Errorf("configured: %+v", fc2)
	}
	// A node without a solar input expects none.
	dark := New(Config{Longitude: &lon}, State{})
	at(dark, noon, 50, 10, 0)
	dark.st.SolarAt = time.Time{}
	if got := dark.solarAt(noon, noon.Add(time.Hour)); got != 0 {
		t.Errorf("no solar input: %v W expected", got)
	}
}

// A capacity window is not learned from a gauge that jumps (recalibrates)
// or from a full battery that throws the surplus away.
func TestCapacityIgnoresImplausibleWindows(t *testing.T) {
	f := New(Config{}, State{})
	t0 := day0.Add(20 * time.Hour)
	at(f, t0, 80, 20, 0)
	at(f, t0.Add(time.Second), 12, 20, 0) // 68 points in a second
	at(f, t0.Add(2*time.Second), 100, 20, 0)
	for i := 1; i < 600; i++ { // full, with surplus sun
		at(f, t0.Add(time.Duration(i)*time.Minute), 100, 20, 200)
	}
	at(f, t0.Add(601*time.Minute), 99, 20, 0)
	if st := f.State(); st.Windows != 0 || st.SXX != 0 {
		t.Fatalf("learned %d windows (sxx %v) from a jumping gauge and a full battery", st.Windows, st.SXX)
	}
}

// The state survives a restart: encoded, decoded and resumed, the forecast
// is the same.
func TestStateRoundTrip(t *testing.T) {
	n := &node{capWh: 400, chargeWh: 200, drawW: 25, peakW: 100}
	f := New(Config{}, State{})
	n.run(f, day0, day0.Add(50*time.Hour), time.Minute)
	b, err := json.Marshal(f.State())
	if err != nil {
		t.Fatal(err)
	}
	if len(b) > 8<<10 {
		t.Errorf("state is %d bytes; keep it small", len(b))
	}
	var st State
	if err := json.Unmarshal(b, &st); err != nil {
		t.Fatal(err)
	}
	g := New(Config{}, st)
	now := day0.Add(50 * time.Hour)
	if a, b := f.Forecast(now), g.Forecast(now); a != b {
		t.Fatalf("forecast before %+v, after a restart %+v", a, b)
	}
	if New(Config{}, State{Version: 99, DrawW: 5}).State().DrawW != 0 {
		t.Fatal("a state of another version was not discarded")
	}
}
