package sim

import (
	"encoding/json"
	"fmt"
	"io"
	"math"
	"strconv"
	"strings"
	"time"

	"github.com/cloudskin/cloudskin/console/internal/planner"
)

// Fix is one GPS fix of the vehicle.
type Fix struct {
	Time time.Time
	Pos  planner.Point
}

// ReadFixes parses a barefoot trace: a JSON array of
// {"point":"POINT(lon lat)","time":"2006-01-02 15:04:05-0700"}, in order.
func ReadFixes(r io.Reader) ([]Fix, error) {
	var raw []struct {
		Point string `json:"point"`
		Time  string `json:"time"`
	}
	if err := json.NewDecoder(r).Decode(&raw); err != nil {
		return nil, fmt.Errorf("gps trace: %w", err)
	}
	out := make([]Fix, 0, len(raw))
	for i, p := range raw {
		s, ok := strings.CutPrefix(p.Point, "POINT(")
		s, ok2 := strings.CutSuffix(s, ")")
		f := strings.Fields(s)
		if !ok || !ok2 || len(f) != 2 {
			return nil, fmt.Errorf("gps trace: fix %d: point %q is not POINT(lon lat)", i, p.Point)
		}
		lon, err1 := strconv.ParseFloat(f[0], 64)
		lat, err2 := strconv.ParseFloat(f[1], 64)
		if err1 != nil || err2 != nil {
			return nil, fmt.Errorf("gps trace: fix %d: point %q: bad number", i, p.Point)
		}
		t, err := time.Parse("2006-01-02 15:04:05-0700", p.Time)
		if err != nil {
			return nil, fmt.Errorf("gps trace: fix %d: %w", i, err)
		}
		out = append(out, Fix{Time: t, Pos: planner.Point{Lat: lat, Lon: lon}})
	}
	return out, nil
}

// MaxSpeedKmh is the speed above which a fix is an outlier: far above the
// trace's p90 of 88 km/h, far below its 1,693 km/h jump.
const MaxSpeedKmh = 200

// FilterFixes drops what a GPS receiver gets wrong: fixes out of time
// order, isolated jumps (a fix that implies more than maxKmh from the last
// good one), and held fixes. A receiver that loses its solution keeps
// repeating the last fix and then jumps to the true position; the car did
// not stand still and then teleport. So when a jump is implausible from the
// last repeat but plausible from the first one, the repeats are dropped and
// the gap is left to interpolation. A run of repeats followed by a plausible
// move is a real stop (traffic light) and stays.
func FilterFixes(in []Fix, maxKmh float64) []Fix {
	if len(in) == 0 {
		return nil
	}
	maxMs := maxKmh / 3.6
	out := []Fix{in[0]}
	runStart := 0 // index in out of the first fix of the current repeat run
	for _, f := range in[1:] {
		last := out[len(out)-1]
		if !f.Time.After(last.Time) {
			continue
		}
		if f.Pos == last.Pos {
			out = append(out, f)
			continue
		}
		d := planner.Distance(last.Pos, f.Pos)
		if d <= maxMs*f.Time.Sub(last.Time).Seconds() {
			out = append(out, f)
			runStart = len(out) - 1
			continue
		}
		first := out[runStart]
		if runStart < len(out)-1 && d <= maxMs*f.Time.Sub(first.Time).Seconds() {
			out = append(out[:runStart+1], f) // the repeats were held fixes
			runStart = len(out) - 1
			continue
		}
		// An isolated jump: drop it and keep the last good fix.
	}
	return out
}

// Track is the vehicle's path sampled once a second, driven forward and
// then backward, over and over: the trace is one 20-minute drive between
// two points, not a closed lap, and playing it back keeps the positions
// continuous where a loop would jump 10 km at the seam.
type Track struct {
	pos []planner.Point // one per second over a forward pass
}

// NewTrack resamples filtered fixes to one position a second by linear
// interpolation between fixes.
func NewTrack(fixes []Fix) (*Track, error) {
	if len(fixes) < 2 {
		return nil, fmt.Errorf("track: need at least 2 fixes, have %d", len(fixes))
	}
	t0 := fixes[0].Time
	n := int(fixes[len(fixes)-1].Time.Sub(t0)/time.Second) + 1
	pos := make([]planner.Point, n)
	j := 0
	for s := range n {
		t := t0.Add(time.Duration(s) * time.Second)
		for j+1 < len(fixes)-1 && !fixes[j+1].Time.After(t) {
			j++
		}
		a, b := fixes[j], fixes[j+1]
		u := float64(t.Sub(a.Time)) / float64(b.Time.Sub(a.Time))
		u = max(0, min(1, u))
		pos[s] = planner.Point{Lat: a.Pos.Lat + u*(b.Pos.Lat-a.Pos.Lat), Lon: a.Pos.Lon + u*(b.Pos.Lon-a.Pos.Lon)}
	}
	return &Track{pos: pos}, nil
}

// Pass is the duration of one forward pass; a lap (there and back) is two.
func (tr *Track) Pass() time.Duration { return time.Duration(len(tr.pos)-1) * time.Second }

// At is the vehicle's position s seconds into its day of driving.
func (tr *Track) At(s int) planner.Point {
	n := len(tr.pos) - 1
	k := s % (2 * n)
	if k < 0 {
		k += 2 * n
	}
	if k > n {
		k = 2*n - k
	}
	return tr.pos[k]
}

// Length is the forward pass's length in metres.
func (tr *Track) Length() float64 {
	d := 0.0
	for i := 1; i < len(tr.pos); i++ {
		d += planner.Distance(tr.pos[i-1], tr.pos[i])
	}
	return d
}

// AlongTrack is the point a fraction (0..1) of the way along the forward
// pass, measured by distance.
func (tr *Track) AlongTrack(frac float64) planner.Point {
	goal := frac * tr.Length()
	d := 0.0
	for i := 1; i < len(tr.pos); i++ {
		d += planner.Distance(tr.pos[i-1], tr.pos[i])
		if d >= goal {
			return tr.pos[i]
		}
	}
	return tr.pos[len(tr.pos)-1]
}

// offset is the point m metres north and e metres east of p.
func offset(p planner.Point, north, east float64) planner.Point {
	const r = 6371008.8
	return planner.Point{
		Lat: p.Lat + north/r*180/math.Pi,
		Lon: p.Lon + east/(r*math.Cos(p.Lat*math.Pi/180))*180/math.Pi,
	}
}
