package fleet

import (
	"context"
	"encoding/json"
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/cloudskin/cloudskin/console/internal/broker"
	"github.com/cloudskin/cloudskin/console/internal/store"
	"github.com/cloudskin/cloudskin/shared/protocol"
)

func nodeEvent(node, id, kind string, at time.Time) []byte {
	d, _ := json.Marshal(protocol.AutonomyDetail{HoursLeft: 0.4, BatteryPct: 13, DrawW: 21, CapacityWh: 252, CapacitySource: "default",
		ReservePct: 10, HorizonHours: 2, Mode: "deferred"})
	b, _ := json.Marshal(protocol.NodeEvent{Node: node, ID: id, Time: at, Kind: kind, Cell: "thumbs", Message: "paused", Detail: d})
	return b
}

// TestSinkRefusesBadEvents: a malformed, oversized, invalid or foreign
// event is refused for good (acknowledged, not stored, counted); nothing
// already stored is lost and the console keeps serving.
func TestSinkRefusesBadEvents(t *testing.T) {
	s, m := newService(t)
	ctx := context.Background()
	enroll(t, s, "edge-1")
	enroll(t, s, "edge-2")
	topic := s.cfg.Topics.Node("edge-1", protocol.LeafEvents)
	now := time.Now().UTC()
	if err := s.Sink(ctx, topic, nodeEvent("edge-1", "good-1", protocol.EventAutonomyShed, now)); err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		name    string
		payload []byte
	}{
		{"malformed", []byte(`{"node":"edge-1","id":`)},
		{"not an object", []byte(`[1,2,3]`)},
		{"oversized", []byte(`{"node":"edge-1","id":"x","message":"` + strings.Repeat("a", protocol.MaxEventBytes) + `"}`)},
		{"another node's event", nodeEvent("edge-2", "foreign-1", protocol.EventAutonomyShed, now)},
		{"no id", nodeEvent("edge-1", "", protocol.EventAutonomyShed, now)},
		{"bad kind", nodeEvent("edge-1", "bad-kind", "DROP TABLE", now)},
		{"from the future", nodeEvent("edge-1", "future-1", protocol.EventAutonomyShed, now.Add(time.Hour))},
		{"detail not an object", []byte(`{"node":"edge-1","id":"d-1","time":"` + now.Format(time.RFC3339) + `","kind":"autonomy.shed","detail":"x"}`)},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			before := testutil.ToFloat64(m.Rejected.WithLabelValues(RejectEventInvalid))
			err := s.Sink(ctx, topic, tc.payload)
			if !errors.Is(err, ErrInvalid) || errors.Is(err, broker.ErrRetry) {
				t.Fatalf("Sink = %v, want a permanent refusal", err)
			}
			if got := testutil.ToFloat64(m.Rejected.WithLabelValues(RejectEventInvalid)); got != before+1 {
				t.Fatalf("reject counter %v → %v", before, got)
			}
		})
	}
	for _, node := range []string{"edge-1", "edge-2"} {
		evs, err := s.NodeEvents(ctx, node, 100)
		if err != nil {
			t.Fatal(err)
		}
		if want := map[string]int{"edge-1": 1, "edge-2": 0}[node]; len(evs) != want {
			t.Fatalf("%s has %d events stored, want %d: %+v", node, len(evs), want, evs)
		}
	}
}

// TestSinkStoresEventsOnce: an event the node sends again (it was not sure
// the broker had it) is stored once; events come back newest first, with
// their forecast detail, and mark the node seen.
func TestSinkStoresEventsOnce(t *testing.T) {
	s, _ := newService(t)
	ctx := context.Background()
	enroll(t, s, "edge-1")
	topic := s.cfg.Topics.Node("edge-1", protocol.LeafEvents)
	t0 := time.Now().UTC().Add(-time.Hour).Truncate(time.Microsecond)
	for i, id := range []string{"e-1", "e-2", "e-1", "e-3", "e-2"} {
		if err := s.Sink(ctx, topic, nodeEvent("edge-1", id, protocol.EventAutonomyShed, t0.Add(time.Duration(id[2]-'0')*time.Minute))); err != nil {
			t.Fatalf("event %d: %v", i, err)
		}
	}
	evs, err := s.NodeEvents(ctx, "edge-1", 100)
	if err != nil {
		t.Fatal(err)
	}
	if len(evs) != 3 || evs[0].ID != "e-3" || evs[2].ID != "e-1" {
		t.Fatalf("events %+v, want e-3, e-2, e-1 once each", evs)
	}
	if !evs[2].Time.Equal(t0.Add(time.Minute)) || evs[0].Kind != protocol.EventAutonomyShed || evs[0].Cell != "thumbs" {
		t.Fatalf("event %+v", evs[2])
	}
	var d protocol.AutonomyDetail
	if err := json.Unmarshal(evs[0].Detail, &d); err != nil || d.HoursLeft != 0.4 || d.CapacityWh != 252 || d.Mode != "deferred" {
		t.Fatalf("detail %s (%v)", evs[0].Detail, err)
	}
	if got, _ := s.NodeEvents(ctx, "edge-1", 2); len(got) != 2 || got[0].ID != "e-3" {
		t.Fatalf("limit 2: %+v", got)
	}
	if n, _ := s.Node(ctx, "edge-1"); n.Status != protocol.StateOnline {
		t.Fatalf("an event must mark the node seen: %s", n.Status)
	}
	if _, err := s.NodeEvents(ctx, "ghost", 10); !errors.Is(err, store.ErrNotFound) {
		t.Fatalf("unknown node: %v", err)
	}
	for _, limit := range []int{0, -1, MaxEventsLimit + 1} {
		if _, err := s.NodeEvents(ctx, "edge-1", limit); !errors.Is(err, ErrInvalid) {
			t.Fatalf("limit %d: %v", limit, err)
		}
	}
}
