// Package autonomy forecasts a green node's energy on the node itself, so
// that a node cut off from the console can tell how long its battery will
// last and act on it. It is pure: readings and the time come in, a forecast
// goes out; the agent persists its State and applies the policy.
package autonomy

import (
	"math"
	"time"

	"github.com/cloudskin/cloudskin/shared/protocol"
)

// Window is how far HoursLeft runs the battery forward. A battery that
// lasts it is reported as lasting (+Inf): beyond a day the solar profile
// says little, and the console's horizon is hours, not days.
const Window = 24 * time.Hour

// DefaultReservePct is the charge the forecast runs the battery down to, not
// to zero: below it a battery's voltage sags and the board may brown out, and
// a node alone has nobody to move its cells off in time.
const DefaultReservePct = 10

// Bounds of a believable battery, in watt-hours.
const (
	MinCapacityWh = 1
	MaxCapacityWh = 100_000
)

// Sources of the capacity a forecast uses.
const (
	CapacityConfigured = "configured" // Config.CapacityWh
	CapacityLearned    = "learned"    // from how the battery moved against its net power
	CapacityDefault    = "default"    // not learned yet: defaultCapacityHours of the draw
)

const (
	// drawTau is the time constant of the draw's EWMA: long enough to
	// ignore a burst of work, short enough to see a shed cell's saving
	// within the hour.
	drawTau = 15 * time.Minute
	// dayWeight is how much a new day's hour counts in the solar profile's
	// EWMA for that hour: a profile follows the season over a few days.
	dayWeight = 0.3
	// minHourCoverage is how much of an hour must have been read for its
	// mean to enter the profile (an agent started at 10:55 says little
	// about 10:00-11:00).
	minHourCoverage = 30 * time.Minute
	// maxGap: readings further apart are not integrated across (the agent
	// was down, or the node slept).
	maxGap = 15 * time.Minute
	// skyTau and skyFade: how fast the sky factor (today's solar against
	// the profile) follows the readings, and how fast its effect fades with
	// the time ahead: clouds this morning say much about this afternoon, little
	// about tomorrow.
	skyTau  = time.Hour
	skyFade = 12 * time.Hour
	// persistFor is how long a reading stands for the sky when an hour has
	// no profile yet and the node's longitude is unknown.
	persistFor = 2 * time.Hour
	// defaultCapacityHours sizes an unknown battery for one night at the
	// current draw: off-grid systems are rarely smaller, and a guess that
	// scales with the hardware is better than a fixed number of Wh.
	defaultCapacityHours = 12
	// capacityForget weighs older battery windows down, so the estimate
	// follows an ageing battery (≈ 200 windows, two full cycles, of memory).
	capacityForget = 0.995
	// minCapacityEvidence is Σx² the fit needs: five percentage points of
	// movement.
	minCapacityEvidence = 5 * 0.01 * 0.01
	// maxWindowPoints is the largest move of the charge a window may make
	// to count.
	maxWindowPoints = 2
	stateVersion    = 1
)

// Config tunes a Forecaster. Zero values take the defaults.
type Config struct {
	// ReservePct is the charge HoursLeft runs the battery down to
	// (default DefaultReservePct).
	ReservePct float64
	// CapacityWh is the battery's usable capacity when the operator knows
	// it; 0 learns it from the readings.
	CapacityWh float64
	// Longitude (degrees east) tells night from day for the hours the solar
	// profile has not learned yet; nil when unknown.
	Longitude *float64
}

// Reading is one telemetry sample's energy part.
type Reading struct {
	Time       time.Time
	DrawW      float64
	BatteryPct *float64
	Charging   *bool
	SolarW     *float64
}

// ReadingOf takes the energy of a telemetry sample taken at t.
func ReadingOf(t time.Time, e protocol.Energy) Reading {
	return Reading{Time: t, DrawW: e.PowerW, BatteryPct: e.BatteryPct, Charging: e.Charging, SolarW: e.SolarW}
}

// onMains: a battery that charges while no solar input is measured is
// charged by the grid (a UPS); its node lasts as long as the grid does.
func (r Reading) onMains() bool {
	return r.Charging != nil && *r.Charging && r.SolarW == nil
}

