package sim

import (
	"bytes"
	"math"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/cloudskin/cloudskin/console/internal/planner"
)

func TestStepBattery(t *testing.T) {
	tests := []struct {
		name            string
		wh, solar, draw float64
		dt              time.Duration
		want            float64
		flat            bool
	}{
		{"drains at draw", 1000, 0, 60, time.Hour, 940, false},
		{"charges at efficiency", 1000, 160, 60, time.Hour, 1000 + 100*ChargeEfficiency, false},
		{"balanced", 1000, 60, 60, time.Hour, 1000, false},
		{"full clamps", 3590, 1000, 0, time.Hour, 3600, false},
		{"runs flat", 30, 0, 60, time.Hour, 0, true},
		{"exactly flat", 60, 0, 60, time.Hour, 0, true},
		{"a minute", 1000, 0, 60, time.Minute, 999, false},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			got, flat := StepBattery(tc.wh, 3600, tc.solar, tc.draw, tc.dt)
			if math.Abs(got-tc.want) > 1e-9 || flat != tc.flat {
				t.Errorf("StepBattery = %v, %v; want %v, %v", got, flat, tc.want, tc.flat)
			}
		})
	}
}

func TestDrawW(t *testing.T) {
	n := greenX86
	if got := DrawW(&n, 0); got != n.IdleW {
		t.Errorf("idle draw %v, want %v", got, n.IdleW)
	}
	if got := DrawW(&n, 2); got != n.IdleW+2*n.CoreW {
		t.Errorf("2 busy cores: %v", got)
	}
	if got := DrawW(&n, 100); got != n.IdleW+float64(n.CPUs)*n.CoreW {
		t.Errorf("more busy cores than CPUs must saturate: %v", got)
	}
}

// fixAt is a fix s seconds after base, north metres north of origin.
func fixAt(s int, north float64) Fix {
	origin := planner.Point{Lat: 48.1, Lon: 11.5}
	return Fix{Time: time.Unix(1_400_000_000+int64(s), 0), Pos: offset(origin, north, 0)}
}

func TestFilterFixes(t *testing.T) {
	norths := func(fs []Fix) []float64 {
		out := make([]float64, len(fs))
		for i, f := range fs {
			out[i] = math.Round(planner.Distance(fixAt(0, 0).Pos, f.Pos))
		}
		return out
	}
	tests := []struct {
		name string
		in   []Fix
		want []float64
	}{
		{"smooth drive kept", []Fix{fixAt(0, 0), fixAt(1, 15), fixAt(2, 30)}, []float64{0, 15, 30}},
		{"isolated spike dropped", []Fix{fixAt(0, 0), fixAt(1, 15), fixAt(2, 900), fixAt(3, 45)}, []float64{0, 15, 45}},
		{"real stop kept", []Fix{fixAt(0, 0), fixAt(1, 10), fixAt(2, 10), fixAt(3, 10), fixAt(4, 20)}, []float64{0, 10, 10, 10, 20}},
		// The receiver held its fix for 20 s while the car drove 300 m:
		// the repeats go, the jump is kept.
		{"held fix then jump", []Fix{fixAt(0, 0), fixAt(1, 15), fixAt(2, 15), fixAt(11, 15), fixAt(21, 15), fixAt(22, 315), fixAt(23, 330)},
			[]float64{0, 15, 315, 330}},
		{"out of order dropped", []Fix{fixAt(0, 0), fixAt(2, 30), fixAt(1, 15), fixAt(3, 45)}, []float64{0, 30, 45}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			got := norths(FilterFixes(tc.in, MaxSpeedKmh))
			if !equal(got, tc.want) {
				t.Errorf("kept %v, want %v", got, tc.want)
			}
		})
	}
}

func equal(a, b []float64) bool {
	if len(a) != len(b) {
		return false
	}
	for i := range a {
		if a[i] != b[i] {
			return false
		}
	}
	return true
}

func TestRealTrackIsPlausible(t *testing.T) {
	f, err := os.Open("testdata/barefoot_munich_x0001-001.json")
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	raw, err := ReadFixes(f)
	if err != nil {
		t.Fatal(err)
	}
	if len(raw) != 1194 {
		t.Fatalf("%d fixes, SOURCE.txt says 1194", len(raw))
	}
	fixes := FilterFixes(raw, MaxSpeedKmh)
	for i := 1; i < len(fixes); i++ {
		d := planner.Distance(fixes[i-1].Pos, fixes[i].Pos)
		if v := d / fixes[i].Time.Sub(fixes[i-1].Time).Seconds() * 3.6; v > MaxSpeedKmh {
			t.Errorf("fix %d: %.0f km/h after filtering", i, v)
		}
	}
	tr, err := NewTrack(fixes)
	if err != nil {
		t.Fatal(err)
	}
	if l := tr.Length(); l < 10_000 || l > 15_000 {
		t.Errorf("forward pass %.0f m, the drive is about 13 km", l)
	}
	// Driving there and back never jumps, also at the turns.
	for s := 1; s < 3*int(tr.Pass()/time.Second); s++ {
		if d := planner.Distance(tr.At(s-1), tr.At(s)); d > MaxSpeedKmh/3.6 {
			t.Fatalf("second %d: the vehicle jumps %.0f m", s, d)
		}
	}
	if tr.At(0) != tr.At(2*int(tr.Pass()/time.Second)) {
		t.Error("a lap must end where it started")
	}
}

