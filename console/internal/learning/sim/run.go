package sim

import (
	"fmt"
	"io"
	"math"
	"slices"
	"strings"
	"time"

	"github.com/cloudskin/cloudskin/console/internal/planner"
)

// ExploreEvery is how often (minutes) the warm-up moves a random cell.
const ExploreEvery = 20

// Strategy names, in the order results are reported.
const (
	NameLearning    = "planner+learning"
	NameHeuristics  = "planner (no learning)"
	NameRoundRobin  = "round-robin"
	NameLeastLoaded = "least-loaded"
)

// Inputs are the real traces a run plays.
type Inputs struct {
	Irradiance *Irradiance
	Track      *Track
}

// LoadInputs reads the traces: PVGIS CSV and barefoot GPS JSON.
func LoadInputs(pvgis, gps io.Reader) (Inputs, error) {
	irr, err := ReadPVGIS(pvgis, Day.Year())
	if err != nil {
		return Inputs{}, err
	}
	fixes, err := ReadFixes(gps)
	if err != nil {
		return Inputs{}, err
	}
	tr, err := NewTrack(FilterFixes(fixes, MaxSpeedKmh))
	if err != nil {
		return Inputs{}, err
	}
	return Inputs{Irradiance: irr, Track: tr}, nil
}

// Result is one strategy's day.
type Result struct {
	Name string
	Tally
	// StartStoredWh and GreenStoredWh are the charge in the green
	// batteries at the start and the end of the day: a strategy that
	// drains them has only moved its brown-outs to the night after.
	StartStoredWh, GreenStoredWh float64
	// Notes say how the strategy was set up (the learning plane's models
	// and their evidence).
	Notes []string
}

// VehicleMeanMs and VehicleP99Ms summarise the vehicle cell's minute p99s.
func (r *Result) VehicleMeanMs() float64 {
	if len(r.VehicleP99) == 0 {
		return math.NaN()
	}
	s := 0.0
	for _, v := range r.VehicleP99 {
		s += v
	}
	return s / float64(len(r.VehicleP99))
}

// VehicleP99Ms is the 99th percentile (nearest rank) of the vehicle cell's
// minute p99s over the day.
func (r *Result) VehicleP99Ms() float64 { return percentile(r.VehicleP99, 0.99) }

func percentile(vs []float64, q float64) float64 {
	if len(vs) == 0 {
		return math.NaN()
	}
	s := slices.Clone(vs)
	slices.Sort(s)
	k := int(math.Ceil(q*float64(len(s)))) - 1
	return s[max(k, 0)]
}

// Run simulates the warm-up week under the heuristic Planner with
// exploration, then plays the evaluated day once per strategy from the
// same state, in the order NameLearning, NameHeuristics, NameRoundRobin,
// NameLeastLoaded. The learning plane is trained on the warm-up's history
// only.
func Run(in Inputs, seed uint64, lc LearnConfig) ([]Result, error) {
	w := NewWorld(in.Irradiance, in.Track, seed)
	s := NewState(w)
	heur, err := planner.New(planner.DefaultConfig(), nil)
	if err != nil {
		return nil, err
	}
	warm := &Explorer{Inner: &PlannerStrategy{Label: "warm-up", P: heur}, Every: ExploreEvery}
	for s.Now.Before(Day) {
		s.Step(warm)
	}

	models := TrainModels(s, lc)
	learn, l, err := NewLearningStrategy(s, models, lc)
	if err != nil {
		return nil, err
	}
	strategies := []Strategy{
		learn,
		&PlannerStrategy{Label: NameHeuristics, P: heur},
		NewRoundRobin(),
		NewLeastLoaded(),
	}
	end := Day.Add(24 * time.Hour)
	out := make([]Result, 0, len(strategies))
	for _, st := range strategies {
		c := s.Clone()
		for c.Now.Before(end) {
			c.Step(st)
		}
		r := Result{Name: st.Name(), Tally: c.Tally, StartStoredWh: s.GreenStoredWh(), GreenStoredWh: c.GreenStoredWh()}
		if st == Strategy(learn) {
			r.Notes = append(slices.Clone(models.Notes), l.Notes...)
		}
		out = append(out, r)
	}
	return out, nil
}

