// Package wasmtest builds small WebAssembly modules byte by byte for tests:
// valid cells, and cells broken in one chosen way. It needs no toolchain.
package wasmtest

// Value types.
const (
	I32 byte = 0x7f
	I64 byte = 0x7e
	F32 byte = 0x7d
)

// External kinds.
const (
	KindFunc   byte = 0
	KindTable  byte = 1
	KindMemory byte = 2
	KindGlobal byte = 3
)

// Module is a module under construction. Add imports before functions:
// function indexes count imports first.
type Module struct {
	types    [][2][]byte
	imports  [][]byte
	nImpFunc uint32
	funcs    []uint32
	bodies   [][]byte
	memory   []byte // encoded limits; nil for no memory section
	exports  [][]byte
	customs  [][]byte
}

// Type adds (or reuses) a function type and returns its index.
func (m *Module) Type(params, results []byte) uint32 {
	for i, t := range m.types {
		if string(t[0]) == string(params) && string(t[1]) == string(results) {
			return uint32(i)
		}
	}
	m.types = append(m.types, [2][]byte{params, results})
	return uint32(len(m.types) - 1)
}

// ImportFunc imports a function and returns its function index.
func (m *Module) ImportFunc(module, name string, params, results []byte) uint32 {
	t := m.Type(params, results)
	m.imports = append(m.imports, cat(Name(module), Name(name), []byte{KindFunc}, U32(t)))
	m.nImpFunc++
	return m.nImpFunc - 1
}

// ImportMemory imports a memory with the given minimum pages.
func (m *Module) ImportMemory(module, name string, min uint32) {
	m.imports = append(m.imports, cat(Name(module), Name(name), []byte{KindMemory, 0}, U32(min)))
}

// Func defines a function with body (locals and code, without the size)
// and returns its function index.
func (m *Module) Func(params, results []byte, body []byte) uint32 {
	m.funcs = append(m.funcs, m.Type(params, results))
	m.bodies = append(m.bodies, body)
	return m.nImpFunc + uint32(len(m.funcs)) - 1
}

// Memory defines the module's memory; max < 0 means no maximum.
func (m *Module) Memory(min uint32, max int64) {
	if max < 0 {
		m.memory = cat([]byte{0}, U32(min))
		return
	}
	m.memory = cat([]byte{1}, U32(min), U32(uint32(max)))
}

// MemoryLimits defines the memory with raw limits bytes (flags, min, max).
func (m *Module) MemoryLimits(raw []byte) { m.memory = raw }

// Export exports index of kind as name.
func (m *Module) Export(name string, kind byte, index uint32) {
	m.exports = append(m.exports, cat(Name(name), []byte{kind}, U32(index)))
}

// Custom adds a custom section.
func (m *Module) Custom(name string, data []byte) {
	m.customs = append(m.customs, cat(Name(name), data))
}

// Bytes encodes the module.
func (m *Module) Bytes() []byte {
	out := []byte{0, 'a', 's', 'm', 1, 0, 0, 0}
	if len(m.types) > 0 {
		var entries [][]byte
		for _, t := range m.types {
			entries = append(entries, cat([]byte{0x60}, Vec(t[0]), Vec(t[1])))
		}
		out = append(out, Section(1, Vector(entries...))...)
	}
	if len(m.imports) > 0 {
		out = append(out, Section(2, Vector(m.imports...))...)
	}
	if len(m.funcs) > 0 {
		var entries [][]byte
		for _, t := range m.funcs {
			entries = append(entries, U32(t))
		}
		out = append(out, Section(3, Vector(entries...))...)
	}
	if m.memory != nil {
		out = append(out, Section(5, Vector(m.memory))...)
	}
	if len(m.exports) > 0 {
		out = append(out, Section(7, Vector(m.exports...))...)
	}
	if len(m.bodies) > 0 {
		var entries [][]byte
		for _, b := range m.bodies {
			entries = append(entries, cat(U32(uint32(len(b))), b))
		}
		out = append(out, Section(10, Vector(entries...))...)
	}
	for _, c := range m.customs {
		out = append(out, Section(0, c)...)
	}
	return out
}

