package fleet

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"time"

	"github.com/cloudskin/cloudskin/console/internal/broker"
	"github.com/cloudskin/cloudskin/console/internal/metrics"
	"github.com/cloudskin/cloudskin/console/internal/store"
	"github.com/cloudskin/cloudskin/shared/protocol"
)

// Sink receives node messages from the broker (see broker.Sink): it
// validates, stores and updates liveness. Bad input is counted, logged and
// refused; a database failure asks the broker not to acknowledge.
func (s *Service) Sink(ctx context.Context, topic string, payload []byte) error {
	node, leaf, ok := s.cfg.Topics.ParseNode(topic)
	if !ok {
		s.m.Reject(metrics.RejectUnknownTopic)
		s.log.Warn("message on unknown topic dropped", "topic", topic)
		return fmt.Errorf("%w: topic %q", ErrInvalid, topic)
	}
	s.m.MQTTMessages.WithLabelValues(leaf).Inc()
	n, err := s.store.NodeByName(ctx, node)
	if err != nil {
		if errors.Is(err, store.ErrNotFound) {
			s.m.Reject(metrics.RejectUnknownNode)
			s.log.Warn("message from unknown node dropped", "node", node, "topic", topic)
			return fmt.Errorf("%w: unknown node %q", ErrInvalid, node)
		}
		return fmt.Errorf("%w: %v", broker.ErrRetry, err)
	}
	switch leaf {
	case protocol.LeafTelemetry:
		return s.telemetry(ctx, n, payload)
	case protocol.LeafStatus:
		return s.status(ctx, n, payload)
	case protocol.LeafActual:
		err := s.actual(ctx, n, payload)
		if err == nil {
			if f, _ := s.onActual.Load().(func(string)); f != nil {
				f(node)
			}
		}
		return err
	case protocol.LeafReplies:
		if len(payload) > protocol.MaxReplyBytes*2 {
			s.m.Reject(metrics.RejectReplyInvalid)
			return fmt.Errorf("%w: reply of %d bytes", ErrInvalid, len(payload))
		}
		if s.cfg.Replies != nil {
			s.cfg.Replies(node, payload)
		}
		return nil
	case protocol.LeafPositions:
		return s.position(ctx, n, payload)
	case protocol.LeafEvents:
		return s.event(ctx, n, payload)
	default:
		s.m.Reject(metrics.RejectUnknownTopic)
		s.log.Warn("message on unknown topic leaf dropped", "node", node, "topic", topic)
		return fmt.Errorf("%w: topic %q", ErrInvalid, topic)
	}
}

func (s *Service) seenAt(n *store.Node, fields map[string]any) store.Seen {
	return store.Seen{NowUS: s.now().UnixMicro(), WasOnline: n.Status == protocol.StateOnline, Fields: fields}
}

func (s *Service) seen(ctx context.Context, n *store.Node, fields map[string]any) error {
	became, err := s.store.NodeSeen(ctx, n.ID, s.seenAt(n, fields))
	if err != nil {
		return fmt.Errorf("%w: %v", broker.ErrRetry, err)
	}
	s.noteOnline(n, became)
	return nil
}

func (s *Service) noteOnline(n *store.Node, became bool) {
	if became {
		s.m.NodeTransitions.WithLabelValues(protocol.StateOnline, "message received").Inc()
		s.log.Info("node online", "node", n.Name)
	}
}

