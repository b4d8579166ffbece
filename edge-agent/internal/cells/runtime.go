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

// tick advances the epoch so that a cell's epoch deadline (its wall-clock bound) elapses.
func (r *Runtime) tick() {
	defer r.ticker.Done()
	t := time.NewTicker(epochTick)
	defer t.Stop()
	for {
		select {
		case <-r.stop:
			return
		case <-t.C:
			r.engine.IncrementEpoch()
		}
	}
}

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
