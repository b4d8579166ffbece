// Package segment is the blob format of a sealed stream segment: a
// contiguous, checksummed run of records that an agent uploads to the cloud
// tier and the console reads back. The agent encodes, the console decodes;
// Decode trusts nothing in its input.
//
// # Format (version 1)
//
// All integers are big-endian unless said otherwise.
//
//	magic    8 bytes   "CSSEG001" (the version is part of the magic)
//	hlen     uint32    length of the header, 1..MaxHeaderSize
//	header   hlen bytes JSON: {"node","stream","first","last","count","min_time_us","max_time_us"}
//	records  exactly count times:
//	  blen   uint32    length of body, minBody..MaxRecordSize
//	  body   blen bytes
//	    offset    uint64   first, first+1, … last, in order
//	    time_us   int64    Unix microseconds, within min_time_us..max_time_us
//	    topic     uvarint length + UTF-8 bytes (at most MaxTopicLen)
//	    nheaders  uvarint (at most MaxHeaders), then per header:
//	              key   uvarint length + UTF-8 bytes (non-empty; keys strictly ascending)
//	              value uvarint length + UTF-8 bytes
//	    payload   the rest of body
//	  crc    uint32    CRC-32C (Castagnoli) of blen and body
//	trailer  32 bytes  SHA-256 of every byte before it
//
// The header says which node and stream the records belong to and the
// inclusive offset range first..last (count = last-first+1, at least 1);
// min/max_time_us bound every record's time (they need not be attained).
// Times have microsecond precision: Encode truncates finer times. Encoding
// is canonical (uvarints minimal, header keys sorted), so a segment that
// decodes re-encodes to the same bytes.
package segment

import (
	"bytes"
	"crypto/sha256"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"hash"
	"hash/crc32"
	"io"
	"maps"
	"slices"
	"time"
	"unicode/utf8"

	"github.com/cloudskin/cloudskin/shared/protocol"
)

// Magic starts every version-1 segment.
const Magic = "CSSEG001"

// Limits of the format; Decode refuses anything beyond them.
const (
	MaxHeaderSize = 64 << 10 // JSON header
	MaxRecordSize = 64 << 20 // one record's body
	MaxTopicLen   = 65535    // as MQTT
	MaxHeaders    = 256      // headers per record
	TrailerSize   = sha256.Size

	// minBody is a body with an empty topic, no headers and no payload.
	minBody = 8 + 8 + 1 + 1
	// minRecord is the smallest record on the wire.
	minRecord = 4 + minBody + 4
	// MinSize is the smallest possible segment (one empty record).
	MinSize = len(Magic) + 4 + 2 + minRecord + TrailerSize
)

// Errors: Decode wraps ErrCorrupt, Encode wraps ErrInvalid.
var (
	ErrCorrupt = errors.New("corrupt segment")
	ErrInvalid = errors.New("invalid segment")
)

var castagnoli = crc32.MakeTable(crc32.Castagnoli)

// Record is one stream record.
type Record struct {
	Offset  uint64
	Time    time.Time // microsecond precision
	Topic   string
	Headers map[string]string
	Payload []byte
}

// Header describes a segment: whose records, which offsets, which times.
type Header struct {
	Node    string
	Stream  string
	First   uint64 // offset of the first record
	Last    uint64 // offset of the last record (inclusive)
	Count   uint64 // Last-First+1
	MinTime time.Time
	MaxTime time.Time
}

// wireHeader is the JSON form of Header; times are integer microseconds so
// nothing is lost or reformatted on the way.
type wireHeader struct {
	Node      string `json:"node"`
	Stream    string `json:"stream"`
	First     uint64 `json:"first"`
	Last      uint64 `json:"last"`
	Count     uint64 `json:"count"`
	MinTimeUS int64  `json:"min_time_us"`
	MaxTimeUS int64  `json:"max_time_us"`
}

// NewHeader derives the header of recs (in offset order) for node's stream.
func NewHeader(node, stream string, recs []Record) Header {
	h := Header{Node: node, Stream: stream, Count: uint64(len(recs))}
	if len(recs) == 0 {
		return h
	}
	h.First, h.Last = recs[0].Offset, recs[len(recs)-1].Offset
	minUS, maxUS := recs[0].Time.UnixMicro(), recs[0].Time.UnixMicro()
	for _, r := range recs[1:] {
		us := r.Time.UnixMicro()
		minUS, maxUS = min(minUS, us), max(maxUS, us)
	}
	h.MinTime, h.MaxTime = time.UnixMicro(minUS).UTC(), time.UnixMicro(maxUS).UTC()
	return h
}

