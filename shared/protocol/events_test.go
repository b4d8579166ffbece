package protocol

import (
	"encoding/json"
	"errors"
	"strings"
	"testing"
	"time"
)

func TestNodeEventValidate(t *testing.T) {
	now := time.Date(2026, 11, 29, 12, 0, 0, 0, time.UTC)
	detail, _ := json.Marshal(AutonomyDetail{HoursLeft: 1.5, BatteryPct: 14, DrawW: 8, CapacityWh: 96, CapacitySource: "default", ReservePct: 10, HorizonHours: 2, Mode: "deferred"})
	valid := func() NodeEvent {
		return NodeEvent{Node: "edge-1", ID: "lq3k2-7", Time: now.Add(-time.Hour), Kind: EventAutonomyShed, Cell: "thumbs",
			Message: "paused: battery lasts 1.5 h", Detail: detail}
	}
	tests := []struct {
		name   string
		change func(*NodeEvent)
		want   string // "" = valid
	}{
		{"valid", func(*NodeEvent) {}, ""},
		{"no cell, no detail", func(e *NodeEvent) { e.Cell, e.Detail = "", nil }, ""},
		{"null detail", func(e *NodeEvent) { e.Detail = json.RawMessage("null") }, ""},
		{"unknown kind of a newer agent", func(e *NodeEvent) { e.Kind = "streams.quota_full" }, ""},
		{"other node", func(e *NodeEvent) { e.Node = "edge-2" }, "published by"},
		{"no id", func(e *NodeEvent) { e.ID = "" }, "event id"},
		{"id with a slash", func(e *NodeEvent) { e.ID = "a/b" }, "event id"},
		{"long id", func(e *NodeEvent) { e.ID = strings.Repeat("a", 81) }, "event id"},
		{"kind", func(e *NodeEvent) { e.Kind = "Autonomy Shed" }, "event kind"},
		{"long kind", func(e *NodeEvent) { e.Kind = "a." + strings.Repeat("b", 47) }, "event kind"},
		{"no time", func(e *NodeEvent) { e.Time = time.Time{} }, "no time"},
		{"future", func(e *NodeEvent) { e.Time = now.Add(time.Hour) }, "ahead"},
		{"bad cell", func(e *NodeEvent) { e.Cell = "Thumbs_1" }, "cell"},
		{"long message", func(e *NodeEvent) { e.Message = strings.Repeat("x", MaxEventMessageBytes+1) }, "message"},
		{"message not UTF-8", func(e *NodeEvent) { e.Message = "\xff\xfe" }, "message"},
		{"detail an array", func(e *NodeEvent) { e.Detail = json.RawMessage(`[1,2]`) }, "JSON object"},
		{"detail broken", func(e *NodeEvent) { e.Detail = json.RawMessage(`{"a":`) }, "JSON object"},
		{"detail oversized", func(e *NodeEvent) {
			e.Detail = json.RawMessage(`{"x":"` + strings.Repeat("a", MaxEventDetailBytes) + `"}`)
		}, "exceeds"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			e := valid()
			tc.change(&e)
			err := e.Validate("edge-1", now)
			if tc.want == "" {
				if err != nil {
					t.Fatal(err)
				}
				return
			}
			if !errors.Is(err, ErrInvalid) || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("error %v, want ErrInvalid mentioning %q", err, tc.want)
			}
		})
	}
}

// A full-size event fits the message bound the console enforces.
func TestNodeEventFitsBound(t *testing.T) {
	e := NodeEvent{Node: strings.Repeat("n", 63), ID: strings.Repeat("i", 80), Time: time.Now(), Kind: strings.Repeat("k", 48),
		Cell: strings.Repeat("c", 63), Message: strings.Repeat("m", MaxEventMessageBytes),
		Detail: json.RawMessage(`{"x":"` + strings.Repeat("d", MaxEventDetailBytes-8) + `"}`)}
	b, err := json.Marshal(e)
	if err != nil {
		t.Fatal(err)
	}
	if len(b) > MaxEventBytes {
		t.Fatalf("largest valid event encodes to %d bytes, more than MaxEventBytes %d", len(b), MaxEventBytes)
	}
}
