package ota

import (
	"context"
	"crypto/ed25519"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"os"
	"path/filepath"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	bundle "github.com/cloudskin/cloudskin/shared/ota"
	"github.com/cloudskin/cloudskin/shared/protocol"
)

// Node event kinds of an update (protocol.NodeEvent.Kind); each carries a
// Detail.
const (
	EventRefused    = "ota.refused"     // the bundle failed verification, or no release key: nothing installed
	EventFailed     = "ota.failed"      // download or install failed for good
	EventInstalled  = "ota.installed"   // installed in the inactive slot; restarting into it
	EventCommitted  = "ota.committed"   // the new release passed its health check and is kept
	EventRolledBack = "ota.rolled_back" // back on the previous release: health check failed, crash loop or not startable
	EventBoot       = "ota.boot"        // the boot selection changed the active slot on its own
)

// Detail is the Detail of the ota.* events.
type Detail struct {
	Rollout string `json:"rollout,omitempty"`
	Bundle  string `json:"bundle,omitempty"`
	Version string `json:"version,omitempty"` // the release the update brings
	Running string `json:"running,omitempty"` // the release that took the event
	Slot    string `json:"slot,omitempty"`    // the slot the update went to
	Reason  string `json:"reason,omitempty"`
}

// Config is what an Updater needs from the agent.
type Config struct {
	Dir     string // DATA/ota
	Version string // the running release
	Arch    string // runtime.GOARCH
	// Key is the release key bundles must be signed with; nil refuses
	// every update, with KeyProblem as the reason.
	Key        ed25519.PublicKey
	KeyProblem string
	// Get fetches a path on the console with the node's credentials.
	Get func(ctx context.Context, path string, h http.Header) (*http.Response, error)
	// Event adds a node event to the durable event outbox.
	Event func(kind, message string, d Detail) error
	// Healthy is the new release's health check; why says what is missing.
	Healthy func() (ok bool, why string)
	// Restart asks the agent to stop cleanly and Reexec.
	Restart func()
	// Changed says the status changed (report the actual state soon).
	Changed func()
	// Registry takes the metrics; nil: not registered.
	Registry prometheus.Registerer
	Log      *slog.Logger

	// Executable is the running binary (default os.Executable).
	Executable     string
	HealthInterval time.Duration // default 1s
	StallTimeout   time.Duration // a download with no data for this long resumes on a new connection; default 60s
	MaxBackoff     time.Duration // between download retries; default 1m
	Now            func() time.Time
}

// LoadKey reads the release public key from a file path or key text; an
// empty s means no key is configured.
func LoadKey(s string) (ed25519.PublicKey, error) {
	if s == "" {
		return nil, errors.New("no release key configured (build with -ldflags -X main.releaseKey=... or run with --release-key)")
	}
	k, err := bundle.LoadPublicKey(s)
	if err != nil {
		return nil, fmt.Errorf("release key unusable: %w", err)
	}
	return k, nil
}

// Updater runs the node's over-the-air updates, one at a time, towards the
// desired state's update spec.
type Updater struct {
	cfg  Config
	log  *slog.Logger
	slot string // the slot this process runs from
	m    *metrics
	wake chan struct{}

	mu       sync.Mutex
	st       State
	want     *protocol.UpdateSpec
	job      *job
	checking bool
	status   *protocol.UpdateStatus

	// crash, in tests, stops the update at a step without any cleanup, as
	// a kill -9 there would.
	crash func(step string) bool
}

// job is the update in flight.
type job struct {
	spec   protocol.UpdateSpec
	cancel context.CancelFunc
	// committed: the state names the new slot; a spec change no longer
	// cancels the job.
	committed bool
}

var errCrashed = errors.New("simulated crash")

