package store

import (
	"context"
	"errors"
	"strings"
	"testing"
	"time"
)

func TestBundles(t *testing.T) {
	eachDB(t, func(t *testing.T, db testDB) {
		s := db.open()
		ctx := context.Background()
		now := time.Now().UTC().Truncate(time.Second)
		a := &Bundle{ID: strings.Repeat("a", 64), Version: "1.2.0", Semver: "1.2.0", Arch: "amd64", SizeBytes: 10,
			Manifest: `{"version":"1.2.0"}`, UploadedBy: "admin", UploadedAt: now.Add(-time.Minute)}
		b := &Bundle{ID: strings.Repeat("b", 64), Version: "1.2.0", Semver: "1.2.0", Arch: "arm64", SizeBytes: 11,
			Manifest: `{}`, UploadedAt: now}
		for _, x := range []*Bundle{a, b} {
			if err := s.CreateBundle(ctx, x); err != nil {
				t.Fatal(err)
			}
		}
		again := *a
		if err := s.CreateBundle(ctx, &again); !errors.Is(err, ErrConflict) {
			t.Fatalf("same id twice: %v", err)
		}
		rebuilt := *a
		rebuilt.ID, rebuilt.Version = strings.Repeat("c", 64), "v1.2.0-rebuilt"
		if err := s.CreateBundle(ctx, &rebuilt); !errors.Is(err, ErrConflict) {
			t.Fatalf("another bundle of release 1.2.0 amd64: %v", err)
		}
		got, err := s.BundleByID(ctx, a.ID)
		if err != nil || got.Manifest != a.Manifest || got.Arch != "amd64" || got.SizeBytes != 10 {
			t.Fatalf("by id: %+v %v", got, err)
		}
		if got, err := s.BundleByRelease(ctx, "1.2.0", "arm64"); err != nil || got.ID != b.ID {
			t.Fatalf("by release: %+v %v", got, err)
		}
		if _, err := s.BundleByID(ctx, strings.Repeat("d", 64)); !errors.Is(err, ErrNotFound) {
			t.Fatalf("unknown: %v", err)
		}
		list, err := s.ListBundles(ctx)
		if err != nil || len(list) != 2 || list[0].ID != b.ID {
			t.Fatalf("list %+v %v, want newest first", list, err)
		}
		// A running rollout keeps its bundle; a finished one does not.
		r := &Rollout{ID: "r1", Bundle: a.ID, Version: "1.2.0", Arch: "amd64", Request: "{}", UpdateSpec: "{}",
			WaveSize: 1, Waves: 1, State: RolloutRunning}
		if err := s.CreateRollout(ctx, r, nil, nil); err != nil {
			t.Fatal(err)
		}
		if err := s.DeleteBundle(ctx, a.ID); !errors.Is(err, ErrConflict) || !strings.Contains(err.Error(), "r1") {
			t.Fatalf("delete while in use: %v", err)
		}
		r.State = RolloutCancelled
		if err := s.SaveRollout(ctx, r, nil, nil); err != nil {
			t.Fatal(err)
		}
		if err := s.DeleteBundle(ctx, a.ID); err != nil {
			t.Fatal(err)
		}
		if err := s.DeleteBundle(ctx, a.ID); !errors.Is(err, ErrNotFound) {
			t.Fatalf("delete twice: %v", err)
		}
	})
}

