package cells

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"strings"
	"sync"
	"time"

	"github.com/bytecodealliance/wasmtime-go/v39"
)

// logLinesPerSec bounds how many lines a cell may put in the agent log (cloudskin.log and
// stdout/stderr together), so a chatty or hostile cell cannot flood it.
const logLinesPerSec = 100

// Cell is one running instance of a module in its own store. Calls are serialized; Stats
// and Events may be read from any goroutine, also during a call.
//
// After a trap, exhausted fuel or a timeout the cell is dead: its memory may be half
// updated (a bump allocator mid-way, a language runtime mid-GC), so it takes no more calls
// (ErrDead) and the agent restarts it from its module per its policy. A negative result
// (HandlerError) or a failed allocation leaves it running.
type Cell struct {
	ID string

	rt      *Runtime // whose epoch ticks while the cell runs
	limits  Limits
	log     *slog.Logger
	out     Output
	outputs map[string]string // declared outputs; the value is the interned name
	send    func(cell string, data []byte) int32
	outRate *bucket
	logRate *bucket
	stats   cellStats

	digest string   // of the module it runs
	snap   snapInfo // the module's mutable globals, or why it cannot be snapshotted

	mu      sync.Mutex // serializes use of the store
	store   *wasmtime.Store
	inst    *wasmtime.Instance
	mem     *wasmtime.Memory
	fAlloc  *wasmtime.Func
	fFree   *wasmtime.Func
	fHandle *wasmtime.Func
	dead    error // why the cell takes no more calls; nil while running
	buf     []byte
	stdio   *stdio
}

// Start instantiates m as the cell spec.ID in a new store: WASI without preopens, env or
// args, stdout/stderr into the log; memory limited; then _initialize, the ABI version
// check and cloudskin_init(spec.Config), each bounded by fuel and CallTimeout.
func (r *Runtime) Start(ctx context.Context, m *Module, spec Spec, out Output) (*Cell, error) {
	return r.launch(ctx, m, spec, out, nil)
}

// launch starts a cell from its module (snap == nil) or from a snapshot (Restore).
func (r *Runtime) launch(ctx context.Context, m *Module, spec Spec, out Output, snap *Snapshot) (*Cell, error) {
	verb := "start"
	if snap != nil {
		verb = "restore"
	}
	limits := spec.Limits.withDefaults()
	if err := limits.Validate(); err != nil {
		return nil, err
	}
	if m == nil || m.mod == nil {
		return nil, fmt.Errorf("cells: %s: module is closed", verb)
	}
	if m.memMinBytes > uint64(limits.MemoryBytes) {
		return nil, fmt.Errorf("%w: cell %s: module %.12s declares a minimum linear memory of %d bytes, above the cell's memory limit of %d bytes",
			ErrLimit, spec.ID, m.Digest, m.memMinBytes, limits.MemoryBytes)
	}
	if snap != nil {
		if err := m.fits(snap, limits); err != nil {
			return nil, fmt.Errorf("cells: restore %s: %w", spec.ID, err)
		}
	}
	now := time.Now()
	c := &Cell{
		ID:      spec.ID,
		limits:  limits,
		log:     r.log.With("cell", spec.ID),
		out:     out,
		send:    spec.Send,
		outputs: make(map[string]string, len(spec.Outputs)),
		outRate: newBucket(limits.MaxOutputPerSec, now),
		logRate: newBucket(logLinesPerSec, now),
		digest:  m.Digest,
		snap:    m.snap,
	}
	for _, o := range spec.Outputs {
		c.outputs[o] = o
	}

	store := wasmtime.NewStoreWithData(r.engine, c)
	// One memory of at most MemoryBytes, one instance, a few bounded tables.
	store.Limiter(limits.MemoryBytes, 1<<20, 1, 4, 1)
	c.store = store
	// A cell without WASI imports (WAT, C without libc) has no stdout to
	// forward: skipping the WASI context and its pipe is most of its start.
	if m.usesWASI {
		wasi := wasmtime.NewWasiConfig()
		s, err := r.openStdio(c, wasi)
		if err != nil {
			wasi.Close()
			store.Close()
			return nil, err
		}
		store.SetWasi(wasi)
		c.stdio = s
	}

	if err := c.start(ctx, r, m, spec.Config, snap); err != nil {
		c.stats.event(EventInitFailed, err.Error())
		c.log.Warn("cell failed to "+verb, "kind", EventInitFailed, "err", err)
		c.closeStore()
		return nil, fmt.Errorf("cells: %s %s: %w", verb, spec.ID, err)
	}
	c.stats.mu.Lock()
	c.stats.running = true
	c.stats.memBytes = uint64(c.mem.DataSize(c.store))
	c.stats.mu.Unlock()
	if snap != nil {
		c.stats.event(EventRestored, fmt.Sprintf("module %s, %d bytes of memory from a snapshot", m.Digest, snap.MemoryBytes()))
		c.log.Info("cell restored", "module", m.Digest, "memory_bytes", snap.MemoryBytes())
		return c, nil
	}
	c.stats.event(EventStarted, "module "+m.Digest)
	c.log.Info("cell started", "module", m.Digest)
	return c, nil
}

