package fleet

import (
	"context"
	"encoding/json"
	"fmt"
	"time"

	"github.com/cloudskin/cloudskin/console/internal/store"
	"github.com/cloudskin/cloudskin/shared/protocol"
)

// NodeView is a node as the API shows it.
type NodeView struct {
	Name             string              `json:"name"`
	Status           string              `json:"status"`
	StatusReason     string              `json:"status_reason,omitempty"`
	StatusSince      *time.Time          `json:"status_since,omitempty"`
	LastSeen         *time.Time          `json:"last_seen,omitempty"`
	HeartbeatSeconds float64             `json:"heartbeat_seconds,omitempty"`
	Arch             string              `json:"arch,omitempty"`
	OS               string              `json:"os,omitempty"`
	Version          string              `json:"version,omitempty"`
	Labels           map[string]string   `json:"labels"`
	EnrolledAt       time.Time           `json:"enrolled_at"`
	LastTelemetry    *protocol.Telemetry `json:"last_telemetry,omitempty"`
}

func usTime(us int64) *time.Time {
	if us == 0 {
		return nil
	}
	t := time.UnixMicro(us).UTC()
	return &t
}

func view(n *store.Node) NodeView {
	v := NodeView{
		Name: n.Name, Status: n.Status, StatusReason: n.StatusReason, StatusSince: usTime(n.StatusUS),
		LastSeen: usTime(n.LastSeenUS), HeartbeatSeconds: float64(n.HeartbeatUS) / 1e6,
		Arch: n.Arch, OS: n.OS, Version: n.Version, Labels: map[string]string{}, EnrolledAt: n.EnrolledAt.UTC(),
	}
	_ = json.Unmarshal([]byte(n.Labels), &v.Labels)
	if n.LastTelemetry != "" {
		var t protocol.Telemetry
		if json.Unmarshal([]byte(n.LastTelemetry), &t) == nil {
			v.LastTelemetry = &t
		}
	}
	return v
}

// Nodes lists every node.
func (s *Service) Nodes(ctx context.Context) ([]NodeView, error) {
	ns, err := s.store.ListNodes(ctx)
	if err != nil {
		return nil, err
	}
	out := make([]NodeView, 0, len(ns))
	for i := range ns {
		out = append(out, view(&ns[i]))
	}
	return out, nil
}

// Node returns one node.
func (s *Service) Node(ctx context.Context, name string) (*NodeView, error) {
	if err := protocol.ValidateNodeName(name); err != nil {
		return nil, fmt.Errorf("%w: %v", ErrInvalid, err)
	}
	n, err := s.store.NodeByName(ctx, name)
	if err != nil {
		return nil, err
	}
	v := view(n)
	return &v, nil
}

// MaxTelemetryLimit bounds one telemetry page.
const MaxTelemetryLimit = 10000

// Telemetry returns a node's samples in [since, until), oldest first.
func (s *Service) Telemetry(ctx context.Context, name string, since, until time.Time, limit int) ([]protocol.Telemetry, error) {
	if err := protocol.ValidateNodeName(name); err != nil {
		return nil, fmt.Errorf("%w: %v", ErrInvalid, err)
	}
	if limit <= 0 || limit > MaxTelemetryLimit {
		return nil, fmt.Errorf("%w: limit %d must be 1..%d", ErrInvalid, limit, MaxTelemetryLimit)
	}
	if !until.After(since) {
		return nil, fmt.Errorf("%w: until must be after since", ErrInvalid)
	}
	n, err := s.store.NodeByName(ctx, name)
	if err != nil {
		return nil, err
	}
	rows, err := s.store.Samples(ctx, n.ID, since.UnixMicro(), until.UnixMicro(), limit)
	if err != nil {
		return nil, err
	}
	out := make([]protocol.Telemetry, 0, len(rows))
	for _, r := range rows {
		var t protocol.Telemetry
		if err := json.Unmarshal([]byte(r.Payload), &t); err != nil {
			return nil, fmt.Errorf("sample %d of %s is unreadable: %w", r.ID, name, err)
		}
		out = append(out, t)
	}
	return out, nil
}
