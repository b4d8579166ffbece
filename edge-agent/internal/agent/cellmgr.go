package agent

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/cloudskin/cloudskin/edge-agent/internal/cells"
	"github.com/cloudskin/cloudskin/shared/protocol"
)

// cellManager reconciles the cells a node runs with its desired state:
// it fetches and verifies modules, starts, stops and restarts cells with
// backoff, feeds them sensor records and reports their state.
type cellManager struct {
	a       *Agent
	rt      *cells.Runtime
	log     *slog.Logger
	dataDir string
	publish func(topic string, payload []byte) // local sensor broker: cell outputs
	streams *streamManager                     // durable inputs; nil in tests without streams
	forward *datasetForwarder                  // dataset outputs; nil in tests

	persist   sync.Mutex // serialises writing desired.json
	persisted int64      // the generation in desired.json

	mu      sync.Mutex
	desired protocol.Desired
	cells   map[string]*runningCell
	wake    chan struct{}
	// loaded keeps compiled modules by digest (used by the reconcile
	// goroutine only), so a restart or a second cell of the same module
	// starts in microseconds instead of reloading from the disk cache.
	loaded map[string]*cells.Module
	ready  []string // digests in loaded, for the actual state (guarded by mu)
}

// runningCell is one desired cell and what became of it.
type runningCell struct {
	spec     protocol.CellSpec
	cell     *cells.Cell // nil unless running
	state    string
	message  string
	restarts int
	retryAt  time.Time
	done     chan struct{} // closed when the worker exits
	readers  chan struct{} // closed to stop the stream readers
	readWG   sync.WaitGroup
	offsets  map[string]uint64
	outputs  []protocol.Output
	lastStat cells.Stats
	events   []protocol.CellEvent

	// gate is held while a batch is delivered (handled and, for a stream,
	// its cursor committed). A checkpoint takes it to find a quiescent
	// point: no call in progress, every cursor matching the cell's state.
	gate sync.Mutex
	// readersMu serialises starting and stopping the stream readers between
	// a (re)start, a stop and edge autonomy's pause and resume.
	readersMu sync.Mutex
	// The fields below are guarded by cellManager.mu.
	inbox      []inputRecord // topic records received, not yet handled
	signal     chan struct{} // wakes the worker (capacity 1)
	stopping   bool          // the worker exits at its next turn
	holding    string        // the hold checkpoint in effect: no input is delivered
	paused     string        // why edge autonomy paused the cell: no input is delivered (autonomy.go)
	crashed    bool          // restarted after a trap: start fresh, not from a checkpoint
	seq        uint64        // newest checkpoint sequence along the cell's lineage
	ckpt       *protocol.CheckpointInfo
	restored   string // the checkpoint the running cell came from
	ckptBusy   bool
	ckptAt     time.Time
	remote     map[string]uint64     // next offset of each input reading another node's stream
	tissueOut  map[string]*tissueOut // by receiver name: messages sent, not yet acknowledged
	tissueSeen map[string]uint64     // by sender name: the last message taken
	// tissueAhead holds messages that arrived before their turn, by sender.
	tissueAhead map[string]map[uint64]protocol.TissueMessage
	uploaded    string // the hold checkpoint the console confirmed
	holdFailed  string // a hold that could not be taken (not retried)
}

type inputRecord struct {
	input string
	rec   cells.Record
}

const (
	cellQueue        = 4096 // records waiting per cell before new ones are dropped
	cellBatch        = 256  // records per call into a cell
	recentOutputs    = 10
	maxBackoff       = time.Minute
	desiredFile      = "desired.json"
	modulesDir       = "modules"
	maxModuleBytes   = 32 << 20
	recentCellEvents = 16
)

