package sim

import (
	"fmt"
	"os"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/cloudskin/cloudskin/console/internal/planner"
)

func loadInputs(t testing.TB) Inputs {
	t.Helper()
	pv, err := os.Open("testdata/pvgis_tmy_italy_45.000_8.000_2005_2023.csv")
	if err != nil {
		t.Fatal(err)
	}
	defer pv.Close()
	gps, err := os.Open("testdata/barefoot_munich_x0001-001.json")
	if err != nil {
		t.Fatal(err)
	}
	defer gps.Close()
	in, err := LoadInputs(pv, gps)
	if err != nil {
		t.Fatal(err)
	}
	return in
}

// seeds are 1..CLOUDSKIN_SIM_SEEDS (default 1).
func seeds(t *testing.T) []uint64 {
	n := 1
	if v := os.Getenv("CLOUDSKIN_SIM_SEEDS"); v != "" {
		k, err := strconv.Atoi(v)
		if err != nil || k < 1 {
			t.Fatalf("CLOUDSKIN_SIM_SEEDS=%q: want a count of seeds ≥ 1", v)
		}
		n = k
	}
	out := make([]uint64, n)
	for i := range out {
		out[i] = uint64(i + 1)
	}
	return out
}

// TestCastelloliDay plays the evaluated day with the four strategies and
// checks what the simulation shows, not the numbers: with the learning
// plane the Planner lets no more green sites brown out than its heuristics
// alone, ends the day with more charge in the batteries than they do, and
// keeps SLOs better than round robin and least loaded. The full target
// is logged with its verdict; the report in docs/benchmarks.md discusses
// the parts that miss.
//
//	go test ./console/internal/learning/sim -run TestCastelloliDay -v
//	CLOUDSKIN_SIM_SEEDS=10 go test ./console/internal/learning/sim -run TestCastelloliDay -v -timeout 10m
func TestCastelloliDay(t *testing.T) {
	in := loadInputs(t)
	var runs [][]Result
	for _, seed := range seeds(t) {
		rs, err := Run(in, seed, DefaultLearn())
		if err != nil {
			t.Fatal(err)
		}
		runs = append(runs, rs)
		v := Judge(rs)
		t.Logf("seed %d: target %s (fewer SLO minutes than both baselines: %v; fewer depletions: %v; migrations ≤ best baseline %s: %v)",
			seed, metText(v.Met()), v.FewerSLO, v.FewerDepletions, v.Best, v.MigrationsOK)
		for _, r := range rs {
			t.Logf("seed %d %s: brown-outs %v; SLO minutes by cell %v; Planner decisions %v", seed, r.Name, r.Brownouts, r.SLOByCell, r.Reasons)
		}
		if seed == 1 {
			t.Logf("learning plane (seed 1):\n  %s", strings.Join(rs[0].Notes, "\n  "))
		}
	}
	if len(runs) == 1 {
		t.Logf("Castellolí day, %s, seed 1 (green charge at 00:00: %.2f kWh):\n\n%s",
			Day.Format("2 Jan 2006"), runs[0][0].StartStoredWh/1000, Table(runs[0]))
	} else {
		t.Logf("Castellolí day, %s, %d seeds, mean ± sd:\n\n%s", Day.Format("2 Jan 2006"), len(runs), SeedTable(runs))
	}

	// Per seed: what held on every seed tried (1–10).
	for i, rs := range runs {
		learn, heur, rr := find(rs, NameLearning), find(rs, NameHeuristics), find(rs, NameRoundRobin)
		if learn.Depletions > heur.Depletions {
			t.Errorf("seed %d: %d depletions with learning, %d without", i+1, learn.Depletions, heur.Depletions)
		}
		if !(learn.GreenStoredWh > heur.GreenStoredWh) {
			t.Errorf("seed %d: learning ends the day with %.0f Wh in the green batteries, the Planner alone with %.0f",
				i+1, learn.GreenStoredWh, heur.GreenStoredWh)
		}
		if !(learn.SLOMinutes < rr.SLOMinutes) || !(learn.Migrations < rr.Migrations) {
			t.Errorf("seed %d: learning %d SLO minutes and %d migrations, round robin %d and %d",
				i+1, learn.SLOMinutes, learn.Migrations, rr.SLOMinutes, rr.Migrations)
		}
	}
	// Over the seeds: means.
	mean := func(name string, f func(*Result) float64) float64 {
		s := 0.0
		for _, rs := range runs {
			s += f(find(rs, name))
		}
		return s / float64(len(runs))
	}
	slo := func(r *Result) float64 { return float64(r.SLOMinutes) }
	dep := func(r *Result) float64 { return float64(r.Depletions) }
	for _, name := range []string{NameHeuristics, NameRoundRobin, NameLeastLoaded} {
		if l, b := mean(NameLearning, dep), mean(name, dep); !(l < b) {
			t.Errorf("mean depletions: learning %.2f, %s %.2f", l, name, b)
		}
	}
	for _, name := range []string{NameRoundRobin, NameLeastLoaded} {
		if l, b := mean(NameLearning, slo), mean(name, slo); !(l < b) {
			t.Errorf("mean SLO minutes: learning %.0f, %s %.0f", l, name, b)
		}
	}
}

