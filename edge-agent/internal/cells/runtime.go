package cells

import (
	"fmt"
	"io"
	"log/slog"
	"os"
	"runtime/debug"
	"sync"
	"sync/atomic"
	"time"

	"github.com/bytecodealliance/wasmtime-go/v39"
)

// epochTick is how often the engine's epoch advances; CallTimeout is rounded up to it.
const epochTick = 10 * time.Millisecond

// Runtime owns one wasmtime engine (fuel and epoch interruption on), the linker with the
// host imports, and the compiled-code cache. It is safe for concurrent use; each Cell is
// not (its calls are serialized).
type Runtime struct {
	engine   *wasmtime.Engine
	linker   *wasmtime.Linker
	log      *slog.Logger
	cacheDir string // "" disables the compiled-code cache
	stdioDir string // per-runtime temp dir for the cells' stdout/stderr FIFOs

	cacheHits   atomic.Uint64
	cacheMisses atomic.Uint64
	cellSeq     atomic.Uint64

	// busy counts calls into cells in flight; the epoch advances only
	// while it is above 0 (an idle node must not wake 100 times a second).
	// wake tells the ticker a call started.
	busy atomic.Int64
	wake chan struct{}

	stop      chan struct{}
	ticker    sync.WaitGroup
	closeOnce sync.Once
}

// CacheStats counts compiled-code cache lookups.
type CacheStats struct {
	Hits, Misses uint64
}

// NewRuntime starts a runtime. cacheDir holds compiled code (created 0700; whoever can
// write it can run native code in the agent, so it must be the agent's own); "" disables
// the cache. log may be nil.
func NewRuntime(cacheDir string, log *slog.Logger) (*Runtime, error) {
	if log == nil {
		log = slog.New(slog.NewTextHandler(io.Discard, nil))
	}
	if cacheDir != "" {
		if err := os.MkdirAll(cacheDir, 0o700); err != nil {
			return nil, fmt.Errorf("cells: cache dir: %w", err)
		}
	}
	stdioDir, err := os.MkdirTemp("", "cloudskin-cells-")
	if err != nil {
		return nil, fmt.Errorf("cells: stdio dir: %w", err)
	}

	cfg := wasmtime.NewConfig()
	cfg.SetConsumeFuel(true)
	cfg.SetEpochInterruption(true)
	cfg.SetWasmThreads(false)  // no shared memories
	cfg.SetWasmMemory64(false) // the ABI's pointers are i32
	engine := wasmtime.NewEngineWithConfig(cfg)

	r := &Runtime{
		engine:   engine,
		log:      log,
		cacheDir: cacheDir,
		stdioDir: stdioDir,
		stop:     make(chan struct{}),
		wake:     make(chan struct{}, 1),
	}
	if err := r.newLinker(); err != nil {
		engine.Close()
		os.RemoveAll(stdioDir)
		return nil, err
	}
	r.ticker.Add(1)
	go r.tick()
	return r, nil
}

// tick advances the epoch so that a cell's epoch deadline (its wall-clock bound) elapses,
// but only while a call is in flight: a deadline counts epochs from when its call armed
// it, so epochs that pass with no call running bound nothing.
func (r *Runtime) tick() {
	defer r.ticker.Done()
	t := time.NewTicker(epochTick)
	defer t.Stop()
	for {
		if r.busy.Load() == 0 {
			select {
			case <-r.stop:
				return
			case <-r.wake:
				t.Reset(epochTick)
				continue
			}
		}
		select {
		case <-r.stop:
			return
		case <-t.C:
			r.engine.IncrementEpoch()
		}
	}
}

// enter marks a call into a cell as started (the epoch ticks); leave as ended.
func (r *Runtime) enter() {
	if r.busy.Add(1) == 1 {
		select {
		case r.wake <- struct{}{}:
		default: // a wake is already pending
		}
	}
}

func (r *Runtime) leave() { r.busy.Add(-1) }

// CacheStats reports compiled-code cache hits and misses since NewRuntime.
func (r *Runtime) CacheStats() CacheStats {
	return CacheStats{Hits: r.cacheHits.Load(), Misses: r.cacheMisses.Load()}
}

// Close stops the epoch ticker and releases the engine. Close every Cell and Module first.
func (r *Runtime) Close() error {
	r.closeOnce.Do(func() {
		close(r.stop)
		r.ticker.Wait()
		r.linker.Close()
		r.engine.Close()
		os.RemoveAll(r.stdioDir)
	})
	return nil
}

// wasmtimeVersion names the compiled-code format in cache file names.
var wasmtimeVersion = func() string {
	if bi, ok := debug.ReadBuildInfo(); ok {
		for _, d := range bi.Deps {
			if d.Path == "github.com/bytecodealliance/wasmtime-go/v39" {
				if d.Replace != nil {
					d = d.Replace
				}
				if d.Version != "" && d.Version != "(devel)" {
					return "wasmtime-" + d.Version
				}
			}
		}
	}
	return "wasmtime-v39"
}()
