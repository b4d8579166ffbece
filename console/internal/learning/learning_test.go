package learning

import (
	"bufio"
	"context"
	"crypto/sha256"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"math"
	"math/rand/v2"
	"os"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/cloudskin/cloudskin/console/internal/planner"

	"github.com/cloudskin/cloudskin/console/internal/store"
	"github.com/cloudskin/cloudskin/shared/protocol"
	"github.com/cloudskin/cloudskin/shared/testenv"
)

var quiet = slog.New(slog.NewTextHandler(io.Discard, nil))

// The fleet the tests train on: sixteen days at 15-minute steps. The green
// node's solar input is NREL SERF's measured PV AC power (July 2016) scaled
// to a 150 W panel; both nodes' CPU load is the Google 2019 cluster's
// average CPU (every third 5-minute row); the green node's battery is run
// forward from them with a known 400 Wh capacity, so the test knows what the
// capacity fit must find. Sources: model/testdata/SOURCE.txt.
const (
	testStep     = 15 * time.Minute
	testDays     = 16
	panelW       = 150.0
	capacityWh   = 400.0
	idleW, busyW = 6.0, 14.0
)

var t0 = time.Date(2026, 7, 1, 0, 0, 0, 0, time.UTC)

func readColumn(t testing.TB, path string, col, every int) []float64 {
	t.Helper()
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	var out []float64
	sc := bufio.NewScanner(f)
	sc.Scan() // header
	for i := 0; sc.Scan(); i++ {
		if i%every != 0 {
			continue
		}
		parts := strings.Split(sc.Text(), ",")
		if col >= len(parts) {
			continue
		}
		v, err := strconv.ParseFloat(strings.TrimSpace(parts[col]), 64)
		if err != nil {
			v = math.NaN()
		}
		out = append(out, v)
	}
	return out
}

// fleet is a store with the two nodes' telemetry and a service over it.
type fleet struct {
	st       *store.Store
	svc      *Service
	end      time.Time
	green    *store.Node
	grid     *store.Node
	trueLoad []float64
}

func enroll(t testing.TB, st *store.Store, name, arch string, labels map[string]string) *store.Node {
	t.Helper()
	ctx := context.Background()
	hash := fmt.Sprintf("%x", sha256.Sum256([]byte(name)))
	if err := st.CreateToken(ctx, &store.EnrollmentToken{TokenHash: hash, ExpiresAt: time.Now().Add(time.Hour)}); err != nil {
		t.Fatal(err)
	}
	lb, _ := json.Marshal(labels)
	n := &store.Node{Name: name, CredentialHash: "x", Arch: arch, Labels: string(lb), Status: protocol.StateOnline}
	if err := st.Enroll(ctx, hash, time.Now(), n); err != nil {
		t.Fatal(err)
	}
	return n
}

func telemetry(n *store.Node, at time.Time, load, power float64, battery, solar *float64) *store.Sample {
	tm := protocol.Telemetry{Node: n.Name, Time: at, CPU: protocol.CPU{Percent: load * 100, Cores: 4},
		Memory: protocol.Memory{TotalBytes: 8 << 30}, Energy: protocol.Energy{PowerW: power, BatteryPct: battery, SolarW: solar}}
	b, _ := json.Marshal(tm)
	return &store.Sample{NodeID: n.ID, TimeUS: at.UnixMicro(), CPUPercent: load * 100, PowerW: power,
		BatteryPct: battery, SolarW: solar, Payload: string(b)}
}

func newFleet(t testing.TB, dsn string) *fleet {
	t.Helper()
	ctx := context.Background()
	st, err := store.Open(ctx, dsn, t.TempDir(), quiet)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { st.Close() })
	f := &fleet{st: st}
	f.green = enroll(t, st, "green-1", "arm64", map[string]string{"power": "green"})
	f.grid = enroll(t, st, "grid-1", "amd64", nil)

	steps := testDays * int(24*time.Hour/testStep)
	solarRaw := readColumn(t, "model/testdata/nrel_serf_east_15min_ac_power_jul2016.csv", 1, 1)
	load := readColumn(t, "model/testdata/google2019_cluster_avg_cpu_300s.csv", 0, 3)
	if len(solarRaw) < steps || len(load) < steps {
		t.Fatalf("traces too short: %d solar, %d load rows for %d steps", len(solarRaw), len(load), steps)
	}
	peak := 0.0
	for _, v := range solarRaw[:steps] {
		if v > peak {
			peak = v
		}
	}
	pct := 60.0
	lastSolar := 0.0
	for i := range steps {
		at := t0.Add(time.Duration(i) * testStep)
		solar := lastSolar
		if v := solarRaw[i]; !math.IsNaN(v) {
			solar = max(v, 0) / peak * panelW
		}
		lastSolar = solar
		l := load[i]
		draw := idleW + busyW*l
		b, s := pct, solar
		for _, smp := range []*store.Sample{telemetry(f.green, at, l, draw, &b, &s), telemetry(f.grid, at, l*0.8, 40+60*l*0.8, nil, nil)} {
			if _, _, err := st.InsertSample(ctx, smp, store.Seen{NowUS: smp.TimeUS}); err != nil {
				t.Fatal(err)
			}
		}
		pct = min(max(pct+(solar-draw)*testStep.Hours()/capacityWh*100, 0), 100)
		f.trueLoad = append(f.trueLoad, l)
	}
	f.end = t0.Add(time.Duration(steps) * testStep)
	f.svc = newService(t, st, f.end)
	return f
}

