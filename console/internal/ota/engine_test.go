package ota

import (
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/cloudskin/cloudskin/console/internal/store"
	"github.com/cloudskin/cloudskin/shared/protocol"
)

// TestRolloutWaves: the selector's nodes of the bundle's arch that run an
// older release get the update wave by wave, each wave once the one before
// committed; the rest are skipped with why; a committed node's desired
// state drops the update; the last commit completes the rollout.
func TestRolloutWaves(t *testing.T) {
	f := newFixture(t)
	for _, n := range []string{"edge-5", "edge-2", "edge-4", "edge-1", "edge-3"} {
		f.node(n, "site=farm")
	}
	f.node("edge-6", "site=farm", "arch=arm64")
	f.node("edge-7", "site=farm", "version=1.2.0")
	f.node("edge-8", "site=farm", "version=v2.0.0")
	f.node("edge-9", "site=farm", "status=offline")
	f.node("edge-a", "site=farm", "version=dev") // a build without a release: updated
	f.node("other", "site=lab")
	id := f.bundle("1.2.0", "amd64")
	r := f.start(Request{Bundle: id, Selector: Selector{Labels: map[string]string{"site": "farm"}}, WaveSize: 2})
	if r.State != store.RolloutRunning || r.Waves != 3 || r.Wave != 1 || r.Version != "1.2.0" || r.Threshold != 0 ||
		r.HealthSeconds != DefaultHealthSeconds || r.DownloadSeconds != DefaultDownloadSeconds || r.Percent != 100 {
		t.Fatalf("started %+v", r)
	}
	if !strings.HasPrefix(r.ID, "1.2.0-amd64-") {
		t.Fatalf("id %q", r.ID)
	}
	wantSkipped := map[string]string{"edge-6": "arch arm64", "edge-7": "runs 1.2.0, not older", "edge-8": "runs v2.0.0", "edge-9": "offline since"}
	if len(r.Skipped) != len(wantSkipped) {
		t.Fatalf("skipped %+v", r.Skipped)
	}
	for _, s := range r.Skipped {
		if !strings.Contains(s.Reason, wantSkipped[s.Node]) {
			t.Errorf("%s skipped for %q, want %q", s.Node, s.Reason, wantSkipped[s.Node])
		}
	}
	var waves []string
	for _, n := range r.Nodes {
		waves = append(waves, fmt.Sprintf("%s:%d:%s", n.Node, n.Wave, n.State))
	}
	if got := strings.Join(waves, " "); got != "edge-1:1:updating edge-2:1:updating edge-3:2:pending edge-4:2:pending edge-5:3:pending edge-a:3:pending" {
		t.Fatalf("waves %s", got)
	}
	if got := f.updating(r); !slices.Equal(got, []string{"edge-1", "edge-2"}) {
		t.Fatalf("desired states carrying the update: %v", got)
	}

	f.now = f.now.Add(time.Minute)
	f.report(r, "edge-1", protocol.UpdateDownloading, 0.5, 0, "")
	f.report(r, "edge-1", protocol.UpdateCommitted, 1, time.Second, "")
	if r = f.get(r.ID); r.Wave != 1 || states(r)["edge-1"] != store.NodeCommitted || states(r)["edge-3"] != store.NodePending {
		t.Fatalf("one of two committed: %+v", r)
	}
	if got := f.updating(r); !slices.Equal(got, []string{"edge-2"}) {
		t.Fatalf("after edge-1 committed, updating: %v", got)
	}
	f.report(r, "edge-2", protocol.UpdateCommitted, 1, 0, "")
	if r = f.get(r.ID); r.Wave != 2 || states(r)["edge-3"] != store.NodeUpdating {
		t.Fatalf("wave 2 did not start: %+v", r)
	}
	if got := f.updating(r); !slices.Equal(got, []string{"edge-3", "edge-4"}) {
		t.Fatalf("wave 2 desired: %v", got)
	}
	for _, n := range []string{"edge-3", "edge-4", "edge-5", "edge-a"} {
		f.report(r, n, protocol.UpdateCommitted, 1, 0, "")
	}
	r = f.get(r.ID)
	if r.State != store.RolloutCompleted || r.Reason != "6 committed, 0 failed" || r.FinishedAt == nil || r.Counts[store.NodeCommitted] != 6 {
		t.Fatalf("completed? %+v", r)
	}
	if got := f.updating(r); len(got) != 0 {
		t.Fatalf("a completed rollout still updates %v", got)
	}
	n := r.Nodes[0]
	if n.Phase != protocol.UpdateCommitted || n.Running != "1.2.0" || n.Slot != "b" || n.Progress != 1 || n.StartedAt == nil || n.FinishedAt == nil || n.ReportedAt == nil {
		t.Fatalf("node progress %+v", n)
	}
	if live, _ := f.st.LiveRollouts(f.ctx); len(live) != 0 {
		t.Fatalf("live after completion: %v", live)
	}
}

