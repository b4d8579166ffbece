package model

import (
	"encoding/json"
	"errors"
	"fmt"
	"math"
	"math/rand/v2"
	"strings"
	"testing"
	"time"
)

// linearTable is y = 5 + 2·a - 3·b + 0.5·c + N(0, noise), with features on
// very different scales, so that standardisation has work to do.
func linearTable(n int, noise float64, seed uint64) Table {
	r := rand.New(rand.NewPCG(seed, 2))
	t := Table{Features: []string{"a", "b", "c"}}
	for range n {
		a, b, c := r.Float64(), 100*r.NormFloat64(), 1e4*r.Float64()
		t.X = append(t.X, []float64{a, b, c})
		t.Y = append(t.Y, 5+2*a-3*b+0.5*c+noise*r.NormFloat64())
	}
	return t
}

// rawCoef is a coefficient per raw unit of its feature.
func rawCoef(m *Linear, j int) float64 {
	if m.Scales[j] == 0 {
		return 0
	}
	return m.Coefs[j] / m.Scales[j]
}

func TestTrainLinearRecoversCoefficients(t *testing.T) {
	tab := linearTable(500, 0.1, 1)
	res, err := TrainLinear(tab, LinearOptions{})
	if err != nil {
		t.Fatal(err)
	}
	t.Log(res.Reason)
	if !res.Ready || res.BaselineName == "" {
		t.Fatalf("not ready: %s", res.Reason)
	}
	m := res.Model
	for j, want := range []float64{2, -3, 0.5} {
		if got := rawCoef(m, j); math.Abs(got-want) > 0.02*math.Abs(want)+0.05 {
			t.Errorf("coefficient of %s = %.4f, want %.4f", m.Features[j], got, want)
		}
	}
	mean := 0.0
	for _, y := range tab.Y {
		mean += y / float64(len(tab.Y))
	}
	if math.Abs(m.Base-mean) > 1e-9*math.Abs(mean) || m.Rows != 500 {
		t.Errorf("base %v rows %d, want the mean of all %d rows %v", m.Base, m.Rows, len(tab.Y), mean)
	}
	if res.Metrics.MAE > 0.2 || res.Metrics.N != 100 {
		t.Errorf("holdout MAE %.4f over %d rows, want below 0.2 over 100", res.Metrics.MAE, res.Metrics.N)
	}
	if res.Metrics.MAE >= res.Baseline.MAE/100 {
		t.Errorf("ridge MAE %.4g is not far below the mean's %.4g", res.Metrics.MAE, res.Baseline.MAE)
	}
}

func TestPredictExplains(t *testing.T) {
	res, err := TrainLinear(linearTable(300, 5, 2), LinearOptions{})
	if err != nil {
		t.Fatal(err)
	}
	m := res.Model
	r := rand.New(rand.NewPCG(3, 3))
	for range 200 {
		x := []float64{r.NormFloat64() * 10, r.NormFloat64() * 1e3, r.NormFloat64() * 1e5}
		y, base, cs := m.Predict(x)
		if base != m.Base {
			t.Fatalf("base %v, want %v", base, m.Base)
		}
		sum := base
		for i, c := range cs {
			sum += c.Effect
			if i > 0 && math.Abs(c.Effect) > math.Abs(cs[i-1].Effect) {
				t.Fatalf("contributions not sorted by |effect|: %+v", cs)
			}
		}
		if sum != y {
			t.Fatalf("base + Σ effects = %v, prediction %v (x=%v)", sum, y, x)
		}
		if v := m.Value(x); math.Abs(v-y) > 1e-9*(1+math.Abs(y)) {
			t.Fatalf("Value %v, Predict %v", v, y)
		}
		// The effects are the model's: coefficient times distance from
		// the training mean, per raw unit.
		for _, c := range cs {
			j := map[string]int{"a": 0, "b": 1, "c": 2}[c.Feature]
			if want := rawCoef(m, j) * (x[j] - m.Means[j]); math.Abs(c.Effect-want) > 1e-9*(1+math.Abs(want)) {
				t.Fatalf("%s effect %v, want %v", c.Feature, c.Effect, want)
			}
		}
	}
}

