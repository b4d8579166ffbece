package cells

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/binary"
	"encoding/hex"
	"errors"
	"fmt"
	"hash/crc32"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/bytecodealliance/wasmtime-go/v39"
)

var quiet = slog.New(slog.NewTextHandler(io.Discard, nil))

// cellWAT is a minimal ABI v1 cell: a bump allocator reset by free, and a handler that
// reads the batch's record count and emits it (u32 LE) to "count", returning emit's
// result. Fields override parts of it for hostile variants.
type cellWAT struct {
	Imports string // extra imports
	Memory  string // memory declaration
	Version string // body of cloudskin_abi_version
	Handle  string // body of cloudskin_handle (params $p $n, result i32)
	Extra   string // extra functions and exports
	Omit    string // an export name to leave out
}

func (w cellWAT) String() string {
	if w.Memory == "" {
		w.Memory = `(memory (export "memory") 1)`
	}
	if w.Version == "" {
		w.Version = `(i32.const 1)`
	}
	if w.Handle == "" {
		w.Handle = `
    (i32.store (i32.const 32)
      (i32.load (i32.add (i32.add (local.get $p) (i32.const 6))
                         (i32.load16_u (i32.add (local.get $p) (i32.const 4))))))
    (call $emit (i32.const 16) (i32.const 5) (i32.const 32) (i32.const 4))`
	}
	export := func(name string) string {
		if name == w.Omit {
			return ""
		}
		return fmt.Sprintf(`(export %q)`, name)
	}
	return fmt.Sprintf(`(module
  (import "cloudskin" "emit" (func $emit (param i32 i32 i32 i32) (result i32)))
  %s
  %s
  (global $bump (mut i32) (i32.const 1024))
  (data (i32.const 16) "count")
  (func %s (result i32) %s)
  (func %s (param $n i32) (result i32)
    (local $p i32)
    (local.set $p (global.get $bump))
    (global.set $bump (i32.add (global.get $bump) (local.get $n)))
    (if (i32.gt_u (global.get $bump) (i32.mul (memory.size) (i32.const 65536)))
      (then
        (if (i32.eq (memory.grow (i32.add (i32.const 1)
              (i32.shr_u (i32.sub (global.get $bump) (i32.mul (memory.size) (i32.const 65536))) (i32.const 16))))
              (i32.const -1))
          (then (global.set $bump (local.get $p)) (return (i32.const 0))))))
    (local.get $p))
  (func %s (param i32 i32) (global.set $bump (i32.const 1024)))
  (func %s (param $p i32) (param $n i32) (result i32) %s)
  %s
)`, w.Imports, w.Memory,
		export("cloudskin_abi_version"), w.Version,
		export("cloudskin_alloc"),
		export("cloudskin_free"),
		export("cloudskin_handle"), w.Handle,
		w.Extra)
}

func wasmOf(t testing.TB, wat string) []byte {
	t.Helper()
	b, err := wasmtime.Wat2Wasm(wat)
	if err != nil {
		t.Fatalf("wat2wasm: %v\n%s", err, wat)
	}
	return b
}

func digestOf(b []byte) string {
	s := sha256.Sum256(b)
	return hex.EncodeToString(s[:])
}

func newRuntime(t testing.TB, cacheDir string) *Runtime {
	t.Helper()
	r, err := NewRuntime(cacheDir, quiet)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { r.Close() })
	return r
}

func load(t testing.TB, r *Runtime, wat string) *Module {
	t.Helper()
	b := wasmOf(t, wat)
	m, err := r.Load(b, digestOf(b))
	if err != nil {
		t.Fatalf("load: %v", err)
	}
	t.Cleanup(m.Close)
	return m
}

// collector is an Output that keeps what it receives.
type collector struct {
	mu  sync.Mutex
	got []string
}

func (c *collector) out(stream string, data []byte) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.got = append(c.got, fmt.Sprintf("%s:%x", stream, data))
}

func (c *collector) all() []string {
	c.mu.Lock()
	defer c.mu.Unlock()
	return append([]string(nil), c.got...)
}

