package benchpeer

import (
	"context"
	"crypto/rand"
	"fmt"
	"time"

	"github.com/tetratelabs/wazero"
	"github.com/tetratelabs/wazero/api"
	"github.com/tetratelabs/wazero/imports/wasi_snapshot_preview1"

	"github.com/cloudskin/cloudskin/edge-agent/internal/cells"
)

// wzRuntime is the wazero peer: the same modules, the same ABI calls, in-process. It has
// the cloudskin host imports and WASI (no preopens, clocks and randomness real as in
// wasmtime's WASI). wazero has no fuel, so each call is bounded by its context only
// (WithCloseOnContextDone, the nearest thing to the epoch deadline); memory is capped at
// the cells default of 64 MiB.
type wzRuntime struct {
	rt    wazero.Runtime
	cache wazero.CompilationCache
}

// outputKey carries the Output of the cell being called into the host imports.
type outputKey struct{}

func newWazero(cacheDir string) (*wzRuntime, error) {
	ctx := context.Background()
	cfg := wazero.NewRuntimeConfig().WithMemoryLimitPages(1024).WithCloseOnContextDone(true)
	var cache wazero.CompilationCache
	if cacheDir != "" {
		var err error
		if cache, err = wazero.NewCompilationCacheWithDir(cacheDir); err != nil {
			return nil, err
		}
		cfg = cfg.WithCompilationCache(cache)
	}
	rt := wazero.NewRuntimeWithConfig(ctx, cfg)
	if _, err := wasi_snapshot_preview1.Instantiate(ctx, rt); err != nil {
		rt.Close(ctx)
		return nil, err
	}
	i32, i64 := api.ValueTypeI32, api.ValueTypeI64
	_, err := rt.NewHostModuleBuilder("cloudskin").
		NewFunctionBuilder().WithGoModuleFunction(api.GoModuleFunc(wzEmit), []api.ValueType{i32, i32, i32, i32}, []api.ValueType{i32}).Export("emit").
		NewFunctionBuilder().WithGoModuleFunction(api.GoModuleFunc(func(_ context.Context, _ api.Module, stack []uint64) {
		stack[0] = api.EncodeI32(cells.CodeUnsupported)
	}), []api.ValueType{i32, i32, i32, i32}, []api.ValueType{i32}).Export("send").
		NewFunctionBuilder().WithGoModuleFunction(api.GoModuleFunc(func(context.Context, api.Module, []uint64) {}), []api.ValueType{i32, i32, i32}, nil).Export("log").
		NewFunctionBuilder().WithGoModuleFunction(api.GoModuleFunc(func(_ context.Context, _ api.Module, stack []uint64) {
		stack[0] = api.EncodeI64(time.Now().UnixNano())
	}), nil, []api.ValueType{i64}).Export("now").
		Instantiate(ctx)
	if err != nil {
		rt.Close(ctx)
		return nil, err
	}
	return &wzRuntime{rt: rt, cache: cache}, nil
}

func (w *wzRuntime) Close() {
	ctx := context.Background()
	w.rt.Close(ctx)
	if w.cache != nil {
		w.cache.Close(ctx)
	}
}

// wzEmit copies the record out of guest memory and hands it to the cell's Output, as
// cells' emit does (minus the declared-output check and the rate limit).
func wzEmit(ctx context.Context, m api.Module, stack []uint64) {
	mem := m.Memory()
	stream, ok1 := mem.Read(api.DecodeU32(stack[0]), api.DecodeU32(stack[1]))
	data, ok2 := mem.Read(api.DecodeU32(stack[2]), api.DecodeU32(stack[3]))
	if !ok1 || !ok2 {
		stack[0] = api.EncodeI32(cells.CodeBadPointer)
		return
	}
	if out, _ := ctx.Value(outputKey{}).(cells.Output); out != nil {
		out(string(stream), append([]byte(nil), data...))
	}
	stack[0] = api.EncodeI32(cells.CodeOK)
}

// wzCell is one instance speaking the cell ABI.
type wzCell struct {
	mod                 api.Module
	alloc, free, handle api.Function
	ctx                 context.Context
	stack               []uint64
	buf                 []byte
}

// start instantiates (anonymously, so any number of instances may coexist), runs
// _initialize and checks the ABI version, as cells.Runtime.Start does.
func (w *wzRuntime) start(compiled wazero.CompiledModule, out cells.Output) (*wzCell, error) {
	ctx := context.WithValue(context.Background(), outputKey{}, out)
	cfg := wazero.NewModuleConfig().WithName("").WithStartFunctions().
		WithSysWalltime().WithSysNanotime().WithSysNanosleep().WithRandSource(rand.Reader)
	mod, err := w.rt.InstantiateModule(ctx, compiled, cfg)
	if err != nil {
		return nil, err
	}
	c := &wzCell{
		mod:    mod,
		alloc:  mod.ExportedFunction("cloudskin_alloc"),
		free:   mod.ExportedFunction("cloudskin_free"),
		handle: mod.ExportedFunction("cloudskin_handle"),
		ctx:    ctx,
		stack:  make([]uint64, 2),
	}
	if f := mod.ExportedFunction("_initialize"); f != nil {
		if _, err := f.Call(ctx); err != nil {
			mod.Close(ctx)
			return nil, fmt.Errorf("_initialize: %w", err)
		}
	}
	v, err := mod.ExportedFunction("cloudskin_abi_version").Call(ctx)
	if err != nil || api.DecodeI32(v[0]) != cells.ABIVersion {
		mod.Close(ctx)
		return nil, fmt.Errorf("cloudskin_abi_version: %v %v", v, err)
	}
	return c, nil
}

// Handle is cells.Cell.Handle's path: encode, alloc, copy in, handle, free.
func (c *wzCell) Handle(input string, recs []cells.Record) error {
	c.buf = appendBatch(c.buf[:0], input, recs)
	n := uint64(len(c.buf))
	s := c.stack
	s[0] = n
	if err := c.alloc.CallWithStack(c.ctx, s); err != nil {
		return err
	}
	ptr := s[0]
	if ptr == 0 || !c.mod.Memory().Write(uint32(ptr), c.buf) {
		return fmt.Errorf("cloudskin_alloc(%d) returned %d", n, ptr)
	}
	s[0], s[1] = ptr, n
	if err := c.handle.CallWithStack(c.ctx, s); err != nil {
		return err
	}
	res := api.DecodeI32(s[0])
	s[0], s[1] = ptr, n
	if err := c.free.CallWithStack(c.ctx, s); err != nil {
		return err
	}
	if res < 0 {
		return &cells.HandlerError{Code: res}
	}
	return nil
}

func (c *wzCell) Close() { c.mod.Close(context.Background()) }
