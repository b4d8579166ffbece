package cells

import (
	"bytes"
	"context"
	"fmt"
	"math"
	"math/bits"

	"github.com/bytecodealliance/wasmtime-go/v39"
)

// pageSize is a WebAssembly page.
const pageSize = 64 << 10

// Snapshot is a cell's state at a quiescent point, between two calls: its linear memory and
// every mutable global, by global index. It holds nothing of the host (no pointers, no code)
// and only little-endian integers and memory bytes, which mean the same on every CPU, so a
// snapshot taken on amd64 restores on arm64 (docs/cell-abi.md, "Snapshots").
//
// Not held, so not migratable: tables (a module whose code changes a table cannot be
// snapshotted, ErrNotMigratable), which passive data and element segments were dropped, and
// anything the host keeps for the cell (stats, rate buckets, the WASI clocks: a cell's
// monotonic clock starts again near zero where it is restored).
type Snapshot struct {
	Digest string // hex sha256 of the module, as referenced (before the rewrite)
	Pages  uint32 // linear memory size in 64 KiB pages

	globals []globalValue // in index order, one per entry of the module's snapInfo
	present []uint64      // bit p set: page p is stored; every other page is all zeros
	chunk   int           // stored pages per frame (the last frame may hold fewer)
	frames  [][]byte      // the stored pages in page order, one zstd frame per chunk
}

// globalValue is one mutable global's value; floats as their IEEE 754 bits.
type globalValue struct {
	snapGlobal
	bits uint64
}

// MemoryBytes is the size of the cell's linear memory.
func (s *Snapshot) MemoryBytes() int64 { return int64(s.Pages) * pageSize }

// storedPages counts the pages that are not all zeros.
func (s *Snapshot) storedPages() int {
	n := 0
	for _, w := range s.present {
		n += bits.OnesCount64(w)
	}
	return n
}

func (s *Snapshot) hasPage(p int) bool { return s.present[p/64]&(1<<(p%64)) != 0 }

// check verifies the invariants every Snapshot made by this package keeps, so that a
// zero or hand-made value gets an error rather than a panic.
func (s *Snapshot) check() error {
	switch {
	case s == nil:
		return fmt.Errorf("%w: no snapshot", ErrSnapshot)
	case !validHexDigest(normalizeDigest(s.Digest)):
		return fmt.Errorf("%w: module digest %q is not a sha256", ErrSnapshot, s.Digest)
	case s.Pages > maxPages:
		return fmt.Errorf("%w: %d pages of memory, more than wasm32's %d", ErrSnapshot, s.Pages, maxPages)
	case len(s.present) != (int(s.Pages)+63)/64:
		return fmt.Errorf("%w: page map does not match %d pages (not made by Snapshot or ReadSnapshot?)", ErrSnapshot, s.Pages)
	case s.chunk < 1 || s.chunk > chunkPages:
		return fmt.Errorf("%w: chunks of %d pages, this agent reads 1 to %d", ErrSnapshot, s.chunk, chunkPages)
	case len(s.frames) != (s.storedPages()+s.chunk-1)/s.chunk:
		return fmt.Errorf("%w: %d compressed chunks for %d stored pages", ErrSnapshot, len(s.frames), s.storedPages())
	}
	if tail := s.Pages % 64; tail != 0 && s.present[len(s.present)-1]>>tail != 0 {
		return fmt.Errorf("%w: page map marks pages past the end of memory", ErrSnapshot)
	}
	for i, g := range s.globals {
		if !g.kind.capturable() || (i > 0 && g.index <= s.globals[i-1].index) {
			return fmt.Errorf("%w: global %d (%s) out of order or of a type a snapshot cannot hold", ErrSnapshot, g.index, g.kind)
		}
	}
	return nil
}

// maxPages is the most a wasm32 memory can have.
const maxPages = 1 << 16

var zeroPage [pageSize]byte

