package placement

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"sync"
	"sync/atomic"
	"time"

	"github.com/cloudskin/cloudskin/console/internal/cells"
	"github.com/cloudskin/cloudskin/console/internal/objects"
	"github.com/cloudskin/cloudskin/console/internal/planner"
	"github.com/cloudskin/cloudskin/console/internal/store"
	"github.com/cloudskin/cloudskin/shared/protocol"
)

// ErrUnplaceable: no node passes the Planner's filters (422).
var ErrUnplaceable = errors.New("no node can take the cell")

// Config tunes placement.
type Config struct {
	Planner planner.Config
	Moves   MoveConfig
	// Interval between two planning rounds (moves also step whenever a
	// node reports its actual state).
	Interval time.Duration
	// KeepDecisions is how many decisions are kept.
	KeepDecisions int
}

// Service places apps' cells with the Planner, runs the move rules every
// round and drives migrations.
type Service struct {
	cfg         Config
	store       *store.Store
	cells       *cells.Service
	planner     *planner.Planner
	Moves       *Moves
	Checkpoints *Checkpoints
	log         *slog.Logger
	now         func() time.Time
	kick        chan struct{}

	mu sync.Mutex // one planning round or app change at a time

	idleSince map[string]time.Time // scaled apps without backlog, since when (under mu)

	appCPU atomic.Pointer[map[string]float64] // each app's CPU request, as of the newest snapshot

	tmu      sync.Mutex // guards the moving targets
	targets  map[string]planner.Point
	targetAt map[string]time.Time
}

// New returns the placement service; pred may be nil (no learning plane).
func New(cfg Config, st *store.Store, cs *cells.Service, objs objects.Store, pred planner.Predictor, log *slog.Logger) (*Service, error) {
	if cfg.Interval <= 0 {
		cfg.Interval = 5 * time.Second
	}
	if cfg.KeepDecisions <= 0 {
		cfg.KeepDecisions = 10000
	}
	p, err := planner.New(cfg.Planner, pred)
	if err != nil {
		return nil, err
	}
	log = log.With("component", "placement")
	return &Service{
		cfg: cfg, store: st, cells: cs, planner: p, log: log, now: time.Now, kick: make(chan struct{}, 1),
		Moves: NewMoves(cfg.Moves, st, cs, log), Checkpoints: NewCheckpoints(st, objs, log),
		targets: map[string]planner.Point{}, targetAt: map[string]time.Time{}, idleSince: map[string]time.Time{},
	}, nil
}

// AppCPU is the CPU request of an app's cells as of the newest planning
// round (0 when unknown). Safe for concurrent use.
func (s *Service) AppCPU(app string) float64 {
	if m := s.appCPU.Load(); m != nil {
		return (*m)[app]
	}
	return 0
}

// Kick asks for a round now (a node reported, a checkpoint arrived).
func (s *Service) Kick() {
	select {
	case s.kick <- struct{}{}:
	default:
	}
}

// SetTarget records a moving target's position.
func (s *Service) SetTarget(id string, p planner.Point) {
	s.tmu.Lock()
	s.targets[id] = p
	s.targetAt[id] = s.now().UTC()
	s.tmu.Unlock()
}

// TargetView is a moving target's newest position.
type TargetView struct {
	planner.Point
	Time time.Time `json:"time"`
}

// Targets returns the moving targets' newest positions.
func (s *Service) Targets() map[string]TargetView {
	s.tmu.Lock()
	defer s.tmu.Unlock()
	out := make(map[string]TargetView, len(s.targets))
	for id, p := range s.targets {
		out[id] = TargetView{Point: p, Time: s.targetAt[id]}
	}
	return out
}

// Run steps moves on every kick and plans every Interval until ctx ends.
func (s *Service) Run(ctx context.Context) error {
	t := time.NewTicker(s.cfg.Interval)
	defer t.Stop()
	for {
		if err := s.Moves.Step(ctx); err != nil && ctx.Err() == nil {
			s.log.Warn("moves not all stepped", "err", err)
		}
		select {
		case <-ctx.Done():
			return nil
		case <-s.kick:
			continue
		case <-t.C:
		}
		if err := s.Round(ctx); err != nil && ctx.Err() == nil {
			s.log.Warn("planning round failed", "err", err)
		}
	}
}