func TestRolloutStore(t *testing.T) {
	eachDB(t, func(t *testing.T, db testDB) {
		s := db.open()
		ctx := context.Background()
		gen := func(node string) int64 {
			t.Helper()
			g, _, _, err := s.DesiredState(ctx, node)
			if err != nil {
				t.Fatal(err)
			}
			return g
		}
		name := func(s string) *string { return &s }
		now := time.Now().UTC().Truncate(time.Millisecond)
		r := &Rollout{ID: "1.2.0-amd64-aaaaaa", Bundle: strings.Repeat("a", 64), Version: "1.2.0", Arch: "amd64",
			Request: `{"percent":100}`, UpdateSpec: `{"rollout":"1.2.0-amd64-aaaaaa"}`, WaveSize: 1, Waves: 2, Wave: 1,
			HealthSeconds: 120, DownloadSeconds: 600, State: RolloutRunning, CreatedBy: "admin"}
		nodes := []RolloutNode{
			{Rollout: r.ID, Node: "edge-1", Wave: 1, State: NodeUpdating, Active: name("edge-1"), StartedAt: &now, ProgressAt: &now},
			{Rollout: r.ID, Node: "edge-2", Wave: 2, State: NodePending, Active: name("edge-2")},
			{Rollout: r.ID, Node: "edge-3", State: NodeSkipped, Reason: "already at 1.2.0"},
		}
		if err := s.CreateRollout(ctx, r, nodes, []string{"edge-1"}); err != nil {
			t.Fatal(err)
		}
		if gen("edge-1") != 1 || gen("edge-2") != 0 {
			t.Fatalf("generations %d %d, want the started node bumped", gen("edge-1"), gen("edge-2"))
		}
		if spec, err := s.NodeUpdateSpec(ctx, "edge-1"); err != nil || spec != r.UpdateSpec {
			t.Fatalf("edge-1 update %q %v", spec, err)
		}
		if spec, err := s.NodeUpdateSpec(ctx, "edge-2"); err != nil || spec != "" {
			t.Fatalf("pending edge-2 carries %q %v", spec, err)
		}
		active, err := s.ActiveRollouts(ctx)
		if err != nil || len(active) != 2 || active["edge-2"] != r.ID {
			t.Fatalf("active %v %v", active, err)
		}
		// One active rollout per node, enforced by the database.
		other := &Rollout{ID: "other", Bundle: r.Bundle, Request: "{}", UpdateSpec: "{}", State: RolloutRunning}
		err = s.CreateRollout(ctx, other, []RolloutNode{{Rollout: "other", Node: "edge-2", Wave: 1, State: NodePending, Active: name("edge-2")}}, nil)
		if !errors.Is(err, ErrConflict) {
			t.Fatalf("edge-2 in two active rollouts: %v", err)
		}
		if _, _, err := s.RolloutByID(ctx, "other"); !errors.Is(err, ErrNotFound) {
			t.Fatalf("a refused rollout was left behind: %v", err)
		}

		got, ns, err := s.RolloutByID(ctx, r.ID)
		if err != nil || got.Rev != 0 || len(ns) != 3 || ns[0].Node != "edge-1" || ns[2].Node != "edge-3" || ns[0].StartedAt == nil {
			t.Fatalf("read back %+v %+v %v", got, ns, err)
		}
		// edge-1 commits, wave 2 starts: both desired states change.
		stale := *got
		ns[0].State, ns[0].Active, ns[0].Phase, ns[0].Progress, ns[0].FinishedAt = NodeCommitted, nil, "committed", 1, &now
		ns[1].State, ns[1].StartedAt = NodeUpdating, &now
		got.Wave = 2
		if err := s.SaveRollout(ctx, got, ns[:2], []string{"edge-1", "edge-2"}); err != nil {
			t.Fatal(err)
		}
		if got.Rev != 1 || gen("edge-1") != 2 || gen("edge-2") != 1 {
			t.Fatalf("rev %d, generations %d %d", got.Rev, gen("edge-1"), gen("edge-2"))
		}
		if spec, _ := s.NodeUpdateSpec(ctx, "edge-1"); spec != "" {
			t.Fatalf("committed edge-1 still carries %q", spec)
		}
		if spec, _ := s.NodeUpdateSpec(ctx, "edge-2"); spec == "" {
			t.Fatal("edge-2 carries no update in wave 2")
		}
		// A write based on the old read is refused and changes nothing.
		stale.State = RolloutCancelled
		if err := s.SaveRollout(ctx, &stale, nil, []string{"edge-2"}); !ErrStale(err) {
			t.Fatalf("stale write: %v", err)
		}
		if gen("edge-2") != 1 {
			t.Fatal("a refused write bumped a generation")
		}
		_, ns, _ = s.RolloutByID(ctx, r.ID)
		if ns[0].State != NodeCommitted || ns[0].Active != nil || ns[0].Progress != 1 || ns[0].FinishedAt == nil || ns[1].Active == nil {
			t.Fatalf("nodes after save %+v", ns)
		}
		live, err := s.LiveRollouts(ctx)
		if err != nil || len(live) != 1 {
			t.Fatalf("live %+v %v", live, err)
		}
		// Halted with a node still updating: still live; once it settles, not.
		got.State = RolloutHalted
		if err := s.SaveRollout(ctx, got, nil, nil); err != nil {
			t.Fatal(err)
		}
		if live, _ := s.LiveRollouts(ctx); len(live) != 1 {
			t.Fatalf("halted with a node updating: live %+v", live)
		}
		ns[1].State, ns[1].Active = NodeFailed, nil
		if err := s.SaveRollout(ctx, got, ns[1:2], []string{"edge-2"}); err != nil {
			t.Fatal(err)
		}
		if live, _ := s.LiveRollouts(ctx); len(live) != 0 {
			t.Fatalf("halted and settled: live %+v", live)
		}
		if active, _ := s.ActiveRollouts(ctx); len(active) != 0 {
			t.Fatalf("active after the rollout settled: %v", active)
		}
		// Now edge-2 may join another rollout.
		if err := s.CreateRollout(ctx, other, []RolloutNode{{Rollout: "other", Node: "edge-2", Wave: 1, State: NodePending, Active: name("edge-2")}}, nil); err != nil {
			t.Fatal(err)
		}
		list, err := s.ListRollouts(ctx, nil, 0)
		if err != nil || len(list) != 2 {
			t.Fatalf("list %+v %v", list, err)
		}
		if list, _ := s.ListRollouts(ctx, []string{RolloutHalted}, 0); len(list) != 1 || list[0].ID != r.ID {
			t.Fatalf("halted %+v", list)
		}
		byID, err := s.RolloutNodes(ctx, []string{r.ID, "other"})
		if err != nil || len(byID[r.ID]) != 3 || len(byID["other"]) != 1 {
			t.Fatalf("nodes by rollout %v %v", byID, err)
		}
	})
}