func start(t testing.TB, r *Runtime, m *Module, spec Spec, out Output) *Cell {
	t.Helper()
	if spec.ID == "" {
		spec.ID = "c1"
	}
	c, err := r.Start(context.Background(), m, spec, out)
	if err != nil {
		t.Fatalf("start: %v", err)
	}
	t.Cleanup(c.Close)
	return c
}

func records(n int) []Record {
	rs := make([]Record, n)
	for i := range rs {
		rs[i] = Record{Offset: uint64(i), TimeNS: time.Now().UnixNano(), Topic: "sensors/t1", Payload: []byte(`{"t":21.5}`)}
	}
	return rs
}

func u32hex(n uint32) string {
	return hex.EncodeToString(binary.LittleEndian.AppendUint32(nil, n))
}

func TestHandleDeliversAndCounts(t *testing.T) {
	r := newRuntime(t, "")
	m := load(t, r, cellWAT{}.String())
	var col collector
	c := start(t, r, m, Spec{Outputs: []string{"count"}}, col.out)

	ctx := context.Background()
	if err := c.Handle(ctx, "in", records(3)); err != nil {
		t.Fatal(err)
	}
	if err := c.Handle(ctx, "a-longer-input-name", records(2)); err != nil {
		t.Fatal(err)
	}
	want := []string{"count:" + u32hex(3), "count:" + u32hex(2)}
	if got := col.all(); strings.Join(got, " ") != strings.Join(want, " ") {
		t.Fatalf("outputs %v, want %v", got, want)
	}
	st := c.Stats()
	if st.Invocations != 2 || st.Records != 5 || st.Emitted != 2 || st.Errors != 0 || !st.Running {
		t.Fatalf("stats %+v", st)
	}
	if st.FuelConsumed == 0 || st.LatencyP50 <= 0 || st.LatencyP99 < st.LatencyP50 || st.MemoryBytes != 65536 {
		t.Fatalf("stats %+v", st)
	}
	ev := c.Events()
	if len(ev) != 1 || ev[0].Kind != EventStarted {
		t.Fatalf("events %+v", ev)
	}
	c.Close()
	if err := c.Handle(ctx, "in", records(1)); !errors.Is(err, ErrDead) {
		t.Fatalf("handle after close: %v", err)
	}
	if ev := c.Events(); ev[len(ev)-1].Kind != EventStopped {
		t.Fatalf("events %+v", ev)
	}
}

func TestLoadRefuses(t *testing.T) {
	r := newRuntime(t, t.TempDir())
	good := wasmOf(t, cellWAT{}.String())
	tests := []struct {
		name    string
		wasm    []byte
		digest  string // "" = the right one
		want    error
		mention []string
	}{
		{name: "digest mismatch", wasm: good, digest: digestOf([]byte("other")), want: ErrDigest},
		{name: "not wasm", wasm: []byte("\x00asm\x01\x00\x00\x00garbage"), want: ErrInvalidModule},
		{name: "empty", wasm: nil, want: ErrInvalidModule},
		{name: "missing exports", wasm: wasmOf(t, `(module (memory (export "memory") 1)
			(func (export "cloudskin_abi_version") (result i32) (i32.const 1))
			(func (export "cloudskin_free") (param i32 i32)))`),
			want: ErrABI, mention: []string{"cloudskin_alloc", "cloudskin_handle"}},
		{name: "no memory", wasm: wasmOf(t, `(module (memory 1)
			(func (export "cloudskin_abi_version") (result i32) (i32.const 1))
			(func (export "cloudskin_alloc") (param i32) (result i32) (i32.const 0))
			(func (export "cloudskin_free") (param i32 i32))
			(func (export "cloudskin_handle") (param i32 i32) (result i32) (i32.const 0)))`),
			want: ErrABI, mention: []string{"missing exports: memory"}},
		{name: "wrong signature", wasm: wasmOf(t, cellWAT{Omit: "cloudskin_handle",
			Extra: `(func (export "cloudskin_handle") (param i32) (result i32) (i32.const 0))`}.String()),
			want: ErrABI, mention: []string{"cloudskin_handle has signature (i32)->(i32)"}},
		{name: "foreign import", wasm: wasmOf(t, cellWAT{Imports: `(import "env" "system" (func (param i32) (result i32)))`}.String()),
			want: ErrABI, mention: []string{"env.system"}},
		{name: "unknown cloudskin import", wasm: wasmOf(t, cellWAT{Imports: `(import "cloudskin" "exec" (func))`}.String()),
			want: ErrABI, mention: []string{"cloudskin.exec"}},
		{name: "whole 4 GiB", wasm: wasmOf(t, cellWAT{Memory: `(memory (export "memory") 65536)`}.String()),
			want: ErrLimit, mention: []string{"minimum linear memory"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			d := tt.digest
			if d == "" {
				d = digestOf(tt.wasm)
			}
			m, err := r.Load(tt.wasm, d)
			if !errors.Is(err, tt.want) {
				if m != nil {
					m.Close()
				}
				t.Fatalf("Load: %v, want %v", err, tt.want)
			}
			for _, s := range tt.mention {
				if !strings.Contains(err.Error(), s) {
					t.Errorf("error %q does not mention %q", err, s)
				}
			}
		})
	}
	// A digest may carry the sha256: prefix.
	m, err := r.Load(good, "sha256:"+digestOf(good))
	if err != nil {
		t.Fatal(err)
	}
	m.Close()
}

