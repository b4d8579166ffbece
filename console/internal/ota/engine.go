package ota

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"strings"
	"time"

	"github.com/cloudskin/cloudskin/console/internal/store"
	"github.com/cloudskin/cloudskin/shared/protocol"
)

// Run steps the rollouts every Interval and whenever a node reports
// (Kick), until ctx ends.
func (s *Service) Run(ctx context.Context) error {
	t := time.NewTicker(s.cfg.Interval)
	defer t.Stop()
	for {
		if err := s.Step(ctx); err != nil && ctx.Err() == nil {
			s.log.Warn("rollouts not all stepped", "err", err)
		}
		select {
		case <-ctx.Done():
			return nil
		case <-s.kick:
		case <-t.C:
		}
	}
}

// Step moves every live rollout on: it applies the newest update status
// each updating node reported (the fleet intake stores them), fails nodes
// that made no progress in time, halts a rollout whose failures pass its
// threshold, starts the next wave when the current one is settled and
// completes a rollout with no wave left. It also publishes again the
// desired states an earlier step could not.
func (s *Service) Step(ctx context.Context) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	for node := range s.unpublished {
		s.publish(ctx, []string{node})
	}
	rs, err := s.store.LiveRollouts(ctx)
	if err != nil {
		return err
	}
	var errs []error
	for i := range rs {
		if err := s.stepRollout(ctx, rs[i].ID, "", nil); err != nil {
			errs = append(errs, fmt.Errorf("rollout %s: %w", rs[i].ID, err))
		}
	}
	return errors.Join(errs...)
}