func (s *Service) telemetry(ctx context.Context, n *store.Node, payload []byte) error {
	if len(payload) > protocol.MaxTelemetryBytes {
		s.m.Reject(metrics.RejectTelemetryOversized)
		s.log.Warn("oversized telemetry dropped", "node", n.Name, "bytes", len(payload), "limit", protocol.MaxTelemetryBytes)
		return fmt.Errorf("%w: telemetry of %d bytes exceeds %d", ErrInvalid, len(payload), protocol.MaxTelemetryBytes)
	}
	var t protocol.Telemetry
	if err := json.Unmarshal(payload, &t); err != nil {
		s.m.Reject(metrics.RejectTelemetryMalformed)
		s.log.Warn("malformed telemetry dropped", "node", n.Name, "err", err)
		return fmt.Errorf("%w: telemetry: %v", ErrInvalid, err)
	}
	now := s.now()
	if err := t.Validate(n.Name, now); err != nil {
		s.m.Reject(metrics.RejectTelemetryInvalid)
		s.log.Warn("invalid telemetry dropped", "node", n.Name, "err", err)
		return fmt.Errorf("%w: %v", ErrInvalid, err)
	}
	// Store the canonical encoding, not the raw bytes: unknown fields a
	// hostile client added do not reach the database.
	canon, _ := json.Marshal(&t)
	inserted, became, err := s.store.InsertSample(ctx, &store.Sample{
		NodeID: n.ID, TimeUS: t.Time.UnixMicro(), Seq: t.Seq, CPUPercent: t.CPU.Percent,
		MemPercent: t.Memory.Percent, PowerW: t.Energy.PowerW, EnergySource: t.Energy.Source,
		BatteryPct: t.Energy.BatteryPct, SolarW: t.Energy.SolarW, Payload: string(canon), ReceivedUS: now.UnixMicro(),
	}, s.seenAt(n, nil))
	if err != nil {
		s.log.Error("telemetry not stored", "node", n.Name, "err", err)
		return fmt.Errorf("%w: %v", broker.ErrRetry, err)
	}
	if inserted {
		s.m.SamplesStored.Inc()
	} else {
		s.m.SamplesDuplicate.Inc()
	}
	s.log.Debug("telemetry received", "node", n.Name, "seq", t.Seq, "time", t.Time, "new", inserted)
	s.noteOnline(n, became)
	return nil
}

func (s *Service) status(ctx context.Context, n *store.Node, payload []byte) error {
	if len(payload) > protocol.MaxStatusBytes {
		s.m.Reject(metrics.RejectStatusInvalid)
		return fmt.Errorf("%w: status of %d bytes exceeds %d", ErrInvalid, len(payload), protocol.MaxStatusBytes)
	}
	var st protocol.Status
	if err := json.Unmarshal(payload, &st); err != nil {
		s.m.Reject(metrics.RejectStatusInvalid)
		s.log.Warn("malformed status dropped", "node", n.Name, "err", err)
		return fmt.Errorf("%w: status: %v", ErrInvalid, err)
	}
	if err := st.Validate(n.Name); err != nil {
		s.m.Reject(metrics.RejectStatusInvalid)
		s.log.Warn("invalid status dropped", "node", n.Name, "err", err)
		return fmt.Errorf("%w: %v", ErrInvalid, err)
	}
	if st.State == protocol.StateOffline {
		changed, err := s.store.MarkOffline(ctx, n.ID, s.now().UnixMicro(), "last will")
		if err != nil {
			return fmt.Errorf("%w: %v", broker.ErrRetry, err)
		}
		if changed {
			s.m.NodeTransitions.WithLabelValues(protocol.StateOffline, "last will").Inc()
			s.log.Info("node offline", "node", n.Name, "reason", "last will")
		}
		return nil
	}
	fields := map[string]any{"heartbeat_us": int64(st.HeartbeatSeconds * float64(time.Second/time.Microsecond))}
	if st.Arch != "" {
		fields["arch"] = truncate(st.Arch, 32)
	}
	if st.OS != "" {
		fields["os"] = truncate(st.OS, 32)
	}
	if st.Version != "" {
		fields["version"] = truncate(st.Version, 64)
	}
	if st.Labels != nil {
		if err := ValidateLabels(st.Labels); err != nil {
			s.m.Reject(metrics.RejectStatusInvalid)
			s.log.Warn("status labels refused", "node", n.Name, "err", err)
		} else {
			b, _ := json.Marshal(st.Labels)
			fields["labels"] = string(b)
		}
	}
	return s.seen(ctx, n, fields)
}

func truncate(s string, n int) string {
	if len(s) > n {
		return s[:n]
	}
	return s
}

// MaxActualBytes bounds one actual-state message: a node's every cell with
// its recent events and outputs.
const MaxActualBytes = 256 << 10