// snapshot reads what a plan needs: cells, apps, the fleet.
func (s *Service) snapshot(ctx context.Context) ([]store.Cell, map[string]*AppSpec, []planner.Node, error) {
	cs, err := s.store.ListCells(ctx, "")
	if err != nil {
		return nil, nil, nil, err
	}
	rows, err := s.store.ListApps(ctx)
	if err != nil {
		return nil, nil, nil, err
	}
	apps := map[string]*AppSpec{}
	for _, r := range rows {
		var a AppSpec
		if err := json.Unmarshal([]byte(r.Spec), &a); err != nil {
			s.log.Error("stored app unreadable", "app", r.Name, "err", err)
			continue
		}
		apps[r.Name] = &a
	}
	cpu := make(map[string]float64, len(apps))
	for name, a := range apps {
		cpu[name] = a.CPU
	}
	s.appCPU.Store(&cpu)
	nodes, err := s.fleetView(ctx, cs)
	return cs, apps, nodes, err
}

// Round runs the Planner over the whole fleet: apps' missing cells are
// placed, and the move rules (node offline, energy, moving target,
// overload, SLO) start migrations. Cells that are moving are left alone.
func (s *Service) Round(ctx context.Context) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	cs, apps, nodes, err := s.snapshot(ctx)
	if err != nil {
		return err
	}
	open, err := s.store.OpenMoves(ctx)
	if err != nil {
		return err
	}
	moving := map[string]bool{}
	for _, m := range open {
		moving[m.Cell] = true
	}
	var pcs []planner.Cell
	for i := range cs {
		// Cells placed by hand stay where the operator put them; cells
		// on the move are the move's.
		if cs[i].App == "" || moving[cs[i].ID] || cs[i].HeldOn != "" {
			continue
		}
		pcs = append(pcs, s.plannerCell(&cs[i], apps))
	}
	targets := s.targetsCopy()
	_, decisions := s.planner.Plan(nodes, pcs, targets, s.now())
	for i := range decisions {
		d := &decisions[i]
		if d.Kind != planner.KindMove || d.To == "" {
			continue
		}
		id, err := s.record(ctx, d)
		if err != nil {
			return err
		}
		if _, err := s.Moves.Start(ctx, d.Cell, d.To, d.Reason, id); err != nil {
			s.log.Warn("move not started", "cell", d.Cell, "to", d.To, "reason", d.Reason, "err", err)
		}
	}
	// Apps' cells that could not be placed before are tried again.
	for name, a := range apps {
		if err := s.placeMissing(ctx, a, cs, nodes, targets, ""); err != nil {
			s.log.Warn("app cells not placed", "app", name, "err", err)
		}
	}
	// Last, as it changes apps: the next round sees the new replicas.
	s.autoscale(ctx, apps, cs)
	if _, err := s.store.PruneDecisions(ctx, s.cfg.KeepDecisions); err != nil {
		s.log.Warn("old decisions not pruned", "err", err)
	}
	return nil
}

func (s *Service) targetsCopy() map[string]planner.Point {
	s.tmu.Lock()
	defer s.tmu.Unlock()
	out := make(map[string]planner.Point, len(s.targets))
	for k, v := range s.targets {
		out[k] = v
	}
	return out
}

// record stores a decision and returns its id.
func (s *Service) record(ctx context.Context, d *planner.Decision) (uint64, error) {
	b, err := json.Marshal(d)
	if err != nil {
		return 0, err
	}
	row := store.Decision{TimeUS: d.Time.UnixMicro(), Cell: d.Cell, App: d.App, Kind: d.Kind, Reason: d.Reason, JSON: string(b)}
	var id uint64
	err = s.store.Tx(ctx, func(tx *store.Tx) error {
		id, err = tx.AddDecision(&row)
		return err
	})
	return id, err
}

// DecisionJSON is a stored decision as the API shows it: the Planner's
// record with its id.
func DecisionJSON(r store.Decision) json.RawMessage {
	var m map[string]any
	if json.Unmarshal([]byte(r.JSON), &m) != nil {
		m = map[string]any{"cell": r.Cell, "kind": r.Kind, "reason": r.Reason}
	}
	m["id"] = r.ID
	b, _ := json.Marshal(m)
	return b
}

// Migrate moves a cell by an operator's request: to a named node, or where
// the Planner would put it if its current node were not there.
func (s *Service) Migrate(ctx context.Context, cellID, to, by string) (*store.Move, *planner.Decision, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	c, err := s.store.CellByID(ctx, cellID)
	if err != nil {
		return nil, nil, err
	}
	if c.HeldOn != "" {
		return nil, nil, fmt.Errorf("%w: cell %s is already moving", ErrConflict, cellID)
	}
	if to != "" {
		if err := protocol.ValidateNodeName(to); err != nil {
			return nil, nil, fmt.Errorf("%w: to: %v", ErrInvalid, err)
		}
		if to == c.Node {
			return nil, nil, fmt.Errorf("%w: cell %s already runs on %s", ErrInvalid, cellID, to)
		}
		if _, err := s.store.NodeByName(ctx, to); err != nil {
			return nil, nil, err
		}
	}
	_, apps, nodes, err := s.snapshot(ctx)
	if err != nil {
		return nil, nil, err
	}
	pc := s.plannerCell(c, apps)
	pc.Constraints.Pinned = to // "" lets the Planner choose
	d := s.planner.Place(nodes, pc, s.targetsCopy(), s.now())
	d.Why = fmt.Sprintf("requested by %s. %s", by, d.Why)
	id, err := s.record(ctx, &d)
	if err != nil {
		return nil, nil, err
	}
	if d.Kind == planner.KindUnplaceable || d.To == "" {
		return nil, &d, fmt.Errorf("%w: %s", ErrUnplaceable, d.Why)
	}
	mv, err := s.Moves.Start(ctx, cellID, d.To, ReasonManual, id)
	return mv, &d, err
}

