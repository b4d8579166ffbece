// Package sim plays a day at the Castellolí circuit (seed use case 1) minute
// by minute: solar-powered green nodes and a grid site along a track, a
// vehicle lapping it with an analytics cell that follows it, sensor and
// batch cells, batteries that charge and brown out. Placement strategies —
// the real Planner with and without the learning plane's Predictor, round
// robin and least loaded — run against the same world, and the package
// reports what each costs in SLO minutes, brown-outs, grid energy and
// migrations.
//
// Neither real trace is from Castellolí: the irradiance is PVGIS's typical
// year for Piedmont (45°N 8°E, a similar latitude and climate) and the track
// is a 20-minute drive recorded in Munich. They stand in for the circuit's
// sky and a test vehicle's laps; see testdata/SOURCE.txt.
package sim

import (
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"math"
	"strconv"
	"time"

	"github.com/cloudskin/cloudskin/console/internal/planner"
)

// The calendar. The PVGIS typical year takes October from 2006, so these
// are eight real consecutive days of Piedmont weather (daily irradiation,
// kWh/m²): 13th 3.9, 14th 3.1, 15th 2.8, 16th 4.0, 17th 3.5, 18th 2.0,
// 19th 0.7 — the warm-up week, the history the learning plane trains on —
// and the evaluated day, the 20th, 1.2: the second day of a six-day cloudy
// spell (18th–23rd) in autumn, when a green node's panel gives a third of a
// fair day's energy and which cells a node carries decides whether its
// battery lasts the night. A summer day would make the question moot (every
// battery full by noon); a winter one would make it hopeless.
var (
	// Day is the evaluated day (00:00 UTC).
	Day = time.Date(2006, 10, 20, 0, 0, 0, 0, time.UTC)
	// WarmupStart is the first warm-up day.
	WarmupStart = Day.AddDate(0, 0, -WarmupDays)
)

const (
	// WarmupDays of history before the evaluated day: a week gives the
	// solar forecast 7 daily periods (2 to fit, 1 held out, and more to
	// settle) and the latency model tens of thousands of samples.
	WarmupDays = 7
	// Step is the simulation's and the Planner's tick. The console plans
	// every 5 s; a minute keeps a day at 1,440 plans per strategy and is
	// still shorter than MinResidence, so the Planner's own rules, not the
	// tick, limit how fast cells move.
	Step = time.Minute
	// Vehicle is the moving target's id.
	Vehicle = "car-1"
)

// Energy constants.
const (
	// PerformanceRatio turns a panel's peak watts and the horizontal
	// irradiance into DC power: inverter/charger, temperature, soiling and
	// wiring losses (0.75–0.85 is typical; the lower end because the
	// panels' tilt is ignored, and horizontal is what the data gives).
	PerformanceRatio = 0.75
	// ChargeEfficiency is the share of surplus solar power that reaches
	// the battery (LiFePO4 with an MPPT charger).
	ChargeEfficiency = 0.95
	// SolarNoise is the per-minute relative noise of a panel's output
	// around the hourly trace: passing clouds the hourly means smooth out.
	SolarNoise = 0.05
	// InitialPct is every green battery's charge when the warm-up starts.
	InitialPct = 80
	// RecoverPct is where a browned-out node's battery management
	// reconnects the load: a low-voltage disconnect with hysteresis, so a
	// node that ran flat comes back only after real charging.
	RecoverPct = 30
)

// Latency constants (the ground truth; the strategies never read them).
const (
	// TailFactor is ln(100): the p99 of an M/M/1 response time is
	// ln(100)·S/(1−ρ) for mean service time S at utilisation ρ.
	TailFactor = 4.6
	// UtilCap keeps the queueing term finite on a saturated node (its
	// latency is then 33× the idle one, well past every SLO).
	UtilCap = 0.97
	// LatencyNoise is the per-minute log-normal noise of a cell's p99.
	LatencyNoise = 0.08
	// MigrationBlipMs is the p99 of a minute in which a cell was
	// checkpointed and restored elsewhere: a pause of about 2 s, which
	// breaks any SLO for that minute.
	MigrationBlipMs = 2000

	// A vehicle reaches a green node over the node's own radio while it is
	// inside the node's coverage: RadioMs at the node, RadioEdgeMs more at
	// the edge of the coverage.
	RadioMs     = 2
	RadioEdgeMs = 3
	// Outside a green node's coverage the vehicle reaches it through the
	// public 5G macro cell, the operator's backhaul and the site's
	// microwave link: MacroMs plus MacroPerKmMs per km beyond coverage.
	MacroMs      = 22
	MacroPerKmMs = 4
	// BackhaulMs is the vehicle to the grid site: macro cell and fibre to
	// the control room, wherever the vehicle is.
	BackhaulMs = 18
	// A sensor stream is read where it is held in LocalMs, from another
	// green site over the sites' radio mesh in MeshMs plus MeshPerKmMs per
	// km, and from the grid site over the green site's uplink in UplinkMs.
	LocalMs     = 0.5
	MeshMs      = 6
	MeshPerKmMs = 2
	UplinkMs    = 10
)

