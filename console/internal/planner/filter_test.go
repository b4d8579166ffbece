package planner

import (
	"testing"
	"time"
)

// TestFilters checks each filter rejects what it must, with the reason an
// operator reads, and lets the right node through.
func TestFilters(t *testing.T) {
	vehicle := north(castelloli, 2000)
	cases := []struct {
		name    string
		pred    Predictor
		nodes   []Node
		cell    Cell
		targets map[string]Point
		want    string // winner; "" = unplaceable
		filter  string // a filter that must have rejected something
		count   int
		reason  string // in the rejection's reason
	}{
		{
			name:   "online",
			nodes:  []Node{node("a", offline(5*time.Minute), free(8*gib)), node("b")},
			cell:   cell("c"),
			want:   "b",
			filter: FilterOnline, count: 1, reason: "offline for 5m0s",
		},
		{
			name:   "offline without a time",
			nodes:  []Node{node("a", func(n *Node) { n.Online = false })},
			cell:   cell("c"),
			filter: FilterOnline, count: 1, reason: "offline",
		},
		{
			name:   "pinned",
			nodes:  []Node{node("a", free(8*gib)), node("b"), node("c", free(7*gib))},
			cell:   cell("c1", with(func(k *Constraints) { k.Pinned = "b" })),
			want:   "b",
			filter: FilterPinned, count: 2, reason: "pinned to b",
		},
		{
			name:   "pinned to a node not in the fleet",
			nodes:  []Node{node("a")},
			cell:   cell("c1", with(func(k *Constraints) { k.Pinned = "zz" })),
			filter: FilterPinned, count: 1, reason: "pinned to zz, which is not in the fleet",
		},
		{
			name:   "arch",
			nodes:  []Node{node("a", free(8*gib)), node("b", arch("arm64"))},
			cell:   cell("c", with(func(k *Constraints) { k.Arch = "arm64" })),
			want:   "b",
			filter: FilterArch, count: 1, reason: "amd64, the cell needs arm64",
		},
		{
			name:   "arch nobody has",
			nodes:  []Node{node("a"), node("b")},
			cell:   cell("c", with(func(k *Constraints) { k.Arch = "riscv64" })),
			filter: FilterArch, count: 2, reason: "amd64, the cell needs riscv64",
		},
		{
			name:   "labels missing",
			nodes:  []Node{node("a", free(8*gib)), node("b", label("gpu", "true"))},
			cell:   cell("c", with(func(k *Constraints) { k.NodeLabels = map[string]string{"gpu": "true"} })),
			want:   "b",
			filter: FilterLabels, count: 1, reason: "no label gpu, the cell needs gpu=true",
		},
		{
			name:   "labels differ",
			nodes:  []Node{node("a", free(8*gib), label("zone", "a")), node("b", label("zone", "b"))},
			cell:   cell("c", with(func(k *Constraints) { k.NodeLabels = map[string]string{"zone": "b"} })),
			want:   "b",
			filter: FilterLabels, count: 1, reason: "label zone=a, the cell needs zone=b",
		},
		{
			name: "site",
			nodes: []Node{node("a", free(8*gib), label(LabelSite, "grid-site")),
				node("b", label(LabelSite, "castelloli")), node("c", free(8*gib))},
			cell:   cell("c1", with(func(k *Constraints) { k.Site = "castelloli" })),
			want:   "b",
			filter: FilterSite, count: 2, reason: "site grid-site, the cell needs castelloli",
		},
		{
			name:   "memory requested",
			nodes:  []Node{node("a", free(1*gib)), node("b", free(3*gib))},
			cell:   cell("c", mem(2*gib)),
			want:   "b",
			filter: FilterMemory, count: 1, reason: "1.0 GiB free < 2.0 GiB requested",
		},
		{
			name:   "memory min free",
			nodes:  []Node{node("a", free(2*gib)), node("b", free(3*gib))},
			cell:   cell("c", with(func(k *Constraints) { k.MinFreeMem = 3 * gib })),
			want:   "b",
			filter: FilterMemory, count: 1, reason: "2.0 GiB free < 3.0 GiB required (min_free_mem)",
		},
		{
			name:   "energy from battery",
			nodes:  []Node{node("a", free(8*gib), green(8, -5)), node("b")},
			cell:   cell("c"),
			want:   "b",
			filter: FilterEnergy, count: 1, reason: "battery 8% draining 5%/h lasts 1.6 h < 2 h horizon",
		},
		{
			name:  "energy charging passes",
			nodes: []Node{node("a", green(8, 3))},
			cell:  cell("c"),
			want:  "a",
		},
		{
			name:   "energy from the predictor",
			pred:   fakePredictor{hours: map[string]float64{"a": 1.2, "b": 30}},
			nodes:  []Node{node("a", free(8*gib), green(90, 1)), node("b", green(5, -20))},
			cell:   cell("c"),
			want:   "b", // the forecast wins over the battery figures both ways
			filter: FilterEnergy, count: 1, reason: "energy forecast 1.2 h < 2 h horizon",
		},
		{
			name:  "green without figures passes",
			nodes: []Node{node("a", func(n *Node) { n.Power = PowerGreen })},
			cell:  cell("c"),
			want:  "a",
		},
		{
			name: "coverage: a covering node beats a roomier one",
			nodes: []Node{
				node("a", free(8*gib), load(0), cover(castelloli, 500)),
				node("b", free(1*gib), cover(north(vehicle, 100), 500)),
			},
			cell:    cell("c", with(func(k *Constraints) { k.Target = "vehicle-7" })),
			targets: map[string]Point{"vehicle-7": vehicle},
			want:    "b",
			filter:  FilterCoverage, count: 1, reason: "2.0 km from target vehicle-7 (outside its 500 m coverage)",
		},
		{
			name: "coverage: nobody covers, nothing rejected for it",
			nodes: []Node{
				node("a", cover(castelloli, 500)),
				node("b", cover(north(vehicle, 900), 500)),
			},
			cell:    cell("c", with(func(k *Constraints) { k.Target = "vehicle-7" })),
			targets: map[string]Point{"vehicle-7": vehicle},
			want:    "b", // closer
		},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			p := newPlanner(t, DefaultConfig(), tc.pred)
			d := p.Place(tc.nodes, tc.cell, tc.targets, t0)
			if d.To != tc.want {
				t.Fatalf("to = %q, want %q; why: %s", d.To, tc.want, d.Why)
			}
			wantKind := KindPlace
			if tc.want == "" {
				wantKind = KindUnplaceable
			}
			if d.Kind != wantKind {
				t.Errorf("kind = %q, want %q", d.Kind, wantKind)
			}
			if tc.filter == "" {
				if len(d.Rejected) > 0 {
					t.Errorf("unexpected rejections %+v", d.Rejected)
				}
				return
			}
			r, ok := rejection(d, tc.filter)
			if !ok {
				t.Fatalf("no %s rejection in %+v", tc.filter, d.Rejected)
			}
			if r.Count != tc.count {
				t.Errorf("%s rejected %d nodes, want %d", tc.filter, r.Count, tc.count)
			}
			mustContain(t, r.Reason, tc.reason)
			mustContain(t, d.Why, tc.reason)
			// The example is also listed as a filtered candidate.
			found := false
			for _, c := range d.Candidates {
				if c.Node == r.Example && c.Filtered == tc.filter+": "+r.Reason {
					found = true
				}
			}
			if !found {
				t.Errorf("example %s not among the candidates %+v", r.Example, d.Candidates)
			}
		})
	}
}

