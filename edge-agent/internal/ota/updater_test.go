package ota

import (
	"bytes"
	"os"
	"path/filepath"
	"runtime"
	"slices"
	"strings"
	"testing"
	"time"

	bundle "github.com/cloudskin/cloudskin/shared/ota"
	"github.com/cloudskin/cloudskin/shared/protocol"
)

// install runs an update from the process (version, exe) until it asks for
// the restart into the new slot.
func (r *rig) install(version, exe string, spec *protocol.UpdateSpec) *Updater {
	r.t.Helper()
	u := r.process(version, exe)
	before := r.restarts.Load()
	_, done := r.run(u)
	u.Set(spec)
	<-done
	if r.restarts.Load() != before+1 {
		r.t.Fatalf("no restart after the install; status %+v", u.Status())
	}
	return u
}

// An update goes factory → slot a: installed, tried, committed; the same
// spec again does nothing.
func TestUpdateCommits(t *testing.T) {
	r := newRig(t)
	b := makeBundle(t, "1.1.0", runtimeArch(), r.priv)
	spec := specFor("r1", b, "1.1.0")
	r.con.add(spec, b)

	u := r.install("1.0.0", r.factory, spec)
	if s := u.Status(); s.Phase != protocol.UpdateRestarting || s.Slot != SlotFactory || s.Running != "1.0.0" || s.Progress != 1 {
		t.Fatalf("status after install: %+v", s)
	}
	st := r.state()
	if st.Active != SlotFactory || st.Trying != SlotA || st.Tries != 0 || st.Pending == nil || st.Pending.Version != "1.1.0" || st.Factory != r.factory {
		t.Fatalf("state after install: %+v", st)
	}
	if got := r.kinds(); !slices.Equal(got, []string{EventInstalled}) {
		t.Fatalf("events %v", got)
	}
	if _, err := os.Stat(u.partPath(spec)); !os.IsNotExist(err) {
		t.Fatalf("download kept after the install: %v", err)
	}

	// The restart: boot selection counts a try and runs slot a.
	st, target := r.boot("1.0.0")
	if target != SlotA || st.Tries != 1 {
		t.Fatalf("boot: target %s tries %d", target, st.Tries)
	}
	if r.binaryIn(SlotA) != string(binaryFor("1.1.0")) {
		t.Fatal("slot a does not hold release 1.1.0")
	}

	// The new release checks its health, then commits.
	n := r.process("1.1.0", slotBinary(r.dir, SlotA))
	n.Set(spec) // the retained desired state again: nothing new
	stop, _ := r.run(n)
	waitPhase(t, n, protocol.UpdateChecking)
	r.healthy.Store(true)
	s := waitPhase(t, n, protocol.UpdateCommitted)
	if s.Slot != SlotA || s.Running != "1.1.0" || s.Version != "1.1.0" || s.Rollout != "r1" {
		t.Fatalf("committed status %+v", s)
	}
	stop()
	st = r.state()
	if st.Active != SlotA || st.Previous != SlotFactory || st.Trying != "" || st.Last == nil || !st.Last.Reported {
		t.Fatalf("state after commit: %+v", st)
	}
	if got := r.kinds(); !slices.Equal(got, []string{EventInstalled, EventCommitted}) {
		t.Fatalf("events %v", got)
	}
	// Every later start runs slot a, without counting.
	if st, target := r.boot("1.0.0"); target != SlotA || st.Tries != 0 {
		t.Fatalf("boot after commit: %s %d", target, st.Tries)
	}
	// The same spec again: nothing downloaded, nothing reported.
	reqs, _ := r.con.stats()
	m := r.process("1.1.0", slotBinary(r.dir, SlotA))
	stop, _ = r.run(m)
	m.Set(spec)
	m.Set(spec)
	if s := m.Status(); s == nil || s.Phase != protocol.UpdateCommitted {
		t.Fatalf("status %+v", s)
	}
	stop()
	if again, _ := r.con.stats(); again != reqs || len(r.kinds()) != 2 {
		t.Fatalf("the same spec was acted on again: %d requests (was %d), events %v", again, reqs, r.kinds())
	}

	// The next release goes to slot b, from slot a.
	b2 := makeBundle(t, "1.2.0", runtimeArch(), r.priv)
	spec2 := specFor("r2", b2, "1.2.0")
	r.con.add(spec2, b2)
	r.install("1.1.0", slotBinary(r.dir, SlotA), spec2)
	if st := r.state(); st.Active != SlotA || st.Trying != SlotB {
		t.Fatalf("second install: %+v", st)
	}
	if r.binaryIn(SlotA) != string(binaryFor("1.1.0")) || r.binaryIn(SlotB) != string(binaryFor("1.2.0")) {
		t.Fatal("slots a/b do not hold 1.1.0/1.2.0")
	}
}