// start instantiates the module and then either initialises the cell (_initialize, the
// ABI version, cloudskin_init) or, given a snapshot, puts its state back instead: a
// restored cell has run its initialisation on the node it came from.
func (c *Cell) start(ctx context.Context, r *Runtime, m *Module, config []byte, snap *Snapshot) error {
	c.rt = r
	r.enter() // instantiation and the init calls run under the epoch deadline
	defer r.leave()
	if err := c.arm(ctx); err != nil {
		return err
	}
	inst, err := r.linker.Instantiate(c.store, m.mod)
	if err != nil {
		if cerr := classify(err); cerr != nil {
			return fmt.Errorf("instantiate: %w", cerr)
		}
		if msg := err.Error(); strings.Contains(msg, "unknown import") || strings.Contains(msg, "incompatible import") {
			return fmt.Errorf("instantiate: %w: %v", ErrABI, err)
		}
		return fmt.Errorf("instantiate: %w", err)
	}
	c.fuelUsed()
	c.inst = inst
	c.mem = inst.GetExport(c.store, "memory").Memory()
	c.fAlloc = inst.GetFunc(c.store, "cloudskin_alloc")
	c.fFree = inst.GetFunc(c.store, "cloudskin_free")
	c.fHandle = inst.GetFunc(c.store, "cloudskin_handle")
	if snap != nil {
		return c.restore(snap)
	}

	if m.hasInitialize {
		if _, err := c.call(ctx, inst.GetFunc(c.store, "_initialize")); err != nil {
			return fmt.Errorf("_initialize: %w", err)
		}
	}
	v, err := c.call(ctx, inst.GetFunc(c.store, "cloudskin_abi_version"))
	if err != nil {
		return fmt.Errorf("cloudskin_abi_version: %w", err)
	}
	if v != ABIVersion {
		return fmt.Errorf("%w: cloudskin_abi_version returned %d, this host speaks %d", ErrABI, v, ABIVersion)
	}
	if !m.hasInit {
		return nil
	}
	var ptr int32
	if len(config) > 0 {
		if ptr, err = c.writeInput(ctx, config); err != nil {
			return fmt.Errorf("config: %w", err)
		}
	}
	res, err := c.call(ctx, inst.GetFunc(c.store, "cloudskin_init"), ptr, int32(len(config)))
	if err != nil {
		return fmt.Errorf("cloudskin_init: %w", err)
	}
	if len(config) > 0 {
		if _, err := c.call(ctx, c.fFree, ptr, int32(len(config))); err != nil {
			return fmt.Errorf("cloudskin_free: %w", err)
		}
	}
	if res < 0 {
		return fmt.Errorf("cloudskin_init refused to start: %w", &HandlerError{Code: res})
	}
	return nil
}

// arm gives the store a fresh fuel budget and epoch deadline for one call.
func (c *Cell) arm(ctx context.Context) error {
	d := c.limits.CallTimeout
	if dl, ok := ctx.Deadline(); ok {
		left := time.Until(dl)
		if left <= 0 {
			return context.DeadlineExceeded
		}
		d = min(d, left)
	}
	if err := c.store.SetFuel(c.limits.FuelPerCall); err != nil {
		return fmt.Errorf("set fuel: %w", err)
	}
	c.store.SetEpochDeadline(uint64((d+epochTick-1)/epochTick) + 1)
	return nil
}