// TestRolloutPercent: the first percent of the eligible nodes by name,
// rounded up; the rest are skipped and say so.
func TestRolloutPercent(t *testing.T) {
	for _, tc := range []struct{ percent, nodes, want int }{{30, 10, 3}, {25, 10, 3}, {1, 10, 1}, {100, 3, 3}, {50, 1, 1}} {
		t.Run(fmt.Sprintf("%d%% of %d", tc.percent, tc.nodes), func(t *testing.T) {
			f := newFixture(t)
			for i := tc.nodes - 1; i >= 0; i-- {
				f.node(fmt.Sprintf("edge-%02d", i))
			}
			r := f.start(Request{Bundle: f.bundle("1.2.0", "amd64"), Percent: intp(tc.percent), WaveSize: 100})
			if len(r.Nodes) != tc.want || len(r.Skipped) != tc.nodes-tc.want {
				t.Fatalf("%d nodes, %d skipped; want %d", len(r.Nodes), len(r.Skipped), tc.want)
			}
			for i, n := range r.Nodes {
				if n.Node != fmt.Sprintf("edge-%02d", i) {
					t.Fatalf("node %d is %s: not the first by name", i, n.Node)
				}
			}
			for _, s := range r.Skipped {
				if !strings.Contains(s.Reason, fmt.Sprintf("outside the %d%%", tc.percent)) {
					t.Fatalf("skip reason %q", s.Reason)
				}
			}
		})
	}
}

// TestRolloutHalt: failures up to the threshold let the next wave start;
// one more halts the rollout, and the nodes not started stay untouched.
func TestRolloutHalt(t *testing.T) {
	for _, tc := range []struct {
		name string
		req  Request
	}{
		{"max_failures", Request{MaxFailures: intp(1)}},
		{"max_failure_pct", Request{MaxFailurePct: func() *float64 { p := 40.0; return &p }()}}, // 40% of 5: 2... floor(2.0)
	} {
		t.Run(tc.name, func(t *testing.T) {
			f := newFixture(t)
			for i := 1; i <= 5; i++ {
				f.node(fmt.Sprintf("edge-%d", i))
			}
			tc.req.Bundle = f.bundle("1.2.0", "amd64")
			r := f.start(tc.req)
			threshold := r.Threshold
			if threshold != map[string]int{"max_failures": 1, "max_failure_pct": 2}[tc.name] {
				t.Fatalf("threshold %d", threshold)
			}
			phases := []string{protocol.UpdateRolledBack, protocol.UpdateRefused, protocol.UpdateFailed}
			for i := 0; i < threshold; i++ {
				node := fmt.Sprintf("edge-%d", i+1)
				f.report(r, node, phases[i], 0, 0, "health check failed")
				if r = f.get(r.ID); r.State != store.RolloutRunning || r.Wave != i+2 {
					t.Fatalf("failure %d of %d tolerated: %+v", i+1, threshold, r)
				}
			}
			node := fmt.Sprintf("edge-%d", threshold+1)
			f.report(r, node, phases[threshold], 0, 0, "signature does not match")
			r = f.get(r.ID)
			if r.State != store.RolloutHalted || r.FinishedAt == nil || !strings.Contains(r.Reason, fmt.Sprintf("%d nodes failed, more than the %d tolerated", threshold+1, threshold)) ||
				!strings.Contains(r.Reason, "edge-1 (rolled-back: health check failed)") || !strings.Contains(r.Reason, node+" ("+phases[threshold]+": signature does not match)") {
				t.Fatalf("halted? %+v", r)
			}
			for _, n := range r.Nodes {
				if n.Wave > threshold+1 && n.State != store.NodeNotStarted {
					t.Fatalf("%s: %s, want not-started", n.Node, n.State)
				}
			}
			if got := f.updating(r); len(got) != 0 {
				t.Fatalf("a halted rollout updates %v", got)
			}
			if active, _ := f.st.ActiveRollouts(f.ctx); len(active) != 0 {
				t.Fatalf("nodes still held by the halted rollout: %v", active)
			}
			// A step later changes nothing: a halted rollout starts no wave.
			f.now = f.now.Add(time.Hour)
			if err := f.svc.Step(f.ctx); err != nil {
				t.Fatal(err)
			}
			if again := f.get(r.ID); again.State != store.RolloutHalted || again.Wave != r.Wave {
				t.Fatalf("after a step: %+v", again)
			}
		})
	}
}

