// Package cells is the console's side of the cell lifecycle: it records the
// cells operators place on nodes and publishes each node's full desired
// state, retained, on {prefix}/nodes/{node}/desired. What the nodes report
// back (protocol.Actual) is stored by the fleet intake and read here.
package cells

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"strings"
	"sync"
	"time"

	"github.com/cloudskin/cloudskin/console/internal/store"
	"github.com/cloudskin/cloudskin/shared/protocol"
)

// Errors the API maps to status codes.
var (
	// ErrInvalid wraps a refused spec or parameter (400).
	ErrInvalid = errors.New("invalid cell")
	// ErrUnpublished means the change is stored but the node's desired
	// state could not be published (503): the broker is down.
	ErrUnpublished = errors.New("change stored, but the node's desired state could not be published; retry")
)

// Publisher is the part of broker.Bus the service needs.
type Publisher interface {
	Publish(topic string, payload []byte, retain bool) error
}

// Service places cells on nodes.
type Service struct {
	topics protocol.Topics
	store  *store.Store
	bus    Publisher
	log    *slog.Logger
	// mu serialises reading a node's desired state with publishing it, so
	// the last message retained is never older than the last change stored.
	mu sync.Mutex
}

// New returns a cell service publishing through bus.
func New(topics protocol.Topics, st *store.Store, bus Publisher, log *slog.Logger) *Service {
	return &Service{topics: topics, store: st, bus: bus, log: log.With("component", "cells")}
}

// Cell is a cell as the API shows it: its spec, where it runs and the
// newest status its node reported (nil until the node reports it).
type Cell struct {
	ID      string              `json:"id"`
	Node    string              `json:"node"`
	Module  string              `json:"module"`
	Config  json.RawMessage     `json:"config,omitempty"`
	Inputs  []protocol.Input    `json:"inputs"`
	Outputs []string            `json:"outputs"`
	Limits  protocol.CellLimits `json:"limits"`
	App     string              `json:"app,omitempty"`
	// Priority is "" (normal), "low" (its node may pause it on its own) or "high".
	Priority string `json:"priority,omitempty"`
	// CheckpointSeconds is the period of the cell's checkpoints (0: none).
	CheckpointSeconds int `json:"checkpoint_seconds,omitempty"`
	// HeldOn is the node still holding the cell while it migrates to Node.
	HeldOn    string               `json:"held_on,omitempty"`
	CreatedBy string               `json:"created_by,omitempty"`
	CreatedAt time.Time            `json:"created_at"`
	Status    *protocol.CellStatus `json:"status"`
	StatusAt  *time.Time           `json:"status_at"`
}

// Create validates spec, records it on node and publishes the node's new
// desired state. The node must be enrolled (store.ErrNotFound) and the
// module uploaded (ErrInvalid); the id must be new (store.ErrConflict).
// When publishing fails the cell stays recorded and ErrUnpublished is
// returned: re-posting the same spec to the same node publishes again.
func (s *Service) Create(ctx context.Context, spec protocol.CellSpec, node, by string) (*Cell, error) {
	spec.Module = strings.TrimPrefix(spec.Module, "sha256:")
	if err := protocol.ValidateNodeName(node); err != nil {
		return nil, fmt.Errorf("%w: %v", ErrInvalid, err)
	}
	if err := spec.Validate(); err != nil {
		return nil, fmt.Errorf("%w: %v", ErrInvalid, err)
	}
	if len(spec.Config) > 0 {
		var buf bytes.Buffer
		if err := json.Compact(&buf, spec.Config); err != nil {
			return nil, fmt.Errorf("%w: config is not JSON: %v", ErrInvalid, err)
		}
		spec.Config = buf.Bytes()
		if string(spec.Config) == "null" {
			spec.Config = nil
		}
	}
	if spec.Inputs == nil {
		spec.Inputs = []protocol.Input{}
	}
	if _, err := s.store.NodeByName(ctx, node); err != nil {
		return nil, err
	}
	if _, err := s.store.ModuleByDigest(ctx, spec.Module); err != nil {
		if errors.Is(err, store.ErrNotFound) {
			return nil, fmt.Errorf("%w: module %s is unknown: upload the module first", ErrInvalid, spec.Module)
		}
		return nil, err
	}
	raw, err := json.Marshal(&spec)
	if err != nil {
		return nil, err
	}
	row := &store.Cell{ID: spec.ID, Node: node, Module: spec.Module, Spec: string(raw), App: spec.App, BoundUS: time.Now().UnixMicro(), CreatedBy: by}
	if err := s.store.CreateCell(ctx, row); err != nil {
		if !errors.Is(err, store.ErrConflict) {
			return nil, err
		}
		// The same cell again: the operator retrying after a 503.
		old, gerr := s.store.CellByID(ctx, spec.ID)
		if gerr != nil || old.Node != node || old.Spec != row.Spec {
			return nil, err
		}
		row = old
	} else {
		s.log.Info("cell created", "cell", spec.ID, "node", node, "module", spec.Module, "by", by)
	}
	if err := s.Republish(ctx, node); err != nil {
		return nil, err
	}
	return view(row)
}

