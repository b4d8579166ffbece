package agent

import (
	"context"
	"errors"
	"fmt"
	"github.com/cloudskin/cloudskin/shared/protocol"
	"log/slog"
	"strings"
	"time"

	"github.com/cloudskin/cloudskin/edge-agent/internal/cells"
	"github.com/cloudskin/cloudskin/edge-agent/internal/streams"
)

// Cells read durable inputs through cursors: one per (cell, input), named
// cursorName(cell, input). A reader hands the cell a batch starting at the
// cursor and commits the cursor past the batch only once the cell's handler
// returned (an error result is an event of the cell, the batch counts as
// delivered); if the cell traps or the agent dies first, the same batch comes
// again. So delivery is at least once, and a cell sees every record in offset
// order; a cell that must not count a record twice keeps the highest offset it
// has applied in its state (records carry their offsets) and skips below it —
// with the cursor stored in the same snapshot, that makes it effectively once.

const (
	streamBatchBytes = 512 << 10 // payload bytes per batch (under the default MaxInputBytes)
	streamIdleWait   = time.Second
)

// cursorName is the cursor of a cell's stream input; a partitioned input
// (a replica of a burst app) has one per partitioning, so a new
// partitioning starts from its From.
func cursorName(cell string, in protocol.Input) string {
	if in.Partitions > 1 {
		return fmt.Sprintf("cell.%s.%s.p%dof%d", cell, in.Name, in.Partition, in.Partitions)
	}
	return "cell." + cell + "." + in.Name
}

func (m *cellManager) startReaders(rc *runningCell, cell *cells.Cell) {
	if m.streams == nil {
		return
	}
	stop := make(chan struct{})
	m.mu.Lock()
	rc.readers = stop
	m.mu.Unlock()
	for _, in := range rc.spec.Inputs {
		if in.Stream == "" {
			continue
		}
		rc.readWG.Add(1)
		go func() {
			defer rc.readWG.Done()
			if in.Node != "" && in.Node != m.a.cfg.Name {
				m.readRemote(rc, cell, in, stop)
				return
			}
			m.readStream(rc, cell, in, stop)
		}()
	}
}

func (m *cellManager) stopReaders(rc *runningCell) {
	m.mu.Lock()
	stop := rc.readers
	rc.readers = nil
	m.mu.Unlock()
	if stop != nil {
		close(stop)
	}
	rc.readWG.Wait()
}

// readStream feeds one durable input to the cell until stop closes or the
// cell dies.
func (m *cellManager) readStream(rc *runningCell, cell *cells.Cell, in protocol.Input, stop chan struct{}) {
	input, stream := in.Name, in.Stream
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	go func() {
		select {
		case <-stop:
			cancel()
		case <-ctx.Done():
		}
	}()
	cursor := cursorName(rc.spec.ID, in)
	log := m.log.With("cell", rc.spec.ID, "input", input, "stream", stream)
	maxBytes := streamBatchBytes
	if l := rc.spec.Limits.MaxInputBytes; l > 0 {
		maxBytes = max(l/2, 1)
	}
	for ctx.Err() == nil {
		s, ok := m.streams.get(stream)
		if !ok {
			// Declared later, or by another desired state: wait for it.
			if !sleepCtx(ctx, streamIdleWait) {
				return
			}
			continue
		}
		notify := s.Notify()
		next := s.Cursor(cursor)
		if next < in.From {
			if err := s.SetCursor(cursor, in.From); err != nil {
				log.Warn("cursor not moved to the partitioning's start", "from", in.From, "err", err)
			}
			next = in.From
		}
		recs, err := m.streams.readAny(ctx, s, next, cellBatch, maxBytes)
		if err != nil {
			if errors.Is(err, streams.ErrClosed) || ctx.Err() != nil {
				if !sleepCtx(ctx, streamIdleWait) {
					return
				}
				continue
			}
			log.Warn("cell input not readable; retrying", "offset", next, "err", err)
			if !sleepCtx(ctx, 5*time.Second) {
				return
			}
			continue
		}
		if len(recs) == 0 {
			select {
			case <-ctx.Done():
				return
			case <-notify:
			case <-time.After(streamIdleWait):
			}
			continue
		}
		batch := make([]cells.Record, 0, len(recs))
		for _, r := range recs {
			if in.InPartition(r.Offset) {
				batch = append(batch, cells.Record{Offset: r.Offset, TimeNS: r.Time.UnixNano(), Topic: r.Topic, Payload: r.Payload})
			}
		}
		commit := func(next uint64) error { return s.CommitCursor(cursor, next) }
		switch m.deliverStream(ctx, rc, cell, commit, input, batch, recs[len(recs)-1].Offset+1, &maxBytes, log) {
		case deliverStop:
			return
		case deliverHeld:
			if !sleepCtx(ctx, streamIdleWait) {
				return
			}
		}
	}
}

type deliverResult int

const (
	deliverNext deliverResult = iota
	deliverHeld               // the cell is held for a migration: nothing delivered
	deliverStop               // the cell died or the reader stops
)

// deliverStream hands one batch to the cell and commits the cursor past it,
// under the cell's gate so that a checkpoint sees both or neither.
// next is the offset after the records read (the batch holds those of the
// input's partition; it may be empty).
func (m *cellManager) deliverStream(ctx context.Context, rc *runningCell, cell *cells.Cell, commit func(next uint64) error, input string,
	batch []cells.Record, next uint64, maxBytes *int, log *slog.Logger) deliverResult {
	rc.gate.Lock()
	defer rc.gate.Unlock()
	m.mu.Lock()
	held, gone := rc.holding != "", rc.cell != cell
	m.mu.Unlock()
	switch {
	case gone:
		return deliverStop
	case held:
		return deliverHeld
	}
	if len(batch) == 0 {
		if err := commit(next); err != nil {
			log.Warn("cursor not committed", "err", err)
		}
		return deliverNext
	}
	err := cell.Handle(ctx, input, batch)
	switch {
	case err == nil:
	case errors.Is(err, cells.ErrLimit) && strings.Contains(err.Error(), "MaxInputBytes") && len(batch) > 1:
		// The batch encodes larger than the cell takes: smaller batches.
		*maxBytes = max(*maxBytes/2, 1)
		return deliverNext
	case cell.Stats().Running:
		log.Debug("cell handler error", "err", err)
		if errors.Is(err, cells.ErrLimit) {
			// A single record the cell can never take: skip it, said aloud.
			m.mu.Lock()
			rc.addEvent("record_skipped", err.Error())
			m.mu.Unlock()
		}
	case ctx.Err() != nil:
		return deliverStop
	default:
		m.died(rc, cell, err) // the restart re-reads this batch: the cursor did not move
		return deliverStop
	}
	if err := commit(next); err != nil {
		log.Warn("cursor not committed; the batch may be delivered again", "err", err)
	}
	return deliverNext
}
