package cells

import (
	"encoding/binary"
	"encoding/hex"
	"errors"
	"fmt"
	"hash"
	"hash/crc32"
	"io"
	"runtime"
	"sync"
	"sync/atomic"

	"github.com/klauspost/compress/zstd"
)

// A snapshot file (format version 1; docs/cell-abi.md, "Snapshots"), all little endian:
//
//	header   magic "CSKS" | version u16 = 1 | flags u16 = 0 | module sha256 [32] |
//	         pages u32 | chunk pages u16 | reserved u16 = 0 | globals u32          (52 bytes)
//	globals  index u32 | type u8 (0x7f i32, 0x7e i64, 0x7d f32, 0x7c f64) | value u64
//	         (floats as IEEE 754 bits; i32 and f32 zero-extended), by increasing index
//	page map ceil(pages/8) bytes: bit p%8 of byte p/8 set = page p is stored; every other
//	         page is all zeros
//	chunks   the stored pages in page order, chunk pages at a time (the last may hold
//	         fewer): length u32 | one zstd frame of exactly that many pages
//	crc      CRC-32C (Castagnoli) of every byte before it
//
// Chunks let both ends use every core (one zstd frame is coded sequentially) and bound what
// a frame may decode to. Snapshot compresses a copy of the cell's memory, so that the cell
// pauses only for the copy; ReadSnapshot checks the CRC and keeps the frames as they are;
// Restore decodes them straight into the new cell's memory, each into exactly its pages. So a damaged transfer never reaches the
// decoder, a hostile frame cannot write past its chunk, and nothing holds the memory
// uncompressed but the cells themselves.
const (
	snapMagic       = "CSKS"
	SnapshotVersion = 1 // the snapshot format WriteTo writes and ReadSnapshot reads

	snapHeaderSize = 52
	snapGlobalSize = 13
	chunkPages     = 16 // 1 MiB of memory per zstd frame
	chunkBytes     = chunkPages * pageSize
	maxSnapGlobals = 1_000_000 // wasmtime's limit on globals per module
)

// maxFrame bounds a chunk's compressed size: zstd stores what it cannot compress in raw
// blocks of at most 128 KiB with a 3-byte header each, plus a frame header.
func maxFrame(raw int) int { return raw + raw/1024 + 64 }

// The encoder and decoder are made once and shared: EncodeAll and DecodeAll are safe for
// concurrent use. The level is the one with the least downtime (encode + transfer +
// decode), measured on a Go cell's heap and on a cell full of JSON readings: SpeedDefault
// compresses as fast as SpeedFastest there (its longer matches leave less to entropy-code),
// writes 3–7 % fewer bytes and decodes 15–20 % faster (docs/benchmarks.md).
var (
	encoder = sync.OnceValues(func() (*zstd.Encoder, error) {
		return zstd.NewWriter(nil, zstd.WithEncoderLevel(zstd.SpeedDefault), zstd.WithWindowSize(chunkBytes),
			zstd.WithEncoderCRC(false), // the file's CRC covers the frames
			zstd.WithEncoderConcurrency(runtime.GOMAXPROCS(0)))
	})
	decoder = sync.OnceValues(func() (*zstd.Decoder, error) {
		return zstd.NewReader(nil, zstd.WithDecoderMaxMemory(chunkBytes), zstd.WithDecodeAllCapLimit(true),
			zstd.WithDecoderConcurrency(runtime.GOMAXPROCS(0)))
	})
)

// compress compresses the stored pages, chunkPages at a time, on every core.
func compress(data []byte) ([][]byte, error) {
	enc, err := encoder()
	if err != nil {
		return nil, fmt.Errorf("zstd encoder: %w", err)
	}
	frames := make([][]byte, (len(data)+chunkBytes-1)/chunkBytes)
	err = forChunks(len(frames), func(i int, _ *[]byte) error {
		chunk := data[i*chunkBytes : min(len(data), (i+1)*chunkBytes)]
		frames[i] = enc.EncodeAll(chunk, make([]byte, 0, len(chunk)/4))
		return nil
	})
	return frames, err
}

// decompressPages puts the snapshot's stored pages into mem, decoding each chunk straight
// into place where its pages are consecutive, on every core. A frame must decode to exactly
// its chunk: the decoder is bounded by the chunk's size, so a hostile frame cannot make it
// allocate or write more.
func decompressPages(mem []byte, s *Snapshot) error {
	dec, err := decoder()
	if err != nil {
		return fmt.Errorf("zstd decoder: %w", err)
	}
	pages := storedPageList(s.present, len(mem)/pageSize)
	return forChunks(len(s.frames), func(i int, scratch *[]byte) error {
		group := pages[i*s.chunk : min(len(pages), (i+1)*s.chunk)]
		dst := chunkSpan(mem, group)
		if dst == nil {
			dst = scratchOf(scratch)[:len(group)*pageSize]
		}
		out, err := dec.DecodeAll(s.frames[i], dst[:0:len(dst)])
		switch {
		case err != nil:
			return fmt.Errorf("%w: chunk %d: %v", ErrSnapshot, i, err)
		case len(out) != len(dst):
			return fmt.Errorf("%w: chunk %d decompresses to %d bytes, not %d", ErrSnapshot, i, len(out), len(dst))
		case &out[0] != &dst[0]:
			copy(dst, out)
		}
		if &dst[0] != &mem[group[0]*pageSize] { // scatter
			for j, p := range group {
				copy(mem[p*pageSize:(p+1)*pageSize], dst[j*pageSize:])
			}
		}
		return nil
	})
}