// TestHaltedWaveFinishes: when a rollout halts, the other nodes of the
// wave under way keep their update and their outcome is still recorded.
func TestHaltedWaveFinishes(t *testing.T) {
	f := newFixture(t)
	for i := 1; i <= 4; i++ {
		f.node(fmt.Sprintf("edge-%d", i))
	}
	r := f.start(Request{Bundle: f.bundle("1.2.0", "amd64"), WaveSize: 2})
	f.report(r, "edge-2", protocol.UpdateDownloading, 0.3, 0, "")
	f.report(r, "edge-1", protocol.UpdateRolledBack, 0, 0, "agent did not reconnect")
	r = f.get(r.ID)
	if r.State != store.RolloutHalted || states(r)["edge-2"] != store.NodeUpdating || states(r)["edge-3"] != store.NodeNotStarted {
		t.Fatalf("halted %+v", r)
	}
	if got := f.updating(r); !slices.Equal(got, []string{"edge-2"}) {
		t.Fatalf("edge-2 lost its update when the rollout halted: %v", got)
	}
	if live, _ := f.st.LiveRollouts(f.ctx); len(live) != 1 {
		t.Fatal("a halted rollout with a node updating is not stepped")
	}
	f.report(r, "edge-2", protocol.UpdateCommitted, 1, time.Second, "")
	r = f.get(r.ID)
	if r.State != store.RolloutHalted || states(r)["edge-2"] != store.NodeCommitted || r.Counts[store.NodeCommitted] != 1 || r.Counts[store.NodeFailed] != 1 {
		t.Fatalf("after edge-2 committed: %+v", r)
	}
	if got := f.updating(r); len(got) != 0 {
		t.Fatalf("updating %v", got)
	}
	if live, _ := f.st.LiveRollouts(f.ctx); len(live) != 0 {
		t.Fatal("a settled halted rollout is still stepped")
	}
}

// TestRolloutTimeout: a node that reports no progress (a new phase, more
// downloaded) for health_seconds + download_seconds counts as failed; the
// same report again is not progress.
func TestRolloutTimeout(t *testing.T) {
	f := newFixture(t)
	f.node("edge-1")
	f.node("edge-2")
	r := f.start(Request{Bundle: f.bundle("1.2.0", "amd64"), HealthSeconds: 10, DownloadSeconds: 20, MaxFailures: intp(1)})
	step := func() {
		t.Helper()
		if err := f.svc.Step(f.ctx); err != nil {
			t.Fatal(err)
		}
	}
	f.now = f.now.Add(29 * time.Second)
	step()
	if states(f.get(r.ID))["edge-1"] != store.NodeUpdating {
		t.Fatal("timed out early")
	}
	f.report(r, "edge-1", protocol.UpdateDownloading, 0.4, 0, "")
	f.now = f.now.Add(29 * time.Second)
	f.report(r, "edge-1", protocol.UpdateDownloading, 0.4, 0, "") // no more downloaded: not progress
	step()
	if states(f.get(r.ID))["edge-1"] != store.NodeUpdating {
		t.Fatal("progress did not reset the timeout")
	}
	f.now = f.now.Add(2 * time.Second)
	step()
	r = f.get(r.ID)
	n := r.Nodes[0]
	if n.State != store.NodeFailed || !strings.Contains(n.Reason, "timeout: no progress for 30s") || !strings.Contains(n.Reason, "last phase: downloading") {
		t.Fatalf("edge-1 after 31s without progress: %+v", n)
	}
	// Within the threshold: the next wave starts; it times out too.
	if r.State != store.RolloutRunning || states(r)["edge-2"] != store.NodeUpdating {
		t.Fatalf("%+v", r)
	}
	f.now = f.now.Add(31 * time.Second)
	step()
	r = f.get(r.ID)
	if r.State != store.RolloutHalted || !strings.Contains(r.Reason, "edge-2 (timeout: no progress for 30s (health_seconds + download_seconds; last phase: none reported))") {
		t.Fatalf("%+v", r)
	}
	// A report after the timeout changes no state.
	f.report(r, "edge-1", protocol.UpdateCommitted, 1, time.Hour, "")
	if states(f.get(r.ID))["edge-1"] != store.NodeFailed {
		t.Fatal("a late report revived a timed-out node")
	}
}

