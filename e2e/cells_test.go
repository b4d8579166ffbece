package e2e

import (
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"testing"
	"time"

	paho "github.com/eclipse/paho.mqtt.golang"

	"github.com/cloudskin/cloudskin/shared/protocol"
	wt "github.com/cloudskin/cloudskin/shared/wasmcheck/wasmtest"
)

// cellJSON is what the cells API returns.
type cellJSON struct {
	ID       string               `json:"id"`
	Node     string               `json:"node"`
	Module   string               `json:"module"`
	Config   json.RawMessage      `json:"config"`
	Inputs   []protocol.Input     `json:"inputs"`
	Status   *protocol.CellStatus `json:"status"`
	StatusAt *time.Time           `json:"status_at"`
}

// desiredWatch subscribes as a node to its desired state and hands over
// every message received.
func desiredWatch(t *testing.T, m *mqttConn, topic string) chan protocol.Desired {
	t.Helper()
	ch := make(chan protocol.Desired, 16)
	tok := m.Subscribe(topic, 1, func(_ paho.Client, msg paho.Message) {
		var d protocol.Desired
		if err := json.Unmarshal(msg.Payload(), &d); err != nil {
			t.Errorf("desired state is not JSON: %s", msg.Payload())
			return
		}
		ch <- d
	})
	if !tok.WaitTimeout(5*time.Second) || tok.Error() != nil {
		t.Fatalf("subscribe %s: %v", topic, tok.Error())
	}
	return ch
}

// nextDesired waits for a desired state of generation gen, skipping older ones.
func nextDesired(t *testing.T, ch chan protocol.Desired, gen int64) protocol.Desired {
	t.Helper()
	timeout := time.After(10 * time.Second)
	for {
		select {
		case d := <-ch:
			if d.Generation == gen {
				return d
			}
			if d.Generation > gen {
				t.Fatalf("got generation %d, want %d: %+v", d.Generation, gen, d)
			}
		case <-timeout:
			t.Fatalf("no desired state of generation %d", gen)
		}
	}
}