// chunkSpan is the part of mem holding the pages of group if they are consecutive; nil
// otherwise.
func chunkSpan(mem []byte, group []int) []byte {
	first, last := group[0], group[len(group)-1]
	if last-first != len(group)-1 {
		return nil
	}
	return mem[first*pageSize : (last+1)*pageSize : (last+1)*pageSize]
}

func scratchOf(b *[]byte) []byte {
	if *b == nil {
		*b = make([]byte, chunkBytes)
	}
	return *b
}

// forChunks runs fn for chunks 0…n-1 on every core; each worker has a scratch buffer of
// chunkBytes, made on first use.
func forChunks(n int, fn func(i int, scratch *[]byte) error) error {
	errs := make([]error, n)
	var next atomic.Int64
	var wg sync.WaitGroup
	for range min(runtime.GOMAXPROCS(0), n) {
		wg.Go(func() {
			var scratch []byte
			for i := int(next.Add(1) - 1); i < n; i = int(next.Add(1) - 1) {
				errs[i] = fn(i, &scratch)
			}
		})
	}
	wg.Wait()
	return errors.Join(errs...)
}

// WriteTo writes the snapshot in the format above (version SnapshotVersion). It implements
// io.WriterTo. The memory was compressed by Snapshot, so this only writes.
func (s *Snapshot) WriteTo(w io.Writer) (int64, error) {
	if err := s.check(); err != nil {
		return 0, err
	}
	digest, _ := hex.DecodeString(normalizeDigest(s.Digest)) // check made sure it is one
	cw := &crcWriter{w: w, crc: crc32.New(castagnoli)}
	b := make([]byte, 0, snapHeaderSize+len(s.globals)*snapGlobalSize+len(s.present)*8+4*len(s.frames))
	b = append(b, snapMagic...)
	b = binary.LittleEndian.AppendUint16(b, SnapshotVersion)
	b = binary.LittleEndian.AppendUint16(b, 0)
	b = append(b, digest...)
	b = binary.LittleEndian.AppendUint32(b, s.Pages)
	b = binary.LittleEndian.AppendUint16(b, uint16(s.chunk))
	b = binary.LittleEndian.AppendUint16(b, 0)
	b = binary.LittleEndian.AppendUint32(b, uint32(len(s.globals)))
	for _, g := range s.globals {
		b = binary.LittleEndian.AppendUint32(b, g.index)
		b = append(b, byte(g.kind))
		b = binary.LittleEndian.AppendUint64(b, g.bits)
	}
	for p := 0; p < int(s.Pages); p += 8 {
		b = append(b, byte(s.present[p/64]>>(p%64)))
	}
	for _, f := range s.frames {
		b = binary.LittleEndian.AppendUint32(b, uint32(len(f)))
		cw.write(b)
		cw.write(f)
		b = b[:0]
	}
	cw.write(b)
	cw.write(binary.LittleEndian.AppendUint32(b[:0], cw.crc.Sum32()))
	return cw.n, cw.err
}

