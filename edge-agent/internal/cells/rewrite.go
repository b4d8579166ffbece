package cells

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"strconv"
	"strings"
)

// The module rewrite at load makes a cell's state reachable from the host: wasm exports
// neither its mutable globals (a Go cell's stack pointer, a bump allocator's cursor) nor
// says whether it changes its tables, and a snapshot needs the one and must know the other.
// So Load rewrites the binary before compiling it:
//
//   - every mutable global the module defines, of a type a snapshot can hold (i32, i64,
//     f32, f64), gets one more export, named globalExportPrefix + its global index (imports
//     count first, as in the binary); a global that is already exported is exported again
//     under that name, so the host finds every global the same way;
//   - the code is scanned for instructions that change a table (table.set, table.grow,
//     table.fill, table.copy, table.init): tables are not captured, so such a module runs
//     but cannot be snapshotted.
//
// Everything but the export section is copied byte for byte; a module without an export
// section gets one where the binary format wants it. What the rewrite cannot read (a
// malformed module, an instruction it does not know) it does not change: the module is
// compiled as it came — wasmtime then accepts or refuses it — and its cells cannot be
// snapshotted, with the reason kept for Snapshot's error.

// globalExportPrefix names the exports the rewrite adds; a module may not use it itself.
const globalExportPrefix = "cloudskin:global:"

// maxExports is wasmtime's limit on exports per module (wasmparser's MAX_WASM_EXPORTS):
// a rewrite that would pass it is not done.
const maxExports = 100_000

// valKind is a value type as the binary encodes it; a snapshot holds these four.
type valKind byte

const (
	kindI32 valKind = 0x7f
	kindI64 valKind = 0x7e
	kindF32 valKind = 0x7d
	kindF64 valKind = 0x7c
)

func (k valKind) String() string {
	switch k {
	case kindI32:
		return "i32"
	case kindI64:
		return "i64"
	case kindF32:
		return "f32"
	case kindF64:
		return "f64"
	case 0x7b:
		return "v128"
	case 0x70:
		return "funcref"
	case 0x6f:
		return "externref"
	}
	return fmt.Sprintf("type %#x", byte(k))
}

func (k valKind) capturable() bool {
	return k == kindI32 || k == kindI64 || k == kindF32 || k == kindF64
}

// snapGlobal is one mutable global a snapshot holds.
type snapGlobal struct {
	index uint32
	kind  valKind
}

// snapInfo is what the rewrite learned about a module's state: its capturable mutable
// globals, in index order, and why its cells cannot be snapshotted ("" if they can).
type snapInfo struct {
	globals []snapGlobal
	refusal string
}

func globalExportName(index uint32) string {
	return globalExportPrefix + strconv.FormatUint(uint64(index), 10)
}

// errReservedExport: the module itself exports a name under globalExportPrefix.
var errReservedExport = errors.New("export names starting with " + strconv.Quote(globalExportPrefix) + " are reserved for the host")

// rewriteModule returns the module to compile and what it knows about its state. It fails
// only for a module using the reserved export names (wrapping ErrABI); anything it cannot
// read leaves the module as it is, with a refusal.
func rewriteModule(wasm []byte) ([]byte, snapInfo, error) {
	l, err := readLayout(wasm)
	switch {
	case errors.Is(err, errReservedExport):
		return nil, snapInfo{}, fmt.Errorf("%w: %v", ErrABI, err)
	case err != nil:
		return wasm, snapInfo{refusal: "the host cannot read the module's state layout: " + err.Error()}, nil
	case len(l.info.globals) == 0:
		return wasm, l.info, nil
	case uint64(l.exportCount)+uint64(len(l.info.globals)) > maxExports:
		return wasm, snapInfo{refusal: fmt.Sprintf("exporting its %d mutable globals would pass the %d exports a module may have", len(l.info.globals), maxExports)}, nil
	}

	// The new export section: the old entries as they were, then ours.
	var payload []byte
	payload = binary.AppendUvarint(payload, uint64(l.exportCount)+uint64(len(l.info.globals)))
	payload = append(payload, wasm[l.exportEntries:l.exportEnd]...)
	for _, g := range l.info.globals {
		name := globalExportName(g.index)
		payload = binary.AppendUvarint(payload, uint64(len(name)))
		payload = append(payload, name...)
		payload = append(payload, externGlobal)
		payload = binary.AppendUvarint(payload, uint64(g.index))
	}
	out := make([]byte, 0, len(wasm)+len(payload)+8)
	out = append(out, wasm[:l.exportStart]...)
	out = append(out, secExport)
	out = binary.AppendUvarint(out, uint64(len(payload)))
	out = append(out, payload...)
	out = append(out, wasm[l.exportEnd:]...)
	return out, l.info, nil
}