// fuelUsed adds what the last call consumed to the total.
func (c *Cell) fuelUsed() {
	left, err := c.store.GetFuel()
	if err != nil || left > c.limits.FuelPerCall {
		return
	}
	c.stats.mu.Lock()
	c.stats.fuel += c.limits.FuelPerCall - left
	c.stats.mu.Unlock()
}

// call runs one export with a fresh budget. A failure comes back as ErrTrap, ErrFuel or
// ErrTimeout (wrapped).
func (c *Cell) call(ctx context.Context, f *wasmtime.Func, args ...any) (int32, error) {
	if err := c.arm(ctx); err != nil {
		return 0, err
	}
	c.rt.enter()
	res, err := f.Call(c.store, args...)
	c.rt.leave()
	c.fuelUsed()
	if err != nil {
		if cerr := classify(err); cerr != nil {
			return 0, cerr
		}
		return 0, fmt.Errorf("%w: %v", ErrTrap, err)
	}
	v, _ := res.(int32)
	return v, nil
}

// classify maps a wasmtime failure to ErrFuel, ErrTimeout or ErrTrap; nil if err is not a
// trap (e.g. a link error). wasmtime reports some traps with a code and some only in the
// text of an error, so both are looked at.
func classify(err error) error {
	var msg string
	var code *wasmtime.TrapCode
	var trap *wasmtime.Trap
	var werr *wasmtime.Error
	switch {
	case errors.As(err, &trap):
		msg, code = trap.Message(), trap.Code()
	case errors.As(err, &werr):
		if status, ok := werr.ExitStatus(); ok {
			return fmt.Errorf("%w: cell called proc_exit(%d)", ErrTrap, status)
		}
		msg = werr.Error()
	default:
		return nil
	}
	cause := trapCause(msg)
	switch {
	case code != nil && *code == wasmtime.OutOfFuel, strings.Contains(msg, "all fuel consumed"):
		return fmt.Errorf("%w: %s", ErrFuel, cause)
	case code != nil && *code == wasmtime.Interrupt, strings.Contains(msg, "interrupt"):
		return fmt.Errorf("%w: %s", ErrTimeout, cause)
	case trap != nil, strings.Contains(msg, "wasm trap"), strings.Contains(msg, "wasm backtrace"):
		return fmt.Errorf("%w: %s", ErrTrap, cause)
	}
	return nil
}

// trapCause keeps the one line of a wasmtime error that says what happened, dropping the
// backtraces.
func trapCause(msg string) string {
	lines := strings.Split(msg, "\n")
	for i, l := range lines {
		if strings.TrimSpace(l) == "Caused by:" && i+1 < len(lines) {
			return strings.TrimSpace(lines[i+1])
		}
	}
	for _, l := range lines {
		if l = strings.TrimSpace(l); l != "" {
			return l
		}
	}
	return msg
}

// writeInput allocates len(b) bytes in the cell and copies b there.
func (c *Cell) writeInput(ctx context.Context, b []byte) (int32, error) {
	ptr, err := c.call(ctx, c.fAlloc, int32(len(b)))
	if err != nil {
		return 0, fmt.Errorf("cloudskin_alloc: %w", err)
	}
	data := c.mem.UnsafeData(c.store)
	p := uint64(uint32(ptr))
	if ptr == 0 || p+uint64(len(b)) > uint64(len(data)) {
		return 0, fmt.Errorf("%w: cloudskin_alloc(%d) returned %d (memory is %d bytes)", ErrAlloc, len(b), uint32(ptr), len(data))
	}
	copy(data[p:], b)
	return ptr, nil
}