func TestStartRefuses(t *testing.T) {
	r := newRuntime(t, "")
	tests := []struct {
		name    string
		wat     string
		limits  Limits
		want    error
		mention string
	}{
		{name: "abi version 2", wat: cellWAT{Version: `(i32.const 2)`}.String(), want: ErrABI, mention: "returned 2"},
		{name: "memory minimum above the cell limit", wat: cellWAT{Memory: `(memory (export "memory") 60000)`}.String(),
			limits: Limits{MemoryBytes: 64 << 20}, want: ErrLimit, mention: "above the cell's memory limit"},
		{name: "_initialize never returns", wat: cellWAT{Extra: `(func (export "_initialize") (loop $l (br $l)))`}.String(),
			limits: Limits{CallTimeout: 100 * time.Millisecond}, want: ErrFuel /* or ErrTimeout, below */},
		{name: "start section never returns", wat: cellWAT{Extra: `(func $s (loop $l (br $l))) (start $s)`}.String(),
			limits: Limits{CallTimeout: 100 * time.Millisecond}, want: ErrFuel},
		{name: "init refuses", wat: cellWAT{Extra: `(func (export "cloudskin_init") (param i32 i32) (result i32) (i32.const -100))`}.String(),
			want: &HandlerError{}, mention: "-100"},
		{name: "unknown wasi function", wat: cellWAT{Imports: `(import "wasi_snapshot_preview1" "no_such_call" (func))`}.String(),
			want: ErrABI, mention: "no_such_call"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			m := load(t, r, tt.wat)
			began := time.Now()
			c, err := r.Start(context.Background(), m, Spec{ID: "x", Limits: tt.limits}, nil)
			if err == nil {
				c.Close()
				t.Fatal("Start succeeded")
			}
			var he *HandlerError
			switch {
			case errors.As(tt.want, &he):
				if !errors.As(err, &he) {
					t.Fatalf("Start: %v, want a HandlerError", err)
				}
			case tt.want == ErrFuel:
				if !errors.Is(err, ErrFuel) && !errors.Is(err, ErrTimeout) {
					t.Fatalf("Start: %v, want ErrFuel or ErrTimeout", err)
				}
				if d := time.Since(began); d > 10*time.Second {
					t.Fatalf("Start took %s", d)
				}
			default:
				if !errors.Is(err, tt.want) {
					t.Fatalf("Start: %v, want %v", err, tt.want)
				}
			}
			if !strings.Contains(err.Error(), tt.mention) {
				t.Fatalf("error %q does not mention %q", err, tt.mention)
			}
		})
	}
}