func TestLinearNonNegative(t *testing.T) {
	res, err := TrainLinear(linearTable(200, 0.1, 4), LinearOptions{NonNegative: true})
	if err != nil {
		t.Fatal(err)
	}
	x := []float64{0, 1e4, 0} // y ≈ 5 - 30000
	y, base, cs := res.Model.Predict(x)
	if y != 0 || res.Model.Value(x) != 0 {
		t.Fatalf("prediction %v, Value %v: want clamped to 0", y, res.Model.Value(x))
	}
	last := cs[len(cs)-1]
	if last.Feature != ClampFeature || last.Value > -29000 {
		t.Errorf("last contribution %+v, want the clamp of about -30000", last)
	}
	sum := base
	for _, c := range cs {
		sum += c.Effect
	}
	if sum != y {
		t.Errorf("base + Σ effects = %v, prediction %v", sum, y)
	}
}

func TestTrainLinearConstantFeature(t *testing.T) {
	tab := linearTable(200, 0.1, 5)
	tab.Features = append(tab.Features, "always.7")
	for i := range tab.X {
		tab.X[i] = append(tab.X[i], 7)
	}
	res, err := TrainLinear(tab, LinearOptions{})
	if err != nil {
		t.Fatal(err)
	}
	m := res.Model
	if m.Scales[3] != 0 || m.Coefs[3] != 0 {
		t.Errorf("constant feature: scale %v coef %v, want 0 and 0", m.Scales[3], m.Coefs[3])
	}
	// A value never seen in training has no effect either.
	y1, _, _ := m.Predict([]float64{0.5, 1, 2, 7})
	y2, _, cs := m.Predict([]float64{0.5, 1, 2, 1e6})
	if y1 != y2 {
		t.Errorf("the constant feature moved the prediction: %v vs %v", y1, y2)
	}
	for _, c := range cs {
		if c.Feature == "always.7" && c.Effect != 0 {
			t.Errorf("effect %v", c.Effect)
		}
	}
	if _, err := json.Marshal(res); err != nil {
		t.Errorf("result does not encode: %v", err)
	}
}

func TestTrainLinearBadRows(t *testing.T) {
	nan := math.NaN()
	poison := func(frac float64) Table {
		tab := linearTable(100, 0.1, 6)
		for i := range int(frac * 100) {
			if i%2 == 0 {
				tab.X[i*100/int(frac*100)][1] = nan
			} else {
				tab.Y[i*100/int(frac*100)] = math.Inf(-1)
			}
		}
		return tab
	}
	res, err := TrainLinear(poison(0.1), LinearOptions{})
	if err != nil {
		t.Fatalf("10%% bad rows: %v", err)
	}
	if res.Model.Rows != 90 || !strings.Contains(res.Reason, "10 dropped") {
		t.Errorf("trained on %d rows, reason %q: want the 10 bad rows dropped", res.Model.Rows, res.Reason)
	}
	if !res.Ready {
		t.Errorf("not ready: %s", res.Reason)
	}

	cases := []struct {
		name string
		tab  Table
		opt  LinearOptions
		want error
	}{
		{"most rows bad", poison(0.6), LinearOptions{}, ErrBadSeries},
		{"too few rows", linearTable(29, 0.1, 7), LinearOptions{}, ErrTooLittleData},
		{"too few after dropping", poison(0.3), LinearOptions{MinRows: 80}, ErrTooLittleData},
		{"empty", Table{Features: []string{"a"}}, LinearOptions{}, ErrTooLittleData},
		{"ragged", Table{Features: []string{"a", "b"}, X: [][]float64{{1, 2}, {3}}, Y: []float64{1, 2}}, LinearOptions{}, ErrBadSeries},
		{"X and Y differ", Table{Features: []string{"a"}, X: [][]float64{{1}}, Y: []float64{1, 2}}, LinearOptions{}, ErrBadSeries},
		{"negative lambda", linearTable(50, 0.1, 8), LinearOptions{Lambdas: []float64{-1}}, ErrBadOptions},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			if _, err := TrainLinear(c.tab, c.opt); !errors.Is(err, c.want) {
				t.Errorf("err = %v, want %v", err, c.want)
			}
		})
	}
}

