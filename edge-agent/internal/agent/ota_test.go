package agent

import (
	"context"
	"encoding/json"
	"fmt"
	"strings"
	"testing"

	"github.com/cloudskin/cloudskin/edge-agent/internal/ota"
	"github.com/cloudskin/cloudskin/shared/protocol"
)

// TestOTAHealthCheck: a release being tried is healthy once connected to
// the console, told its desired state, and running every desired cell.
func TestOTAHealthCheck(t *testing.T) {
	minimal, minDigest := wat(t, "../../../cells/minimal.wat")
	srv, _ := moduleServer(t, map[string][]byte{minDigest: minimal})
	m, _ := newTestManager(t, srv.URL)
	a := m.a
	a.cells = m
	broker := &fakeBroker{}
	a.client = broker
	a.cfg.Broker = "tcp://127.0.0.1:1"

	check := func(wantOK bool, want string) {
		t.Helper()
		ok, why := a.otaHealthy()
		if ok != wantOK || !strings.Contains(why, want) {
			t.Fatalf("healthy %v %q, want %v %q", ok, why, wantOK, want)
		}
	}
	check(false, "not connected to the console's MQTT broker tcp://127.0.0.1:1")
	broker.open = true
	check(false, "no desired state received")
	a.desiredSeen.Store(true)
	check(true, "") // no cells

	count := protocol.CellSpec{ID: "count", Module: minDigest, Inputs: []protocol.Input{{Name: "sensors", Topics: []string{"sensors/#"}}}}
	ghost := protocol.CellSpec{ID: "ghost", Module: strings.Repeat("0", 64), Inputs: []protocol.Input{{Name: "sensors", Topics: []string{"x"}}}}
	m.setDesired(desiredJSON(1, count))
	check(false, "cell count not started yet")
	m.reconcile(context.Background())
	check(true, "")
	m.setDesired(desiredJSON(2, count, ghost))
	m.reconcile(context.Background())
	check(false, "cell ghost is failed: module")
}

// TestOTADesiredToActual: the desired state's update reaches the updater,
// and its outcome comes back in the actual state and as a node event.
func TestOTADesiredToActual(t *testing.T) {
	m, _ := newTestManager(t, "http://127.0.0.1:1")
	a := m.a
	a.cells = m
	a.version = "1.0.0"
	broker := &fakeBroker{}
	a.client, a.topics = broker, protocol.NewTopics("")
	var err error
	if a.events, err = openEventOutbox(a); err != nil {
		t.Fatal(err)
	}
	defer a.events.close()
	if a.updater, err = a.newUpdater(func() { t.Error("restart requested") }); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { defer close(done); a.updater.Run(ctx) }()
	defer func() { cancel(); <-done }()

	if a.actualState().Update != nil {
		t.Fatal("update status before any update")
	}
	id := strings.Repeat("ab", 32)
	d := protocol.Desired{Node: "edge-1", Generation: 1, Cells: []protocol.CellSpec{},
		Update: &protocol.UpdateSpec{Rollout: "r1", Bundle: id, SHA256: id, Version: "1.1.0", URL: "/api/v1/bundles/" + id + "/blob", Size: 1000, HealthSeconds: 60}}
	raw, _ := json.Marshal(d)
	m.setDesired(raw)
	eventually(t, "refused without a release key", func() error {
		u := a.actualState().Update
		if u == nil || u.Phase != protocol.UpdateRefused {
			return fmt.Errorf("update status %+v", u)
		}
		if !strings.Contains(u.Error, "no release key configured") || u.Running != "1.0.0" || u.Slot != ota.SlotFactory || u.Rollout != "r1" {
			return fmt.Errorf("update status %+v", u)
		}
		return nil
	})
	eventually(t, "the refusal event", func() error {
		if a.events.j.Len() != 1 {
			return fmt.Errorf("%d events", a.events.j.Len())
		}
		return nil
	})
	b, err := a.events.j.Read(a.events.j.FirstIndex())
	if err != nil {
		t.Fatal(err)
	}
	var ev protocol.NodeEvent
	if err := json.Unmarshal(b, &ev); err != nil {
		t.Fatal(err)
	}
	var detail ota.Detail
	json.Unmarshal(ev.Detail, &detail)
	if ev.Kind != ota.EventRefused || !strings.Contains(ev.Message, "no release key configured") || detail.Bundle != id || detail.Running != "1.0.0" {
		t.Fatalf("event %+v detail %+v", ev, detail)
	}
}