// A release that fails its health check rolls back by itself, says why,
// and the same spec is not tried again.
func TestHealthCheckFailureRollsBack(t *testing.T) {
	r := newRig(t)
	b := makeBundle(t, "1.1.0", runtimeArch(), r.priv)
	spec := specFor("r1", b, "1.1.0")
	spec.HealthSeconds = 1
	r.con.add(spec, b)
	r.install("1.0.0", r.factory, spec)
	if _, target := r.boot("1.0.0"); target != SlotA {
		t.Fatalf("boot picked %s", target)
	}
	n := r.process("1.1.0", slotBinary(r.dir, SlotA))
	before := r.restarts.Load()
	_, done := r.run(n)
	<-done
	if r.restarts.Load() != before+1 {
		t.Fatal("no restart after the failed health check")
	}
	s := n.Status()
	if s.Phase != protocol.UpdateRolledBack || !strings.Contains(s.Error, "health check failed: not connected to the console") {
		t.Fatalf("status %+v", s)
	}
	ev := r.lastEvent()
	if ev.kind != EventRolledBack || !strings.Contains(ev.msg, "not connected") || ev.d.Version != "1.1.0" || ev.d.Running != "1.1.0" {
		t.Fatalf("event %+v", ev)
	}
	st := r.state()
	if st.Active != SlotFactory || st.Trying != "" || st.Last.Phase != protocol.UpdateRolledBack || !st.Last.Reported {
		t.Fatalf("state %+v", st)
	}
	// The restart runs the old release, which reports the outcome
	// (without a second event) and does not retry the spec.
	if _, target := r.boot("1.0.0"); target != SlotFactory {
		t.Fatalf("boot after rollback picked %s", target)
	}
	reqs, _ := r.con.stats()
	o := r.process("1.0.0", r.factory)
	stop, _ := r.run(o)
	o.Set(spec)
	s = o.Status()
	if s.Phase != protocol.UpdateRolledBack || s.Running != "1.0.0" || s.Slot != SlotFactory || s.Version != "1.1.0" {
		t.Fatalf("old release's status %+v", s)
	}
	stop()
	if again, _ := r.con.stats(); again != reqs {
		t.Fatal("a rolled-back spec was downloaded again")
	}
	if got := r.kinds(); !slices.Equal(got, []string{EventInstalled, EventRolledBack}) {
		t.Fatalf("events %v", got)
	}
}

// A release that keeps crashing before its health check passes is rolled
// back by the boot selection after MaxTries starts; the old release
// reports it.
func TestCrashLoopRollsBack(t *testing.T) {
	r := newRig(t)
	b := makeBundle(t, "1.1.0", runtimeArch(), r.priv)
	spec := specFor("r1", b, "1.1.0")
	r.con.add(spec, b)
	r.install("1.0.0", r.factory, spec)
	for i := 1; i <= MaxTries; i++ {
		st, target := r.boot("1.0.0")
		if target != SlotA || st.Tries != i {
			t.Fatalf("start %d: target %s tries %d", i, target, st.Tries)
		}
		// The new release starts and dies (kill -9) during its check.
		n := r.process("1.1.0", slotBinary(r.dir, SlotA))
		if s := n.Status(); s == nil || s.Phase != protocol.UpdateChecking {
			t.Fatalf("start %d: status %+v", i, s)
		}
	}
	st, target := r.boot("1.0.0")
	if target != SlotFactory || st.Trying != "" || st.Last == nil || st.Last.Phase != protocol.UpdateRolledBack ||
		!strings.Contains(st.Last.Error, "crash loop") || st.Last.Reported {
		t.Fatalf("after %d crashes: target %s state %+v last %+v", MaxTries, target, st, st.Last)
	}
	o := r.process("1.0.0", r.factory)
	stop, _ := r.run(o)
	waitFor(t, "the rollback event", func() bool { return r.lastEvent().kind == EventRolledBack })
	stop()
	if ev := r.lastEvent(); !strings.Contains(ev.msg, "crash loop: release 1.1.0 (slot a) started 3 times") {
		t.Fatalf("event %+v", ev)
	}
	if s := o.Status(); s.Phase != protocol.UpdateRolledBack || s.Slot != SlotFactory {
		t.Fatalf("status %+v", s)
	}
	if st := r.state(); !st.Last.Reported {
		t.Fatal("rollback not marked reported")
	}
	// A later start reports nothing again.
	n := len(r.kinds())
	o = r.process("1.0.0", r.factory)
	stop, _ = r.run(o)
	stop()
	if len(r.kinds()) != n {
		t.Fatalf("rollback reported twice: %v", r.kinds())
	}
}

