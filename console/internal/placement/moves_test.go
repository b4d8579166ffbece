package placement

import (
	"context"
	"encoding/json"
	"errors"
	"io"
	"log/slog"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/cloudskin/cloudskin/console/internal/store"
	"github.com/cloudskin/cloudskin/shared/protocol"
)

var quiet = slog.New(slog.NewTextHandler(io.Discard, nil))

var digest = strings.Repeat("ab", 32)

// published records which nodes' desired states the moves asked to publish.
type published struct {
	mu    sync.Mutex
	nodes []string
}

func (p *published) Republish(_ context.Context, node string) error {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.nodes = append(p.nodes, node)
	return nil
}

type fixture struct {
	t     *testing.T
	ctx   context.Context
	st    *store.Store
	pub   *published
	moves *Moves
	now   time.Time
	ids   map[string]uint
}

// newFixture is a SQLite store with nodes edge-1 and edge-2 online and the
// cell "agg" on edge-1.
func newFixture(t *testing.T) *fixture {
	t.Helper()
	ctx := context.Background()
	st, err := store.Open(ctx, "", t.TempDir(), quiet)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { st.Close() })
	f := &fixture{t: t, ctx: ctx, st: st, pub: &published{}, now: time.Now().UTC(), ids: map[string]uint{}}
	for _, n := range []string{"edge-1", "edge-2"} {
		tok := "tok-" + n
		if err := st.CreateToken(ctx, &store.EnrollmentToken{TokenHash: tok, ExpiresAt: time.Now().Add(time.Hour)}); err != nil {
			t.Fatal(err)
		}
		node := &store.Node{Name: n, CredentialHash: "x", Status: protocol.StateOffline}
		if err := st.Enroll(ctx, tok, time.Now(), node); err != nil {
			t.Fatal(err)
		}
		f.ids[n] = node.ID
		f.online(n)
	}
	spec := protocol.CellSpec{ID: "agg", Module: digest, Inputs: []protocol.Input{}, CheckpointSeconds: 60}
	if err := st.CreateCell(ctx, &store.Cell{ID: "agg", Node: "edge-1", Module: digest, Spec: writeSpec(spec)}); err != nil {
		t.Fatal(err)
	}
	f.moves = f.newMoves()
	return f
}

func (f *fixture) newMoves() *Moves {
	m := NewMoves(MoveConfig{HoldTimeout: time.Minute, RestoreTimeout: time.Minute}, f.st, f.pub, quiet)
	m.now = func() time.Time { return f.now }
	return m
}

func (f *fixture) online(node string) {
	f.t.Helper()
	if _, err := f.st.NodeSeen(f.ctx, f.ids[node], store.Seen{NowUS: f.now.UnixMicro()}); err != nil {
		f.t.Fatal(err)
	}
}

// ready says node has the cell's module compiled, as its actual state would.
func (f *fixture) ready(node string) {
	f.t.Helper()
	if _, err := f.st.NodeSeen(f.ctx, f.ids[node], store.Seen{NowUS: f.now.UnixMicro(), WasOnline: true,
		Fields: map[string]any{"modules": `["` + digest + `"]`}}); err != nil {
		f.t.Fatal(err)
	}
}

// prepared starts a live move and steps it past prepare (the target has
// compiled the module).
func (f *fixture) prepared() *store.Move {
	f.t.Helper()
	mv, err := f.moves.Start(f.ctx, "agg", "edge-2", ReasonManual, 0)
	if err != nil {
		f.t.Fatal(err)
	}
	f.ready("edge-2")
	f.step()
	if got := f.move(mv.ID); got.Phase != PhaseHold {
		f.t.Fatalf("after prepare: %+v", got)
	}
	return mv
}

func (f *fixture) offline(node string) {
	f.t.Helper()
	if _, err := f.st.MarkOffline(f.ctx, f.ids[node], f.now.UnixMicro(), "test"); err != nil {
		f.t.Fatal(err)
	}
}

// report stores what node says of the cell, a moment after now.
func (f *fixture) report(node string, st protocol.CellStatus) {
	f.t.Helper()
	st.ID = "agg"
	b, _ := json.Marshal(st)
	f.now = f.now.Add(time.Millisecond)
	if _, err := f.st.SetCellStatuses(f.ctx, node, map[string]string{"agg": string(b)}, f.now.UnixMicro()); err != nil {
		f.t.Fatal(err)
	}
}

func (f *fixture) step() {
	f.t.Helper()
	if err := f.moves.Step(f.ctx); err != nil {
		f.t.Fatal(err)
	}
}

// desired is the cell as node's desired state lists it (nil: not listed).
func (f *fixture) desired(node string) *protocol.CellSpec {
	f.t.Helper()
	_, cells, _, err := f.st.DesiredState(f.ctx, node)
	if err != nil {
		f.t.Fatal(err)
	}
	for _, c := range cells {
		if c.ID == "agg" {
			s, err := readSpec(c.Spec)
			if err != nil {
				f.t.Fatal(err)
			}
			return &s
		}
	}
	return nil
}

