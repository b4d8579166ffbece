package agent

import (
	"context"
	"fmt"
	"maps"
	"os"
	"slices"
	"time"

	"github.com/cloudskin/cloudskin/edge-agent/internal/cells"
	"github.com/cloudskin/cloudskin/shared/protocol"
)

// Checkpoints of cells, as the cell manager drives them:
//
//   - periodic: every spec.CheckpointSeconds a running cell is checkpointed
//     at a quiescent point, written locally and uploaded. An agent restart
//     resumes the cell from its newest local checkpoint; a node that dies
//     has its cells restarted elsewhere from the newest uploaded one.
//   - hold: spec.Hold asks for a checkpoint under that id; from the
//     quiescent point on the cell takes no input (it is "held") and the
//     checkpoint is uploaded until the console has it. Releasing the hold
//     resumes the same instance; otherwise the console drops the cell here
//     once the target runs it.
//   - restore: a cell starts from spec.Restore (downloaded) or from a newer
//     local checkpoint of the same lineage (a higher sequence number).

const (
	holdRetryMin = time.Second
	holdRetryMax = 30 * time.Second
	uploadTry    = 10 * time.Minute
)

// takeCheckpoint finds a quiescent point (the cell's gate), captures the
// cell, its cursors, topic offsets and inbox, and, for a hold, stops
// delivery from that point on. The encoding and the disk write happen after
// the gate is released.
func (m *cellManager) takeCheckpoint(rc *runningCell, id, reason string) (*checkpointHeader, string, int64, error) {
	rc.gate.Lock()
	m.mu.Lock()
	cell := rc.cell
	if cell == nil {
		m.mu.Unlock()
		rc.gate.Unlock()
		return nil, "", 0, fmt.Errorf("cell %s is not running", rc.spec.ID)
	}
	h := &checkpointHeader{
		ID: id, Cell: rc.spec.ID, Module: rc.spec.Module, Seq: rc.seq + 1, Node: m.a.cfg.Name, Arch: hostArch(),
		Time: time.Now().UTC(), Reason: reason, TopicOffsets: maps.Clone(rc.offsets), Inbox: inboxOf(rc.inbox),
		TissueOut: cloneTissueOut(rc.tissueOut), TissueSeen: maps.Clone(rc.tissueSeen),
	}
	inputs := slices.Clone(rc.spec.Inputs)
	for _, in := range inputs {
		if in.Stream != "" && in.Node != "" && in.Node != m.a.cfg.Name {
			if h.Cursors == nil {
				h.Cursors, h.CursorNodes = map[string]uint64{}, map[string]string{}
			}
			h.Cursors[in.Name], h.CursorNodes[in.Name] = rc.remote[in.Name], in.Node
		}
	}
	if reason == "hold" {
		// From this point nothing more is taken: what arrives now stays with
		// its sender (tissues) or on this node (topics), never half in the
		// checkpoint and half acknowledged.
		rc.holding = id
	}
	m.mu.Unlock()
	snap, err := cell.Snapshot()
	if err == nil && m.streams != nil {
		for _, in := range inputs {
			if in.Stream == "" || (in.Node != "" && in.Node != m.a.cfg.Name) {
				continue
			}
			if s, ok := m.streams.get(in.Stream); ok {
				if h.Cursors == nil {
					h.Cursors = map[string]uint64{}
				}
				h.Cursors[in.Name] = s.Cursor(cursorName(h.Cell, in))
			}
		}
	}
	if reason == "hold" {
		m.mu.Lock()
		if err == nil {
			rc.state, rc.message = protocol.CellHeld, "held for a migration (checkpoint "+id+")"
			rc.addEvent("held", "checkpoint "+id)
		} else {
			rc.holding = "" // the cell runs on
			rc.wakeLocked()
		}
		m.mu.Unlock()
	}
	rc.gate.Unlock()
	if err != nil {
		return nil, "", 0, fmt.Errorf("snapshot: %w", err)
	}
	path, size, err := m.writeCheckpoint(h, snap)
	if err != nil {
		return nil, "", 0, err
	}
	m.mu.Lock()
	rc.seq = max(rc.seq, h.Seq)
	m.mu.Unlock()
	return h, path, size, nil
}