func newCellManager(a *Agent, publish func(string, []byte)) (*cellManager, error) {
	rt, err := cells.NewRuntime(filepath.Join(a.cfg.Data, "compiled"), a.log)
	if err != nil {
		return nil, fmt.Errorf("cell runtime: %w", err)
	}
	m := &cellManager{a: a, rt: rt, log: a.log.With("component", "cells"), dataDir: a.cfg.Data,
		publish: publish, cells: map[string]*runningCell{}, wake: make(chan struct{}, 1), loaded: map[string]*cells.Module{}}
	// A node that restarts offline runs the cells it was last told to run.
	if raw, err := os.ReadFile(filepath.Join(a.cfg.Data, desiredFile)); err == nil {
		var d protocol.Desired
		if json.Unmarshal(raw, &d) == nil && d.Validate(a.cfg.Name) == nil {
			m.desired = d
		}
	}
	return m, nil
}

// setDesired takes a desired-state message from the console.
func (m *cellManager) setDesired(payload []byte) {
	var d protocol.Desired
	if err := json.Unmarshal(payload, &d); err != nil {
		m.log.Error("desired state refused: malformed", "err", err)
		return
	}
	if err := d.Validate(m.a.cfg.Name); err != nil {
		m.log.Error("desired state refused", "err", err)
		return
	}
	m.mu.Lock()
	if d.Generation < m.desired.Generation {
		m.mu.Unlock()
		m.log.Warn("older desired state ignored", "generation", d.Generation, "have", m.desired.Generation)
		return
	}
	m.desired = d
	m.mu.Unlock()
	m.a.updater.Set(d.Update)
	// Two deliveries may race here (paho does not order them); the file
	// write is serialised, and a stale one never overwrites a newer one.
	m.persist.Lock()
	if d.Generation >= m.persisted {
		if err := writeFileAtomic(filepath.Join(m.dataDir, desiredFile), d, 0o600); err != nil {
			m.log.Error("desired state not persisted", "err", err)
		} else {
			m.persisted = d.Generation
		}
	}
	m.persist.Unlock()
	if m.streams != nil {
		if err := m.streams.apply(d.Streams); err != nil {
			m.log.Error("streams of the desired state not all open", "err", err)
		}
	}
	m.log.Info("desired state received", "generation", d.Generation, "cells", len(d.Cells))
	m.kick()
}

// desiredStreams returns the streams of the current desired state.
func (m *cellManager) desiredStreams() []protocol.StreamSpec {
	m.mu.Lock()
	defer m.mu.Unlock()
	return slices.Clone(m.desired.Streams)
}

func (m *cellManager) kick() {
	select {
	case m.wake <- struct{}{}:
	default:
	}
}

// run reconciles on every change and every second (for restarts).
func (m *cellManager) run(ctx context.Context) error {
	t := time.NewTicker(time.Second)
	defer t.Stop()
	defer m.stopAll()
	for {
		m.reconcile(ctx)
		select {
		case <-ctx.Done():
			return nil
		case <-m.wake:
		case <-t.C:
		}
	}
}