// Snapshot captures the cell's state and compresses it (snapfile.go). It holds the cell's
// lock only while it copies the globals and the memory pages that are not all zeros, so it
// runs between two calls (waiting for one in progress), and the cell pauses for that copy —
// a few milliseconds for 16 MiB — not for the compression (docs/benchmarks.md). The cell
// keeps running afterwards; whoever migrates it stops feeding it first. It fails with
// ErrDead for a cell that trapped or was closed (its memory may be half updated) and
// ErrNotMigratable for a module whose state a snapshot cannot hold.
func (c *Cell) Snapshot() (*Snapshot, error) {
	s, data, err := c.capture()
	if err != nil {
		return nil, fmt.Errorf("cells: snapshot %s: %w", c.ID, err)
	}
	if s.frames, err = compress(data); err != nil {
		return nil, fmt.Errorf("cells: snapshot %s: %w", c.ID, err)
	}
	compressed := 0
	for _, f := range s.frames {
		compressed += len(f)
	}
	c.stats.event(EventSnapshot, fmt.Sprintf("%d bytes of memory (%d pages not all zeros) in %d compressed bytes, %d globals",
		s.MemoryBytes(), s.storedPages(), compressed, len(s.globals)))
	c.log.Info("cell snapshot taken", "memory_bytes", s.MemoryBytes(), "stored_pages", s.storedPages(), "compressed_bytes", compressed)
	return s, nil
}

// capture copies the cell's state under its lock: the globals into s, the pages that are
// not all zeros into data, in page order.
func (c *Cell) capture() (s *Snapshot, data []byte, err error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.dead != nil {
		return nil, nil, c.dead
	}
	if c.snap.refusal != "" {
		return nil, nil, fmt.Errorf("%w: %s", ErrNotMigratable, c.snap.refusal)
	}
	s = &Snapshot{Digest: c.digest, globals: make([]globalValue, len(c.snap.globals)), chunk: chunkPages}
	for i, g := range c.snap.globals {
		gl, err := c.global(g)
		if err != nil {
			return nil, nil, err
		}
		v := gl.Get(c.store)
		b, ok := g.bitsOf(v)
		if !ok {
			return nil, nil, fmt.Errorf("global %d holds a %s, not a %s", g.index, kindName(v.Kind()), g.kind)
		}
		s.globals[i] = globalValue{g, b}
	}
	mem := c.mem.UnsafeData(c.store)
	s.Pages = uint32(len(mem) / pageSize)
	s.present = nonZeroPages(mem)
	pages := storedPageList(s.present, int(s.Pages))
	data = make([]byte, 0, len(pages)*pageSize)
	for _, p := range pages {
		data = append(data, mem[p*pageSize:(p+1)*pageSize]...)
	}
	return s, data, nil
}

// nonZeroPages maps the pages of mem that are not all zeros. A cell that grew its memory
// and has not used it all yet (a Go heap arena, a buffer) leaves whole pages of zeros;
// skipping them costs one compare per page and saves compressing them and, on restore,
// writing them (docs/benchmarks.md).
func nonZeroPages(mem []byte) []uint64 {
	pages := len(mem) / pageSize
	present := make([]uint64, (pages+63)/64)
	for p := range pages {
		if !bytes.Equal(mem[p*pageSize:(p+1)*pageSize], zeroPage[:]) {
			present[p/64] |= 1 << (p % 64)
		}
	}
	return present
}

// storedPageList lists the pages present marks, in order.
func storedPageList(present []uint64, pages int) []int {
	var list []int
	for p := range pages {
		if present[p/64]&(1<<(p%64)) != 0 {
			list = append(list, p)
		}
	}
	return list
}

// global finds the export the rewrite gave a mutable global.
func (c *Cell) global(g snapGlobal) (*wasmtime.Global, error) {
	if ext := c.inst.GetExport(c.store, globalExportName(g.index)); ext != nil {
		if gl := ext.Global(); gl != nil {
			return gl, nil
		}
	}
	return nil, fmt.Errorf("global %d is not exported as %s (module not rewritten?)", g.index, globalExportName(g.index))
}

func (g snapGlobal) bitsOf(v wasmtime.Val) (uint64, bool) {
	switch {
	case g.kind == kindI32 && v.Kind() == wasmtime.KindI32:
		return uint64(uint32(v.I32())), true
	case g.kind == kindI64 && v.Kind() == wasmtime.KindI64:
		return uint64(v.I64()), true
	case g.kind == kindF32 && v.Kind() == wasmtime.KindF32:
		return uint64(math.Float32bits(v.F32())), true
	case g.kind == kindF64 && v.Kind() == wasmtime.KindF64:
		return math.Float64bits(v.F64()), true
	}
	return 0, false
}