// TestReportsOutOfOrder: a report older than the newest applied, the same
// report twice, and reports for another rollout, bundle or an unknown
// phase change nothing.
func TestReportsOutOfOrder(t *testing.T) {
	f := newFixture(t)
	f.node("edge-1")
	f.node("edge-2")
	r := f.start(Request{Bundle: f.bundle("1.2.0", "amd64"), MaxFailures: intp(5)})
	f.report(r, "edge-1", protocol.UpdateInstalling, 1, 10*time.Second, "")
	f.report(r, "edge-1", protocol.UpdateDownloading, 0.5, 5*time.Second, "") // sent before, arrived after
	n := f.get(r.ID).Nodes[0]
	if n.Phase != protocol.UpdateInstalling || n.Progress != 1 {
		t.Fatalf("a late report went back: %+v", n)
	}
	rev := func() int64 {
		row, _, err := f.st.RolloutByID(f.ctx, r.ID)
		if err != nil {
			t.Fatal(err)
		}
		return row.Rev
	}
	before := rev()
	f.now = f.now.Add(time.Second)
	f.report(r, "edge-1", protocol.UpdateInstalling, 1, 9*time.Second, "") // the same report, sent twice
	for _, u := range []protocol.UpdateStatus{
		{Rollout: r.ID, Bundle: strings.Repeat("f", 64), Phase: protocol.UpdateFailed, Time: f.now.Add(time.Minute)},
		{Rollout: r.ID, Bundle: r.Bundle, Phase: "exploded", Time: f.now.Add(time.Minute)},
		{Rollout: r.ID, Bundle: r.Bundle, Phase: protocol.UpdateFailed}, // no time
		{Rollout: "1.0.0-amd64-000000", Bundle: r.Bundle, Phase: protocol.UpdateFailed, Time: f.now.Add(time.Minute)},
		{Rollout: "../../etc", Bundle: r.Bundle, Phase: protocol.UpdateFailed, Time: f.now.Add(time.Minute)},
	} {
		if err := f.svc.OnUpdateStatus(f.ctx, "edge-1", u); err != nil {
			t.Fatal(err)
		}
	}
	if after := rev(); after != before {
		t.Fatalf("ignored reports wrote the rollout (rev %d → %d)", before, after)
	}
	// A committed report twice settles the node once.
	f.report(r, "edge-1", protocol.UpdateCommitted, 1, 20*time.Second, "")
	f.report(r, "edge-1", protocol.UpdateCommitted, 1, 20*time.Second, "")
	f.report(r, "edge-1", protocol.UpdateRolledBack, 1, 15*time.Second, "late")
	r = f.get(r.ID)
	if states(r)["edge-1"] != store.NodeCommitted || r.Counts[store.NodeFailed] != 0 || states(r)["edge-2"] != store.NodeUpdating {
		t.Fatalf("%+v", r)
	}
	// A node reporting for a rollout it is not updating in changes nothing.
	f.report(r, "edge-9", protocol.UpdateFailed, 0, time.Hour, "")
	if r2 := f.get(r.ID); r2.Counts[store.NodeFailed] != 0 {
		t.Fatalf("%+v", r2)
	}
}