// Section ids and their order in a module (custom sections, id 0, may go anywhere).
const (
	secCustom    = 0
	secImport    = 2
	secTable     = 4
	secGlobal    = 6
	secExport    = 7
	secCode      = 10
	externFunc   = 0
	externTable  = 1
	externMemory = 2
	externGlobal = 3
	externTag    = 4
)

// sectionRank is the position a non-custom section must keep: ids 1..11 in order, with the
// tag section (13) between memory (5) and global (6), and data count (12) before code (10).
func sectionRank(id byte) int {
	switch {
	case id >= 1 && id <= 5:
		return int(id)
	case id == 13:
		return 6
	case id >= 6 && id <= 9:
		return int(id) + 1
	case id == 12:
		return 11
	case id == 10 || id == 11:
		return int(id) + 2
	}
	return 0
}

// layout is where a module keeps what the rewrite changes.
type layout struct {
	info          snapInfo
	exportCount   uint32
	exportStart   int // the export section, from its id byte …
	exportEntries int // … its entries …
	exportEnd     int // … to its end; with no export section all three are where one goes
	hasExports    bool
}

func readLayout(wasm []byte) (*layout, error) {
	r := &wreader{b: wasm}
	if head, err := r.bytes(8); err != nil || !bytes.Equal(head, []byte("\x00asm\x01\x00\x00\x00")) {
		return nil, errors.New("not a WebAssembly 1.0 module (wrong magic or version)")
	}
	l := &layout{exportStart: -1}
	var importedFuncs, importedGlobals uint32
	hasTables := false
	lastRank := 0
	for !r.done() {
		start := r.off
		id, err := r.byte()
		if err != nil {
			return nil, err
		}
		size, err := r.u32()
		if err != nil {
			return nil, err
		}
		s, err := r.sub(int(size))
		if err != nil {
			return nil, err
		}
		if id == secCustom {
			continue
		}
		rank := sectionRank(id)
		if rank == 0 {
			return nil, fmt.Errorf("at byte %#x: unknown section id %d", start, id)
		}
		if rank <= lastRank {
			return nil, fmt.Errorf("at byte %#x: section %d out of order or repeated", start, id)
		}
		lastRank = rank
		if l.exportStart < 0 && rank > sectionRank(secExport) {
			l.exportStart, l.exportEntries, l.exportEnd = start, start, start
		}
		switch id {
		case secImport:
			importedFuncs, importedGlobals, hasTables, err = readImports(s)
		case secTable:
			var n uint32
			n, err = s.u32()
			hasTables = hasTables || n > 0
			s.off = len(s.b) // the tables themselves do not matter here
		case secGlobal:
			err = readGlobals(s, importedGlobals, &l.info)
		case secExport:
			l.hasExports = true
			l.exportStart = start
			l.exportCount, err = readExports(s)
			l.exportEntries, l.exportEnd = s.base+s.entries, s.base+len(s.b)
		case secCode:
			if hasTables && l.info.refusal == "" {
				l.info.refusal = scanCode(s, importedFuncs)
			}
			s.off = len(s.b)
		default:
			s.off = len(s.b)
		}
		if err != nil {
			return nil, err
		}
		if !s.done() {
			return nil, s.errorf("%d bytes left over at the end of section %d", s.left(), id)
		}
	}
	if l.exportStart < 0 {
		l.exportStart, l.exportEntries, l.exportEnd = len(wasm), len(wasm), len(wasm)
	}
	return l, nil
}