func TestHostileHandlers(t *testing.T) {
	r := newRuntime(t, "")
	loop := `(loop $l (br $l)) (i32.const 0)`
	tests := []struct {
		name   string
		handle string
		limits Limits
		want   error // ErrFuel, ErrTimeout, ErrTrap or *HandlerError
		code   int32
		dead   bool
	}{
		{name: "loops forever, fuel", handle: loop, limits: Limits{FuelPerCall: 5_000_000, CallTimeout: time.Minute}, want: ErrFuel, dead: true},
		{name: "loops forever, wall clock", handle: loop, limits: Limits{FuelPerCall: 1 << 62, CallTimeout: 50 * time.Millisecond}, want: ErrTimeout, dead: true},
		{name: "writes out of bounds", handle: `(i32.store (i32.const -16) (i32.const 1)) (i32.const 0)`, want: ErrTrap, dead: true},
		{name: "unreachable", handle: `unreachable`, want: ErrTrap, dead: true},
		{name: "grows memory without end", limits: Limits{MemoryBytes: 2 << 20}, handle: `
			(block $done (loop $l
				(br_if $done (i32.eq (memory.grow (i32.const 1)) (i32.const -1)))
				(br $l)))
			(i32.const -100)`, want: &HandlerError{}, code: -100},
		{name: "emits to an undeclared stream", handle: `
			(call $emit (i32.const 16) (i32.const 3) (i32.const 32) (i32.const 4))`, want: &HandlerError{}, code: CodeUnknownStream},
		{name: "emits from a bad pointer", handle: `
			(call $emit (i32.const 16) (i32.const 5) (i32.const 65530) (i32.const 100))`, want: &HandlerError{}, code: CodeBadPointer},
		{name: "emits a stream name past memory", handle: `
			(call $emit (i32.const -1) (i32.const 5) (i32.const 32) (i32.const 4))`, want: &HandlerError{}, code: CodeBadPointer},
		{name: "emits too much", handle: `
			(call $emit (i32.const 16) (i32.const 5) (i32.const 0) (i32.const 2000000))`, want: &HandlerError{}, code: CodeTooLarge},
		{name: "returns a cell error", handle: `(i32.const -123)`, want: &HandlerError{}, code: -123},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			m := load(t, r, cellWAT{Handle: tt.handle}.String())
			c := start(t, r, m, Spec{Limits: tt.limits, Outputs: []string{"count"}}, nil)
			began := time.Now()
			err := c.Handle(context.Background(), "in", records(1))
			if d := time.Since(began); d > 10*time.Second {
				t.Fatalf("Handle took %s", d)
			}
			var he *HandlerError
			if errors.As(tt.want, &he) {
				if !errors.As(err, &he) || he.Code != tt.code {
					t.Fatalf("Handle: %v, want handler error %d", err, tt.code)
				}
			} else if !errors.Is(err, tt.want) {
				t.Fatalf("Handle: %v, want %v", err, tt.want)
			}
			st := c.Stats()
			if st.Errors != 1 || st.Running == tt.dead {
				t.Fatalf("stats %+v", st)
			}
			if tt.limits.MemoryBytes > 0 && st.MemoryBytes > uint64(tt.limits.MemoryBytes) {
				t.Fatalf("memory %d above the limit %d", st.MemoryBytes, tt.limits.MemoryBytes)
			}
			ev := c.Events()
			last := ev[len(ev)-1].Kind
			wantKind := map[error]EventKind{ErrFuel: EventFuel, ErrTimeout: EventTimeout, ErrTrap: EventTrap}[tt.want]
			if wantKind == "" {
				wantKind = EventHandlerError
			}
			if last != wantKind {
				t.Fatalf("last event %s, want %s", last, wantKind)
			}
			// A dead cell refuses further calls; a live one takes them.
			err = c.Handle(context.Background(), "in", records(1))
			if tt.dead != errors.Is(err, ErrDead) {
				t.Fatalf("second Handle: %v (dead=%v)", err, tt.dead)
			}
		})
	}
}