// Verdict is the target checked on one run: planner+learning has
// fewer SLO minutes and fewer depletions than every baseline (round robin,
// least loaded), and no more migrations than the best baseline — the one
// with the fewest SLO minutes plus depletions.
type Verdict struct {
	FewerSLO, FewerDepletions, MigrationsOK bool
	Best                                    string // the best baseline
}

// Met says whether the whole target holds.
func (v Verdict) Met() bool { return v.FewerSLO && v.FewerDepletions && v.MigrationsOK }

// Judge checks the target on Run's results.
func Judge(rs []Result) Verdict {
	learn := find(rs, NameLearning)
	v := Verdict{FewerSLO: true, FewerDepletions: true}
	var best *Result
	for _, name := range []string{NameRoundRobin, NameLeastLoaded} {
		b := find(rs, name)
		v.FewerSLO = v.FewerSLO && learn.SLOMinutes < b.SLOMinutes
		v.FewerDepletions = v.FewerDepletions && learn.Depletions < b.Depletions
		if best == nil || b.SLOMinutes+b.Depletions < best.SLOMinutes+best.Depletions {
			best = b
		}
	}
	v.Best = best.Name
	v.MigrationsOK = learn.Migrations <= best.Migrations
	return v
}

func find(rs []Result, name string) *Result {
	for i := range rs {
		if rs[i].Name == name {
			return &rs[i]
		}
	}
	panic("sim: no result for " + name)
}

// Table is one run's results as a markdown table.
func Table(rs []Result) string {
	var b strings.Builder
	b.WriteString(tableHead)
	for _, r := range rs {
		fmt.Fprintf(&b, "| %s | %d | %d | %.2f | %d (%d) | %.1f | %.1f | %d | %.2f |\n", r.Name, r.SLOMinutes, r.Depletions,
			r.GridWh/1000, r.Migrations, r.VehicleMigrations, r.VehicleMeanMs(), r.VehicleP99Ms(), r.DownMinutes, r.GreenStoredWh/1000)
	}
	return b.String()
}

const tableHead = "| strategy | SLO violations (cell-min) | battery depletions | grid energy (kWh) | migrations (of the vehicle cell) | vehicle latency mean (ms) | vehicle latency p99 (ms) | cells down (cell-min) | green charge at 24:00 (kWh) |\n" +
	"|---|---:|---:|---:|---:|---:|---:|---:|---:|\n"

// SeedTable summarises runs over several seeds as mean ± standard
// deviation per strategy.
func SeedTable(runs [][]Result) string {
	var b strings.Builder
	b.WriteString(tableHead)
	for k := range runs[0] {
		col := func(f func(r *Result) float64) (float64, float64) {
			vs := make([]float64, len(runs))
			for i := range runs {
				vs[i] = f(&runs[i][k])
			}
			return meanSD(vs)
		}
		cell := func(prec int, f func(r *Result) float64) string {
			m, sd := col(f)
			return fmt.Sprintf("%.*f ± %.*f", prec, m, prec, sd)
		}
		fmt.Fprintf(&b, "| %s | %s | %s | %s | %s (%s) | %s | %s | %s | %s |\n", runs[0][k].Name,
			cell(0, func(r *Result) float64 { return float64(r.SLOMinutes) }),
			cell(1, func(r *Result) float64 { return float64(r.Depletions) }),
			cell(2, func(r *Result) float64 { return r.GridWh / 1000 }),
			cell(0, func(r *Result) float64 { return float64(r.Migrations) }),
			cell(0, func(r *Result) float64 { return float64(r.VehicleMigrations) }),
			cell(1, (*Result).VehicleMeanMs),
			cell(1, (*Result).VehicleP99Ms),
			cell(0, func(r *Result) float64 { return float64(r.DownMinutes) }),
			cell(2, func(r *Result) float64 { return r.GreenStoredWh / 1000 }))
	}
	return b.String()
}

func meanSD(vs []float64) (mean, sd float64) {
	for _, v := range vs {
		mean += v
	}
	mean /= float64(len(vs))
	if len(vs) < 2 {
		return mean, 0
	}
	for _, v := range vs {
		sd += (v - mean) * (v - mean)
	}
	return mean, math.Sqrt(sd / float64(len(vs)-1))
}
