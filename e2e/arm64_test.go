package e2e

import (
	"bufio"
	"bytes"
	"encoding/json"
	"fmt"
	"math"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	paho "github.com/eclipse/paho.mqtt.golang"
)

// Under qemu-user wasmtime compiles a Go cell in tens of seconds, not under
// one (TestArm64Agent logs the figures); these bounds leave room for a slow
// CI machine without letting a hung agent stall the run for long.
const (
	qemuStartTimeout   = 60 * time.Second
	qemuCompileTimeout = 5 * time.Minute
)

// TestArm64Agent runs the agent as an arm64 node — under qemu-user on amd64 —
// as an operator would: it enrolls and reports arm64, runs the aggregator cell
// that make cells built with the same aggregates as on amd64, and after a
// restart takes the cell from its compiled-code cache instead of compiling
// again. It logs how long the first compile and the cached restart took.
func TestArm64Agent(t *testing.T) {
	wasm := exampleCell(t, "aggregator")
	c := newConsole(t, backends[0])
	jwt := c.login()
	a := newArm64Agent(t, c, "edge-arm", c.token(jwt), "")
	waitStatus(t, c, jwt, "edge-arm", "online", qemuStartTimeout)
	if n := c.node(jwt, "edge-arm"); n.Arch != "arm64" {
		t.Fatalf("edge-arm reports arch %q, want arm64", n.Arch)
	}
	waitFor(t, 30*time.Second, "telemetry from edge-arm", func() error {
		if n := c.node(jwt, "edge-arm"); n.LastTelemetry == nil || n.LastTelemetry.Memory.TotalBytes == 0 {
			return fmt.Errorf("last telemetry %+v", n.LastTelemetry)
		}
		return nil
	})

	var mod struct {
		Digest string `json:"digest"`
	}
	code, _, raw := c.upload("?name=aggregator", jwt, bytes.NewReader(wasm))
	if code != 201 && code != 200 {
		t.Fatalf("upload aggregator: %d %s", code, raw)
	}
	mustUnmarshal(t, raw, &mod)
	deployed := time.Now()
	c.do("POST", "/api/v1/cells", jwt, map[string]any{
		"id": "agg", "node": "edge-arm", "module": mod.Digest,
		"inputs":  []map[string]any{{"name": "sensors", "topics": []string{"sensors/#"}}},
		"outputs": []string{"aggregates"},
	}, 201, nil)
	waitFor(t, qemuCompileTimeout, "aggregator running on edge-arm", func() error {
		if a.proc.Exited() {
			t.Fatalf("the arm64 agent exited")
		}
		var v cellView
		if code, raw := c.request("GET", "/api/v1/cells/agg", jwt, nil); code != 200 || json.Unmarshal(raw, &v) != nil {
			return fmt.Errorf("GET cell: %d %s", code, raw)
		}
		if v.Status == nil || v.Status.State != "running" {
			return fmt.Errorf("status %+v", v.Status)
		}
		return nil
	})
	t.Logf("arm64 under qemu: aggregator (%d bytes) deployed to running in %s", len(wasm), time.Since(deployed).Round(time.Millisecond))
	downloaded, ok1 := agentLogTime(t, a, `msg="module downloaded"`)
	started, ok2 := agentLogTime(t, a, `msg="cell started"`, "cell=agg")
	if ok1 && ok2 {
		t.Logf("arm64 under qemu: of which compile and start after the download: %s", started.Sub(downloaded).Round(time.Millisecond))
	}

	sensors := flagValue(a.args, "--sensors")
	feedAggregator(t, sensors, "t1", []float64{21.5, 19.0, 25.5, 22.0}, aggregate{Sensor: "t1", Count: 4, Min: 19, Max: 25.5, Mean: 22})

	// A restart takes the arm64 code from the cache, keyed by architecture,
	// without fetching the module again.
	cached, _ := filepath.Glob(filepath.Join(a.data, "compiled", "*-linux-arm64.cwasm"))
	if len(cached) != 1 {
		t.Fatalf("compiled-code cache: %v, want one linux-arm64 entry", cached)
	}
	before, err := os.Stat(cached[0])
	if err != nil {
		t.Fatal(err)
	}
	a.proc.Kill(syscall.SIGTERM)
	restart := time.Now()
	a.start()
	waitFor(t, qemuStartTimeout, "aggregator restarted on edge-arm", func() error {
		if a.proc.Exited() {
			t.Fatalf("the arm64 agent exited after a restart")
		}
		if _, ok := agentLogTime(t, a, `msg="cell started"`, "cell=agg"); !ok {
			return fmt.Errorf("no cell started in the agent's log")
		}
		return nil
	})
	started, _ = agentLogTime(t, a, `msg="cell started"`, "cell=agg")
	t.Logf("arm64 under qemu: restart to aggregator running from the compiled-code cache: %s", started.Sub(restart).Round(time.Millisecond))
	if _, ok := agentLogTime(t, a, `msg="module downloaded"`); ok {
		t.Fatal("the restarted agent downloaded the module again instead of using its compiled-code cache")
	}
	if after, err := os.Stat(cached[0]); err != nil || !after.ModTime().Equal(before.ModTime()) || !os.SameFile(before, after) {
		t.Fatalf("the restarted agent rewrote its compiled-code cache entry (%v): it compiled again", err)
	}
	feedAggregator(t, sensors, "t2", []float64{-3.5, 4.0, 0.5}, aggregate{Sensor: "t2", Count: 3, Min: -3.5, Max: 4, Mean: 1.0 / 3})
}

