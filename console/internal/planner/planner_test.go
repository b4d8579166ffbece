package planner

import (
	"bytes"
	"cmp"
	"encoding/json"
	"math/rand/v2"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"gopkg.in/yaml.v3"
)

// TestDeterministic: the same fleet in any input order gives the same
// assignments and the same decisions, byte for byte.
func TestDeterministic(t *testing.T) {
	p := newPlanner(t, DefaultConfig(), hashPredictor{})
	nodes, cells, targets := genFleet(3, 150, 600)
	// Some cells already run somewhere, so move rules take part too.
	for i := range cells {
		if i%3 == 0 {
			cells[i].Node, cells[i].Since = nodes[i%len(nodes)].Name, t0.Add(-time.Hour)
			if i%9 == 0 {
				cells[i].LatencySLOms, cells[i].Observed = 30, &Observed{LatencyP99ms: 45}
			}
		}
	}
	encode := func(a map[string]string, d []Decision) []byte {
		b, err := json.Marshal(struct {
			A map[string]string
			D []Decision
		}{a, d})
		if err != nil {
			t.Fatal(err)
		}
		return b
	}
	want := encode(p.Plan(nodes, cells, targets, t0))
	rng := rand.New(rand.NewPCG(1, 2))
	for range 3 {
		n2, c2 := append([]Node(nil), nodes...), append([]Cell(nil), cells...)
		rng.Shuffle(len(n2), func(i, j int) { n2[i], n2[j] = n2[j], n2[i] })
		rng.Shuffle(len(c2), func(i, j int) { c2[i], c2[j] = c2[j], c2[i] })
		if got := encode(p.Plan(n2, c2, targets, t0)); !bytes.Equal(got, want) {
			t.Fatal("a shuffled input gives another plan")
		}
	}
}

// TestCapacityAccounting: cells bound in one plan see each other's memory;
// no node is promised more than it has free.
func TestCapacityAccounting(t *testing.T) {
	p := defaultPlanner(t)
	t.Run("one node fills up", func(t *testing.T) {
		var cells []Cell
		for _, id := range []string{"c0", "c1", "c2", "c3", "c4", "c5"} {
			cells = append(cells, cell(id))
		}
		got, ds := p.Plan([]Node{node("a", free(gib))}, cells, nil, t0)
		if len(got) != 4 || len(ds) != 6 {
			t.Fatalf("assignments %v, %d decisions", got, len(ds))
		}
		for _, d := range ds[4:] {
			if d.Kind != KindUnplaceable {
				t.Fatalf("%+v", d)
			}
			mustContain(t, d.Why, "a by memory (0 B free after 1.0 GiB bound by this plan < 256 MiB requested)")
		}
	})
	t.Run("generated fleet", func(t *testing.T) {
		nodes, cells, targets := genFleet(11, 200, 4000)
		// Make memory the scarce resource.
		for i := range nodes {
			nodes[i].MemFree /= 8
		}
		got, ds := p.Plan(nodes, cells, targets, t0)
		freeMem := map[string]int64{}
		for _, n := range nodes {
			freeMem[n.Name] = int64(n.MemFree)
		}
		for _, c := range cells {
			if n, ok := got[c.ID]; ok {
				freeMem[n] -= int64(c.MemBytes)
			}
		}
		for n, f := range freeMem {
			if f < 0 {
				t.Errorf("%s overcommitted by %d bytes", n, -f)
			}
		}
		unplaceable := 0
		for _, d := range ds {
			if d.Kind == KindUnplaceable {
				unplaceable++
			}
		}
		if unplaceable == 0 || len(got)+unplaceable != len(cells) {
			t.Errorf("%d placed, %d unplaceable of %d: the test needs both", len(got), unplaceable, len(cells))
		}
	})
}

// TestExplanation checks the sentence of the Castellolí story: the vehicle
// cell goes to the node covering the vehicle; the green node dying of
// energy is named with its figures.
func TestExplanation(t *testing.T) {
	p := defaultPlanner(t)
	vehicle := north(castelloli, 1500)
	nodes := []Node{
		node("edge-1", green(8, -5), cover(north(vehicle, 50), 500)),
		node("edge-2", free(2150*mib), cover(north(vehicle, 120), 500)),
		node("edge-3", cover(castelloli, 500)),
		node("edge-4", offline(5*time.Minute)),
	}
	c := cell("analytics-7", with(func(k *Constraints) { k.Target = "vehicle-7" }))
	c.App = "analytics"
	d := p.Place(nodes, c, map[string]Point{"vehicle-7": vehicle}, t0)
	if d.To != "edge-2" {
		t.Fatalf("to %s: %s", d.To, d.Why)
	}
	if d.Time != t0 || d.Cell != "analytics-7" || d.App != "analytics" || d.Kind != KindPlace || d.Reason != ReasonNew {
		t.Errorf("decision %+v", d)
	}
	mustContain(t, d.Why,
		"edge-2 won with ",
		"120 m from target vehicle-7 (inside its 500 m coverage)",
		"2.1 GiB free",
		"rejected 3 of 4 nodes",
		"edge-4 by online (offline for 5m0s)",
		"edge-1 by energy (battery 8% draining 5%/h lasts 1.6 h < 2 h horizon)",
		"edge-3 by coverage (1.5 km from target vehicle-7 (outside its 500 m coverage); another node covers the target)",
	)
	// Candidates: the winner with scores, then one example per filter.
	if len(d.Candidates) != 4 || d.Candidates[0].Node != "edge-2" || d.Candidates[0].Filtered != "" ||
		d.Candidates[0].Scores[ScoreDistance] != DefaultConfig().Weights.Distance {
		t.Errorf("candidates %+v", d.Candidates)
	}
}

