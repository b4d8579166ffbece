// Package placement turns the Planner's decisions into running cells: it
// keeps apps' cells bound to nodes, and drives every migration through the
// nodes' desired states — hold and checkpoint on the source, restore on the
// target, drop on the source — so that a crash of source, target or console
// half-way resumes or rolls back, never runs two live copies and never
// loses a checkpointed input.
package placement

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"slices"
	"sync"
	"time"

	"github.com/cloudskin/cloudskin/console/internal/store"
	"github.com/cloudskin/cloudskin/shared/protocol"
)

// Move phases.
const (
	PhasePrepare = "prepare" // the target compiles the module ahead; the cell runs on
	PhaseHold    = "hold"    // the source checkpoints the cell and holds it
	PhaseRestore = "restore" // the target restores it; the source still holds its copy
	PhaseDone    = "done"    // the target runs it; the source dropped it
	PhaseAborted = "aborted" // rolled back: the source runs it again
	PhaseFailed  = "failed"  // could neither finish nor roll back; the cell stays on the target
)

// Move reasons (the Planner's move rules add theirs).
const (
	ReasonManual      = "manual"
	ReasonNodeOffline = "node-offline"
)

// Errors the API maps to status codes.
var (
	ErrInvalid  = errors.New("invalid request")
	ErrConflict = errors.New("conflict")
)

// Republisher publishes a node's desired state (cells.Service).
type Republisher interface {
	Republish(ctx context.Context, node string) error
}

// MoveConfig bounds a migration's phases.
type MoveConfig struct {
	HoldTimeout    time.Duration // the source must checkpoint within this, else the move aborts
	RestoreTimeout time.Duration // the target must run the cell within this, else it rolls back
}

// Moves drives migrations.
type Moves struct {
	cfg   MoveConfig
	store *store.Store
	pub   Republisher
	log   *slog.Logger
	now   func() time.Time
	mu    sync.Mutex // one step at a time
}

// NewMoves returns a migration driver.
func NewMoves(cfg MoveConfig, st *store.Store, pub Republisher, log *slog.Logger) *Moves {
	if cfg.HoldTimeout <= 0 {
		cfg.HoldTimeout = 2 * time.Minute
	}
	if cfg.RestoreTimeout <= 0 {
		cfg.RestoreTimeout = 3 * time.Minute
	}
	return &Moves{cfg: cfg, store: st, pub: pub, log: log.With("component", "moves"), now: time.Now}
}

func newMoveID(cell string, now time.Time) string {
	return fmt.Sprintf("%s.%d", cell, now.UnixNano())
}

func readSpec(raw string) (protocol.CellSpec, error) {
	var s protocol.CellSpec
	err := json.Unmarshal([]byte(raw), &s)
	return s, err
}

func writeSpec(s protocol.CellSpec) string {
	b, _ := json.Marshal(&s)
	return string(b)
}