// TestHeadroomFilter: a cell moved for overload goes only where the load
// stays under the overload target.
func TestHeadroomFilter(t *testing.T) {
	p := defaultPlanner(t)
	nodes := []Node{node("a", load(0.97)), node("b", load(0.8), free(8*gib)), node("c", load(0.5))}
	cells := []Cell{cell("x", on("a", time.Hour), cpu(0.5))}
	got, ds := p.Plan(nodes, cells, nil, t0)
	if got["x"] != "c" || len(ds) != 1 {
		t.Fatalf("assignments %v, decisions %+v", got, ds)
	}
	r, ok := rejection(ds[0], FilterHeadroom)
	if !ok || r.Example != "b" {
		t.Fatalf("rejections %+v", ds[0].Rejected)
	}
	mustContain(t, r.Reason, "load would reach 92% > 75% target")
}

// TestUnplaceable: every node's rejection is counted under the first
// filter that rejects it, and the sentence says so.
func TestUnplaceable(t *testing.T) {
	p := defaultPlanner(t)
	nodes := []Node{
		node("a", offline(time.Hour)),
		node("b", offline(time.Hour), arch("arm64")), // arch comes before online
		node("c", arch("arm64")),
		node("d", free(100*mib)),
		node("e", green(10, -10)),
	}
	got, ds := p.Plan(nodes, []Cell{cell("x", with(func(k *Constraints) { k.Arch = "amd64" }))}, nil, t0)
	if len(got) != 0 || len(ds) != 1 {
		t.Fatalf("assignments %v, decisions %d", got, len(ds))
	}
	d := ds[0]
	if d.Kind != KindUnplaceable || d.Reason != ReasonNew || d.To != "" || d.Feasible != 0 {
		t.Fatalf("decision %+v", d)
	}
	want := map[string]int{FilterArch: 2, FilterOnline: 1, FilterMemory: 1, FilterEnergy: 1}
	total := 0
	for _, r := range d.Rejected {
		if want[r.Filter] != r.Count {
			t.Errorf("%s: %d, want %d", r.Filter, r.Count, want[r.Filter])
		}
		total += r.Count
	}
	if total != len(nodes) || len(d.Rejected) != len(want) {
		t.Errorf("rejections %+v do not account for every node", d.Rejected)
	}
	mustContain(t, d.Why, "no node can take it", "rejected 5 of 5 nodes", "2 by arch (e.g. b: arm64, the cell needs amd64)",
		"a by online (offline for 1h0m0s)", "d by memory (100 MiB free < 256 MiB requested)",
		"e by energy (battery 10% draining 10%/h lasts 1 h < 2 h horizon)")

	d = p.Place(nil, cell("y"), nil, t0)
	if d.Kind != KindUnplaceable || d.Why != "no node can take it: the fleet has no nodes" {
		t.Errorf("empty fleet: %+v", d)
	}
}