func (m *cellManager) reconcile(ctx context.Context) {
	m.mu.Lock()
	want := map[string]protocol.CellSpec{}
	for _, s := range m.desired.Cells {
		want[s.ID] = s
	}
	// Drop compiled modules no desired cell uses any more.
	inUse := map[string]bool{}
	for _, s := range m.desired.Cells {
		inUse[s.Module] = true
	}
	for _, d := range m.desired.Prefetch {
		inUse[d] = true
	}
	for digest, mod := range m.loaded {
		if !inUse[digest] {
			mod.Close()
			delete(m.loaded, digest)
			m.ready = slices.DeleteFunc(m.ready, func(d string) bool { return d == digest })
		}
	}
	prefetch := slices.Clone(m.desired.Prefetch)
	var stop, removed []*runningCell
	var holds []*runningCell
	for id, rc := range m.cells {
		s, ok := want[id]
		switch {
		case !ok:
			removed = append(removed, rc)
			delete(m.cells, id)
		case !sameRun(s, rc.spec):
			stop = append(stop, rc)
			delete(m.cells, id)
		default:
			// Only the migration and checkpoint fields changed: the
			// running cell stays; a hold is taken or released.
			rc.spec = s
			if s.Hold != "" && rc.uploaded != s.Hold && rc.holdFailed != s.Hold && rc.cell != nil && !rc.ckptBusy {
				holds = append(holds, rc)
			} else if s.Hold == "" && rc.holding != "" {
				m.releaseLocked(rc)
			}
		}
	}
	var start []*runningCell
	now := time.Now()
	for id, s := range want {
		rc, ok := m.cells[id]
		if !ok {
			rc = &runningCell{spec: s, state: protocol.CellStarting, offsets: map[string]uint64{}}
			m.cells[id] = rc
		}
		if rc.cell == nil && rc.state != protocol.CellFailed && !now.Before(rc.retryAt) {
			start = append(start, rc)
		}
	}
	periodic := m.checkpointsDueLocked(now)
	resend := m.retryTissuesLocked(now)
	m.mu.Unlock()
	for _, f := range resend {
		f()
	}
	for _, rc := range removed {
		m.stopCell(rc, "removed from desired state")
		m.dropLocalCheckpoints(rc.spec.ID)
	}
	for _, rc := range stop {
		m.stopCell(rc, "spec changed")
	}
	for _, rc := range start {
		m.startCell(ctx, rc)
	}
	m.prefetch(ctx, prefetch)
	for _, rc := range holds {
		m.hold(ctx, rc)
	}
	for _, rc := range periodic {
		go m.periodicCheckpoint(ctx, rc)
	}
}

// sameRun reports whether two specs describe the same running cell: they
// may differ only in the fields that drive checkpoints, migrations and
// edge autonomy (the priority).
func sameRun(a, b protocol.CellSpec) bool {
	a.Hold, a.Restore, a.CheckpointSeconds, a.Priority = "", "", 0, ""
	b.Hold, b.Restore, b.CheckpointSeconds, b.Priority = "", "", 0, ""
	x, _ := json.Marshal(a)
	y, _ := json.Marshal(b)
	return string(x) == string(y)
}

func (m *cellManager) startCell(ctx context.Context, rc *runningCell) {
	id := rc.spec.ID
	mod, err := m.loadModule(ctx, rc.spec.Module)
	if err != nil {
		var dl *downloadError
		if errors.As(err, &dl) {
			m.fail(rc, fmt.Sprintf("module: %v", dl.err), !errors.Is(dl.err, errModulePermanent))
		} else {
			m.fail(rc, err.Error(), false)
		}
		return
	}
	l := rc.spec.Limits
	spec := cells.Spec{ID: id, Config: rc.spec.Config, Outputs: rc.spec.Outputs, Limits: cells.Limits{
		MemoryBytes: l.MemoryBytes, FuelPerCall: l.FuelPerCall, MaxInputBytes: l.MaxInputBytes,
		MaxOutputPerSec: l.MaxOutputPerSec, CallTimeout: time.Duration(l.CallTimeoutMS) * time.Millisecond,
	}}
	if rc.spec.App != "" {
		spec.Send = func(to string, data []byte) int32 { return m.send(rc, to, data) }
	}
	out := func(stream string, data []byte) { m.output(rc, stream, data) }
	ck, err := m.restorePoint(ctx, rc, l.MemoryBytes)
	if err != nil {
		m.fail(rc, err.Error(), true)
		return
	}
	var cell *cells.Cell
	if ck != nil {
		cell, err = m.rt.Restore(ctx, mod, spec, out, ck.snap)
	} else {
		cell, err = m.rt.Start(ctx, mod, spec, out)
	}
	if err != nil {
		// A module that loads but will not start with this spec is
		// retried with backoff: its init may depend on the moment.
		m.fail(rc, err.Error(), true)
		return
	}
	m.mu.Lock()
	rc.cell, rc.state, rc.message = cell, protocol.CellRunning, ""
	rc.done, rc.signal, rc.stopping, rc.crashed = make(chan struct{}), make(chan struct{}, 1), false, false
	if ck != nil {
		m.applyCheckpointLocked(rc, ck)
	}
	done, signal := rc.done, rc.signal
	m.mu.Unlock()
	go m.work(rc, cell, signal, done)
	m.startReadersUnlessPaused(rc, cell)
	if ck != nil {
		m.log.Info("cell restored", "cell", id, "module", rc.spec.Module[:12], "checkpoint", ck.ID, "seq", ck.Seq,
			"from_node", ck.Node, "from_arch", ck.Arch, "inbox", len(ck.Inbox), "held", rc.holding != "")
		return
	}
	m.log.Info("cell started", "cell", id, "module", rc.spec.Module[:12], "restarts", rc.restarts)
}