func (f *fixture) move(id string) *store.Move {
	f.t.Helper()
	mv, err := f.st.MoveByID(f.ctx, id)
	if err != nil {
		f.t.Fatal(err)
	}
	return mv
}

func (f *fixture) checkpoint(id, node string, seq uint64) {
	f.t.Helper()
	if err := f.st.PutCheckpoint(f.ctx, &store.Checkpoint{ID: id, Cell: "agg", Seq: seq, Node: node, Reason: "hold", Bytes: 1, SHA256: "x", Key: "checkpoints/agg/" + id}); err != nil {
		f.t.Fatal(err)
	}
}

// The whole live migration, step by step, through desired states: the
// source holds, the target restores while the source keeps its copy, the
// source drops it only once the target runs it.
func TestMoveLive(t *testing.T) {
	f := newFixture(t)
	mv, err := f.moves.Start(f.ctx, "agg", "edge-2", ReasonManual, 7)
	if err != nil {
		t.Fatal(err)
	}
	if mv.Phase != PhasePrepare || !mv.Open || mv.From != "edge-1" {
		t.Fatalf("started %+v", mv)
	}
	// Prepare: the target compiles the module while the cell runs on.
	if s := f.desired("edge-1"); s == nil || s.Hold != "" {
		t.Fatalf("source desired %+v: no hold before the target is ready", s)
	}
	if mods, _ := f.st.PrefetchFor(f.ctx, "edge-2"); len(mods) != 1 || mods[0] != digest {
		t.Fatalf("target prefetch %v", mods)
	}
	f.step()
	if f.move(mv.ID).Phase != PhasePrepare {
		t.Fatal("held before the target had the module")
	}
	f.ready("edge-2")
	f.step()
	if got := f.move(mv.ID); got.Phase != PhaseHold {
		t.Fatalf("after the target is ready: %+v", got)
	}
	if s := f.desired("edge-1"); s == nil || s.Hold != mv.ID || s.Restore != "" {
		t.Fatalf("source desired %+v, want hold %s", s, mv.ID)
	}
	if f.desired("edge-2") != nil {
		t.Fatal("the target lists the cell before the source holds it")
	}
	if _, err := f.moves.Start(f.ctx, "agg", "edge-2", ReasonManual, 0); !errors.Is(err, ErrConflict) {
		t.Fatalf("a second move of the same cell: %v", err)
	}

	// Held but the checkpoint not stored yet: nothing moves.
	f.report("edge-1", protocol.CellStatus{State: protocol.CellHeld, Checkpoint: &protocol.CheckpointInfo{ID: mv.ID}})
	f.step()
	if f.move(mv.ID).Phase != PhaseHold {
		t.Fatal("restore before the checkpoint was stored")
	}
	f.checkpoint(mv.ID, "edge-1", 3)
	f.step()
	if got := f.move(mv.ID); got.Phase != PhaseRestore || got.Checkpoint != mv.ID {
		t.Fatalf("after the checkpoint: %+v", got)
	}
	if s := f.desired("edge-1"); s == nil || s.Hold != mv.ID {
		t.Fatalf("the source must keep holding its copy: %+v", s)
	}
	if s := f.desired("edge-2"); s == nil || s.Restore != mv.ID || s.Hold != "" {
		t.Fatalf("target desired %+v", s)
	}
	c, _ := f.st.CellByID(f.ctx, "agg")
	if c.Node != "edge-2" || c.HeldOn != "edge-1" || c.StatusJSON != "" {
		t.Fatalf("cell %+v", c)
	}

	// A console restart here carries on from the database.
	f.moves = f.newMoves()
	f.report("edge-2", protocol.CellStatus{State: protocol.CellRunning, RestoredFrom: "some-other"})
	f.step()
	if f.move(mv.ID).Phase != PhaseRestore {
		t.Fatal("done before the target ran the move's checkpoint")
	}
	f.report("edge-2", protocol.CellStatus{State: protocol.CellRunning, RestoredFrom: mv.ID})
	f.step()
	got := f.move(mv.ID)
	if got.Phase != PhaseDone || got.Open || got.EndedAt == nil {
		t.Fatalf("after the target runs it: %+v", got)
	}
	if mods, _ := f.st.PrefetchFor(f.ctx, "edge-2"); len(mods) != 0 {
		t.Fatalf("prefetch after the move %v", mods)
	}
	if f.desired("edge-1") != nil {
		t.Fatal("the source still lists the cell after the move")
	}
	if s := f.desired("edge-2"); s == nil || s.Restore != mv.ID {
		t.Fatalf("target desired after the move %+v", s)
	}
}

