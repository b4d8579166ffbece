package e2e

import (
	"encoding/json"
	"fmt"
	"math"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	paho "github.com/eclipse/paho.mqtt.golang"
)

// placementFlags make the console's Planner and migrations quick enough for
// a test: a round every half second, a node offline for 3 s is lost.
var placementFlags = []string{"--plan-interval", "500ms", "--offline-grace", "3s", "--min-residence", "0s",
	"--hold-timeout", "60s", "--restore-timeout", "120s"}

// aggOut is one output of the example aggregator cell.
type aggOut struct {
	Sensor string  `json:"sensor"`
	Count  int     `json:"count"`
	Min    float64 `json:"min"`
	Max    float64 `json:"max"`
	Mean   float64 `json:"mean"`
}

// aggWatch follows the aggregator's outputs on one node's sensor broker.
type aggWatch struct {
	mu   sync.Mutex
	last map[string]aggOut
}

func watchAggregates(t *testing.T, sensors, cell string, w *aggWatch) {
	t.Helper()
	sub := paho.NewClient(paho.NewClientOptions().AddBroker("tcp://" + sensors).SetClientID("e2e-reader-" + strconv.FormatInt(time.Now().UnixNano(), 36)).
		SetAutoReconnect(true).SetConnectRetry(true))
	if tok := sub.Connect(); !tok.WaitTimeout(10*time.Second) || tok.Error() != nil {
		t.Fatalf("connect to the sensor broker %s: %v", sensors, tok.Error())
	}
	t.Cleanup(func() { sub.Disconnect(100) })
	sub.Subscribe("cells/"+cell+"/aggregates", 1, func(_ paho.Client, m paho.Message) {
		var a aggOut
		if json.Unmarshal(m.Payload(), &a) == nil {
			w.mu.Lock()
			if a.Count > w.last[a.Sensor].Count {
				w.last[a.Sensor] = a
			}
			w.mu.Unlock()
		}
	}).Wait()
}

func (w *aggWatch) get(sensor string) aggOut {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.last[sensor]
}

func publishReadings(t *testing.T, sensors, sensor string, values []float64) {
	t.Helper()
	pub := paho.NewClient(paho.NewClientOptions().AddBroker("tcp://" + sensors).SetClientID("e2e-sensor-" + strconv.FormatInt(time.Now().UnixNano(), 36)))
	if tok := pub.Connect(); !tok.WaitTimeout(10*time.Second) || tok.Error() != nil {
		t.Fatalf("connect sensor to %s: %v", sensors, tok.Error())
	}
	defer pub.Disconnect(100)
	for _, v := range values {
		if tok := pub.Publish("sensors/field/"+sensor, 1, false, fmt.Sprintf(`{"sensor":%q,"value":%v}`, sensor, v)); !tok.WaitTimeout(10*time.Second) || tok.Error() != nil {
			t.Fatalf("publish: %v", tok.Error())
		}
	}
}

// expect waits until the aggregate of sensor covers every value so far and
// checks it is exactly the aggregate of all of them: nothing lost, nothing
// counted twice, state carried across every move.
func (w *aggWatch) expect(t *testing.T, sensor string, all []float64, timeout time.Duration) {
	t.Helper()
	want := aggOut{Sensor: sensor, Count: len(all), Min: math.Inf(1), Max: math.Inf(-1)}
	sum := 0.0
	for _, v := range all {
		want.Min, want.Max, sum = math.Min(want.Min, v), math.Max(want.Max, v), sum+v
	}
	want.Mean = sum / float64(len(all))
	waitFor(t, timeout, fmt.Sprintf("aggregate of %d readings", len(all)), func() error {
		got := w.get(sensor)
		if got.Count < want.Count {
			return fmt.Errorf("latest aggregate %+v", got)
		}
		return nil
	})
	got := w.get(sensor)
	if got.Count != want.Count || got.Min != want.Min || got.Max != want.Max || math.Abs(got.Mean-want.Mean) > 1e-9 {
		t.Fatalf("aggregate %+v, want %+v", got, want)
	}
}

type moveView struct {
	ID         string     `json:"id"`
	Phase      string     `json:"phase"`
	From       string     `json:"from"`
	To         string     `json:"to"`
	Error      string     `json:"error"`
	Checkpoint string     `json:"checkpoint"`
	StartedAt  time.Time  `json:"started_at"`
	EndedAt    *time.Time `json:"ended_at"`
}

