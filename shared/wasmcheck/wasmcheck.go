// Package wasmcheck checks that a WebAssembly binary has the shape of a
// CloudSkin cell (docs/cell-abi.md, ABI v1) without running or compiling
// it: the binary format, the imports it asks for, the exports and their
// signatures, and its linear memory. It is pure Go and safe on any input;
// whether the code itself validates and compiles is for the agent's
// runtime to say.
package wasmcheck

import (
	"bytes"
	"errors"
	"fmt"
	"slices"
	"strings"
)

// Errors, wrapped with the detail a cell author needs.
var (
	// ErrNotWasm is input that does not start like a WebAssembly binary.
	ErrNotWasm = errors.New("not a WebAssembly binary")
	// ErrMalformed is a binary that breaks the WebAssembly binary format.
	ErrMalformed = errors.New("malformed WebAssembly module")
	// ErrABI is a well-formed module that is not a cell of ABI v1.
	ErrABI = errors.New("not a CloudSkin cell (ABI v1)")
)

// Report is what a check learns about a module.
type Report struct {
	// ABIVersion is what cloudskin_abi_version returns when its body is a
	// constant (hand-written and many compiled cells); 0 when only running
	// it can tell, which the agent does at load.
	ABIVersion int32
	Exports    []Extern
	Imports    []Import
	// MemoryMinPages and MemoryMaxPages describe the exported memory in 64
	// KiB pages; MemoryMaxPages is nil when the module sets no maximum.
	MemoryMinPages uint32
	MemoryMaxPages *uint32
}

// Extern is one export: its name and kind (func, table, memory, global, tag).
type Extern struct {
	Name string `json:"name"`
	Kind string `json:"kind"`
}

// Import is one import.
type Import struct {
	Module string `json:"module"`
	Name   string `json:"name"`
	Kind   string `json:"kind"`
}

// External kinds, as the binary encodes them.
const (
	kindFunc byte = iota
	kindTable
	kindMemory
	kindGlobal
	kindTag
)

var kindNames = [...]string{"func", "table", "memory", "global", "tag"}

func kindName(k byte) string {
	if int(k) < len(kindNames) {
		return kindNames[k]
	}
	return fmt.Sprintf("kind %#x", k)
}

// Section ids.
const (
	secCustom    = 0
	secType      = 1
	secImport    = 2
	secFunction  = 3
	secTable     = 4
	secMemory    = 5
	secGlobal    = 6
	secExport    = 7
	secStart     = 8
	secElement   = 9
	secCode      = 10
	secData      = 11
	secDataCount = 12
	secTag       = 13
)

// sectionOrder is the position each non-custom section must keep; the tag
// and data count sections sit out of numeric order.
var sectionOrder = map[byte]int{
	secType: 1, secImport: 2, secFunction: 3, secTable: 4, secMemory: 5, secTag: 6, secGlobal: 7,
	secExport: 8, secStart: 9, secElement: 10, secDataCount: 11, secCode: 12, secData: 13,
}

var magic = []byte{0x00, 'a', 's', 'm', 0x01, 0x00, 0x00, 0x00}

type memory struct {
	min, max uint64
	hasMax   bool
	is64     bool
}

type export struct {
	name  string
	kind  byte
	index uint32
}

// module is what the parser keeps: only what the ABI checks need.
type module struct {
	types      []signature
	funcs      []uint32 // type index of every function, imported first
	importedFn int
	tables     uint64
	mems       []memory
	globals    uint64
	tags       uint64
	imports    []Import
	importSigs []uint32 // type index per function import, in import order
	exports    []export
	bodies     [][]byte // code of every defined function
}

// Check validates wasm against ABI v1 and describes it. Errors wrap
// ErrNotWasm, ErrMalformed or ErrABI.
func Check(wasm []byte) (*Report, error) {
	if len(wasm) < len(magic) || !bytes.Equal(wasm[:4], magic[:4]) {
		return nil, fmt.Errorf("%w: it does not start with the \\0asm header", ErrNotWasm)
	}
	if !bytes.Equal(wasm[4:8], magic[4:]) {
		if wasm[6] != 0 || wasm[7] != 0 {
			return nil, fmt.Errorf("%w: it is a component or a newer binary format (header % x); build a core module", ErrNotWasm, wasm[4:8])
		}
		return nil, fmt.Errorf("%w: binary format version % x, want 01 00 00 00", ErrNotWasm, wasm[4:8])
	}
	m, err := parse(&reader{b: wasm, off: len(magic)})
	if err != nil {
		return nil, err
	}
	return m.checkABI()
}

