package learning

import (
	"cmp"
	"errors"
	"fmt"
	"math"
	"slices"
	"strconv"

	"github.com/cloudskin/cloudskin/console/internal/learning/model"
	"github.com/cloudskin/cloudskin/console/internal/planner"
)

// Errors of the prediction service; the API maps them to 4xx.
var (
	ErrUnknownNode = errors.New("unknown node")
	ErrBadQuery    = errors.New("bad query")
)

// Query is a cell, as the prediction service sees it: what it runs, what
// it asks for, and how much it takes in.
type Query struct {
	App       string         `json:"app,omitempty"`
	Module    string         `json:"module,omitempty"`
	CPU       float64        `json:"cpu"`
	MemBytes  uint64         `json:"mem_bytes"`
	InputRate float64        `json:"input_rate"`
	SLOms     float64        `json:"latency_slo_ms,omitempty"`
	Point     *planner.Point `json:"point,omitempty"`
}

func (q *Query) validate() error {
	for name, v := range map[string]float64{"cpu": q.CPU, "input_rate": q.InputRate, "latency_slo_ms": q.SLOms} {
		if !(v >= 0) || math.IsInf(v, 0) || v > 1e9 {
			return fmt.Errorf("%w: %s %v must be a finite number ≥ 0", ErrBadQuery, name, v)
		}
	}
	if q.Point != nil && (!(math.Abs(q.Point.Lat) <= 90) || !(math.Abs(q.Point.Lon) <= 180)) {
		return fmt.Errorf("%w: point %v,%v is not a position", ErrBadQuery, q.Point.Lat, q.Point.Lon)
	}
	return nil
}

// Figure is one predicted value with its explanation.
type Figure struct {
	Value float64 `json:"value"`
	// Base is what the model predicts for an average sample; Value is
	// Base plus every contribution.
	Base          float64              `json:"base"`
	Contributions []model.Contribution `json:"contributions"`
	Model         string               `json:"model"` // "latency v3"
}

// Energy is the energy side of a placement.
type Energy struct {
	// NodeHours is how long the green node's energy lasts (forecast); nil
	// on grid power or without a served forecast.
	NodeHours *float64 `json:"node_hours,omitempty"`
	// CellW is the cell's share of the node's draw: its CPU share times the
	// node's watts per unit of load; nil without a served power model.
	CellW *float64 `json:"cell_w,omitempty"`
	Grid  bool     `json:"grid"`
}

// Prediction is how a cell is expected to behave on one node.
type Prediction struct {
	Node       string   `json:"node"`
	LatencyMs  *Figure  `json:"latency_ms"`
	Throughput *Figure  `json:"throughput"`
	Energy     Energy   `json:"energy"`
	MeetsSLO   *bool    `json:"meets_slo,omitempty"`
	Notes      []string `json:"notes,omitempty"`
}

// node returns what the served set knows of a node.
func (sv *served) node(name string) (*nodeFacts, bool) {
	i, ok := sv.nodeIx[name]
	if !ok {
		return nil, false
	}
	return &sv.nodes[i], true
}

// Predict says how the cell q would behave on node.
func (s *Service) Predict(q Query, node string) (*Prediction, error) {
	if err := q.validate(); err != nil {
		return nil, err
	}
	sv := s.cur.Load()
	n, ok := sv.node(node)
	if !ok {
		return nil, fmt.Errorf("%w: %q", ErrUnknownNode, node)
	}
	return s.predict(sv, &q, n), nil
}

func (s *Service) predict(sv *served, q *Query, n *nodeFacts) *Prediction {
	pn := planner.Node{Name: n.Name, Arch: n.Arch, Online: n.Online, MemTotal: n.MemBytes, CPUs: n.Cores, Load: n.Load,
		Position: n.Position, Power: n.Power}
	pc := planner.Cell{ID: "query", App: q.App, Module: q.Module, CPU: q.CPU, MemBytes: q.MemBytes, InputRate: q.InputRate}
	pc.Constraints.Point = q.Point
	out := &Prediction{Node: n.Name, Energy: Energy{Grid: n.Power != planner.PowerGreen}}
	smp := sv.pred.SampleFor(pc, pn, s.now())
	if p := sv.pred; p.Latency != nil && p.Enc != nil {
		out.LatencyMs = figure(p.Latency, p.Enc, smp, "latency", sv.versions[KindLatency+"/"+SubjectFleet])
	} else {
		out.Notes = append(out.Notes, "no latency model is served: see GET /api/v1/learning/models?kind=latency")
	}
	if sv.throughput != nil && sv.thrEnc != nil {
		out.Throughput = figure(sv.throughput, sv.thrEnc, smp, "throughput", sv.versions[KindThroughput+"/"+SubjectFleet])
	}
	if !out.Energy.Grid {
		if h, ok := sv.pred.EnergyHours(n.Name); ok {
			h = math.Round(h*100) / 100
			out.Energy.NodeHours = &h
		} else {
			out.Notes = append(out.Notes, "no energy forecast is served for "+n.Name)
		}
	}
	if w, ok := sv.wPerLoad[n.Name]; ok && n.Cores > 0 {
		v := math.Round(w*q.CPU/float64(n.Cores)*100) / 100
		out.Energy.CellW = &v
	}
	if q.SLOms > 0 && out.LatencyMs != nil {
		meets := out.LatencyMs.Value <= q.SLOms
		out.MeetsSLO = &meets
	}
	s.m.predictions.WithLabelValues("query", answered(out.LatencyMs != nil)).Inc()
	return out
}