// actual stores the newest status of each cell the node reports. Statuses
// of cells the console does not have on this node are counted and ignored.
func (s *Service) actual(ctx context.Context, n *store.Node, payload []byte) error {
	refuse := func(why string, err error) error {
		s.m.Reject(metrics.RejectActualInvalid)
		s.log.Warn("actual state refused", "node", n.Name, "why", why, "err", err)
		return fmt.Errorf("%w: actual state: %s: %v", ErrInvalid, why, err)
	}
	if len(payload) > MaxActualBytes {
		return refuse("oversized", fmt.Errorf("%d bytes exceeds %d", len(payload), MaxActualBytes))
	}
	var a protocol.Actual
	if err := json.Unmarshal(payload, &a); err != nil {
		return refuse("malformed", err)
	}
	if a.Node != n.Name {
		return refuse("wrong node", fmt.Errorf("payload names node %q", a.Node))
	}
	statuses := make(map[string]string, len(a.Cells))
	for i := range a.Cells {
		c := &a.Cells[i]
		if c.ID == "" || len(c.ID) > 63 {
			return refuse("bad cell id", fmt.Errorf("cell id %q", c.ID))
		}
		// Canonical encoding: unknown fields do not reach the database.
		b, _ := json.Marshal(c)
		statuses[c.ID] = string(b)
	}
	if len(statuses) > 0 {
		updated, err := s.store.SetCellStatuses(ctx, n.Name, statuses, s.now().UnixMicro())
		if err != nil {
			s.log.Error("cell statuses not stored", "node", n.Name, "err", err)
			return fmt.Errorf("%w: %v", broker.ErrRetry, err)
		}
		if unknown := len(statuses) - updated; unknown > 0 {
			s.m.ActualUnknownCells.Add(float64(unknown))
			s.log.Debug("statuses of unknown cells ignored", "node", n.Name, "count", unknown)
		}
	}
	if len(a.Streams) > 64 {
		return refuse("too many streams", fmt.Errorf("%d streams", len(a.Streams)))
	}
	rows := make([]store.NodeStream, 0, len(a.Streams))
	for i := range a.Streams {
		st := &a.Streams[i]
		if err := protocol.ValidateStreamName(st.Name); err != nil {
			return refuse("bad stream name", err)
		}
		b, _ := json.Marshal(st)
		rows = append(rows, store.NodeStream{Node: n.Name, Name: st.Name, StatusJSON: string(b), StatusUS: s.now().UnixMicro()})
	}
	if err := s.store.SaveNodeStreams(ctx, n.Name, rows); err != nil {
		s.log.Error("stream figures not stored", "node", n.Name, "err", err)
		return fmt.Errorf("%w: %v", broker.ErrRetry, err)
	}
	if len(a.Modules) > 256 {
		return refuse("too many modules", fmt.Errorf("%d modules", len(a.Modules)))
	}
	for _, m := range a.Modules {
		if len(m) != 64 {
			return refuse("bad module digest", fmt.Errorf("module %q", m))
		}
	}
	if a.Update != nil {
		// The newest update status, for the OTA engine (console/internal/ota)
		// to read; clipped, not refused: a long error must not cost the
		// node its actual state.
		u := *a.Update
		u.Rollout, u.Bundle, u.Version, u.Running = truncate(u.Rollout, 80), truncate(u.Bundle, 64), truncate(u.Version, 80), truncate(u.Running, 80)
		u.Slot, u.Phase, u.Error = truncate(u.Slot, 16), truncate(u.Phase, 16), truncate(u.Error, 1000)
		b, _ := json.Marshal(&u)
		err := s.store.SaveNodeUpdate(ctx, &store.NodeUpdate{Node: n.Name, StatusJSON: string(b), TimeUS: u.Time.UnixMicro(), ReceivedUS: s.now().UnixMicro()})
		if err != nil {
			s.log.Error("update status not stored", "node", n.Name, "err", err)
			return fmt.Errorf("%w: %v", broker.ErrRetry, err)
		}
	}
	mods, _ := json.Marshal(a.Modules)
	s.log.Debug("actual state received", "node", n.Name, "generation", a.Generation, "cells", len(a.Cells), "streams", len(a.Streams))
	return s.seen(ctx, n, map[string]any{"modules": string(mods)})
}

// position takes a moving target's position a node saw and hands it to the
// placement (OnPosition).
func (s *Service) position(ctx context.Context, n *store.Node, payload []byte) error {
	var p protocol.Position
	if len(payload) > 4096 {
		s.m.Reject(metrics.RejectUnknownTopic)
		return fmt.Errorf("%w: position of %d bytes", ErrInvalid, len(payload))
	}
	if err := json.Unmarshal(payload, &p); err != nil {
		s.log.Warn("position refused: malformed", "node", n.Name, "err", err)
		return fmt.Errorf("%w: position: %v", ErrInvalid, err)
	}
	if err := p.Validate(); err != nil {
		s.log.Warn("position refused", "node", n.Name, "err", err)
		return err
	}
	if f, _ := s.onPosition.Load().(func(protocol.Position)); f != nil {
		f(p)
	}
	return s.seen(ctx, n, nil)
}