func parse(r *reader) (*module, error) {
	m := &module{}
	last := 0
	for !r.done() {
		start := r.off
		id, _ := r.byte()
		size, err := r.u32()
		if err != nil {
			return nil, err
		}
		s, err := r.sub(int(size))
		if err != nil {
			return nil, fmt.Errorf("%w: section %d at byte %#x is %d bytes, more than the module has left", ErrMalformed, id, r.base+start, size)
		}
		if id != secCustom {
			pos, ok := sectionOrder[id]
			if !ok {
				return nil, fmt.Errorf("%w: unknown section id %d at byte %#x", ErrMalformed, id, r.base+start)
			}
			if pos <= last {
				return nil, fmt.Errorf("%w: section %d at byte %#x is out of order or repeated", ErrMalformed, id, r.base+start)
			}
			last = pos
		}
		if err := m.section(id, s); err != nil {
			return nil, err
		}
		if !s.done() && id != secCustom {
			return nil, s.errorf("section %d has %d bytes left over", id, s.left())
		}
	}
	if len(m.bodies) != len(m.funcs)-m.importedFn {
		return nil, fmt.Errorf("%w: %d functions declared but %d bodies in the code section", ErrMalformed, len(m.funcs)-m.importedFn, len(m.bodies))
	}
	return m, nil
}

func (m *module) section(id byte, s *reader) error {
	switch id {
	case secCustom:
		_, err := s.name()
		return err
	case secType:
		return m.typeSection(s)
	case secImport:
		return m.importSection(s)
	case secFunction:
		n, err := s.count("function", 1)
		if err != nil {
			return err
		}
		for range n {
			t, err := m.typeIndex(s)
			if err != nil {
				return err
			}
			m.funcs = append(m.funcs, t)
		}
		return nil
	case secMemory:
		n, err := s.count("memory", 2)
		if err != nil {
			return err
		}
		for range n {
			mem, err := memoryType(s)
			if err != nil {
				return err
			}
			m.mems = append(m.mems, mem)
		}
		return nil
	case secExport:
		return m.exportSection(s)
	case secCode:
		n, err := s.count("code", 1)
		if err != nil {
			return err
		}
		for range n {
			size, err := s.u32()
			if err != nil {
				return err
			}
			body, err := s.bytes(int(size))
			if err != nil {
				return err
			}
			m.bodies = append(m.bodies, body)
		}
		return nil
	case secTable, secGlobal, secTag:
		// Only how many there are matters (for export indexes); the
		// entries are for the runtime to validate.
		n, err := s.count("entry", 1)
		if err != nil {
			return err
		}
		switch id {
		case secTable:
			m.tables += uint64(n)
		case secGlobal:
			m.globals += uint64(n)
		default:
			m.tags += uint64(n)
		}
		s.off = len(s.b)
		return nil
	default: // start, element, data, data count: nothing the ABI looks at
		s.off = len(s.b)
		return nil
	}
}

func (m *module) typeSection(s *reader) error {
	n, err := s.count("type", 3)
	if err != nil {
		return err
	}
	for range n {
		form, err := s.byte()
		if err != nil {
			return err
		}
		if form != 0x60 {
			return fmt.Errorf("%w: type form %#x at byte %#x is not a function type (garbage-collected types are not supported)", ErrABI, form, s.base+s.off-1)
		}
		var sig signature
		for _, list := range []*[]byte{&sig.params, &sig.results} {
			k, err := s.count("value type", 1)
			if err != nil {
				return err
			}
			for range k {
				v, err := valueType(s)
				if err != nil {
					return err
				}
				*list = append(*list, v)
			}
		}
		m.types = append(m.types, sig)
	}
	return nil
}

// valueType reads a value type; reference types with a heap type are
// accepted and reported by their first byte, which never equals i32 or i64.
func valueType(s *reader) (byte, error) {
	v, err := s.byte()
	if err != nil {
		return 0, err
	}
	switch {
	case v >= 0x7b && v <= 0x7f, v == 0x70, v == 0x6f, v >= 0x69 && v <= 0x74:
		return v, nil
	case v == 0x63 || v == 0x64:
		_, err := s.sleb(33)
		return v, err
	default:
		return 0, fmt.Errorf("%w: at byte %#x: unknown value type %#x", ErrMalformed, s.base+s.off-1, v)
	}
}

func (m *module) typeIndex(s *reader) (uint32, error) {
	t, err := s.u32()
	if err != nil {
		return 0, err
	}
	if int64(t) >= int64(len(m.types)) {
		return 0, fmt.Errorf("%w: at byte %#x: type index %d out of range (%d types)", ErrMalformed, s.base+s.off-1, t, len(m.types))
	}
	return t, nil
}

