package streams

import (
	"encoding/binary"
	"errors"
	"fmt"
	"slices"
	"time"
)

// Record is one message in a stream.
type Record struct {
	// Offset is the record's position in the stream, assigned on append (it
	// is the journal index). Offsets start at 1, grow by one per record and
	// are never reused.
	Offset uint64
	// Time is set by the caller (the ingest time) and stored with
	// microsecond precision; a zero Time is replaced by the stream's clock
	// on Append. Records are read back in UTC.
	Time    time.Time
	Topic   string
	Headers map[string]string // may be nil; MQTT v5 user properties
	Payload []byte
}

// Size is what a record counts for against a read's maxBytes: its payload,
// topic and headers.
func (r *Record) Size() int {
	n := len(r.Payload) + len(r.Topic)
	for k, v := range r.Headers {
		n += len(k) + len(v)
	}
	return n
}

// A record is stored as one journal record (the journal adds its own
// length prefix and CRC-32C, see package journal):
//
//	record   = version[1] flags[1] time topic headers payload
//	version  = 1
//	flags    = bit 0: filler (see below); other bits must be 0
//	time     = varint (zig-zag) of the time in Unix microseconds
//	topic    = uvarint(len) bytes
//	headers  = uvarint(count) { uvarint(len) key uvarint(len) value }, sorted by key
//	payload  = every byte up to the end of the record
//
// A filler holds an offset and nothing else: when a repair on open cut
// records that a cursor or the spill position had already passed, fillers
// take those offsets so that new records never reuse them. Read skips
// fillers.
const (
	recordVersion = 1
	flagFiller    = 1 << 0
)

var errDecode = errors.New("streams: malformed record")

// encodeRecord appends the encoding of r to dst.
func encodeRecord(dst []byte, r *Record, flags byte) []byte {
	dst = append(dst, recordVersion, flags)
	dst = binary.AppendVarint(dst, r.Time.UnixMicro())
	dst = binary.AppendUvarint(dst, uint64(len(r.Topic)))
	dst = append(dst, r.Topic...)
	dst = binary.AppendUvarint(dst, uint64(len(r.Headers)))
	if len(r.Headers) > 0 {
		keys := make([]string, 0, len(r.Headers))
		for k := range r.Headers {
			keys = append(keys, k)
		}
		slices.Sort(keys)
		for _, k := range keys {
			v := r.Headers[k]
			dst = binary.AppendUvarint(dst, uint64(len(k)))
			dst = append(dst, k...)
			dst = binary.AppendUvarint(dst, uint64(len(v)))
			dst = append(dst, v...)
		}
	}
	return append(dst, r.Payload...)
}

// encodedSize is the exact size encodeRecord produces, so Append allocates
// once.
func encodedSize(r *Record) int {
	n := 2 + binary.MaxVarintLen64 + uvarintLen(len(r.Topic)) + len(r.Topic) + uvarintLen(len(r.Headers)) + len(r.Payload)
	for k, v := range r.Headers {
		n += uvarintLen(len(k)) + len(k) + uvarintLen(len(v)) + len(v)
	}
	return n
}

func uvarintLen(n int) int {
	l := 1
	for ; n >= 0x80; n >>= 7 {
		l++
	}
	return l
}

// decodeRecord parses an encoded record. Payload aliases b. It returns an
// error wrapping errDecode, and never panics, whatever b holds.
func decodeRecord(b []byte) (r Record, flags byte, err error) {
	d := decoder{b: b}
	if len(b) < 2 {
		return r, 0, fmt.Errorf("%w: %d bytes, shorter than its header", errDecode, len(b))
	}
	if b[0] != recordVersion {
		return r, 0, fmt.Errorf("%w: unknown version %d", errDecode, b[0])
	}
	flags = b[1]
	if flags&^flagFiller != 0 {
		return r, 0, fmt.Errorf("%w: unknown flags %#x", errDecode, flags)
	}
	d.b = b[2:]
	us := d.varint()
	r.Time = time.UnixMicro(us).UTC()
	r.Topic = string(d.bytes())
	n := d.uvarint()
	if d.err == nil && n > uint64(len(d.b))/2 { // each header takes at least 2 bytes
		d.fail("header count %d exceeds the record", n)
	}
	if d.err == nil && n > 0 {
		r.Headers = make(map[string]string, n)
		for range n {
			k := string(d.bytes())
			v := string(d.bytes())
			if d.err != nil {
				break
			}
			r.Headers[k] = v
		}
	}
	if d.err != nil {
		return Record{}, 0, d.err
	}
	r.Payload = d.b
	return r, flags, nil
}

// decodeTime returns just the time of an encoded record.
func decodeTime(b []byte) (time.Time, error) {
	if len(b) < 2 || b[0] != recordVersion {
		return time.Time{}, fmt.Errorf("%w: bad header", errDecode)
	}
	d := decoder{b: b[2:]}
	us := d.varint()
	if d.err != nil {
		return time.Time{}, d.err
	}
	return time.UnixMicro(us).UTC(), nil
}

type decoder struct {
	b   []byte
	err error
}

func (d *decoder) fail(format string, args ...any) {
	if d.err == nil {
		d.err = fmt.Errorf("%w: "+format, append([]any{errDecode}, args...)...)
	}
}

func (d *decoder) varint() int64 {
	if d.err != nil {
		return 0
	}
	v, n := binary.Varint(d.b)
	if n <= 0 {
		d.fail("bad varint")
		return 0
	}
	d.b = d.b[n:]
	return v
}

func (d *decoder) uvarint() uint64 {
	if d.err != nil {
		return 0
	}
	v, n := binary.Uvarint(d.b)
	if n <= 0 {
		d.fail("bad uvarint")
		return 0
	}
	d.b = d.b[n:]
	return v
}

// bytes reads a length-prefixed byte string; the result aliases the input.
func (d *decoder) bytes() []byte {
	n := d.uvarint()
	if d.err != nil {
		return nil
	}
	if n > uint64(len(d.b)) {
		d.fail("length %d exceeds the %d bytes left", n, len(d.b))
		return nil
	}
	out := d.b[:n]
	d.b = d.b[n:]
	return out
}
