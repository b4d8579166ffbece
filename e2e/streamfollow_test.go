package e2e

import (
	"fmt"
	"testing"
	"time"
)

// TestStreamFollowsCell: an aggregator reads a durable stream on edge-1 and
// migrates to edge-2 while readings keep arriving on edge-1. The moved cell
// reads edge-1's stream on from its checkpoint's cursor, through the
// console: every reading is counted once, none skipped, none twice.
func TestStreamFollowsCell(t *testing.T) {
	c := newConsole(t, backends[0], placementFlags...)
	jwt := c.login()
	a1 := newAgent(t, c, "edge-1", c.token(jwt), "")
	waitStatus(t, c, jwt, "edge-1", "online", 15*time.Second)
	c.do("PUT", "/api/v1/nodes/edge-1/streams/sensors", jwt, map[string]any{"topics": []string{"sensors/#"}}, 200, nil)
	agg := uploadModule(t, c, jwt, "aggregator", exampleCell(t, "aggregator"))
	c.do("POST", "/api/v1/apps", jwt, map[string]any{
		"name": "hall",
		"cells": []map[string]any{{"name": "agg", "module": agg,
			"inputs": []map[string]any{{"name": "sensors", "stream": "sensors"}}, "outputs": []string{"aggregates"}}},
	}, 201, nil)
	const cell = "hall-agg"
	c.waitCellOn(t, jwt, cell, "edge-1", time.Minute)
	a2 := newAgent(t, c, "edge-2", c.token(jwt), "")
	waitStatus(t, c, jwt, "edge-2", "online", 15*time.Second)
	watch := &aggWatch{last: map[string]aggOut{}}
	watchAggregates(t, flagValue(a1.args, "--sensors"), cell, watch)
	watchAggregates(t, flagValue(a2.args, "--sensors"), cell, watch)

	var all []float64
	send := func(n int, base float64) {
		vals := make([]float64, n)
		lines := make([]string, n)
		for i := range vals {
			vals[i] = base + float64(i%7)
			lines[i] = fmt.Sprintf(`{"sensor":"s1","value":%v}`, vals[i])
		}
		mosquittoPub(t, flagValue(a1.args, "--sensors"), "sensors/hall/s1", lines)
		all = append(all, vals...)
	}
	send(30, 10)
	watch.expect(t, "s1", all, 30*time.Second)

	done := make(chan struct{})
	go func() {
		defer close(done)
		for i := range 5 {
			send(20, float64(20+i))
			time.Sleep(200 * time.Millisecond)
		}
	}()
	c.migrate(t, jwt, cell, "edge-2", 2*time.Minute)
	<-done
	send(10, 50)
	watch.expect(t, "s1", all, 60*time.Second)
	c.waitCellOn(t, jwt, cell, "edge-2", time.Minute)
	var v struct {
		Inputs []struct{ Name, Stream, Node string } `json:"inputs"`
	}
	c.do("GET", "/api/v1/cells/"+cell, jwt, nil, 200, &v)
	if len(v.Inputs) != 1 || v.Inputs[0].Stream != "sensors" || v.Inputs[0].Node != "edge-1" {
		t.Fatalf("inputs after the move %+v: want stream sensors of edge-1", v.Inputs)
	}
}
