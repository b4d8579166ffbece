package planner

import (
	"math"
	"slices"
	"strconv"
	"strings"
	"time"
)

// none marks an absent index (no pin, no site, no arch requirement);
// missing marks a requirement nothing in the fleet can meet.
const (
	none    = -1
	missing = -2
)

// Power preference slots of nodeInfo.energyRaw.
const (
	prefNone = iota
	prefGreen
	prefGrid
)

// nodeInfo is a node reduced to what the filters and scores compare, worked
// out once per plan so that the loop over nodes for each cell does no map
// lookups, parsing or trigonometry.
type nodeInfo struct {
	node       *Node
	name       string
	online     bool
	offlineFor time.Duration // -1 when OfflineSince is unknown
	arch       int
	site       int
	memFree    int64
	cpus       float64
	load       float64
	hasPos     bool
	pos        vec3
	coverM     float64
	coverC2    float64 // squared chord of coverM; -1 without coverage
	green      bool
	energy     outlook
	energyOK   bool       // passes the energy filter
	energyRaw  [3]float64 // raw energy score per power preference
	boundMem   int64      // memory bound here by this plan
	boundCPU   float64    // cores bound here by this plan
	cpuOut     float64    // cores moved away by this plan
}

// outlook is a green node's energy forecast.
type outlook struct {
	known     bool
	hours     float64 // +Inf while charging
	predicted bool    // from the Predictor, not the battery
}

// fleet is the per-plan index of the nodes.
type fleet struct {
	nodes       []nodeInfo // sorted by name
	archIDs     map[string]int
	archNodes   [][]int32
	siteIDs     map[string]int
	siteNodes   [][]int32
	all         []int32
	streams     map[string][]int32 // built once scanning no longer pays
	streamScans int
	labelSets   map[string][]bool // label constraint → match per node
}

func (p *Planner) newFleet(nodes []Node, now time.Time) *fleet {
	order := make([]int32, len(nodes))
	for i := range order {
		order[i] = int32(i)
	}
	slices.SortStableFunc(order, func(a, b int32) int { return strings.Compare(nodes[a].Name, nodes[b].Name) })
	f := &fleet{
		nodes:   make([]nodeInfo, 0, len(nodes)),
		all:     make([]int32, 0, len(nodes)),
		archIDs: map[string]int{},
		siteIDs: map[string]int{},
	}
	for k, i := range order {
		n := &nodes[i]
		if k > 0 && n.Name == nodes[order[k-1]].Name {
			continue // names are unique in the fleet; keep the first
		}
		idx := len(f.nodes)
		f.nodes = f.nodes[:idx+1]
		ni := &f.nodes[idx]
		p.nodeInfo(ni, n, now, f)
		f.all = append(f.all, int32(idx))
		f.archNodes[ni.arch] = append(f.archNodes[ni.arch], int32(idx))
		if ni.site >= 0 {
			f.siteNodes[ni.site] = append(f.siteNodes[ni.site], int32(idx))
		}
	}
	return f
}

// index finds a node by name.
func (f *fleet) index(name string) (int, bool) {
	return slices.BinarySearchFunc(f.nodes, name, func(n nodeInfo, name string) int { return strings.Compare(n.name, name) })
}

func (p *Planner) nodeInfo(ni *nodeInfo, n *Node, now time.Time, f *fleet) {
	*ni = nodeInfo{
		node:    n,
		name:    n.Name,
		online:  n.Online,
		memFree: int64(min(n.MemFree, math.MaxInt64)),
		cpus:    float64(max(n.CPUs, 1)),
		load:    clamp01(n.Load),
		site:    none,
		coverC2: -1,
		green:   n.Power == PowerGreen,
	}
	if !n.Online {
		ni.offlineFor = -1
		if !n.OfflineSince.IsZero() {
			ni.offlineFor = now.Sub(n.OfflineSince)
		}
	}
	id, ok := f.archIDs[n.Arch]
	if !ok {
		id = len(f.archNodes)
		f.archIDs[n.Arch] = id
		f.archNodes = append(f.archNodes, nil)
	}
	ni.arch = id
	if s, ok := n.Labels[LabelSite]; ok {
		id, ok := f.siteIDs[s]
		if !ok {
			id = len(f.siteNodes)
			f.siteIDs[s] = id
			f.siteNodes = append(f.siteNodes, nil)
		}
		ni.site = id
	}
	if n.Position != nil && n.Position.valid() {
		ni.hasPos = true
		ni.pos = unitVec(*n.Position)
		if v, ok := parseMetres(n.Labels[LabelCoverage]); ok {
			ni.coverM = v
			ni.coverC2 = metresChord2(v)
		}
	}

	// Energy: grid is unlimited; a green node lasts what the Predictor
	// forecasts, else what its battery and trend say, else it is unknown
	// (passes the filter, scores half).
	out := 1.0
	ni.energyOK = true
	if ni.green {
		ni.energy = p.outlook(n)
		out = 0.5
		if e := ni.energy; e.known {
			out = min(1, e.hours/p.cfg.EnergyFullHours)
			if n.Battery != nil {
				out = 0.8*out + 0.2*clamp01(n.Battery.Percent/100)
			}
			ni.energyOK = e.hours >= p.cfg.EnergyHorizon.Hours()
		}
	}
	ni.energyRaw[prefNone] = out
	if ni.green {
		ni.energyRaw[prefGreen] = out
		ni.energyRaw[prefGrid] = out * p.cfg.PowerMismatch
	} else {
		ni.energyRaw[prefGreen] = out * p.cfg.PowerMismatch
		ni.energyRaw[prefGrid] = out
	}
}