func TestTrainLinearNotReady(t *testing.T) {
	// A target that never varies: the model is the mean, a tie, not a win.
	tab := linearTable(100, 0, 9)
	for i := range tab.Y {
		tab.Y[i] = 12
	}
	res, err := TrainLinear(tab, LinearOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if res.Ready || !strings.Contains(res.Reason, "is not below") {
		t.Errorf("ready=%v: %s", res.Ready, res.Reason)
	}
	for _, c := range res.Model.Coefs {
		if c != 0 {
			t.Errorf("coefficients %v for a constant target", res.Model.Coefs)
			break
		}
	}
}

func TestEncoder(t *testing.T) {
	var samples []Sample
	for i := range 40 {
		// Module m<i> appears i+1 times: the 32 most frequent are m8…m39.
		for range i + 1 {
			samples = append(samples, Sample{Module: fmt.Sprintf("sha256:%064d", i)})
		}
	}
	e := NewEncoder(samples)
	if len(e.Modules) != MaxModules {
		t.Fatalf("%d modules, want %d", len(e.Modules), MaxModules)
	}
	for _, m := range e.Modules {
		if m < fmt.Sprintf("sha256:%064d", 8) {
			t.Errorf("kept rare module %s", m)
		}
	}
	names := e.Names()
	if len(names) != len(baseNames)+MaxModules || names[1] != "node.queue" || names[len(baseNames)] != "module=000000000000" {
		t.Fatalf("names %v", names)
	}
	s := Sample{
		Time: time.Date(2025, 1, 1, 6, 0, 0, 0, time.UTC), Module: e.Modules[3], Arch: "arm64", Power: "green",
		Cores: 4, MemBytes: 8 << 30, Load: 0.99, InputRate: 100, CellCPU: 0.5, DistanceKm: 3,
	}
	row := e.Row(s)
	want := map[string]float64{
		"node.load": 0.99, "node.queue": 20, "node.cores": 4, "node.mem_gb": 8, "node.arm64": 1, "node.green": 1,
		"cell.input_rate": 100, "cell.cpu": 0.5, "hour.sin": 1, "hour.cos": 0, "net.distance_km": 3,
	}
	hot := 0
	for i, name := range names {
		w, ok := want[name]
		if strings.HasPrefix(name, "module=") {
			hot += int(row[i])
			w, ok = 0, true
			if i == len(baseNames)+3 {
				w = 1
			}
		}
		if !ok || math.Abs(row[i]-w) > 1e-9 {
			t.Errorf("%s = %v, want %v", name, row[i], w)
		}
	}
	if hot != 1 {
		t.Errorf("%d module columns set", hot)
	}
	if r := e.Row(Sample{Module: "unknown"}); r[len(baseNames)] != 0 || r[1] != 1 {
		t.Errorf("unknown module row %v", r)
	}

	later, earlier := Sample{Time: t0.Add(time.Hour), LatencyMs: 2}, Sample{Time: t0, LatencyMs: 1}
	tab := e.Table([]Sample{later, earlier}, func(s Sample) float64 { return s.LatencyMs })
	if len(tab.X) != 2 || tab.Y[0] != 1 || tab.Y[1] != 2 || len(tab.Features) != len(names) {
		t.Errorf("table %+v not in time order", tab)
	}
}
