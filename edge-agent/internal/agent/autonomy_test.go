package agent

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/cloudskin/cloudskin/edge-agent/internal/autonomy"
	"github.com/cloudskin/cloudskin/shared/protocol"
)

// fakeCells records what the policy does to the cells.
type fakeCells struct {
	low    []lowCell
	paused map[string]string
	gone   map[string]bool
}

func (f *fakeCells) lowCells() []lowCell { return slices.Clone(f.low) }

func (f *fakeCells) pauseCell(id, why string) bool {
	if f.gone[id] {
		return false
	}
	f.paused[id] = why
	return true
}

func (f *fakeCells) resumeCell(id, _ string) bool {
	if _, ok := f.paused[id]; !ok || f.gone[id] {
		return false
	}
	delete(f.paused, id)
	return true
}

// policyRig is a policy over fake cells with a fake clock: a 100 Wh
// battery, a 10% reserve and a 10 W draw, so that a charge of p% lasts
// (p-10)/10 hours, against a 2 h horizon (resume above 3 h).
type policyRig struct {
	t      *testing.T
	p      *autonomyPolicy
	cells  *fakeCells
	events []protocol.NodeEvent
	now    time.Time
}

func newPolicyRig(t *testing.T, change func(*Config)) *policyRig {
	t.Helper()
	cfg := DefaultConfig()
	cfg.Name, cfg.PowerClass, cfg.AutonomyBatteryWh = "edge-1", "green", 100
	if change != nil {
		change(&cfg)
	}
	r := &policyRig{t: t, now: time.Date(2026, 6, 1, 21, 0, 0, 0, time.UTC), cells: &fakeCells{paused: map[string]string{}, gone: map[string]bool{},
		low: []lowCell{{ID: "a-topics", Mode: modeShed}, {ID: "b-stream", Mode: modeDeferred}, {ID: "c-stream", Mode: modeDeferred}}}}
	emit := func(ev protocol.NodeEvent) error {
		ev.Node, ev.ID = "edge-1", "e"+string(rune('a'+len(r.events)))
		if err := ev.Validate("edge-1", r.now); err != nil {
			t.Errorf("policy emitted an invalid event: %v", err)
		}
		r.events = append(r.events, ev)
		return nil
	}
	r.p = newAutonomyPolicy(cfg, autonomy.State{}, r.cells, emit, nil, prometheus.NewRegistry(), quiet, r.now)
	r.p.connected(r.now)
	return r
}

// sample advances the clock by 5 s and observes the battery at pct.
func (r *policyRig) sample(pct float64) {
	r.now = r.now.Add(5 * time.Second)
	r.p.observe(r.now, protocol.Energy{Source: protocol.EnergyModel, PowerW: 10, BatteryPct: &pct})
}

func (r *policyRig) kinds() []string {
	var out []string
	for _, ev := range r.events {
		out = append(out, ev.Kind+" "+ev.Cell)
	}
	return out
}

func (r *policyRig) paused() []string {
	return slices.Sorted(func(yield func(string) bool) {
		for id := range r.cells.paused {
			if !yield(id) {
				return
			}
		}
	})
}

func detailOf(t *testing.T, ev protocol.NodeEvent) protocol.AutonomyDetail {
	t.Helper()
	var d protocol.AutonomyDetail
	if err := json.Unmarshal(ev.Detail, &d); err != nil {
		t.Fatalf("detail of %s: %v", ev.Kind, err)
	}
	return d
}