func (h Header) wire() wireHeader {
	return wireHeader{Node: h.Node, Stream: h.Stream, First: h.First, Last: h.Last, Count: h.Count,
		MinTimeUS: h.MinTime.UnixMicro(), MaxTimeUS: h.MaxTime.UnixMicro()}
}

func (w wireHeader) header() Header {
	return Header{Node: w.Node, Stream: w.Stream, First: w.First, Last: w.Last, Count: w.Count,
		MinTime: time.UnixMicro(w.MinTimeUS).UTC(), MaxTime: time.UnixMicro(w.MaxTimeUS).UTC()}
}

// check is the one set of header rules Encode and Decode share.
func (w wireHeader) check() error {
	if err := protocol.ValidateNodeName(w.Node); err != nil {
		return err
	}
	if err := protocol.ValidateStreamName(w.Stream); err != nil {
		return err
	}
	if w.Count == 0 {
		return errors.New("count is 0: a segment holds at least one record")
	}
	if w.First > w.Last || w.Last-w.First != w.Count-1 {
		return fmt.Errorf("offsets %d..%d do not hold count %d records", w.First, w.Last, w.Count)
	}
	if w.MinTimeUS > w.MaxTimeUS {
		return fmt.Errorf("min time %d after max time %d (µs)", w.MinTimeUS, w.MaxTimeUS)
	}
	return nil
}

// Encoder writes one segment to a writer, record by record, so an agent
// can stream a large segment to a file without holding it in memory.
type Encoder struct {
	w    io.Writer
	sum  hash.Hash
	hdr  wireHeader
	n    uint64
	buf  []byte
	err  error
	done bool
}

// NewEncoder checks hdr and writes the magic and the header. Exactly
// hdr.Count records must follow (Add), then Close.
func NewEncoder(w io.Writer, hdr Header) (*Encoder, error) {
	wh := hdr.wire()
	if err := wh.check(); err != nil {
		return nil, fmt.Errorf("%w: header: %w", ErrInvalid, err)
	}
	js, err := json.Marshal(wh)
	if err != nil {
		return nil, fmt.Errorf("%w: header: %w", ErrInvalid, err)
	}
	e := &Encoder{w: w, sum: sha256.New(), hdr: wh}
	b := append([]byte(Magic), 0, 0, 0, 0)
	binary.BigEndian.PutUint32(b[len(Magic):], uint32(len(js)))
	if err := e.write(append(b, js...)); err != nil {
		return nil, err
	}
	return e, nil
}

func (e *Encoder) write(b []byte) error {
	if e.err != nil {
		return e.err
	}
	e.sum.Write(b)
	if _, err := e.w.Write(b); err != nil {
		e.err = fmt.Errorf("write segment: %w", err)
	}
	return e.err
}

// Add appends the next record; its offset must be the next in the header's
// range and its time within the header's bounds.
func (e *Encoder) Add(r Record) error {
	if e.err != nil {
		return e.err
	}
	if e.done || e.n >= e.hdr.Count {
		return fmt.Errorf("%w: more than count %d records", ErrInvalid, e.hdr.Count)
	}
	if want := e.hdr.First + e.n; r.Offset != want {
		return fmt.Errorf("%w: record offset %d, want %d", ErrInvalid, r.Offset, want)
	}
	us := r.Time.UnixMicro()
	if us < e.hdr.MinTimeUS || us > e.hdr.MaxTimeUS {
		return fmt.Errorf("%w: record %d: time %s outside the header's %s..%s", ErrInvalid, r.Offset,
			r.Time.UTC().Format(time.RFC3339Nano), time.UnixMicro(e.hdr.MinTimeUS).UTC().Format(time.RFC3339Nano),
			time.UnixMicro(e.hdr.MaxTimeUS).UTC().Format(time.RFC3339Nano))
	}
	if err := checkText("topic", r.Topic, MaxTopicLen); err != nil {
		return fmt.Errorf("%w: record %d: %w", ErrInvalid, r.Offset, err)
	}
	if len(r.Headers) > MaxHeaders {
		return fmt.Errorf("%w: record %d: %d headers, at most %d", ErrInvalid, r.Offset, len(r.Headers), MaxHeaders)
	}
	b := append(e.buf[:0], 0, 0, 0, 0)
	b = binary.BigEndian.AppendUint64(b, r.Offset)
	b = binary.BigEndian.AppendUint64(b, uint64(us))
	b = binary.AppendUvarint(b, uint64(len(r.Topic)))
	b = append(b, r.Topic...)
	b = binary.AppendUvarint(b, uint64(len(r.Headers)))
	for _, k := range slices.Sorted(maps.Keys(r.Headers)) {
		v := r.Headers[k]
		if k == "" {
			return fmt.Errorf("%w: record %d: empty header name", ErrInvalid, r.Offset)
		}
		if err := checkText("header name", k, MaxRecordSize); err != nil {
			return fmt.Errorf("%w: record %d: %w", ErrInvalid, r.Offset, err)
		}
		if err := checkText("header "+k, v, MaxRecordSize); err != nil {
			return fmt.Errorf("%w: record %d: %w", ErrInvalid, r.Offset, err)
		}
		b = binary.AppendUvarint(b, uint64(len(k)))
		b = append(b, k...)
		b = binary.AppendUvarint(b, uint64(len(v)))
		b = append(b, v...)
	}
	if len(b)-4+len(r.Payload) > MaxRecordSize {
		return fmt.Errorf("%w: record %d: %d bytes, at most %d", ErrInvalid, r.Offset, len(b)-4+len(r.Payload), MaxRecordSize)
	}
	binary.BigEndian.PutUint32(b, uint32(len(b)-4+len(r.Payload)))
	crc := crc32.Update(crc32.Checksum(b, castagnoli), castagnoli, r.Payload)
	e.buf = b
	if err := e.write(b); err != nil {
		return err
	}
	if err := e.write(r.Payload); err != nil {
		return err
	}
	if err := e.write(binary.BigEndian.AppendUint32(nil, crc)); err != nil {
		return err
	}
	e.n++
	return nil
}

