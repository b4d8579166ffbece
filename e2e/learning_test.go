package e2e

import (
	"bufio"
	"bytes"
	"encoding/json"
	"fmt"
	"io"
	"math"
	"net/http"
	"os"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/cloudskin/cloudskin/shared/protocol"
)

// learnStep and learnDays shape the history the nodes report: sixteen days
// at fifteen minutes, the console's window and grid for this test.
const (
	learnStep = 15 * time.Minute
	learnDays = 16
)

// traceColumn reads one numeric column of a CSV trace with a header.
func traceColumn(t *testing.T, path string, col, every int) []float64 {
	t.Helper()
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	var out []float64
	sc := bufio.NewScanner(f)
	sc.Scan()
	for i := 0; sc.Scan(); i++ {
		if i%every != 0 {
			continue
		}
		parts := strings.Split(sc.Text(), ",")
		if col >= len(parts) {
			continue // a blank line
		}
		v, err := strconv.ParseFloat(strings.TrimSpace(parts[col]), 64)
		if err != nil {
			t.Fatalf("%s row %d: %v", path, i, err)
		}
		out = append(out, v)
	}
	return out
}

// TestLearningPlane: two nodes report sixteen days of real history over
// MQTT (a green node's measured PV output from NREL SERF scaled to a 150 W
// panel, its battery run forward from it, and the Google 2019 cluster's CPU
// load); the console trains on demand, lists every model with its
// held-out metrics against a baseline, serves the solar forecast and the
// battery fit, and the Planner's decision for a new app cites the energy
// outlook they give. Predict and recommend answer, bad queries get a clear
// 4xx, and the console keeps serving.
func TestLearningPlane(t *testing.T) {
	c := newConsole(t, backends[0], "--learning-step", learnStep.String(), "--learning-window", strconv.Itoa(learnDays*24)+"h",
		"--learning-interval", "0", "--telemetry-retention", "720h")
	jwt := c.login()
	solarRaw := traceColumn(t, "../console/internal/learning/model/testdata/nrel_serf_east_15min_ac_power_jul2016.csv", 1, 1)
	load := traceColumn(t, "../console/internal/learning/model/testdata/google2019_cluster_avg_cpu_300s.csv", 0, 3)
	steps := learnDays * int(24*time.Hour/learnStep)
	peak := 0.0
	for _, v := range solarRaw[:steps] {
		peak = max(peak, v)
	}

	// The history must end on the grid the console trains on, and the
	// grid must not move while the test runs.
	if left := learnStep - time.Duration(time.Now().UnixNano())%learnStep; left < 3*time.Minute {
		time.Sleep(left + time.Second)
	}
	end := time.Now().Truncate(learnStep)
	start := end.Add(-time.Duration(steps) * learnStep)

	enroll := func(name string, labels map[string]string) enrollment {
		var e enrollment
		c.do("POST", "/api/v1/enroll", "", enrollBody(c.token(jwt), name, labels), 201, &e)
		return e
	}
	green := enroll("green-1", map[string]string{"site": "e2e", "power": "green"})
	grid := enroll("grid-1", map[string]string{"site": "e2e"})
	topics := protocol.NewTopics(protocol.DefaultPrefix)
	pct := 60.0
	for _, e := range []enrollment{green, grid} {
		m := dialNode(t, e)
		// A slow heartbeat keeps the node online while the test runs: it
		// reports history, not live samples.
		st := protocol.Status{Node: e.Node, State: protocol.StateOnline, Time: time.Now().UTC(), HeartbeatSeconds: 600}
		if err := m.publish(topics.Node(e.Node, protocol.LeafStatus), mustJSON(t, st), 1); err != nil {
			t.Fatal(err)
		}
		for i := range steps {
			at := start.Add(time.Duration(i) * learnStep)
			s := goodSample(e.Node, uint64(i+1), at)
			l := load[i]
			s.CPU.Percent = l * 100
			if e.Node == green.Node {
				solar := max(solarRaw[i], 0) / peak * 150
				draw := 6 + 14*l
				b := pct
				s.Energy = protocol.Energy{Source: protocol.EnergyModel, PowerW: draw, BatteryPct: &b, SolarW: &solar}
				pct = min(max(pct+(solar-draw)*learnStep.Hours()/400*100, 0), 100)
			} else {
				s.Energy.PowerW = 40 + 60*l
			}
			if err := m.publish(topics.Node(e.Node, protocol.LeafTelemetry), mustJSON(t, s), 1); err != nil {
				t.Fatal(err)
			}
		}
	}
	waitFor(t, 60*time.Second, "history stored", func() error {
		if n := c.metric("cloudskin_console_telemetry_samples_stored_total", ""); n < float64(2*steps) {
			return fmt.Errorf("%v of %d samples stored", n, 2*steps)
		}
		return nil
	})

	// Bad requests before any model exists; the console keeps serving.
	bearer := http.Header{"Authorization": {"Bearer " + jwt}, "Content-Type": {"application/json"}}
	many := make([]string, 10_000)
	for i := range many {
		many[i] = "edge-" + strconv.Itoa(i)
	}
	c.do("POST", "/api/v1/users", jwt, map[string]any{"username": "coop", "password": "coop-password", "role": "consumer",
		"profile": map[string]any{"nationality": "ES", "sector": "agriculture", "org_type": "private"}}, 201, nil)
	var consumer struct{ Token string }
	c.do("POST", "/api/v1/auth/login", "", map[string]string{"username": "coop", "password": "coop-password"}, 200, &consumer)
	query := `{"query":{"module":"` + strings.Repeat("ab", 32) + `","cpu":0.5,"mem_bytes":1048576,"input_rate":20}`
	for _, tc := range []struct {
		name, method, path, body string
		header                   http.Header
		want                     int
	}{
		{"predict: not JSON", "POST", "/api/v1/learning/predict", `{"query":`, bearer, 400},
		{"predict: unknown field", "POST", "/api/v1/learning/predict", `{"evil":1}`, bearer, 400},
		{"predict: no node", "POST", "/api/v1/learning/predict", query + `}`, bearer, 400},
		{"predict: unknown node", "POST", "/api/v1/learning/predict", query + `,"node":"nowhere"}`, bearer, 404},
		{"predict: unknown app", "POST", "/api/v1/learning/predict", `{"app":"nope","node":"grid-1"}`, bearer, 404},
		{"predict: negative cpu", "POST", "/api/v1/learning/predict", `{"query":{"cpu":-1},"node":"grid-1"}`, bearer, 400},
		{"predict: huge rate", "POST", "/api/v1/learning/predict", `{"query":{"input_rate":1e300},"node":"grid-1"}`, bearer, 400},
		{"recommend: 10,000 candidates", "POST", "/api/v1/learning/recommend", query + `,"candidates":` + string(mustJSON(t, many)) + `}`, bearer, 400},
		{"recommend: none", "POST", "/api/v1/learning/recommend", query + `,"candidates":[]}`, bearer, 400},
		{"recommend: unknown node", "POST", "/api/v1/learning/recommend", query + `,"candidates":["grid-1","ghost"]}`, bearer, 404},
		{"models: bad active", "GET", "/api/v1/learning/models?active=maybe", "", bearer, 400},
		{"models: bad id", "GET", "/api/v1/learning/models/x", "", bearer, 400},
		{"models: unknown id", "GET", "/api/v1/learning/models/999", "", bearer, 404},
		{"promote: unknown", "POST", "/api/v1/learning/models/999/promote", "", bearer, 404},
		{"rollback: nothing served", "POST", "/api/v1/learning/rollback", `{"kind":"latency","subject":"fleet"}`, bearer, 404},
		{"train: no token", "POST", "/api/v1/learning/train", "", http.Header{}, 401},
		{"models: consumer", "GET", "/api/v1/learning/models", "", http.Header{"Authorization": {"Bearer " + consumer.Token}}, 403},
		{"predict: consumer", "POST", "/api/v1/learning/predict", query + `,"node":"grid-1"}`, http.Header{"Authorization": {"Bearer " + consumer.Token}, "Content-Type": {"application/json"}}, 403},
	} {
		code, raw := c.sendText(tc.method, tc.path, tc.header, tc.body)
		if code != tc.want || !bytes.Contains(raw, []byte(`"error"`)) {
			t.Errorf("%s: %d %.200s, want %d with an error", tc.name, code, raw, tc.want)
		}
	}

	var rep struct {
		Ready, NotReady, Failed int
		Models                  []struct {
			ID                    uint64
			Kind, Subject, Status string
			Reason                string
		}
	}
	c.do("POST", "/api/v1/learning/train", jwt, nil, 200, &rep)
	status := map[string]string{}
	var failedID uint64
	for _, m := range rep.Models {
		status[m.Kind+"/"+m.Subject] = m.Status
		t.Logf("%s/%s %s: %s", m.Kind, m.Subject, m.Status, m.Reason)
		if m.Status == "failed" {
			failedID = m.ID
		}
	}
	for _, k := range []string{"load/green-1", "power/green-1", "solar/green-1", "battery/green-1", "load/grid-1", "power/grid-1"} {
		if status[k] == "" {
			t.Errorf("no %s model trained", k)
		}
	}
	if status["battery/green-1"] != "ready" || (status["solar/green-1"] != "ready" && status["solar/green-1"] != "not-ready") {
		t.Fatalf("solar %s, battery %s: the energy outlook needs both", status["solar/green-1"], status["battery/green-1"])
	}
	// No cell has run: the performance model says it has too little data.
	if status["latency/fleet"] != "failed" {
		t.Fatalf("latency/fleet is %q without a single cell sample", status["latency/fleet"])
	}
	if code, _, raw := c.send("POST", "/api/v1/learning/models/"+strconv.FormatUint(failedID, 10)+"/promote", bearer, nil); code != 409 {
		t.Fatalf("promote a failed model: %d %s", code, raw)
	}

	var list struct {
		Models []struct {
			ID       uint64          `json:"id"`
			Kind     string          `json:"kind"`
			Subject  string          `json:"subject"`
			Active   bool            `json:"active"`
			Metrics  json.RawMessage `json:"metrics"`
			Features []string        `json:"features"`
		} `json:"models"`
	}
	c.do("GET", "/api/v1/learning/models?active=true", jwt, nil, 200, &list)
	if len(list.Models) != rep.Ready {
		t.Fatalf("%d served models, %d ready", len(list.Models), rep.Ready)
	}
	for _, m := range list.Models {
		var ev struct {
			Model        struct{ MAE float64 }
			Baselines    map[string]struct{ MAE float64 }
			BestBaseline string `json:"best_baseline"`
		}
		if err := json.Unmarshal(m.Metrics, &ev); err != nil || ev.BestBaseline == "" {
			t.Fatalf("%s/%s metrics %s: %v", m.Kind, m.Subject, m.Metrics, err)
		}
		if !(ev.Model.MAE < ev.Baselines[ev.BestBaseline].MAE) {
			t.Fatalf("%s/%s is served but does not beat %s: %s", m.Kind, m.Subject, ev.BestBaseline, m.Metrics)
		}
	}

	// The prediction service: the green node's energy outlook, no latency
	// figure (and a note why), the grid node ranked first for a cell whose
	// green candidate cannot last the horizon or last it at all.
	var pred struct {
		Outlooks   map[string]string `json:"outlooks"`
		Prediction struct {
			LatencyMs *json.RawMessage `json:"latency_ms"`
			Energy    struct {
				NodeHours *float64 `json:"node_hours"`
			} `json:"energy"`
			Notes []string `json:"notes"`
		} `json:"prediction"`
	}
	c.do("POST", "/api/v1/learning/predict", jwt, json.RawMessage(query+`,"node":"green-1"}`), 200, &pred)
	if pred.Prediction.Energy.NodeHours == nil || pred.Prediction.LatencyMs != nil || len(pred.Prediction.Notes) == 0 {
		t.Fatalf("predict on green-1: %+v", pred.Prediction)
	}
	hours := *pred.Prediction.Energy.NodeHours
	// A not-ready solar forecast is not served: the outlook says which
	// baseline stands in for it.
	if stand := pred.Outlooks["solar/green-1"]; (status["solar/green-1"] == "ready") != (stand == "") {
		t.Fatalf("solar %s, outlook from %q", status["solar/green-1"], stand)
	}
	var rec struct {
		Ranked []struct {
			Rank    int      `json:"rank"`
			Node    string   `json:"node"`
			Factors []string `json:"factors"`
		} `json:"ranked"`
	}
	c.do("POST", "/api/v1/learning/recommend", jwt, json.RawMessage(query+`,"candidates":["green-1","grid-1"]}`), 200, &rec)
	if len(rec.Ranked) != 2 || rec.Ranked[0].Rank != 1 || len(rec.Ranked[0].Factors) == 0 {
		t.Fatalf("recommend: %+v", rec)
	}

	// A new app: the Planner scores green-1 with the served energy outlook
	// and its decision cites it.
	mod := uploadModule(t, c, jwt, "minimal", watModule(t, "../cells/minimal.wat"))
	c.do("POST", "/api/v1/apps", jwt, map[string]any{"name": "learn", "constraints": map[string]any{"power": "green"},
		"cells": []map[string]any{{"name": "x", "module": mod, "inputs": []any{}}}}, 201, nil)
	var ds struct {
		Decisions []struct {
			Candidates []struct {
				Node      string `json:"node"`
				Predicted *struct {
					EnergyHours *float64 `json:"energy_hours"`
				} `json:"predicted"`
			} `json:"candidates"`
		} `json:"decisions"`
	}
	c.do("GET", "/api/v1/decisions?app=learn", jwt, nil, 200, &ds)
	cited := false
	for _, d := range ds.Decisions {
		for _, cand := range d.Candidates {
			if cand.Node == "green-1" && cand.Predicted != nil && cand.Predicted.EnergyHours != nil {
				cited = math.Abs(*cand.Predicted.EnergyHours-hours) < 0.5
			}
		}
	}
	if !cited {
		t.Fatalf("no decision for app learn cites green-1's energy outlook of %.2f h: %+v", hours, ds)
	}
	if code, _, _ := c.send("GET", "/readyz", nil, nil); code != 200 {
		t.Fatalf("console not ready after the bad input: %d", code)
	}
}

// sendText sends body ("" for none) and returns the status and body.
func (c *consoleEnv) sendText(method, path string, header http.Header, body string) (int, []byte) {
	var r io.Reader
	if body != "" {
		r = strings.NewReader(body)
	}
	code, _, raw := c.send(method, path, header, r)
	return code, raw
}