// TestAutonomyShedsAndResumes: cut off from the console past the grace, a
// node short of energy pauses its low cells one per sample, those that lose
// nothing first; it holds them while the forecast is between the horizon and
// 1.5× it, and resumes them, last paused first, above.
func TestAutonomyShedsAndResumes(t *testing.T) {
	r := newPolicyRig(t, nil)
	r.sample(80)
	r.p.disconnected(r.now)
	for range 5 { // 25 s: within the 30 s grace
		r.sample(15)
	}
	if len(r.events) != 0 || len(r.cells.paused) != 0 {
		t.Fatalf("within the grace: events %v, paused %v", r.kinds(), r.paused())
	}
	r.sample(15) // 30 s: autonomous; 0.5 h left < 2 h
	want := []string{"autonomy.start ", "autonomy.forecast ", "autonomy.shed b-stream"}
	if got := r.kinds(); !slices.Equal(got, want) {
		t.Fatalf("events %v, want %v", got, want)
	}
	shed := r.events[2]
	d := detailOf(t, shed)
	if d.Mode != modeDeferred || d.HoursLeft != 0.5 || d.BatteryPct != 15 || d.CapacityWh != 100 || d.CapacitySource != autonomy.CapacityConfigured ||
		d.DrawW != 10 || d.HorizonHours != 2 || d.ReservePct != 10 || d.OfflineSeconds != 30 || !slices.Equal(d.Paused, []string{"b-stream"}) {
		t.Fatalf("shed detail %+v", d)
	}
	if !strings.Contains(shed.Message, "30 min") || !strings.Contains(shed.Message, "deferred") {
		t.Fatalf("shed message %q does not explain itself", shed.Message)
	}
	r.sample(15)
	r.sample(15)
	r.sample(15) // nothing left to shed
	if got := r.paused(); !slices.Equal(got, []string{"a-topics", "b-stream", "c-stream"}) {
		t.Fatalf("paused %v", got)
	}
	if got := r.kinds()[3:]; !slices.Equal(got, []string{"autonomy.shed c-stream", "autonomy.shed a-topics"}) {
		t.Fatalf("then %v: deferred before shed, by id", got)
	}
	if d := detailOf(t, r.events[4]); d.Mode != modeShed {
		t.Fatalf("a topic cell's pause is a shed: %+v", d)
	}
	if got := testutil.ToFloat64(r.p.m.paused); got != 3 {
		t.Fatalf("paused gauge %v", got)
	}

	n := len(r.events)
	for range 10 {
		r.sample(35) // 2.5 h: above the horizon, below 1.5× it
	}
	if len(r.events) != n || len(r.cells.paused) != 3 {
		t.Fatalf("hysteresis: events %v, paused %v", r.kinds()[n:], r.paused())
	}
	r.sample(45) // 3.5 h
	r.sample(45)
	if got := r.kinds()[n:]; !slices.Equal(got, []string{"autonomy.resume a-topics", "autonomy.resume c-stream"}) {
		t.Fatalf("resumed %v, want the last paused first", got)
	}
	if d := detailOf(t, r.events[n]); d.Reason != resumeEnergy || d.HoursLeft != 3.5 {
		t.Fatalf("resume detail %+v", d)
	}
	if got := testutil.ToFloat64(r.p.m.resumes.WithLabelValues(resumeEnergy)); got != 2 {
		t.Fatalf("resumes counted %v", got)
	}
}

// TestAutonomyConsoleBack: when the console is reachable again every paused
// cell resumes at once and autonomy ends; the console's desired state rules.
func TestAutonomyConsoleBack(t *testing.T) {
	r := newPolicyRig(t, nil)
	r.p.disconnected(r.now)
	r.now = r.now.Add(time.Minute)
	r.sample(12)
	r.sample(12)
	r.cells.gone["b-stream"] = true // removed meanwhile (it cannot be resumed)
	if !r.p.view().Active || len(r.cells.paused) != 2 {
		t.Fatalf("not shedding: %+v", r.p.view())
	}
	n := len(r.events)
	r.now = r.now.Add(time.Minute)
	r.p.connected(r.now)
	if got := r.kinds()[n:]; !slices.Equal(got, []string{"autonomy.resume c-stream", "autonomy.end "}) {
		t.Fatalf("events %v", got)
	}
	if d := detailOf(t, r.events[n]); d.Reason != resumeConsole {
		t.Fatalf("resume detail %+v", d)
	}
	end := detailOf(t, r.events[n+1])
	if end.OfflineSeconds != 130 || len(end.Paused) != 0 {
		t.Fatalf("end detail %+v", end)
	}
	if v := r.p.view(); v.Active || len(v.Paused) != 0 || v.OfflineSince != nil {
		t.Fatalf("after the console came back: %+v", v)
	}
	if testutil.ToFloat64(r.p.m.active) != 0 {
		t.Fatal("autonomy gauge still 1")
	}
	// Connected, a short battery is the console's business.
	n = len(r.events)
	for range 20 {
		r.sample(11)
	}
	if len(r.events) != n {
		t.Fatalf("connected node acted alone: %v", r.kinds()[n:])
	}
}