// Close writes the trailer once every record is in; it does not close the
// underlying writer.
func (e *Encoder) Close() error {
	if e.err != nil {
		return e.err
	}
	if e.done {
		return nil
	}
	if e.n != e.hdr.Count {
		return fmt.Errorf("%w: %d records added, header says %d", ErrInvalid, e.n, e.hdr.Count)
	}
	e.done = true
	sum := e.sum.Sum(nil)
	if _, err := e.w.Write(sum); err != nil {
		e.err = fmt.Errorf("write segment: %w", err)
	}
	return e.err
}

// Encode returns the segment holding recs under hdr (see NewHeader).
func Encode(hdr Header, recs []Record) ([]byte, error) {
	if uint64(len(recs)) != hdr.Count {
		return nil, fmt.Errorf("%w: %d records, header says %d", ErrInvalid, len(recs), hdr.Count)
	}
	var buf bytes.Buffer
	e, err := NewEncoder(&buf, hdr)
	if err != nil {
		return nil, err
	}
	for _, r := range recs {
		if err := e.Add(r); err != nil {
			return nil, err
		}
	}
	if err := e.Close(); err != nil {
		return nil, err
	}
	return buf.Bytes(), nil
}

func checkText(what, s string, maxLen int) error {
	if len(s) > maxLen {
		return fmt.Errorf("%s is %d bytes, at most %d", what, len(s), maxLen)
	}
	if !utf8.ValidString(s) {
		return fmt.Errorf("%s is not valid UTF-8", what)
	}
	return nil
}