// exampleCell reads a cell that make cells built.
func exampleCell(t testing.TB, name string) []byte {
	t.Helper()
	b, err := os.ReadFile(filepath.Join("..", "bin", "cells", name+".wasm"))
	if err != nil {
		t.Fatalf("example cell %s: %v: run make cells", name, err)
	}
	return b
}

// aggregate is one record the aggregator cell emits on its "aggregates" output.
type aggregate struct {
	Sensor string  `json:"sensor"`
	Count  int     `json:"count"`
	Min    float64 `json:"min"`
	Max    float64 `json:"max"`
	Mean   float64 `json:"mean"`
}

// feedAggregator publishes values for one sensor to a node's sensor broker
// and waits for the aggregator cell "agg" to emit want for them.
func feedAggregator(t *testing.T, broker, sensor string, values []float64, want aggregate) {
	t.Helper()
	got := make(chan []byte, 100)
	connect := func(id string) paho.Client {
		cl := paho.NewClient(paho.NewClientOptions().AddBroker("tcp://" + broker).SetClientID(id))
		if tok := cl.Connect(); !tok.WaitTimeout(15*time.Second) || tok.Error() != nil {
			t.Fatalf("connect %s to the sensor broker %s: %v", id, broker, tok.Error())
		}
		return cl
	}
	sub := connect("e2e-reader-" + sensor)
	defer sub.Disconnect(100)
	if tok := sub.Subscribe("cells/agg/aggregates", 0, func(_ paho.Client, m paho.Message) { got <- m.Payload() }); !tok.WaitTimeout(15*time.Second) || tok.Error() != nil {
		t.Fatalf("subscribe: %v", tok.Error())
	}
	pub := connect("e2e-sensor-" + sensor)
	defer pub.Disconnect(100)
	for _, v := range values {
		pub.Publish("sensors/field-3/"+sensor, 1, false, fmt.Sprintf(`{"sensor":%q,"value":%v}`, sensor, v)).Wait()
	}
	var last aggregate
	deadline := time.After(30 * time.Second)
	for last.Sensor != sensor || last.Count < want.Count {
		select {
		case b := <-got:
			if err := json.Unmarshal(b, &last); err != nil {
				t.Fatalf("aggregate %s: %v", b, err)
			}
		case <-deadline:
			t.Fatalf("aggregates for %s seen up to %+v", sensor, last)
		}
	}
	if last.Count != want.Count || last.Min != want.Min || last.Max != want.Max || math.Abs(last.Mean-want.Mean) > 1e-9 {
		t.Fatalf("aggregate %+v, want %+v", last, want)
	}
}

// agentLogTime is when the agent's current process first logged a line
// holding all of parts (its log is slog text: time=RFC3339 first), and
// whether it did.
func agentLogTime(t *testing.T, a *agentEnv, parts ...string) (time.Time, bool) {
	t.Helper()
	sc := bufio.NewScanner(strings.NewReader(a.proc.Out.String()))
	sc.Buffer(nil, 1<<20)
lines:
	for sc.Scan() {
		line := sc.Text()
		for _, p := range parts {
			if !strings.Contains(line, p) {
				continue lines
			}
		}
		stamp, _, _ := strings.Cut(strings.TrimPrefix(line, "time="), " ")
		at, err := time.Parse(time.RFC3339Nano, stamp)
		if err != nil {
			t.Fatalf("agent log line %q: %v", line, err)
		}
		return at, true
	}
	return time.Time{}, false
}
