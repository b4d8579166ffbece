package agent

import (
	"encoding/json"
	"errors"
	"strings"
	"sync"
	"testing"
	"time"

	paho "github.com/eclipse/paho.mqtt.golang"

	"github.com/cloudskin/cloudskin/shared/protocol"
)

// fakeBroker is an MQTT client whose connection the test opens and cuts,
// and whose publishes complete at once (or fail while fail is set).
type fakeBroker struct {
	paho.Client // not called: only the methods below are
	mu          sync.Mutex
	open        bool
	fail        error
	got         []string // topic payload
}

func (b *fakeBroker) IsConnectionOpen() bool {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.open
}

func (b *fakeBroker) Publish(topic string, _ byte, _ bool, payload any) paho.Token {
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.fail == nil {
		b.got = append(b.got, topic+" "+string(payload.([]byte)))
	}
	return doneToken{b.fail}
}

type doneToken struct{ err error }

func (doneToken) Wait() bool                     { return true }
func (doneToken) WaitTimeout(time.Duration) bool { return true }
func (doneToken) Done() <-chan struct{}          { c := make(chan struct{}); close(c); return c }
func (t doneToken) Error() error                 { return t.err }

// TestEventOutboxAcrossOutage: events taken while the node is cut off wait
// on disk, survive an agent restart, go out in order once connected, and
// leave the outbox only when the broker acknowledged them.
func TestEventOutboxAcrossOutage(t *testing.T) {
	dir := t.TempDir()
	broker := &fakeBroker{}
	a := &Agent{cfg: Config{Name: "edge-1", Data: dir}, log: quiet, m: newMetrics(), client: broker, topics: protocol.NewTopics("")}
	o, err := openEventOutbox(a)
	if err != nil {
		t.Fatal(err)
	}
	for _, kind := range []string{protocol.EventAutonomyStart, protocol.EventAutonomyShed} {
		if err := o.add(protocol.NodeEvent{Kind: kind, Cell: "thumbs", Detail: json.RawMessage(`{"hours_left":0.5}`)}); err != nil {
			t.Fatal(err)
		}
	}
	if err := o.add(protocol.NodeEvent{Kind: "Not A Kind"}); !errors.Is(err, protocol.ErrInvalid) {
		t.Fatalf("invalid event accepted: %v", err)
	}
	if _, err := o.sendBatch(); !errors.Is(err, errNotConnected) {
		t.Fatalf("offline send: %v", err)
	}
	// The agent restarts during the outage.
	if err := o.close(); err != nil {
		t.Fatal(err)
	}
	a.m = newMetrics()
	if o, err = openEventOutbox(a); err != nil {
		t.Fatal(err)
	}
	defer o.close()
	if err := o.add(protocol.NodeEvent{Kind: protocol.EventAutonomyEnd}); err != nil {
		t.Fatal(err)
	}
	if o.j.Len() != 3 {
		t.Fatalf("%d events on disk after the restart, want 3", o.j.Len())
	}

	broker.open, broker.fail = true, errors.New("connection reset")
	if _, err := o.sendBatch(); err == nil || o.j.Len() != 3 {
		t.Fatalf("failed publish: err %v, %d left; want all kept", err, o.j.Len())
	}
	broker.fail = nil
	if n, err := o.sendBatch(); err != nil || n != 3 || o.j.Len() != 0 {
		t.Fatalf("send: %d sent, err %v, %d left", n, err, o.j.Len())
	}
	var kinds []string
	ids := map[string]bool{}
	for _, m := range broker.got {
		topic, payload, _ := strings.Cut(m, " ")
		if topic != "cloudskin/v1/nodes/edge-1/events" {
			t.Fatalf("published on %s", topic)
		}
		var ev protocol.NodeEvent
		if err := json.Unmarshal([]byte(payload), &ev); err != nil {
			t.Fatal(err)
		}
		if err := ev.Validate("edge-1", time.Now()); err != nil {
			t.Fatalf("published event invalid: %v", err)
		}
		kinds = append(kinds, ev.Kind)
		ids[ev.ID] = true
	}
	if len(kinds) != 3 || kinds[0] != protocol.EventAutonomyStart || kinds[2] != protocol.EventAutonomyEnd || len(ids) != 3 {
		t.Fatalf("published %v with %d distinct ids, want start, shed, end in order", kinds, len(ids))
	}
}