// Decode checks a whole segment — checksums, structure, the header's node,
// stream, offset range, count and time bounds against every record — and
// returns its contents. It never panics, and allocates at most in
// proportion to len(b). Topics, header strings and payloads are copies or
// sub-slices of b respectively: the payloads alias b.
func Decode(b []byte) (Header, []Record, error) {
	if len(b) < MinSize {
		return Header{}, nil, corrupt("%d bytes, shorter than the smallest segment (%d)", len(b), MinSize)
	}
	if string(b[:len(Magic)]) != Magic {
		return Header{}, nil, corrupt("bad magic %q, want %q", b[:len(Magic)], Magic)
	}
	body, trailer := b[:len(b)-TrailerSize], b[len(b)-TrailerSize:]
	if sum := sha256.Sum256(body); !bytes.Equal(sum[:], trailer) {
		return Header{}, nil, corrupt("sha256 trailer does not match the contents")
	}
	p := body[len(Magic):]
	hlen := binary.BigEndian.Uint32(p)
	p = p[4:]
	if hlen == 0 || hlen > MaxHeaderSize || uint64(hlen) > uint64(len(p)) {
		return Header{}, nil, corrupt("header length %d out of bounds", hlen)
	}
	var wh wireHeader
	dec := json.NewDecoder(bytes.NewReader(p[:hlen]))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&wh); err != nil {
		return Header{}, nil, corrupt("header: %v", err)
	}
	if _, err := dec.Token(); err != io.EOF {
		return Header{}, nil, corrupt("header: data after the JSON object")
	}
	if err := wh.check(); err != nil {
		return Header{}, nil, corrupt("header: %v", err)
	}
	// Only the canonical form (as Encode writes it) is accepted, so a
	// segment has exactly one encoding.
	if js, _ := json.Marshal(wh); !bytes.Equal(js, p[:hlen]) {
		return Header{}, nil, corrupt("header is not in canonical form")
	}
	p = p[hlen:]
	if wh.Count > uint64(len(p)/minRecord) {
		return Header{}, nil, corrupt("header says %d records, %d bytes cannot hold them", wh.Count, len(p))
	}
	recs := make([]Record, 0, wh.Count)
	for i := uint64(0); i < wh.Count; i++ {
		want := wh.First + i
		if len(p) < 4 {
			return Header{}, nil, corrupt("record %d: truncated", want)
		}
		blen := binary.BigEndian.Uint32(p)
		if blen < minBody || blen > MaxRecordSize || uint64(blen)+8 > uint64(len(p)) {
			return Header{}, nil, corrupt("record %d: length %d out of bounds", want, blen)
		}
		frame := p[:4+blen]
		if got, stored := crc32.Checksum(frame, castagnoli), binary.BigEndian.Uint32(p[4+blen:]); got != stored {
			return Header{}, nil, corrupt("record %d: CRC-32C %08x, stored %08x", want, got, stored)
		}
		r, err := decodeBody(frame[4:], wh, want)
		if err != nil {
			return Header{}, nil, err
		}
		recs = append(recs, r)
		p = p[8+blen:]
	}
	if len(p) != 0 {
		return Header{}, nil, corrupt("%d bytes after the last record", len(p))
	}
	return wh.header(), recs, nil
}

func decodeBody(b []byte, wh wireHeader, want uint64) (Record, error) {
	var r Record
	if r.Offset = binary.BigEndian.Uint64(b); r.Offset != want {
		return r, corrupt("record at offset %d, want %d: offsets must run contiguously from %d", r.Offset, want, wh.First)
	}
	us := int64(binary.BigEndian.Uint64(b[8:]))
	if us < wh.MinTimeUS || us > wh.MaxTimeUS {
		return r, corrupt("record %d: time %d µs outside the header's %d..%d", want, us, wh.MinTimeUS, wh.MaxTimeUS)
	}
	r.Time = time.UnixMicro(us).UTC()
	p := b[16:]
	topic, p, err := text(p, MaxTopicLen)
	if err != nil {
		return r, corrupt("record %d: topic: %v", want, err)
	}
	r.Topic = topic
	n, k := binary.Uvarint(p)
	if k <= 0 || !minimal(n, k) {
		return r, corrupt("record %d: bad header count", want)
	}
	p = p[k:]
	// Each header needs at least two bytes, which bounds the map by len(b).
	if n > MaxHeaders || n > uint64(len(p)/2) {
		return r, corrupt("record %d: %d headers out of bounds", want, n)
	}
	if n > 0 {
		r.Headers = make(map[string]string, n)
		prev := ""
		for j := uint64(0); j < n; j++ {
			var key, val string
			if key, p, err = text(p, len(p)); err != nil {
				return r, corrupt("record %d: header name: %v", want, err)
			}
			if key == "" || (j > 0 && key <= prev) {
				return r, corrupt("record %d: header names must be non-empty and strictly ascending", want)
			}
			if val, p, err = text(p, len(p)); err != nil {
				return r, corrupt("record %d: header %s: %v", want, key, err)
			}
			r.Headers[key], prev = val, key
		}
	}
	r.Payload = p[:len(p):len(p)]
	return r, nil
}

// text reads a uvarint-prefixed UTF-8 string.
func text(p []byte, maxLen int) (string, []byte, error) {
	n, k := binary.Uvarint(p)
	if k <= 0 || !minimal(n, k) {
		return "", nil, errors.New("bad length")
	}
	p = p[k:]
	if n > uint64(maxLen) || n > uint64(len(p)) {
		return "", nil, fmt.Errorf("length %d out of bounds", n)
	}
	s := p[:n]
	if !utf8.Valid(s) {
		return "", nil, errors.New("not valid UTF-8")
	}
	return string(s), p[n:], nil
}

// minimal reports whether a uvarint of value n took the fewest bytes, which
// keeps the encoding canonical.
func minimal(n uint64, k int) bool {
	var tmp [binary.MaxVarintLen64]byte
	return binary.PutUvarint(tmp[:], n) == k
}

func corrupt(format string, args ...any) error {
	return fmt.Errorf("%w: %s", ErrCorrupt, fmt.Sprintf(format, args...))
}
