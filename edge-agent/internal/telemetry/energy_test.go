package telemetry

import (
	"context"
	"math"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/cloudskin/cloudskin/shared/protocol"
)

var t0 = time.Date(2025, 6, 1, 12, 0, 0, 0, time.UTC)

// twoSamples samples the fixture at t0 and, after next changes it, at t0+interval,
// with the CPU 25% busy in between; it returns the second sample, checked valid.
func twoSamples(t *testing.T, f *fixture, cfg Config, interval time.Duration, next func(t *testing.T, f *fixture)) protocol.Telemetry {
	t.Helper()
	s := f.sampler(t, cfg)
	f.stat(t, 1000, 9000)
	if _, err := s.Sample(context.Background(), t0); err != nil {
		t.Fatalf("first sample: %v", err)
	}
	f.stat(t, 1000+250, 9000+750)
	if next != nil {
		next(t, f)
	}
	got, err := s.Sample(context.Background(), t0.Add(interval))
	if err != nil {
		t.Fatalf("second sample: %v", err)
	}
	got.Node = "n1"
	if err := got.Validate("n1", t0.Add(interval)); err != nil {
		t.Fatalf("sample does not validate: %v", err)
	}
	return got
}

func TestEnergySources(t *testing.T) {
	const maxRange = 262_143_328_850 // a real package's max_energy_range_uj
	// At 25% CPU the default model gives 20 + 40×0.25 W.
	const modelAt25 = 30.0
	pct := func(v float64) *float64 { return &v }
	yes, no := ptr(true), ptr(false)

	tests := []struct {
		name         string
		setup        func(t *testing.T, f *fixture) // before the sampler probes
		next         func(t *testing.T, f *fixture) // between the two samples
		wantSource   string
		wantW        float64
		wantPct      *float64
		wantCharging *bool
	}{
		{
			name: "rapl packages summed over two samples",
			setup: func(t *testing.T, f *fixture) {
				f.rapl(t, "intel-rapl:0", "package-0", 1_000_000_000, maxRange)
				f.rapl(t, "intel-rapl:1", "package-1", 2_000_000_000, maxRange)
				// Sub-zones and psys are inside the packages; counting them would double.
				f.rapl(t, "intel-rapl:0:0", "core", 5_000_000, maxRange)
				f.rapl(t, "intel-rapl:2", "psys", 7_000_000, maxRange)
			},
			next: func(t *testing.T, f *fixture) {
				f.rapl(t, "intel-rapl:0", "package-0", 1_050_000_000, maxRange) // +50 J
				f.rapl(t, "intel-rapl:1", "package-1", 2_025_000_000, maxRange) // +25 J
				f.rapl(t, "intel-rapl:0:0", "core", 900_000_000, maxRange)
				f.rapl(t, "intel-rapl:2", "psys", 900_000_000, maxRange)
			},
			wantSource: protocol.EnergyRAPL, wantW: 75.0 / 5,
		},
		{
			name: "rapl counter wrap",
			setup: func(t *testing.T, f *fixture) {
				f.rapl(t, "intel-rapl:0", "package-0", maxRange-328_850, maxRange)
			},
			next: func(t *testing.T, f *fixture) {
				f.rapl(t, "intel-rapl:0", "package-0", 99_671_150, maxRange) // 328_850 + 99_671_150 = 100 J
			},
			wantSource: protocol.EnergyRAPL, wantW: 100.0 / 5,
		},
		{
			name: "rapl wrap without max range is not trusted",
			setup: func(t *testing.T, f *fixture) {
				f.rapl(t, "intel-rapl:0", "package-0", 5_000_000, maxRange)
				makeUnreadable(t, filepath.Join(f.sys, "class/powercap/intel-rapl:0/max_energy_range_uj"))
			},
			next: func(t *testing.T, f *fixture) {
				f.writeSys(t, "class/powercap/intel-rapl:0/energy_uj", "1000")
			},
			wantSource: protocol.EnergyModel, wantW: modelAt25,
		},
		{
			name: "rapl unreadable falls back to the model",
			setup: func(t *testing.T, f *fixture) {
				f.rapl(t, "intel-rapl:0", "package-0", 1_000_000_000, maxRange)
				makeUnreadable(t, filepath.Join(f.sys, "class/powercap/intel-rapl:0/energy_uj"))
			},
			wantSource: protocol.EnergyModel, wantW: modelAt25,
		},
		{
			name: "one unreadable package of two means no rapl",
			setup: func(t *testing.T, f *fixture) {
				f.rapl(t, "intel-rapl:0", "package-0", 1_000_000_000, maxRange)
				f.rapl(t, "intel-rapl:1", "package-1", 1_000_000_000, maxRange)
				makeUnreadable(t, filepath.Join(f.sys, "class/powercap/intel-rapl:1/energy_uj"))
			},
			next: func(t *testing.T, f *fixture) {
				f.rapl(t, "intel-rapl:0", "package-0", 1_050_000_000, maxRange)
			},
			wantSource: protocol.EnergyModel, wantW: modelAt25,
		},
		{
			name: "frozen rapl counter falls back to the model",
			setup: func(t *testing.T, f *fixture) {
				f.rapl(t, "intel-rapl:0", "package-0", 1_000_000_000, maxRange)
			},
			wantSource: protocol.EnergyModel, wantW: modelAt25,
		},
		{
			name: "battery power_now while discharging",
			setup: func(t *testing.T, f *fixture) {
				f.battery(t, "BAT0", map[string]string{"type": "Battery", "status": "Discharging", "capacity": "80", "power_now": "12500000"})
			},
			wantSource: protocol.EnergyBattery, wantW: 12.5, wantPct: pct(80), wantCharging: no,
		},
		{
			name: "battery current times voltage",
			setup: func(t *testing.T, f *fixture) {
				// Some fuel gauges sign the current: negative while discharging.
				f.battery(t, "battery", map[string]string{"type": "Battery", "status": "Discharging", "capacity": "55",
					"current_now": "-1500000", "voltage_now": "12000000"})
			},
			wantSource: protocol.EnergyBattery, wantW: 18, wantPct: pct(55), wantCharging: no,
		},
		{
			name: "battery without a power reading: model watts, battery percent",
			setup: func(t *testing.T, f *fixture) {
				f.battery(t, "BAT0", map[string]string{"type": "Battery", "status": "Discharging", "capacity": "40", "power_now": "0"})
			},
			wantSource: protocol.EnergyModel, wantW: modelAt25, wantPct: pct(40), wantCharging: no,
		},
		{
			name: "charging battery power is not the node's draw",
			setup: func(t *testing.T, f *fixture) {
				f.battery(t, "BAT0", map[string]string{"type": "Battery", "status": "Charging", "power_now": "20000000",
					"energy_now": "30000000", "energy_full": "40000000"})
			},
			wantSource: protocol.EnergyModel, wantW: modelAt25, wantPct: pct(75), wantCharging: yes,
		},
		{
			name: "two batteries: watts summed, percent averaged",
			setup: func(t *testing.T, f *fixture) {
				f.battery(t, "BAT0", map[string]string{"type": "Battery", "status": "Discharging", "capacity": "90", "power_now": "4000000"})
				f.battery(t, "BAT1", map[string]string{"type": "Battery", "status": "Discharging", "capacity": "50", "power_now": "6000000"})
			},
			wantSource: protocol.EnergyBattery, wantW: 10, wantPct: pct(70), wantCharging: no,
		},
		{
			name: "mains, device and absent batteries are not the system's",
			setup: func(t *testing.T, f *fixture) {
				f.battery(t, "AC", map[string]string{"type": "Mains", "online": "1"})
				f.battery(t, "hid-mouse-battery", map[string]string{"type": "Battery", "scope": "Device", "status": "Discharging", "capacity": "10", "power_now": "100000"})
				f.battery(t, "BAT1", map[string]string{"type": "Battery", "present": "0", "status": "Discharging", "capacity": "0", "power_now": "5000000"})
			},
			wantSource: protocol.EnergyModel, wantW: modelAt25,
		},
		{
			name: "rapl is preferred to a battery",
			setup: func(t *testing.T, f *fixture) {
				f.rapl(t, "intel-rapl:0", "package-0", 1_000_000_000, maxRange)
				f.battery(t, "BAT0", map[string]string{"type": "Battery", "status": "Discharging", "capacity": "64", "power_now": "12500000"})
			},
			next: func(t *testing.T, f *fixture) {
				f.rapl(t, "intel-rapl:0", "package-0", 1_040_000_000, maxRange)
			},
			wantSource: protocol.EnergyRAPL, wantW: 8, wantPct: pct(64), wantCharging: no,
		},
		{
			name:       "no sources: the model",
			wantSource: protocol.EnergyModel, wantW: modelAt25,
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			f := newFixture(t)
			if tt.setup != nil {
				tt.setup(t, f)
			}
			got := twoSamples(t, f, Config{}, 5*time.Second, tt.next).Energy
			if got.Source != tt.wantSource || math.Abs(got.PowerW-tt.wantW) > 1e-9 {
				t.Errorf("energy = %s %v W, want %s %v W", got.Source, got.PowerW, tt.wantSource, tt.wantW)
			}
			if !equalPtr(got.BatteryPct, tt.wantPct) {
				t.Errorf("battery_pct = %v, want %v", show(got.BatteryPct), show(tt.wantPct))
			}
			if !equalPtr(got.Charging, tt.wantCharging) {
				t.Errorf("charging = %v, want %v", show(got.Charging), show(tt.wantCharging))
			}
			if got.SolarW != nil {
				t.Errorf("solar_w = %v, want none", *got.SolarW)
			}
		})
	}
}