func (v globalValue) val() wasmtime.Val {
	switch v.kind {
	case kindI32:
		return wasmtime.ValI32(int32(uint32(v.bits)))
	case kindI64:
		return wasmtime.ValI64(int64(v.bits))
	case kindF32:
		return wasmtime.ValF32(math.Float32frombits(uint32(v.bits)))
	}
	return wasmtime.ValF64(math.Float64frombits(v.bits))
}

// Restore starts a cell from a snapshot of the same module, taken on this node or any other
// whatever its CPU: like Start, but instead of running _initialize and cloudskin_init it
// grows the fresh instance's memory to the snapshot's size, copies the memory in and sets
// the mutable globals, so the cell continues exactly where it stopped. spec.Config is not
// used (the cell was configured where it started); spec.ID, Limits and Outputs and out apply
// as for Start. It fails with ErrDigest (a snapshot of another module), ErrLimit (the
// memory does not fit the cell's limit), ErrNotMigratable or ErrSnapshot, before anything
// is instantiated.
func (r *Runtime) Restore(ctx context.Context, m *Module, spec Spec, out Output, s *Snapshot) (*Cell, error) {
	if s == nil {
		return nil, fmt.Errorf("cells: restore %s: %w: no snapshot", spec.ID, ErrSnapshot)
	}
	return r.launch(ctx, m, spec, out, s)
}

// fits checks that s can be restored into a cell of m with these limits.
func (m *Module) fits(s *Snapshot, limits Limits) error {
	if err := s.check(); err != nil {
		return err
	}
	if d := normalizeDigest(s.Digest); d != m.Digest {
		return fmt.Errorf("%w: the snapshot is of module %.12s, not %.12s", ErrDigest, d, m.Digest)
	}
	if m.snap.refusal != "" {
		return fmt.Errorf("%w: module %.12s: %s", ErrNotMigratable, m.Digest, m.snap.refusal)
	}
	if s.MemoryBytes() > limits.MemoryBytes {
		return fmt.Errorf("%w: the snapshot holds %d bytes of linear memory, above the cell's memory limit of %d bytes",
			ErrLimit, s.MemoryBytes(), limits.MemoryBytes)
	}
	if uint64(s.MemoryBytes()) < m.memMinBytes {
		return fmt.Errorf("%w: %d bytes of memory, less than the module's minimum of %d", ErrSnapshot, s.MemoryBytes(), m.memMinBytes)
	}
	ok := len(s.globals) == len(m.snap.globals)
	for i := 0; ok && i < len(s.globals); i++ {
		ok = s.globals[i].snapGlobal == m.snap.globals[i]
	}
	if !ok {
		return fmt.Errorf("%w: it holds %d globals, module %.12s has %d other ones", ErrSnapshot, len(s.globals), m.Digest, len(m.snap.globals))
	}
	return nil
}

// restore puts the snapshot's state into the freshly instantiated cell.
func (c *Cell) restore(s *Snapshot) error {
	have := c.mem.Size(c.store)
	if uint64(s.Pages) < have {
		return fmt.Errorf("%w: %d pages of memory, the new instance already has %d", ErrSnapshot, s.Pages, have)
	}
	if grow := uint64(s.Pages) - have; grow > 0 {
		if _, err := c.mem.Grow(c.store, grow); err != nil {
			return fmt.Errorf("%w: growing memory from %d to %d pages: %v", ErrLimit, have, s.Pages, err)
		}
	}
	mem := c.mem.UnsafeData(c.store)
	if len(mem) != int(s.Pages)*pageSize {
		return fmt.Errorf("memory is %d bytes after growing to %d pages", len(mem), s.Pages)
	}
	// Grown pages are zero; the ones instantiation made may hold data segments.
	for p := range int(have) {
		if !s.hasPage(p) {
			clear(mem[p*pageSize : (p+1)*pageSize])
		}
	}
	if err := decompressPages(mem, s); err != nil {
		return err
	}
	for _, v := range s.globals {
		gl, err := c.global(v.snapGlobal)
		if err != nil {
			return err
		}
		if err := gl.Set(c.store, v.val()); err != nil {
			return fmt.Errorf("set global %d: %w", v.index, err)
		}
	}
	return nil
}
