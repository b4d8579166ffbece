package telemetry

import (
	"math"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/cloudskin/cloudskin/shared/protocol"
)

// reprobeEvery is how often sources are looked for again while RAPL or a battery
// is missing: a udev rule may open energy_uj to the agent, a UPS may be plugged in.
const reprobeEvery = time.Minute

// maxRAPLW bounds a believable RAPL reading; more means the counter was reset
// (suspend, microcode reload) between two reads, not that the node drew it.
const maxRAPLW = 10_000

// sources are the energy sources found under sysRoot.
type sources struct {
	sysRoot   string
	zones     []raplZone // top-level RAPL packages; empty unless every one is readable
	gen       int        // bumped when zones change, so no delta spans two sets
	batteries []string   // power_supply directories of system batteries
	solar     []string   // power_supply directories of solar inputs (probeSolar)
	probedAt  time.Time
	stale     bool // a source failed to read: probe again before the next read
}

type raplZone struct {
	energy   string // path of energy_uj
	maxRange uint64 // max_energy_range_uj; 0 when unknown
}

// probe looks for RAPL packages and batteries.
func (e *sources) probe() {
	e.probedAt = time.Now()
	e.stale = false
	zones := e.probeRAPL()
	if !slices.Equal(zones, e.zones) {
		e.zones = zones
		e.gen++
	}
	e.batteries = e.probeBatteries()
	e.solar = e.probeSolar()
}

// maybeReprobe probes again after a failure, or now and then while a source is
// missing.
func (e *sources) maybeReprobe() {
	if e.stale || (time.Since(e.probedAt) >= reprobeEvery && (len(e.zones) == 0 || len(e.batteries) == 0 || len(e.solar) == 0)) {
		e.probe()
	}
}

// probeRAPL returns the top-level package zones intel-rapl:N (the kernel uses the
// same names on AMD), skipping sub-zones intel-rapl:N:M (core, uncore, dram: already
// inside their package) and psys (the whole platform, which contains the packages).
// If any package cannot be read (energy_uj is root-only since the PLATYPUS fix of
// Linux 5.10) there is no RAPL: a sum over some packages would under-report.
func (e *sources) probeRAPL() []raplZone {
	dirs, _ := filepath.Glob(filepath.Join(e.sysRoot, "class/powercap/intel-rapl:*"))
	type indexed struct {
		n int
		z raplZone
	}
	var found []indexed
	for _, dir := range dirs {
		n, err := strconv.Atoi(strings.TrimPrefix(filepath.Base(dir), "intel-rapl:"))
		if err != nil {
			continue // a sub-zone such as intel-rapl:0:1
		}
		if name, err := readString(filepath.Join(dir, "name")); err == nil && name == "psys" {
			continue
		}
		z := raplZone{energy: filepath.Join(dir, "energy_uj")}
		if _, err := readUint(z.energy); err != nil {
			return nil
		}
		z.maxRange, _ = readUint(filepath.Join(dir, "max_energy_range_uj"))
		found = append(found, indexed{n, z})
	}
	slices.SortFunc(found, func(a, b indexed) int { return a.n - b.n })
	zones := make([]raplZone, 0, len(found))
	for _, f := range found {
		zones = append(zones, f.z)
	}
	if len(zones) == 0 {
		return nil
	}
	return zones
}

// probeBatteries returns the power_supply directories of type Battery that power
// the system: scope Device (a wireless mouse's battery) and absent ones are skipped.
func (e *sources) probeBatteries() []string {
	dirs, _ := filepath.Glob(filepath.Join(e.sysRoot, "class/power_supply/*"))
	var out []string
	for _, dir := range dirs {
		if t, err := readString(filepath.Join(dir, "type")); err != nil || t != "Battery" {
			continue
		}
		if scope, err := readString(filepath.Join(dir, "scope")); err == nil && scope == "Device" {
			continue
		}
		if present, err := readString(filepath.Join(dir, "present")); err == nil && present == "0" {
			continue
		}
		out = append(out, dir)
	}
	return out
}