// TestCells places cells on a node as an operator would and plays the
// node with a bare MQTT client: it receives the retained desired state,
// reports an actual state, and gets its state back after a console restart
// (the embedded broker keeps retained messages only in memory).
func TestCells(t *testing.T) {
	c := newConsole(t, backends[0])
	jwt := c.login()
	wasm := wt.Cell(wt.Options{Init: true, Imports: true, MinPages: 2, MaxPages: 64}).Bytes()
	sum := sha256.Sum256(wasm)
	digest := hex.EncodeToString(sum[:])
	if code, _, raw := c.upload("?name=avg", jwt, bytes.NewReader(wasm)); code != 201 {
		t.Fatalf("upload: %d %s", code, raw)
	}
	e := c.enroll(jwt, "edge-cells")
	topics := protocol.NewTopics("")
	desiredTopic := topics.Node(e.Node, protocol.LeafDesired)
	node := dialNode(t, e)
	desired := desiredWatch(t, node, desiredTopic)

	body := map[string]any{"id": "avg-1", "node": e.Node, "module": digest, "config": map[string]any{"window": 10},
		"inputs": []map[string]any{{"name": "temp", "topics": []string{"sensors/+/temp"}}}, "outputs": []string{"avg"},
		"limits": map[string]any{"fuel_per_call": 1000000}}
	var created cellJSON
	c.do("POST", "/api/v1/cells", jwt, body, 201, &created)
	if created.ID != "avg-1" || created.Node != e.Node || created.Module != digest || string(created.Config) != `{"window":10}` || created.Status != nil {
		t.Fatalf("created %+v", created)
	}
	d := nextDesired(t, desired, 1)
	if d.Node != e.Node || len(d.Cells) != 1 || d.Cells[0].ID != "avg-1" || string(d.Cells[0].Config) != `{"window":10}` ||
		d.Cells[0].Limits.FuelPerCall != 1000000 || d.Cells[0].Inputs[0].Topics[0] != "sensors/+/temp" {
		t.Fatalf("desired generation 1: %+v", d)
	}

	t.Run("bad input", func(t *testing.T) {
		c := c.on(t)
		with := func(edit func(map[string]any)) map[string]any {
			b := map[string]any{}
			for k, v := range body {
				b[k] = v
			}
			edit(b)
			return b
		}
		for _, tc := range []struct {
			name string
			jwt  string
			body map[string]any
			code int
		}{
			{"unknown node", jwt, with(func(b map[string]any) { b["id"], b["node"] = "x", "ghost" }), 404},
			{"unknown module", jwt, with(func(b map[string]any) { b["id"], b["module"] = "x", hex.EncodeToString(make([]byte, 32)) }), 400},
			{"bad id", jwt, with(func(b map[string]any) { b["id"] = "Not_A_Cell" }), 400},
			{"unknown field", jwt, with(func(b map[string]any) { b["id"], b["replicas"] = "x", 3 }), 400},
			{"duplicate", jwt, with(func(b map[string]any) { b["outputs"] = []string{"other"} }), 409},
			{"unauthenticated", "", with(func(b map[string]any) { b["id"] = "x" }), 401},
		} {
			if code, raw := c.request("POST", "/api/v1/cells", tc.jwt, tc.body); code != tc.code {
				t.Errorf("%s: %d, want %d: %s", tc.name, code, tc.code, raw)
			}
		}
		for _, path := range []string{"/api/v1/cells", "/api/v1/cells/avg-1", "/api/v1/cells/avg-1/events"} {
			if code, _ := c.request("GET", path, "", nil); code != 401 {
				t.Errorf("GET %s unauthenticated: %d, want 401", path, code)
			}
		}
		if code, _ := c.request("DELETE", "/api/v1/cells/avg-1", "", nil); code != 401 {
			t.Errorf("DELETE unauthenticated: %d, want 401", code)
		}
		c.do("GET", "/api/v1/cells/nope", jwt, nil, 404, nil)
		before := c.rejected("actual_invalid")
		if err := node.publish(topics.Node(e.Node, protocol.LeafActual), []byte(`{"node":"edge-cells","cells":"many"}`), 1); err != nil {
			t.Fatal(err)
		}
		waitFor(t, 5*time.Second, "malformed actual counted", func() error {
			if got := c.rejected("actual_invalid"); got != before+1 {
				return fmt.Errorf("actual_invalid %v, want %v", got, before+1)
			}
			return nil
		})
	})

	// The node reports the cell running.
	now := time.Now().UTC()
	actual, _ := json.Marshal(protocol.Actual{Node: e.Node, Generation: 1, Time: now, Cells: []protocol.CellStatus{{
		ID: "avg-1", Module: digest, State: protocol.CellRunning, Invocations: 42,
		Events: []protocol.CellEvent{{Time: now, Kind: "started", Message: "instantiated"}},
	}}})
	if err := node.publish(topics.Node(e.Node, protocol.LeafActual), actual, 1); err != nil {
		t.Fatal(err)
	}
	var got cellJSON
	c.do("GET", "/api/v1/cells/avg-1", jwt, nil, 200, &got)
	if got.Status == nil || got.Status.State != protocol.CellRunning || got.Status.Invocations != 42 || got.StatusAt == nil {
		t.Fatalf("cell after actual: %+v", got)
	}
	var events struct {
		Events []protocol.CellEvent `json:"events"`
	}
	c.do("GET", "/api/v1/cells/avg-1/events", jwt, nil, 200, &events)
	if len(events.Events) != 1 || events.Events[0].Kind != "started" {
		t.Fatalf("events %+v", events)
	}
	var list struct {
		Cells []cellJSON `json:"cells"`
	}
	c.do("GET", "/api/v1/cells?node="+e.Node, jwt, nil, 200, &list)
	if len(list.Cells) != 1 || list.Cells[0].Status == nil {
		t.Fatalf("list %+v", list)
	}

	c.do("DELETE", "/api/v1/cells/avg-1", jwt, nil, 204, nil)
	if d := nextDesired(t, desired, 2); len(d.Cells) != 0 {
		t.Fatalf("desired after delete: %+v", d)
	}
	c.do("GET", "/api/v1/cells/avg-1", jwt, nil, 404, nil)

	// A cell in place across a restart of the console and its broker.
	body["id"] = "avg-2"
	c.do("POST", "/api/v1/cells", jwt, body, 201, nil)
	nextDesired(t, desired, 3)
	c.stop()
	c.start()
	node = dialNode(t, e)
	desired = desiredWatch(t, node, desiredTopic)
	if d := nextDesired(t, desired, 3); len(d.Cells) != 1 || d.Cells[0].ID != "avg-2" {
		t.Fatalf("desired state restored after restart: %+v", d)
	}
}
