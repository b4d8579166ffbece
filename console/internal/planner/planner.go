// Package planner decides where cells run across the fleet and when they
// move: filters reject nodes a cell cannot use, named and weighted score
// components rank the rest, the best node is bound, and every decision is
// recorded with its candidates and a sentence saying why.
//
// It is pure: nodes, cells and targets go in as plain values, placements and
// decisions come out. It knows nothing of the database or HTTP.
package planner

import (
	"cmp"
	"fmt"
	"slices"
	"strings"
	"time"
)

// Planner makes placement decisions. It keeps no state between calls, so one
// Planner may serve concurrent calls if its Predictor is safe for them.
type Planner struct {
	cfg  Config
	w    [numScores]float64
	pred Predictor
}

// New returns a Planner for cfg. pred may be nil: no predictions, the
// Planner uses telemetry only.
func New(cfg Config, pred Predictor) (*Planner, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	w := cfg.Weights
	return &Planner{
		cfg:  cfg,
		w:    [numScores]float64{w.Capacity, w.Load, w.Locality, w.Distance, w.Energy, w.Latency},
		pred: pred,
	}, nil
}

// Config returns the Planner's configuration.
func (p *Planner) Config() Config { return p.cfg }

// Plan makes a full plan for the fleet. It returns where every cell should
// run (cells missing from the map have no node: each has an "unplaceable"
// decision) and the decisions taken. Cells that stay where they run have
// no decision.
//
// Placed cells stay unless a move rule fires. The rules, in the order they
// are tried for a cell and, across cells, the order moves are made (by cell
// ID within a rule):
//
//  1. node-offline: its node has been offline for OfflineGrace, or is gone.
//  2. pinned: it is pinned to another node.
//  3. constraints: its node no longer has its arch, labels or site.
//  4. energy: its node is green and its energy will not last EnergyHorizon;
//     grid nodes are preferred.
//  5. follow-target: its moving target is outside its node's coverage
//     (widened by CoverageSlack).
//  6. slo: its observed p99 latency is above its SLO.
//  7. overload: its node's load is above OverloadLoad; the node's cells are
//     tried largest CPU first until it is projected back under it.
//
// Rules 1–3 always move the cell if any node can take it. Rules 4–7 move it
// only once it has run MinResidence on its node. Moves made only for a
// better score — slo, overload, and follow-target when no feasible node
// covers the target — also need the best node to beat staying by
// MoveMargin points, and for slo and overload the destination must stay
// under OverloadTarget. Energy moves and follow-target moves into a
// covering node need no margin, since the current node fails a filter for
// the cell; they cannot ping-pong either, because an energy move goes to a
// node whose energy lasts the horizon (grid first) and a cell leaves a
// covering node only once the target is CoverageSlack beyond its radius.
//
// A cell that must move by rules 1–3, or whose node is dying of energy, gets
// an "unplaceable" decision when no node can take it; it keeps running
// where it is unless that node is offline. Other rules that find no better
// node leave the cell where it is without a decision.
//
// Then unplaced cells are bound one by one, largest memory request first
// (ties by ID), each seeing the memory and CPU bound before it. The same
// input, in any order, always gives the same output.
func (p *Planner) Plan(nodes []Node, cells []Cell, targets map[string]Point, now time.Time) (map[string]string, []Decision) {
	vw := p.View(nodes, targets, now)
	assign := make(map[string]string, len(cells))
	var moves []pending
	var fresh []*Cell
	for i := range cells {
		c := &cells[i]
		if c.Node == "" {
			fresh = append(fresh, c)
			continue
		}
		pm := vw.trigger(c)
		if pm.reason == "" {
			assign[c.ID] = c.Node
			continue
		}
		moves = append(moves, pm)
	}
	decisions := make([]Decision, 0, len(moves)+len(fresh))
	record := func(c *Cell, to string, d *Decision) {
		if to != "" {
			assign[c.ID] = to
		}
		if d != nil {
			decisions = append(decisions, *d)
		}
	}
	slices.SortFunc(moves, func(a, b pending) int {
		if c := cmp.Compare(a.prio, b.prio); c != 0 {
			return c
		}
		if a.reason == ReasonOverload {
			// Shed the biggest CPU users of each overloaded node first.
			if c := cmp.Compare(a.cur, b.cur); c != 0 {
				return c
			}
			if c := cmp.Compare(b.cell.CPU, a.cell.CPU); c != 0 {
				return c
			}
		}
		return strings.Compare(a.cell.ID, b.cell.ID)
	})
	for _, pm := range moves {
		c := pm.cell
		if pm.reason == ReasonOverload {
			n := &vw.f.nodes[pm.cur]
			if n.load-n.cpuOut/n.cpus <= p.cfg.OverloadLoad {
				assign[c.ID] = c.Node // enough cells already left
				continue
			}
		}
		to, d := vw.relocate(c, pm.cur, pm.reason, pm.trigger)
		if to == "" && pm.cur >= 0 && vw.usable(pm.cur) {
			to = c.Node
		}
		record(c, to, d)
	}

	slices.SortFunc(fresh, func(a, b *Cell) int {
		if c := cmp.Compare(b.MemBytes, a.MemBytes); c != 0 {
			return c
		}
		return strings.Compare(a.ID, b.ID)
	})
	for _, c := range fresh {
		to, d := vw.relocate(c, none, ReasonNew, "")
		record(c, to, d)
	}
	return assign, decisions
}

