package planner

import (
	"math"
	"slices"
	"strconv"
	"strings"
	"time"
)

// decide writes the decision for the evaluation in vw.s: the candidates
// with their weighted scores, the rejections per filter and the sentence.
// It runs before the winner is bound, so the scores are the ones compared.
func (vw *View) decide(r *cellReq, kind, reason, trig string, cur int, stay *entry, margin bool) Decision {
	f, s := vw.f, vw.s
	d := Decision{
		Time:     vw.now,
		Cell:     r.c.ID,
		App:      r.c.App,
		Kind:     kind,
		Reason:   reason,
		From:     r.c.Node,
		Feasible: s.feasible,
	}
	nRej := 0
	for k := range numFilters {
		if s.rejected[k] > 0 {
			nRej++
		}
	}
	d.Candidates = make([]Candidate, 0, len(s.top)+1+nRej)
	for i := range s.top {
		d.Candidates = append(d.Candidates, vw.candidate(r, &s.top[i]))
	}
	if cur >= 0 {
		c := vw.candidate(r, stay)
		c.Current = true
		if trig != "" {
			c.Filtered = reason + ": " + trig
		}
		d.Candidates = append(d.Candidates, c)
	}
	if nRej > 0 {
		d.Rejected = make([]Rejection, 0, nRej)
	}
	for k := range numFilters {
		if s.rejected[k] == 0 {
			continue
		}
		ex := vw.example(r, k)
		why := vw.rejectText(r, k, ex)
		d.Rejected = append(d.Rejected, Rejection{Filter: filterNames[k], Count: s.rejected[k], Example: f.nodes[ex].name, Reason: why})
		if k != fCurrent { // the current node is listed above
			d.Candidates = append(d.Candidates, Candidate{Node: f.nodes[ex].name, Filtered: filterNames[k] + ": " + why})
		}
	}
	if len(s.top) > 0 {
		d.To = f.nodes[s.top[0].node].name
	}
	d.Why = vw.why(r, &d, trig, cur, stay, margin)
	return d
}

func (vw *View) candidate(r *cellReq, e *entry) Candidate {
	c := Candidate{Node: vw.f.nodes[e.node].name, Total: round2(e.total), Scores: make(map[string]float64, numScores)}
	for k := range numScores {
		if r.w[k] != 0 {
			c.Scores[scoreNames[k]] = round2(r.w[k] * e.parts[k])
		}
	}
	c.Predicted = vw.predicted(r, &vw.f.nodes[e.node])
	return c
}

// predicted collects the learning plane's figures the scores used for n.
func (vw *View) predicted(r *cellReq, n *nodeInfo) *Predicted {
	var pr Predicted
	if n.green && n.energy.predicted && !math.IsInf(n.energy.hours, 0) {
		h := round2(n.energy.hours)
		pr.EnergyHours = &h
	}
	own := n.name == r.c.Node
	if r.w[sLatency] != 0 && !(own && r.c.Observed != nil) {
		if ms, ok := vw.p.latency(n, r, own); ok {
			ms = round2(ms)
			pr.LatencyMs = &ms
		}
	}
	if pr.EnergyHours == nil && pr.LatencyMs == nil {
		return nil
	}
	return &pr
}

// example is the first node by name that filter k rejected.
func (vw *View) example(r *cellReq, k int) int {
	s, f := vw.s, vw.f
	if ex := s.example[k]; ex != lazyExample {
		return int(ex)
	}
	for i := range f.nodes {
		n := &f.nodes[i]
		switch {
		case k == fPinned && i != r.pinned,
			k == fSite && n.site != r.site,
			k == fArch && n.arch != r.arch:
			return i
		}
	}
	return 0 // unreachable: a bulk count means such a node exists
}