// NodeSpec is a node's hardware, energy system and place.
type NodeSpec struct {
	Name  string
	Arch  string
	Power string // planner.PowerGreen | planner.PowerGrid
	CPUs  int
	Mem   uint64
	// BaseMem and BaseCores are what the site's own services use: camera
	// ingest and radio control on a green site, other tenants on the grid.
	BaseMem   uint64
	BaseCores float64
	// Speed multiplies a cell's service time (1 = a green site's x86 core).
	Speed float64
	// IdleW is the site's draw with no cells (server, radio unit,
	// cameras); CoreW is added per busy core.
	IdleW, CoreW float64
	PanelWp      float64 // 0 on the grid
	BatteryWh    float64 // 0 on the grid
	Pos          planner.Point
	CoverM       float64 // radio coverage radius; 0 = none
	Stream       string  // the sensor stream the node holds; "" = none
}

// CellSpec is a cell's request and its performance truth.
type CellSpec struct {
	ID, App, Module string
	CPU             float64 // cores, requested and used
	Mem             uint64
	InputRate       float64 // records/s
	SLOms           float64 // p99; 0 = none
	// SvcMs is the mean service time per record on a green site's x86
	// core; only cells with an SLO have a latency.
	SvcMs  float64
	Target string         // moving target followed
	Stream string         // input stream
	Point  *planner.Point // affinity: where the cell's sensors are
	Arch   string         // required arch
}

const (
	mib = uint64(1) << 20
	gib = uint64(1) << 30
)

// Hardware. Green sites are the D2.1 "green nodes": a radio unit, cameras
// and a server on one panel and battery, never on the grid (they cannot
// grid-charge). Three carry an SE350-class x86 server: 8 threads, idle
// 45 W plus 15 W for radio and cameras, 10 W per busy thread, a 1.2 kWp
// panel and a 3.6 kWh LiFePO4 battery (48 V, 75 Ah). Two carry an
// RK3588-class arm64 board: 8 cores, 1.5× slower per record, 6 W plus the
// same 15 W, 2 W per busy core, 450 Wp and 1.2 kWh. Either battery holds
// about 2.3 days of its site's idle draw; on a fair October day the panel
// gives twice or more the idle draw, on the evaluated day two thirds of it,
// so an idle site outlasts a few cloudy days and a loaded one does not
// (TestEnergyIsScarce). The grid site is the control room's pair of SR650s
// (64 threads, cores 0.7× the service time, 300 W idle, 6 W per busy
// thread) which also run the circuit's own services (timing, broadcast,
// VDI): 60% of it is busy before any cell arrives, which is what keeps
// "send everything to the grid" from being free. Coverage is a C-V2X/5G
// small cell's 1 km. TestFairDayCalibration checks that these figures let
// the Planner keep every SLO on a fair day.
var (
	greenX86 = NodeSpec{
		Arch: "amd64", Power: planner.PowerGreen, CPUs: 8, Mem: 32 * gib, BaseMem: 6 * gib, BaseCores: 0.5,
		Speed: 1, IdleW: 60, CoreW: 10, PanelWp: 1200, BatteryWh: 3600, CoverM: 1000,
	}
	greenARM = NodeSpec{
		Arch: "arm64", Power: planner.PowerGreen, CPUs: 8, Mem: 16 * gib, BaseMem: 2 * gib, BaseCores: 0.3,
		Speed: 1.5, IdleW: 21, CoreW: 2, PanelWp: 450, BatteryWh: 1200, CoverM: 1000,
	}
	gridSite = NodeSpec{
		Name: "grid-dc", Arch: "amd64", Power: planner.PowerGrid, CPUs: 64, Mem: 256 * gib, BaseMem: 160 * gib,
		BaseCores: 38.4, Speed: 0.7, IdleW: 300, CoreW: 6,
	}
)

