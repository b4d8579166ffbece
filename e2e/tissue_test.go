package e2e

import (
	"encoding/json"
	"fmt"
	"strconv"
	"sync"
	"testing"
	"time"

	paho "github.com/eclipse/paho.mqtt.golang"
)

type tissueCount struct {
	Count   uint64            `json:"count"`
	Last    map[string]uint64 `json:"last"`
	Gaps    uint64            `json:"gaps"`
	Repeats uint64            `json:"repeats"`
}

// TestTissueAcrossMigration: two cells of one app on different nodes, a
// relay that sends every reading to a counter by name. Readings keep coming
// while the counter migrates to the relay's node (the in-process path) and
// back (over MQTT): every message arrives once, in order, none lost.
func TestTissueAcrossMigration(t *testing.T) {
	c := newConsole(t, backends[0], placementFlags...)
	jwt := c.login()
	agents := map[string]*agentEnv{
		"edge-1": newAgent(t, c, "edge-1", c.token(jwt), ""),
		"edge-2": newAgent(t, c, "edge-2", c.token(jwt), ""),
	}
	waitStatus(t, c, jwt, "edge-1", "online", 15*time.Second)
	waitStatus(t, c, jwt, "edge-2", "online", 15*time.Second)
	relay := uploadModule(t, c, jwt, "relay", exampleCell(t, "relay"))
	c.do("POST", "/api/v1/apps", jwt, map[string]any{
		"name": "mesh",
		"cells": []map[string]any{
			{"name": "relay", "module": relay, "config": map[string]any{"to": "counter"},
				"inputs": []map[string]any{{"name": "sensors", "topics": []string{"sensors/#"}}}, "outputs": []string{"received"}},
			{"name": "counter", "module": relay, "inputs": []map[string]any{}, "outputs": []string{"received"}},
		},
	}, 201, nil)
	where := func(cell string) string { return appPlacement(t, c, jwt, "mesh", cell) }
	var relayNode string
	waitFor(t, 30*time.Second, "both cells placed", func() error {
		if relayNode = where("mesh-relay"); relayNode == "" || where("mesh-counter") == "" {
			return fmt.Errorf("not yet")
		}
		return nil
	})
	other := map[string]string{"edge-1": "edge-2", "edge-2": "edge-1"}[relayNode]
	c.waitCellOn(t, jwt, "mesh-relay", relayNode, time.Minute)
	if where("mesh-counter") == relayNode {
		c.migrate(t, jwt, "mesh-counter", other, 2*time.Minute)
	}
	c.waitCellOn(t, jwt, "mesh-counter", other, time.Minute)

	var mu sync.Mutex
	var latest tissueCount
	for _, a := range agents {
		sub := paho.NewClient(paho.NewClientOptions().AddBroker("tcp://" + flagValue(a.args, "--sensors")).SetClientID("e2e-counter-" + a.name))
		if tok := sub.Connect(); !tok.WaitTimeout(10*time.Second) || tok.Error() != nil {
			t.Fatal(tok.Error())
		}
		defer sub.Disconnect(100)
		sub.Subscribe("cells/mesh-counter/received", 1, func(_ paho.Client, m paho.Message) {
			var tc tissueCount
			if json.Unmarshal(m.Payload(), &tc) == nil {
				mu.Lock()
				if tc.Count >= latest.Count {
					latest = tc
				}
				mu.Unlock()
			}
		}).Wait()
	}
	pub := paho.NewClient(paho.NewClientOptions().AddBroker("tcp://" + flagValue(agents[relayNode].args, "--sensors")).SetClientID("e2e-sensor"))
	if tok := pub.Connect(); !tok.WaitTimeout(10*time.Second) || tok.Error() != nil {
		t.Fatal(tok.Error())
	}
	defer pub.Disconnect(100)
	sent := 0
	publish := func(n int) {
		for range n {
			sent++
			pub.Publish("sensors/t1", 1, false, `{"sensor":"t1","value":`+strconv.Itoa(sent)+`}`).Wait()
			time.Sleep(5 * time.Millisecond)
		}
	}
	expect := func(what string) {
		t.Helper()
		waitFor(t, 60*time.Second, what, func() error {
			mu.Lock()
			defer mu.Unlock()
			if latest.Count < uint64(sent) {
				return fmt.Errorf("counted %+v of %d", latest, sent)
			}
			return nil
		})
		mu.Lock()
		defer mu.Unlock()
		if latest.Count != uint64(sent) || latest.Gaps != 0 || latest.Repeats != 0 || latest.Last["relay"] != uint64(sent) {
			t.Fatalf("%s: counter %+v after %d sent", what, latest, sent)
		}
	}
	publish(50)
	expect("messages across nodes")

	// Readings keep coming while the counter moves to the relay's node …
	done := make(chan struct{})
	go func() { defer close(done); publish(200) }()
	c.migrate(t, jwt, "mesh-counter", relayNode, 2*time.Minute)
	<-done
	expect("messages across a migration to the sender's node")

	// … and back.
	done = make(chan struct{})
	go func() { defer close(done); publish(200) }()
	c.migrate(t, jwt, "mesh-counter", other, 2*time.Minute)
	<-done
	expect("messages across a migration back")
}