// Place decides for one cell, against the fleet as the nodes describe it;
// see View.Place.
func (p *Planner) Place(nodes []Node, cell Cell, targets map[string]Point, now time.Time) Decision {
	return p.View(nodes, targets, now).Place(cell)
}

// View is the fleet prepared for a series of decisions: each node's
// figures worked out once, plus what the decisions taken on it have bound.
// Placing a burst of cells one by one on one View costs a fraction of
// separate Place calls, and each cell sees the capacity the ones before it
// took. A View reads the nodes it was made from until it is dropped, so
// they must not change meanwhile; it is not safe for concurrent use.
type View struct {
	p       *Planner
	f       *fleet
	s       *scratch
	targets map[string]Point
	now     time.Time
}

// View prepares the fleet for decisions at time now; targets holds the
// moving targets' positions.
func (p *Planner) View(nodes []Node, targets map[string]Point, now time.Time) *View {
	f := p.newFleet(nodes, now)
	return &View{p: p, f: f, s: newScratch(p.cfg.TopN, len(f.nodes)), targets: targets, now: now}
}

// Place decides for one cell and binds the winner in the view. For an
// unplaced cell it is a placement (reason "new"). For a placed cell it is
// an operator's migrate without a destination (reason "manual"): any node
// but the current one, with no margin and no residence. The decision's To
// is the chosen node; Kind is "unplaceable" when there is none.
func (vw *View) Place(cell Cell) Decision {
	reason, cur, trig := ReasonNew, none, ""
	if cell.Node != "" {
		reason, trig = ReasonManual, "an operator asked to migrate it"
		if i, ok := vw.f.index(cell.Node); ok {
			cur = i
		}
	}
	_, d := vw.relocate(&cell, cur, reason, trig)
	return *d
}

// usable says whether a cell on node i may keep running there.
func (vw *View) usable(i int) bool {
	n := &vw.f.nodes[i]
	return n.online || (n.offlineFor >= 0 && n.offlineFor < vw.p.cfg.OfflineGrace)
}

// pending is a placed cell a move rule fired for.
type pending struct {
	cell    *Cell
	cur     int // its node's index, none if the node is gone
	reason  string
	trigger string // what fired, for people
	prio    int
}

var rulePrio = map[string]int{
	ReasonNodeOffline: 0, ReasonPinned: 1, ReasonConstraints: 2, ReasonEnergy: 3,
	ReasonFollowTarget: 4, ReasonSLO: 5, ReasonOverload: 6,
}