// GreenFractions place the green sites along the forward pass of the
// track (by distance), evenly, the first and last 10% in from the ends;
// GridOffsetM puts the grid site that far north of the track's midpoint.
var GreenFractions = []float64{0.1, 0.3, 0.5, 0.7, 0.9}

const GridOffsetM = 1500

// World is everything fixed for a run: nodes, cells, the sky and the track.
type World struct {
	Seed  uint64
	Nodes []NodeSpec
	Cells []CellSpec
	Irr   *Irradiance
	Track *Track
	// LapOffset is where on its lap (seconds) the vehicle is at the start
	// of the warm-up; it varies with the seed.
	LapOffset int
	nodeIdx   map[string]int
	cellIdx   map[string]int
}

// NewWorld builds the circuit on the track: green sites along it
// alternating x86 and arm64 boards, the grid site off it, and the cells.
func NewWorld(irr *Irradiance, tr *Track, seed uint64) *World {
	w := &World{Seed: seed, Irr: irr, Track: tr}
	for i, f := range GreenFractions {
		n := greenX86
		if i%2 == 1 {
			n = greenARM
		}
		n.Name = fmt.Sprintf("green-%d", i+1)
		n.Pos = tr.AlongTrack(f)
		n.Stream = "sensors." + n.Name
		w.Nodes = append(w.Nodes, n)
	}
	g := gridSite
	g.Pos = offset(tr.AlongTrack(0.5), GridOffsetM, 0)
	w.Nodes = append(w.Nodes, g)

	// The vehicle's analytics: telemetry, CAN and video metadata at 50
	// records/s; a 50 ms p99 keeps alerts to the pit wall near real time
	// (the car's own control loops stay on board). A minute's p99 is that
	// of its worst second, since the vehicle moves ~700 m a minute.
	w.Cells = append(w.Cells, CellSpec{
		ID: Vehicle + "-analytics", App: "vehicle-analytics", Module: digest("vehicle-analytics"),
		CPU: 1.5, Mem: 1 * gib, InputRate: 50, SLOms: 50, SvcMs: 2, Target: Vehicle,
	})
	// Each green site's sensor analytics (cameras, weather, track
	// sensors), 60 ms p99: it reads the stream its site holds, and its
	// sensors are at the site (its affinity point), so it is happiest
	// there.
	for _, n := range w.Nodes {
		if n.Stream == "" {
			continue
		}
		p := n.Pos
		w.Cells = append(w.Cells, CellSpec{
			ID: "sensors-" + n.Name, App: "sensor-analytics", Module: digest("sensor-analytics"),
			CPU: 1, Mem: 512 * mib, InputRate: 20, SLOms: 60, SvcMs: 3, Stream: n.Stream, Point: &p,
		})
	}
	// Batch work with no deadline: lap statistics, video summaries (built
	// with x86 SIMD, so amd64 only) and a tyre-wear model.
	w.Cells = append(w.Cells,
		CellSpec{ID: "batch-laps", App: "lap-stats", Module: digest("lap-stats"), CPU: 1, Mem: 1 * gib, InputRate: 5},
		CellSpec{ID: "batch-video", App: "video-summary", Module: digest("video-summary"), CPU: 2, Mem: 4 * gib, InputRate: 2, Arch: "amd64"},
		CellSpec{ID: "batch-tyre", App: "tyre-model", Module: digest("tyre-model"), CPU: 2, Mem: 2 * gib, InputRate: 1},
	)
	w.LapOffset = int(hash(seed, 0xa11, 0, 0) % uint64(2*tr.Pass()/time.Second))
	w.index()
	return w
}

func (w *World) index() {
	w.nodeIdx = make(map[string]int, len(w.Nodes))
	for i, n := range w.Nodes {
		w.nodeIdx[n.Name] = i
	}
	w.cellIdx = make(map[string]int, len(w.Cells))
	for i, c := range w.Cells {
		w.cellIdx[c.ID] = i
	}
}

// NodeIndex finds a node by name.
func (w *World) NodeIndex(name string) (int, bool) {
	i, ok := w.nodeIdx[name]
	return i, ok
}

