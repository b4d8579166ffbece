package sim

import (
	"math"
	"slices"
	"time"

	"github.com/cloudskin/cloudskin/console/internal/planner"
)

// TrendWindow is how much battery history the fleet view fits its trend
// line through, as the console's placement service does.
const TrendWindow = 30 * time.Minute

// NodeState is a node's truth (the charge) and its telemetry of the last
// minute (what the console sees).
type NodeState struct {
	Wh           float64
	Online       bool
	OfflineSince time.Time
	// Telemetry of the last minute; not updated while offline.
	Pct, SolarW, DrawW, Util float64
	pcts                     []float64 // the last TrendWindow of Pct, oldest first
}

// CellState is where a cell is bound and how it did last minute.
type CellState struct {
	Node    string    // bound to; "" = unplaced
	Since   time.Time // bound since
	LastRan string    // the node it last ran on
	P99     float64   // last minute's p99 (ms); 0 when it did not run or has no SLO
}

// NodeObs is one node-minute of telemetry; NaN while the node was offline
// (it reports nothing).
type NodeObs struct{ Pct, SolarW, DrawW, Util float64 }

// CellObs is one minute of an SLO cell running on a node, as telemetry
// reports it. Minutes in which the cell was restored are not recorded:
// they measure the move, not the node.
type CellObs struct {
	Minute     int // since WarmupStart
	Cell, Node int
	Util       float64 // the node's, with the cell on it
	DistKm     float64 // mean distance to the cell's target, or to its affinity point
	P99        float64
}

// History is everything the console has observed since WarmupStart.
type History struct {
	Nodes [][]NodeObs // per node, per minute
	Cells []CellObs
}

func (h *History) clone() *History {
	c := &History{Nodes: make([][]NodeObs, len(h.Nodes)), Cells: slices.Clip(h.Cells)}
	for i, n := range h.Nodes {
		c.Nodes[i] = slices.Clip(n)
	}
	return c
}

// Tally is what a strategy cost over the evaluated day.
type Tally struct {
	// SLOMinutes are minutes of cells with an SLO over it, not running, or
	// being restored after a move.
	SLOMinutes int
	// DownMinutes are minutes of any cell not running (unplaced, or bound
	// to a node that is offline).
	DownMinutes int
	Depletions  int     // green nodes browning out
	GridWh      float64 // drawn by the grid site
	GreenWh     float64 // drawn by the green sites (from panel and battery)
	Migrations  int     // a cell starting on another node than it last ran on
	// VehicleMigrations are the Migrations of the cell that follows the
	// vehicle.
	VehicleMigrations int
	// VehicleP99 holds the vehicle cell's p99 of each minute it ran,
	// except the minutes it was being restored (counted in SLOMinutes).
	VehicleP99 []float64
	// Reasons counts the Planner's decisions by reason (Planner strategies).
	Reasons map[string]int
	// SLOByCell splits SLOMinutes by cell; Brownouts lists each depletion
	// as "node@15:04".
	SLOByCell map[string]int
	Brownouts []string
}

func (t *Tally) slo(cell string) {
	t.SLOMinutes++
	if t.SLOByCell == nil {
		t.SLOByCell = map[string]int{}
	}
	t.SLOByCell[cell]++
}

// State is the world at Now.
type State struct {
	W     *World
	Now   time.Time
	Nodes []NodeState
	Cells []CellState
	Hist  *History
	// Tally counts from TallyFrom on (Day unless set otherwise).
	TallyFrom time.Time
	Tally     Tally
}

// NewState is the world at the start of the warm-up: batteries at
// InitialPct, every node online, no cell placed.
func NewState(w *World) *State {
	s := &State{W: w, Now: WarmupStart, Nodes: make([]NodeState, len(w.Nodes)), Cells: make([]CellState, len(w.Cells)),
		Hist: &History{Nodes: make([][]NodeObs, len(w.Nodes))}, TallyFrom: Day}
	for i := range w.Nodes {
		n := &s.Nodes[i]
		n.Online = true
		if c := w.Nodes[i].BatteryWh; c > 0 {
			n.Wh = c * InitialPct / 100
			n.Pct = InitialPct
		}
	}
	return s
}

// Clone copies the state; the copy's history grows on its own.
func (s *State) Clone() *State {
	c := *s
	c.Nodes = slices.Clone(s.Nodes)
	for i := range c.Nodes {
		c.Nodes[i].pcts = slices.Clone(s.Nodes[i].pcts)
	}
	c.Cells = slices.Clone(s.Cells)
	c.Hist = s.Hist.clone()
	c.Tally = Tally{}
	return &c
}

// GreenStoredWh is the charge left in the green sites' batteries.
func (s *State) GreenStoredWh() float64 {
	sum := 0.0
	for _, n := range s.Nodes {
		sum += n.Wh
	}
	return sum
}

// Strategy decides where cells run. Plan sees the state at the start of a
// minute (telemetry of the minute before) and returns every cell's node;
// a cell missing from the map is unplaced.
type Strategy interface {
	Name() string
	Plan(s *State) map[string]string
}