// parseMetres reads a coverage label: a positive, finite number of metres.
// Labels are almost always integers, which Atoi reads several times faster.
func parseMetres(s string) (float64, bool) {
	if s == "" {
		return 0, false
	}
	if i, err := strconv.Atoi(s); err == nil {
		return float64(i), i > 0
	}
	v, err := strconv.ParseFloat(s, 64)
	return v, err == nil && v > 0 && !math.IsInf(v, 0)
}

func (p *Planner) outlook(n *Node) outlook {
	if p.pred != nil {
		if h, ok := p.pred.EnergyHours(n.Name); ok && !math.IsNaN(h) {
			return outlook{known: true, hours: max(h, 0), predicted: true}
		}
	}
	if b := n.Battery; b != nil {
		if b.TrendPctPerHour < 0 {
			return outlook{known: true, hours: max(b.Percent, 0) / -b.TrendPctPerHour}
		}
		return outlook{known: true, hours: math.Inf(1)}
	}
	return outlook{}
}

// streamNodes lists the nodes holding a stream, in index order.
func (f *fleet) streamNodes(name string) []int32 {
	if f.streams == nil && f.streamScans < 8 {
		// A view used for a decision or two: scanning is cheaper than
		// indexing every stream of every node.
		f.streamScans++
		var l []int32
		for i := range f.nodes {
			if slices.Contains(f.nodes[i].node.Streams, name) {
				l = append(l, int32(i))
			}
		}
		return l
	}
	if f.streams == nil {
		f.streams = map[string][]int32{}
		for i := range f.nodes {
			for _, s := range f.nodes[i].node.Streams {
				l := f.streams[s]
				if len(l) > 0 && l[len(l)-1] == int32(i) {
					continue // listed twice by the node
				}
				f.streams[s] = append(l, int32(i))
			}
		}
	}
	return f.streams[name]
}

// labelMatch says, per node, whether it carries all of want. Cells share
// a handful of label constraints, so each is worked out once per plan.
func (f *fleet) labelMatch(want map[string]string) []bool {
	keys := make([]string, 0, len(want))
	for k := range want {
		keys = append(keys, k)
	}
	slices.Sort(keys)
	var b strings.Builder
	for _, k := range keys {
		b.WriteString(k)
		b.WriteByte(0)
		b.WriteString(want[k])
		b.WriteByte(0)
	}
	key := b.String()
	if m, ok := f.labelSets[key]; ok {
		return m
	}
	m := make([]bool, len(f.nodes))
	for i := range f.nodes {
		m[i] = hasLabels(f.nodes[i].node.Labels, want)
	}
	if f.labelSets == nil {
		f.labelSets = map[string][]bool{}
	}
	f.labelSets[key] = m
	return m
}

func hasLabels(have, want map[string]string) bool {
	for k, v := range want {
		if got, ok := have[k]; !ok || got != v {
			return false
		}
	}
	return true
}

// cellReq is a cell reduced to what the hot loop compares.
type cellReq struct {
	c        *Cell
	pinned   int
	site     int
	arch     int
	labels   []bool
	need     int64 // free memory a node needs: max(MemBytes, MinFreeMem)
	mem      int64
	cpu      float64
	pref     int
	hasAff   bool
	aff      vec3
	affPoint Point
	target   string // the target's id when the affinity is a moving target
	streams  [][]int32
	latency  bool
	slo      float64
	exclude  int
	w        [numScores]float64 // weights, 0 for components that do not apply
}

func (p *Planner) prepare(f *fleet, c *Cell, targets map[string]Point, streams [][]int32) cellReq {
	k := &c.Constraints
	r := cellReq{
		c:       c,
		pinned:  none,
		site:    none,
		arch:    none,
		mem:     int64(min(c.MemBytes, math.MaxInt64)),
		cpu:     max(c.CPU, 0),
		exclude: none,
		w:       p.w,
	}
	r.need = max(r.mem, int64(min(k.MinFreeMem, math.MaxInt64)))
	if k.Pinned != "" {
		r.pinned = missing
		if i, ok := f.index(k.Pinned); ok {
			r.pinned = i
		}
	}
	if k.Site != "" {
		r.site = missing
		if i, ok := f.siteIDs[k.Site]; ok {
			r.site = i
		}
	}
	if k.Arch != "" {
		r.arch = missing
		if i, ok := f.archIDs[k.Arch]; ok {
			r.arch = i
		}
	}
	if len(k.NodeLabels) > 0 {
		r.labels = f.labelMatch(k.NodeLabels)
	}
	switch k.Power {
	case PowerGreen:
		r.pref = prefGreen
	case PowerGrid:
		r.pref = prefGrid
	}
	if k.Target != "" {
		if pt, ok := targets[k.Target]; ok && pt.valid() {
			r.hasAff, r.affPoint, r.target = true, pt, k.Target
		}
	}
	if !r.hasAff && k.Point != nil && k.Point.valid() {
		r.hasAff, r.affPoint = true, *k.Point
	}
	if r.hasAff {
		r.aff = unitVec(r.affPoint)
	} else {
		r.w[sDistance] = 0
	}
	r.streams = streams[:0]
	for _, s := range c.InputStreams {
		r.streams = append(r.streams, f.streamNodes(s))
	}
	if len(r.streams) == 0 {
		r.w[sLocality] = 0
	}
	r.slo = c.LatencySLOms
	r.latency = r.slo > 0 && (p.pred != nil || c.Observed != nil)
	if !r.latency {
		r.w[sLatency] = 0
	}
	return r
}

func clamp01(v float64) float64 {
	if !(v > 0) { // also NaN
		return 0
	}
	return min(v, 1)
}