func TestRateLimit(t *testing.T) {
	r := newRuntime(t, "")
	m := load(t, r, cellWAT{Handle: `
		(local $i i32) (local $ok i32)
		(loop $l
			(if (i32.eqz (call $emit (i32.const 16) (i32.const 5) (i32.const 32) (i32.const 4)))
				(then (local.set $ok (i32.add (local.get $ok) (i32.const 1)))))
			(local.set $i (i32.add (local.get $i) (i32.const 1)))
			(br_if $l (i32.lt_u (local.get $i) (i32.const 20))))
		(local.get $ok)`}.String())
	var col collector
	c := start(t, r, m, Spec{Limits: Limits{MaxOutputPerSec: 5}, Outputs: []string{"count"}}, col.out)
	if err := c.Handle(context.Background(), "in", records(1)); err != nil {
		t.Fatal(err)
	}
	st := c.Stats()
	if st.Emitted+st.RateLimited != 20 || st.Emitted < 5 || st.Emitted > 6 || uint64(len(col.all())) != st.Emitted {
		t.Fatalf("emitted %d, rate limited %d, delivered %d", st.Emitted, st.RateLimited, len(col.all()))
	}
}

func TestInputTooLarge(t *testing.T) {
	r := newRuntime(t, "")
	m := load(t, r, cellWAT{}.String())
	c := start(t, r, m, Spec{Limits: Limits{MaxInputBytes: 1000}, Outputs: []string{"count"}}, nil)
	big := []Record{{Payload: make([]byte, 2000)}}
	if err := c.Handle(context.Background(), "in", big); !errors.Is(err, ErrLimit) {
		t.Fatalf("Handle: %v, want ErrLimit", err)
	}
	if err := c.Handle(context.Background(), "in", records(1)); err != nil {
		t.Fatalf("cell unusable after a refused batch: %v", err)
	}
}

func TestIsolation(t *testing.T) {
	r := newRuntime(t, "")
	spinner := start(t, r, load(t, r, cellWAT{Handle: `(loop $l (br $l)) (i32.const 0)`}.String()),
		Spec{ID: "spinner", Limits: Limits{FuelPerCall: 1 << 62, CallTimeout: 2 * time.Second}}, nil)
	var col collector
	worker := start(t, r, load(t, r, cellWAT{}.String()), Spec{ID: "worker", Outputs: []string{"count"}}, col.out)

	spun := make(chan error, 1)
	go func() { spun <- spinner.Handle(context.Background(), "in", records(1)) }()
	time.Sleep(20 * time.Millisecond) // let the spinner get going
	for i := 0; i < 10; i++ {
		if err := worker.Handle(context.Background(), "in", records(1)); err != nil {
			t.Fatal(err)
		}
	}
	select {
	case err := <-spun:
		t.Fatalf("spinner returned before the worker was done: %v", err)
	default:
	}
	if len(col.all()) != 10 {
		t.Fatalf("worker delivered %d", len(col.all()))
	}
	if err := <-spun; !errors.Is(err, ErrTimeout) {
		t.Fatalf("spinner: %v", err)
	}
}

// syncBuffer is a log sink safe for the forwarder goroutine.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

func TestLogAndStdout(t *testing.T) {
	var sink syncBuffer
	r, err := NewRuntime("", slog.New(slog.NewTextHandler(&sink, &slog.HandlerOptions{Level: slog.LevelDebug})))
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	// handle: log "hello-log" at warn, write "hello-stdout\n" to fd 1 and "hello-stderr\n" to fd 2.
	m := load(t, r, cellWAT{
		Imports: `(import "cloudskin" "log" (func $log (param i32 i32 i32)))
			(import "wasi_snapshot_preview1" "fd_write" (func $fd_write (param i32 i32 i32 i32) (result i32)))
			(import "cloudskin" "now" (func $now (result i64)))`,
		Extra: `(data (i32.const 100) "hello-log")
			(data (i32.const 200) "hello-stdout\n")
			(data (i32.const 300) "hello-stderr\n")`,
		Handle: `
			(call $log (i32.const 2) (i32.const 100) (i32.const 9))
			(i32.store (i32.const 400) (i32.const 200)) (i32.store (i32.const 404) (i32.const 13))
			(drop (call $fd_write (i32.const 1) (i32.const 400) (i32.const 1) (i32.const 408)))
			(i32.store (i32.const 400) (i32.const 300))
			(drop (call $fd_write (i32.const 2) (i32.const 400) (i32.const 1) (i32.const 408)))
			(if (result i32) (i64.lt_s (call $now) (i64.const 1600000000000000000))
				(then (i32.const -100)) (else (i32.const 0)))`,
	}.String())
	c, err := r.Start(context.Background(), m, Spec{ID: "talker"}, nil)
	if err != nil {
		t.Fatal(err)
	}
	if err := c.Handle(context.Background(), "in", records(1)); err != nil {
		t.Fatal(err)
	}
	c.Close() // drains stdout/stderr
	out := sink.String()
	for _, want := range []string{
		`level=WARN msg="cell log" cell=talker line=hello-log`,
		`msg="cell output" cell=talker line=hello-stdout`,
		`msg="cell output" cell=talker line=hello-stderr`,
	} {
		if !strings.Contains(out, want) {
			t.Errorf("log lacks %q:\n%s", want, out)
		}
	}
}