func readImports(s *wreader) (funcs, globals uint32, tables bool, err error) {
	n, err := s.count(4)
	if err != nil {
		return 0, 0, false, err
	}
	for range n {
		if err := s.skipName(); err != nil {
			return 0, 0, false, err
		}
		if err := s.skipName(); err != nil {
			return 0, 0, false, err
		}
		kind, err := s.byte()
		if err != nil {
			return 0, 0, false, err
		}
		switch kind {
		case externFunc:
			funcs++
			_, err = s.u32()
		case externTable:
			tables = true
			if _, err = s.valType(); err == nil {
				err = s.limits()
			}
		case externMemory:
			err = s.limits()
		case externGlobal:
			globals++
			if _, err = s.valType(); err == nil {
				_, err = s.mutability()
			}
		case externTag:
			if _, err = s.byte(); err == nil {
				_, err = s.u32()
			}
		default:
			err = s.errorf("unknown import kind %#x", kind)
		}
		if err != nil {
			return 0, 0, false, err
		}
	}
	return funcs, globals, tables, nil
}

func readGlobals(s *wreader, imported uint32, info *snapInfo) error {
	n, err := s.count(3)
	if err != nil {
		return err
	}
	for i := range uint32(n) {
		kind, err := s.valType()
		if err != nil {
			return err
		}
		mut, err := s.mutability()
		if err != nil {
			return err
		}
		if err := s.skipConstExpr(); err != nil {
			return err
		}
		if !mut {
			continue
		}
		index := imported + i
		if index < imported {
			return s.errorf("more than 2^32 globals")
		}
		if !kind.capturable() {
			if info.refusal == "" {
				info.refusal = fmt.Sprintf("global %d is a mutable %s, which a snapshot cannot hold (only i32, i64, f32 and f64)", index, kind)
			}
			continue
		}
		info.globals = append(info.globals, snapGlobal{index: index, kind: kind})
	}
	return nil
}

func readExports(s *wreader) (uint32, error) {
	n, err := s.count(3)
	if err != nil {
		return 0, err
	}
	s.entries = s.off
	for range n {
		name, err := s.name()
		if err != nil {
			return 0, err
		}
		if strings.HasPrefix(name, globalExportPrefix) {
			return 0, fmt.Errorf("export %q: %w", name, errReservedExport)
		}
		if _, err := s.byte(); err != nil {
			return 0, err
		}
		if _, err := s.u32(); err != nil {
			return 0, err
		}
	}
	return uint32(n), nil
}

// scanCode returns why the code keeps the module's cells from being snapshotted: an
// instruction that changes a table, or one the scan does not know (so it cannot tell);
// "" if there is neither.
func scanCode(s *wreader, importedFuncs uint32) string {
	n, err := s.count(1)
	if err != nil {
		return "cannot read the code section: " + err.Error()
	}
	for i := range uint32(n) {
		fn := uint64(importedFuncs) + uint64(i)
		size, err := s.u32()
		if err != nil {
			return fmt.Sprintf("cannot read function %d: %v", fn, err)
		}
		body, err := s.sub(int(size))
		if err != nil {
			return fmt.Sprintf("cannot read function %d: %v", fn, err)
		}
		if why := scanBody(body); why != "" {
			return fmt.Sprintf("function %d %s", fn, why)
		}
	}
	return ""
}

func scanBody(r *wreader) string {
	groups, err := r.count(2)
	if err != nil {
		return "has unreadable locals: " + err.Error()
	}
	for range groups {
		if _, err := r.u32(); err != nil {
			return "has unreadable locals: " + err.Error()
		}
		if _, err := r.valType(); err != nil {
			return "has unreadable locals: " + err.Error()
		}
	}
	for !r.done() {
		at := r.base + r.off
		op, err := r.instr()
		if err != nil {
			return "cannot be scanned for table changes: " + err.Error()
		}
		if name := tableWrite(op); name != "" {
			return fmt.Sprintf("changes a table (%s at byte %#x): tables are not part of a snapshot", name, at)
		}
	}
	return ""
}

// Opcodes as instr returns them: one byte, or prefix<<24 | sub-opcode.
const (
	opEnd      = 0x0b
	prefixFC   = 0xfc << 24
	prefixSIMD = 0xfd << 24
)