func newService(t testing.TB, st *store.Store, now time.Time) *Service {
	t.Helper()
	cfg := DefaultConfig()
	cfg.Step = testStep
	cfg.Window = testDays * 24 * time.Hour
	svc, err := New(cfg, st, nil, func(string) float64 { return 0.5 }, quiet)
	if err != nil {
		t.Fatal(err)
	}
	svc.now = func() time.Time { return now }
	return svc
}

// trueLatency is the latency the cell samples are drawn from: a queue that
// fills as the node's load rises, a cost per record, and arm64 cores
// slower. Synthetic on purpose: the test checks the model finds it.
func trueLatency(load, rate float64, arch string) float64 {
	ms := 2 + 1.5*(1/(1-min(load, 0.95))) + 0.04*rate
	if arch == "arm64" {
		ms *= 1.6
	}
	return ms
}

// addCellSamples stores n samples of one module across both nodes.
func (f *fleet) addCellSamples(t testing.TB, n int) {
	t.Helper()
	rng := rand.New(rand.NewPCG(7, 7))
	rows := make([]store.CellSample, 0, n)
	span := f.end.Sub(t0)
	for i := range n {
		at := t0.Add(span * time.Duration(i) / time.Duration(n))
		node, arch, scale := f.grid.Name, "amd64", 0.8
		if i%2 == 0 {
			node, arch, scale = f.green.Name, "arm64", 1
		}
		load := f.trueLoad[min(int(at.Sub(t0)/testStep), len(f.trueLoad)-1)] * scale
		rate := 5 + rng.Float64()*95
		ms := trueLatency(load, rate, arch) * (1 + 0.05*rng.NormFloat64())
		rows = append(rows, store.CellSample{Cell: "agg-" + strconv.Itoa(i%3), App: "agg", Module: strings.Repeat("ab", 32), Node: node,
			TimeUS: at.UnixMicro(), RatePerS: rate, LatencyP99US: ms * 1000, CPU: 0.5})
	}
	if err := f.st.InsertCellSamples(context.Background(), rows); err != nil {
		t.Fatal(err)
	}
}

func eachDB(t *testing.T, fn func(t *testing.T, dsn string)) {
	for _, name := range []string{"sqlite", "postgres"} {
		t.Run(name, func(t *testing.T) {
			dsn := ""
			if name == "postgres" {
				dsn = testenv.PostgresDB(t)
			}
			fn(t, dsn)
		})
	}
}

func modelOf(t *testing.T, rep *Report, kind, subject string) Trained {
	t.Helper()
	for _, m := range rep.Models {
		if m.Kind == kind && m.Subject == subject {
			return m
		}
	}
	t.Fatalf("no %s/%s model in %+v", kind, subject, rep.Models)
	return Trained{}
}