// TestDecisionBounded: a big fleet's decision carries TopN scored
// candidates and counts, not a row per node.
func TestDecisionBounded(t *testing.T) {
	var nodes []Node
	for i := range 300 {
		n := node("n"+string(rune('a'+i%26))+strings.Repeat("x", i/26), load(float64(i%90)/100))
		if i%3 == 0 {
			n.Arch = "arm64"
		}
		nodes = append(nodes, n)
	}
	d := defaultPlanner(t).Place(nodes, cell("c", with(func(k *Constraints) { k.Arch = "amd64" })), nil, t0)
	scored, filtered := 0, 0
	for i, c := range d.Candidates {
		if c.Filtered == "" {
			scored++
			if i > 0 && c.Total > d.Candidates[i-1].Total {
				t.Errorf("candidates not best first: %+v", d.Candidates[:i+1])
			}
		} else {
			filtered++
		}
	}
	if scored != 8 || filtered != 1 || d.Feasible != 200 || d.Rejected[0].Count != 100 {
		t.Errorf("scored %d, filtered %d, feasible %d, rejected %+v", scored, filtered, d.Feasible, d.Rejected)
	}
}

// TestDecisionJSON: decisions go out of the API as they are; the field
// names are snake_case and stable.
func TestDecisionJSON(t *testing.T) {
	nodes := []Node{node("a", load(0.97)), node("b", load(0.1)), node("c", arch("arm64"))}
	_, ds := defaultPlanner(t).Plan(nodes, []Cell{cell("x", on("a", time.Hour), with(func(k *Constraints) { k.Arch = "amd64" }))}, nil, t0)
	if len(ds) != 1 {
		t.Fatalf("decisions %+v", ds)
	}
	b, err := json.Marshal(ds[0])
	if err != nil {
		t.Fatal(err)
	}
	var m map[string]any
	if err := json.Unmarshal(b, &m); err != nil {
		t.Fatal(err)
	}
	for _, k := range []string{"time", "cell", "app", "kind", "reason", "from", "to", "candidates", "rejected", "feasible", "why"} {
		if _, ok := m[k]; !ok {
			t.Errorf("no %q in %s", k, b)
		}
	}
	mustContain(t, string(b), `"kind":"move"`, `"reason":"overload"`, `"current":true`,
		`"filtered":"overload: a load 97% \u003e 90%"`, `"scores":{"capacity":`,
		`{"filter":"arch","count":1,"example":"c","reason":"arm64, the cell needs amd64"}`)
}

// TestConfigValidate names the field that is wrong.
func TestConfigValidate(t *testing.T) {
	cases := []struct {
		name string
		mod  func(*Config)
		want string
	}{
		{"defaults", func(*Config) {}, ""},
		{"negative weight", func(c *Config) { c.Weights.Load = -1 }, "weights.load"},
		{"all weights zero", func(c *Config) { c.Weights = Weights{} }, "at least one weight"},
		{"negative horizon", func(c *Config) { c.EnergyHorizon = -time.Hour }, "energy_horizon"},
		{"negative grace", func(c *Config) { c.OfflineGrace = -1 }, "offline_grace"},
		{"negative residence", func(c *Config) { c.MinResidence = -1 }, "min_residence"},
		{"negative margin", func(c *Config) { c.MoveMargin = -1 }, "move_margin"},
		{"overload above 1", func(c *Config) { c.OverloadLoad = 1.5 }, "overload_load"},
		{"target above overload", func(c *Config) { c.OverloadTarget = 0.95 }, "overload_target"},
		{"slack", func(c *Config) { c.CoverageSlack = 2 }, "coverage_slack"},
		{"top n", func(c *Config) { c.TopN = 0 }, "top_n"},
		{"mem scale", func(c *Config) { c.MemScale = 0 }, "mem_scale"},
		{"cpu scale", func(c *Config) { c.CPUScale = 0 }, "cpu_scale"},
		{"distance scale", func(c *Config) { c.DistanceScale = -5 }, "distance_scale_m"},
		{"full hours", func(c *Config) { c.EnergyFullHours = 0 }, "energy_full_hours"},
		{"mismatch", func(c *Config) { c.PowerMismatch = 1.2 }, "power_mismatch"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			cfg := DefaultConfig()
			tc.mod(&cfg)
			err := cfg.Validate()
			if tc.want == "" {
				if err != nil {
					t.Fatal(err)
				}
				return
			}
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("error %v, want one about %s", err, tc.want)
			}
			if _, err := New(cfg, nil); err == nil {
				t.Fatal("New accepted it")
			}
		})
	}
}

