package e2e

import (
	"bytes"
	"encoding/json"
	"fmt"
	"math"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/bytecodealliance/wasmtime-go/v39"
	paho "github.com/eclipse/paho.mqtt.golang"
)

// buildCell builds one of the example Go cells for wasip1.
func buildCell(t *testing.T, name string) []byte {
	t.Helper()
	out := filepath.Join(t.TempDir(), name+".wasm")
	cmd := exec.Command("go", "build", "-buildmode=c-shared", "-trimpath", "-ldflags=-s -w", "-o", out, "../cells/"+name)
	cmd.Env = append(os.Environ(), "GOOS=wasip1", "GOARCH=wasm")
	if b, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("build cell %s: %v\n%s", name, err, b)
	}
	b, err := os.ReadFile(out)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

type cellView struct {
	ID     string `json:"id"`
	Node   string `json:"node"`
	Status *struct {
		State         string `json:"state"`
		Message       string `json:"message"`
		Records       uint64 `json:"records"`
		Invocations   uint64 `json:"invocations"`
		Restarts      int    `json:"restarts"`
		RecentOutputs []struct {
			Stream  string `json:"stream"`
			Payload []byte `json:"payload"`
		} `json:"recent_outputs"`
	} `json:"status"`
}

// TestAggregatorOnEdge is the cells issue's operator path: upload the
// aggregator, deploy it to a node, publish sensor readings to the node's
// sensor broker, read correct aggregates back through the cell's output and
// the console; a hostile cell deployed beside it is contained.
func TestAggregatorOnEdge(t *testing.T) {
	c := newConsole(t, backends[0])
	jwt := c.login()
	a := newAgent(t, c, "edge-1", c.token(jwt), "")
	waitStatus(t, c, jwt, "edge-1", "online", 10*time.Second)
	sensors := flagValue(a.args, "--sensors")

	var mod struct {
		Digest string `json:"digest"`
	}
	upload := func(name string, wasm []byte) string {
		t.Helper()
		code, _, raw := c.upload("?name="+name, jwt, bytes.NewReader(wasm))
		if code != 201 && code != 200 {
			t.Fatalf("upload %s: %d %s", name, code, raw)
		}
		if err := json.Unmarshal(raw, &mod); err != nil || len(mod.Digest) != 64 {
			t.Fatalf("upload %s: %s", name, raw)
		}
		return mod.Digest
	}
	agg := upload("aggregator", buildCell(t, "aggregator"))
	c.do("POST", "/api/v1/cells", jwt, map[string]any{
		"id": "agg", "node": "edge-1", "module": agg,
		"inputs":  []map[string]any{{"name": "sensors", "topics": []string{"sensors/#"}}},
		"outputs": []string{"aggregates"},
	}, 201, nil)

	// A local consumer of the cell's output on the node's sensor broker.
	got := make(chan []byte, 100)
	sub := paho.NewClient(paho.NewClientOptions().AddBroker("tcp://" + sensors).SetClientID("e2e-reader"))
	if tok := sub.Connect(); !tok.WaitTimeout(5*time.Second) || tok.Error() != nil {
		t.Fatalf("connect to the sensor broker: %v", tok.Error())
	}
	defer sub.Disconnect(100)
	sub.Subscribe("cells/agg/aggregates", 0, func(_ paho.Client, m paho.Message) { got <- m.Payload() }).Wait()

	waitFor(t, 30*time.Second, "aggregator running on edge-1", func() error {
		var v cellView
		if code, raw := c.request("GET", "/api/v1/cells/agg", jwt, nil); code != 200 || json.Unmarshal(raw, &v) != nil {
			return fmt.Errorf("GET cell: %d %s", code, raw)
		}
		if v.Status == nil || v.Status.State != "running" {
			return fmt.Errorf("status %+v", v.Status)
		}
		return nil
	})
	pub := paho.NewClient(paho.NewClientOptions().AddBroker("tcp://" + sensors).SetClientID("e2e-sensor"))
	if tok := pub.Connect(); !tok.WaitTimeout(5*time.Second) || tok.Error() != nil {
		t.Fatalf("connect sensor: %v", tok.Error())
	}
	defer pub.Disconnect(100)
	values := []float64{21.5, 19.0, 25.5, 22.0}
	for _, v := range values {
		pub.Publish("sensors/field-3/t1", 1, false, fmt.Sprintf(`{"sensor":"t1","value":%v}`, v)).Wait()
	}
	type aggregate struct {
		Sensor string  `json:"sensor"`
		Count  int     `json:"count"`
		Min    float64 `json:"min"`
		Max    float64 `json:"max"`
		Mean   float64 `json:"mean"`
	}
	var last aggregate
	deadline := time.After(15 * time.Second)
	for last.Count < len(values) {
		select {
		case b := <-got:
			if err := json.Unmarshal(b, &last); err != nil {
				t.Fatalf("aggregate %s: %v", b, err)
			}
		case <-deadline:
			t.Fatalf("aggregates seen up to %+v", last)
		}
	}
	if last.Sensor != "t1" || last.Min != 19.0 || last.Max != 25.5 || math.Abs(last.Mean-22.0) > 1e-9 {
		t.Fatalf("aggregate %+v, want t1 count 4 min 19 max 25.5 mean 22", last)
	}

	// The console shows the same through the cell's status.
	waitFor(t, 15*time.Second, "cell status with the output", func() error {
		var v cellView
		_, raw := c.request("GET", "/api/v1/cells/agg", jwt, nil)
		if err := json.Unmarshal(raw, &v); err != nil || v.Status == nil {
			return fmt.Errorf("%s", raw)
		}
		if v.Status.Records < uint64(len(values)) || len(v.Status.RecentOutputs) == 0 {
			return fmt.Errorf("records %d outputs %d", v.Status.Records, len(v.Status.RecentOutputs))
		}
		if out := v.Status.RecentOutputs[len(v.Status.RecentOutputs)-1]; !strings.Contains(string(out.Payload), `"count":4`) {
			return fmt.Errorf("latest output %s", out.Payload)
		}
		return nil
	})

	// A cell that loops forever, on the same node and input, is stopped and
	// restarted by policy while the aggregator keeps counting.
	loop := upload("loop", watModule(t, "../cells/hostile/loop.wat"))
	c.do("POST", "/api/v1/cells", jwt, map[string]any{
		"id": "looper", "node": "edge-1", "module": loop,
		"inputs": []map[string]any{{"name": "sensors", "topics": []string{"sensors/#"}}},
		"limits": map[string]any{"call_timeout_ms": 100},
	}, 201, nil)
	waitFor(t, 30*time.Second, "looper running", func() error {
		var v cellView
		_, raw := c.request("GET", "/api/v1/cells/looper", jwt, nil)
		if json.Unmarshal(raw, &v) != nil || v.Status == nil || v.Status.State != "running" {
			return fmt.Errorf("%s", raw)
		}
		return nil
	})
	pub.Publish("sensors/field-3/t1", 1, false, `{"sensor":"t1","value":30}`).Wait()
	for last.Count < 5 {
		select {
		case b := <-got:
			json.Unmarshal(b, &last)
		case <-time.After(15 * time.Second):
			t.Fatalf("aggregator stalled beside the looping cell: %+v", last)
		}
	}
	if last.Max != 30 {
		t.Fatalf("aggregate after the looper: %+v", last)
	}
	waitFor(t, 15*time.Second, "looper contained", func() error {
		var v cellView
		_, raw := c.request("GET", "/api/v1/cells/looper", jwt, nil)
		if json.Unmarshal(raw, &v) != nil || v.Status == nil || v.Status.Restarts < 1 {
			return fmt.Errorf("%s", raw)
		}
		return nil
	})
	if a.proc.Exited() {
		t.Fatal("the agent exited")
	}
}

// watModule assembles a WAT test module.
func watModule(t testing.TB, path string) []byte {
	t.Helper()
	src, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	b, err := wasmtime.Wat2Wasm(string(src))
	if err != nil {
		t.Fatal(err)
	}
	return b
}

func flagValue(args []string, flag string) string {
	for i := 0; i+1 < len(args); i++ {
		if args[i] == flag {
			return args[i+1]
		}
	}
	return ""
}