// TestAutonomyNeverSheds: a grid node, a node without a battery, a node
// with autonomy off, and a node whose battery lasts never pause a cell.
func TestAutonomyNeverSheds(t *testing.T) {
	tests := []struct {
		name   string
		change func(*Config)
		energy protocol.Energy
	}{
		{"grid power class", func(c *Config) { c.PowerClass = "grid" }, protocol.Energy{PowerW: 10, BatteryPct: ptrTo(12.0)}},
		{"no battery", nil, protocol.Energy{PowerW: 10}},
		{"UPS on mains", nil, protocol.Energy{PowerW: 10, BatteryPct: ptrTo(12.0), Charging: ptrTo(true)}},
		{"autonomy off", func(c *Config) { c.Autonomy = false }, protocol.Energy{PowerW: 10, BatteryPct: ptrTo(12.0)}},
		{"battery lasts", nil, protocol.Energy{PowerW: 10, BatteryPct: ptrTo(60.0)}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			r := newPolicyRig(t, tc.change)
			r.p.disconnected(r.now)
			for range 100 {
				r.now = r.now.Add(time.Minute)
				r.p.observe(r.now, tc.energy)
			}
			if len(r.cells.paused) != 0 {
				t.Fatalf("paused %v", r.paused())
			}
			for _, ev := range r.events {
				if ev.Kind == protocol.EventAutonomyShed {
					t.Fatalf("shed: %+v", ev)
				}
			}
		})
	}
}

// The forecast's state is saved every few minutes and at shutdown, and
// read back at the next start; an unreadable file starts afresh.
func TestAutonomyStatePersisted(t *testing.T) {
	dir := t.TempDir()
	a := &Agent{cfg: Config{Data: dir}}
	var saves int
	save := func(st autonomy.State) error { saves++; return a.saveAutonomy(st) }
	cfg := DefaultConfig()
	p := newAutonomyPolicy(cfg, loadAutonomyState(dir, quiet), &fakeCells{}, func(protocol.NodeEvent) error { return nil }, save,
		prometheus.NewRegistry(), quiet, time.Now())
	now := time.Now()
	for i := range 12 {
		p.observe(now.Add(time.Duration(i)*time.Minute), protocol.Energy{PowerW: 17, BatteryPct: ptrTo(70.0)})
	}
	if saves != 2 {
		t.Fatalf("saved %d times in 11 minutes, want every 5", saves)
	}
	p.persist(now.Add(12 * time.Minute))
	st := loadAutonomyState(dir, quiet)
	if st.DrawW < 16.9 || st.Last.BatteryPct == nil || *st.Last.BatteryPct != 70 {
		t.Fatalf("state read back %+v", st)
	}
	if err := os.WriteFile(filepath.Join(dir, autonomyFile), []byte("{torn"), 0o600); err != nil {
		t.Fatal(err)
	}
	if st := loadAutonomyState(dir, quiet); st.DrawW != 0 {
		t.Fatalf("unreadable state used: %+v", st)
	}
}

func ptrTo[T any](v T) *T { return &v }

