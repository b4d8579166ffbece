package telemetry

import (
	"context"
	"math"
	"os"
	"path/filepath"
	"testing"
	"time"
)

// Solar input comes from power_supply entries named solar*, or Mains
// entries whose name says solar; it is reported beside the battery,
// whatever the power source, and 0 W (night) is a reading, not a gap.
func TestSolarInput(t *testing.T) {
	bat := map[string]string{"type": "Battery", "status": "Charging", "capacity": "61"}
	tests := []struct {
		name  string
		setup func(t *testing.T, f *fixture)
		want  *float64 // nil: no solar_w
	}{
		{"power_now", func(t *testing.T, f *fixture) {
			f.battery(t, "solar0", map[string]string{"type": "Mains", "online": "1", "power_now": "42500000"})
		}, ptr(42.5)},
		{"voltage times current", func(t *testing.T, f *fixture) {
			f.battery(t, "mppt-solar-in", map[string]string{"type": "Mains", "voltage_now": "18000000", "current_now": "-1500000"})
		}, ptr(27.0)},
		{"night reads 0", func(t *testing.T, f *fixture) {
			f.battery(t, "solar0", map[string]string{"type": "Mains", "power_now": "0"})
		}, ptr(0.0)},
		{"offline panel", func(t *testing.T, f *fixture) {
			f.battery(t, "solar0", map[string]string{"type": "Mains", "online": "0", "power_now": "9000000"})
		}, ptr(0.0)},
		{"two panels summed", func(t *testing.T, f *fixture) {
			f.battery(t, "solar-east", map[string]string{"type": "USB", "power_now": "10000000"})
			f.battery(t, "solar-west", map[string]string{"type": "Mains", "power_now": "5000000"})
		}, ptr(15.0)},
		{"mains without solar in its name is the grid", func(t *testing.T, f *fixture) {
			f.battery(t, "AC", map[string]string{"type": "Mains", "online": "1", "power_now": "30000000"})
		}, nil},
		{"a battery named solar is a battery", func(t *testing.T, f *fixture) {
			f.battery(t, "solar-bank", map[string]string{"type": "Battery", "status": "Discharging", "capacity": "61", "power_now": "7000000"})
		}, nil},
		{"solar entry without a reading", func(t *testing.T, f *fixture) {
			f.battery(t, "solar0", map[string]string{"type": "Mains", "online": "1"})
		}, nil},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			f := newFixture(t)
			f.battery(t, "BAT0", bat)
			tt.setup(t, f)
			got := twoSamples(t, f, Config{}, 5*time.Second, nil).Energy
			if (got.SolarW == nil) != (tt.want == nil) || (got.SolarW != nil && math.Abs(*got.SolarW-*tt.want) > 1e-9) {
				t.Fatalf("solar_w = %v, want %v", show(got.SolarW), show(tt.want))
			}
			if got.BatteryPct == nil || *got.BatteryPct != 61 {
				t.Errorf("battery_pct = %v, want 61 beside the solar input", show(got.BatteryPct))
			}
		})
	}
}

// A charge controller plugged in after the start is found at the next probe;
// one unplugged stops being reported.
func TestSolarReprobe(t *testing.T) {
	f := newFixture(t)
	f.stat(t, 1000, 9000)
	s := f.sampler(t, Config{})
	ctx := context.Background()
	if got, err := s.Sample(ctx, t0); err != nil || got.Energy.SolarW != nil {
		t.Fatalf("no controller: solar %v (%v)", show(got.Energy.SolarW), err)
	}
	f.battery(t, "solar0", map[string]string{"type": "Mains", "power_now": "12000000"})
	s.energy.probedAt = time.Time{} // a minute has passed
	if got, _ := s.Sample(ctx, t0.Add(5*time.Second)); got.Energy.SolarW == nil || *got.Energy.SolarW != 12 {
		t.Fatalf("controller plugged in: solar %v, want 12", show(got.Energy.SolarW))
	}
	if err := os.RemoveAll(filepath.Join(f.sys, "class/power_supply/solar0")); err != nil {
		t.Fatal(err)
	}
	if got, _ := s.Sample(ctx, t0.Add(10*time.Second)); got.Energy.SolarW != nil {
		t.Fatalf("controller unplugged: solar %v, want none", show(got.Energy.SolarW))
	}
}