func metText(ok bool) string {
	if ok {
		return "MET"
	}
	return "MISSED"
}

// warmState is the world at the start of the evaluated day.
func warmState(t testing.TB, seed uint64) *State {
	t.Helper()
	in := loadInputs(t)
	s := NewState(NewWorld(in.Irradiance, in.Track, seed))
	heur, err := planner.New(planner.DefaultConfig(), nil)
	if err != nil {
		t.Fatal(err)
	}
	warm := &Explorer{Inner: &PlannerStrategy{Label: "warm-up", P: heur}, Every: ExploreEvery}
	for s.Now.Before(Day) {
		s.Step(warm)
	}
	return s
}

// TestLearningSeesOnlyThePast checks that the models the learning run
// starts with come from the warm-up alone, and that hourly refits during
// the day read only what has been observed by then.
func TestLearningSeesOnlyThePast(t *testing.T) {
	s := warmState(t, 1)
	for i, obs := range s.Hist.Nodes {
		if len(obs) != WarmupDays*24*60 {
			t.Fatalf("node %d: %d minutes of history at the start of the day, want %d", i, len(obs), WarmupDays*24*60)
		}
	}
	for _, o := range s.Hist.Cells {
		if tt := WarmupStart.Add(time.Duration(o.Minute) * Step); !tt.Before(Day) {
			t.Fatalf("a latency sample from %v is in the history before the day", tt)
		}
	}
	m := TrainModels(s, DefaultLearn())
	if m.Latency == nil {
		t.Fatalf("no latency model: %v", m.Notes)
	}
	st, l, err := NewLearningStrategy(s, m, DefaultLearn())
	if err != nil {
		t.Fatal(err)
	}
	if len(l.solar) != 5 {
		t.Fatalf("%d solar forecasts, want one per green site: %v", len(l.solar), l.Notes)
	}
	for i, f := range l.solar {
		if !f.End.Before(Day) {
			t.Errorf("node %d: solar forecast ends %v, after the day began", i, f.End)
		}
	}
	c := s.Clone()
	for c.Now.Before(Day.Add(3*time.Hour + time.Minute)) {
		c.Step(st)
	}
	for i, f := range l.solar {
		if !f.End.Before(c.Now) || f.End.Before(Day.Add(2*time.Hour)) {
			t.Errorf("node %d: refitted forecast ends %v at %v: want the last full hour observed", i, f.End, c.Now)
		}
	}
	for i, cap := range m.Caps {
		if truth := s.W.Nodes[i].BatteryWh; cap < 0.8*truth || cap > 1.2*truth {
			t.Errorf("node %d: capacity fitted %.0f Wh, true %.0f", i, cap, truth)
		}
	}
}

