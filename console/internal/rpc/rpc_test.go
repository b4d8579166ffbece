package rpc

import (
	"context"
	"encoding/json"
	"errors"
	"io"
	"log/slog"
	"testing"
	"time"

	"github.com/cloudskin/cloudskin/shared/protocol"
)

func TestCall(t *testing.T) {
	topics := protocol.NewTopics("")
	var c *Caller
	// The "node" answers from another goroutine, like a reply arriving over MQTT.
	c = New(func(topic string, payload []byte, retain bool) error {
		var req protocol.Request
		if err := json.Unmarshal(payload, &req); err != nil {
			t.Error(err)
		}
		if topic != topics.Node("n1", protocol.LeafRequests) || retain {
			t.Errorf("published to %s retain=%v", topic, retain)
		}
		go func() {
			// A forged reply from another node with the same id is ignored.
			forged, _ := json.Marshal(protocol.Reply{ID: req.ID, Error: "forged"})
			c.Deliver("n2", forged)
			c.Deliver("n1", []byte("{not json"))
			b, _ := json.Marshal(protocol.Reply{ID: req.ID, Next: req.From + 1})
			c.Deliver("n1", b)
		}()
		return nil
	}, topics, 5*time.Second, slog.New(slog.NewTextHandler(io.Discard, nil)))
	r, err := c.Call(context.Background(), "n1", protocol.Request{Method: protocol.MethodStreamRecords, From: 41})
	if err != nil || r.Error != "" || r.Next != 42 {
		t.Fatalf("reply %+v, %v", r, err)
	}
	if len(c.pending) != 0 {
		t.Fatalf("pending left: %d", len(c.pending))
	}
}

func TestTimeout(t *testing.T) {
	c := New(func(string, []byte, bool) error { return nil }, protocol.NewTopics(""), 50*time.Millisecond, slog.New(slog.NewTextHandler(io.Discard, nil)))
	if _, err := c.Call(context.Background(), "n1", protocol.Request{}); !errors.Is(err, ErrTimeout) {
		t.Fatalf("err %v", err)
	}
	fail := New(func(string, []byte, bool) error { return errors.New("bus down") }, protocol.NewTopics(""), time.Second, slog.New(slog.NewTextHandler(io.Discard, nil)))
	if _, err := fail.Call(context.Background(), "n1", protocol.Request{}); err == nil {
		t.Fatal("publish error not returned")
	}
}