func equalPtr[T comparable](a, b *T) bool {
	return (a == nil) == (b == nil) && (a == nil || *a == *b)
}

func show[T any](p *T) any {
	if p == nil {
		return "nil"
	}
	return *p
}

// The first sample has no earlier reading: RAPL counts only if its counter moves
// within the short window, which a fixture's does not, so that sample is modelled.
// When the RAPL zones go away, the sample that notices falls back to the model and
// the next one finds the battery that appeared.
func TestEnergySourceReprobe(t *testing.T) {
	f := newFixture(t)
	f.rapl(t, "intel-rapl:0", "package-0", 1_000_000_000, 1<<40)
	s := f.sampler(t, Config{})
	f.stat(t, 1000, 9000)
	ctx := context.Background()

	steps := []struct {
		name       string
		change     func()
		wantSource string
	}{
		{"first sample, counter still", func() {}, protocol.EnergyModel},
		{"counter moved", func() { f.writeSys(t, "class/powercap/intel-rapl:0/energy_uj", "1010000000") }, protocol.EnergyRAPL},
		{"rapl gone, battery plugged", func() {
			if err := os.RemoveAll(filepath.Join(f.sys, "class/powercap")); err != nil {
				t.Fatal(err)
			}
			f.battery(t, "ups", map[string]string{"type": "Battery", "status": "Discharging", "capacity": "99", "power_now": "33000000"})
		}, protocol.EnergyModel},
		{"battery found", func() {}, protocol.EnergyBattery},
		{"battery unplugged", func() {
			if err := os.RemoveAll(filepath.Join(f.sys, "class/power_supply/ups")); err != nil {
				t.Fatal(err)
			}
		}, protocol.EnergyModel},
		{"another battery plugged", func() {
			f.battery(t, "BAT0", map[string]string{"type": "Battery", "status": "Discharging", "capacity": "50", "power_now": "9000000"})
		}, protocol.EnergyBattery},
	}
	for i, st := range steps {
		st.change()
		got, err := s.Sample(ctx, t0.Add(time.Duration(i)*5*time.Second))
		if err != nil {
			t.Fatalf("%s: %v", st.name, err)
		}
		if got.Energy.Source != st.wantSource {
			t.Errorf("%s: source %q, want %q", st.name, got.Energy.Source, st.wantSource)
		}
	}
}