// kill -9 at every step of an install leaves a node whose boot selection
// picks a complete slot, and the update then completes.
func TestCrashAtEachStep(t *testing.T) {
	steps := []struct {
		step  string
		tried bool // the next start runs the new release
	}{
		{"downloading", false},
		{"downloaded", false},
		{"extracted", false},
		{"manifest", false},
		{"old-removed", false},
		{"renamed", false},
		{"state-written", true},
	}
	for _, tc := range steps {
		t.Run(tc.step, func(t *testing.T) {
			r := newRig(t)
			// 1.0.5 goes to slot a, then 1.1.0 to slot b: b is active and
			// a, holding the older release, is where 1.2.0 goes.
			exe, running := r.factory, "1.0.0"
			for _, rel := range []struct{ v, rollout string }{{"1.0.5", "r0"}, {"1.1.0", "r1"}} {
				b := makeBundle(t, rel.v, runtimeArch(), r.priv)
				spec := specFor(rel.rollout, b, rel.v)
				r.con.add(spec, b)
				r.install(running, exe, spec)
				_, slot := r.boot("1.0.0")
				exe, running = slotBinary(r.dir, slot), rel.v
				n := r.process(running, exe)
				r.healthy.Store(true)
				stop, _ := r.run(n)
				waitPhase(t, n, protocol.UpdateCommitted)
				stop()
				r.healthy.Store(false)
			}
			active, inactive := SlotB, SlotA
			if st := r.state(); st.Active != active || st.Previous != SlotA || r.binaryIn(inactive) != string(binaryFor("1.0.5")) {
				t.Fatalf("setup: %+v", st)
			}
			want := active
			if tc.tried {
				want = inactive
			}

			b := makeBundle(t, "1.2.0", runtimeArch(), r.priv)
			spec := specFor("r2", b, "1.2.0")
			r.con.add(spec, b)
			u := r.process("1.1.0", slotBinary(r.dir, active))
			u.crash = func(step string) bool { return step == tc.step }
			_, done := r.run(u)
			u.Set(spec)
			<-done // the simulated kill -9
			if fi, err := os.Stat(u.partPath(spec)); tc.step == "downloading" && (err != nil || fi.Size() >= spec.Size) {
				t.Fatalf("the crash was not mid-download: %v", err)
			}

			// The power comes back: the service manager starts the package.
			st, target := r.boot("1.0.0")
			if target != want {
				t.Fatalf("boot picked %s, want %s (state %+v)", target, want, st)
			}
			if err := slotComplete(r.dir, target); err != nil {
				t.Fatalf("boot picked an incomplete slot %s: %v", target, err)
			}
			bin := binaryFor("1.1.0")
			if target == inactive {
				bin = binaryFor("1.2.0")
			}
			if r.binaryIn(target) != string(bin) {
				t.Fatalf("slot %s does not hold the expected release", target)
			}
			for _, s := range []string{SlotA, SlotB} {
				if _, err := os.Stat(filepath.Join(r.dir, slotsDir, s+newSuffix)); !os.IsNotExist(err) {
					t.Fatalf("leftover %s%s after boot", s, newSuffix)
				}
			}

			// The update then completes from wherever it stopped.
			if target == active {
				r.install("1.1.0", slotBinary(r.dir, active), spec)
				if _, target = r.boot("1.0.0"); target != inactive {
					t.Fatalf("after the resumed install boot picked %s", target)
				}
			}
			n := r.process("1.2.0", slotBinary(r.dir, inactive))
			r.healthy.Store(true)
			stop, _ := r.run(n)
			waitPhase(t, n, protocol.UpdateCommitted)
			stop()
			if st := r.state(); st.Active != inactive || st.Version[inactive] != "1.2.0" {
				t.Fatalf("final state %+v", st)
			}
		})
	}
}