// Start opens a move of cell to node to. A source that is online holds and
// checkpoints the cell first (a live migration); a source that is offline
// cannot, so the target restores the newest checkpoint the console has (a
// failover), or starts the cell fresh when there is none.
func (m *Moves) Start(ctx context.Context, cellID, to, reason string, decisionID uint64) (*store.Move, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	if err := protocol.ValidateNodeName(to); err != nil {
		return nil, fmt.Errorf("%w: %v", ErrInvalid, err)
	}
	target, err := m.store.NodeByName(ctx, to)
	if err != nil {
		return nil, err
	}
	if target.Status != "online" {
		return nil, fmt.Errorf("%w: node %s is %s", ErrConflict, to, target.Status)
	}
	c, err := m.store.CellByID(ctx, cellID)
	if err != nil {
		return nil, err
	}
	if c.Node == to {
		return nil, fmt.Errorf("%w: cell %s already runs on %s", ErrInvalid, cellID, to)
	}
	source, err := m.store.NodeByName(ctx, c.Node)
	if err != nil {
		return nil, err
	}
	now := m.now().UTC()
	mv := &store.Move{ID: newMoveID(cellID, now), Cell: cellID, From: c.Node, To: to, Reason: reason, Open: true,
		DecisionID: decisionID, StartedAt: now, PhaseAt: now}
	live := source.Status == "online"
	var latest *store.Checkpoint
	if !live {
		if latest, err = m.store.LatestCheckpoint(ctx, cellID); err != nil && !errors.Is(err, store.ErrNotFound) {
			return nil, err
		}
	}
	err = m.store.Tx(ctx, func(tx *store.Tx) error {
		c, err := tx.Cell(cellID)
		if err != nil {
			return err
		}
		spec, err := readSpec(c.Spec)
		if err != nil {
			return err
		}
		if live {
			// The target's desired state now prefetches the module.
			mv.Phase = PhasePrepare
			if err := tx.CreateMove(mv); err != nil {
				return err
			}
			return tx.Bump(to)
		}
		mv.Phase = PhaseRestore
		spec.Hold, spec.Restore = "", ""
		followInputs(&spec, c.Node, to)
		if latest != nil {
			spec.Restore, mv.Checkpoint = latest.ID, latest.ID
		}
		if err := tx.CreateMove(mv); err != nil {
			return err
		}
		from := c.Node
		c.Node, c.HeldOn, c.HeldSpec, c.Spec, c.BoundUS = to, "", "", writeSpec(spec), now.UnixMicro()
		return tx.SaveCell(c, from, to)
	})
	if err != nil {
		if errors.Is(err, store.ErrMoveOpen) {
			return nil, fmt.Errorf("%w: %v", ErrConflict, err)
		}
		return nil, err
	}
	m.log.Info("move started", "move", mv.ID, "cell", cellID, "from", mv.From, "to", to, "reason", reason, "phase", mv.Phase, "checkpoint", mv.Checkpoint)
	m.publish(ctx, mv.From, mv.To)
	return mv, nil
}

func (m *Moves) publish(ctx context.Context, nodes ...string) {
	for _, n := range nodes {
		if err := m.pub.Republish(ctx, n); err != nil {
			// Level-triggered: the next step or a restart publishes again.
			m.log.Warn("desired state not published; retried on the next step", "node", n, "err", err)
		}
	}
}

// cellStatus is what the cell's current node last reported, if reported
// after since.
func cellStatus(c *store.Cell, since time.Time) (*protocol.CellStatus, bool) {
	if c.StatusJSON == "" || c.StatusUS < since.UnixMicro() {
		return nil, false
	}
	var st protocol.CellStatus
	if json.Unmarshal([]byte(c.StatusJSON), &st) != nil {
		return nil, false
	}
	return &st, true
}

// Step advances every open move by what the nodes reported. It is
// idempotent: a console that restarts calls it again and carries on.
func (m *Moves) Step(ctx context.Context) error {
	m.mu.Lock()
	defer m.mu.Unlock()
	open, err := m.store.OpenMoves(ctx)
	if err != nil {
		return err
	}
	var errs []error
	for i := range open {
		if err := m.step(ctx, &open[i]); err != nil {
			errs = append(errs, fmt.Errorf("move %s: %w", open[i].ID, err))
		}
	}
	return errors.Join(errs...)
}

func (m *Moves) step(ctx context.Context, mv *store.Move) error {
	c, err := m.store.CellByID(ctx, mv.Cell)
	if errors.Is(err, store.ErrNotFound) {
		return m.end(ctx, mv, PhaseAborted, "the cell was deleted", nil)
	}
	if err != nil {
		return err
	}
	now := m.now().UTC()
	switch mv.Phase {
	case PhasePrepare:
		return m.stepPrepare(ctx, mv, c, now)
	case PhaseHold:
		return m.stepHold(ctx, mv, c, now)
	case PhaseRestore:
		return m.stepRestore(ctx, mv, c, now)
	}
	return m.end(ctx, mv, PhaseFailed, "unknown phase "+mv.Phase, nil)
}