// maxContributions is how many contributions a figure lists.
const maxContributions = 5

func figure(m *model.Linear, enc *model.Encoder, smp model.Sample, kind string, version int) *Figure {
	y, base, cs := m.Predict(enc.Row(smp))
	if math.IsNaN(y) || math.IsInf(y, 0) {
		return nil
	}
	if len(cs) > maxContributions {
		cs = cs[:maxContributions]
	}
	return &Figure{Value: round3(max(y, 0)), Base: round3(base), Contributions: cs, Model: kind + " v" + strconv.Itoa(version)}
}

func round3(v float64) float64 { return math.Round(v*1000) / 1000 }

// Ranked is one candidate of a recommendation.
type Ranked struct {
	Rank int `json:"rank"`
	Prediction
	// Factors are the strongest reasons for this candidate's place, in
	// words.
	Factors []string `json:"factors"`
}

// Recommend ranks candidate nodes for the cell q: nodes that are online
// first, then those predicted inside the SLO, then those whose energy lasts
// the horizon, then by predicted latency (by load when no latency model is
// served). Unknown nodes are refused as a whole.
func (s *Service) Recommend(q Query, candidates []string, horizonHours float64) ([]Ranked, error) {
	if err := q.validate(); err != nil {
		return nil, err
	}
	if len(candidates) == 0 {
		return nil, fmt.Errorf("%w: no candidates", ErrBadQuery)
	}
	if len(candidates) > s.cfg.MaxCandidates {
		return nil, fmt.Errorf("%w: %d candidates, at most %d in one request", ErrBadQuery, len(candidates), s.cfg.MaxCandidates)
	}
	sv := s.cur.Load()
	out := make([]Ranked, 0, len(candidates))
	type key struct {
		offline, slo, energy bool
		latency, load        float64
	}
	keys := make([]key, 0, len(candidates))
	seen := make(map[string]bool, len(candidates))
	var unknown []string
	for _, name := range candidates {
		if seen[name] {
			return nil, fmt.Errorf("%w: node %q listed twice", ErrBadQuery, name)
		}
		seen[name] = true
		n, ok := sv.node(name)
		if !ok {
			unknown = append(unknown, name)
			continue
		}
		p := s.predict(sv, &q, n)
		k := key{offline: !n.Online, latency: math.Inf(1), load: n.Load}
		var f []string
		if !n.Online {
			f = append(f, "offline")
		}
		if p.LatencyMs != nil {
			k.latency = p.LatencyMs.Value
			f = append(f, fmt.Sprintf("p99 %.1f ms predicted", p.LatencyMs.Value))
			if p.MeetsSLO != nil && !*p.MeetsSLO {
				k.slo = true
				f = append(f, fmt.Sprintf("over the %.0f ms SLO", q.SLOms))
			}
			for _, c := range p.LatencyMs.Contributions[:min(2, len(p.LatencyMs.Contributions))] {
				f = append(f, fmt.Sprintf("%s %+.1f ms", c.Feature, c.Effect))
			}
		} else {
			f = append(f, fmt.Sprintf("load %.0f%%", n.Load*100))
		}
		switch {
		case p.Energy.Grid:
			f = append(f, "grid power")
		case p.Energy.NodeHours != nil && *p.Energy.NodeHours < horizonHours:
			k.energy = true
			f = append(f, fmt.Sprintf("energy lasts %.1f h < %.0f h horizon", *p.Energy.NodeHours, horizonHours))
		case p.Energy.NodeHours != nil:
			f = append(f, fmt.Sprintf("energy lasts %.1f h", *p.Energy.NodeHours))
		}
		out = append(out, Ranked{Prediction: *p, Factors: f})
		keys = append(keys, k)
	}
	if len(unknown) > 0 {
		return nil, fmt.Errorf("%w: %q", ErrUnknownNode, unknown[:min(len(unknown), 5)])
	}
	idx := make([]int, len(out))
	for i := range idx {
		idx[i] = i
	}
	b2i := func(b bool) int {
		if b {
			return 1
		}
		return 0
	}
	slices.SortStableFunc(idx, func(a, b int) int {
		ka, kb := keys[a], keys[b]
		if d := b2i(ka.offline) - b2i(kb.offline); d != 0 {
			return d
		}
		if d := b2i(ka.slo) - b2i(kb.slo); d != 0 {
			return d
		}
		if d := b2i(ka.energy) - b2i(kb.energy); d != 0 {
			return d
		}
		if ka.latency != kb.latency {
			return cmp.Compare(ka.latency, kb.latency)
		}
		return cmp.Compare(ka.load, kb.load)
	})
	ranked := make([]Ranked, len(out))
	for r, i := range idx {
		ranked[r] = out[i]
		ranked[r].Rank = r + 1
	}
	return ranked, nil
}