// New loads the update state. A process that is not the slot being tried
// (the boot selection did not start it) ends that trial: rolled back.
func New(cfg Config) (*Updater, error) {
	if cfg.Log == nil {
		cfg.Log = slog.New(slog.DiscardHandler)
	}
	if cfg.HealthInterval <= 0 {
		cfg.HealthInterval = time.Second
	}
	if cfg.StallTimeout <= 0 {
		cfg.StallTimeout = time.Minute
	}
	if cfg.MaxBackoff <= 0 {
		cfg.MaxBackoff = time.Minute
	}
	if cfg.Now == nil {
		cfg.Now = time.Now
	}
	if cfg.Executable == "" {
		exe, err := os.Executable()
		if err != nil {
			return nil, err
		}
		cfg.Executable = exe
	}
	if err := os.MkdirAll(cfg.Dir, 0o700); err != nil {
		return nil, fmt.Errorf("ota dir: %w", err)
	}
	u := &Updater{cfg: cfg, log: cfg.Log.With("component", "ota"), wake: make(chan struct{}, 1), crash: func(string) bool { return false }}
	u.m = newMetrics(cfg.Registry)
	st, err := loadState(cfg.Dir)
	if err != nil {
		u.log.Error("ota: state unusable; starting afresh", "err", err)
	}
	u.st = st
	u.slot = slotOfPath(cfg.Dir, cfg.Executable)
	switch {
	case st.Trying != "" && st.Trying == u.slot:
		u.checking = true
		if u.st.Pending == nil {
			u.st.Pending = &Pending{Version: cfg.Version}
		}
		p := u.st.Pending
		u.setStatusLocked(&protocol.UpdateStatus{Rollout: p.Rollout, Bundle: p.Bundle, Version: p.Version, Phase: protocol.UpdateChecking, Progress: 1})
	case st.Trying != "":
		u.st.rollback(fmt.Sprintf("release %s (slot %s) was not started by the boot selection; release %s runs", st.versionOf(st.Trying), st.Trying, cfg.Version), cfg.Now())
		if err := saveState(cfg.Dir, u.st); err != nil {
			return nil, fmt.Errorf("ota state: %w", err)
		}
	}
	if !u.checking && u.st.Last != nil {
		u.setStatusLocked(u.outcomeStatus(u.st.Last))
	}
	return u, nil
}

// Slot is the slot this process runs from.
func (u *Updater) Slot() string { return u.slot }

// Set takes the desired state's update spec (nil: none). A repeat of the
// spec in progress or of the last finished one does nothing; another spec
// cancels a download in progress.
func (u *Updater) Set(spec *protocol.UpdateSpec) {
	if u == nil {
		return
	}
	u.mu.Lock()
	if spec != nil {
		c := *spec
		spec = &c
	}
	u.want = spec
	if j := u.job; j != nil && !j.committed && (spec == nil || !sameUpdate(spec, &j.spec)) {
		j.cancel()
	}
	u.mu.Unlock()
	select {
	case u.wake <- struct{}{}:
	default:
	}
}

func sameUpdate(a *protocol.UpdateSpec, b *protocol.UpdateSpec) bool {
	return a.Rollout == b.Rollout && a.Bundle == b.Bundle
}

// Status is where the node's newest update stands, for the actual state;
// nil when there is nothing to say.
func (u *Updater) Status() *protocol.UpdateStatus {
	if u == nil {
		return nil
	}
	u.mu.Lock()
	defer u.mu.Unlock()
	if u.status == nil {
		return nil
	}
	s := *u.status
	return &s
}

// Run reports what a previous process left to report, finishes the health
// check if this process is the release being tried, then acts on update
// specs until ctx ends.
func (u *Updater) Run(ctx context.Context) error {
	u.reportPending()
	if u.checking {
		if restart := u.check(ctx); restart {
			u.cfg.Restart()
			return nil
		}
	}
	for {
		if spec := u.next(); spec != nil {
			switch u.runJob(ctx, spec) {
			case jobRestart:
				u.cfg.Restart()
				return nil
			case jobCrashed:
				return nil
			}
			continue
		}
		select {
		case <-ctx.Done():
			return nil
		case <-u.wake:
		}
	}
}

// next returns the spec to act on, if any.
func (u *Updater) next() *protocol.UpdateSpec {
	u.mu.Lock()
	defer u.mu.Unlock()
	w := u.want
	if w == nil || u.checking || u.job != nil {
		return nil
	}
	if l := u.st.Last; l != nil && l.Rollout == w.Rollout && l.Bundle == w.Bundle {
		return nil // done: committed, rolled back, refused or failed
	}
	if w.Version == u.cfg.Version {
		u.setStatusLocked(&protocol.UpdateStatus{Rollout: w.Rollout, Bundle: w.Bundle, Version: w.Version, Phase: protocol.UpdateCommitted})
		return nil
	}
	c := *w
	return &c
}

