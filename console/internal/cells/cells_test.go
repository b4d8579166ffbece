package cells

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

// fakeBus records what the service publishes; fail makes Publish fail.
type fakeBus struct {
	mu   sync.Mutex
	msgs []published
	fail error
}

type published struct {
	topic   string
	desired protocol.Desired
	retain  bool
}

func (b *fakeBus) Publish(topic string, payload []byte, retain bool) error {
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.fail != nil {
		return b.fail
	}
	var d protocol.Desired
	if err := json.Unmarshal(payload, &d); err != nil {
		return err
	}
	b.msgs = append(b.msgs, published{topic, d, retain})
	return nil
}

func (b *fakeBus) last(t *testing.T) published {
	t.Helper()
	b.mu.Lock()
	defer b.mu.Unlock()
	if len(b.msgs) == 0 {
		t.Fatal("nothing published")
	}
	return b.msgs[len(b.msgs)-1]
}

var digest = strings.Repeat("ab", 32)

func newService(t *testing.T) (*Service, *fakeBus, *store.Store) {
	t.Helper()
	ctx := context.Background()
	st, err := store.Open(ctx, "", t.TempDir(), quiet)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { st.Close() })
	for _, n := range []string{"edge-1", "edge-2"} {
		tok := "tok-" + n
		if err := st.CreateToken(ctx, &store.EnrollmentToken{TokenHash: tok, ExpiresAt: time.Now().Add(time.Hour)}); err != nil {
			t.Fatal(err)
		}
		if err := st.Enroll(ctx, tok, time.Now(), &store.Node{Name: n, CredentialHash: "x", Status: protocol.StateOffline}); err != nil {
			t.Fatal(err)
		}
	}
	if err := st.CreateModule(ctx, &store.Module{Digest: digest, Exports: "[]", Imports: "[]", UploadedAt: time.Now()}); err != nil {
		t.Fatal(err)
	}
	bus := &fakeBus{}
	return New(protocol.NewTopics(""), st, bus, quiet), bus, st
}

func spec(id string) protocol.CellSpec {
	return protocol.CellSpec{ID: id, Module: digest, Config: []byte(`{ "window": 10 }`),
		Inputs: []protocol.Input{{Name: "temp", Topics: []string{"sensors/+/temp"}}}, Outputs: []string{"avg"}}
}

func TestCreateDeletePublishDesired(t *testing.T) {
	s, bus, _ := newService(t)
	ctx := context.Background()
	c, err := s.Create(ctx, spec("avg-1"), "edge-1", "alice")
	if err != nil {
		t.Fatal(err)
	}
	if c.Node != "edge-1" || string(c.Config) != `{"window":10}` || c.Status != nil || c.CreatedBy != "alice" {
		t.Fatalf("created %+v", c)
	}
	p := bus.last(t)
	if p.topic != "cloudskin/v1/nodes/edge-1/desired" || !p.retain || p.desired.Node != "edge-1" || p.desired.Generation != 1 ||
		len(p.desired.Cells) != 1 || p.desired.Cells[0].ID != "avg-1" || string(p.desired.Cells[0].Config) != `{"window":10}` {
		t.Fatalf("published %+v", p)
	}
	if err := p.desired.Validate("edge-1"); err != nil {
		t.Fatalf("published desired state the agent would refuse: %v", err)
	}
	if _, err := s.Create(ctx, spec("avg-2"), "edge-1", "alice"); err != nil {
		t.Fatal(err)
	}
	if p := bus.last(t); p.desired.Generation != 2 || len(p.desired.Cells) != 2 {
		t.Fatalf("second cell: %+v, want generation 2 with both cells", p.desired)
	}
	if err := s.Delete(ctx, "avg-1", "alice"); err != nil {
		t.Fatal(err)
	}
	if p := bus.last(t); p.desired.Generation != 3 || len(p.desired.Cells) != 1 || p.desired.Cells[0].ID != "avg-2" {
		t.Fatalf("after delete: %+v", p.desired)
	}
	if err := s.Delete(ctx, "avg-2", "alice"); err != nil {
		t.Fatal(err)
	}
	if p := bus.last(t); p.desired.Generation != 4 || p.desired.Cells == nil || len(p.desired.Cells) != 0 {
		t.Fatalf("after deleting the last cell: %+v, want an empty (not null) list", p.desired)
	}
	// A console restart restores it, with the same generation.
	bus.msgs = nil
	if err := s.RepublishAll(ctx); err != nil {
		t.Fatal(err)
	}
	if len(bus.msgs) != 1 || bus.msgs[0].desired.Generation != 4 || bus.msgs[0].topic != "cloudskin/v1/nodes/edge-1/desired" {
		t.Fatalf("republished %+v, want edge-1 generation 4 only", bus.msgs)
	}
}