// TestConfigFiles decodes the planner section of a config file strictly,
// over the defaults: testdata/*.good.yml must load and validate,
// *.bad.yml must fail with the error named in their first line.
func TestConfigFiles(t *testing.T) {
	files, _ := filepath.Glob("testdata/*.yml")
	if len(files) == 0 {
		t.Fatal("no testdata")
	}
	for _, f := range files {
		t.Run(filepath.Base(f), func(t *testing.T) {
			b, err := os.ReadFile(f)
			if err != nil {
				t.Fatal(err)
			}
			cfg := DefaultConfig()
			dec := yaml.NewDecoder(bytes.NewReader(b))
			dec.KnownFields(true)
			err = dec.Decode(&cfg)
			if err == nil {
				err = cfg.Validate()
			}
			if strings.HasSuffix(f, ".good.yml") {
				if err != nil {
					t.Fatal(err)
				}
				return
			}
			first, _, _ := strings.Cut(string(b), "\n")
			want := strings.TrimSpace(strings.TrimPrefix(first, "# error:"))
			if err == nil || !strings.Contains(err.Error(), want) {
				t.Fatalf("error %v, want %q", err, want)
			}
		})
	}
}

// TestNaiveAgrees checks the Planner's indexed, precomputed placement
// against the naive peer on a generated fleet: the same cell order, the
// same winners, the same top candidates and totals.
func TestNaiveAgrees(t *testing.T) {
	for _, pred := range []Predictor{nil, hashPredictor{}} {
		cfg := DefaultConfig()
		nodes, cells, targets := genFleet(5, 300, 3000)
		got, ds := newPlanner(t, cfg, pred).Plan(nodes, cells, targets, t0)
		want, wds := naive{cfg: cfg, pred: pred}.plan(nodes, cells, targets, t0)
		if len(got) != len(want) || len(ds) != len(wds) {
			t.Fatalf("planner placed %d (%d decisions), naive %d (%d)", len(got), len(ds), len(want), len(wds))
		}
		for i := range ds {
			d, w := ds[i], wds[i]
			if d.Cell != w.Cell || d.To != w.To || d.Kind != w.Kind || d.Feasible != w.Feasible {
				t.Fatalf("decision %d: planner %s → %q (%s, %d feasible), naive %s → %q (%s, %d feasible)",
					i, d.Cell, d.To, d.Kind, d.Feasible, w.Cell, w.To, w.Kind, w.Feasible)
			}
			var top []Candidate
			for _, c := range d.Candidates {
				if c.Filtered == "" {
					top = append(top, c)
				}
			}
			if len(top) != len(w.Candidates) {
				t.Fatalf("%s: %d candidates, naive %d", d.Cell, len(top), len(w.Candidates))
			}
			for j := range top {
				if top[j].Node != w.Candidates[j].Node || top[j].Total != w.Candidates[j].Total {
					t.Fatalf("%s candidate %d: %+v, naive %+v", d.Cell, j, top[j], w.Candidates[j])
				}
			}
			if len(d.Rejected) != len(w.Rejected) {
				t.Fatalf("%s rejections %+v, naive %+v", d.Cell, d.Rejected, w.Rejected)
			}
			for j := range d.Rejected {
				if d.Rejected[j].Filter != w.Rejected[j].Filter || d.Rejected[j].Count != w.Rejected[j].Count {
					t.Fatalf("%s rejections %+v, naive %+v", d.Cell, d.Rejected, w.Rejected)
				}
			}
		}
		if len(got) < len(cells)*3/4 || len(got) == len(cells) {
			t.Errorf("%d of %d placed: the fleet should place most cells but not all", len(got), len(cells))
		}
		for id, n := range want {
			if got[id] != n {
				t.Fatalf("%s: planner %s, naive %s", id, got[id], n)
			}
		}
	}
}

// TestViewBindsInOrder: placing cells one by one on a View gives what a
// full plan gives for the same cells in the same order — each decision
// sees the capacity taken by the ones before it.
func TestViewBindsInOrder(t *testing.T) {
	p := defaultPlanner(t)
	nodes, cells, targets := genFleet(9, 100, 800)
	for i := range nodes {
		nodes[i].MemFree /= 4 // so that capacity runs short
	}
	want, _ := p.Plan(nodes, cells, targets, t0)
	slices.SortFunc(cells, func(a, b Cell) int { // Plan's order for new cells
		if c := cmp.Compare(b.MemBytes, a.MemBytes); c != 0 {
			return c
		}
		return strings.Compare(a.ID, b.ID)
	})
	vw := p.View(nodes, targets, t0)
	unplaceable := 0
	for _, c := range cells {
		d := vw.Place(c)
		if d.To != want[c.ID] {
			t.Fatalf("%s: view %q, plan %q", c.ID, d.To, want[c.ID])
		}
		if d.Kind == KindUnplaceable {
			unplaceable++
		}
	}
	if unplaceable == 0 {
		t.Error("capacity never ran short: the test does not show the view binding")
	}
}