// The first sample measures over its short window; the second covers the interval
// from the first sample's time, window included.
func TestFirstSampleWindow(t *testing.T) {
	f := newFixture(t)
	f.rapl(t, "intel-rapl:0", "package-0", 1_000_000_000, 1<<40)
	f.stat(t, 1000, 9000)
	s := f.sampler(t, Config{})
	s.pause = func(context.Context, time.Duration) error {
		// What happens during the (instant) window: 1 mJ and 3 busy ticks of 4.
		f.rapl(t, "intel-rapl:0", "package-0", 1_000_001_000, 1<<40)
		f.stat(t, 1003, 9001)
		return nil
	}
	first, err := s.Sample(context.Background(), t0)
	if err != nil {
		t.Fatal(err)
	}
	if first.Energy.Source != protocol.EnergyRAPL || first.Energy.PowerW <= 0 || first.CPU.Percent != 75 {
		t.Errorf("first sample: %s %v W at %v%% CPU; want rapl > 0 W over the window at 75%%", first.Energy.Source, first.Energy.PowerW, first.CPU.Percent)
	}

	f.rapl(t, "intel-rapl:0", "package-0", 1_010_000_000, 1<<40)
	f.stat(t, 1010, 9010)
	second, err := s.Sample(context.Background(), t0.Add(2*time.Second))
	if err != nil {
		t.Fatal(err)
	}
	// 10 J over 2 s and 10 busy ticks of 20 since t0.
	if second.Energy.Source != protocol.EnergyRAPL || math.Abs(second.Energy.PowerW-5) > 1e-9 || second.CPU.Percent != 50 {
		t.Errorf("second sample: %s %v W at %v%% CPU; want rapl 5 W at 50%%", second.Energy.Source, second.Energy.PowerW, second.CPU.Percent)
	}
}