// why writes the decision's sentence. It is built with plain appends, not
// fmt: a full plan writes ten thousand of them.
func (vw *View) why(r *cellReq, d *Decision, trig string, cur int, stay *entry, margin bool) string {
	var b strings.Builder
	b.Grow(256)
	s, f := vw.s, vw.f
	if d.Kind == KindUnplaceable {
		if d.From != "" {
			write(&b, "cannot move it from ", d.From, " (", trig, "): ")
		}
		b.WriteString("no node can take it")
		if len(f.nodes) == 0 {
			b.WriteString(": the fleet has no nodes")
		}
		vw.rejections(&b, d)
		if d.From != "" {
			if cur >= 0 && vw.usable(cur) {
				write(&b, "; it stays on ", d.From)
			} else {
				b.WriteString("; it is not running anywhere")
			}
		}
		return b.String()
	}

	win := &s.top[0]
	if d.Kind == KindMove {
		write(&b, "moved from ", d.From, " because ", trig, "; ")
	}
	write(&b, d.To, " won with ", ftoa(win.total, 1))
	switch {
	case margin:
		write(&b, " against ", ftoa(stay.total, 1), " for staying (margin ", gtoa(vw.p.cfg.MoveMargin), ")")
	case len(s.top) > 1:
		write(&b, " (runner-up ", f.nodes[s.top[1].node].name, " ", ftoa(s.top[1].total, 1), ")")
	}
	vw.facts(&b, r, win)
	vw.rejections(&b, d)
	return b.String()
}

// facts appends the winner's three strongest score components.
func (vw *View) facts(b *strings.Builder, r *cellReq, e *entry) {
	var order [numScores]int
	m := 0
	for k := range numScores {
		if r.w[k] != 0 {
			order[m] = k
			m++
		}
	}
	ks := order[:m]
	// Strongest first; a stable insertion sort keeps component order on ties.
	for i := 1; i < len(ks); i++ {
		for j := i; j > 0 && r.w[ks[j]]*e.parts[ks[j]] > r.w[ks[j-1]]*e.parts[ks[j-1]]; j-- {
			ks[j], ks[j-1] = ks[j-1], ks[j]
		}
	}
	n := &vw.f.nodes[e.node]
	for i, k := range ks[:min(3, len(ks))] {
		if i == 0 {
			b.WriteString(": ")
		} else {
			b.WriteString(", ")
		}
		b.WriteString(vw.fact(r, n, int(e.node), k))
	}
}

func (vw *View) fact(r *cellReq, n *nodeInfo, i, k int) string {
	switch k {
	case sCapacity:
		return bytesText(n.memFree-n.boundMem) + " free"
	case sLoad:
		return "load " + percent(n.load+n.boundCPU/n.cpus)
	case sLocality:
		return "holds " + strconv.Itoa(heldBy(r, i)) + "/" + strconv.Itoa(len(r.streams)) + " input streams"
	case sDistance:
		return vw.distanceText(r, n)
	case sEnergy:
		if !n.green {
			return "on grid power"
		}
		return vw.p.energyShort(n)
	case sLatency:
		if ms, ok := vw.p.latency(n, r, n.name == r.c.Node); ok {
			return "p99 " + millis(ms) + " vs " + millis(r.slo) + " SLO"
		}
		return "p99 unknown"
	}
	return ""
}

func (vw *View) distanceText(r *cellReq, n *nodeInfo) string {
	what := "the affinity point"
	if r.target != "" {
		what = "target " + r.target
	}
	if !n.hasPos {
		return "position unknown, " + what + " is known"
	}
	d := chordMetres(chord2(n.pos, r.aff))
	switch {
	case n.coverM == 0:
		return metres(d) + " from " + what + " (no coverage radius)"
	case d <= n.coverM:
		return metres(d) + " from " + what + " (inside its " + metres(n.coverM) + " coverage)"
	}
	return metres(d) + " from " + what + " (outside its " + metres(n.coverM) + " coverage)"
}

// rejections appends "; rejected N of M nodes: …".
func (vw *View) rejections(b *strings.Builder, d *Decision) {
	if len(d.Rejected) == 0 {
		return
	}
	total := 0
	for _, r := range d.Rejected {
		total += r.Count
	}
	write(b, "; rejected ", strconv.Itoa(total), " of ", strconv.Itoa(len(vw.f.nodes)), " nodes: ")
	for i, r := range d.Rejected {
		if i > 0 {
			b.WriteString(", ")
		}
		if r.Count == 1 {
			write(b, r.Example, " by ", r.Filter, " (", r.Reason, ")")
		} else {
			write(b, strconv.Itoa(r.Count), " by ", r.Filter, " (e.g. ", r.Example, ": ", r.Reason, ")")
		}
	}
}