// hold checkpoints a cell for a migration and uploads the checkpoint until
// the console has it or the hold is released.
func (m *cellManager) hold(ctx context.Context, rc *runningCell) {
	m.mu.Lock()
	id := rc.spec.Hold
	rc.ckptBusy = true
	m.mu.Unlock()
	go func() {
		defer func() {
			m.mu.Lock()
			rc.ckptBusy = false
			m.mu.Unlock()
			m.kick()
		}()
		// A restarted agent restored the held cell from this very
		// checkpoint: it only needs uploading.
		h, _ := readCheckpointHeader(m.checkpointPath(rc.spec.ID, id))
		path := m.checkpointPath(rc.spec.ID, id)
		var size int64
		if h == nil || h.Reason != "hold" {
			var err error
			if h, path, size, err = m.takeCheckpoint(rc, id, "hold"); err != nil {
				m.mu.Lock()
				rc.holdFailed = id
				rc.message = "cannot hold for migration: " + err.Error()
				rc.addEvent("hold_failed", err.Error())
				m.mu.Unlock()
				m.log.Error("cell not held", "cell", rc.spec.ID, "checkpoint", id, "err", err)
				return
			}
			m.a.m.checkpoints.WithLabelValues("hold").Inc()
			m.log.Info("cell held for migration", "cell", rc.spec.ID, "checkpoint", id, "seq", h.Seq, "bytes", size)
		} else if fi, err := os.Stat(path); err == nil {
			size = fi.Size()
		}
		backoff := holdRetryMin
		for {
			m.mu.Lock()
			still := rc.spec.Hold == id && rc.holding == id
			m.mu.Unlock()
			if !still || ctx.Err() != nil {
				return
			}
			uctx, cancel := context.WithTimeout(ctx, uploadTry)
			err := m.uploadCheckpoint(uctx, h, path)
			cancel()
			if err == nil {
				m.mu.Lock()
				rc.ckpt = (&checkpoint{checkpointHeader: *h}).info(size)
				rc.uploaded = id
				m.mu.Unlock()
				m.log.Info("hold checkpoint uploaded", "cell", rc.spec.ID, "checkpoint", id, "bytes", size)
				m.a.publishActualSoon()
				return
			}
			m.log.Warn("hold checkpoint not uploaded; retrying", "cell", rc.spec.ID, "checkpoint", id, "err", err, "in", backoff)
			select {
			case <-ctx.Done():
				return
			case <-time.After(backoff):
			}
			backoff = min(backoff*2, holdRetryMax)
		}
	}()
}

// releaseLocked resumes a held cell (the migration was rolled back).
func (m *cellManager) releaseLocked(rc *runningCell) {
	m.log.Info("cell released from hold", "cell", rc.spec.ID, "checkpoint", rc.holding)
	rc.addEvent("released", "hold "+rc.holding+" released")
	rc.holding = ""
	if rc.cell != nil {
		rc.state, rc.message = protocol.CellRunning, ""
		rc.wakeLocked()
	}
}

// checkpointsDueLocked returns the running cells whose periodic checkpoint
// is due, marked busy.
func (m *cellManager) checkpointsDueLocked(now time.Time) []*runningCell {
	var due []*runningCell
	for _, rc := range m.cells {
		every := time.Duration(rc.spec.CheckpointSeconds) * time.Second
		if every <= 0 || rc.cell == nil || rc.holding != "" || rc.ckptBusy {
			continue
		}
		if rc.ckptAt.IsZero() {
			rc.ckptAt = now // the first one a period after the start
			continue
		}
		if now.Sub(rc.ckptAt) >= every {
			rc.ckptBusy, rc.ckptAt = true, now
			due = append(due, rc)
		}
	}
	return due
}

func (m *cellManager) periodicCheckpoint(ctx context.Context, rc *runningCell) {
	defer func() {
		m.mu.Lock()
		rc.ckptBusy = false
		m.mu.Unlock()
	}()
	id := fmt.Sprintf("%s.%d", rc.spec.ID, time.Now().UnixNano())
	start := time.Now()
	h, path, size, err := m.takeCheckpoint(rc, id, "periodic")
	if err != nil {
		m.log.Warn("periodic checkpoint not taken", "cell", rc.spec.ID, "err", err)
		return
	}
	m.a.m.checkpoints.WithLabelValues("periodic").Inc()
	uctx, cancel := context.WithTimeout(ctx, uploadTry)
	defer cancel()
	if err := m.uploadCheckpoint(uctx, h, path); err != nil {
		// Kept locally (an agent restart resumes from it); the next
		// period uploads a newer one.
		m.log.Warn("periodic checkpoint not uploaded", "cell", rc.spec.ID, "checkpoint", id, "err", err)
	} else {
		m.mu.Lock()
		if rc.ckpt == nil || rc.ckpt.Seq < h.Seq {
			rc.ckpt = (&checkpoint{checkpointHeader: *h}).info(size)
		}
		m.mu.Unlock()
	}
	m.pruneLocalCheckpoints(rc.spec.ID, h.Seq, "")
	m.log.Debug("periodic checkpoint", "cell", rc.spec.ID, "checkpoint", id, "seq", h.Seq, "bytes", size, "took", time.Since(start))
}

