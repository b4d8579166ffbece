package planner

import (
	"cmp"
	"fmt"
	"math"
	"slices"
	"strconv"
	"strings"
	"time"
)

// naive is the benchmark peer and the test oracle for placements: the same
// filters and scores as the Planner, written the obvious way. For every
// cell it walks every node, reads labels from maps, parses the coverage
// label, computes the haversine, asks the Predictor, keeps every feasible
// node with its scores and sorts them all; only the TopN it records get a
// map. No index, no precomputation, nothing reused between cells. It
// places unplaced cells only (no move rules).
type naive struct {
	cfg  Config
	pred Predictor
}

type naiveCand struct {
	node   *Node
	scores [numScores]float64 // weighted; NaN where the component does not apply
	total  float64
	covers bool
}

func (nv naive) plan(nodes []Node, cells []Cell, targets map[string]Point, now time.Time) (map[string]string, []Decision) {
	sorted := slices.Clone(nodes)
	slices.SortStableFunc(sorted, func(a, b Node) int { return strings.Compare(a.Name, b.Name) })
	var order []*Cell
	for i := range cells {
		if cells[i].Node == "" {
			order = append(order, &cells[i])
		}
	}
	slices.SortFunc(order, func(a, b *Cell) int {
		if c := cmp.Compare(b.MemBytes, a.MemBytes); c != 0 {
			return c
		}
		return strings.Compare(a.ID, b.ID)
	})
	boundMem, boundCPU := map[string]int64{}, map[string]float64{}
	assign := map[string]string{}
	var decisions []Decision
	for _, c := range order {
		var cands []naiveCand
		rejected := map[string]int{}
		for i := range sorted {
			n := &sorted[i]
			if f := nv.filter(n, c, boundMem[n.Name]); f != "" {
				rejected[f]++
				continue
			}
			scores, covers := nv.score(n, c, targets, boundMem[n.Name], boundCPU[n.Name])
			total := 0.0
			for _, v := range scores {
				if !math.IsNaN(v) {
					total += v
				}
			}
			cands = append(cands, naiveCand{n, scores, total, covers})
		}
		if c.Constraints.Target != "" && slices.ContainsFunc(cands, func(x naiveCand) bool { return x.covers }) {
			rejected[FilterCoverage] = len(cands)
			cands = slices.DeleteFunc(cands, func(x naiveCand) bool { return !x.covers })
			rejected[FilterCoverage] -= len(cands)
		}
		slices.SortStableFunc(cands, func(a, b naiveCand) int {
			if c := cmp.Compare(b.total, a.total); c != 0 {
				return c
			}
			return strings.Compare(a.node.Name, b.node.Name)
		})
		d := Decision{Time: now, Cell: c.ID, App: c.App, Kind: KindUnplaceable, Reason: ReasonNew, Feasible: len(cands)}
		for _, f := range filterNames {
			if rejected[f] > 0 {
				d.Rejected = append(d.Rejected, Rejection{Filter: f, Count: rejected[f]})
			}
		}
		for _, x := range cands[:min(len(cands), nv.cfg.TopN)] {
			sc := map[string]float64{}
			for k, v := range x.scores {
				if !math.IsNaN(v) {
					sc[scoreNames[k]] = round2(v)
				}
			}
			d.Candidates = append(d.Candidates, Candidate{Node: x.node.Name, Scores: sc, Total: round2(x.total)})
		}
		if len(cands) == 0 {
			d.Why = fmt.Sprintf("no node can take it; rejected %v", rejected)
		} else {
			w := cands[0]
			d.Kind, d.To = KindPlace, w.node.Name
			d.Why = fmt.Sprintf("%s won with %.1f; rejected %v", w.node.Name, w.total, rejected)
			boundMem[w.node.Name] += int64(c.MemBytes)
			boundCPU[w.node.Name] += max(c.CPU, 0)
			assign[c.ID] = w.node.Name
		}
		decisions = append(decisions, d)
	}
	return assign, decisions
}

func (nv naive) filter(n *Node, c *Cell, bound int64) string {
	k := c.Constraints
	switch {
	case k.Pinned != "" && n.Name != k.Pinned:
		return FilterPinned
	case k.Site != "" && n.Labels[LabelSite] != k.Site:
		return FilterSite
	case k.Arch != "" && n.Arch != k.Arch:
		return FilterArch
	case !n.Online:
		return FilterOnline
	}
	for lk, lv := range k.NodeLabels {
		if v, ok := n.Labels[lk]; !ok || v != lv {
			return FilterLabels
		}
	}
	if int64(n.MemFree)-bound < int64(max(c.MemBytes, k.MinFreeMem)) {
		return FilterMemory
	}
	if n.Power == PowerGreen {
		if h, ok := nv.hours(n); ok && h < nv.cfg.EnergyHorizon.Hours() {
			return FilterEnergy
		}
	}
	return ""
}