// How a job ended, for Run.
const (
	jobDone    = iota
	jobRestart // into the new slot
	jobCrashed // a test's simulated kill -9: the process is gone
)

// runJob runs one update to its end.
func (u *Updater) runJob(ctx context.Context, spec *protocol.UpdateSpec) int {
	jctx, cancel := context.WithCancel(ctx)
	defer cancel()
	j := &job{spec: *spec, cancel: cancel}
	u.mu.Lock()
	u.job = j
	u.mu.Unlock()
	defer func() {
		u.mu.Lock()
		u.job = nil
		u.mu.Unlock()
	}()
	log := u.log.With("rollout", spec.Rollout, "bundle", short(spec.Bundle), "version", spec.Version)
	log.Info("ota: update started")
	err := u.install(jctx, spec, j)
	switch {
	case err == nil:
		return jobRestart
	case errors.Is(err, errCrashed):
		return jobCrashed
	case jctx.Err() != nil && !j.committed:
		// Superseded by another spec, or the agent is stopping: the
		// download resumes later; nothing else was kept.
		log.Info("ota: update interrupted", "err", err)
		u.mu.Lock()
		u.status = nil
		if u.st.Last != nil {
			u.setStatusLocked(u.outcomeStatus(u.st.Last))
		}
		u.mu.Unlock()
	case errors.Is(err, bundle.ErrRefused):
		u.m.refused.Inc()
		log.Error("ota: update refused", "err", err)
		u.finish(spec, protocol.UpdateRefused, err.Error(), "")
	default:
		log.Error("ota: update failed", "err", err)
		u.finish(spec, protocol.UpdateFailed, err.Error(), "")
	}
	return jobDone
}