// TestFairDayCalibration checks the world against what an operator would
// set: on the first warm-up day, a fair one, under the Planner's
// heuristics, every SLO holds in at least 90% of the minutes a cell runs
// undisturbed (restores aside, which break any SLO). SLOs no placement
// can keep would make the comparison meaningless.
func TestFairDayCalibration(t *testing.T) {
	in := loadInputs(t)
	w := NewWorld(in.Irradiance, in.Track, 1)
	s := NewState(w)
	s.TallyFrom = WarmupStart
	heur, err := planner.New(planner.DefaultConfig(), nil)
	if err != nil {
		t.Fatal(err)
	}
	st := &PlannerStrategy{Label: "heuristics", P: heur}
	for s.Now.Before(WarmupStart.Add(24 * time.Hour)) {
		s.Step(st)
	}
	if s.Tally.Depletions > 0 || s.Tally.DownMinutes > 0 {
		t.Errorf("a fair day should run without brown-outs: %d, %d cell-minutes down", s.Tally.Depletions, s.Tally.DownMinutes)
	}
	runs, over := map[int]int{}, map[int]int{}
	for _, o := range s.Hist.Cells {
		runs[o.Cell]++
		if o.P99 > w.Cells[o.Cell].SLOms {
			over[o.Cell]++
		}
	}
	for i, c := range w.Cells {
		if c.SLOms == 0 {
			continue
		}
		if runs[i] == 0 {
			t.Errorf("%s never ran", c.ID)
			continue
		}
		if frac := 1 - float64(over[i])/float64(runs[i]); frac < 0.9 {
			t.Errorf("%s meets its %.0f ms SLO in %.0f%% of its minutes on a fair day", c.ID, c.SLOms, 100*frac)
		}
	}
}

func TestIdleDark(t *testing.T) {
	var obs []NodeObs
	for h := range 48 {
		solar := 0.0
		if hh := h % 24; hh >= 7 && hh < 18 { // 13 dark hours a day
			solar = 500
		}
		draw := 80.0
		if h == 30 {
			draw = 65 // the one hour the site ran idle
		}
		for range 60 {
			obs = append(obs, NodeObs{Pct: 50, SolarW: solar, DrawW: draw})
		}
	}
	idle, dark := idleDark(obs)
	if idle != 65 || dark != 13 {
		t.Errorf("idleDark = %v W, %v h; want 65 W, 13 h", idle, dark)
	}
}

// baselineState is a small fleet: two green sites with coverage and the
// grid site, each cell unplaced.
func baselineState(t *testing.T) *State {
	t.Helper()
	in := loadInputs(t)
	w := NewWorld(in.Irradiance, in.Track, 1)
	return NewState(w)
}

func TestRoundRobin(t *testing.T) {
	s := baselineState(t)
	rr := NewRoundRobin()
	assign := rr.Plan(s)
	count := map[string]int{}
	for _, c := range s.W.Cells {
		n, ok := assign[c.ID]
		if !ok {
			t.Fatalf("%s unplaced", c.ID)
		}
		count[n]++
		if c.Arch != "" && s.W.Nodes[s.W.nodeIdx[n]].Arch != c.Arch {
			t.Errorf("%s needs %s, got %s", c.ID, c.Arch, n)
		}
	}
	for _, n := range s.W.Nodes {
		if count[n.Name] == 0 {
			t.Errorf("round robin over %d cells left %s empty: %v", len(s.W.Cells), n.Name, count)
		}
	}
	// A node going offline sends its cells elsewhere; the others stay.
	for i, c := range s.W.Cells {
		s.Cells[i].Node, s.Cells[i].Since = assign[c.ID], s.Now
	}
	down := s.W.nodeIdx["green-1"]
	s.Nodes[down].Online = false
	again := rr.Plan(s)
	for _, c := range s.W.Cells {
		switch {
		case assign[c.ID] == "green-1" && again[c.ID] == "green-1":
			t.Errorf("%s stayed on the offline node", c.ID)
		case assign[c.ID] != "green-1" && c.Target == "" && again[c.ID] != assign[c.ID]:
			t.Errorf("%s moved from %s to %s for no reason", c.ID, assign[c.ID], again[c.ID])
		}
	}
}