// Refused bundles: phase refused, an ota.refused event saying why, nothing
// installed, and the same spec is not downloaded again.
func TestRefusals(t *testing.T) {
	other := "arm64"
	if runtimeArch() == "arm64" {
		other = "amd64"
	}
	cases := []struct {
		name    string
		running string
		make    func(r *rig) ([]byte, *protocol.UpdateSpec)
		noKey   bool
		reason  string
	}{
		{name: "unsigned", running: "1.0.0", reason: "unsigned", make: func(r *rig) ([]byte, *protocol.UpdateSpec) {
			b := unsigned(r.t, makeBundle(r.t, "1.1.0", runtimeArch(), r.priv))
			return b, specFor("r", b, "1.1.0")
		}},
		{name: "tampered", running: "1.0.0", reason: "tampered", make: func(r *rig) ([]byte, *protocol.UpdateSpec) {
			b, err := bundle.Rewrite(makeBundle(r.t, "1.1.0", runtimeArch(), r.priv), func(name string, body []byte) ([]byte, bool) {
				if name == bundle.Product {
					body = bytes.Replace(body, []byte("# cloudskin-agent"), []byte("# Cloudskin-agent"), 1) // its sha256 no longer matches
				}
				return body, true
			})
			if err != nil {
				r.t.Fatal(err)
			}
			return b, specFor("r", b, "1.1.0")
		}},
		{name: "other key", running: "1.0.0", reason: "does not match the release key", make: func(r *rig) ([]byte, *protocol.UpdateSpec) {
			_, priv := keys(r.t)
			b := makeBundle(r.t, "1.1.0", runtimeArch(), priv)
			return b, specFor("r", b, "1.1.0")
		}},
		{name: "wrong arch", running: "1.0.0", reason: "wrong arch: bundle is for " + other, make: func(r *rig) ([]byte, *protocol.UpdateSpec) {
			b := makeBundle(r.t, "1.1.0", other, r.priv)
			return b, specFor("r", b, "1.1.0")
		}},
		{name: "downgrade", running: "1.1.0", reason: "not newer: bundle 1.0.0, running 1.1.0", make: func(r *rig) ([]byte, *protocol.UpdateSpec) {
			b := makeBundle(r.t, "1.0.0", runtimeArch(), r.priv)
			return b, specFor("r", b, "1.2.0") // the spec lies about the version
		}},
		{name: "downgrade spec", running: "1.1.0", reason: "not newer: the update asks for 1.0.0, running 1.1.0", make: func(r *rig) ([]byte, *protocol.UpdateSpec) {
			b := makeBundle(r.t, "1.0.0", runtimeArch(), r.priv)
			return b, specFor("r", b, "1.0.0")
		}},
		{name: "version mismatch", running: "1.0.0", reason: "carries release 1.2.0, the update asks for 1.1.0", make: func(r *rig) ([]byte, *protocol.UpdateSpec) {
			b := makeBundle(r.t, "1.2.0", runtimeArch(), r.priv)
			return b, specFor("r", b, "1.1.0")
		}},
		{name: "sha mismatch", running: "1.0.0", reason: "sha256", make: func(r *rig) ([]byte, *protocol.UpdateSpec) {
			b := makeBundle(r.t, "1.1.0", runtimeArch(), r.priv)
			spec := specFor("r", b, "1.1.0")
			b = append([]byte(nil), b...)
			b[len(b)-1] ^= 1 // served bytes differ from what the spec says
			return b, spec
		}},
		{name: "no key", running: "1.0.0", noKey: true, reason: "no release key configured", make: func(r *rig) ([]byte, *protocol.UpdateSpec) {
			b := makeBundle(r.t, "1.1.0", runtimeArch(), r.priv)
			return b, specFor("r", b, "1.1.0")
		}},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			r := newRig(t)
			b, spec := tc.make(r)
			r.con.add(spec, b)
			u := r.process(tc.running, r.factory, func(c *Config) {
				if tc.noKey {
					_, err := LoadKey("")
					c.Key, c.KeyProblem = nil, err.Error()
				}
			})
			stop, _ := r.run(u)
			u.Set(spec)
			s := waitPhase(t, u, protocol.UpdateRefused)
			if !strings.Contains(s.Error, tc.reason) {
				t.Fatalf("error %q does not say %q", s.Error, tc.reason)
			}
			waitFor(t, "the event", func() bool { return len(r.kinds()) > 0 })
			ev := r.lastEvent()
			if ev.kind != EventRefused || !strings.Contains(ev.msg, tc.reason) || ev.d.Reason != s.Error || ev.d.Bundle != spec.Bundle {
				t.Fatalf("event %+v", ev)
			}
			reqs, _ := r.con.stats()
			u.Set(spec) // the same spec again: not retried
			u.Set(spec)
			stop()
			if again, _ := r.con.stats(); again != reqs || len(r.kinds()) != 1 {
				t.Fatalf("refused spec retried: %d requests (was %d), events %v", again, reqs, r.kinds())
			}
			// Nothing installed, nothing left over.
			for _, p := range []string{filepath.Join(slotsDir, SlotA), filepath.Join(slotsDir, SlotA+newSuffix), filepath.Join(slotsDir, SlotB)} {
				if _, err := os.Stat(filepath.Join(r.dir, p)); !os.IsNotExist(err) {
					t.Fatalf("%s exists after a refusal", p)
				}
			}
			if _, err := os.Stat(u.partPath(spec)); !os.IsNotExist(err) {
				t.Fatal("the refused download was kept")
			}
			st := r.state()
			if st.Trying != "" || st.Active != SlotFactory || st.Last.Phase != protocol.UpdateRefused {
				t.Fatalf("state %+v", st)
			}
			// Even after a restart.
			u = r.process(tc.running, r.factory)
			stop, _ = r.run(u)
			u.Set(spec)
			stop()
			if again, _ := r.con.stats(); again != reqs || len(r.kinds()) != 1 {
				t.Fatal("refused spec retried after a restart")
			}
			// A new spec is acted on.
			if tc.noKey {
				return
			}
			good := makeBundle(t, "1.5.0", runtimeArch(), r.priv)
			spec2 := specFor("r-fixed", good, "1.5.0")
			r.con.add(spec2, good)
			r.install(tc.running, r.factory, spec2)
		})
	}
}