// Delete removes a cell and publishes its node's new desired state.
func (s *Service) Delete(ctx context.Context, id, by string) error {
	if err := validID(id); err != nil {
		return err
	}
	nodes, err := s.store.DeleteCell(ctx, id)
	if err != nil {
		return err
	}
	s.log.Info("cell deleted", "cell", id, "nodes", nodes, "by", by)
	var errs []error
	for _, n := range nodes {
		if err := s.Republish(ctx, n); err != nil {
			errs = append(errs, err)
		}
	}
	return errors.Join(errs...)
}

// Get returns one cell with its newest status.
func (s *Service) Get(ctx context.Context, id string) (*Cell, error) {
	if err := validID(id); err != nil {
		return nil, err
	}
	c, err := s.store.CellByID(ctx, id)
	if err != nil {
		return nil, err
	}
	return view(c)
}

// List returns the cells of node, or of every node when node is empty.
func (s *Service) List(ctx context.Context, node string) ([]Cell, error) {
	if node != "" {
		if err := protocol.ValidateNodeName(node); err != nil {
			return nil, fmt.Errorf("%w: %v", ErrInvalid, err)
		}
	}
	rows, err := s.store.ListCells(ctx, node)
	if err != nil {
		return nil, err
	}
	out := make([]Cell, 0, len(rows))
	for i := range rows {
		c, err := view(&rows[i])
		if err != nil {
			return nil, err
		}
		out = append(out, *c)
	}
	return out, nil
}

// Events returns the recent events the cell's node reported for it (the
// agent keeps a bounded window), oldest first as reported.
func (s *Service) Events(ctx context.Context, id string) ([]protocol.CellEvent, error) {
	c, err := s.Get(ctx, id)
	if err != nil {
		return nil, err
	}
	if c.Status == nil || c.Status.Events == nil {
		return []protocol.CellEvent{}, nil
	}
	return c.Status.Events, nil
}

// Republish publishes node's current desired state, retained. Changes call
// it; so does the console at start, because an embedded broker keeps
// retained messages only in memory.
func (s *Service) Republish(ctx context.Context, node string) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	gen, rows, decls, err := s.store.DesiredState(ctx, node)
	if err != nil {
		return err
	}
	d := protocol.Desired{Node: node, Generation: gen, Cells: make([]protocol.CellSpec, 0, len(rows))}
	for _, r := range rows {
		var spec protocol.CellSpec
		if err := json.Unmarshal([]byte(r.Spec), &spec); err != nil {
			return fmt.Errorf("cell %s: stored spec is unreadable: %w", r.ID, err)
		}
		d.Cells = append(d.Cells, spec)
	}
	for _, r := range decls {
		var spec protocol.StreamSpec
		if err := json.Unmarshal([]byte(r.Spec), &spec); err != nil {
			return fmt.Errorf("stream %s: stored spec is unreadable: %w", r.Name, err)
		}
		d.Streams = append(d.Streams, spec)
	}
	if d.Prefetch, err = s.store.PrefetchFor(ctx, node); err != nil {
		return err
	}
	// The release the node is to run, while a rollout updates it
	// (console/internal/ota).
	if raw, err := s.store.NodeUpdateSpec(ctx, node); err != nil {
		return err
	} else if raw != "" {
		d.Update = new(protocol.UpdateSpec)
		if err := json.Unmarshal([]byte(raw), d.Update); err != nil {
			return fmt.Errorf("node %s: stored update is unreadable: %w", node, err)
		}
	}
	payload, err := json.Marshal(&d)
	if err != nil {
		return err
	}
	if err := s.bus.Publish(s.topics.Node(node, protocol.LeafDesired), payload, true); err != nil {
		s.log.Error("desired state not published", "node", node, "generation", gen, "err", err)
		return fmt.Errorf("node %s generation %d: %w: %v", node, gen, ErrUnpublished, err)
	}
	update := ""
	if d.Update != nil {
		update = d.Update.Rollout
	}
	s.log.Info("desired state published", "node", node, "generation", gen, "cells", len(d.Cells), "streams", len(d.Streams), "update", update)
	return nil
}