// install downloads, verifies and installs spec into the inactive slot and
// makes it the slot to try. Every step leaves a bootable node when the
// process dies right after it (docs/ota.md, "Crash points").
func (u *Updater) install(ctx context.Context, spec *protocol.UpdateSpec, j *job) error {
	if u.cfg.Key == nil {
		return fmt.Errorf("%w: %s", bundle.ErrRefused, u.cfg.KeyProblem)
	}
	if newer(u.cfg.Version, spec.Version) {
		return fmt.Errorf("%w: the update asks for %s, running %s", bundle.ErrDowngrade, spec.Version, u.cfg.Version)
	}
	u.phase(spec, protocol.UpdateDownloading)
	part, err := u.download(ctx, spec)
	if err != nil {
		if errors.Is(err, bundle.ErrRefused) {
			os.Remove(u.partPath(spec))
		}
		return err
	}
	if u.crash("downloaded") {
		return errCrashed
	}

	u.phase(spec, protocol.UpdateVerifying)
	u.mu.Lock()
	slot := u.st.inactive()
	u.mu.Unlock()
	if slot == u.slot {
		// Only when this process was started outside the boot selection.
		return fmt.Errorf("install: the agent runs from slot %s, which is not the active one; restart it", slot)
	}
	slots := filepath.Join(u.cfg.Dir, slotsDir)
	if err := os.MkdirAll(slots, 0o700); err != nil {
		return err
	}
	newDir := filepath.Join(slots, slot+newSuffix)
	os.RemoveAll(newDir)
	f, err := os.Open(part)
	if err != nil {
		return err
	}
	m, err := bundle.Verify(f, bundle.Check{Key: u.cfg.Key, Arch: u.cfg.Arch, Running: u.cfg.Version}, newDir)
	f.Close()
	if err == nil && m.Version != spec.Version {
		err = fmt.Errorf("%w: the bundle carries release %s, the update asks for %s", bundle.ErrMalformed, m.Version, spec.Version)
	}
	if err != nil {
		os.RemoveAll(newDir)
		if errors.Is(err, bundle.ErrRefused) {
			os.Remove(part)
		}
		return err
	}
	if u.crash("extracted") {
		return errCrashed
	}

	u.phase(spec, protocol.UpdateInstalling)
	mb, err := json.MarshalIndent(m, "", "  ")
	if err == nil {
		err = writeFileSync(filepath.Join(newDir, slotManifest), mb, 0o644)
	}
	if err != nil {
		os.RemoveAll(newDir)
		return fmt.Errorf("install: %w", err)
	}
	if err := ctx.Err(); err != nil {
		os.RemoveAll(newDir)
		return err
	}
	if u.crash("manifest") {
		return errCrashed
	}
	// The inactive slot is referenced by nothing (not active, not being
	// tried), so replacing it cannot leave the node unbootable.
	if err := os.RemoveAll(filepath.Join(slots, slot)); err != nil {
		os.RemoveAll(newDir)
		return fmt.Errorf("install: %w", err)
	}
	if u.crash("old-removed") {
		return errCrashed
	}
	if err := os.Rename(newDir, filepath.Join(slots, slot)); err != nil {
		os.RemoveAll(newDir)
		return fmt.Errorf("install: %w", err)
	}
	if err := syncDir(slots); err != nil {
		return fmt.Errorf("install: %w", err)
	}
	if u.crash("renamed") {
		return errCrashed
	}

	// The commit point: from here the next start tries the new slot.
	u.mu.Lock()
	st := u.st
	st.Version = cloneMap(st.Version)
	st.Version[slot] = m.Version
	if u.slot == SlotFactory && st.Factory == "" {
		st.Factory = u.cfg.Executable
	}
	if u.slot == SlotFactory && u.cfg.Executable == st.Factory {
		st.Version[SlotFactory] = u.cfg.Version
	}
	st.Trying, st.Tries = slot, 0
	st.Pending = &Pending{Rollout: spec.Rollout, Bundle: spec.Bundle, Version: spec.Version, From: u.cfg.Version,
		Deadline: u.cfg.Now().Add(time.Duration(spec.HealthSeconds) * time.Second).UTC()}
	err = saveState(u.cfg.Dir, st)
	if err == nil {
		u.st = st
		j.committed = true
	}
	u.mu.Unlock()
	if err != nil {
		return fmt.Errorf("install: state: %w", err)
	}
	if u.crash("state-written") {
		return errCrashed
	}
	os.Remove(part)
	u.log.Info("ota: installed; restarting into it", "slot", slot, "version", m.Version, "health_seconds", spec.HealthSeconds)
	u.event(EventInstalled, fmt.Sprintf("release %s installed in slot %s; restarting into it (health check within %ds)", m.Version, slot, spec.HealthSeconds),
		Detail{Rollout: spec.Rollout, Bundle: spec.Bundle, Version: m.Version, Slot: slot})
	u.phase(spec, protocol.UpdateRestarting)
	return nil
}

// check runs the health check of the release being tried until it passes
// (commit) or the deadline passes (roll back: restart says so).
func (u *Updater) check(ctx context.Context) (restart bool) {
	u.mu.Lock()
	p := *u.st.Pending
	u.mu.Unlock()
	left := p.Deadline.Sub(u.cfg.Now())
	// A clock set back must not stretch the check beyond the longest a
	// spec allows.
	left = min(left, time.Hour)
	u.log.Info("ota: checking the new release", "slot", u.slot, "version", u.cfg.Version, "deadline_in", left.Round(time.Second))
	deadline := time.NewTimer(max(left, 0))
	defer deadline.Stop()
	tick := time.NewTicker(u.cfg.HealthInterval)
	defer tick.Stop()
	why := "not checked before the deadline"
	for {
		ok, w := u.cfg.Healthy()
		if ok {
			u.commit()
			return false
		}
		why = w
		select {
		case <-ctx.Done():
			// Stopping while checking: the next start counts a try.
			return false
		case <-deadline.C:
			// One last look: the deadline may have fired while healthy.
			ok, w := u.cfg.Healthy()
			if ok {
				u.commit()
				return false
			}
			why = w
			u.rollback(fmt.Sprintf("health check failed: %s (deadline %s)", why, p.Deadline.Format(time.RFC3339)))
			return true
		case <-tick.C:
		}
	}
}