func TestLatencyTruth(t *testing.T) {
	t.Run("processing rises with load", func(t *testing.T) {
		prev := 0.0
		for u := 0.0; u <= 1.0; u += 0.05 {
			p := ProcP99(2, 1, u)
			if p < prev {
				t.Fatalf("ProcP99 falls from %v to %v at util %.2f", prev, p, u)
			}
			prev = p
		}
		if ProcP99(2, 1, 0.9) < 5*ProcP99(2, 1, 0.5)/2 {
			t.Error("queueing must make a busy node much slower")
		}
		if !(ProcP99(2, 1.8, 0.5) > ProcP99(2, 1, 0.5)) {
			t.Error("a slower core must be slower")
		}
		if math.IsInf(ProcP99(2, 1, 1), 0) {
			t.Error("a saturated node must stay finite")
		}
	})
	t.Run("network rises with distance", func(t *testing.T) {
		g := greenX86
		prev := 0.0
		for d := 0.0; d < 5000; d += 100 {
			v := VehicleNetMs(&g, d)
			if v < prev {
				t.Fatalf("VehicleNetMs falls at %v m", d)
			}
			prev = v
		}
		if VehicleNetMs(&g, g.CoverM+1) <= VehicleNetMs(&g, g.CoverM) {
			t.Error("leaving coverage must cost")
		}
		grid := gridSite
		if VehicleNetMs(&grid, 0) != VehicleNetMs(&grid, 10_000) {
			t.Error("the grid site's backhaul does not depend on the vehicle")
		}
	})
	t.Run("streams are cheapest where they are held", func(t *testing.T) {
		a, b, grid := greenX86, greenARM, gridSite
		a.Name, b.Name = "a", "b"
		b.Pos = offset(a.Pos, 3000, 0)
		if !(StreamNetMs(&a, &a) < StreamNetMs(&a, &b)) || !(StreamNetMs(&a, &a) < StreamNetMs(&a, &grid)) {
			t.Error("reading a stream elsewhere must cost more than where it is held")
		}
	})
}

func TestReadPVGIS(t *testing.T) {
	raw, err := os.ReadFile("testdata/pvgis_tmy_italy_45.000_8.000_2005_2023.csv")
	if err != nil {
		t.Fatal(err)
	}
	irr, err := ReadPVGIS(bytes.NewReader(raw), 2006)
	if err != nil {
		t.Fatal(err)
	}
	if len(irr.GHI) != 8760 {
		t.Fatalf("%d hourly rows, want 8760", len(irr.GHI))
	}
	if off := irr.Start.Sub(time.Date(2006, 1, 1, 0, 0, 0, 0, time.UTC)); off < 10*time.Minute || off > 11*time.Minute {
		t.Errorf("time offset %v, the file says 0.1761 h", off)
	}
	if v := irr.At(time.Date(2006, 10, 20, 2, 0, 0, 0, time.UTC)); v != 0 {
		t.Errorf("irradiance at 02:00 is %v", v)
	}
	// The evaluated day is cloudy and follows a darker one; the warm-up
	// starts fair.
	if d := irr.DayKWh(Day); d > 1.5 {
		t.Errorf("evaluated day %.2f kWh/m², want a cloudy one", d)
	}
	if d := irr.DayKWh(WarmupStart); d < 3 {
		t.Errorf("first warm-up day %.2f kWh/m², want a fair one", d)
	}

	bad := []string{
		"",
		"time(UTC),T2m,RH\n20060101:0000,1,2\n",
		"time(UTC),T2m,G(h)\n20060101:0000,1,x\n",
	}
	for _, b := range bad {
		if _, err := ReadPVGIS(strings.NewReader(b), 2006); err == nil {
			t.Errorf("ReadPVGIS(%q) accepted", b)
		}
	}
}

// TestEnergyIsScarce checks the premise: on the evaluated day a green x86
// site that carries cells drains while an idle one keeps its charge up,
// so where cells run decides who browns out.
func TestEnergyIsScarce(t *testing.T) {
	in := loadInputs(t)
	w := NewWorld(in.Irradiance, in.Track, 1)
	day := func(start time.Time, busy float64) float64 {
		spec := &w.Nodes[0]
		wh := spec.BatteryWh / 2
		for m := range 24 * 60 {
			tt := start.Add(time.Duration(m) * time.Minute)
			wh, _ = StepBattery(wh, spec.BatteryWh, w.SolarW(0, tt), DrawW(spec, spec.BaseCores+busy), time.Minute)
		}
		return wh - spec.BatteryWh/2
	}
	if d := day(Day, 0); d < -0.2*w.Nodes[0].BatteryWh {
		t.Errorf("an idle site loses %.0f Wh on the day: it could not last the spell whatever the placement", -d)
	}
	if d := day(Day, 4); d > -0.2*w.Nodes[0].BatteryWh {
		t.Errorf("a site with 4 busy cores loses only %.0f Wh: energy is not scarce", -d)
	}
	if d := day(WarmupStart, 4); d < 0 {
		t.Errorf("on a fair day a loaded site should gain, it loses %.0f Wh", -d)
	}
}
