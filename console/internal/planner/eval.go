package planner

import "math"

// Score components, indexes into weight and score arrays.
const (
	sCapacity = iota
	sLoad
	sLocality
	sDistance
	sEnergy
	sLatency
	numScores
)

var scoreNames = [numScores]string{ScoreCapacity, ScoreLoad, ScoreLocality, ScoreDistance, ScoreEnergy, ScoreLatency}

// Filters, in the order they apply.
const (
	fPinned = iota
	fSite
	fArch
	fCurrent
	fOnline
	fLabels
	fMemory
	fEnergy
	fHeadroom
	fCoverage
	fGrid
	numFilters
)

var filterNames = [numFilters]string{FilterPinned, FilterSite, FilterArch, FilterCurrent, FilterOnline,
	FilterLabels, FilterMemory, FilterEnergy, FilterHeadroom, FilterCoverage, FilterGrid}

// mode says which move rule an evaluation serves.
type mode struct {
	headroom   bool // overload/slo: the destination must stay under OverloadTarget
	preferGrid bool // energy: grid nodes first
}

// entry is a feasible node, its total and its raw component scores.
type entry struct {
	node  int32
	total float64
	parts [numScores]float64
}

// better orders entries best first; equal totals go to the node first by name.
func better(a, b *entry) bool {
	return a.total > b.total || (a.total == b.total && a.node < b.node)
}

// topList keeps the best n entries, best first. n is small (TopN), so an
// insertion into a sorted array beats a heap and never allocates.
type topList struct{ e []entry }

func (t *topList) push(e *entry, n int) {
	if len(t.e) == n {
		if !better(e, &t.e[n-1]) {
			return
		}
		t.e = t.e[:n-1]
	}
	t.e = append(t.e, *e)
	for j := len(t.e) - 1; j > 0 && better(&t.e[j], &t.e[j-1]); j-- {
		t.e[j], t.e[j-1] = t.e[j-1], t.e[j]
	}
}

// Candidate classes for the conditional filters: bit 0 = covers the
// target, bit 1 = grid power (energy moves only).
const numClasses = 4

// scratch is reused across the cells of one plan.
type scratch struct {
	n        int
	loc      []uint16 // input streams held, per node
	streams  [][]int32
	one      [1]int32
	class    [numClasses]topList
	count    [numClasses]int
	first    [numClasses]int32
	rejected [numFilters]int
	example  [numFilters]int32 // first rejected node; lazy when bulk-rejected
	top      []entry
	feasible int
	covering bool // the coverage filter applied: every feasible node covers the target
}

const lazyExample = -3

func newScratch(topN, nodes int) *scratch {
	s := &scratch{n: topN, loc: make([]uint16, nodes), top: make([]entry, 0, numClasses*topN)}
	for i := range s.class {
		s.class[i].e = make([]entry, 0, topN)
	}
	return s
}

func (s *scratch) reset() {
	for i := range s.class {
		s.class[i].e = s.class[i].e[:0]
		s.count[i] = 0
		s.first[i] = -1
	}
	for i := range s.rejected {
		s.rejected[i] = 0
		s.example[i] = -1
	}
	s.top = s.top[:0]
	s.feasible = 0
	s.covering = false
}

func (s *scratch) reject(f int, node int) {
	s.rejected[f]++
	if s.example[f] == -1 {
		s.example[f] = int32(node)
	}
}

// evaluate runs the filters over the fleet for one cell, scores the
// feasible nodes and leaves the best TopN, best first, in s.top.
func (p *Planner) evaluate(f *fleet, r *cellReq, m mode, s *scratch) {
	s.reset()
	// Pin, site and arch are indexed: only the nodes that pass the first of
	// them the cell uses are visited; the others are counted in bulk.
	list, bulk := f.all, -1
	switch {
	case r.pinned != none:
		list, bulk = s.one[:0], fPinned
		if r.pinned >= 0 {
			s.one[0] = int32(r.pinned)
			list = s.one[:1]
		}
	case r.site != none:
		list, bulk = nil, fSite
		if r.site >= 0 {
			list = f.siteNodes[r.site]
		}
	case r.arch != none:
		list, bulk = nil, fArch
		if r.arch >= 0 {
			list = f.archNodes[r.arch]
		}
	}
	if bulk >= 0 && len(list) < len(f.nodes) {
		s.rejected[bulk] = len(f.nodes) - len(list)
		s.example[bulk] = lazyExample
	}
	for _, l := range r.streams {
		for _, i := range l {
			s.loc[i]++
		}
	}
	for _, i32 := range list {
		i := int(i32)
		n := &f.nodes[i]
		switch {
		case r.site != none && n.site != r.site:
			s.reject(fSite, i)
			continue
		case r.arch != none && n.arch != r.arch:
			s.reject(fArch, i)
			continue
		case i == r.exclude:
			s.reject(fCurrent, i)
			continue
		case !n.online:
			s.reject(fOnline, i)
			continue
		case r.labels != nil && !r.labels[i]:
			s.reject(fLabels, i)
			continue
		case n.memFree-n.boundMem < r.need:
			s.reject(fMemory, i)
			continue
		case !n.energyOK:
			s.reject(fEnergy, i)
			continue
		case m.headroom && n.load+(n.boundCPU+r.cpu)/n.cpus > p.cfg.OverloadTarget:
			s.reject(fHeadroom, i)
			continue
		}
		var e entry
		e.node = i32
		var covers bool
		e.total, covers = p.score(n, r, int(s.loc[i]), false, &e.parts)
		class := 0
		if covers {
			class |= 1
		}
		if m.preferGrid && !n.green {
			class |= 2
		}
		s.count[class]++
		if s.first[class] < 0 {
			s.first[class] = i32
		}
		// Most nodes do not make a full top list; skip the call for them.
		// (Nodes come in index order, so a tie never displaces the last.)
		if t := &s.class[class]; len(t.e) < s.n || e.total > t.e[s.n-1].total {
			t.push(&e, s.n)
		}
	}
	for _, l := range r.streams {
		for _, i := range l {
			s.loc[i] = 0
		}
	}

	// Conditional filters: a target cell takes a covering node if any is
	// feasible; an energy move takes a grid node if any is feasible.
	allowed := [numClasses]bool{true, true, true, true}
	if r.target != "" && s.count[1]+s.count[3] > 0 {
		s.drop(&allowed, fCoverage, 0, 2)
		s.covering = true
	}
	if m.preferGrid && (allowed[2] && s.count[2] > 0 || allowed[3] && s.count[3] > 0) {
		s.drop(&allowed, fGrid, 0, 1)
	}
	for c := range numClasses {
		if allowed[c] {
			s.feasible += s.count[c]
			s.top = append(s.top, s.class[c].e...)
		}
	}
	// At most four sorted runs of TopN entries: an insertion sort is plenty.
	for j := 1; j < len(s.top); j++ {
		for k := j; k > 0 && better(&s.top[k], &s.top[k-1]); k-- {
			s.top[k], s.top[k-1] = s.top[k-1], s.top[k]
		}
	}
	if len(s.top) > s.n {
		s.top = s.top[:s.n]
	}
}