func (u *Updater) commit() {
	u.mu.Lock()
	st := u.st
	st.commit(u.cfg.Now())
	err := saveState(u.cfg.Dir, st)
	if err == nil {
		u.st = st
		u.checking = false
	}
	u.mu.Unlock()
	if err != nil {
		// Not committed: the next start counts a try, and the check
		// runs again.
		u.log.Error("ota: commit not saved", "err", err)
		return
	}
	u.dropOtherDownloads("")
	u.log.Info("ota: new release committed", "slot", st.Active, "version", u.cfg.Version)
	u.reportPending()
}

func (u *Updater) rollback(reason string) {
	u.mu.Lock()
	st := u.st
	st.rollback(reason, u.cfg.Now())
	err := saveState(u.cfg.Dir, st)
	if err == nil {
		u.st = st
		u.checking = false
	}
	u.mu.Unlock()
	if err != nil {
		// The restart counts a try all the same: the crash-loop rule ends it.
		u.log.Error("ota: rollback not saved", "err", err)
		return
	}
	u.log.Error("ota: rolling back", "reason", reason, "to", st.Active)
	u.reportPending()
}

// finish records how an update ended, then reports it.
func (u *Updater) finish(spec *protocol.UpdateSpec, phase, msg, slot string) {
	u.mu.Lock()
	st := u.st
	st.Last = &Outcome{Rollout: spec.Rollout, Bundle: spec.Bundle, Version: spec.Version, Phase: phase, Error: msg, Slot: slot, Time: u.cfg.Now().UTC()}
	err := saveState(u.cfg.Dir, st)
	if err == nil {
		u.st = st
	} else {
		u.st.Last = st.Last // still not retried by this process
	}
	u.mu.Unlock()
	if err != nil {
		u.log.Error("ota: state not saved", "err", err)
	}
	u.reportPending()
}

// reportPending sends the events for what the state holds unreported: the
// last outcome (possibly decided by the boot selection of this start) and
// a boot notice, and updates the status.
func (u *Updater) reportPending() {
	u.mu.Lock()
	last, notice := u.st.Last, u.st.Notice
	if last != nil && !u.checking {
		u.setStatusLocked(u.outcomeStatus(last))
	}
	u.mu.Unlock()
	changed := false
	if notice != "" {
		if u.event(EventBoot, notice, Detail{Running: u.cfg.Version, Slot: u.slot}) {
			changed = true
			notice = ""
		}
	}
	if last != nil && !last.Reported {
		d := Detail{Rollout: last.Rollout, Bundle: last.Bundle, Version: last.Version, Slot: last.Slot, Reason: last.Error}
		var kind, msg string
		switch last.Phase {
		case protocol.UpdateCommitted:
			kind, msg = EventCommitted, fmt.Sprintf("release %s passed its health check and is kept (slot %s)", last.Version, last.Slot)
		case protocol.UpdateRolledBack:
			kind, msg = EventRolledBack, fmt.Sprintf("update to %s rolled back: %s", orUnknown(last.Version), last.Error)
		case protocol.UpdateRefused:
			kind, msg = EventRefused, fmt.Sprintf("update to %s refused, nothing installed: %s", last.Version, last.Error)
		default:
			kind, msg = EventFailed, fmt.Sprintf("update to %s failed: %s", last.Version, last.Error)
		}
		if u.event(kind, msg, d) {
			changed = true
			if kind == EventRolledBack {
				u.m.rollbacks.Inc()
			}
		}
	}
	if !changed {
		return
	}
	u.mu.Lock()
	st := u.st
	if last != nil && st.Last == last {
		l := *last
		l.Reported = true
		st.Last = &l
	}
	st.Notice = notice
	if err := saveState(u.cfg.Dir, st); err != nil {
		u.log.Error("ota: state not saved", "err", err)
	} else {
		u.st = st
	}
	u.mu.Unlock()
}

func (u *Updater) event(kind, msg string, d Detail) bool {
	if d.Running == "" {
		d.Running = u.cfg.Version
	}
	if len(msg) > protocol.MaxEventMessageBytes {
		msg = msg[:protocol.MaxEventMessageBytes-3] + "..."
	}
	if u.cfg.Event == nil {
		return true
	}
	if err := u.cfg.Event(kind, msg, d); err != nil {
		u.log.Error("ota: event not recorded", "kind", kind, "err", err)
		return false
	}
	return true
}