func (nv naive) hours(n *Node) (float64, bool) {
	if nv.pred != nil {
		if h, ok := nv.pred.EnergyHours(n.Name); ok {
			return max(h, 0), true
		}
	}
	if n.Battery == nil {
		return 0, false
	}
	if n.Battery.TrendPctPerHour < 0 {
		return max(n.Battery.Percent, 0) / -n.Battery.TrendPctPerHour, true
	}
	return math.Inf(1), true
}

func (nv naive) score(n *Node, c *Cell, targets map[string]Point, boundMem int64, boundCPU float64) ([numScores]float64, bool) {
	cfg := nv.cfg
	w := cfg.Weights
	var s [numScores]float64
	for k := range s {
		s[k] = math.NaN()
	}
	cpus := float64(max(n.CPUs, 1))
	ld := clamp01(n.Load)
	if w.Capacity > 0 {
		m := float64(max(int64(n.MemFree)-boundMem-int64(c.MemBytes), 0))
		cf := max((1-ld)*cpus-boundCPU-c.CPU, 0)
		s[sCapacity] = w.Capacity * (0.5*m/(m+float64(cfg.MemScale)) + 0.5*cf/(cf+cfg.CPUScale))
	}
	if w.Load > 0 {
		s[sLoad] = w.Load * (1 - clamp01(ld+(boundCPU+c.CPU)/cpus))
	}
	if w.Locality > 0 && len(c.InputStreams) > 0 {
		held := 0
		for _, st := range c.InputStreams {
			if slices.Contains(n.Streams, st) {
				held++
			}
		}
		s[sLocality] = w.Locality * min(1, float64(held)/float64(len(c.InputStreams)))
	}
	covers := false
	var aff *Point
	if pt, ok := targets[c.Constraints.Target]; c.Constraints.Target != "" && ok && pt.valid() {
		aff = &pt
	} else if c.Constraints.Point != nil && c.Constraints.Point.valid() {
		aff = c.Constraints.Point
	}
	if aff != nil {
		raw := 0.0
		if n.Position != nil && n.Position.valid() {
			d := Distance(*n.Position, *aff)
			cov, err := strconv.ParseFloat(n.Labels[LabelCoverage], 64)
			if err != nil || cov <= 0 || math.IsInf(cov, 0) {
				cov = 0
			}
			if cov > 0 && d <= cov {
				raw, covers = 1, c.Constraints.Target != "" && aff != c.Constraints.Point
			} else {
				raw = cfg.DistanceScale / (cfg.DistanceScale + max(d-cov, 0))
			}
		}
		if w.Distance > 0 {
			s[sDistance] = w.Distance * raw
		}
	}
	if w.Energy > 0 {
		out := 1.0
		if n.Power == PowerGreen {
			out = 0.5
			if h, ok := nv.hours(n); ok {
				out = min(1, h/cfg.EnergyFullHours)
				if n.Battery != nil {
					out = 0.8*out + 0.2*clamp01(n.Battery.Percent/100)
				}
			}
		}
		green := n.Power == PowerGreen
		if (c.Constraints.Power == PowerGreen && !green) || (c.Constraints.Power == PowerGrid && green) {
			out *= cfg.PowerMismatch
		}
		s[sEnergy] = w.Energy * out
	}
	if w.Latency > 0 && c.LatencySLOms > 0 && (nv.pred != nil || c.Observed != nil) {
		raw := 0.5
		if nv.pred != nil {
			if ms, ok := nv.pred.LatencyMs(*c, *n); ok {
				raw = clamp01(1.5 - ms/c.LatencySLOms)
			}
		}
		s[sLatency] = w.Latency * raw
	}
	return s, covers
}

// firstFit is the other peer, a floor: the first node by name that passes
// the same filters takes the cell; nothing is scored or explained.
func firstFit(cfg Config, nodes []Node, cells []Cell) map[string]string {
	nv := naive{cfg: cfg}
	sorted := slices.Clone(nodes)
	slices.SortStableFunc(sorted, func(a, b Node) int { return strings.Compare(a.Name, b.Name) })
	bound := map[string]int64{}
	assign := map[string]string{}
	for i := range cells {
		c := &cells[i]
		for j := range sorted {
			n := &sorted[j]
			if nv.filter(n, c, bound[n.Name]) == "" {
				bound[n.Name] += int64(c.MemBytes)
				assign[c.ID] = n.Name
				break
			}
		}
	}
	return assign
}