func limits(s *reader, allow64 bool) (memory, error) {
	flags, err := s.byte()
	if err != nil {
		return memory{}, err
	}
	if flags > 7 || (!allow64 && flags > 1) {
		return memory{}, fmt.Errorf("%w: at byte %#x: unknown limits flags %#x", ErrMalformed, s.base+s.off-1, flags)
	}
	l := memory{hasMax: flags&1 != 0, is64: flags&4 != 0}
	bits := uint(32)
	if l.is64 {
		bits = 64
	}
	if l.min, err = s.uleb(bits); err != nil {
		return l, err
	}
	if l.hasMax {
		if l.max, err = s.uleb(bits); err != nil {
			return l, err
		}
		if l.max < l.min {
			return l, fmt.Errorf("%w: at byte %#x: maximum %d is below minimum %d", ErrMalformed, s.base+s.off, l.max, l.min)
		}
	}
	return l, nil
}

func memoryType(s *reader) (memory, error) {
	at := s.base + s.off
	mem, err := limits(s, true)
	if err != nil {
		return mem, err
	}
	if !mem.is64 && (mem.min > MaxMemoryPages || mem.max > MaxMemoryPages) {
		return mem, fmt.Errorf("%w: memory at byte %#x asks for %d pages (minimum %d, maximum %d); 32-bit memory holds at most %d pages (4 GiB)",
			ErrMalformed, at, max(mem.min, mem.max), mem.min, mem.max, MaxMemoryPages)
	}
	return mem, nil
}

func (m *module) importSection(s *reader) error {
	n, err := s.count("import", 4)
	if err != nil {
		return err
	}
	for range n {
		mod, err := s.name()
		if err != nil {
			return err
		}
		name, err := s.name()
		if err != nil {
			return err
		}
		kind, err := s.byte()
		if err != nil {
			return err
		}
		switch kind {
		case kindFunc:
			t, err := m.typeIndex(s)
			if err != nil {
				return err
			}
			m.funcs = append(m.funcs, t)
			m.importSigs = append(m.importSigs, t)
			m.importedFn++
		case kindTable:
			if _, err := valueType(s); err != nil {
				return err
			}
			if _, err := limits(s, true); err != nil {
				return err
			}
			m.tables++
		case kindMemory:
			mem, err := memoryType(s)
			if err != nil {
				return err
			}
			m.mems = append(m.mems, mem)
		case kindGlobal:
			if _, err := valueType(s); err != nil {
				return err
			}
			mut, err := s.byte()
			if err != nil {
				return err
			}
			if mut > 1 {
				return s.errorf("global mutability %#x", mut)
			}
			m.globals++
		case kindTag:
			attr, err := s.byte()
			if err != nil {
				return err
			}
			if attr != 0 {
				return s.errorf("tag attribute %#x", attr)
			}
			if _, err := m.typeIndex(s); err != nil {
				return err
			}
			m.tags++
		default:
			return s.errorf("import %s.%s has unknown kind %#x", mod, name, kind)
		}
		m.imports = append(m.imports, Import{Module: mod, Name: name, Kind: kindName(kind)})
	}
	return nil
}

func (m *module) exportSection(s *reader) error {
	n, err := s.count("export", 3)
	if err != nil {
		return err
	}
	seen := make(map[string]bool, n)
	for range n {
		name, err := s.name()
		if err != nil {
			return err
		}
		kind, err := s.byte()
		if err != nil {
			return err
		}
		idx, err := s.u32()
		if err != nil {
			return err
		}
		var space uint64
		switch kind {
		case kindFunc:
			space = uint64(len(m.funcs))
		case kindTable:
			space = m.tables
		case kindMemory:
			space = uint64(len(m.mems))
		case kindGlobal:
			space = m.globals
		case kindTag:
			space = m.tags
		default:
			return s.errorf("export %q has unknown kind %#x", name, kind)
		}
		if uint64(idx) >= space {
			return s.errorf("export %q names %s %d, but there are %d", name, kindName(kind), idx, space)
		}
		if seen[name] {
			return s.errorf("export %q appears twice", name)
		}
		seen[name] = true
		m.exports = append(m.exports, export{name: name, kind: kind, index: idx})
	}
	return nil
}