// TestStoredReports: Step applies what the fleet intake stored (the
// newest update status per node), which is how reports reach the engine
// in the console.
func TestStoredReports(t *testing.T) {
	f := newFixture(t)
	f.node("edge-1")
	r := f.start(Request{Bundle: f.bundle("1.2.0", "amd64")})
	save := func(phase string, at time.Time) {
		t.Helper()
		b, _ := json.Marshal(protocol.UpdateStatus{Rollout: r.ID, Bundle: r.Bundle, Version: r.Version, Running: "1.2.0", Slot: "b", Phase: phase, Progress: 1, Time: at})
		if err := f.st.SaveNodeUpdate(f.ctx, &store.NodeUpdate{Node: "edge-1", StatusJSON: string(b), TimeUS: at.UnixMicro(), ReceivedUS: f.now.UnixMicro()}); err != nil {
			t.Fatal(err)
		}
	}
	save(protocol.UpdateChecking, f.now)
	if err := f.svc.Step(f.ctx); err != nil {
		t.Fatal(err)
	}
	if n := f.get(r.ID).Nodes[0]; n.Phase != protocol.UpdateChecking || n.Running != "1.2.0" {
		t.Fatalf("%+v", n)
	}
	save(protocol.UpdateCommitted, f.now.Add(time.Second))
	if err := f.svc.Step(f.ctx); err != nil {
		t.Fatal(err)
	}
	if r = f.get(r.ID); r.State != store.RolloutCompleted {
		t.Fatalf("%+v", r)
	}
}

// TestCancel: nodes updating have the update withdrawn, nodes pending stay
// untouched; a finished rollout cannot be cancelled.
func TestCancel(t *testing.T) {
	f := newFixture(t)
	for i := 1; i <= 3; i++ {
		f.node(fmt.Sprintf("edge-%d", i))
	}
	r := f.start(Request{Bundle: f.bundle("1.2.0", "amd64")})
	f.report(r, "edge-1", protocol.UpdateDownloading, 0.1, 0, "")
	c, err := f.svc.Cancel(f.ctx, r.ID, "alice")
	if err != nil {
		t.Fatal(err)
	}
	if c.State != store.RolloutCancelled || c.Reason != "cancelled by alice" || c.FinishedAt == nil ||
		states(c)["edge-1"] != store.NodeCancelled || states(c)["edge-2"] != store.NodeNotStarted {
		t.Fatalf("cancelled %+v", c)
	}
	if got := f.updating(r); len(got) != 0 {
		t.Fatalf("a cancelled rollout updates %v", got)
	}
	if _, err := f.svc.Cancel(f.ctx, r.ID, "alice"); !errors.Is(err, ErrFinished) {
		t.Fatalf("cancel twice: %v", err)
	}
	if _, err := f.svc.Cancel(f.ctx, "1.0.0-amd64-000000", "alice"); !errors.Is(err, store.ErrNotFound) {
		t.Fatalf("cancel unknown: %v", err)
	}
	f.report(r, "edge-1", protocol.UpdateCommitted, 1, time.Minute, "")
	if states(f.get(r.ID))["edge-1"] != store.NodeCancelled {
		t.Fatal("a report changed a cancelled node")
	}
	// The nodes are free for the next rollout.
	if r2 := f.start(Request{Bundle: r.Bundle}); len(r2.Nodes) != 3 {
		t.Fatalf("after cancel: %+v", r2)
	}
}