// rejectText says why filter k rejected node i.
func (vw *View) rejectText(r *cellReq, k, i int) string {
	p, f := vw.p, vw.f
	n := &f.nodes[i]
	want := &r.c.Constraints
	switch k {
	case fPinned:
		if r.pinned == missing {
			return "the cell is pinned to " + want.Pinned + ", which is not in the fleet"
		}
		return "the cell is pinned to " + want.Pinned
	case fSite:
		return siteText(n, want.Site)
	case fArch:
		return archText(n, want.Arch)
	case fCurrent:
		return "the cell is moving away from it"
	case fOnline:
		return offlineText(n)
	case fLabels:
		return labelsText(n, want.NodeLabels)
	case fMemory:
		what := " requested"
		if want.MinFreeMem > r.c.MemBytes {
			what = " required (min_free_mem)"
		}
		free := bytesText(n.memFree - n.boundMem)
		if n.boundMem > 0 {
			free += " free after " + bytesText(n.boundMem) + " bound by this plan"
		} else {
			free += " free"
		}
		return free + " < " + bytesText(r.need) + what
	case fEnergy:
		return p.energyShort(n)
	case fHeadroom:
		return "load would reach " + percent(n.load+(n.boundCPU+r.cpu)/n.cpus) + " > " + percent(p.cfg.OverloadTarget) + " target"
	case fCoverage:
		return vw.distanceText(r, n) + "; another node covers the target"
	case fGrid:
		return "green power; an energy move takes a grid node when one fits"
	}
	return ""
}

// energyShort describes a green node's energy outlook against the horizon.
func (p *Planner) energyShort(n *nodeInfo) string {
	e := n.energy
	if !e.known {
		return "green power, no energy figures"
	}
	var s string
	if e.predicted {
		s = "energy forecast " + hoursText(e.hours)
	} else {
		bat := n.node.Battery
		switch {
		case bat.TrendPctPerHour > 0:
			return "battery " + pct(bat.Percent) + " charging " + pct(bat.TrendPctPerHour) + "/h"
		case bat.TrendPctPerHour == 0:
			return "battery " + pct(bat.Percent) + " steady"
		}
		s = "battery " + pct(bat.Percent) + " draining " + pct(-bat.TrendPctPerHour) + "/h lasts " + hoursText(e.hours)
	}
	if h := p.cfg.EnergyHorizon.Hours(); e.hours < h {
		s += " < " + hoursText(h) + " horizon"
	}
	return s
}

func offlineText(n *nodeInfo) string {
	if n.offlineFor < 0 {
		return "offline"
	}
	return "offline for " + n.offlineFor.Round(time.Second).String()
}

func siteText(n *nodeInfo, want string) string {
	if s, ok := n.node.Labels[LabelSite]; ok {
		return "site " + s + ", the cell needs " + want
	}
	return "no site label, the cell needs " + want
}

func archText(n *nodeInfo, want string) string {
	return n.node.Arch + ", the cell needs " + want
}

// labelsText names the first required label (by key) the node lacks.
func labelsText(n *nodeInfo, want map[string]string) string {
	keys := make([]string, 0, len(want))
	for k := range want {
		keys = append(keys, k)
	}
	slices.Sort(keys)
	for _, k := range keys {
		got, ok := n.node.Labels[k]
		switch {
		case !ok:
			return "no label " + k + ", the cell needs " + k + "=" + want[k]
		case got != want[k]:
			return "label " + k + "=" + got + ", the cell needs " + k + "=" + want[k]
		}
	}
	return ""
}

func write(b *strings.Builder, parts ...string) {
	for _, p := range parts {
		b.WriteString(p)
	}
}

func bytesText(v int64) string {
	const mib, gib = 1 << 20, 1 << 30
	switch {
	case v >= gib:
		return ftoa(float64(v)/gib, 1) + " GiB"
	case v >= mib || v <= -mib:
		return ftoa(float64(v)/mib, 0) + " MiB"
	}
	return strconv.FormatInt(v, 10) + " B"
}

func metres(m float64) string {
	if m < 1000 {
		return ftoa(m, 0) + " m"
	}
	return ftoa(m/1000, 1) + " km"
}

func millis(ms float64) string { return gtoa(math.Round(ms*10)/10) + " ms" }

// percent formats a 0..1 fraction; pct a value already in percent.
func percent(v float64) string { return ftoa(v*100, 0) + "%" }
func pct(v float64) string     { return gtoa(math.Round(v*10)/10) + "%" }

func hoursText(h float64) string {
	if math.IsInf(h, 1) {
		return "indefinitely"
	}
	return gtoa(math.Round(h*10)/10) + " h"
}

func ftoa(v float64, prec int) string { return strconv.FormatFloat(v, 'f', prec, 64) }
func gtoa(v float64) string           { return strconv.FormatFloat(v, 'g', -1, 64) }

func round2(v float64) float64 { return math.Round(v*100) / 100 }