// tableWrite names an instruction that changes a table; "" for any other.
func tableWrite(op uint32) string {
	switch op {
	case 0x26:
		return "table.set"
	case prefixFC | 12:
		return "table.init"
	case prefixFC | 14:
		return "table.copy"
	case prefixFC | 15:
		return "table.grow"
	case prefixFC | 17:
		return "table.fill"
	}
	return ""
}

// wreader reads a WebAssembly binary; every read is bounds-checked, so no input can make
// it panic or allocate.
type wreader struct {
	b       []byte
	off     int
	base    int // absolute offset of b[0], for messages
	entries int // readExports: where the entries start
}

func (r *wreader) done() bool { return r.off >= len(r.b) }
func (r *wreader) left() int  { return len(r.b) - r.off }

func (r *wreader) errorf(format string, args ...any) error {
	return fmt.Errorf("at byte %#x: %s", r.base+r.off, fmt.Sprintf(format, args...))
}

func (r *wreader) sub(n int) (*wreader, error) {
	if n < 0 || n > r.left() {
		return nil, r.errorf("length %d runs past the end (%d bytes left)", n, r.left())
	}
	s := &wreader{b: r.b[r.off : r.off+n], base: r.base + r.off}
	r.off += n
	return s, nil
}

func (r *wreader) byte() (byte, error) {
	if r.off < len(r.b) {
		r.off++
		return r.b[r.off-1], nil
	}
	return 0, r.eof()
}

func (r *wreader) eof() error { return r.errorf("unexpected end") }

func (r *wreader) bytes(n int) ([]byte, error) {
	if n < 0 || n > r.left() {
		return nil, r.errorf("length %d runs past the end (%d bytes left)", n, r.left())
	}
	b := r.b[r.off : r.off+n]
	r.off += n
	return b, nil
}

// uleb reads an unsigned LEB128 of at most bits bits.
func (r *wreader) uleb(bits uint) (uint64, error) {
	var v uint64
	for shift := uint(0); shift < bits; shift += 7 {
		c, err := r.byte()
		if err != nil {
			return 0, err
		}
		if rest := bits - shift; rest < 7 && c&0x7f>>rest != 0 {
			return 0, r.errorf("integer too large")
		}
		v |= uint64(c&0x7f) << shift
		if c&0x80 == 0 {
			return v, nil
		}
	}
	return 0, r.errorf("integer representation too long")
}

// sleb reads a signed LEB128 of at most bits bits; only its length matters here.
func (r *wreader) sleb(bits uint) (int64, error) {
	var v int64
	for shift := uint(0); shift < bits; shift += 7 {
		c, err := r.byte()
		if err != nil {
			return 0, err
		}
		v |= int64(c&0x7f) << shift
		if c&0x80 == 0 {
			if shift+7 < 64 && c&0x40 != 0 {
				v |= -1 << (shift + 7)
			}
			return v, nil
		}
	}
	return 0, r.errorf("integer representation too long")
}

func (r *wreader) u32() (uint32, error) {
	if r.off < len(r.b) && r.b[r.off] < 0x80 { // most indices fit in one byte
		r.off++
		return uint32(r.b[r.off-1]), nil
	}
	v, err := r.uleb(32)
	return uint32(v), err
}

// count reads a vector length, refusing one whose elements (at least minSize bytes each)
// cannot fit in what is left.
func (r *wreader) count(minSize int) (int, error) {
	n, err := r.u32()
	if err != nil {
		return 0, err
	}
	if uint64(n)*uint64(minSize) > uint64(r.left()) {
		return 0, r.errorf("count %d cannot fit in the %d bytes left", n, r.left())
	}
	return int(n), nil
}

func (r *wreader) name() (string, error) {
	n, err := r.u32()
	if err != nil {
		return "", err
	}
	b, err := r.bytes(int(min(n, uint32(r.left()+1))))
	return string(b), err
}

func (r *wreader) skipName() error {
	n, err := r.u32()
	if err == nil {
		_, err = r.bytes(int(min(n, uint32(r.left()+1))))
	}
	return err
}

func (r *wreader) mutability() (bool, error) {
	m, err := r.byte()
	if err == nil && m > 1 {
		err = r.errorf("bad mutability %#x", m)
	}
	return m == 1, err
}