// State is what a Forecaster learned; the agent persists it so that a
// restart during an outage does not forget the profile. It encodes to a
// small JSON object (no NaN or Inf).
type State struct {
	Version int `json:"version"`
	// Solar is the solar input profile by hour of day, in UTC: hours of a
	// fixed clock, so that daylight saving does not shift the profile
	// twice a year.
	Solar [24]Bucket `json:"solar"`
	// Hour gathers the solar input of the hour being read.
	Hour HourSum `json:"hour"`
	// DrawW is the EWMA of the node's draw.
	DrawW float64 `json:"draw_w"`
	// SolarW is the latest solar reading, at SolarAt (zero: never read).
	SolarW  float64   `json:"solar_w"`
	SolarAt time.Time `json:"solar_at"`
	// Sky is today's solar input against the profile (1: as usual), at SkyAt.
	Sky   float64   `json:"sky"`
	SkyAt time.Time `json:"sky_at"`
	// SXY and SXX are the sums of the capacity fit through the origin:
	// net energy y (Wh) against the charge fraction x it moved the battery.
	SXY     float64 `json:"sxy"`
	SXX     float64 `json:"sxx"`
	Windows int     `json:"windows"`
	Anchor  Anchor  `json:"anchor"`
	Last    Last    `json:"last"`
}

// Bucket is one hour of day of the solar profile.
type Bucket struct {
	W     float64 `json:"w"`     // EWMA over days of the hour's mean input
	Hours int     `json:"hours"` // hours folded in; 0: not learned
}

// HourSum is the solar energy read so far in the hour starting at Start.
type HourSum struct {
	Start       time.Time `json:"start"`
	WattSeconds float64   `json:"watt_seconds"`
	Seconds     float64   `json:"seconds"`
}

// Anchor opens the battery window being measured: the charge at Time and
// the net energy that flowed since. Aligned is true when it opened at a
// change of the reported charge, so that the window spans whole points.
type Anchor struct {
	Valid   bool      `json:"valid"`
	Aligned bool      `json:"aligned"`
	Time    time.Time `json:"time"`
	Pct     float64   `json:"pct"`
	NetWh   float64   `json:"net_wh"`
}

// Last is the previous reading.
type Last struct {
	Time       time.Time `json:"time"`
	DrawW      float64   `json:"draw_w"`
	SolarW     *float64  `json:"solar_w,omitempty"`
	BatteryPct *float64  `json:"battery_pct,omitempty"`
	OnMains    bool      `json:"on_mains,omitempty"`
}

// Forecaster learns a node's energy from its readings and forecasts how
// long its battery lasts. It is not safe for concurrent use.
type Forecaster struct {
	cfg Config
	st  State
}

// New returns a forecaster that goes on from st (the zero State, or one
// of another version, starts afresh).
func New(cfg Config, st State) *Forecaster {
	if cfg.ReservePct <= 0 || cfg.ReservePct >= 100 {
		cfg.ReservePct = DefaultReservePct
	}
	if st.Version != stateVersion {
		st = State{Version: stateVersion, Sky: 1}
	}
	return &Forecaster{cfg: cfg, st: st}
}

// State returns what the forecaster learned, to persist.
func (f *Forecaster) State() State { return f.st }

// Observe learns from one reading. Readings should come in time order; one
// that does not (the clock stepped back) starts the integration afresh.
func (f *Forecaster) Observe(r Reading) {
	st := &f.st
	prev := st.Last
	st.Last = Last{Time: r.Time, DrawW: r.DrawW, SolarW: r.SolarW, BatteryPct: r.BatteryPct, OnMains: r.onMains()}
	if r.SolarW != nil {
		st.SolarW, st.SolarAt = *r.SolarW, r.Time
	}
	if prev.Time.IsZero() || !r.Time.After(prev.Time) {
		if prev.Time.IsZero() {
			st.DrawW = r.DrawW
		}
		f.openWindow(r, false)
		return
	}
	dt := r.Time.Sub(prev.Time)
	sec := dt.Seconds()
	st.DrawW += (1 - math.Exp(-sec/drawTau.Seconds())) * (r.DrawW - st.DrawW)
	if dt > maxGap {
		f.openWindow(r, false)
		return
	}
	if r.SolarW != nil {
		f.addSolar(r.Time, *r.SolarW, sec)
	}
	f.measureBattery(prev, r, sec)
}