// TestOneActiveRolloutPerNode: a node pending or updating in a rollout is
// skipped by the next; when every matching node is skipped, nothing starts.
func TestOneActiveRolloutPerNode(t *testing.T) {
	f := newFixture(t)
	f.node("edge-1")
	f.node("edge-2")
	f.node("edge-3", "arch=arm64")
	amd := f.bundle("1.2.0", "amd64")
	r := f.start(Request{Bundle: amd, Selector: Selector{Nodes: []string{"edge-1"}}})
	r2 := f.start(Request{Bundle: f.bundle("1.3.0", "amd64")})
	if len(r2.Nodes) != 1 || r2.Nodes[0].Node != "edge-2" || len(r2.Skipped) != 2 || r2.Skipped[0].Reason != "in rollout "+r.ID {
		t.Fatalf("second rollout %+v", r2)
	}
	_, err := f.svc.Create(f.ctx, Request{Bundle: amd}, "ops")
	var none *NoTargetsError
	if !errors.As(err, &none) || none.Matched != 3 || len(none.Skipped) != 3 {
		t.Fatalf("every node busy or of another arch: %v %+v", err, none)
	}
	if _, err := f.svc.Create(f.ctx, Request{Bundle: amd, Selector: Selector{Labels: map[string]string{"site": "mars"}}}, "ops"); !errors.As(err, &none) || none.Matched != 0 || err.Error() != "no node matches the selector" {
		t.Fatalf("no match: %v", err)
	}
	if got := f.updating(r); !slices.Equal(got, []string{"edge-1"}) {
		t.Fatalf("edge-1's desired state: %v", got)
	}
}

// TestBadRolloutRequests: malformed requests are refused before anything
// is stored.
func TestBadRolloutRequests(t *testing.T) {
	f := newFixture(t)
	f.node("edge-1")
	id := f.bundle("1.2.0", "amd64")
	pct := func(p float64) *float64 { return &p }
	for name, req := range map[string]Request{
		"bad bundle id":         {Bundle: "xyz"},
		"percent 0":             {Bundle: id, Percent: intp(0)},
		"percent 101":           {Bundle: id, Percent: intp(101)},
		"negative wave size":    {Bundle: id, WaveSize: -1},
		"both thresholds":       {Bundle: id, MaxFailures: intp(1), MaxFailurePct: pct(10)},
		"negative max failures": {Bundle: id, MaxFailures: intp(-1)},
		"failure pct 150":       {Bundle: id, MaxFailurePct: pct(150)},
		"health 4s":             {Bundle: id, HealthSeconds: 4},
		"health 2h":             {Bundle: id, HealthSeconds: 7200},
		"download 5s":           {Bundle: id, DownloadSeconds: 5},
		"bad node name":         {Bundle: id, Selector: Selector{Nodes: []string{"Edge_1"}}},
		"empty label key":       {Bundle: id, Selector: Selector{Labels: map[string]string{"": "x"}}},
		"negative percent":      {Bundle: id, Percent: intp(-5)},
	} {
		if _, err := f.svc.Create(f.ctx, req, "ops"); !errors.Is(err, ErrInvalid) {
			t.Errorf("%s: %v, want ErrInvalid", name, err)
		}
	}
	if _, err := f.svc.Create(f.ctx, Request{Bundle: strings.Repeat("e", 64)}, "ops"); !errors.Is(err, store.ErrNotFound) {
		t.Errorf("unknown bundle: %v", err)
	}
	if _, err := f.svc.Create(f.ctx, Request{Bundle: id, Selector: Selector{Nodes: []string{"edge-9"}}}, "ops"); !errors.Is(err, store.ErrNotFound) {
		t.Errorf("unknown node: %v", err)
	}
	if rs, _ := f.svc.Rollouts(f.ctx, "", 100); len(rs) != 0 {
		t.Fatalf("refused requests stored %+v", rs)
	}
	if _, err := f.svc.Rollouts(f.ctx, "paused", 100); !errors.Is(err, ErrInvalid) {
		t.Errorf("list by unknown state: %v", err)
	}
}

// TestUnpublishedRetried: a desired state the broker did not take is
// published by the next step.
func TestUnpublishedRetried(t *testing.T) {
	f := newFixture(t)
	f.node("edge-1")
	f.bus.fail = errors.New("broker down")
	r := f.start(Request{Bundle: f.bundle("1.2.0", "amd64")})
	if got := f.updating(r); len(got) != 0 {
		t.Fatalf("published through a failing broker: %v", got)
	}
	f.bus.mu.Lock()
	f.bus.fail = nil
	f.bus.mu.Unlock()
	if err := f.svc.Step(f.ctx); err != nil {
		t.Fatal(err)
	}
	if got := f.updating(r); !slices.Equal(got, []string{"edge-1"}) {
		t.Fatalf("after the broker came back: %v", got)
	}
}