// downloadError is a module that could not be fetched (as opposed to one
// that was fetched and does not load).
type downloadError struct{ err error }

func (e *downloadError) Error() string { return e.err.Error() }

// loadModule returns a compiled module, from the ones loaded, the compiled
// code cache on disk, or downloaded and compiled. Only the reconcile
// goroutine calls it.
func (m *cellManager) loadModule(ctx context.Context, digest string) (*cells.Module, error) {
	if mod, ok := m.loaded[digest]; ok {
		return mod, nil
	}
	// A module this node ran before comes back from its compiled code on disk,
	// without reading or hashing the .wasm (a Go cell: ≈2 ms instead of ≈25 ms).
	mod, err := m.rt.LoadCached(digest)
	if errors.Is(err, cells.ErrNotCached) {
		var wasm []byte
		if wasm, err = m.module(ctx, digest); err != nil {
			return nil, &downloadError{err}
		}
		mod, err = m.rt.Load(wasm, digest)
	}
	if err != nil {
		return nil, err
	}
	m.loaded[digest] = mod
	m.mu.Lock()
	m.ready = append(m.ready, digest)
	m.mu.Unlock()
	return mod, nil
}

// prefetch compiles the modules the desired state says cells are about to
// migrate here with, so their restore does not wait for the compiler.
func (m *cellManager) prefetch(ctx context.Context, digests []string) {
	for _, d := range digests {
		if _, ok := m.loaded[d]; ok {
			continue
		}
		start := time.Now()
		if _, err := m.loadModule(ctx, d); err != nil {
			m.log.Warn("module not prefetched", "module", d[:12], "err", err)
			continue
		}
		m.log.Info("module prefetched for a migration", "module", d[:12], "took", time.Since(start))
		m.a.publishActualSoon()
	}
}

// fail records why a cell is not running; retry schedules a restart
// with exponential backoff, otherwise the cell stays failed until its
// spec changes.
func (m *cellManager) fail(rc *runningCell, msg string, retry bool) {
	m.mu.Lock()
	defer m.mu.Unlock()
	rc.message = msg
	rc.addEvent("start_failed", msg)
	if !retry {
		rc.state = protocol.CellFailed
		m.log.Error("cell cannot run", "cell", rc.spec.ID, "err", msg)
		return
	}
	rc.state = protocol.CellBackoff
	backoff := min(time.Second<<min(rc.restarts, 6), maxBackoff)
	rc.restarts++
	rc.retryAt = time.Now().Add(backoff)
	m.log.Warn("cell not running; will retry", "cell", rc.spec.ID, "err", msg, "in", backoff)
}

func (rc *runningCell) addEvent(kind, msg string) {
	rc.events = append(rc.events, protocol.CellEvent{Time: time.Now().UTC(), Kind: kind, Message: msg})
	if len(rc.events) > recentCellEvents {
		rc.events = rc.events[len(rc.events)-recentCellEvents:]
	}
}