func TestLogRateLimit(t *testing.T) {
	r := newRuntime(t, "")
	m := load(t, r, cellWAT{
		Imports: `(import "cloudskin" "log" (func $log (param i32 i32 i32)))`,
		Handle: `(local $i i32)
			(loop $l
				(call $log (i32.const 1) (i32.const 16) (i32.const 5))
				(local.set $i (i32.add (local.get $i) (i32.const 1)))
				(br_if $l (i32.lt_u (local.get $i) (i32.const 1000))))
			(i32.const 0)`,
	}.String())
	c := start(t, r, m, Spec{}, nil)
	if err := c.Handle(context.Background(), "in", records(1)); err != nil {
		t.Fatal(err)
	}
	if d := c.Stats().LogDropped; d < 1000-2*logLinesPerSec {
		t.Fatalf("dropped %d of 1000 log lines", d)
	}
}

func TestConfigReachesInit(t *testing.T) {
	r := newRuntime(t, "")
	// init keeps the config's first byte; handle emits it.
	m := load(t, r, cellWAT{
		Extra: `(func (export "cloudskin_init") (param $p i32) (param $n i32) (result i32)
				(if (i32.eqz (local.get $n)) (then (return (i32.const -101))))
				(i32.store8 (i32.const 40) (i32.load8_u (local.get $p)))
				(i32.const 0))`,
		Handle: `(call $emit (i32.const 16) (i32.const 5) (i32.const 40) (i32.const 1))`,
	}.String())
	var col collector
	c := start(t, r, m, Spec{Config: []byte(`{"x":1}`), Outputs: []string{"count"}}, col.out)
	if err := c.Handle(context.Background(), "in", records(1)); err != nil {
		t.Fatal(err)
	}
	if got := col.all(); len(got) != 1 || got[0] != "count:7b" {
		t.Fatalf("outputs %v", got)
	}
	if _, err := r.Start(context.Background(), m, Spec{ID: "empty"}, nil); err == nil || !strings.Contains(err.Error(), "-101") {
		t.Fatalf("Start without config: %v", err)
	}
}