// TestPauseCell: the cell manager pauses only low cells; a paused cell
// takes no input (its topic records are dropped, counted), says so in its
// status, and takes input again once resumed. A change of priority alone
// does not restart a cell.
func TestPauseCell(t *testing.T) {
	minimal, digest := wat(t, "../../../cells/minimal.wat")
	srv, _ := moduleServer(t, map[string][]byte{digest: minimal})
	m, _ := newTestManager(t, srv.URL)
	ctx := context.Background()
	in := []protocol.Input{{Name: "sensors", Topics: []string{"sensors/#"}}}
	low := protocol.CellSpec{ID: "thumbs", Module: digest, Outputs: []string{"count"}, Inputs: in, Priority: protocol.PriorityLow}
	normal := protocol.CellSpec{ID: "alarm", Module: digest, Outputs: []string{"count"}, Inputs: in}
	high := protocol.CellSpec{ID: "safety", Module: digest, Outputs: []string{"count"}, Inputs: in, Priority: protocol.PriorityHigh}
	broken := protocol.CellSpec{ID: "broken", Module: strings.Repeat("0", 64), Inputs: in, Priority: protocol.PriorityLow}
	m.setDesired(desiredJSON(1, low, normal, high, broken))
	m.reconcile(ctx)

	if got := m.lowCells(); len(got) != 1 || got[0] != (lowCell{ID: "thumbs", Mode: modeShed}) {
		t.Fatalf("low cells %+v", got)
	}
	if m.pauseCell("alarm", "x") || m.pauseCell("safety", "x") || m.pauseCell("ghost", "x") {
		t.Fatal("paused a cell that is not low")
	}
	if !m.pauseCell("thumbs", "paused by edge autonomy: test") {
		t.Fatal("low cell not paused")
	}
	st := status(t, m, "thumbs")
	if st.State != protocol.CellPaused || !strings.Contains(st.Message, "edge autonomy") {
		t.Fatalf("paused cell reports %s %q", st.State, st.Message)
	}
	m.dispatch("sensors/a", []byte("1"))
	m.dispatch("sensors/b", []byte("2"))
	eventually(t, "the normal cell handles its records", func() error {
		if st := status(t, m, "alarm"); st.Records != 2 {
			return fmt.Errorf("records %d", st.Records)
		}
		return nil
	})
	if st := status(t, m, "thumbs"); st.Records != 0 {
		t.Fatalf("paused cell handled %d records", st.Records)
	}
	if got := testutil.ToFloat64(m.a.m.dropped.WithLabelValues("cell_paused")); got != 2 {
		t.Fatalf("shed records counted %v, want 2", got)
	}

	if !m.resumeCell("thumbs", "test over") || m.resumeCell("thumbs", "again") {
		t.Fatal("resume: want true once, then false")
	}
	if st := status(t, m, "thumbs"); st.State != protocol.CellRunning {
		t.Fatalf("resumed cell reports %s", st.State)
	}
	m.dispatch("sensors/c", []byte("3"))
	eventually(t, "the resumed cell handles new records", func() error {
		if st := status(t, m, "thumbs"); st.Records != 1 {
			return fmt.Errorf("records %d", st.Records)
		}
		return nil
	})

	low.Priority = protocol.PriorityNormal
	m.setDesired(desiredJSON(2, low, normal, high, broken))
	m.reconcile(ctx)
	if st := status(t, m, "thumbs"); st.State != protocol.CellRunning || st.Records != 1 {
		t.Fatalf("a priority change restarted the cell: %s, records %d", st.State, st.Records)
	}
}

func TestAutonomyConfig(t *testing.T) {
	tests := []struct {
		name   string
		change func(*Config)
		want   string // "" = valid
	}{
		{"defaults", func(*Config) {}, ""},
		{"short, for tests", func(c *Config) { c.AutonomyGrace, c.AutonomyHorizon = time.Second, time.Minute }, ""},
		{"known battery", func(c *Config) { c.AutonomyBatteryWh = 480 }, ""},
		{"negative grace", func(c *Config) { c.AutonomyGrace = -time.Second }, "autonomy-grace:"},
		{"horizon too short", func(c *Config) { c.AutonomyHorizon = time.Second }, "autonomy-horizon:"},
		{"horizon beyond the window", func(c *Config) { c.AutonomyHorizon = 20 * time.Hour }, "autonomy-horizon:"},
		{"reserve 0", func(c *Config) { c.AutonomyReservePct = 0 }, "autonomy-reserve-pct:"},
		{"reserve 95", func(c *Config) { c.AutonomyReservePct = 95 }, "autonomy-reserve-pct:"},
		{"tiny battery", func(c *Config) { c.AutonomyBatteryWh = 0.5 }, "autonomy-battery-wh:"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			c := validConfig(t)
			tc.change(&c)
			err := c.Validate()
			if tc.want == "" {
				if err != nil {
					t.Fatal(err)
				}
				return
			}
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("error %v, want it to name %q", err, tc.want)
			}
		})
	}
}