// drop rejects the still-allowed classes a and b under filter f.
func (s *scratch) drop(allowed *[numClasses]bool, f int, a, b int) {
	for _, c := range [2]int{a, b} {
		if !allowed[c] {
			continue
		}
		allowed[c] = false
		s.rejected[f] += s.count[c]
		if s.first[c] >= 0 && (s.example[f] < 0 || s.first[c] < s.example[f]) {
			s.example[f] = s.first[c]
		}
	}
}

// score rates node n for the cell: each applicable component's raw score
// (0..1) goes into parts, and the weighted sum is returned. own means the
// cell already runs on n, so its memory and CPU are already in n's figures.
// covers says whether n's coverage contains the cell's moving target.
func (p *Planner) score(n *nodeInfo, r *cellReq, loc int, own bool, parts *[numScores]float64) (total float64, covers bool) {
	avail := n.memFree - n.boundMem
	cpuFree := (1-n.load)*n.cpus - n.boundCPU
	add := 0.0
	if !own {
		avail -= r.mem
		cpuFree -= r.cpu
		add = r.cpu
	}
	util := n.load + (n.boundCPU+add)/n.cpus
	if r.w[sCapacity] != 0 {
		m := float64(max(avail, 0))
		c := max(cpuFree, 0)
		parts[sCapacity] = 0.5*m/(m+float64(p.cfg.MemScale)) + 0.5*c/(c+p.cfg.CPUScale)
	}
	if r.w[sLoad] != 0 {
		parts[sLoad] = 1 - clamp01(util)
	}
	if r.w[sLocality] != 0 {
		parts[sLocality] = min(1, float64(loc)/float64(len(r.streams)))
	}
	if r.hasAff && n.hasPos {
		c2 := chord2(n.pos, r.aff)
		if c2 <= n.coverC2 {
			covers = r.target != ""
			parts[sDistance] = 1
		} else if r.w[sDistance] != 0 {
			d := chordMetres(c2)
			parts[sDistance] = p.cfg.DistanceScale / (p.cfg.DistanceScale + max(d-n.coverM, 0))
		}
	}
	parts[sEnergy] = n.energyRaw[r.pref]
	if r.w[sLatency] != 0 {
		parts[sLatency] = 0.5
		if ms, ok := p.latency(n, r, own); ok {
			parts[sLatency] = clamp01(1.5 - ms/r.slo)
		}
	}
	// Unrolled, in component order (the same sum as a loop, bit for bit).
	w := &r.w
	total = w[sCapacity]*parts[sCapacity] + w[sLoad]*parts[sLoad] + w[sLocality]*parts[sLocality] +
		w[sDistance]*parts[sDistance] + w[sEnergy]*parts[sEnergy] + w[sLatency]*parts[sLatency]
	return total, covers
}

// latency is the cell's p99 on n: observed where it runs, else predicted.
func (p *Planner) latency(n *nodeInfo, r *cellReq, own bool) (float64, bool) {
	if own && r.c.Observed != nil {
		return r.c.Observed.LatencyP99ms, true
	}
	if p.pred == nil {
		return 0, false
	}
	c := *r.c
	if r.target != "" {
		// The predictor cannot know where a moving target is: it sees the
		// target's current position as the cell's affinity point.
		pt := r.affPoint
		c.Constraints.Point = &pt
	}
	ms, ok := p.pred.LatencyMs(c, *n.node)
	if !ok || math.IsNaN(ms) {
		return 0, false
	}
	return ms, true
}
