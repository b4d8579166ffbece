package agent

import (
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"net/http/httptest"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/bytecodealliance/wasmtime-go/v39"

	"github.com/cloudskin/cloudskin/shared/protocol"
)

// moduleServer serves modules by digest the way the console does, and
// counts downloads.
func moduleServer(t *testing.T, mods map[string][]byte) (*httptest.Server, *int) {
	t.Helper()
	downloads := 0
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if u, p, ok := r.BasicAuth(); !ok || u != "edge-1" || p != "secret" {
			http.Error(w, "no", http.StatusUnauthorized)
			return
		}
		digest := strings.TrimSuffix(strings.TrimPrefix(r.URL.Path, "/api/v1/modules/"), "/wasm")
		b, ok := mods[digest]
		if !ok {
			http.NotFound(w, r)
			return
		}
		downloads++
		w.Write(b)
	}))
	t.Cleanup(srv.Close)
	return srv, &downloads
}

func wat(t *testing.T, path string) ([]byte, string) {
	t.Helper()
	src, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	b, err := wasmtime.Wat2Wasm(string(src))
	if err != nil {
		t.Fatal(err)
	}
	return b, sha256Hex(b)
}

func newTestManager(t *testing.T, console string) (*cellManager, *[]string) {
	t.Helper()
	a := &Agent{cfg: Config{Name: "edge-1", Console: console, Data: t.TempDir()}, log: quiet, m: newMetrics(),
		cred: &Credential{Node: "edge-1", Secret: "secret"}}
	var published []string
	m, err := newCellManager(a, func(topic string, data []byte) { published = append(published, topic+"="+string(data)) })
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(m.stopAll)
	return m, &published
}

func desiredJSON(gen int64, specs ...protocol.CellSpec) []byte {
	b, _ := json.Marshal(protocol.Desired{Node: "edge-1", Generation: gen, Cells: specs})
	return b
}

func status(t *testing.T, m *cellManager, id string) protocol.CellStatus {
	t.Helper()
	for _, c := range m.actual().Cells {
		if c.ID == id {
			return c
		}
	}
	t.Fatalf("cell %s not in actual state %+v", id, m.actual())
	return protocol.CellStatus{}
}

func eventually(t *testing.T, what string, cond func() error) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	var err error
	for time.Now().Before(deadline) {
		if err = cond(); err == nil {
			return
		}
		time.Sleep(20 * time.Millisecond)
	}
	t.Fatalf("%s: %v", what, err)
}

// TestCellLifecycle: desired state starts a cell that sensor records feed;
// a hostile cell is contained and restarted with backoff while the other
// keeps working; removal stops it; a bad module is reported, not fatal.
func TestCellLifecycle(t *testing.T) {
	minimal, minDigest := wat(t, "../../../cells/minimal.wat")
	loop, loopDigest := wat(t, "../../../cells/hostile/loop.wat")
	srv, downloads := moduleServer(t, map[string][]byte{minDigest: minimal, loopDigest: loop})
	m, published := newTestManager(t, srv.URL)
	ctx := context.Background()

	count := protocol.CellSpec{ID: "count", Module: minDigest, Outputs: []string{"count"},
		Inputs: []protocol.Input{{Name: "sensors", Topics: []string{"sensors/+/temp"}}}}
	looper := protocol.CellSpec{ID: "looper", Module: loopDigest, Limits: protocol.CellLimits{CallTimeoutMS: 50},
		Inputs: []protocol.Input{{Name: "sensors", Topics: []string{"sensors/#"}}}}
	missing := protocol.CellSpec{ID: "ghost", Module: strings.Repeat("0", 64),
		Inputs: []protocol.Input{{Name: "sensors", Topics: []string{"x"}}}}
	m.setDesired(desiredJSON(1, count, looper, missing))
	m.reconcile(ctx)

	if st := status(t, m, "count"); st.State != protocol.CellRunning {
		t.Fatalf("count cell %s: %s", st.State, st.Message)
	}
	if st := status(t, m, "ghost"); st.State != protocol.CellFailed || !strings.Contains(st.Message, "no module") {
		t.Fatalf("missing module: %s %q, want failed with a reason", st.State, st.Message)
	}
	m.dispatch("sensors/t1/temp", []byte("21.5"))
	m.dispatch("sensors/t1/humidity", []byte("40")) // matches only the looper
	m.dispatch("sensors/t2/temp", []byte("19.0"))
	eventually(t, "count cell output", func() error {
		if st := status(t, m, "count"); st.Records < 2 || len(st.RecentOutputs) == 0 {
			return fmt.Errorf("records %d outputs %d", st.Records, len(st.RecentOutputs))
		}
		return nil
	})
	eventually(t, "looper crashed and scheduled for restart", func() error {
		if st := status(t, m, "looper"); st.State != protocol.CellBackoff || st.Restarts < 1 {
			return fmt.Errorf("looper %s restarts %d", st.State, st.Restarts)
		}
		return nil
	})
	// The count cell kept working through the looper's crash.
	m.dispatch("sensors/t3/temp", []byte("18.0"))
	eventually(t, "count cell after the looper crashed", func() error {
		if st := status(t, m, "count"); st.Records < 3 {
			return fmt.Errorf("records %d", st.Records)
		}
		return nil
	})
	if len(*published) == 0 || !strings.HasPrefix((*published)[0], "cells/count/count=") {
		t.Fatalf("outputs not published locally: %v", *published)
	}
	// The looper comes back after its backoff.
	time.Sleep(1100 * time.Millisecond)
	m.reconcile(ctx)
	if st := status(t, m, "looper"); st.State != protocol.CellRunning {
		t.Fatalf("looper not restarted after backoff: %s %s", st.State, st.Message)
	}

	// Removing cells stops them; an older generation is ignored.
	m.setDesired(desiredJSON(2, count))
	m.reconcile(ctx)
	m.setDesired(desiredJSON(1, count, looper))
	m.reconcile(ctx)
	if got := m.actual(); len(got.Cells) != 1 || got.Generation != 2 {
		t.Fatalf("after removal: %+v", got)
	}
	dl := *downloads
	// A restarted agent runs its last desired state from disk, offline,
	// without downloading again.
	m2, err := newCellManager(m.a, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer m2.stopAll()
	m2.reconcile(ctx)
	if st := status(t, m2, "count"); st.State != protocol.CellRunning || *downloads != dl {
		t.Fatalf("after restart: %s, downloads %d → %d", st.State, dl, *downloads)
	}
}

func TestDesiredRefused(t *testing.T) {
	m, _ := newTestManager(t, "http://127.0.0.1:1")
	for _, bad := range []string{`{not json`, `{"node":"edge-2","generation":1}`, `{"node":"edge-1","generation":1,"cells":[{"id":"Bad_ID"}]}`} {
		m.setDesired([]byte(bad))
		if m.desired.Generation != 0 {
			t.Fatalf("%s accepted", bad)
		}
	}
}

func TestTopicMatches(t *testing.T) {
	for _, tc := range []struct {
		filter, topic string
		want          bool
	}{
		{"a/b", "a/b", true}, {"a/+", "a/b", true}, {"a/+", "a/b/c", false}, {"a/#", "a/b/c", true},
		{"a/#", "a", true}, {"#", "x/y", true}, {"a/+/c", "a/b/c", true}, {"a/b", "a/c", false}, {"a/b/c", "a/b", false},
	} {
		if got := topicMatches(tc.filter, tc.topic); got != tc.want {
			t.Errorf("topicMatches(%q, %q) = %v", tc.filter, tc.topic, got)
		}
	}
}
