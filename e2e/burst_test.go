package e2e

import (
	"encoding/json"
	"fmt"
	"sync"
	"testing"
	"time"

	paho "github.com/eclipse/paho.mqtt.golang"
)

// TestBurstReplicasShareStream: a scaled app's replicas share one durable
// stream, each taking its partition; when the app idles the console takes
// replicas away and the rest repartition from the lowest unread offset.
// Every record — each reading has its own sensor — is handled, before and
// after the scale-in.
func TestBurstReplicasShareStream(t *testing.T) {
	c := newConsole(t, backends[0], placementFlags...)
	jwt := c.login()
	a := newAgent(t, c, "edge-1", c.token(jwt), "")
	waitStatus(t, c, jwt, "edge-1", "online", 15*time.Second)
	c.do("PUT", "/api/v1/nodes/edge-1/streams/jobs", jwt, map[string]any{"topics": []string{"jobs/#"}}, 200, nil)
	agg := uploadModule(t, c, jwt, "aggregator", exampleCell(t, "aggregator"))
	app := func(min, max int) map[string]any {
		return map[string]any{"name": "crunch",
			"cells": []map[string]any{{"name": "w", "module": agg,
				"inputs": []map[string]any{{"name": "in", "stream": "jobs", "node": "edge-1"}}, "outputs": []string{"aggregates"}}},
			"scale": map[string]any{"min": min, "max": max, "idle_seconds": 2}}
	}
	c.do("POST", "/api/v1/apps", jwt, app(3, 3), 201, nil)
	for i := range 3 {
		c.waitCellOn(t, jwt, fmt.Sprintf("crunch-w-%d", i), "edge-1", time.Minute)
	}
	var mu sync.Mutex
	seen := map[string]bool{}
	sub := paho.NewClient(paho.NewClientOptions().AddBroker("tcp://" + flagValue(a.args, "--sensors")).SetClientID("e2e-burst"))
	if tok := sub.Connect(); !tok.WaitTimeout(10*time.Second) || tok.Error() != nil {
		t.Fatal(tok.Error())
	}
	defer sub.Disconnect(100)
	sub.Subscribe("cells/+/aggregates", 1, func(_ paho.Client, m paho.Message) {
		var out aggOut
		if json.Unmarshal(m.Payload(), &out) == nil {
			mu.Lock()
			seen[out.Sensor] = true
			mu.Unlock()
		}
	}).Wait()
	sent := 0
	send := func(n int) {
		lines := make([]string, n)
		for i := range lines {
			sent++
			lines[i] = fmt.Sprintf(`{"sensor":"job-%d","value":%d}`, sent, sent)
		}
		mosquittoPub(t, flagValue(a.args, "--sensors"), "jobs/batch", lines)
	}
	expectAll := func(what string) {
		t.Helper()
		waitFor(t, 60*time.Second, what, func() error {
			mu.Lock()
			defer mu.Unlock()
			for i := 1; i <= sent; i++ {
				if !seen[fmt.Sprintf("job-%d", i)] {
					return fmt.Errorf("job-%d not handled (%d of %d seen)", i, len(seen), sent)
				}
			}
			return nil
		})
	}
	send(90)
	expectAll("every job handled by the three partitions")

	// Let it idle down: min 1, one replica fewer every 2 s without backlog.
	c.do("PUT", "/api/v1/apps/crunch", jwt, app(1, 3), 200, nil)
	waitFor(t, 60*time.Second, "scaled in to one replica", func() error {
		var v struct {
			Placement []struct{ Cell string } `json:"placement"`
		}
		c.do("GET", "/api/v1/apps/crunch", jwt, nil, 200, &v)
		if len(v.Placement) != 1 {
			return fmt.Errorf("%d replicas", len(v.Placement))
		}
		return nil
	})
	c.waitCellOn(t, jwt, "crunch-w-0", "edge-1", time.Minute)
	send(30)
	expectAll("every job handled after the scale-in")

	var ds struct {
		Decisions []struct{ Kind, Reason, Why string } `json:"decisions"`
	}
	c.do("GET", "/api/v1/decisions?app=crunch", jwt, nil, 200, &ds)
	scales := 0
	for _, d := range ds.Decisions {
		if d.Kind == "scale" && d.Reason == "idle" && d.Why != "" {
			scales++
		}
	}
	if scales != 2 {
		t.Fatalf("idle scale decisions: %d, want 2 (3 → 2 → 1): %+v", scales, ds.Decisions)
	}
}