// A source that does not checkpoint in time keeps the cell: the hold is
// released.
func TestMoveHoldTimeout(t *testing.T) {
	f := newFixture(t)
	mv := f.prepared()
	f.report("edge-1", protocol.CellStatus{State: protocol.CellRunning, Message: "cannot hold for migration: snapshot: boom"})
	f.now = f.now.Add(2 * time.Minute)
	f.step()
	got := f.move(mv.ID)
	if got.Phase != PhaseAborted || got.Open || !strings.Contains(got.Error, "boom") {
		t.Fatalf("move %+v", got)
	}
	if s := f.desired("edge-1"); s == nil || s.Hold != "" {
		t.Fatalf("source desired %+v: the hold must be released", s)
	}
}

// A target that cannot run the restored cell gives it back to the source,
// which resumes the instance it held.
func TestMoveRestoreFailsRollsBack(t *testing.T) {
	f := newFixture(t)
	mv := f.prepared()
	f.report("edge-1", protocol.CellStatus{State: protocol.CellHeld, Checkpoint: &protocol.CheckpointInfo{ID: mv.ID}})
	f.checkpoint(mv.ID, "edge-1", 1)
	f.step()
	f.report("edge-2", protocol.CellStatus{State: protocol.CellFailed, Message: "restore: checkpoint corrupt"})
	f.step()
	got := f.move(mv.ID)
	if got.Phase != PhaseAborted || !strings.Contains(got.Error, "corrupt") {
		t.Fatalf("move %+v", got)
	}
	c, _ := f.st.CellByID(f.ctx, "agg")
	if c.Node != "edge-1" || c.HeldOn != "" {
		t.Fatalf("cell after rollback %+v", c)
	}
	if s := f.desired("edge-1"); s == nil || s.Hold != "" || s.Restore != "" {
		t.Fatalf("source desired %+v: runs again, unheld", s)
	}
	if f.desired("edge-2") != nil {
		t.Fatal("the target still lists the cell")
	}
}

// A source that is down cannot hold: the target restores the newest
// checkpoint the console has.
func TestMoveFromOfflineNodeRestoresNewestCheckpoint(t *testing.T) {
	f := newFixture(t)
	f.checkpoint("agg.1", "edge-1", 1)
	f.checkpoint("agg.2", "edge-1", 2)
	f.offline("edge-1")
	mv, err := f.moves.Start(f.ctx, "agg", "edge-2", ReasonNodeOffline, 0)
	if err != nil {
		t.Fatal(err)
	}
	if mv.Phase != PhaseRestore || mv.Checkpoint != "agg.2" {
		t.Fatalf("failover %+v", mv)
	}
	if s := f.desired("edge-2"); s == nil || s.Restore != "agg.2" {
		t.Fatalf("target desired %+v", s)
	}
	if f.desired("edge-1") != nil {
		t.Fatal("a node that comes back must not run the cell again")
	}
	f.report("edge-2", protocol.CellStatus{State: protocol.CellRunning, RestoredFrom: "agg.2"})
	f.step()
	if got := f.move(mv.ID); got.Phase != PhaseDone {
		t.Fatalf("move %+v", got)
	}
}

// A target that does not report the module compiled in time gets the move
// anyway (it compiles after the hold); one that goes offline aborts it.
func TestMovePrepare(t *testing.T) {
	f := newFixture(t)
	mv, _ := f.moves.Start(f.ctx, "agg", "edge-2", ReasonManual, 0)
	f.now = f.now.Add(2 * time.Minute)
	f.step()
	if got := f.move(mv.ID); got.Phase != PhaseHold {
		t.Fatalf("after the prepare timeout: %+v", got)
	}

	g := newFixture(t)
	mv, _ = g.moves.Start(g.ctx, "agg", "edge-2", ReasonManual, 0)
	g.offline("edge-2")
	g.step()
	if got := g.move(mv.ID); got.Phase != PhaseAborted || got.Open {
		t.Fatalf("target offline during prepare: %+v", got)
	}
	if s := g.desired("edge-1"); s == nil || s.Hold != "" {
		t.Fatalf("source desired %+v", s)
	}
}

// Moving to an offline node, or to where the cell already runs, is refused.
func TestMoveRefused(t *testing.T) {
	f := newFixture(t)
	if _, err := f.moves.Start(f.ctx, "agg", "edge-1", ReasonManual, 0); !errors.Is(err, ErrInvalid) {
		t.Fatalf("to its own node: %v", err)
	}
	f.offline("edge-2")
	if _, err := f.moves.Start(f.ctx, "agg", "edge-2", ReasonManual, 0); !errors.Is(err, ErrConflict) {
		t.Fatalf("to an offline node: %v", err)
	}
	if _, err := f.moves.Start(f.ctx, "agg", "no-such", ReasonManual, 0); !errors.Is(err, store.ErrNotFound) {
		t.Fatalf("to an unknown node: %v", err)
	}
}
