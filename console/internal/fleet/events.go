package fleet

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"time"

	"github.com/cloudskin/cloudskin/console/internal/broker"
	"github.com/cloudskin/cloudskin/console/internal/store"
	"github.com/cloudskin/cloudskin/shared/protocol"
)

// RejectEventInvalid is the reject reason (cloudskin_console_rejected_total)
// of a node event refused as oversized, malformed or invalid.
const RejectEventInvalid = "event_invalid"

// event stores one node event (nodes/{node}/events): something the node did
// on its own, such as shedding a cell while it could not reach the console.
// An event arrives once or more (the node resends what it is not sure the
// broker has); it is stored once per (node, event id).
func (s *Service) event(ctx context.Context, n *store.Node, payload []byte) error {
	refuse := func(why string, err error) error {
		s.m.Reject(RejectEventInvalid)
		s.log.Warn("node event refused", "node", n.Name, "why", why, "err", err)
		return fmt.Errorf("%w: event: %s: %v", ErrInvalid, why, err)
	}
	if len(payload) > protocol.MaxEventBytes {
		return refuse("oversized", fmt.Errorf("%d bytes exceeds %d", len(payload), protocol.MaxEventBytes))
	}
	var ev protocol.NodeEvent
	if err := json.Unmarshal(payload, &ev); err != nil {
		return refuse("malformed", err)
	}
	now := s.now()
	if err := ev.Validate(n.Name, now); err != nil {
		return refuse("invalid", err)
	}
	// The canonical, compact detail: what a hostile client added around it
	// does not reach the database.
	detail := "{}"
	if d := bytes.TrimSpace(ev.Detail); len(d) > 0 && string(d) != "null" {
		var buf bytes.Buffer
		if err := json.Compact(&buf, d); err != nil {
			return refuse("invalid", err)
		}
		detail = buf.String()
	}
	inserted, err := s.store.InsertNodeEvents(ctx, []store.NodeEvent{{
		Node: n.Name, EventID: ev.ID, TimeUS: ev.Time.UnixMicro(), Kind: ev.Kind, Cell: ev.Cell,
		Message: ev.Message, Detail: detail, ReceivedUS: now.UnixMicro(),
	}})
	if err != nil {
		s.log.Error("node event not stored", "node", n.Name, "event", ev.ID, "err", err)
		return fmt.Errorf("%w: %v", broker.ErrRetry, err)
	}
	if inserted > 0 {
		s.log.Info("node event", "node", n.Name, "kind", ev.Kind, "cell", ev.Cell, "time", ev.Time, "event", ev.ID, "message", ev.Message)
	} else {
		s.log.Debug("node event received again", "node", n.Name, "event", ev.ID)
	}
	return s.seen(ctx, n, nil)
}

// EventView is a node event as the API shows it.
type EventView struct {
	ID         string          `json:"id"`
	Node       string          `json:"node"`
	Time       time.Time       `json:"time"`
	Kind       string          `json:"kind"`
	Cell       string          `json:"cell,omitempty"`
	Message    string          `json:"message,omitempty"`
	Detail     json.RawMessage `json:"detail"`
	ReceivedAt time.Time       `json:"received_at"`
}

// MaxEventsLimit bounds one page of node events.
const MaxEventsLimit = 1000

// NodeEvents returns a node's events, newest first, at most limit.
func (s *Service) NodeEvents(ctx context.Context, name string, limit int) ([]EventView, error) {
	if err := protocol.ValidateNodeName(name); err != nil {
		return nil, fmt.Errorf("%w: %v", ErrInvalid, err)
	}
	if limit <= 0 || limit > MaxEventsLimit {
		return nil, fmt.Errorf("%w: limit %d must be 1..%d", ErrInvalid, limit, MaxEventsLimit)
	}
	if _, err := s.store.NodeByName(ctx, name); err != nil {
		return nil, err
	}
	rows, err := s.store.NodeEvents(ctx, name, limit)
	if err != nil {
		return nil, err
	}
	out := make([]EventView, 0, len(rows))
	for _, r := range rows {
		d := json.RawMessage(r.Detail)
		if !json.Valid(d) {
			d = json.RawMessage("{}")
		}
		out = append(out, EventView{ID: r.EventID, Node: r.Node, Time: time.UnixMicro(r.TimeUS).UTC(), Kind: r.Kind, Cell: r.Cell,
			Message: r.Message, Detail: d, ReceivedAt: time.UnixMicro(r.ReceivedUS).UTC()})
	}
	return out, nil
}