// Trend is the least-squares slope of the node's battery charge over the
// last TrendWindow, in percent per hour; 0 with fewer than two readings.
func (n *NodeState) Trend() float64 {
	var k, sx, sy, sxx, sxy float64
	for i, y := range n.pcts {
		x := float64(i-len(n.pcts)+1) * Step.Hours()
		k++
		sx, sy, sxx, sxy = sx+x, sy+y, sxx+x*x, sxy+x*y
	}
	den := k*sxx - sx*sx
	if k < 2 || math.Abs(den) < 1e-12 {
		return 0
	}
	return (k*sxy - sx*sy) / den
}

// Step runs one minute: the strategy plans, its moves take effect, the
// cells run and the batteries charge or drain. Tallies count from Day on.
func (s *State) Step(st Strategy) {
	w, t := s.W, s.Now
	assign := st.Plan(s)
	tally := !t.Before(s.TallyFrom)
	minute := int(minuteOf(t))

	restored := make([]bool, len(s.Cells))
	for i := range s.Cells {
		c := &s.Cells[i]
		to := assign[w.Cells[i].ID]
		if _, ok := w.nodeIdx[to]; !ok {
			to = ""
		}
		if to != c.Node {
			c.Node, c.Since = to, t
		}
	}
	// What runs where this minute.
	busy := make([]float64, len(w.Nodes))
	running := make([]int, len(s.Cells))
	for i := range w.Nodes {
		busy[i] = w.Nodes[i].BaseCores
	}
	for i := range s.Cells {
		c := &s.Cells[i]
		running[i] = -1
		if n, ok := w.nodeIdx[c.Node]; ok && s.Nodes[n].Online {
			running[i] = n
			busy[n] += w.Cells[i].CPU
			if c.LastRan != "" && c.LastRan != c.Node {
				restored[i] = true
				if tally {
					s.Tally.Migrations++
					if w.Cells[i].Target != "" {
						s.Tally.VehicleMigrations++
					}
				}
			}
			c.LastRan = c.Node
		}
	}

	// Cells.
	for i := range s.Cells {
		c, spec, n := &s.Cells[i], &w.Cells[i], running[i]
		c.P99 = 0
		if n < 0 {
			if tally {
				s.Tally.DownMinutes++
				if spec.SLOms > 0 {
					s.Tally.slo(spec.ID)
				}
			}
			continue
		}
		if spec.SLOms == 0 {
			continue
		}
		node := &w.Nodes[n]
		util := min(busy[n]/float64(node.CPUs), 1)
		p99, dist := s.latency(i, n, util)
		if restored[i] {
			p99 = max(p99, MigrationBlipMs)
		} else {
			s.Hist.Cells = append(s.Hist.Cells, CellObs{Minute: minute, Cell: i, Node: n, Util: util, DistKm: dist, P99: p99})
		}
		c.P99 = p99
		if tally {
			if p99 > spec.SLOms {
				s.Tally.slo(spec.ID)
			}
			if spec.Target != "" && !restored[i] {
				s.Tally.VehicleP99 = append(s.Tally.VehicleP99, p99)
			}
		}
	}

	// Energy.
	for i := range s.Nodes {
		ns, spec := &s.Nodes[i], &w.Nodes[i]
		solar := w.SolarW(i, t)
		if spec.BatteryWh == 0 { // grid: always on
			draw := DrawW(spec, busy[i])
			if tally {
				s.Tally.GridWh += draw * Step.Hours()
			}
			ns.Util, ns.DrawW = min(busy[i]/float64(spec.CPUs), 1), draw
			s.Hist.Nodes[i] = append(s.Hist.Nodes[i], NodeObs{Pct: math.NaN(), SolarW: 0, DrawW: draw, Util: ns.Util})
			continue
		}
		if !ns.Online {
			// The battery management has cut the load; the panel charges.
			ns.Wh, _ = StepBattery(ns.Wh, spec.BatteryWh, solar, 0, Step)
			if pct := math.Round(1000*ns.Wh/spec.BatteryWh) / 10; pct >= RecoverPct {
				// Back, reporting afresh: no trend until two readings.
				ns.Online, ns.OfflineSince, ns.pcts = true, time.Time{}, ns.pcts[:0]
				ns.Pct, ns.SolarW, ns.DrawW, ns.Util = pct, solar, 0, 0
			}
			nan := math.NaN()
			s.Hist.Nodes[i] = append(s.Hist.Nodes[i], NodeObs{nan, nan, nan, nan})
			continue
		}
		draw := DrawW(spec, busy[i])
		if tally {
			s.Tally.GreenWh += draw * Step.Hours()
		}
		var flat bool
		ns.Wh, flat = StepBattery(ns.Wh, spec.BatteryWh, solar, draw, Step)
		ns.Pct = math.Round(1000*ns.Wh/spec.BatteryWh) / 10
		ns.SolarW, ns.DrawW, ns.Util = solar, draw, min(busy[i]/float64(spec.CPUs), 1)
		s.Hist.Nodes[i] = append(s.Hist.Nodes[i], NodeObs{Pct: ns.Pct, SolarW: solar, DrawW: draw, Util: ns.Util})
		ns.pcts = append(ns.pcts, ns.Pct)
		if k := int(TrendWindow / Step); len(ns.pcts) > k {
			ns.pcts = append(ns.pcts[:0], ns.pcts[len(ns.pcts)-k:]...)
		}
		if flat {
			ns.Online, ns.OfflineSince = false, t.Add(Step)
			if tally {
				s.Tally.Depletions++
				s.Tally.Brownouts = append(s.Tally.Brownouts, spec.Name+"@"+t.Format("15:04"))
			}
		}
	}
	s.Now = t.Add(Step)
}