// Const is a body returning the i32 constant v.
func Const(v int32) []byte { return cat([]byte{0, 0x41}, S32(v), []byte{0x0b}) }

// Empty is a body that does nothing.
func Empty() []byte { return []byte{0, 0x0b} }

// Options shape Cell.
type Options struct {
	Skip       map[string]bool // ABI exports to leave out
	MinPages   uint32          // default 1
	MaxPages   int64           // default 16; negative: no maximum
	ABIVersion int32           // default 1
	Init       bool            // also export _initialize and cloudskin_init
	Imports    bool            // import cloudskin.log and wasi fd_write
}

// Cell builds a module following ABI v1, shaped by o.
func Cell(o Options) *Module {
	if o.MinPages == 0 {
		o.MinPages = 1
	}
	if o.MaxPages == 0 {
		o.MaxPages = 16
	}
	if o.ABIVersion == 0 {
		o.ABIVersion = 1
	}
	m := &Module{}
	if o.Imports {
		m.ImportFunc("cloudskin", "log", []byte{I32, I32, I32}, nil)
		m.ImportFunc("wasi_snapshot_preview1", "fd_write", []byte{I32, I32, I32, I32}, []byte{I32})
	}
	fns := map[string]uint32{
		"cloudskin_abi_version": m.Func(nil, []byte{I32}, Const(o.ABIVersion)),
		"cloudskin_alloc":       m.Func([]byte{I32}, []byte{I32}, Const(1024)),
		"cloudskin_free":        m.Func([]byte{I32, I32}, nil, Empty()),
		"cloudskin_handle":      m.Func([]byte{I32, I32}, []byte{I32}, Const(0)),
	}
	if o.Init {
		fns["_initialize"] = m.Func(nil, nil, Empty())
		fns["cloudskin_init"] = m.Func([]byte{I32, I32}, []byte{I32}, Const(0))
	}
	m.Memory(o.MinPages, o.MaxPages)
	if !o.Skip["memory"] {
		m.Export("memory", KindMemory, 0)
	}
	for _, name := range []string{"_initialize", "cloudskin_abi_version", "cloudskin_alloc", "cloudskin_free", "cloudskin_init", "cloudskin_handle"} {
		if idx, ok := fns[name]; ok && !o.Skip[name] {
			m.Export(name, KindFunc, idx)
		}
	}
	return m
}

// Section encodes a section with its id and size.
func Section(id byte, content []byte) []byte {
	return cat([]byte{id}, U32(uint32(len(content))), content)
}

// Vector encodes a count followed by already-encoded entries.
func Vector(entries ...[]byte) []byte {
	return cat(append([][]byte{U32(uint32(len(entries)))}, entries...)...)
}

// Vec encodes a byte vector (a count, then the bytes).
func Vec(b []byte) []byte { return cat(U32(uint32(len(b))), b) }

// Name encodes a name.
func Name(s string) []byte { return Vec([]byte(s)) }

// U32 encodes an unsigned LEB128.
func U32(v uint32) []byte {
	var out []byte
	for {
		c := byte(v & 0x7f)
		v >>= 7
		if v != 0 {
			out = append(out, c|0x80)
			continue
		}
		return append(out, c)
	}
}

// S32 encodes a signed LEB128.
func S32(v int32) []byte {
	var out []byte
	for {
		c := byte(v & 0x7f)
		v >>= 7
		if (v == 0 && c&0x40 == 0) || (v == -1 && c&0x40 != 0) {
			return append(out, c)
		}
		out = append(out, c|0x80)
	}
}

func cat(parts ...[]byte) []byte {
	var out []byte
	for _, p := range parts {
		out = append(out, p...)
	}
	return out
}