// RepublishAll publishes the desired state of every node that has one
// (also nodes whose cells were all deleted: their empty state must reach a
// node that was away). It tries every node and returns the failures joined.
func (s *Service) RepublishAll(ctx context.Context) error {
	nodes, err := s.store.NodesWithDesired(ctx)
	if err != nil {
		return err
	}
	var errs []error
	for _, n := range nodes {
		if err := s.Republish(ctx, n); err != nil {
			errs = append(errs, err)
		}
	}
	return errors.Join(errs...)
}

// PutStream declares (or changes) a stream on node and publishes the node's
// new desired state.
func (s *Service) PutStream(ctx context.Context, node string, spec protocol.StreamSpec, by string) error {
	if err := protocol.ValidateNodeName(node); err != nil {
		return fmt.Errorf("%w: %v", ErrInvalid, err)
	}
	if err := spec.Validate(); err != nil {
		return fmt.Errorf("%w: %v", ErrInvalid, err)
	}
	if _, err := s.store.NodeByName(ctx, node); err != nil {
		return err
	}
	b, _ := json.Marshal(spec)
	if err := s.store.PutStreamDecl(ctx, &store.StreamDecl{Node: node, Name: spec.Name, Spec: string(b), CreatedBy: by}); err != nil {
		return err
	}
	return s.Republish(ctx, node)
}

// DeleteStream removes a stream declaration from node (the node keeps the
// records it holds) and publishes its new desired state.
func (s *Service) DeleteStream(ctx context.Context, node, name string) error {
	if err := s.store.DeleteStreamDecl(ctx, node, name); err != nil {
		if errors.Is(err, store.ErrNotFound) {
			return fmt.Errorf("node %s declares no stream %s: %w", node, name, store.ErrNotFound)
		}
		return err
	}
	return s.Republish(ctx, node)
}

func validID(id string) error {
	probe := protocol.CellSpec{ID: id, Module: strings.Repeat("0", 64)}
	if err := probe.Validate(); err != nil {
		return fmt.Errorf("%w: %v", ErrInvalid, err)
	}
	return nil
}

func view(r *store.Cell) (*Cell, error) {
	var spec protocol.CellSpec
	if err := json.Unmarshal([]byte(r.Spec), &spec); err != nil {
		return nil, fmt.Errorf("cell %s: stored spec is unreadable: %w", r.ID, err)
	}
	c := &Cell{
		ID: r.ID, Node: r.Node, Module: spec.Module, Config: json.RawMessage(spec.Config), Inputs: spec.Inputs,
		Outputs: spec.Outputs, Limits: spec.Limits, CreatedBy: r.CreatedBy, CreatedAt: r.CreatedAt.UTC(),
		App: r.App, Priority: spec.Priority, CheckpointSeconds: spec.CheckpointSeconds, HeldOn: r.HeldOn,
	}
	if c.Inputs == nil {
		c.Inputs = []protocol.Input{}
	}
	if c.Outputs == nil {
		c.Outputs = []string{}
	}
	if r.StatusJSON != "" {
		var st protocol.CellStatus
		if err := json.Unmarshal([]byte(r.StatusJSON), &st); err != nil {
			return nil, fmt.Errorf("cell %s: stored status is unreadable: %w", r.ID, err)
		}
		at := time.UnixMicro(r.StatusUS).UTC()
		c.Status, c.StatusAt = &st, &at
	}
	return c, nil
}
