package placement

import (
	"context"
	"encoding/json"
	"fmt"
	"time"

	"github.com/cloudskin/cloudskin/console/internal/planner"
	"github.com/cloudskin/cloudskin/console/internal/store"
	"github.com/cloudskin/cloudskin/shared/protocol"
)

// Bursts: a scaled app's replicas share its stream, replica i of n taking
// the records whose offset modulo n is i. Every round the backlog (the
// stream's next offset minus the lowest replica cursor) sets how many
// replicas it needs, between Min and Max: one per BacklogPerReplica records,
// and one fewer after IdleSeconds without backlog. When the count changes,
// every replica starts the new partitioning from the lowest offset any had
// not read (Scale.From): nothing is skipped; records some replica had
// already handled above that offset may be handled again.

// KindScale is the decision kind of a replica count change.
const KindScale = "scale"

const (
	defaultBacklogPerReplica = 1000
	defaultIdleSeconds       = 30
)

// autoscale applies the scaling rule to every scaled app; s.mu is held.
func (s *Service) autoscale(ctx context.Context, apps map[string]*AppSpec, cs []store.Cell) {
	for name, a := range apps {
		if a.Scale == nil {
			continue
		}
		if err := s.scaleApp(ctx, a, cs); err != nil {
			s.log.Warn("app not scaled", "app", name, "err", err)
		}
	}
}

func (s *Service) scaleApp(ctx context.Context, a *AppSpec, cs []store.Cell) error {
	in := a.Cells[0].Inputs[0]
	n := a.replicas()
	// Where every replica stands; without a report from each, wait.
	low, reported := uint64(0), 0
	for i := range cs {
		c := &cs[i]
		if c.App != a.Name {
			continue
		}
		st, ok := cellStatus(c, a.Scale.Since.Add(time.Microsecond)) // strictly after the change
		if !ok || st.State != protocol.CellRunning {
			continue
		}
		cur, ok := st.Cursors[in.Name]
		if !ok {
			continue
		}
		if reported == 0 || cur < low {
			low = cur
		}
		reported++
	}
	if reported < n {
		return nil
	}
	ns, err := s.store.NodeStreamByName(ctx, in.Node, in.Stream)
	if err != nil {
		return nil // the stream's node has not reported it yet
	}
	var st protocol.StreamStatus
	if err := json.Unmarshal([]byte(ns.StatusJSON), &st); err != nil {
		return err
	}
	backlog := uint64(0)
	if st.NextOffset > low {
		backlog = st.NextOffset - low
	}
	per := a.Scale.BacklogPerReplica
	if per == 0 {
		per = defaultBacklogPerReplica
	}
	idle := time.Duration(a.Scale.IdleSeconds) * time.Second
	if a.Scale.IdleSeconds == 0 {
		idle = defaultIdleSeconds * time.Second
	}
	now := s.now()
	want := n
	reason := ""
	if need := int((backlog + per - 1) / per); need > n {
		want, reason = min(need, a.Scale.Max), "backlog"
		delete(s.idleSince, a.Name)
	} else if backlog == 0 {
		since, ok := s.idleSince[a.Name]
		if !ok {
			s.idleSince[a.Name] = now
		} else if now.Sub(since) >= idle && n > a.Scale.Min {
			want, reason = n-1, "idle"
			s.idleSince[a.Name] = now
		}
	} else {
		delete(s.idleSince, a.Name)
	}
	if want == n {
		return nil
	}
	next := *a
	sc := *a.Scale
	next.Scale, next.Replicas = &sc, want
	sc.From, sc.Since = max(low, sc.From), now.UTC()
	d := planner.Decision{Time: now.UTC(), Cell: a.Name + "-" + a.Cells[0].Name, App: a.Name, Kind: KindScale, Reason: reason,
		Candidates: []planner.Candidate{},
		Why: fmt.Sprintf("%d → %d replicas: backlog %d records of stream %s on %s (%d per replica), partitioning restarts at offset %d",
			n, want, backlog, in.Stream, in.Node, per, sc.From)}
	if reason == "idle" {
		d.Why = fmt.Sprintf("%d → %d replicas: no backlog on stream %s of %s for %s; partitioning restarts at offset %d",
			n, want, in.Stream, in.Node, idle, sc.From)
	}
	if _, err := s.record(ctx, &d); err != nil {
		return err
	}
	s.log.Info("app scaled", "app", a.Name, "from", n, "to", want, "backlog", backlog, "reason", reason)
	_, err = s.applyApp(ctx, &next, "")
	return err
}