func TestModelPower(t *testing.T) {
	tests := []struct {
		idle, max, cpu, want float64
	}{
		{20, 60, 0, 20},
		{20, 60, 50, 40},
		{20, 60, 100, 60},
		{20, 60, 250, 60}, // clamped
		{20, 60, -5, 20},
		{3, 7, 25, 4},
	}
	for _, tt := range tests {
		if got := modelPower(tt.idle, tt.max, tt.cpu); math.Abs(got-tt.want) > 1e-9 {
			t.Errorf("modelPower(%v, %v, %v) = %v, want %v", tt.idle, tt.max, tt.cpu, got, tt.want)
		}
	}
}

// With no source the sampler models power from the CPU percent it is given, with
// the configured constants or the defaults.
func TestEnergyModelFromCPU(t *testing.T) {
	tests := []struct {
		name  string
		cfg   Config
		cpu   float64
		wantW float64
	}{
		{"defaults idle", Config{}, 0, DefaultPowerIdleW},
		{"defaults half", Config{}, 50, 40},
		{"defaults full", Config{}, 100, DefaultPowerMaxW},
		{"raspberry pi", Config{PowerIdleW: 2.7, PowerMaxW: 6.4}, 50, 4.55},
		{"max below idle is flat", Config{PowerIdleW: 10, PowerMaxW: 5}, 80, 10},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			s := newFixture(t).sampler(t, tt.cfg)
			got := s.energyFor(rates{cpuPct: tt.cpu})
			if got.Source != protocol.EnergyModel || math.Abs(got.PowerW-tt.wantW) > 1e-9 {
				t.Errorf("energy = %s %v W, want model %v W", got.Source, got.PowerW, tt.wantW)
			}
		})
	}
}

func TestConfigValidate(t *testing.T) {
	tests := []struct {
		cfg     Config
		wantErr bool
	}{
		{Config{}, false},
		{Config{PowerIdleW: 3, PowerMaxW: 7}, false},
		{Config{PowerIdleW: 30}, false}, // max defaults to 60
		{Config{PowerIdleW: 70}, true},  // above the default max
		{Config{PowerIdleW: 10, PowerMaxW: 5}, true},
		{Config{PowerMaxW: -1}, true},
		{Config{PowerIdleW: math.NaN()}, true},
	}
	for _, tt := range tests {
		if err := tt.cfg.Validate(); (err != nil) != tt.wantErr {
			t.Errorf("%+v.Validate() = %v, want error %v", tt.cfg, err, tt.wantErr)
		}
	}
}