func TestCreateRefuses(t *testing.T) {
	s, bus, _ := newService(t)
	ctx := context.Background()
	if _, err := s.Create(ctx, spec("taken"), "edge-2", "alice"); err != nil {
		t.Fatal(err)
	}
	before := len(bus.msgs)
	other := spec("taken")
	other.Outputs = []string{"different"}
	unknownModule := spec("m")
	unknownModule.Module = strings.Repeat("c", 64)
	badConfig := spec("cfg")
	badConfig.Config = []byte("{nope")
	for _, tc := range []struct {
		name string
		spec protocol.CellSpec
		node string
		want error
		msg  string
	}{
		{"bad id", spec("Bad_ID"), "edge-1", ErrInvalid, "cell id"},
		{"bad node name", spec("x"), "Edge!", ErrInvalid, "node name"},
		{"unknown node", spec("x"), "ghost", store.ErrNotFound, "ghost"},
		{"unknown module", unknownModule, "edge-1", ErrInvalid, "upload the module first"},
		{"bad config", badConfig, "edge-1", ErrInvalid, "config"},
		{"duplicate on another node", spec("taken"), "edge-1", store.ErrConflict, "taken"},
		{"duplicate with another spec", other, "edge-2", store.ErrConflict, "taken"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := s.Create(ctx, tc.spec, tc.node, "alice")
			if !errors.Is(err, tc.want) || !strings.Contains(err.Error(), tc.msg) {
				t.Fatalf("Create = %v, want %v mentioning %q", err, tc.want, tc.msg)
			}
		})
	}
	if len(bus.msgs) != before {
		t.Fatalf("refusals published %d messages", len(bus.msgs)-before)
	}
	if _, err := s.Get(ctx, "nope"); !errors.Is(err, store.ErrNotFound) {
		t.Fatalf("Get unknown: %v", err)
	}
	if err := s.Delete(ctx, "nope", "alice"); !errors.Is(err, store.ErrNotFound) {
		t.Fatalf("Delete unknown: %v", err)
	}
	if _, err := s.List(ctx, "Bad!"); !errors.Is(err, ErrInvalid) {
		t.Fatalf("List with a bad node: %v", err)
	}
}

func TestPublishFailureKeepsCellAndRetries(t *testing.T) {
	s, bus, _ := newService(t)
	ctx := context.Background()
	bus.fail = errors.New("broker down")
	if _, err := s.Create(ctx, spec("avg"), "edge-1", "alice"); !errors.Is(err, ErrUnpublished) {
		t.Fatalf("Create with the broker down: %v, want ErrUnpublished", err)
	}
	if _, err := s.Get(ctx, "avg"); err != nil {
		t.Fatalf("cell not kept after a publish failure: %v", err)
	}
	bus.fail = nil
	// The operator retries the same request: no conflict, published now.
	if _, err := s.Create(ctx, spec("avg"), "edge-1", "alice"); err != nil {
		t.Fatalf("retry: %v", err)
	}
	if p := bus.last(t); p.desired.Generation != 1 || len(p.desired.Cells) != 1 {
		t.Fatalf("retry published %+v", p.desired)
	}
}

func TestStatusAndEvents(t *testing.T) {
	s, _, st := newService(t)
	ctx := context.Background()
	if _, err := s.Create(ctx, spec("avg"), "edge-1", "alice"); err != nil {
		t.Fatal(err)
	}
	if evs, err := s.Events(ctx, "avg"); err != nil || evs == nil || len(evs) != 0 {
		t.Fatalf("events before any status: %v %v, want an empty list", evs, err)
	}
	at := time.Now().UTC().Truncate(time.Microsecond)
	raw, _ := json.Marshal(protocol.CellStatus{ID: "avg", Module: digest, State: protocol.CellRunning, Invocations: 7,
		Events: []protocol.CellEvent{{Time: at, Kind: "started"}}})
	if _, err := st.SetCellStatuses(ctx, "edge-1", map[string]string{"avg": string(raw)}, at.UnixMicro()); err != nil {
		t.Fatal(err)
	}
	c, err := s.Get(ctx, "avg")
	if err != nil || c.Status == nil || c.Status.State != protocol.CellRunning || c.Status.Invocations != 7 || !c.StatusAt.Equal(at) {
		t.Fatalf("cell with status: %+v %v", c, err)
	}
	evs, err := s.Events(ctx, "avg")
	if err != nil || len(evs) != 1 || evs[0].Kind != "started" {
		t.Fatalf("events: %+v %v", evs, err)
	}
	list, err := s.List(ctx, "edge-1")
	if err != nil || len(list) != 1 || list[0].Status == nil {
		t.Fatalf("list edge-1: %+v %v", list, err)
	}
	if list, _ := s.List(ctx, "edge-2"); len(list) != 0 {
		t.Fatalf("list edge-2: %+v", list)
	}
}