// work feeds one cell its topic records, a batch of one input at a time,
// until it is stopped or the cell dies. A held cell takes nothing.
func (m *cellManager) work(rc *runningCell, cell *cells.Cell, signal, done chan struct{}) {
	defer close(done)
	for {
		rc.gate.Lock()
		m.mu.Lock()
		if rc.stopping || rc.cell != cell {
			m.mu.Unlock()
			rc.gate.Unlock()
			return
		}
		var input string
		var batch []cells.Record
		if rc.holding == "" && rc.paused == "" {
			input, batch = rc.takeBatchLocked()
		}
		m.mu.Unlock()
		if len(batch) == 0 {
			rc.gate.Unlock()
			<-signal
			continue
		}
		ok := m.handle(rc, cell, input, batch)
		rc.gate.Unlock()
		if !ok {
			return
		}
	}
}

// takeBatchLocked takes up to cellBatch records of the first waiting input.
func (rc *runningCell) takeBatchLocked() (string, []cells.Record) {
	if len(rc.inbox) == 0 {
		return "", nil
	}
	input := rc.inbox[0].input
	n := 0
	for n < len(rc.inbox) && n < cellBatch && rc.inbox[n].input == input {
		n++
	}
	batch := make([]cells.Record, n)
	for i := range n {
		batch[i] = rc.inbox[i].rec
	}
	rc.inbox = slices.Delete(rc.inbox, 0, n)
	if len(rc.inbox) == 0 {
		rc.inbox = nil // let the backing array go
	}
	return input, batch
}

func (rc *runningCell) wakeLocked() {
	select {
	case rc.signal <- struct{}{}:
	default:
	}
}

// handle calls the cell; false means it died and will be restarted.
func (m *cellManager) handle(rc *runningCell, cell *cells.Cell, input string, batch []cells.Record) bool {
	err := cell.Handle(context.Background(), input, batch)
	if err == nil {
		return true
	}
	if cell.Stats().Running {
		m.log.Debug("cell handler error", "cell", rc.spec.ID, "err", err)
		return true
	}
	m.died(rc, cell, err)
	return false
}

// died records that a cell stopped by itself (trap, fuel, deadline) and
// schedules its restart with backoff.
func (m *cellManager) died(rc *runningCell, cell *cells.Cell, err error) {
	m.log.Warn("cell stopped", "cell", rc.spec.ID, "err", err)
	m.mu.Lock()
	if rc.readers != nil {
		close(rc.readers)
		rc.readers = nil
	}
	if rc.cell == cell {
		rc.lastStat = cell.Stats()
		rc.cell, rc.done = nil, nil
		rc.holding, rc.crashed = "", true
		if rc.signal != nil {
			rc.wakeLocked() // the worker sees the cell gone and exits
		}
		rc.state = protocol.CellBackoff
		rc.message = err.Error()
		rc.addEvent("crashed", err.Error())
		backoff := min(time.Second<<min(rc.restarts, 6), maxBackoff)
		rc.restarts++
		rc.retryAt = time.Now().Add(backoff)
	}
	m.mu.Unlock()
	go cell.Close()
	m.kick()
}

func (m *cellManager) stopCell(rc *runningCell, why string) {
	rc.readersMu.Lock()
	m.stopReaders(rc)
	m.mu.Lock()
	cell, done := rc.cell, rc.done
	rc.stopping = true
	if rc.signal != nil {
		rc.wakeLocked()
	}
	m.mu.Unlock()
	rc.readersMu.Unlock()
	if done != nil {
		<-done
	}
	m.mu.Lock()
	rc.cell, rc.done = nil, nil
	m.mu.Unlock()
	if cell != nil {
		cell.Close()
		m.log.Info("cell stopped", "cell", rc.spec.ID, "why", why)
	}
}