func TestCache(t *testing.T) {
	dir := t.TempDir()
	wasm := wasmOf(t, cellWAT{}.String())
	digest := digestOf(wasm)

	loadOnce := func() (*Module, CacheStats) {
		t.Helper()
		r, err := NewRuntime(dir, quiet)
		if err != nil {
			t.Fatal(err)
		}
		defer r.Close()
		m, err := r.Load(wasm, digest)
		if err != nil {
			t.Fatal(err)
		}
		// The module works, whichever way it was made.
		var col collector
		c, err := r.Start(context.Background(), m, Spec{ID: "c", Outputs: []string{"count"}}, col.out)
		if err != nil {
			t.Fatal(err)
		}
		if err := c.Handle(context.Background(), "in", records(4)); err != nil || len(col.all()) != 1 {
			t.Fatalf("handle: %v, %v", err, col.all())
		}
		c.Close()
		m.Close()
		return m, r.CacheStats()
	}

	m, st := loadOnce()
	if m.FromCache || st != (CacheStats{Misses: 1}) {
		t.Fatalf("first load: fromCache=%v %+v", m.FromCache, st)
	}
	files, _ := filepath.Glob(filepath.Join(dir, digest+"-*.cwasm"))
	if len(files) != 1 {
		t.Fatalf("cache files %v", files)
	}
	m, st = loadOnce()
	if !m.FromCache || st != (CacheStats{Hits: 1}) {
		t.Fatalf("second load: fromCache=%v %+v", m.FromCache, st)
	}

	// A flipped byte in the middle, a truncated file, garbage: each is recompiled.
	orig, err := os.ReadFile(files[0])
	if err != nil {
		t.Fatal(err)
	}
	flipped := bytes.Clone(orig)
	flipped[len(flipped)/2] ^= 0xff
	for name, bad := range map[string][]byte{
		"flipped": flipped, "truncated": orig[:len(orig)/3], "garbage": []byte("not compiled code"), "empty": nil,
	} {
		if err := os.WriteFile(files[0], bad, 0o600); err != nil {
			t.Fatal(err)
		}
		m, st = loadOnce()
		if m.FromCache || st != (CacheStats{Misses: 1}) {
			t.Fatalf("%s: fromCache=%v %+v", name, m.FromCache, st)
		}
		if m, st = loadOnce(); !m.FromCache || st.Hits != 1 {
			t.Fatalf("%s: cache not rewritten: %+v", name, st)
		}
	}
}

// TestLoadCached is the agent's restart path: a module it ran before comes back from the
// compiled-code cache by digest alone, and anything unsound in the cache is a miss.
func TestLoadCached(t *testing.T) {
	dir := t.TempDir()
	wasm := wasmOf(t, cellWAT{}.String())
	digest := digestOf(wasm)
	r, err := NewRuntime(dir, quiet)
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()

	if _, err := r.LoadCached(digest); !errors.Is(err, ErrNotCached) {
		t.Fatalf("empty cache: %v", err)
	}
	for _, bad := range []string{"", "sha256:xyz", strings.Repeat("g", 64), digest[:60]} {
		if _, err := r.LoadCached(bad); !errors.Is(err, ErrDigest) {
			t.Fatalf("LoadCached(%q): %v", bad, err)
		}
	}
	m, err := r.Load(wasm, digest)
	if err != nil {
		t.Fatal(err)
	}
	m.Close()

	m, err = r.LoadCached("sha256:" + strings.ToUpper(digest))
	if err != nil {
		t.Fatal(err)
	}
	var col collector
	c, err := r.Start(context.Background(), m, Spec{ID: "c", Outputs: []string{"count"}}, col.out)
	if err != nil {
		t.Fatal(err)
	}
	if err := c.Handle(context.Background(), "in", records(3)); err != nil || len(col.all()) != 1 {
		t.Fatalf("handle: %v, %v", err, col.all())
	}
	c.Close()
	m.Close()

	// Garbage under a correct trailer passes the checksum; wasmtime refuses it, and that is
	// a miss too, with the entry removed.
	files, _ := filepath.Glob(filepath.Join(dir, digest+"-*.cwasm"))
	if len(files) != 1 {
		t.Fatalf("cache files %v", files)
	}
	facts := (&Module{}).facts()
	junk := append([]byte("\x7fELF but not really compiled code"), facts...)
	junk = binary.LittleEndian.AppendUint32(junk, uint32(len(facts)))
	junk = binary.LittleEndian.AppendUint32(junk, crc32.Checksum(junk, castagnoli))
	junk = append(junk, cacheMagic...)
	if _, ok := checkCacheBytes(junk); !ok {
		t.Fatal("trailer helper disagrees with the writer")
	}
	if err := os.WriteFile(files[0], junk, 0o600); err != nil {
		t.Fatal(err)
	}
	if _, err := r.LoadCached(digest); !errors.Is(err, ErrNotCached) {
		t.Fatalf("refused entry: %v", err)
	}
	if _, err := os.Stat(files[0]); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("refused entry left in place: %v", err)
	}
}