func TestNodeUpdates(t *testing.T) {
	eachDB(t, func(t *testing.T, db testDB) {
		s := db.open()
		ctx := context.Background()
		for _, u := range []NodeUpdate{
			{Node: "edge-1", StatusJSON: `{"phase":"downloading"}`, TimeUS: 100, ReceivedUS: 1},
			{Node: "edge-1", StatusJSON: `{"phase":"installing"}`, TimeUS: 300, ReceivedUS: 2},
			{Node: "edge-1", StatusJSON: `{"phase":"verifying"}`, TimeUS: 200, ReceivedUS: 3}, // late
			{Node: "edge-2", StatusJSON: `{"phase":"committed"}`, TimeUS: 50, ReceivedUS: 4},
		} {
			if err := s.SaveNodeUpdate(ctx, &u); err != nil {
				t.Fatal(err)
			}
		}
		got, err := s.NodeUpdates(ctx, []string{"edge-1", "edge-2", "edge-3"})
		if err != nil || len(got) != 2 {
			t.Fatalf("%v %v", got, err)
		}
		if u := got["edge-1"]; u.StatusJSON != `{"phase":"installing"}` || u.TimeUS != 300 || u.ReceivedUS != 2 {
			t.Fatalf("edge-1 %+v: an older report replaced a newer one", u)
		}
	})
}