// checkABI applies the cell contract to a parsed module.
func (m *module) checkABI() (*Report, error) {
	rep := &Report{Imports: m.imports}
	for _, e := range m.exports {
		rep.Exports = append(rep.Exports, Extern{Name: e.name, Kind: kindName(e.kind)})
	}

	fn := 0
	for _, imp := range m.imports {
		if imp.Kind != "func" {
			return nil, fmt.Errorf("%w: import %s.%s is a %s; a cell imports only functions (it defines and exports its own memory)", ErrABI, imp.Module, imp.Name, imp.Kind)
		}
		sig := m.types[m.importSigs[fn]]
		fn++
		switch imp.Module {
		case HostModule:
			want, ok := hostImports[imp.Name]
			if !ok {
				return nil, fmt.Errorf("%w: import %s.%s is not a host function; the host offers %s.{emit, send, log, now}", ErrABI, imp.Module, imp.Name, HostModule)
			}
			if !sig.equal(want) {
				return nil, fmt.Errorf("%w: import %s.%s has type %s, want %s", ErrABI, imp.Module, imp.Name, sig, want)
			}
		case WASIModule:
			if !wasiFunctions[imp.Name] {
				return nil, fmt.Errorf("%w: import %s.%s is not a WASI preview1 function", ErrABI, imp.Module, imp.Name)
			}
		default:
			return nil, fmt.Errorf("%w: import %s.%s is not allowed; a cell imports only from %s and %s", ErrABI, imp.Module, imp.Name, HostModule, WASIModule)
		}
	}

	byName := make(map[string]export, len(m.exports))
	for _, e := range m.exports {
		byName[e.name] = e
	}
	var missing []string
	for _, rule := range exportRules {
		e, ok := byName[rule.name]
		if !ok {
			if !rule.optional {
				missing = append(missing, rule.name)
			}
			continue
		}
		if e.kind != rule.kind {
			return nil, fmt.Errorf("%w: export %s is a %s, want a %s", ErrABI, rule.name, kindName(e.kind), kindName(rule.kind))
		}
		if rule.kind == kindFunc {
			if sig := m.types[m.funcs[e.index]]; !sig.equal(rule.sig) {
				return nil, fmt.Errorf("%w: export %s has type %s, want %s", ErrABI, rule.name, sig, rule.sig)
			}
		}
	}
	if len(missing) > 0 {
		return nil, fmt.Errorf("%w: missing required export %s", ErrABI, strings.Join(missing, ", "))
	}
	if _, ok := byName["_start"]; ok {
		if _, ok := byName["_initialize"]; !ok {
			return nil, fmt.Errorf("%w: exports _start but not _initialize: a cell is a WASI reactor, not a command (Go: -buildmode=c-shared)", ErrABI)
		}
	}

	mem := m.mems[byName["memory"].index]
	if mem.is64 {
		return nil, fmt.Errorf("%w: memory is 64-bit; ABI v1 pointers are i32", ErrABI)
	}
	rep.MemoryMinPages = uint32(mem.min)
	if mem.hasMax {
		v := uint32(mem.max)
		rep.MemoryMaxPages = &v
	}

	v := byName["cloudskin_abi_version"]
	if idx := int(v.index) - m.importedFn; idx >= 0 && idx < len(m.bodies) {
		if n, ok := constBody(m.bodies[idx]); ok {
			if n != ABIVersion {
				return nil, fmt.Errorf("%w: cloudskin_abi_version returns %d; this version knows ABI %d", ErrABI, n, ABIVersion)
			}
			rep.ABIVersion = n
		}
	} else {
		return nil, fmt.Errorf("%w: export cloudskin_abi_version is an imported function; the cell must define it", ErrABI)
	}
	return rep, nil
}

// constBody recognises a body that is only `i32.const N` with no locals.
func constBody(body []byte) (int32, bool) {
	r := &reader{b: body}
	if locals, err := r.u32(); err != nil || locals != 0 {
		return 0, false
	}
	if op, err := r.byte(); err != nil || op != 0x41 {
		return 0, false
	}
	n, err := r.sleb(32)
	if err != nil {
		return 0, false
	}
	if end, err := r.byte(); err != nil || end != 0x0b || !r.done() {
		return 0, false
	}
	return int32(n), true
}

func (s signature) equal(o signature) bool {
	return slices.Equal(s.params, o.params) && slices.Equal(s.results, o.results)
}

func (s signature) String() string {
	list := func(vs []byte) string {
		names := make([]string, len(vs))
		for i, v := range vs {
			names[i] = valueName(v)
		}
		return "(" + strings.Join(names, ", ") + ")"
	}
	return list(s.params) + " -> " + list(s.results)
}

func valueName(v byte) string {
	switch v {
	case 0x7f:
		return "i32"
	case 0x7e:
		return "i64"
	case 0x7d:
		return "f32"
	case 0x7c:
		return "f64"
	case 0x7b:
		return "v128"
	case 0x70:
		return "funcref"
	case 0x6f:
		return "externref"
	default:
		return fmt.Sprintf("ref(%#x)", v)
	}
}