func (c *consoleEnv) waitCellOn(t testing.TB, jwt, cell, node string, timeout time.Duration) {
	t.Helper()
	waitFor(t, timeout, cell+" running on "+node, func() error {
		var v cellView
		if code, raw := c.request("GET", "/api/v1/cells/"+cell, jwt, nil); code != 200 || json.Unmarshal(raw, &v) != nil {
			return fmt.Errorf("GET cell: %d %s", code, raw)
		}
		if v.Node != node || v.Status == nil || v.Status.State != "running" {
			return fmt.Errorf("on %s, status %+v", v.Node, v.Status)
		}
		return nil
	})
}

// migrate asks for a move and waits until it is done.
func (c *consoleEnv) migrate(t *testing.T, jwt, cell, to string, timeout time.Duration) moveView {
	t.Helper()
	var resp struct {
		Move     moveView        `json:"move"`
		Decision json.RawMessage `json:"decision"`
	}
	c.do("POST", "/api/v1/cells/"+cell+"/migrate", jwt, map[string]any{"to": to}, 202, &resp)
	id := resp.Move.ID
	if id == "" || len(resp.Decision) < 10 {
		t.Fatalf("migrate answered %+v", resp)
	}
	return c.waitMove(t, jwt, id, timeout)
}

func (c *consoleEnv) waitMove(t testing.TB, jwt, id string, timeout time.Duration) moveView {
	t.Helper()
	var mv moveView
	waitFor(t, timeout, "move "+id+" done", func() error {
		code, b := c.request("GET", "/api/v1/moves/"+id, jwt, nil)
		if code != 200 || json.Unmarshal(b, &mv) != nil {
			return fmt.Errorf("GET move: %d %s", code, b)
		}
		switch mv.Phase {
		case "done":
			return nil
		case "aborted", "failed":
			t.Fatalf("move %s %s: %s", id, mv.Phase, mv.Error)
		}
		return fmt.Errorf("phase %s", mv.Phase)
	})
	return mv
}

func appPlacement(t *testing.T, c *consoleEnv, jwt, app, cell string) string {
	t.Helper()
	var v struct {
		Placement []struct {
			Cell, Node string
		} `json:"placement"`
	}
	c.do("GET", "/api/v1/apps/"+app, jwt, nil, 200, &v)
	for _, p := range v.Placement {
		if p.Cell == cell {
			return p.Node
		}
	}
	t.Fatalf("app %s has no cell %s: %+v", app, cell, v)
	return ""
}

func aggregatorApp(name, module string, extra map[string]any) map[string]any {
	app := map[string]any{
		"name": name,
		"cells": []map[string]any{{
			"name": "agg", "module": module,
			"inputs":  []map[string]any{{"name": "sensors", "topics": []string{"sensors/#"}}},
			"outputs": []string{"aggregates"},
		}},
	}
	for k, v := range extra {
		app[k] = v
	}
	return app
}

// TestMigrateAcrossArch is the headline: an app's aggregator is placed by
// the Planner, then moved by hand from its node to a node of the other CPU
// architecture (arm64 under qemu) and back, keeping its state: the
// aggregates continue exactly as if it had never moved.
func TestMigrateAcrossArch(t *testing.T) {
	c := newConsole(t, backends[0], placementFlags...)
	jwt := c.login()
	amd := newAgent(t, c, "edge-amd", c.token(jwt), "")
	arm := newArm64Agent(t, c, "edge-arm", c.token(jwt), "")
	waitStatus(t, c, jwt, "edge-amd", "online", 15*time.Second)
	waitStatus(t, c, jwt, "edge-arm", "online", 90*time.Second)
	sensors := map[string]string{"edge-amd": flagValue(amd.args, "--sensors"), "edge-arm": flagValue(arm.args, "--sensors")}

	agg := uploadModule(t, c, jwt, "aggregator", buildCell(t, "aggregator"))
	c.do("POST", "/api/v1/apps", jwt, aggregatorApp("farm", agg, nil), 201, nil)
	const cell = "farm-agg"
	var first string
	waitFor(t, 30*time.Second, "the Planner placed the aggregator", func() error {
		code, raw := c.request("GET", "/api/v1/cells/"+cell, jwt, nil)
		var v cellView
		if code != 200 || json.Unmarshal(raw, &v) != nil || v.Node == "" {
			return fmt.Errorf("%d %s", code, raw)
		}
		first = v.Node
		return nil
	})
	c.waitCellOn(t, jwt, cell, first, 3*time.Minute)
	other := map[string]string{"edge-amd": "edge-arm", "edge-arm": "edge-amd"}

	watch := &aggWatch{last: map[string]aggOut{}}
	for _, s := range sensors {
		watchAggregates(t, s, cell, watch)
	}
	var all []float64
	batch := func(node string, n int, base float64) {
		vals := make([]float64, n)
		for i := range vals {
			vals[i] = base + float64((i*37)%23) - 11.5
		}
		publishReadings(t, sensors[node], "t1", vals)
		all = append(all, vals...)
		watch.expect(t, "t1", all, 60*time.Second)
	}
	batch(first, 40, 20)

	second := other[first]
	mv := c.migrate(t, jwt, cell, second, 3*time.Minute)
	if mv.From != first || mv.To != second {
		t.Fatalf("move %+v, want %s → %s", mv, first, second)
	}
	c.waitCellOn(t, jwt, cell, second, time.Minute)
	batch(second, 40, 30)

	mv = c.migrate(t, jwt, cell, first, 3*time.Minute)
	c.waitCellOn(t, jwt, cell, first, time.Minute)
	batch(first, 20, 5)

	// The decisions say where and why: the placement and both moves.
	var ds struct {
		Decisions []struct {
			Kind, Reason, To, Why string
			Candidates            []json.RawMessage
		} `json:"decisions"`
	}
	c.do("GET", "/api/v1/decisions?cell="+cell, jwt, nil, 200, &ds)
	if len(ds.Decisions) < 3 {
		t.Fatalf("decisions %+v", ds)
	}
	for _, d := range ds.Decisions {
		if d.Why == "" || d.To == "" || len(d.Candidates) == 0 {
			t.Fatalf("decision without explanation: %+v", d)
		}
	}
	if ds.Decisions[0].Reason != "manual" || ds.Decisions[len(ds.Decisions)-1].Kind != "place" {
		t.Fatalf("decisions newest first: %+v", ds.Decisions)
	}
	for _, a := range []*agentEnv{amd, arm} {
		if a.proc.Exited() {
			t.Fatalf("agent %s exited", a.name)
		}
	}
}