func (m *cellManager) stopAll() {
	m.mu.Lock()
	all := make([]*runningCell, 0, len(m.cells))
	for _, rc := range m.cells {
		all = append(all, rc)
	}
	m.mu.Unlock()
	for _, rc := range all {
		m.stopCell(rc, "agent stopping")
	}
	for digest, mod := range m.loaded {
		mod.Close()
		delete(m.loaded, digest)
	}
	m.mu.Lock()
	m.ready = nil
	m.mu.Unlock()
	m.rt.Close()
}

// dispatch hands a sensor message to every running cell with a matching input.
func (m *cellManager) dispatch(topic string, payload []byte) {
	now := time.Now().UnixNano()
	m.mu.Lock()
	defer m.mu.Unlock()
	for _, rc := range m.cells {
		if rc.cell == nil || rc.holding != "" {
			// A held cell's input stays with the source broker's other
			// subscribers; topic inputs are not durable (use a stream).
			continue
		}
		if rc.paused != "" {
			// Shed: a paused cell's topic input is lost, counted.
			if slices.ContainsFunc(rc.spec.Inputs, func(in protocol.Input) bool {
				return slices.ContainsFunc(in.Topics, func(f string) bool { return topicMatches(f, topic) })
			}) {
				m.a.m.dropped.WithLabelValues("cell_paused").Inc()
			}
			continue
		}
		for _, in := range rc.spec.Inputs {
			if in.Stream != "" || !slices.ContainsFunc(in.Topics, func(f string) bool { return topicMatches(f, topic) }) {
				continue
			}
			if len(rc.inbox) >= cellQueue {
				m.a.m.dropped.WithLabelValues("cell_queue_full").Inc()
				continue
			}
			off := rc.offsets[in.Name]
			rc.offsets[in.Name] = off + 1
			rc.inbox = append(rc.inbox, inputRecord{input: in.Name, rec: cells.Record{Offset: off, TimeNS: now, Topic: topic, Payload: payload}})
			rc.wakeLocked()
		}
	}
}

// output keeps a cell's recent outputs for the console and publishes each
// on the local sensor broker at cells/{cell}/{stream}.
func (m *cellManager) output(rc *runningCell, stream string, data []byte) {
	m.mu.Lock()
	rc.outputs = append(rc.outputs, protocol.Output{Time: time.Now().UTC(), Stream: stream, Payload: data})
	if len(rc.outputs) > recentOutputs {
		rc.outputs = rc.outputs[len(rc.outputs)-recentOutputs:]
	}
	ds := rc.spec.Datasets[stream]
	m.mu.Unlock()
	if ds != "" && m.forward != nil {
		m.forward.add(ds, data)
	}
	if m.publish != nil {
		m.publish("cells/"+rc.spec.ID+"/"+stream, data)
	}
}

// actual reports every desired cell's state and counters.
func (m *cellManager) actual() protocol.Actual {
	m.mu.Lock()
	defer m.mu.Unlock()
	out := protocol.Actual{Node: m.a.cfg.Name, Generation: m.desired.Generation, Time: time.Now().UTC(), Cells: []protocol.CellStatus{},
		Modules: slices.Sorted(slices.Values(m.ready))}
	if m.streams != nil {
		out.Streams = m.streams.status()
	}
	for _, rc := range m.cells {
		st := rc.lastStat
		if rc.cell != nil {
			st = rc.cell.Stats()
		}
		cs := protocol.CellStatus{
			ID: rc.spec.ID, Module: rc.spec.Module, State: rc.state, Message: rc.message, Restarts: rc.restarts,
			Invocations: st.Invocations, Records: st.Records, Errors: st.Errors, Traps: st.Traps, Emitted: st.Emitted,
			RateLimited: st.RateLimited, FuelConsumed: st.FuelConsumed, MemoryBytes: int64(st.MemoryBytes),
			LatencyP50US: float64(st.LatencyP50.Microseconds()), LatencyP99US: float64(st.LatencyP99.Microseconds()),
			Events: slices.Clone(rc.events), RecentOutputs: slices.Clone(rc.outputs),
			Checkpoint: rc.ckpt, RestoredFrom: rc.restored, Cursors: m.cursorsLocked(rc),
		}
		if rc.paused != "" && rc.cell != nil && rc.holding == "" {
			cs.State, cs.Message = protocol.CellPaused, rc.paused
		}
		if rc.cell != nil {
			for _, e := range rc.cell.Events() {
				cs.Events = append(cs.Events, protocol.CellEvent{Time: e.Time, Kind: string(e.Kind), Message: e.Message})
			}
		}
		out.Cells = append(out.Cells, cs)
	}
	slices.SortFunc(out.Cells, func(a, b protocol.CellStatus) int { return strings.Compare(a.ID, b.ID) })
	return out
}