// restorePoint returns the checkpoint a starting cell resumes from, or nil
// to start fresh: nothing to resume from, or a restart after a crash (its
// state died with it; replaying the records that crashed it would crash it
// again).
func (m *cellManager) restorePoint(ctx context.Context, rc *runningCell, memLimit int64) (*checkpoint, error) {
	m.mu.Lock()
	spec, crashed := rc.spec, rc.crashed
	m.mu.Unlock()
	if crashed {
		m.dropLocalCheckpoints(spec.ID)
		return nil, nil
	}
	if spec.Restore != "" {
		if _, err := m.downloadCheckpoint(ctx, spec.ID, spec.Restore); err != nil {
			if h, _ := m.newestLocalCheckpoint(spec.ID, spec.Module); h == nil {
				return nil, fmt.Errorf("restore: %w", err)
			}
			m.log.Warn("checkpoint not downloaded; resuming from the newest local one", "cell", spec.ID, "checkpoint", spec.Restore, "err", err)
		}
	}
	h, path := m.newestLocalCheckpoint(spec.ID, spec.Module)
	if h == nil {
		return nil, nil
	}
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	if memLimit <= 0 {
		memLimit = cells.MaxMemoryBytes
	}
	ck, err := decodeCheckpoint(f, memLimit)
	if err != nil {
		// A damaged local copy is not resumed from; a downloaded one is
		// fetched again on the next try.
		os.Remove(path)
		return nil, fmt.Errorf("restore: %w", err)
	}
	if ck.Cell != spec.ID || ck.Module != spec.Module {
		return nil, fmt.Errorf("restore: checkpoint %s is of cell %s module %.12s, not %s module %.12s", ck.ID, ck.Cell, ck.Module, spec.ID, spec.Module)
	}
	// A cursor is an offset of one node's stream: it applies to the input
	// reading that very stream, here (a local stream) or remotely.
	for _, in := range spec.Inputs {
		off, ok := ck.Cursors[in.Name]
		if in.Stream == "" || !ok {
			continue
		}
		of := ck.CursorNodes[in.Name]
		if of == "" {
			of = ck.Node
		}
		reads := in.Node
		if reads == "" {
			reads = m.a.cfg.Name
		}
		if of != reads {
			continue
		}
		if reads != m.a.cfg.Name {
			m.mu.Lock()
			if rc.remote == nil {
				rc.remote = map[string]uint64{}
			}
			rc.remote[in.Name] = off
			m.mu.Unlock()
			continue
		}
		if m.streams == nil {
			continue
		}
		if s, ok := m.streams.get(in.Stream); ok {
			if err := s.SetCursor(cursorName(spec.ID, in), off); err != nil {
				return nil, fmt.Errorf("restore: cursor of input %s: %w", in.Name, err)
			}
		}
	}
	return ck, nil
}

// applyCheckpointLocked gives a restored cell its inbox, offsets, lineage
// and hold.
func (m *cellManager) applyCheckpointLocked(rc *runningCell, ck *checkpoint) {
	rc.inbox = append(queueOf(ck.Inbox, rc.spec), rc.inbox...)
	for in, off := range ck.TopicOffsets {
		rc.offsets[in] = max(rc.offsets[in], off)
	}
	rc.seq = max(rc.seq, ck.Seq)
	rc.restored = ck.ID
	rc.tissueOut, rc.tissueSeen, rc.tissueAhead = ck.TissueOut, ck.TissueSeen, nil
	rc.ckpt = ck.info(0)
	m.a.m.restores.Inc()
	if fi, err := os.Stat(m.checkpointPath(ck.Cell, ck.ID)); err == nil {
		rc.ckpt.Bytes = fi.Size()
	}
	rc.addEvent("restored", fmt.Sprintf("from checkpoint %s (seq %d, node %s, %s)", ck.ID, ck.Seq, ck.Node, ck.Arch))
	if ck.Reason == "hold" && rc.spec.Hold == ck.ID {
		rc.holding, rc.state = ck.ID, protocol.CellHeld
	} else if len(rc.inbox) > 0 {
		rc.wakeLocked()
	}
}

func (m *cellManager) dropLocalCheckpoints(cell string) {
	if err := os.RemoveAll(m.checkpointDir(cell)); err != nil {
		m.log.Warn("local checkpoints not removed", "cell", cell, "err", err)
	}
}

func cloneTissueOut(in map[string]*tissueOut) map[string]*tissueOut {
	if len(in) == 0 {
		return nil
	}
	out := make(map[string]*tissueOut, len(in))
	for k, v := range in {
		out[k] = &tissueOut{Next: v.Next, Unacked: slices.Clone(v.Unacked)}
	}
	return out
}