// ReadSnapshot reads a snapshot written by WriteTo, exactly its bytes and no more (so other
// data may follow it in r). maxMemoryBytes is the most linear memory the caller accepts —
// the restoring cell's Limits.MemoryBytes; a larger snapshot is refused (ErrLimit) before
// the rest is read. Truncated or damaged input (the CRC), another format version or
// anything inconsistent fails with ErrSnapshot and a message saying what. It keeps the
// memory compressed, allocating at most what arrived plus one chunk; Restore decompresses it
// straight into the new cell.
func ReadSnapshot(r io.Reader, maxMemoryBytes int64) (*Snapshot, error) {
	cr := &crcReader{r: r, crc: crc32.New(castagnoli)}
	h := make([]byte, snapHeaderSize)
	if err := cr.full(h, "header"); err != nil {
		return nil, err
	}
	le := binary.LittleEndian
	if string(h[:4]) != snapMagic {
		return nil, fmt.Errorf("%w: not a cell snapshot (magic %q)", ErrSnapshot, h[:4])
	}
	if v := le.Uint16(h[4:]); v != SnapshotVersion {
		return nil, fmt.Errorf("%w: format version %d, this agent reads version %d", ErrSnapshot, v, SnapshotVersion)
	}
	s := &Snapshot{Digest: hex.EncodeToString(h[8:40]), Pages: le.Uint32(h[40:]), chunk: int(le.Uint16(h[44:]))}
	flags, reserved, nGlobals := le.Uint16(h[6:]), le.Uint16(h[46:]), le.Uint32(h[48:])
	switch {
	case flags != 0 || reserved != 0:
		return nil, fmt.Errorf("%w: unknown flags %#x/%#x", ErrSnapshot, flags, reserved)
	case s.Pages > maxPages:
		return nil, fmt.Errorf("%w: %d pages of memory, more than wasm32's %d", ErrSnapshot, s.Pages, maxPages)
	case s.MemoryBytes() > min(maxMemoryBytes, MaxMemoryBytes):
		return nil, fmt.Errorf("%w: the snapshot holds %d bytes of linear memory, more than the %d allowed", ErrLimit, s.MemoryBytes(), min(maxMemoryBytes, MaxMemoryBytes))
	case s.chunk < 1 || s.chunk > chunkPages:
		return nil, fmt.Errorf("%w: chunks of %d pages, this agent reads 1 to %d", ErrSnapshot, s.chunk, chunkPages)
	case nGlobals > maxSnapGlobals:
		return nil, fmt.Errorf("%w: %d globals, more than a module may have", ErrSnapshot, nGlobals)
	}

	// Globals, a block at a time, so that a short input cannot make the reader allocate
	// for a million.
	for left := int(nGlobals); left > 0; {
		n := min(left, 4096)
		left -= n
		b := make([]byte, n*snapGlobalSize)
		if err := cr.full(b, "globals"); err != nil {
			return nil, err
		}
		for ; len(b) > 0; b = b[snapGlobalSize:] {
			g := globalValue{snapGlobal{index: le.Uint32(b), kind: valKind(b[4])}, le.Uint64(b[5:])}
			switch {
			case !g.kind.capturable():
				return nil, fmt.Errorf("%w: global %d has type %s", ErrSnapshot, g.index, g.kind)
			case len(s.globals) > 0 && g.index <= s.globals[len(s.globals)-1].index:
				return nil, fmt.Errorf("%w: global %d out of order", ErrSnapshot, g.index)
			case (g.kind == kindI32 || g.kind == kindF32) && g.bits>>32 != 0:
				return nil, fmt.Errorf("%w: 32-bit global %d has high bits set", ErrSnapshot, g.index)
			}
			s.globals = append(s.globals, g)
		}
	}

	m := make([]byte, (s.Pages+7)/8)
	if err := cr.full(m, "page map"); err != nil {
		return nil, err
	}
	if tail := s.Pages % 8; tail != 0 && m[len(m)-1]>>tail != 0 {
		return nil, fmt.Errorf("%w: page map marks pages past the end of memory", ErrSnapshot)
	}
	s.present = make([]uint64, (s.Pages+63)/64)
	for i, b := range m {
		s.present[i/8] |= uint64(b) << (8 * (i % 8))
	}

	stored := s.storedPages()
	for p := 0; p < stored; p += s.chunk {
		raw := min(s.chunk, stored-p) * pageSize
		var l [4]byte
		if err := cr.full(l[:], "chunk length"); err != nil {
			return nil, err
		}
		n := int64(le.Uint32(l[:]))
		if n > int64(maxFrame(raw)) {
			return nil, fmt.Errorf("%w: chunk %d claims %d compressed bytes for %d bytes of memory", ErrSnapshot, len(s.frames), n, raw)
		}
		f := make([]byte, n)
		if err := cr.full(f, "memory"); err != nil {
			return nil, err
		}
		s.frames = append(s.frames, f)
	}
	want := cr.crc.Sum32()
	var c [4]byte
	if _, err := io.ReadFull(r, c[:]); err != nil {
		return nil, fmt.Errorf("%w: truncated in the CRC: %v", ErrSnapshot, err)
	}
	if got := le.Uint32(c[:]); got != want {
		return nil, fmt.Errorf("%w: CRC mismatch (stored %08x, computed %08x): damaged in transfer or storage", ErrSnapshot, got, want)
	}
	return s, nil
}

// crcWriter counts and checksums what it writes; the first error sticks.
type crcWriter struct {
	w   io.Writer
	crc hash.Hash32
	n   int64
	err error
}

func (w *crcWriter) write(b []byte) {
	if w.err != nil {
		return
	}
	w.crc.Write(b)
	n, err := w.w.Write(b)
	w.n += int64(n)
	w.err = err
}

// crcReader checksums what it reads.
type crcReader struct {
	r   io.Reader
	crc hash.Hash32
}

// full fills b, calling a short read a truncated snapshot.
func (r *crcReader) full(b []byte, what string) error {
	if _, err := io.ReadFull(r.r, b); err != nil {
		if errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF) {
			return fmt.Errorf("%w: truncated in the %s", ErrSnapshot, what)
		}
		return fmt.Errorf("cells: reading snapshot %s: %w", what, err)
	}
	r.crc.Write(b)
	return nil
}