// unsigned drops manifest.sig from a bundle.
func unsigned(t *testing.T, b []byte) []byte {
	t.Helper()
	return stripEntry(t, b, bundle.SignatureName)
}

// A console that does not have the bundle fails the update for good.
func TestDownloadNotFoundFails(t *testing.T) {
	r := newRig(t)
	b := makeBundle(t, "1.1.0", runtimeArch(), r.priv)
	spec := specFor("r1", b, "1.1.0")
	u := r.process("1.0.0", r.factory)
	stop, _ := r.run(u)
	defer stop()
	u.Set(spec)
	s := waitPhase(t, u, protocol.UpdateFailed)
	if !strings.Contains(s.Error, "404") {
		t.Fatalf("status %+v", s)
	}
	waitFor(t, "event", func() bool { return r.lastEvent().kind == EventFailed })
}

// A spec replaced during its download is dropped; the new one runs.
func TestSpecChangeCancelsDownload(t *testing.T) {
	r := newRig(t)
	slow := makeBundle(t, "1.1.0", runtimeArch(), r.priv)
	spec1 := specFor("r1", slow, "1.1.0")
	// The first bundle's connection keeps dropping: the updater backs off
	// and retries until the spec changes.
	r.con.add(spec1, slow)
	r.con.drops = []int64{1000, 1000, 1000, 1000, 1000, 1000, 1000, 1000}
	u := r.process("1.0.0", r.factory, func(c *Config) { c.MaxBackoff = 10 * time.Second })
	_, done := r.run(u)
	u.Set(spec1)
	waitPhase(t, u, protocol.UpdateDownloading)
	b2 := makeBundle(t, "1.2.0", runtimeArch(), r.priv)
	spec2 := specFor("r2", b2, "1.2.0")
	r.con.mu.Lock()
	r.con.drops = nil
	r.con.mu.Unlock()
	r.con.add(spec2, b2)
	u.Set(spec2)
	<-done
	if st := r.state(); st.Pending == nil || st.Pending.Version != "1.2.0" {
		t.Fatalf("state %+v", st)
	}
	if _, err := os.Stat(u.partPath(spec1)); !os.IsNotExist(err) {
		t.Fatal("the superseded download was kept")
	}
}

func runtimeArch() string { return runtime.GOARCH }

// stripEntry rewrites a bundle without the named entry.
func stripEntry(t *testing.T, b []byte, name string) []byte {
	t.Helper()
	out, err := bundle.Rewrite(b, func(n string, body []byte) ([]byte, bool) { return body, n != name })
	if err != nil {
		t.Fatal(err)
	}
	return out
}