// stepPrepare waits for the target to have the cell's module compiled, so
// that the cell stops on the source only when the target can restore it at
// once. Compiling is an optimisation: after RestoreTimeout the move goes on.
func (m *Moves) stepPrepare(ctx context.Context, mv *store.Move, c *store.Cell, now time.Time) error {
	target, err := m.store.NodeByName(ctx, mv.To)
	if err != nil {
		return err
	}
	if target.Status != "online" {
		return m.end(ctx, mv, PhaseAborted, fmt.Sprintf("the target %s went %s before the move", mv.To, target.Status), func(tx *store.Tx, c *store.Cell) error {
			return tx.Bump(mv.To) // its desired state stops prefetching
		})
	}
	var ready []string
	_ = json.Unmarshal([]byte(target.Modules), &ready)
	if !slices.Contains(ready, c.Module) && now.Sub(mv.PhaseAt) < m.cfg.RestoreTimeout {
		return nil
	}
	err = m.store.Tx(ctx, func(tx *store.Tx) error {
		c, err := tx.Cell(mv.Cell)
		if err != nil {
			return err
		}
		spec, err := readSpec(c.Spec)
		if err != nil {
			return err
		}
		spec.Hold = mv.ID
		c.Spec = writeSpec(spec)
		if err := tx.SaveCell(c, c.Node); err != nil {
			return err
		}
		mv.Phase, mv.PhaseAt = PhaseHold, now
		return tx.SaveMove(mv)
	})
	if err != nil {
		return err
	}
	m.log.Info("move: target ready; source holds the cell", "move", mv.ID, "cell", mv.Cell, "from", mv.From, "to", mv.To)
	m.publish(ctx, mv.From)
	return nil
}

// stepHold waits for the source to report the cell held under the move's
// checkpoint (and for that checkpoint to be stored), then hands the cell to
// the target while the source keeps its held copy.
func (m *Moves) stepHold(ctx context.Context, mv *store.Move, c *store.Cell, now time.Time) error {
	st, fresh := cellStatus(c, mv.PhaseAt)
	if fresh && st.State == protocol.CellHeld && st.Checkpoint != nil && st.Checkpoint.ID == mv.ID {
		if _, err := m.store.CheckpointByID(ctx, mv.ID); err == nil {
			return m.toRestore(ctx, mv, now)
		} else if !errors.Is(err, store.ErrNotFound) {
			return err
		}
	}
	if now.Sub(mv.PhaseAt) < m.cfg.HoldTimeout {
		return nil
	}
	why := fmt.Sprintf("the source %s did not checkpoint the cell within %s", mv.From, m.cfg.HoldTimeout)
	if fresh && st.Message != "" {
		why += ": " + st.Message
	}
	// Roll back: the source resumes the cell it still holds.
	return m.end(ctx, mv, PhaseAborted, why, func(tx *store.Tx, c *store.Cell) error {
		spec, err := readSpec(c.Spec)
		if err != nil {
			return err
		}
		spec.Hold = ""
		c.Spec = writeSpec(spec)
		return tx.SaveCell(c, c.Node)
	})
}

func (m *Moves) toRestore(ctx context.Context, mv *store.Move, now time.Time) error {
	err := m.store.Tx(ctx, func(tx *store.Tx) error {
		c, err := tx.Cell(mv.Cell)
		if err != nil {
			return err
		}
		spec, err := readSpec(c.Spec)
		if err != nil {
			return err
		}
		held := c.Spec // the source keeps this spec, Hold included, until the target runs the cell
		spec.Hold, spec.Restore = "", mv.ID
		followInputs(&spec, mv.From, mv.To)
		c.Node, c.HeldOn, c.HeldSpec, c.Spec, c.BoundUS = mv.To, mv.From, held, writeSpec(spec), now.UnixMicro()
		if err := tx.SaveCell(c, mv.From, mv.To); err != nil {
			return err
		}
		mv.Phase, mv.Checkpoint, mv.PhaseAt = PhaseRestore, mv.ID, now
		return tx.SaveMove(mv)
	})
	if err != nil {
		return err
	}
	m.log.Info("move: source checkpointed and holds the cell; target restores", "move", mv.ID, "cell", mv.Cell, "from", mv.From, "to", mv.To)
	m.publish(ctx, mv.To, mv.From)
	return nil
}