// PutApp creates or replaces an app and reconciles its cells: new ones
// are placed by the Planner, removed ones deleted, changed ones updated in
// place. create refuses an existing name (POST).
func (s *Service) PutApp(ctx context.Context, spec AppSpec, by string, create bool) (*AppView, bool, error) {
	if err := spec.Validate(); err != nil {
		return nil, false, err
	}
	for _, c := range spec.Cells {
		if _, err := s.store.ModuleByDigest(ctx, c.Module); err != nil {
			if errors.Is(err, store.ErrNotFound) {
				return nil, false, fmt.Errorf("%w: cell %s: module %s is unknown: upload it first", ErrInvalid, c.Name, c.Module)
			}
			return nil, false, err
		}
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if create {
		if _, err := s.store.AppByName(ctx, spec.Name); err == nil {
			return nil, false, fmt.Errorf("%w: app %s exists: PUT /api/v1/apps/%s to change it", ErrConflict, spec.Name, spec.Name)
		}
	}
	if spec.Scale != nil {
		// The autoscaler owns the replica count and the partitioning's
		// start: a PUT keeps them.
		spec.Replicas, spec.Scale.From, spec.Scale.Since = spec.Scale.Min, 0, time.Time{}
		if old, err := s.store.AppByName(ctx, spec.Name); err == nil {
			var prev AppSpec
			if json.Unmarshal([]byte(old.Spec), &prev) == nil && prev.Scale != nil {
				spec.Replicas = min(max(prev.Replicas, spec.Scale.Min), spec.Scale.Max)
				spec.Scale.From, spec.Scale.Since = prev.Scale.From, prev.Scale.Since
			}
		}
	}
	created, err := s.applyApp(ctx, &spec, by)
	if err != nil {
		return nil, false, err
	}
	v, err := s.view(ctx, spec.Name)
	return v, created, err
}

func ownerOf(c *store.Cell) string {
	if c.App == "" {
		return "a cell placed by hand"
	}
	return "app " + c.App
}

// updateSpec changes an app cell's spec where it runs, keeping the fields
// a migration owns.
func (s *Service) updateSpec(ctx context.Context, c *store.Cell, w protocol.CellSpec) error {
	old, err := readSpec(c.Spec)
	if err != nil {
		return err
	}
	w.Hold, w.Restore = old.Hold, old.Restore
	if writeSpec(w) == c.Spec {
		return nil
	}
	err = s.store.Tx(ctx, func(tx *store.Tx) error {
		cur, err := tx.Cell(c.ID)
		if err != nil {
			return err
		}
		cur.Spec = writeSpec(w)
		return tx.SaveCell(cur, cur.Node)
	})
	if err != nil {
		return err
	}
	return s.cells.Republish(ctx, c.Node)
}

// applyApp stores spec and reconciles its cells: new ones placed by the
// Planner, removed ones deleted, changed ones updated where they run.
// The caller holds s.mu.
func (s *Service) applyApp(ctx context.Context, spec *AppSpec, by string) (bool, error) {
	want, err := spec.cellSpecs()
	if err != nil {
		return false, err
	}
	// A cell id an app wants must not be a hand-placed cell or another app's.
	for _, w := range want {
		if c, err := s.store.CellByID(ctx, w.ID); err == nil && c.App != spec.Name {
			return false, fmt.Errorf("%w: cell id %s is taken by %s", ErrConflict, w.ID, ownerOf(c))
		}
	}
	raw, _ := json.Marshal(spec)
	created, err := s.store.PutApp(ctx, &store.App{Name: spec.Name, Spec: string(raw), CreatedBy: by})
	if err != nil {
		return false, err
	}
	have, err := s.store.ListAppCells(ctx, spec.Name)
	if err != nil {
		return false, err
	}
	wantIDs := map[string]protocol.CellSpec{}
	for _, w := range want {
		wantIDs[w.ID] = w
	}
	for _, c := range have {
		w, ok := wantIDs[c.ID]
		if !ok {
			if err := s.cells.Delete(ctx, c.ID, firstNonEmpty(by, "planner")); err != nil && !errors.Is(err, store.ErrNotFound) {
				return false, err
			}
			continue
		}
		if err := s.updateSpec(ctx, &c, w); err != nil {
			return false, err
		}
	}
	cs, _, nodes, err := s.snapshot(ctx)
	if err != nil {
		return false, err
	}
	if err := s.placeMissing(ctx, spec, cs, nodes, s.targetsCopy(), by); err != nil {
		return false, err
	}
	return created, nil
}

// placeMissing places the app's cells that have no node yet, one Planner
// decision each (recorded), binding them as it goes.
func (s *Service) placeMissing(ctx context.Context, a *AppSpec, cs []store.Cell, nodes []planner.Node, targets map[string]planner.Point, by string) error {
	want, err := a.cellSpecs()
	if err != nil {
		return err
	}
	exists := map[string]bool{}
	for _, c := range cs {
		exists[c.ID] = true
	}
	var unplaced []string
	for _, w := range want {
		if exists[w.ID] {
			continue
		}
		row := store.Cell{ID: w.ID, App: a.Name, Spec: writeSpec(w)}
		d := s.planner.Place(nodes, s.plannerCell(&row, map[string]*AppSpec{a.Name: a}), targets, s.now())
		if d.Kind == planner.KindUnplaceable || d.To == "" {
			if by != "" { // an operator is waiting: say why
				if _, err := s.record(ctx, &d); err != nil {
					return err
				}
			}
			unplaced = append(unplaced, w.ID+": "+d.Why)
			continue
		}
		if _, err := s.record(ctx, &d); err != nil {
			return err
		}
		if _, err := s.cells.Create(ctx, w, d.To, firstNonEmpty(by, "planner")); err != nil && !errors.Is(err, cells.ErrUnpublished) {
			return err
		}
		// The next cell sees this one's memory taken.
		for i := range nodes {
			if nodes[i].Name == d.To {
				nodes[i].MemFree -= min(nodes[i].MemFree, cellMem(&store.Cell{Spec: row.Spec}))
			}
		}
	}
	if len(unplaced) > 0 && by != "" {
		s.log.Warn("app cells not placed yet; retried every round", "app", a.Name, "cells", unplaced)
	}
	return nil
}

func firstNonEmpty(a, b string) string {
	if a != "" {
		return a
	}
	return b
}

// view is an app with where its cells run.
func (s *Service) view(ctx context.Context, name string) (*AppView, error) {
	r, err := s.store.AppByName(ctx, name)
	if err != nil {
		return nil, err
	}
	var v AppView
	if err := json.Unmarshal([]byte(r.Spec), &v.AppSpec); err != nil {
		return nil, fmt.Errorf("app %s: stored spec unreadable: %w", name, err)
	}
	v.CreatedBy, v.CreatedAt, v.UpdatedAt = r.CreatedBy, r.CreatedAt.UTC(), r.UpdatedAt.UTC()
	cs, err := s.store.ListAppCells(ctx, name)
	if err != nil {
		return nil, err
	}
	v.Placement = []AppPlacement{}
	for i := range cs {
		p := AppPlacement{Cell: cs[i].ID, Node: cs[i].Node, HeldOn: cs[i].HeldOn}
		if st, ok := cellStatus(&cs[i], time.Time{}); ok {
			p.State = st.State
		}
		v.Placement = append(v.Placement, p)
	}
	return &v, nil
}

// GetApp returns an app with its placement.
func (s *Service) GetApp(ctx context.Context, name string) (*AppView, error) {
	return s.view(ctx, name)
}

// ListApps returns every app with its placement.
func (s *Service) ListApps(ctx context.Context) ([]AppView, error) {
	rows, err := s.store.ListApps(ctx)
	if err != nil {
		return nil, err
	}
	out := make([]AppView, 0, len(rows))
	for _, r := range rows {
		v, err := s.view(ctx, r.Name)
		if err != nil {
			return nil, err
		}
		out = append(out, *v)
	}
	return out, nil
}

// DeleteApp removes an app and its cells.
func (s *Service) DeleteApp(ctx context.Context, name, by string) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	cs, err := s.store.ListAppCells(ctx, name)
	if err != nil {
		return err
	}
	if err := s.store.DeleteApp(ctx, name); err != nil {
		return err
	}
	var errs []error
	for _, c := range cs {
		if err := s.cells.Delete(ctx, c.ID, by); err != nil && !errors.Is(err, store.ErrNotFound) {
			errs = append(errs, err)
		}
	}
	return errors.Join(errs...)
}
