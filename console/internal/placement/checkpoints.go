package placement

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"time"

	"github.com/cloudskin/cloudskin/console/internal/objects"
	"github.com/cloudskin/cloudskin/console/internal/store"
	"github.com/cloudskin/cloudskin/shared/protocol"
)

// Checkpoint reasons a node reports.
const (
	CheckpointPeriodic = "periodic"
	CheckpointHold     = "hold"
)

// Errors of checkpoint uploads and downloads.
var (
	ErrForbidden = errors.New("forbidden")
	ErrTooLarge  = errors.New("checkpoint too large")
)

// Checkpoints keeps the cell checkpoints nodes upload, in the object store
// under checkpoints/{cell}/{id}: the newest Keep per cell, plus any an open
// move still needs.
type Checkpoints struct {
	store    *store.Store
	objects  objects.Store
	log      *slog.Logger
	MaxBytes int64 // largest checkpoint taken
	Keep     int   // newest checkpoints kept per cell
}

// NewCheckpoints returns the checkpoint keeper.
func NewCheckpoints(st *store.Store, objs objects.Store, log *slog.Logger) *Checkpoints {
	return &Checkpoints{store: st, objects: objs, log: log.With("component", "checkpoints"), MaxBytes: 1 << 30, Keep: 3}
}

func checkpointKey(cell, id string) string { return "checkpoints/" + cell + "/" + id }

// mayWrite: the node running the cell, or holding it for a migration.
func mayWrite(c *store.Cell, node string) bool { return c.Node == node || c.HeldOn == node }

// Put stores a checkpoint node uploaded for cell. Only the node the cell is
// bound to, or the one holding it during a migration, may upload; an id is
// written once (a retried upload of the same id is accepted and ignored).
func (k *Checkpoints) Put(ctx context.Context, node, cellID, id string, seq uint64, reason string, size int64, body io.Reader) (*store.Checkpoint, error) {
	if !protocol.ValidCheckpointID(id) {
		return nil, fmt.Errorf("%w: checkpoint id %q", ErrInvalid, id)
	}
	if reason != CheckpointPeriodic && reason != CheckpointHold {
		return nil, fmt.Errorf("%w: checkpoint reason %q: use %s or %s", ErrInvalid, reason, CheckpointPeriodic, CheckpointHold)
	}
	if size > k.MaxBytes {
		return nil, fmt.Errorf("%w: %d bytes, the console takes at most %d", ErrTooLarge, size, k.MaxBytes)
	}
	c, err := k.store.CellByID(ctx, cellID)
	if err != nil {
		return nil, err
	}
	if !mayWrite(c, node) {
		return nil, fmt.Errorf("%w: cell %s does not run on node %s", ErrForbidden, cellID, node)
	}
	if old, err := k.store.CheckpointByID(ctx, id); err == nil {
		if old.Cell != cellID {
			return nil, fmt.Errorf("%w: checkpoint id %s belongs to another cell", ErrConflict, id)
		}
		return old, nil
	} else if !errors.Is(err, store.ErrNotFound) {
		return nil, err
	}
	key := checkpointKey(cellID, id)
	// One byte more than allowed tells an oversized body from a full one.
	lr := &io.LimitedReader{R: body, N: k.MaxBytes + 1}
	n, sum, err := k.objects.Put(ctx, key, lr)
	if err != nil {
		return nil, err
	}
	if n > k.MaxBytes || (size >= 0 && n != size) {
		_ = k.objects.Delete(context.WithoutCancel(ctx), key)
		if n > k.MaxBytes {
			return nil, fmt.Errorf("%w: more than %d bytes", ErrTooLarge, k.MaxBytes)
		}
		return nil, fmt.Errorf("%w: %d bytes arrived, %d were announced", ErrInvalid, n, size)
	}
	row := &store.Checkpoint{ID: id, Cell: cellID, Seq: seq, Node: node, Reason: reason, Bytes: n, SHA256: sum, Key: key, CreatedAt: time.Now().UTC()}
	if err := k.store.PutCheckpoint(ctx, row); err != nil {
		return nil, err
	}
	k.log.Info("checkpoint stored", "cell", cellID, "checkpoint", id, "seq", seq, "node", node, "reason", reason, "bytes", n)
	k.prune(ctx, cellID)
	return row, nil
}

func (k *Checkpoints) prune(ctx context.Context, cellID string) {
	old, err := k.store.PruneCheckpoints(ctx, cellID, k.Keep)
	if err != nil {
		k.log.Warn("old checkpoints not pruned", "cell", cellID, "err", err)
		return
	}
	for _, c := range old {
		if err := k.objects.Delete(ctx, c.Key); err != nil {
			k.log.Warn("old checkpoint object not deleted", "key", c.Key, "err", err)
		}
	}
}

// Open returns a checkpoint's bytes for node (which must be where the cell
// is bound: it restores it) or for an operator (node "").
func (k *Checkpoints) Open(ctx context.Context, node, cellID, id string) (*store.Checkpoint, io.ReadCloser, error) {
	c, err := k.store.CellByID(ctx, cellID)
	if err != nil {
		return nil, nil, err
	}
	if node != "" && c.Node != node {
		return nil, nil, fmt.Errorf("%w: cell %s is not bound to node %s", ErrForbidden, cellID, node)
	}
	row, err := k.store.CheckpointByID(ctx, id)
	if err != nil {
		return nil, nil, err
	}
	if row.Cell != cellID {
		return nil, nil, fmt.Errorf("checkpoint %s of cell %s: %w", id, cellID, store.ErrNotFound)
	}
	rc, err := k.objects.Get(ctx, row.Key)
	if err != nil {
		return nil, nil, err
	}
	return row, rc, nil
}

// List returns a cell's checkpoints, newest first.
func (k *Checkpoints) List(ctx context.Context, cellID string) ([]store.Checkpoint, error) {
	if _, err := k.store.CellByID(ctx, cellID); err != nil {
		return nil, err
	}
	return k.store.Checkpoints(ctx, cellID, 100)
}