// cursorsLocked reports where each stream input of rc stands (the console
// scales burst apps on it).
func (m *cellManager) cursorsLocked(rc *runningCell) map[string]uint64 {
	var out map[string]uint64
	for _, in := range rc.spec.Inputs {
		if in.Stream == "" {
			continue
		}
		if out == nil {
			out = map[string]uint64{}
		}
		if in.Node != "" && in.Node != m.a.cfg.Name {
			out[in.Name] = max(rc.remote[in.Name], in.From)
			continue
		}
		if m.streams == nil {
			continue
		}
		if s, ok := m.streams.get(in.Stream); ok {
			out[in.Name] = max(s.Cursor(cursorName(rc.spec.ID, in)), in.From)
		}
	}
	return out
}

var errModulePermanent = errors.New("module unusable")

// module returns a module's bytes from the local store, downloading and
// verifying it first if needed.
func (m *cellManager) module(ctx context.Context, digest string) ([]byte, error) {
	path := filepath.Join(m.dataDir, modulesDir, digest+".wasm")
	if b, err := os.ReadFile(path); err == nil && sha256Hex(b) == digest {
		return b, nil
	}
	url := strings.TrimRight(m.a.cfg.Console, "/") + "/api/v1/modules/" + digest + "/wasm"
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	if err != nil {
		return nil, err
	}
	req.SetBasicAuth(m.a.cred.Node, m.a.cred.Secret)
	resp, err := httpClient.Do(req)
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	if resp.StatusCode == http.StatusNotFound {
		return nil, fmt.Errorf("%w: the console has no module %s", errModulePermanent, digest)
	}
	if resp.StatusCode != http.StatusOK {
		return nil, fmt.Errorf("download %s: %s", digest, resp.Status)
	}
	b, err := io.ReadAll(io.LimitReader(resp.Body, maxModuleBytes+1))
	if err != nil {
		return nil, err
	}
	if len(b) > maxModuleBytes {
		return nil, fmt.Errorf("%w: module %s is larger than %d bytes", errModulePermanent, digest, maxModuleBytes)
	}
	if got := sha256Hex(b); got != digest {
		return nil, fmt.Errorf("downloaded module has digest %s, want %s", got, digest)
	}
	if err := os.MkdirAll(filepath.Dir(path), 0o700); err != nil {
		return nil, err
	}
	if _, err := writeAtomic(path, 0o600, func(w io.Writer) error {
		_, err := w.Write(b)
		return err
	}); err != nil {
		return nil, err
	}
	m.log.Info("module downloaded", "module", digest[:12], "bytes", len(b))
	return b, nil
}

func sha256Hex(b []byte) string {
	s := sha256.Sum256(b)
	return hex.EncodeToString(s[:])
}

// topicMatches applies MQTT filter rules: + matches one level, # the rest.
func topicMatches(filter, topic string) bool {
	f, t := strings.Split(filter, "/"), strings.Split(topic, "/")
	for i, part := range f {
		if part == "#" {
			return i == len(f)-1
		}
		if i >= len(t) || (part != "+" && part != t[i]) {
			return false
		}
	}
	return len(f) == len(t)
}