// TestFailoverFromCheckpoint kills a node's agent: once it has been offline
// past the grace period, its cell restarts on the other node from its newest
// checkpoint, so the aggregates continue from the checkpoint's state.
func TestFailoverFromCheckpoint(t *testing.T) {
	c := newConsole(t, backends[0], placementFlags...)
	jwt := c.login()
	a1 := newAgent(t, c, "edge-1", c.token(jwt), "")
	waitStatus(t, c, jwt, "edge-1", "online", 15*time.Second)
	agg := uploadModule(t, c, jwt, "aggregator", buildCell(t, "aggregator"))
	c.do("POST", "/api/v1/apps", jwt, aggregatorApp("plant", agg, map[string]any{"checkpoint_seconds": 1}), 201, nil)
	const cell = "plant-agg"
	c.waitCellOn(t, jwt, cell, "edge-1", time.Minute)
	a2 := newAgent(t, c, "edge-2", c.token(jwt), "")
	waitStatus(t, c, jwt, "edge-2", "online", 15*time.Second)

	watch := &aggWatch{last: map[string]aggOut{}}
	watchAggregates(t, flagValue(a1.args, "--sensors"), cell, watch)
	watchAggregates(t, flagValue(a2.args, "--sensors"), cell, watch)
	vals := []float64{3, 9, 1, 7, 5}
	publishReadings(t, flagValue(a1.args, "--sensors"), "p1", vals)
	watch.expect(t, "p1", vals, 30*time.Second)
	// A periodic checkpoint taken after the readings reaches the console.
	processed := time.Now()
	waitFor(t, 30*time.Second, "a checkpoint after the readings", func() error {
		var v struct {
			Status *struct {
				Checkpoint *struct {
					ID   string
					Time time.Time
				}
			} `json:"status"`
		}
		c.do("GET", "/api/v1/cells/"+cell, jwt, nil, 200, &v)
		if v.Status == nil || v.Status.Checkpoint == nil || !v.Status.Checkpoint.Time.After(processed) {
			return fmt.Errorf("status %+v", v.Status)
		}
		var list struct {
			Checkpoints []struct {
				ID string `json:"id"`
			} `json:"checkpoints"`
		}
		c.do("GET", "/api/v1/cells/"+cell+"/checkpoints", jwt, nil, 200, &list)
		if len(list.Checkpoints) == 0 || list.Checkpoints[0].ID != v.Status.Checkpoint.ID {
			return fmt.Errorf("stored %+v, reported %s", list.Checkpoints, v.Status.Checkpoint.ID)
		}
		return nil
	})
	a1.proc.Kill(syscall.SIGKILL)
	waitStatus(t, c, jwt, "edge-1", "offline", 30*time.Second)
	c.waitCellOn(t, jwt, cell, "edge-2", 60*time.Second)

	more := []float64{11, -2}
	publishReadings(t, flagValue(a2.args, "--sensors"), "p1", more)
	watch.expect(t, "p1", append(vals, more...), 30*time.Second)

	var ds struct {
		Decisions []struct{ Reason, From, To, Why string } `json:"decisions"`
	}
	c.do("GET", "/api/v1/decisions?cell="+cell, jwt, nil, 200, &ds)
	if len(ds.Decisions) == 0 || ds.Decisions[0].Reason != "node-offline" || ds.Decisions[0].To != "edge-2" {
		t.Fatalf("decisions %+v", ds.Decisions)
	}
}

