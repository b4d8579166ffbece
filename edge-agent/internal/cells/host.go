package cells

import (
	"fmt"
	"log/slog"
	"time"

	"github.com/bytecodealliance/wasmtime-go/v39"
)

// newLinker defines WASI and the cloudskin imports once per runtime. The imports find their
// cell through the store's data, so one linker serves every store.
func (r *Runtime) newLinker() error {
	l := wasmtime.NewLinker(r.engine)
	if err := l.DefineWasi(); err != nil {
		l.Close()
		return fmt.Errorf("cells: define wasi: %w", err)
	}
	i32 := wasmtime.NewValType(wasmtime.KindI32)
	i64 := wasmtime.NewValType(wasmtime.KindI64)
	defs := []struct {
		name string
		ty   *wasmtime.FuncType
		fn   func(*wasmtime.Caller, []wasmtime.Val) ([]wasmtime.Val, *wasmtime.Trap)
	}{
		{"emit", wasmtime.NewFuncType([]*wasmtime.ValType{i32, i32, i32, i32}, []*wasmtime.ValType{i32}), hostEmit},
		{"send", wasmtime.NewFuncType([]*wasmtime.ValType{i32, i32, i32, i32}, []*wasmtime.ValType{i32}), hostSend},
		{"log", wasmtime.NewFuncType([]*wasmtime.ValType{i32, i32, i32}, nil), hostLog},
		{"now", wasmtime.NewFuncType(nil, []*wasmtime.ValType{i64}), hostNow},
	}
	for _, d := range defs {
		if err := l.FuncNew("cloudskin", d.name, d.ty, d.fn); err != nil {
			l.Close()
			return fmt.Errorf("cells: define cloudskin.%s: %w", d.name, err)
		}
	}
	r.linker = l
	return nil
}

// hostImports are the imports a cell may use from module cloudskin, with their signatures.
var hostImports = map[string]string{
	"emit": "(i32,i32,i32,i32)->(i32)",
	"send": "(i32,i32,i32,i32)->(i32)",
	"log":  "(i32,i32,i32)->()",
	"now":  "()->(i64)",
}

func i32Result(v int32) []wasmtime.Val { return []wasmtime.Val{wasmtime.ValI32(v)} }

// guestBytes returns the cell's memory [ptr, ptr+n) or false if it is out of bounds. The
// slice aliases wasm memory: copy before the import returns.
func guestBytes(c *Cell, caller *wasmtime.Caller, ptr, n int32) ([]byte, bool) {
	mem := c.mem
	if mem == nil { // an import called from a start function, before Start cached memory
		ext := caller.GetExport("memory")
		if ext == nil || ext.Memory() == nil {
			return nil, false
		}
		mem = ext.Memory()
	}
	data := mem.UnsafeData(caller)
	// Pointers and lengths are unsigned i32s.
	p, l := uint64(uint32(ptr)), uint64(uint32(n))
	if p+l > uint64(len(data)) {
		return nil, false
	}
	return data[p : p+l], true
}

func cellOf(caller *wasmtime.Caller) *Cell { return caller.Data().(*Cell) }

func hostEmit(caller *wasmtime.Caller, args []wasmtime.Val) ([]wasmtime.Val, *wasmtime.Trap) {
	c := cellOf(caller)
	streamLen, dataLen := args[1].I32(), args[3].I32()
	if uint32(streamLen) > maxStreamNameBytes {
		return i32Result(CodeUnknownStream), nil
	}
	sb, ok := guestBytes(c, caller, args[0].I32(), streamLen)
	if !ok {
		return i32Result(CodeBadPointer), nil
	}
	stream, declared := c.outputs[string(sb)]
	if !declared {
		return i32Result(CodeUnknownStream), nil
	}
	if uint32(dataLen) > MaxRecordBytes {
		return i32Result(CodeTooLarge), nil
	}
	db, ok := guestBytes(c, caller, args[2].I32(), dataLen)
	if !ok {
		return i32Result(CodeBadPointer), nil
	}
	if !c.outRate.take(time.Now()) {
		c.stats.rateLimited.Add(1)
		return i32Result(CodeRateLimited), nil
	}
	data := make([]byte, len(db))
	copy(data, db)
	if code := c.deliver(stream, data); code != CodeOK {
		return i32Result(code), nil
	}
	c.stats.emitted.Add(1)
	return i32Result(CodeOK), nil
}

// deliver calls the Output, turning a panic in it (a host bug) into ERR_UNSUPPORTED rather
// than a panic through wasm.
func (c *Cell) deliver(stream string, data []byte) (code int32) {
	if c.out == nil {
		return CodeOK
	}
	defer func() {
		if p := recover(); p != nil {
			c.log.Error("cell output panicked", "stream", stream, "panic", fmt.Sprint(p))
			code = CodeUnsupported
		}
	}()
	c.out(stream, data)
	return CodeOK
}

func hostSend(caller *wasmtime.Caller, args []wasmtime.Val) ([]wasmtime.Val, *wasmtime.Trap) {
	c := cellOf(caller)
	if uint32(args[1].I32()) > maxStreamNameBytes {
		return i32Result(CodeUnknownStream), nil
	}
	if uint32(args[3].I32()) > MaxRecordBytes {
		return i32Result(CodeTooLarge), nil
	}
	nb, ok := guestBytes(c, caller, args[0].I32(), args[1].I32())
	if !ok {
		return i32Result(CodeBadPointer), nil
	}
	db, ok := guestBytes(c, caller, args[2].I32(), args[3].I32())
	if !ok {
		return i32Result(CodeBadPointer), nil
	}
	if c.send == nil {
		return i32Result(CodeUnsupported), nil // not in a tissue
	}
	if !c.outRate.take(time.Now()) {
		c.stats.rateLimited.Add(1)
		return i32Result(CodeRateLimited), nil
	}
	data := make([]byte, len(db))
	copy(data, db)
	return i32Result(c.send(string(nb), data)), nil
}

func hostLog(caller *wasmtime.Caller, args []wasmtime.Val) ([]wasmtime.Val, *wasmtime.Trap) {
	c := cellOf(caller)
	n := args[2].I32()
	truncated := false
	if uint32(n) > maxLogLineBytes {
		n, truncated = maxLogLineBytes, true
	}
	b, ok := guestBytes(c, caller, args[1].I32(), n)
	if !ok {
		return nil, nil // log has no result to report a bad pointer through
	}
	level := slog.LevelInfo
	switch args[0].I32() {
	case 0:
		level = slog.LevelDebug
	case 2:
		level = slog.LevelWarn
	case 3:
		level = slog.LevelError
	}
	c.logLine(level, "cell log", string(b), truncated)
	return nil, nil
}

func hostNow(*wasmtime.Caller, []wasmtime.Val) ([]wasmtime.Val, *wasmtime.Trap) {
	return []wasmtime.Val{wasmtime.ValI64(time.Now().UnixNano())}, nil
}