// addSolar adds a reading to its hour, folding the previous hour into the
// profile when a new one starts, and follows the sky.
func (f *Forecaster) addSolar(t time.Time, w, sec float64) {
	st := &f.st
	start := t.UTC().Truncate(time.Hour)
	if !st.Hour.Start.Equal(start) {
		if st.Hour.Seconds >= minHourCoverage.Seconds() {
			mean := st.Hour.WattSeconds / st.Hour.Seconds
			b := &st.Solar[st.Hour.Start.UTC().Hour()]
			if b.Hours == 0 {
				b.W = mean // seeded by the first hour it sees
			} else {
				b.W += dayWeight * (mean - b.W)
			}
			b.Hours++
		}
		st.Hour = HourSum{Start: start}
	}
	st.Hour.WattSeconds += w * sec
	st.Hour.Seconds += sec

	// The sky factor is read only where the profile expects real sun:
	// dawn and dusk ratios are noise.
	b := st.Solar[start.Hour()]
	if b.Hours == 0 || b.W < max(1, 0.1*f.peak()) {
		return
	}
	ratio := min(max(w/b.W, 0), 2)
	sky := f.sky(t, 0)
	st.Sky = sky + (1-math.Exp(-sec/skyTau.Seconds()))*(ratio-sky)
	st.SkyAt = t
}

func (f *Forecaster) peak() float64 {
	var p float64
	for _, b := range f.st.Solar {
		if b.Hours > 0 {
			p = max(p, b.W)
		}
	}
	return p
}

// sky is the sky factor for the time ahead hours after t: today's clearness
// fading back to the usual (1) as the readings age and the time ahead grows.
func (f *Forecaster) sky(t time.Time, ahead float64) float64 {
	if f.st.SkyAt.IsZero() {
		return 1
	}
	age := max(t.Sub(f.st.SkyAt).Hours(), 0)
	return 1 + (f.st.Sky-1)*math.Exp(-(age+ahead)/skyFade.Hours())
}

// openWindow starts a battery window at r.
func (f *Forecaster) openWindow(r Reading, aligned bool) {
	if r.BatteryPct == nil || r.onMains() {
		f.st.Anchor = Anchor{}
		return
	}
	f.st.Anchor = Anchor{Valid: true, Aligned: aligned, Time: r.Time, Pct: *r.BatteryPct}
}

// measureBattery integrates the net power into the battery window and,
// when the charge moved by a point or more, adds the window to the capacity
// fit. A battery gauge reports whole percent: a window closes when the
// reported charge changes, so windows that open and close on a change span
// whole points (the first, opened at an arbitrary moment, is not counted).
// Windows touching an empty or full battery are not counted either: a full
// battery throws the surplus away, an empty one stops delivering. Nor are
// windows over a jump of the gauge (maxWindowPoints).
func (f *Forecaster) measureBattery(prev Last, r Reading, sec float64) {
	an := &f.st.Anchor
	if r.BatteryPct == nil || r.onMains() {
		*an = Anchor{}
		return
	}
	if !an.Valid {
		f.openWindow(r, false)
		return
	}
	solar := func(p *float64) float64 {
		if p == nil {
			return 0
		}
		return *p
	}
	net := (solar(prev.SolarW)+solar(r.SolarW))/2 - (prev.DrawW+r.DrawW)/2
	an.NetWh += net * sec / 3600
	pct := *r.BatteryPct
	moved := pct - an.Pct
	if math.Abs(moved) < 1 {
		return
	}
	clipped := an.Pct >= 99.5 || pct >= 99.5 || an.Pct <= 0.5 || pct <= 0.5
	// A gauge read every few seconds moves a point at a time; a jump of
	// several is a recalibration (or a test), not energy, and would weigh
	// x² times more than an honest point in the fit.
	if an.Aligned && !clipped && math.Abs(moved) <= maxWindowPoints {
		x, y := moved/100, an.NetWh
		// A window implying an unbelievable battery (or moving against
		// the energy flow) says nothing either.
		if c := y / x; c >= MinCapacityWh && c <= MaxCapacityWh {
			f.st.SXY = capacityForget*f.st.SXY + x*y
			f.st.SXX = capacityForget*f.st.SXX + x*x
			f.st.Windows++
		}
	}
	f.openWindow(r, true)
}