// fakeBattery is a sysfs tree with one discharging battery whose charge the
// test sets: the agent reads it as it reads /sys (HOST_SYS).
type fakeBattery struct{ dir string }

func newFakeBattery(t *testing.T, pct int) *fakeBattery {
	t.Helper()
	root := t.TempDir()
	dir := filepath.Join(root, "class", "power_supply", "BAT0")
	if err := os.MkdirAll(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	for name, v := range map[string]string{"type": "Battery", "status": "Discharging", "present": "1"} {
		if err := os.WriteFile(filepath.Join(dir, name), []byte(v+"\n"), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	b := &fakeBattery{dir: dir}
	b.set(t, pct)
	return b
}

func (b *fakeBattery) root() string { return filepath.Dir(filepath.Dir(filepath.Dir(b.dir))) }

func (b *fakeBattery) set(t *testing.T, pct int) {
	t.Helper()
	tmp := filepath.Join(b.dir, ".capacity")
	if err := os.WriteFile(tmp, []byte(strconv.Itoa(pct)+"\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.Rename(tmp, filepath.Join(b.dir, "capacity")); err != nil {
		t.Fatal(err)
	}
}

// TestBatteryLowMigration: a green node's battery drains fast; the Planner
// sees its energy will not last and moves its cell, state intact, to the
// grid node, and says why.
func TestBatteryLowMigration(t *testing.T) {
	c := newConsole(t, backends[0], placementFlags...)
	jwt := c.login()
	bat := newFakeBattery(t, 90)
	green := agentFor(t, c, "solar-1", c.token(jwt), "")
	green.env = []string{"HOST_SYS=" + bat.root()}
	green.start()
	grid := newAgent(t, c, "grid-1", c.token(jwt), "", "--power-class", "grid")
	waitStatus(t, c, jwt, "solar-1", "online", 15*time.Second)
	waitStatus(t, c, jwt, "grid-1", "online", 15*time.Second)

	agg := uploadModule(t, c, jwt, "aggregator", buildCell(t, "aggregator"))
	// The app prefers green power, and may only run at the e2e site.
	c.do("POST", "/api/v1/apps", jwt, aggregatorApp("track", agg, map[string]any{
		"constraints": map[string]any{"power": "green", "site": "e2e"}}), 201, nil)
	const cell = "track-agg"
	c.waitCellOn(t, jwt, cell, "solar-1", time.Minute)
	watch := &aggWatch{last: map[string]aggOut{}}
	watchAggregates(t, flagValue(green.args, "--sensors"), cell, watch)
	watchAggregates(t, flagValue(grid.args, "--sensors"), cell, watch)
	vals := []float64{12, 14, 13}
	publishReadings(t, flagValue(green.args, "--sensors"), "lap", vals)
	watch.expect(t, "lap", vals, 30*time.Second)

	// Clouds: the battery drains by 10 points a second.
	for pct := 80; pct >= 10; pct -= 10 {
		time.Sleep(time.Second)
		bat.set(t, pct)
	}
	c.waitCellOn(t, jwt, cell, "grid-1", 90*time.Second)
	more := []float64{20, 8}
	publishReadings(t, flagValue(grid.args, "--sensors"), "lap", more)
	watch.expect(t, "lap", append(vals, more...), 30*time.Second)

	var ds struct {
		Decisions []struct{ Reason, From, To, Why string } `json:"decisions"`
	}
	c.do("GET", "/api/v1/decisions?cell="+cell, jwt, nil, 200, &ds)
	if len(ds.Decisions) == 0 || ds.Decisions[0].Reason != "energy" || ds.Decisions[0].From != "solar-1" || ds.Decisions[0].To != "grid-1" {
		t.Fatalf("decisions %+v", ds.Decisions)
	}
	if !strings.Contains(ds.Decisions[0].Why, "solar-1") {
		t.Fatalf("the decision does not explain itself: %q", ds.Decisions[0].Why)
	}
}