// Handle hands one batch of records of the input stream to cloudskin_handle. It fails
// with ErrLimit (batch above MaxInputBytes; the cell is untouched), ErrAlloc or
// *HandlerError (the cell keeps running), ErrTrap, ErrFuel or ErrTimeout (the cell is dead
// from then on), or ErrDead.
func (c *Cell) Handle(ctx context.Context, input string, records []Record) error {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.dead != nil {
		return c.dead
	}
	if err := ctx.Err(); err != nil {
		return err
	}
	if size := batchSize(input, records); size > c.limits.MaxInputBytes {
		return fmt.Errorf("%w: batch of %d records encodes to %d bytes, above the cell's MaxInputBytes of %d", ErrLimit, len(records), size, c.limits.MaxInputBytes)
	}
	buf, err := appendBatch(c.buf[:0], input, records)
	if err != nil {
		return err
	}
	c.buf = buf

	start := time.Now()
	err = c.handle(ctx, buf)
	c.finish(start, len(records), err)
	return err
}

func (c *Cell) handle(ctx context.Context, buf []byte) error {
	ptr, err := c.writeInput(ctx, buf)
	if err != nil {
		return err
	}
	res, err := c.call(ctx, c.fHandle, ptr, int32(len(buf)))
	if err != nil {
		return fmt.Errorf("cloudskin_handle: %w", err)
	}
	if _, err := c.call(ctx, c.fFree, ptr, int32(len(buf))); err != nil {
		return fmt.Errorf("cloudskin_free: %w", err)
	}
	if res < 0 {
		return &HandlerError{Code: res}
	}
	return nil
}

// finish records one Handle call in the stats and events; a trap kills the cell.
func (c *Cell) finish(start time.Time, records int, err error) {
	lat := time.Since(start)
	var mem uint64
	if c.store != nil {
		mem = uint64(c.mem.DataSize(c.store))
	}
	s := &c.stats
	s.mu.Lock()
	s.invocations++
	s.records += uint64(records)
	s.lat[s.latN%latencyRing] = lat
	s.latN++
	s.memBytes = mem
	var kind EventKind
	if err != nil {
		s.errors++
		var he *HandlerError
		switch {
		case errors.Is(err, ErrFuel):
			s.traps++
			s.fuelExhausted++
			kind = EventFuel
		case errors.Is(err, ErrTimeout):
			s.traps++
			s.timeouts++
			kind = EventTimeout
		case errors.Is(err, ErrTrap):
			s.traps++
			kind = EventTrap
		case errors.As(err, &he), errors.Is(err, ErrAlloc):
			s.handlerErrors++
			kind = EventHandlerError
		default: // e.g. the caller's context expired before the call
			kind = EventHandlerError
		}
		if kind == EventFuel || kind == EventTimeout || kind == EventTrap {
			s.running = false
		}
	}
	s.mu.Unlock()
	if err == nil {
		return
	}
	c.stats.event(kind, err.Error())
	if kind == EventHandlerError {
		c.log.Debug("cell handler error", "kind", kind, "err", err)
		return
	}
	c.dead = fmt.Errorf("%w: %w", ErrDead, err)
	c.log.Warn("cell stopped by the host", "kind", kind, "err", err)
}

// Stats returns the cell's counters.
func (c *Cell) Stats() Stats { return c.stats.snapshot() }

// Events returns the cell's recent events, oldest first.
func (c *Cell) Events() []Event { return c.stats.recentEvents() }

// Close releases the cell's store, waiting for a call in progress (bounded by CallTimeout).
// It is safe to call more than once.
func (c *Cell) Close() {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.store == nil {
		return
	}
	c.closeStore()
	c.dead = fmt.Errorf("%w: closed", ErrDead)
	c.stats.mu.Lock()
	c.stats.running = false
	c.stats.mu.Unlock()
	c.stats.event(EventStopped, "closed")
	c.log.Info("cell stopped")
}

func (c *Cell) closeStore() {
	c.store.Close()
	c.store, c.inst, c.mem, c.fAlloc, c.fFree, c.fHandle = nil, nil, nil, nil, nil, nil
	if c.stdio != nil {
		c.stdio.wait()
		c.stdio = nil
	}
}

// logLine writes one line from the cell into the agent log, within the cell's log rate.
func (c *Cell) logLine(level slog.Level, msg, line string, truncated bool) {
	if !c.logRate.take(time.Now()) {
		c.stats.logDropped.Add(1)
		return
	}
	if truncated {
		c.log.Log(context.Background(), level, msg, "line", line, "truncated", true)
		return
	}
	c.log.Log(context.Background(), level, msg, "line", line)
}