// trigger finds the first move rule that fires for a placed cell.
func (vw *View) trigger(c *Cell) pending {
	p, f := vw.p, vw.f
	pm := pending{cell: c, cur: none}
	fire := func(reason, format string, args ...any) pending {
		pm.reason, pm.trigger, pm.prio = reason, fmt.Sprintf(format, args...), rulePrio[reason]
		return pm
	}
	cur, ok := f.index(c.Node)
	if !ok {
		return fire(ReasonNodeOffline, "%s is not in the fleet", c.Node)
	}
	pm.cur = cur
	n := &f.nodes[cur]
	if !n.online {
		if vw.usable(cur) {
			return pm // within the grace: it may come back
		}
		return fire(ReasonNodeOffline, "%s %s (grace %s)", n.name, offlineText(n), p.cfg.OfflineGrace)
	}
	k := &c.Constraints
	if k.Pinned != "" && k.Pinned != c.Node {
		return fire(ReasonPinned, "it is pinned to %s", k.Pinned)
	}
	if why := mismatch(n, c); why != "" {
		return fire(ReasonConstraints, "%s no longer fits (%s)", n.name, why)
	}
	if !c.Since.IsZero() && vw.now.Sub(c.Since) < p.cfg.MinResidence {
		return pm
	}
	if !n.energyOK {
		return fire(ReasonEnergy, "%s: %s", n.name, p.energyShort(n))
	}
	if pt, ok := vw.targets[k.Target]; k.Target != "" && ok && pt.valid() {
		switch {
		case !n.hasPos:
			return fire(ReasonFollowTarget, "%s has no position to follow target %s", n.name, k.Target)
		case n.coverM == 0:
			return fire(ReasonFollowTarget, "%s has no coverage radius to follow target %s", n.name, k.Target)
		default:
			d := chordMetres(chord2(n.pos, unitVec(pt)))
			if d > n.coverM*(1+p.cfg.CoverageSlack) {
				return fire(ReasonFollowTarget, "target %s is %s from %s, outside its %s coverage",
					k.Target, metres(d), n.name, metres(n.coverM))
			}
		}
	}
	if o := c.Observed; c.LatencySLOms > 0 && o != nil && o.LatencyP99ms > c.LatencySLOms {
		return fire(ReasonSLO, "p99 %s > %s SLO", millis(o.LatencyP99ms), millis(c.LatencySLOms))
	}
	if n.load > p.cfg.OverloadLoad {
		return fire(ReasonOverload, "%s load %s > %s", n.name, percent(n.load), percent(p.cfg.OverloadLoad))
	}
	return pm
}

// mismatch says why node n no longer suits the cell's hard constraints,
// or "" if it does.
func mismatch(n *nodeInfo, c *Cell) string {
	k := &c.Constraints
	if k.Site != "" && n.node.Labels[LabelSite] != k.Site {
		return siteText(n, k.Site)
	}
	if k.Arch != "" && n.node.Arch != k.Arch {
		return archText(n, k.Arch)
	}
	if len(k.NodeLabels) > 0 && !hasLabels(n.node.Labels, k.NodeLabels) {
		return labelsText(n, k.NodeLabels)
	}
	return ""
}

// relocate finds a node for the cell — a new one, or another than cur —
// and binds it. It returns the node ("" if the cell does not move) and the
// decision (nil for an optional move that did not happen).
func (vw *View) relocate(c *Cell, cur int, reason, trig string) (string, *Decision) {
	p, f, s := vw.p, vw.f, vw.s
	r := p.prepare(f, c, vw.targets, s.streams)
	s.streams = r.streams
	r.exclude = cur
	p.evaluate(f, &r, mode{
		headroom:   reason == ReasonOverload || reason == ReasonSLO,
		preferGrid: reason == ReasonEnergy,
	}, s)
	optional := reason == ReasonEnergy || reason == ReasonFollowTarget || reason == ReasonSLO || reason == ReasonOverload
	// The margin guards moves made only for a better score. A cell whose
	// node fails a filter for it — energy below the horizon, a target that
	// another node covers — leaves without one.
	margin := reason == ReasonSLO || reason == ReasonOverload || (reason == ReasonFollowTarget && !s.covering)

	var stay entry
	if cur >= 0 {
		stay.node = int32(cur)
		stay.total, _ = p.score(&f.nodes[cur], &r, heldBy(&r, cur), true, &stay.parts)
	}
	if len(s.top) == 0 {
		if optional && reason != ReasonEnergy {
			return "", nil
		}
		d := vw.decide(&r, KindUnplaceable, reason, trig, cur, &stay, false)
		return "", &d
	}
	win := s.top[0]
	if margin && win.total < stay.total+p.cfg.MoveMargin {
		return "", nil
	}
	kind := KindPlace
	if c.Node != "" {
		kind = KindMove
	}
	d := vw.decide(&r, kind, reason, trig, cur, &stay, margin)
	n := &f.nodes[win.node]
	n.boundMem += r.mem
	n.boundCPU += r.cpu
	if cur >= 0 {
		f.nodes[cur].cpuOut += r.cpu
	}
	return n.name, &d
}

// heldBy counts the cell's input streams node i holds.
func heldBy(r *cellReq, i int) int {
	held := 0
	for _, l := range r.streams {
		if _, ok := slices.BinarySearch(l, int32(i)); ok {
			held++
		}
	}
	return held
}