// limits skips table or memory limits: flags (bit 0 maximum, bit 1 shared, bit 2 64-bit,
// bit 3 custom page size), minimum, maximum, page size.
func (r *wreader) limits() error {
	flags, err := r.byte()
	if err != nil {
		return err
	}
	if flags > 0x0f {
		return r.errorf("unknown limits flags %#x", flags)
	}
	if _, err := r.uleb(64); err != nil {
		return err
	}
	if flags&1 != 0 {
		if _, err := r.uleb(64); err != nil {
			return err
		}
	}
	if flags&8 != 0 {
		if _, err := r.u32(); err != nil {
			return err
		}
	}
	return nil
}

// simpleTypes are the value types of one byte: numbers, v128 and the abstract references.
func simpleType(b byte) bool {
	return (b >= 0x7b && b <= 0x7f) || (b >= 0x69 && b <= 0x74)
}

// valType reads a value type: one byte, or a reference type (0x63/0x64) with a heap type.
func (r *wreader) valType() (valKind, error) {
	b, err := r.byte()
	switch {
	case err != nil:
		return 0, err
	case simpleType(b):
		return valKind(b), nil
	case b == 0x63 || b == 0x64:
		_, err = r.sleb(33)
		return valKind(b), err
	}
	return 0, r.errorf("unknown value type %#x", b)
}

// blockType skips a block type: empty, a value type, or a type index (s33).
func (r *wreader) blockType() error {
	if r.done() {
		return r.eof()
	}
	if b := r.b[r.off]; b == 0x40 || simpleType(b) || b == 0x63 || b == 0x64 {
		_, err := r.valTypeOrEmpty()
		return err
	}
	v, err := r.sleb(33)
	if err == nil && v < 0 {
		err = r.errorf("bad block type %d", v)
	}
	return err
}

func (r *wreader) valTypeOrEmpty() (valKind, error) {
	if r.b[r.off] == 0x40 {
		r.off++
		return 0x40, nil
	}
	return r.valType()
}

func (r *wreader) memarg() error {
	align, err := r.u32()
	if err != nil {
		return err
	}
	if align&0x40 != 0 { // multi-memory: a memory index follows
		if _, err := r.u32(); err != nil {
			return err
		}
	}
	_, err = r.uleb(64)
	return err
}

// skipConstExpr skips an initializer expression: instructions up to their end.
func (r *wreader) skipConstExpr() error {
	for {
		op, err := r.instr()
		if err != nil {
			return err
		}
		if op == opEnd {
			return nil
		}
	}
}

// u32s skips n u32 immediates.
func (r *wreader) u32s(n int) error {
	for range n {
		if _, err := r.u32(); err != nil {
			return err
		}
	}
	return nil
}

// Immediates of the one-byte opcodes.
const (
	immUnknown = iota
	immNone
	immBlock   // block type
	immU32     // one index
	immU32x2   // two indices
	immMemarg  // alignment (and memory), offset
	immBrTable // label vector and default
	immSelect  // value type vector
	immTryTable
	immI32
	immI64
	immF32
	immF64
	immHeapType
	immFC
	immSIMD
)

var immediates = func() (t [256]byte) {
	set := func(k byte, ops ...byte) {
		for _, op := range ops {
			t[op] = k
		}
	}
	span := func(k byte, from, to byte) {
		for op := int(from); op <= int(to); op++ {
			t[op] = k
		}
	}
	set(immNone, 0x00, 0x01, 0x05, 0x0a, 0x0b, 0x0f, 0x19, 0x1a, 0x1b, 0xd1, 0xd3, 0xd4)
	span(immNone, 0x45, 0xc4) // numeric, including sign extension
	set(immBlock, 0x02, 0x03, 0x04, 0x06)
	set(immU32, 0x07, 0x08, 0x09, 0x0c, 0x0d, 0x10, 0x12, 0x14, 0x15, 0x18, 0x3f, 0x40, 0xd2, 0xd5, 0xd6)
	span(immU32, 0x20, 0x26) // locals, globals, table.get/set
	set(immU32x2, 0x11, 0x13)
	span(immMemarg, 0x28, 0x3e)
	set(immBrTable, 0x0e)
	set(immSelect, 0x1c)
	set(immTryTable, 0x1f)
	set(immI32, 0x41)
	set(immI64, 0x42)
	set(immF32, 0x43)
	set(immF64, 0x44)
	set(immHeapType, 0xd0)
	set(immFC, 0xfc)
	set(immSIMD, 0xfd)
	return t
}()