func TestLeastLoaded(t *testing.T) {
	s := baselineState(t)
	assign := NewLeastLoaded().Plan(s)
	// Every cell goes to the node least utilised once it is there: with
	// 8-thread green sites at 4–6% and the grid site at 60%, the first
	// cells fill the green sites, never the grid.
	for _, c := range s.W.Cells {
		if assign[c.ID] == "grid-dc" {
			t.Errorf("%s on the grid site, which starts 60%% busy", c.ID)
		}
	}
	// The vehicle cell is re-placed when the vehicle is out of its
	// node's coverage, once it has run there MinResidence: on the node
	// least utilised with it.
	veh := -1
	for i, c := range s.W.Cells {
		s.Cells[i].Node, s.Cells[i].Since = assign[c.ID], s.Now.Add(-time.Hour)
		if c.Target != "" {
			veh = i
		}
	}
	pos := s.W.VehicleAt(s.Now)
	far := -1
	for i, n := range s.W.Nodes {
		if n.CoverM > 0 && planner.Distance(pos, n.Pos) > 2*n.CoverM {
			far = i
			break
		}
	}
	if far < 0 {
		t.Fatal("no node far from the vehicle")
	}
	vc := &s.W.Cells[veh]
	s.Cells[veh].Node = s.W.Nodes[far].Name
	want, wantU := "", 0.0
	for _, k := range nodeOrder(s.W) {
		n := &s.W.Nodes[k]
		busy := n.BaseCores + vc.CPU
		for i, c := range s.Cells {
			if i != veh && c.Node == n.Name {
				busy += s.W.Cells[i].CPU
			}
		}
		if u := busy / float64(n.CPUs); want == "" || u < wantU {
			want, wantU = n.Name, u
		}
	}
	if got := NewLeastLoaded().Plan(s)[vc.ID]; got != want {
		t.Errorf("vehicle out of coverage: re-placed on %s, least loaded is %s", got, want)
	}
	s.Cells[veh].Since = s.Now // just arrived: it stays
	if got := NewLeastLoaded().Plan(s)[vc.ID]; got != s.W.Nodes[far].Name {
		t.Errorf("vehicle cell left %s before its residence, for %s", s.W.Nodes[far].Name, got)
	}
}

// TestLearningAblations compares ways of running the learning plane (not
// the world): the reported configuration, day-0 models, no stand-in for a
// not-ready forecast, Holt-Winters served regardless, and other reserves,
// over as many seeds as CLOUDSKIN_SIM_SEEDS (1 by default, about 10 s). It
// checks what the ablation shows: without the winning baseline standing in
// for a not-ready forecast the batteries run out more often.
func TestLearningAblations(t *testing.T) {
	in := loadInputs(t)
	variants := []struct {
		name string
		set  func(*LearnConfig)
	}{
		{"reported: the console's defaults (reserve 10%, hourly refit, a not-ready forecast's winning baseline)", func(*LearnConfig) {}},
		{"models of day 0 only", func(c *LearnConfig) { c.RetrainEvery = 0 }},
		{"no stand-in: battery trend while the forecast is not ready", func(c *LearnConfig) { c.NoFallback = true }},
		{"Holt-Winters served even when not ready", func(c *LearnConfig) { c.ServeUnready = true }},
		{"reserve derived per node (idle draw × longest dark)", func(c *LearnConfig) { c.ReservePct = 0 }},
		{"reserve 20%", func(c *LearnConfig) { c.ReservePct = 20 }},
	}
	depletions := make([]float64, len(variants))
	var b strings.Builder
	b.WriteString("| planner+learning variant | SLO violations (cell-min) | battery depletions | migrations | green charge at 24:00 (kWh) |\n|---|---:|---:|---:|---:|\n")
	for vi, v := range variants {
		var slo, dep, mig, end []float64
		for _, seed := range seeds(t) {
			lc := DefaultLearn()
			v.set(&lc)
			rs, err := Run(in, seed, lc)
			if err != nil {
				t.Fatal(err)
			}
			r := find(rs, NameLearning)
			slo, dep = append(slo, float64(r.SLOMinutes)), append(dep, float64(r.Depletions))
			mig, end = append(mig, float64(r.Migrations)), append(end, r.GreenStoredWh/1000)
		}
		f := func(vs []float64, prec int) string {
			m, sd := meanSD(vs)
			return fmt.Sprintf("%.*f ± %.*f", prec, m, prec, sd)
		}
		fmt.Fprintf(&b, "| %s | %s | %s | %s | %s |\n", v.name, f(slo, 0), f(dep, 1), f(mig, 0), f(end, 2))
		depletions[vi], _ = meanSD(dep)
	}
	t.Logf("learning-plane variants, mean ± sd over %d seeds:\n\n%s", len(seeds(t)), b.String())
	if !(depletions[0] < depletions[2]) {
		t.Errorf("depletions: %.2f with the stand-in, %.2f without it", depletions[0], depletions[2])
	}
}