func (u *Updater) outcomeStatus(o *Outcome) *protocol.UpdateStatus {
	s := &protocol.UpdateStatus{Rollout: o.Rollout, Bundle: o.Bundle, Version: o.Version, Phase: o.Phase, Error: o.Error}
	if o.Phase == protocol.UpdateCommitted || o.Phase == protocol.UpdateRolledBack {
		s.Progress = 1 // it was downloaded whole
	}
	return s
}

// setStatusLocked fills what every status carries and notes the change.
func (u *Updater) setStatusLocked(s *protocol.UpdateStatus) {
	s.Running, s.Slot, s.Time = u.cfg.Version, u.slot, u.cfg.Now().UTC()
	u.status = s
	u.m.setPhase(s.Phase)
	if u.cfg.Changed != nil {
		u.cfg.Changed()
	}
}

func (u *Updater) phase(spec *protocol.UpdateSpec, phase string) {
	u.mu.Lock()
	defer u.mu.Unlock()
	s := &protocol.UpdateStatus{Rollout: spec.Rollout, Bundle: spec.Bundle, Version: spec.Version, Phase: phase}
	if p := u.status; p != nil && p.Bundle == spec.Bundle && p.Rollout == spec.Rollout {
		s.Progress = p.Progress // the download stays done
	}
	u.setStatusLocked(s)
}

func (u *Updater) setProgress(have, size int64) {
	u.mu.Lock()
	defer u.mu.Unlock()
	if u.status != nil && size > 0 {
		u.status.Progress = float64(have) / float64(size)
	}
}

func (u *Updater) setError(msg string) {
	u.mu.Lock()
	defer u.mu.Unlock()
	if u.status != nil {
		u.status.Error = msg
		u.status.Time = u.cfg.Now().UTC()
	}
}

func cloneMap(m map[string]string) map[string]string {
	out := make(map[string]string, len(m)+1)
	for k, v := range m {
		out[k] = v
	}
	return out
}

func orUnknown(s string) string {
	if s == "" {
		return "an unknown release"
	}
	return s
}

type metrics struct {
	phase      *prometheus.GaugeVec
	downloaded prometheus.Counter
	rollbacks  prometheus.Counter
	refused    prometheus.Counter
}

var phases = []string{protocol.UpdateDownloading, protocol.UpdateVerifying, protocol.UpdateInstalling, protocol.UpdateRestarting,
	protocol.UpdateChecking, protocol.UpdateCommitted, protocol.UpdateRolledBack, protocol.UpdateRefused, protocol.UpdateFailed}

func newMetrics(r prometheus.Registerer) *metrics {
	m := &metrics{
		phase:      prometheus.NewGaugeVec(prometheus.GaugeOpts{Name: "cloudskin_agent_ota_phase", Help: "1 for the phase the node's newest over-the-air update is in."}, []string{"phase"}),
		downloaded: prometheus.NewCounter(prometheus.CounterOpts{Name: "cloudskin_agent_ota_downloaded_bytes_total", Help: "Bytes of update bundles downloaded."}),
		rollbacks:  prometheus.NewCounter(prometheus.CounterOpts{Name: "cloudskin_agent_ota_rollbacks_total", Help: "Updates rolled back (health check failed, crash loop, release not startable), as reported by this process."}),
		refused:    prometheus.NewCounter(prometheus.CounterOpts{Name: "cloudskin_agent_ota_refused_total", Help: "Update bundles refused: unsigned, tampered, wrong arch, downgrade, no release key."}),
	}
	for _, p := range phases {
		m.phase.WithLabelValues(p)
	}
	if r != nil {
		r.MustRegister(m.phase, m.downloaded, m.rollbacks, m.refused)
	}
	return m
}

func (m *metrics) setPhase(phase string) {
	for _, p := range phases {
		v := 0.0
		if p == phase {
			v = 1
		}
		m.phase.WithLabelValues(p).Set(v)
	}
}