// digest is a stand-in module digest: sha256 of the app name.
func digest(app string) string {
	s := sha256.Sum256([]byte(app))
	return "sha256:" + hex.EncodeToString(s[:])
}

// VehicleAt is the vehicle's position at t.
func (w *World) VehicleAt(t time.Time) planner.Point {
	return w.Track.At(int(t.Sub(WarmupStart)/time.Second) + w.LapOffset)
}

// SolarW is node n's panel output at t (ground truth, with its minute's
// noise), 0 on the grid.
func (w *World) SolarW(n int, t time.Time) float64 {
	spec := &w.Nodes[n]
	if spec.PanelWp == 0 {
		return 0
	}
	g := w.Irr.At(t)
	if g <= 0 {
		return 0
	}
	return max(0, spec.PanelWp*g/1000*PerformanceRatio*(1+SolarNoise*w.normal(0x501a, uint64(n), minuteOf(t))))
}

// DrawW is a node's power draw with busy cores in use.
func DrawW(spec *NodeSpec, busy float64) float64 {
	return spec.IdleW + spec.CoreW*min(busy, float64(spec.CPUs))
}

// StepBattery moves a battery holding wh (of capWh) through dt of solar
// and draw: surplus charges at ChargeEfficiency up to full, a deficit
// drains it down to 0. It returns the new charge and whether it ran flat.
func StepBattery(wh, capWh, solarW, drawW float64, dt time.Duration) (float64, bool) {
	net := (solarW - drawW) * dt.Hours()
	if net > 0 {
		net *= ChargeEfficiency
	}
	wh += net
	if wh <= 0 {
		return 0, true
	}
	return min(wh, capWh), false
}

// ProcP99 is the processing part of a cell's p99 (ms): M/M/1 with mean
// service time svcMs·speed at node utilisation util.
func ProcP99(svcMs, speed, util float64) float64 {
	u := min(max(util, 0), UtilCap)
	return TailFactor * svcMs * speed / (1 - u)
}

// VehicleNetMs is the network latency from the vehicle d metres from node
// spec to that node.
func VehicleNetMs(spec *NodeSpec, d float64) float64 {
	switch {
	case spec.Power != planner.PowerGreen:
		return BackhaulMs
	case spec.CoverM > 0 && d <= spec.CoverM:
		return RadioMs + RadioEdgeMs*d/spec.CoverM
	default:
		return MacroMs + MacroPerKmMs*(d-spec.CoverM)/1000
	}
}

// StreamNetMs is the latency of reading a stream held by node from on
// node to.
func StreamNetMs(from, to *NodeSpec) float64 {
	switch {
	case from.Name == to.Name:
		return LocalMs
	case to.Power != planner.PowerGreen || from.Power != planner.PowerGreen:
		return UplinkMs
	default:
		return MeshMs + MeshPerKmMs*planner.Distance(from.Pos, to.Pos)/1000
	}
}

// minuteOf numbers the minutes from the warm-up start.
func minuteOf(t time.Time) uint64 { return uint64(t.Sub(WarmupStart) / time.Minute) }

// Noise is common to every strategy: a draw depends only on the seed and
// what it is for (kind, which node or cell, which minute), never on the
// order of calls, so two strategies see the same sky and the same jitter
// where they make the same choices.

func hash(seed, kind, a, b uint64) uint64 {
	x := seed*0x9e3779b97f4a7c15 ^ kind*0xbf58476d1ce4e5b9 ^ a*0x94d049bb133111eb ^ b*0x2545f4914f6cdd1d
	// splitmix64's finaliser, twice: every input bit reaches every output.
	for range 2 {
		x += 0x9e3779b97f4a7c15
		x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9
		x = (x ^ (x >> 27)) * 0x94d049bb133111eb
		x ^= x >> 31
	}
	return x
}

func (w *World) uniform(kind, a, b uint64) float64 {
	return (float64(hash(w.Seed, kind, a, b)>>11) + 0.5) / (1 << 53)
}

// normal is a standard normal draw (Box–Muller).
func (w *World) normal(kind, a, b uint64) float64 {
	u1, u2 := w.uniform(kind, a, b), w.uniform(kind^0xffff, a, b)
	return math.Sqrt(-2*math.Log(u1)) * math.Cos(2*math.Pi*u2)
}

func coverLabel(m float64) string { return strconv.Itoa(int(m)) }