// OnUpdateStatus applies one update status node reported and moves its
// rollout on. Reports may arrive late, out of order or twice: one older
// (by its own time) than the newest applied, or a repeat of it, changes
// nothing; so does one for a rollout the console does not know or a node
// that is not updating in it.
func (s *Service) OnUpdateStatus(ctx context.Context, node string, u protocol.UpdateStatus) error {
	if validRolloutID(u.Rollout) != nil {
		return nil
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	err := s.stepRollout(ctx, u.Rollout, node, &u)
	if errors.Is(err, store.ErrNotFound) {
		s.log.Debug("update status for an unknown rollout ignored", "node", node, "rollout", u.Rollout)
		return nil
	}
	return err
}

// stepRollout applies to rollout id the report given (of node) or, when
// none is, the newest report each updating node stored, and advances it.
// It runs under s.mu.
func (s *Service) stepRollout(ctx context.Context, id, node string, report *protocol.UpdateStatus) error {
	for attempt := 0; ; attempt++ {
		r, ns, err := s.store.RolloutByID(ctx, id)
		if err != nil {
			return err
		}
		reports := map[string]protocol.UpdateStatus{}
		if report != nil {
			reports[node] = *report
		} else {
			var updating []string
			for _, n := range ns {
				if n.State == store.NodeUpdating {
					updating = append(updating, n.Node)
				}
			}
			stored, err := s.store.NodeUpdates(ctx, updating)
			if err != nil {
				return err
			}
			for name, row := range stored {
				var u protocol.UpdateStatus
				if err := json.Unmarshal([]byte(row.StatusJSON), &u); err == nil {
					reports[name] = u
				}
			}
		}
		st := newStep(r, ns, s.now().UTC())
		for i := range ns {
			if u, ok := reports[ns[i].Node]; ok {
				st.apply(i, u)
			}
		}
		st.advance()
		if !st.touched() {
			return nil
		}
		bump := st.bump()
		err = s.store.SaveRollout(ctx, r, st.dirtyRows(), bump)
		if store.ErrStale(err) && attempt < 5 {
			continue // another console replica stepped it meanwhile
		}
		if err != nil {
			return err
		}
		for _, n := range st.notes {
			s.log.Info(n.msg, append([]any{"rollout", r.ID}, n.args...)...)
		}
		s.publish(ctx, bump)
		return nil
	}
}

// publish publishes the desired state of nodes; one that fails is
// retried by the next step (the state is stored already).
func (s *Service) publish(ctx context.Context, nodes []string) {
	for _, n := range nodes {
		if err := s.pub.Republish(ctx, n); err != nil {
			s.unpublished[n] = true
			s.log.Warn("desired state with the node's update not published; retrying", "node", n, "err", err)
			continue
		}
		delete(s.unpublished, n)
	}
}

// step is one change to a rollout, worked out in memory: the rules of the
// engine live here, the store writes the outcome in one transaction.
type step struct {
	r     *store.Rollout
	ns    []store.RolloutNode
	now   time.Time
	had   []bool // whether each node's desired state carried the update before
	dirty []bool
	moved bool // the rollout's own state changed
	notes []note
}

type note struct {
	msg  string
	args []any
}

func newStep(r *store.Rollout, ns []store.RolloutNode, now time.Time) *step {
	st := &step{r: r, ns: ns, now: now, had: make([]bool, len(ns)), dirty: make([]bool, len(ns))}
	for i := range ns {
		st.had[i] = ns[i].State == store.NodeUpdating
	}
	return st
}

func (st *step) at() *time.Time {
	t := st.now
	return &t
}

func (st *step) note(msg string, args ...any) { st.notes = append(st.notes, note{msg, args}) }

func (st *step) touched() bool {
	for _, d := range st.dirty {
		if d {
			return true
		}
	}
	return st.moved
}

func (st *step) dirtyRows() []store.RolloutNode {
	var out []store.RolloutNode
	for i, d := range st.dirty {
		if d {
			out = append(out, st.ns[i])
		}
	}
	return out
}

// bump lists the nodes whose desired state gains or loses the update.
func (st *step) bump() []string {
	var out []string
	for i := range st.ns {
		if st.had[i] != (st.ns[i].State == store.NodeUpdating) {
			out = append(out, st.ns[i].Node)
		}
	}
	return out
}

func (st *step) count(state string) int {
	n := 0
	for i := range st.ns {
		if st.ns[i].State == state {
			n++
		}
	}
	return n
}

var finalPhases = map[string]bool{protocol.UpdateRolledBack: true, protocol.UpdateRefused: true, protocol.UpdateFailed: true}

var knownPhases = map[string]bool{
	protocol.UpdateDownloading: true, protocol.UpdateVerifying: true, protocol.UpdateInstalling: true,
	protocol.UpdateRestarting: true, protocol.UpdateChecking: true, protocol.UpdateCommitted: true,
	protocol.UpdateRolledBack: true, protocol.UpdateRefused: true, protocol.UpdateFailed: true,
}

// apply takes one update status node i reported: it records the phase and
// figures, counts a new phase or more downloaded as progress, and settles
// the node on committed (done) or rolled-back/refused/failed (failed).
func (st *step) apply(i int, u protocol.UpdateStatus) {
	n := &st.ns[i]
	if n.State != store.NodeUpdating || u.Rollout != st.r.ID || u.Bundle != st.r.Bundle || u.Time.IsZero() || !knownPhases[u.Phase] {
		return
	}
	t := u.Time.UnixMicro()
	progress := min(max(u.Progress, 0), 1)
	errText := clip(u.Error, 1000)
	running, slot := clip(u.Running, 80), clip(u.Slot, 16)
	if t < n.ReportUS {
		return // older than the newest applied: it arrived late
	}
	if t == n.ReportUS && u.Phase == n.Phase && progress == n.Progress && errText == n.Error && running == n.Running && slot == n.Slot {
		return // the same report again
	}
	if u.Phase != n.Phase || progress > n.Progress {
		n.ProgressAt = st.at()
	}
	n.Phase, n.Running, n.Slot, n.Error, n.Progress, n.ReportUS, n.ReportedAt = u.Phase, running, slot, errText, progress, t, st.at()
	st.dirty[i] = true
	switch {
	case u.Phase == protocol.UpdateCommitted:
		st.finish(i, store.NodeCommitted, "")
	case finalPhases[u.Phase]:
		reason := u.Phase
		if errText != "" {
			reason += ": " + errText
		}
		st.finish(i, store.NodeFailed, reason)
	}
}

// finish settles node i: it leaves the rollout's active nodes, and its
// desired state no longer carries the update.
func (st *step) finish(i int, state, reason string) {
	n := &st.ns[i]
	n.State, n.Reason, n.Active, n.FinishedAt = state, reason, nil, st.at()
	st.dirty[i] = true
	st.note("rollout node "+state, "node", n.Node, "reason", reason, "running", n.Running)
}

// advance applies the rollout's rules after the reports: timeouts, halt,
// next wave, completion.
func (st *step) advance() {
	r := st.r
	if r.State != store.RolloutRunning && r.State != store.RolloutHalted {
		return
	}
	// A node that stopped making progress counts as failed, also in a
	// halted rollout (its wave was under way).
	limit := time.Duration(r.HealthSeconds+r.DownloadSeconds) * time.Second
	for i := range st.ns {
		n := &st.ns[i]
		if n.State == store.NodeUpdating && n.ProgressAt != nil && st.now.Sub(*n.ProgressAt) > limit {
			phase := n.Phase
			if phase == "" {
				phase = "none reported"
			}
			st.finish(i, store.NodeFailed, fmt.Sprintf("timeout: no progress for %s (health_seconds + download_seconds; last phase: %s)", limit, phase))
		}
	}
	if r.State != store.RolloutRunning {
		return
	}
	if failed := st.count(store.NodeFailed); failed > r.Threshold {
		st.halt(failed)
		return
	}
	// The next wave starts when every node of this one is settled:
	// committed, or failed within the threshold.
	for i := range st.ns {
		if st.ns[i].Wave == r.Wave && r.Wave > 0 && (st.ns[i].State == store.NodePending || st.ns[i].State == store.NodeUpdating) {
			return
		}
	}
	next, started := r.Wave+1, 0
	for i := range st.ns {
		n := &st.ns[i]
		if n.Wave == next && n.State == store.NodePending {
			n.State, n.StartedAt, n.ProgressAt = store.NodeUpdating, st.at(), st.at()
			st.dirty[i] = true
			started++
		}
	}
	st.moved = true
	if started > 0 {
		r.Wave = next
		st.note("rollout wave started", "wave", next, "of", r.Waves, "nodes", started)
		return
	}
	r.State, r.FinishedAt = store.RolloutCompleted, st.at()
	r.Reason = fmt.Sprintf("%d committed, %d failed", st.count(store.NodeCommitted), st.count(store.NodeFailed))
	st.note("rollout completed", "result", r.Reason)
}

// halt stops a rollout whose failures passed its threshold: no wave
// starts any more, nodes not started stay untouched, nodes updating go on.
func (st *step) halt(failed int) {
	r := st.r
	var why []string
	for i := range st.ns {
		n := &st.ns[i]
		switch n.State {
		case store.NodeFailed:
			if len(why) < 5 {
				why = append(why, fmt.Sprintf("%s (%s)", n.Node, n.Reason))
			}
		case store.NodePending:
			n.State, n.Active = store.NodeNotStarted, nil
			st.dirty[i] = true
		}
	}
	if failed > len(why) {
		why = append(why, fmt.Sprintf("and %d more", failed-len(why)))
	}
	r.State, r.FinishedAt, st.moved = store.RolloutHalted, st.at(), true
	r.Reason = fmt.Sprintf("%d nodes failed, more than the %d tolerated: %s", failed, r.Threshold, strings.Join(why, ", "))
	st.note("rollout halted", "reason", r.Reason)
}

// cancel stops the rollout: nodes not started stay untouched, nodes
// updating have the update withdrawn.
func (st *step) cancel(reason string) {
	r := st.r
	for i := range st.ns {
		n := &st.ns[i]
		switch n.State {
		case store.NodePending:
			n.State, n.Active = store.NodeNotStarted, nil
			st.dirty[i] = true
		case store.NodeUpdating:
			n.State, n.Reason, n.Active, n.FinishedAt = store.NodeCancelled, reason, nil, st.at()
			st.dirty[i] = true
		}
	}
	r.State, r.Reason, r.FinishedAt, st.moved = store.RolloutCancelled, reason, st.at(), true
}

func clip(s string, n int) string {
	if len(s) > n {
		return s[:n]
	}
	return s
}