// TestTrainServePredict: two weeks of real telemetry train every model;
// what is ready is served, what is not says why; the Planner and the
// prediction service read the served models.
func TestTrainServePredict(t *testing.T) {
	eachDB(t, func(t *testing.T, dsn string) {
		ctx := context.Background()
		f := newFleet(t, dsn)
		f.addCellSamples(t, 600)
		rep, err := f.svc.Train(ctx, "manual")
		if err != nil {
			t.Fatal(err)
		}
		for _, m := range rep.Models {
			t.Logf("%s/%s v%d %s: %s", m.Kind, m.Subject, m.Version, m.Status, m.Reason)
			if m.Status != store.ModelReady && m.Reason == "" {
				t.Errorf("%s/%s is %s without a reason", m.Kind, m.Subject, m.Status)
			}
		}

		// The battery fit finds the capacity the telemetry was made with.
		bat := modelOf(t, rep, KindBattery, "green-1")
		if bat.Status != store.ModelReady {
			t.Fatalf("battery model: %+v", bat)
		}
		row, err := f.st.ModelByID(ctx, bat.ID)
		if err != nil {
			t.Fatal(err)
		}
		var prm params
		if err := json.Unmarshal([]byte(row.Params), &prm); err != nil || prm.CapacityWh == nil {
			t.Fatalf("battery params %s: %v", row.Params, err)
		}
		if got := *prm.CapacityWh; math.Abs(got-capacityWh)/capacityWh > 0.1 {
			t.Fatalf("capacity %.0f Wh, the battery was %.0f Wh", got, capacityWh)
		}

		// The energy outlook is served: from the solar forecast when it is
		// ready, else from the baseline that beat it (named in Outlooks),
		// never from a not-ready model.
		solar := modelOf(t, rep, KindSolar, "green-1")
		h, ok := f.svc.EnergyHours("green-1")
		if !ok || !(h > 0) {
			t.Fatalf("energy outlook %.1f h (ok=%v) with the solar forecast %+v", h, ok, solar)
		}
		stand := f.svc.Outlooks()[KindSolar+"/green-1"]
		if (solar.Status == store.ModelReady) != (stand == "") {
			t.Fatalf("solar %s, outlook from %q", solar.Status, stand)
		}
		if _, ok := f.svc.EnergyHours("grid-1"); ok {
			t.Fatal("a grid node has no energy outlook to serve")
		}

		// The latency model is served; it learned that load costs latency.
		if lat := modelOf(t, rep, KindLatency, SubjectFleet); lat.Status != store.ModelReady {
			t.Fatalf("latency model: %+v", lat)
		}
		q := Query{Module: strings.Repeat("ab", 32), CPU: 0.5, InputRate: 50, SLOms: 12}
		p, err := f.svc.Predict(q, "grid-1")
		if err != nil || p.LatencyMs == nil {
			t.Fatalf("predict: %+v %v", p, err)
		}
		sum := p.LatencyMs.Base
		for _, c := range p.LatencyMs.Contributions {
			sum += c.Effect
		}
		if len(p.LatencyMs.Contributions) < maxContributions && math.Abs(sum-p.LatencyMs.Value) > 0.01 {
			t.Fatalf("contributions %+v + base %.3f do not add up to %.3f", p.LatencyMs.Contributions, p.LatencyMs.Base, p.LatencyMs.Value)
		}
		if p.LatencyMs.Model != "latency v1" || p.MeetsSLO == nil {
			t.Fatalf("prediction cites %q, meets SLO %v", p.LatencyMs.Model, p.MeetsSLO)
		}
		idle := planner.Node{Name: "grid-1", Arch: "amd64", CPUs: 4, MemTotal: 8 << 30, Load: 0.05, Online: true}
		busy := idle
		busy.Load = 0.55
		cell := planner.Cell{ID: "c", Module: q.Module, CPU: 0.5, InputRate: 50}
		lo, ok1 := f.svc.LatencyMs(cell, idle)
		hi, ok2 := f.svc.LatencyMs(cell, busy)
		if !ok1 || !ok2 || hi <= lo {
			t.Fatalf("latency idle %.2f (%v), busy %.2f (%v): load must cost latency", lo, ok1, hi, ok2)
		}
		want := trueLatency(0.55+0.5/4, 50, "amd64")
		if math.Abs(hi-want)/want > 0.25 {
			t.Fatalf("busy node predicted %.2f ms, the truth is %.2f ms", hi, want)
		}

		// The Planner scores with the served models and cites them.
		pl, err := planner.New(planner.DefaultConfig(), f.svc)
		if err != nil {
			t.Fatal(err)
		}
		d := pl.Place([]planner.Node{idle, {Name: "green-1", Arch: "arm64", CPUs: 4, MemTotal: 8 << 30, Load: 0.3, Online: true, Power: planner.PowerGreen}},
			planner.Cell{ID: "c", Module: q.Module, CPU: 0.5, InputRate: 50, LatencySLOms: 12}, nil, f.end)
		cited := 0
		for _, c := range d.Candidates {
			if c.Predicted != nil && c.Predicted.LatencyMs != nil {
				cited++
			}
			if c.Node == "green-1" && (c.Predicted == nil || c.Predicted.EnergyHours == nil || *c.Predicted.EnergyHours != math.Round(h*100)/100) {
				t.Fatalf("green-1 does not cite the energy outlook %.2f h: %+v", h, c.Predicted)
			}
		}
		if cited != 2 {
			t.Fatalf("decision cites %d latency predictions: %+v", cited, d.Candidates)
		}

		// Recommendations rank the candidates and explain each place.
		ranked, err := f.svc.Recommend(q, []string{"green-1", "grid-1"}, 2)
		if err != nil || len(ranked) != 2 || ranked[0].Rank != 1 || len(ranked[0].Factors) == 0 {
			t.Fatalf("recommend: %+v %v", ranked, err)
		}
		if ranked[0].Node != "grid-1" {
			t.Fatalf("the arm64 node with its slower cores ranked first: %+v", ranked)
		}

		// Bad queries get a clear error; the service keeps answering.
		if _, err := f.svc.Predict(q, "nowhere"); !errors.Is(err, ErrUnknownNode) {
			t.Fatalf("unknown node: %v", err)
		}
		if _, err := f.svc.Predict(Query{CPU: math.NaN()}, "grid-1"); !errors.Is(err, ErrBadQuery) {
			t.Fatalf("NaN cpu: %v", err)
		}
		many := make([]string, 10_000)
		for i := range many {
			many[i] = "n" + strconv.Itoa(i)
		}
		if _, err := f.svc.Recommend(q, many, 2); !errors.Is(err, ErrBadQuery) || !strings.Contains(err.Error(), "at most") {
			t.Fatalf("10,000 candidates: %v", err)
		}
		if _, err := f.svc.Recommend(q, []string{"grid-1", "grid-1"}, 2); !errors.Is(err, ErrBadQuery) {
			t.Fatalf("a candidate twice: %v", err)
		}
		if _, err := f.svc.Recommend(q, []string{"grid-1", "ghost"}, 2); !errors.Is(err, ErrUnknownNode) {
			t.Fatalf("an unknown candidate: %v", err)
		}

		// Retraining adds versions; rollback serves the previous one.
		if _, err := f.svc.Train(ctx, "schedule"); err != nil {
			t.Fatal(err)
		}
		if v := f.svc.Versions()[KindLatency+"/"+SubjectFleet]; v != 2 {
			t.Fatalf("after retraining, latency v%d is served", v)
		}
		if _, err := f.svc.Rollback(ctx, KindLatency, SubjectFleet); err != nil {
			t.Fatal(err)
		}
		if v := f.svc.Versions()[KindLatency+"/"+SubjectFleet]; v != 1 {
			t.Fatalf("after rollback, latency v%d is served", v)
		}
	})
}