// stepRestore waits for the target to run the cell restored from the move's
// checkpoint, then lets the source drop its held copy. A target that fails
// or does not answer in time gives the cell back to the source.
func (m *Moves) stepRestore(ctx context.Context, mv *store.Move, c *store.Cell, now time.Time) error {
	st, fresh := cellStatus(c, mv.PhaseAt)
	if c.Node == mv.To && fresh && st.State == protocol.CellRunning && st.RestoredFrom == mv.Checkpoint {
		return m.end(ctx, mv, PhaseDone, "", func(tx *store.Tx, c *store.Cell) error {
			holder := c.HeldOn
			c.HeldOn, c.HeldSpec = "", ""
			return tx.SaveCell(c, holder)
		})
	}
	failed := fresh && st.State == protocol.CellFailed
	if !failed && now.Sub(mv.PhaseAt) < m.cfg.RestoreTimeout {
		return nil
	}
	why := fmt.Sprintf("the target %s did not run the restored cell within %s", mv.To, m.cfg.RestoreTimeout)
	if fresh && st.Message != "" {
		why = fmt.Sprintf("the target %s: %s", mv.To, st.Message)
	}
	if c.HeldOn == "" {
		// A failover: nobody holds a copy to go back to. The cell stays
		// on the target, which keeps retrying with backoff.
		return m.end(ctx, mv, PhaseFailed, why, nil)
	}
	return m.end(ctx, mv, PhaseAborted, why, func(tx *store.Tx, c *store.Cell) error {
		spec, err := readSpec(c.HeldSpec)
		if err != nil {
			return err
		}
		spec.Hold = ""
		target, holder := c.Node, c.HeldOn
		c.Node, c.HeldOn, c.HeldSpec, c.Spec = holder, "", "", writeSpec(spec)
		return tx.SaveCell(c, target, holder)
	})
}

// end closes a move, applying change to its cell in the same transaction.
func (m *Moves) end(ctx context.Context, mv *store.Move, phase, why string, change func(*store.Tx, *store.Cell) error) error {
	now := m.now().UTC()
	var touched []string
	err := m.store.Tx(ctx, func(tx *store.Tx) error {
		if change != nil {
			c, err := tx.Cell(mv.Cell)
			if err != nil {
				return err
			}
			before := [2]string{c.Node, c.HeldOn}
			if err := change(tx, c); err != nil {
				return err
			}
			touched = []string{before[0], before[1], c.Node}
		}
		mv.Phase, mv.Open, mv.Error, mv.PhaseAt, mv.EndedAt = phase, false, why, now, &now
		return tx.SaveMove(mv)
	})
	if err != nil {
		return err
	}
	level := slog.LevelInfo
	if phase != PhaseDone {
		level = slog.LevelWarn
	}
	m.log.Log(ctx, level, "move ended", "move", mv.ID, "cell", mv.Cell, "from", mv.From, "to", mv.To, "phase", phase, "why", why)
	for _, n := range touched {
		if n != "" {
			m.publish(ctx, n)
		}
	}
	return nil
}

// followInputs makes a cell moving from one node to another keep reading
// the streams it read on the source: an input on the cell's own node's
// stream now names the source; one naming the target becomes local again.
func followInputs(spec *protocol.CellSpec, from, to string) {
	for i := range spec.Inputs {
		in := &spec.Inputs[i]
		if in.Stream == "" {
			continue
		}
		if in.Node == "" {
			in.Node = from
		}
		if in.Node == to {
			in.Node = ""
		}
	}
}
