package placement

import (
	"context"
	"encoding/json"
	"testing"
	"time"

	"github.com/cloudskin/cloudskin/console/internal/cells"
	"github.com/cloudskin/cloudskin/console/internal/objects"
	"github.com/cloudskin/cloudskin/console/internal/planner"
	"github.com/cloudskin/cloudskin/console/internal/store"
	"github.com/cloudskin/cloudskin/shared/protocol"
)

type nopBus struct{}

func (nopBus) Publish(string, []byte, bool) error { return nil }

// The autoscaler adds replicas for a backlog, repartitions them from the
// lowest unread offset, and takes one away after the idle time.
func TestAutoscale(t *testing.T) {
	f := newFixture(t)
	ctx := context.Background()
	if err := f.st.CreateModule(ctx, &store.Module{Digest: digest, Exports: "[]", Imports: "[]", UploadedAt: time.Now()}); err != nil {
		t.Fatal(err)
	}
	objs, err := objects.NewFS(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	cs := cells.New(protocol.NewTopics(""), f.st, nopBus{}, quiet)
	svc, err := New(Config{Planner: planner.DefaultConfig()}, f.st, cs, objs, nil, quiet)
	if err != nil {
		t.Fatal(err)
	}
	svc.now = func() time.Time { return f.now }
	for _, n := range []string{"edge-1", "edge-2"} {
		tel, _ := json.Marshal(protocol.Telemetry{Node: n, CPU: protocol.CPU{Cores: 4, Percent: 10},
			Memory: protocol.Memory{TotalBytes: 8 << 30, AvailableBytes: 6 << 30}})
		if _, err := f.st.NodeSeen(ctx, f.ids[n], store.Seen{NowUS: f.now.UnixMicro(), WasOnline: true,
			Fields: map[string]any{"last_telemetry": string(tel), "arch": "amd64"}}); err != nil {
			t.Fatal(err)
		}
	}
	app := AppSpec{Name: "jobs", Cells: []AppCell{{Name: "w", Module: digest,
		Inputs: []protocol.Input{{Name: "in", Stream: "work", Node: "edge-1"}}}},
		Scale: &Scale{Min: 1, Max: 4, BacklogPerReplica: 100, IdleSeconds: 10}}
	if _, _, err := svc.PutApp(ctx, app, "alice", true); err != nil {
		t.Fatal(err)
	}
	replicas := func() []protocol.CellSpec {
		rows, err := f.st.ListAppCells(ctx, "jobs")
		if err != nil {
			t.Fatal(err)
		}
		var out []protocol.CellSpec
		for _, r := range rows {
			s, _ := readSpec(r.Spec)
			out = append(out, s)
		}
		return out
	}
	if r := replicas(); len(r) != 1 || r[0].ID != "jobs-w-0" || r[0].Inputs[0].Partitions != 0 {
		t.Fatalf("initial replicas %+v", r)
	}
	// Each replica reports its cursor; the stream's node its next offset.
	report := func(cursors map[string]uint64, next uint64) {
		f.now = f.now.Add(time.Second)
		for id, cur := range cursors {
			c, err := f.st.CellByID(ctx, id)
			if err != nil {
				t.Fatal(err)
			}
			b, _ := json.Marshal(protocol.CellStatus{ID: id, State: protocol.CellRunning, Cursors: map[string]uint64{"in": cur}})
			if _, err := f.st.SetCellStatuses(ctx, c.Node, map[string]string{id: string(b)}, f.now.UnixMicro()); err != nil {
				t.Fatal(err)
			}
		}
		st, _ := json.Marshal(protocol.StreamStatus{Name: "work", NextOffset: next})
		if err := f.st.SaveNodeStreams(ctx, "edge-1", []store.NodeStream{{Node: "edge-1", Name: "work", StatusJSON: string(st), StatusUS: f.now.UnixMicro()}}); err != nil {
			t.Fatal(err)
		}
		if err := svc.Round(ctx); err != nil {
			t.Fatal(err)
		}
	}
	report(map[string]uint64{"jobs-w-0": 50}, 350) // 300 waiting: 3 replicas
	r := replicas()
	if len(r) != 3 {
		t.Fatalf("after a backlog of 300: %d replicas", len(r))
	}
	for i, s := range r {
		in := s.Inputs[0]
		if in.Partition != i || in.Partitions != 3 || in.From != 50 || in.Node != "edge-1" {
			t.Fatalf("replica %d input %+v", i, in)
		}
	}
	// Caught up: after the idle time one replica goes, from the lowest cursor.
	report(map[string]uint64{"jobs-w-0": 351, "jobs-w-1": 350, "jobs-w-2": 352}, 350)
	if len(replicas()) != 3 {
		t.Fatal("scaled in before the idle time")
	}
	f.now = f.now.Add(10 * time.Second)
	report(map[string]uint64{"jobs-w-0": 351, "jobs-w-1": 350, "jobs-w-2": 352}, 350)
	r = replicas()
	if len(r) != 2 || r[0].Inputs[0].Partitions != 2 || r[0].Inputs[0].From != 350 {
		t.Fatalf("after idling: %+v", r)
	}
	ds, err := f.st.Decisions(ctx, store.DecisionQuery{App: "jobs", Limit: 20})
	if err != nil {
		t.Fatal(err)
	}
	var scales []string
	for _, d := range ds {
		if d.Kind == KindScale {
			scales = append(scales, d.Reason)
		}
	}
	if len(scales) != 2 || scales[0] != "idle" || scales[1] != "backlog" {
		t.Fatalf("scale decisions, newest first: %v", scales)
	}
	// A replica that has not reported holds the scaler back.
	report(map[string]uint64{"jobs-w-0": 100}, 5000)
	if len(replicas()) != 2 {
		t.Fatal("scaled without every replica's cursor")
	}
}