// TestTooLittleData: a node with a day of telemetry and a fleet without
// cell samples train nothing; each failure is recorded once with its
// reason, and nothing is served.
func TestTooLittleData(t *testing.T) {
	ctx := context.Background()
	st, err := store.Open(ctx, "", t.TempDir(), quiet)
	if err != nil {
		t.Fatal(err)
	}
	defer st.Close()
	n := enroll(t, st, "green-9", "arm64", map[string]string{"power": "green"})
	b, s := 50.0, 10.0
	for i := range 96 {
		smp := telemetry(n, t0.Add(time.Duration(i)*testStep), 0.2, 8, &b, &s)
		if _, _, err := st.InsertSample(ctx, smp, store.Seen{NowUS: smp.TimeUS}); err != nil {
			t.Fatal(err)
		}
	}
	svc := newService(t, st, t0.Add(24*time.Hour))
	for range 2 {
		rep, err := svc.Train(ctx, "manual")
		if err != nil {
			t.Fatal(err)
		}
		if rep.Ready != 0 || rep.Failed == 0 {
			t.Fatalf("a day of data: %+v", rep)
		}
	}
	rows, err := st.ListModels(ctx, store.ModelQuery{})
	if err != nil {
		t.Fatal(err)
	}
	seen := map[string]int{}
	for _, m := range rows {
		seen[m.Kind+"/"+m.Subject]++
		if m.Status != store.ModelFailed || !strings.Contains(m.Reason, "too little data") {
			t.Errorf("%s/%s: %s %q", m.Kind, m.Subject, m.Status, m.Reason)
		}
	}
	for k, c := range seen {
		if c != 1 {
			t.Errorf("%s recorded %d times for one unchanged reason", k, c)
		}
	}
	if seen["latency/fleet"] != 1 || seen["solar/green-9"] != 1 {
		t.Fatalf("failures recorded: %v", seen)
	}
	if len(svc.Versions()) != 0 {
		t.Fatalf("served %v", svc.Versions())
	}
	if _, ok := svc.LatencyMs(planner.Cell{}, planner.Node{Name: "green-9"}); ok {
		t.Fatal("no latency model, yet a latency")
	}
}