// capacity is the battery's usable capacity and where it comes from.
func (f *Forecaster) capacity() (float64, string) {
	if f.cfg.CapacityWh > 0 {
		return f.cfg.CapacityWh, CapacityConfigured
	}
	if f.st.SXX >= minCapacityEvidence {
		if c := f.st.SXY / f.st.SXX; c >= MinCapacityWh && c <= MaxCapacityWh {
			return c, CapacityLearned
		}
	}
	return max(defaultCapacityHours*f.st.DrawW, 10), CapacityDefault
}

// Forecast is the node's energy outlook at one moment, with the figures it
// rests on.
type Forecast struct {
	// HoursLeft is how long the battery lasts above the reserve; +Inf when
	// it lasts the Window, or the node has no battery to run down (no
	// battery reading, or a battery charged from the grid).
	HoursLeft      float64
	Battery        bool // a battery reading is known
	OnMains        bool // the battery charges with no solar input measured: a UPS
	BatteryPct     float64
	SolarW         float64 // the latest solar reading
	DrawW          float64 // the draw's EWMA
	CapacityWh     float64
	CapacitySource string
	ReservePct     float64
}

// HoursLeft is Forecast(now).HoursLeft.
func (f *Forecaster) HoursLeft(now time.Time) float64 { return f.Forecast(now).HoursLeft }

// Forecast runs the battery forward from now, hour by hour over the Window:
// each hour adds the solar input expected then and takes the draw; the
// charge is capped at full (a full battery wastes the surplus) and the
// first moment it reaches the reserve is the answer.
func (f *Forecaster) Forecast(now time.Time) Forecast {
	st := &f.st
	fc := Forecast{HoursLeft: math.Inf(1), DrawW: st.DrawW, SolarW: st.SolarW, ReservePct: f.cfg.ReservePct}
	fc.CapacityWh, fc.CapacitySource = f.capacity()
	if st.Last.BatteryPct == nil {
		return fc
	}
	fc.Battery, fc.BatteryPct, fc.OnMains = true, *st.Last.BatteryPct, st.Last.OnMains
	if fc.OnMains {
		return fc
	}
	e := (fc.BatteryPct - fc.ReservePct) / 100 * fc.CapacityWh
	full := (100 - fc.ReservePct) / 100 * fc.CapacityWh
	if e <= 0 {
		fc.HoursLeft = 0
		return fc
	}
	end := now.Add(Window)
	for t := now; t.Before(end); {
		next := t.UTC().Truncate(time.Hour).Add(time.Hour)
		if next.After(end) {
			next = end
		}
		h := next.Sub(t).Hours()
		net := f.solarAt(now, t) - st.DrawW
		if e+net*h <= 0 {
			fc.HoursLeft = t.Sub(now).Hours() + e/-net
			return fc
		}
		e = min(e+net*h, full)
		t = next
	}
	return fc
}

// solarAt is the solar input expected at t, seen from now. An hour the
// profile has learned expects its mean, scaled by today's sky. An hour it
// has not learned yet expects 0 at night and the latest reading by day
// (the sky now is the best guess for the sky later today); night and day
// come from the node's longitude (solar time 06:00-18:00 is day). Without
// a longitude the latest reading stands for the next persistFor only, then
// 0: the forecast does not count on sun it has no reason to expect, so an
// unlearned node sheds early rather than late, and the console undoes an
// early shed when it is back. A node that never read a solar input expects
// none.
func (f *Forecaster) solarAt(now, t time.Time) float64 {
	st := &f.st
	if st.SolarAt.IsZero() {
		return 0
	}
	ahead := t.Sub(now).Hours()
	if b := st.Solar[t.UTC().Hour()]; b.Hours > 0 {
		return b.W * f.sky(now, ahead)
	}
	if lon := f.cfg.Longitude; lon != nil {
		hour := float64(t.UTC().Hour()) + 0.5 + *lon/15
		if solar := math.Mod(math.Mod(hour, 24)+24, 24); solar < 6 || solar >= 18 {
			return 0
		}
		return st.SolarW
	}
	if t.Sub(now) < persistFor {
		return st.SolarW
	}
	return 0
}