// probeSolar returns the power_supply directories that measure solar input.
// Linux has no power_supply type for a photovoltaic panel, so a charge
// controller's driver (or a udev rule, or a small exporter writing a
// sysfs-like tree under HOST_SYS) names it: any entry whose name starts with
// "solar" (solar0, solar-mppt), unless it is a Battery, or a "Mains" entry
// whose name contains "solar" (the input side of an MPPT controller, e.g.
// mppt-solar-in).
func (e *sources) probeSolar() []string {
	dirs, _ := filepath.Glob(filepath.Join(e.sysRoot, "class/power_supply/*"))
	var out []string
	for _, dir := range dirs {
		name := strings.ToLower(filepath.Base(dir))
		t, _ := readString(filepath.Join(dir, "type"))
		if (strings.HasPrefix(name, "solar") && t != "Battery") || (t == "Mains" && strings.Contains(name, "solar")) {
			out = append(out, dir)
		}
	}
	return out
}

// readSolar is the solar input in watts, summed over the solar entries; nil
// when the node has none or none could be read (then sources are probed
// again before the next sample). An entry that says it is offline (online
// 0: no sun, or disconnected) gives 0 W.
func (e *sources) readSolar() *float64 {
	var (
		sum  float64
		read bool
	)
	for _, dir := range e.solar {
		if _, err := os.Stat(dir); err != nil {
			e.stale = true // unplugged
			continue
		}
		if online, err := readInt(filepath.Join(dir, "online")); err == nil && online == 0 {
			read = true
			continue
		}
		if w, ok := solarWatts(dir); ok {
			sum += w
			read = true
		}
	}
	if !read {
		if len(e.solar) > 0 {
			e.stale = true
		}
		return nil
	}
	return ptr(sum)
}

// solarWatts is power_now (µW), else voltage_now (µV) × current_now (µA).
// Unlike a battery's, a solar input's 0 is a reading: night.
func solarWatts(dir string) (float64, bool) {
	if p, err := readInt(filepath.Join(dir, "power_now")); err == nil {
		return math.Abs(float64(p)) / 1e6, true
	}
	i, err1 := readInt(filepath.Join(dir, "current_now"))
	v, err2 := readInt(filepath.Join(dir, "voltage_now"))
	if err1 != nil || err2 != nil {
		return 0, false
	}
	return math.Abs(float64(i)) * math.Abs(float64(v)) / 1e12, true
}

// readRAPL returns the energy counter of every package, in µJ, and the zone set
// they belong to; nil when there is no RAPL or a read failed (then sources are
// probed again before the next sample).
func (e *sources) readRAPL() ([]uint64, int) {
	if len(e.zones) == 0 {
		return nil, e.gen
	}
	out := make([]uint64, len(e.zones))
	for i, z := range e.zones {
		v, err := readUint(z.energy)
		if err != nil {
			e.stale = true
			return nil, e.gen
		}
		out[i] = v
	}
	return out, e.gen
}

// raplWatts is the average power between two readings dt apart, summed over
// packages. A counter that wrapped is unwrapped with its max_energy_range_uj.
// It is false when the readings are not comparable, a counter did not move (a
// frozen counter, as some hypervisors expose, measures nothing) or the result is
// not believable.
func (e *sources) raplWatts(a []uint64, genA int, b []uint64, genB int, dt time.Duration) (float64, bool) {
	if a == nil || b == nil || genA != genB || genB != e.gen || len(a) != len(b) || len(b) != len(e.zones) || dt <= 0 {
		return 0, false
	}
	var uj float64
	for i := range b {
		switch {
		case b[i] > a[i]:
			uj += float64(b[i] - a[i])
		case b[i] < a[i]:
			m := e.zones[i].maxRange
			if m == 0 || a[i] > m {
				return 0, false // wrapped, but by how much is unknown
			}
			uj += float64(m-a[i]) + float64(b[i])
		default:
			return 0, false
		}
	}
	w := uj / 1e6 / dt.Seconds()
	if w > maxRAPLW {
		return 0, false
	}
	return w, true
}

// batteryReading is what the system batteries say.
type batteryReading struct {
	pct      *float64 // mean charge of the batteries that report it
	charging *bool    // any battery charging; nil when no status is known
	watts    float64  // discharge power, summed
	hasWatts bool
}