// latency is cell i's p99 this minute on node n at utilisation util, and
// its mean distance (km) to what it serves: the vehicle, or its sensors.
func (s *State) latency(i, n int, util float64) (p99, distKm float64) {
	w, t := s.W, s.Now
	spec, node := &w.Cells[i], &w.Nodes[n]
	proc := ProcP99(spec.SvcMs, node.Speed, util)
	var net float64
	switch {
	case spec.Target != "":
		// The p99 of the minute's records is in its worst second.
		sum := 0.0
		for sec := range int(Step / time.Second) {
			d := planner.Distance(w.VehicleAt(t.Add(time.Duration(sec)*time.Second)), node.Pos)
			sum += d
			net = max(net, VehicleNetMs(node, d))
		}
		distKm = sum / Step.Seconds() / 1000
	case spec.Stream != "":
		home := &w.Nodes[w.streamHome(spec.Stream)]
		net = StreamNetMs(home, node)
		if spec.Point != nil {
			distKm = planner.Distance(*spec.Point, node.Pos) / 1000
		}
	}
	noise := math.Exp(LatencyNoise * w.normal(0x1a7, uint64(i), minuteOf(t)))
	return (proc + net) * noise, distKm
}

func (w *World) streamHome(stream string) int {
	for i, n := range w.Nodes {
		if n.Stream == stream {
			return i
		}
	}
	return -1
}

// memFree is node n's free memory with the cells bound to it now.
func (s *State) memFree(n int) int64 {
	spec := &s.W.Nodes[n]
	free := int64(spec.Mem - spec.BaseMem)
	for i, c := range s.Cells {
		if c.Node == spec.Name {
			free -= int64(s.W.Cells[i].Mem)
		}
	}
	return free
}

// PlannerNodes is the fleet as the console's fleet view shows it: the
// telemetry of the last minute, free memory net of bound cells, battery
// and its trend for green nodes.
func (s *State) PlannerNodes() []planner.Node {
	out := make([]planner.Node, len(s.Nodes))
	for i := range s.Nodes {
		ns, spec := &s.Nodes[i], &s.W.Nodes[i]
		pos := spec.Pos
		n := planner.Node{
			Name: spec.Name, Arch: spec.Arch, Labels: map[string]string{planner.LabelSite: "castelloli"},
			Online: ns.Online, OfflineSince: ns.OfflineSince,
			MemTotal: spec.Mem, MemFree: uint64(max(s.memFree(i), 0)), CPUs: spec.CPUs,
			Position: &pos, Power: spec.Power,
		}
		if spec.CoverM > 0 {
			n.Labels[planner.LabelCoverage] = coverLabel(spec.CoverM)
		}
		if spec.Stream != "" {
			n.Streams = []string{spec.Stream}
		}
		if ns.Online {
			n.Load = ns.Util
			if spec.BatteryWh > 0 {
				n.Battery = &planner.Battery{Percent: ns.Pct, TrendPctPerHour: ns.Trend()}
			}
		}
		out[i] = n
	}
	return out
}

// PlannerCells are the cells as the placement service hands them over:
// request, constraints, binding and last minute's p99.
func (s *State) PlannerCells() []planner.Cell {
	out := make([]planner.Cell, len(s.Cells))
	for i := range s.Cells {
		c, spec := &s.Cells[i], &s.W.Cells[i]
		pc := planner.Cell{
			ID: spec.ID, App: spec.App, Module: spec.Module, InputRate: spec.InputRate,
			MemBytes: spec.Mem, CPU: spec.CPU, Node: c.Node, Since: c.Since, LatencySLOms: spec.SLOms,
			Constraints: planner.Constraints{Target: spec.Target, Arch: spec.Arch, Point: spec.Point},
		}
		if spec.Stream != "" {
			pc.InputStreams = []string{spec.Stream}
		}
		if c.P99 > 0 {
			pc.Observed = &planner.Observed{LatencyP99ms: c.P99}
		}
		out[i] = pc
	}
	return out
}

// Targets are the moving targets' positions now.
func (s *State) Targets() map[string]planner.Point {
	return map[string]planner.Point{Vehicle: s.W.VehicleAt(s.Now)}
}