// instr reads one instruction and returns its opcode, skipping its immediates. It knows
// the instructions of WebAssembly 2.0 (with SIMD and relaxed SIMD), tail calls, typed
// function references, exceptions and wide arithmetic; anything else is an error, so the
// caller never mistakes an unknown instruction's immediates for code.
func (r *wreader) instr() (uint32, error) {
	b, err := r.byte()
	if err != nil {
		return 0, err
	}
	op := uint32(b)
	switch immediates[b] {
	case immNone:
		return op, nil
	case immBlock:
		return op, r.blockType()
	case immU32:
		_, err = r.u32()
		return op, err
	case immU32x2:
		return op, r.u32s(2)
	case immMemarg:
		return op, r.memarg()
	case immBrTable:
		n, err := r.count(1)
		if err == nil {
			err = r.u32s(n + 1)
		}
		return op, err
	case immSelect:
		n, err := r.count(1)
		for i := 0; err == nil && i < n; i++ {
			_, err = r.valType()
		}
		return op, err
	case immTryTable:
		return op, r.tryTable()
	case immI32:
		_, err = r.sleb(32)
		return op, err
	case immI64:
		_, err = r.sleb(64)
		return op, err
	case immF32:
		_, err = r.bytes(4)
		return op, err
	case immF64:
		_, err = r.bytes(8)
		return op, err
	case immHeapType:
		_, err = r.sleb(33)
		return op, err
	case immFC:
		return r.instrFC()
	case immSIMD:
		return r.instrSIMD()
	}
	r.off--
	return 0, r.errorf("unknown instruction %#x", b)
}

// tryTable skips try_table's block type and catch clauses.
func (r *wreader) tryTable() error {
	if err := r.blockType(); err != nil {
		return err
	}
	n, err := r.count(2)
	for i := 0; err == nil && i < n; i++ {
		var kind byte
		if kind, err = r.byte(); err != nil {
			break
		}
		switch kind {
		case 0, 1: // catch, catch_ref: tag and label
			err = r.u32s(2)
		case 2, 3: // catch_all, catch_all_ref: label
			err = r.u32s(1)
		default:
			err = r.errorf("unknown catch kind %#x", kind)
		}
	}
	return err
}

func (r *wreader) instrFC() (uint32, error) {
	sub, err := r.u32()
	if err != nil {
		return 0, err
	}
	op := prefixFC | sub&0xffffff
	switch {
	case sub <= 7, sub >= 19 && sub <= 22: // saturating truncations, wide arithmetic
		return op, nil
	case sub == 9, sub == 11, sub == 13, sub == 15, sub == 16, sub == 17:
		return op, r.u32s(1)
	case sub == 8, sub == 10, sub == 12, sub == 14:
		return op, r.u32s(2)
	}
	return 0, r.errorf("unknown instruction 0xfc %d", sub)
}

func (r *wreader) instrSIMD() (uint32, error) {
	sub, err := r.u32()
	if err != nil {
		return 0, err
	}
	op := prefixSIMD | sub&0xffffff
	switch {
	case sub <= 11, sub == 92, sub == 93: // loads and stores
		return op, r.memarg()
	case sub == 12, sub == 13: // v128.const, i8x16.shuffle
		_, err = r.bytes(16)
		return op, err
	case sub >= 21 && sub <= 34: // lane extract and replace
		_, err = r.bytes(1)
		return op, err
	case sub >= 84 && sub <= 91: // lane loads and stores
		if err = r.memarg(); err == nil {
			_, err = r.bytes(1)
		}
		return op, err
	case sub <= 0x113: // the rest of SIMD and relaxed SIMD take no immediates
		return op, nil
	}
	return 0, r.errorf("unknown instruction 0xfd %d", sub)
}