// readBatteries reads every battery. Only a discharging battery's power is the
// node's draw: charging, its power_now is what flows into it; full, the node runs
// from mains; so the watts come from discharging batteries only.
func (e *sources) readBatteries() batteryReading {
	var (
		r      batteryReading
		pctSum float64
		pctN   int
	)
	for _, dir := range e.batteries {
		if _, err := os.Stat(dir); err != nil {
			e.stale = true // unplugged
			continue
		}
		if p, ok := batteryPct(dir); ok {
			pctSum += p
			pctN++
		}
		status, _ := readString(filepath.Join(dir, "status"))
		switch status {
		case "Charging":
			r.charging = ptr(true)
		case "Discharging", "Not charging", "Full":
			if r.charging == nil {
				r.charging = ptr(false)
			}
		}
		if status != "Discharging" {
			continue
		}
		if w, ok := batteryWatts(dir); ok {
			r.watts += w
			r.hasWatts = true
		}
	}
	if pctN > 0 {
		r.pct = ptr(clampPct(pctSum / float64(pctN)))
	}
	return r
}

// batteryPct is capacity, or the energy or charge ratio for drivers without it.
func batteryPct(dir string) (float64, bool) {
	if v, err := readInt(filepath.Join(dir, "capacity")); err == nil {
		return clampPct(float64(v)), true
	}
	for _, pair := range [][2]string{{"energy_now", "energy_full"}, {"charge_now", "charge_full"}} {
		now, err1 := readInt(filepath.Join(dir, pair[0]))
		full, err2 := readInt(filepath.Join(dir, pair[1]))
		if err1 == nil && err2 == nil && full > 0 {
			return clampPct(float64(now) / float64(full) * 100), true
		}
	}
	return 0, false
}

// batteryWatts is power_now (µW), else current_now (µA) × voltage_now (µV). Some
// fuel gauges sign the current by direction, so magnitudes are used. Zero is no
// reading: drivers that cannot measure report 0.
func batteryWatts(dir string) (float64, bool) {
	if p, err := readInt(filepath.Join(dir, "power_now")); err == nil && p != 0 {
		return math.Abs(float64(p)) / 1e6, true
	}
	i, err1 := readInt(filepath.Join(dir, "current_now"))
	v, err2 := readInt(filepath.Join(dir, "voltage_now"))
	if err1 != nil || err2 != nil || i == 0 || v == 0 {
		return 0, false
	}
	return math.Abs(float64(i)) * math.Abs(float64(v)) / 1e12, true
}

// energyFor names where the power comes from: RAPL, else a discharging battery,
// else the linear model at r.cpuPct. Battery charge and status are reported
// whenever a battery is present, and solar input whenever a solar entry is,
// whatever the power source.
func (s *Sampler) energyFor(r rates) protocol.Energy {
	b := s.energy.readBatteries()
	en := protocol.Energy{BatteryPct: b.pct, Charging: b.charging, SolarW: s.energy.readSolar()}
	switch {
	case r.raplOK:
		en.Source, en.PowerW = protocol.EnergyRAPL, r.raplW
	case b.hasWatts:
		en.Source, en.PowerW = protocol.EnergyBattery, b.watts
	default:
		en.Source, en.PowerW = protocol.EnergyModel, modelPower(s.cfg.PowerIdleW, s.cfg.PowerMaxW, r.cpuPct)
	}
	return en
}

// modelPower is the linear model P = idle + (max − idle) × cpu%/100.
func modelPower(idleW, maxW, cpuPct float64) float64 {
	return idleW + (maxW-idleW)*clampPct(cpuPct)/100
}

func readString(path string) (string, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return "", err
	}
	return strings.TrimSpace(string(b)), nil
}

func readUint(path string) (uint64, error) {
	s, err := readString(path)
	if err != nil {
		return 0, err
	}
	return strconv.ParseUint(s, 10, 64)
}

func readInt(path string) (int64, error) {
	s, err := readString(path)
	if err != nil {
		return 0, err
	}
	return strconv.ParseInt(s, 10, 64)
}

func ptr[T any](v T) *T { return &v }
