package cellsdk

import (
	"encoding/binary"
	"fmt"
	"math"
	"time"
	"unicode/utf8"
)

// BatchMagic starts every encoded batch.
const BatchMagic = "CSB1"

// Sizes of the fixed parts of the encoding, used to bound counts before allocating.
const (
	batchHeaderMin = 4 + 2 + 4      // magic, input_len, count
	recordMin      = 8 + 8 + 2 + 4  // offset, time_ns, topic_len, payload_len
	maxString      = math.MaxUint16 // input and topic lengths are u16
	maxPayload     = math.MaxUint32 // payload lengths are u32
	maxRecords     = math.MaxUint32 // count is u32
)

// Record is one record of an input stream.
type Record struct {
	Offset  uint64    // position of the record in its input stream
	Time    time.Time // when the record was ingested
	Topic   string    // the MQTT topic it arrived on
	Payload []byte
}

// Batch is one or more records of one input, in stream order: what a handler gets.
type Batch struct {
	Input   string // the input stream's name
	Records []Record
}

// EncodeBatch encodes b in the batch encoding of the cell ABI; the host uses it to
// build the input of cloudskin_handle. A zero Record.Time encodes as Unix time 0.
func EncodeBatch(b Batch) ([]byte, error) {
	return AppendBatch(nil, b)
}

// AppendBatch is EncodeBatch appending to dst, for hosts that reuse a buffer.
func AppendBatch(dst []byte, b Batch) ([]byte, error) {
	if err := checkString("input", b.Input); err != nil {
		return dst, err
	}
	if len(b.Records) == 0 {
		return dst, fmt.Errorf("cellsdk: encode batch: no records (a batch holds one or more)")
	}
	if uint64(len(b.Records)) > maxRecords {
		return dst, fmt.Errorf("cellsdk: encode batch: %d records exceed the u32 count", len(b.Records))
	}
	size := batchHeaderMin + len(b.Input)
	for i, r := range b.Records {
		if err := checkString(fmt.Sprintf("record %d topic", i), r.Topic); err != nil {
			return dst, err
		}
		if uint64(len(r.Payload)) > maxPayload {
			return dst, fmt.Errorf("cellsdk: encode batch: record %d payload of %d bytes exceeds the u32 length", i, len(r.Payload))
		}
		size += recordMin + len(r.Topic) + len(r.Payload)
	}
	if cap(dst)-len(dst) < size {
		grown := make([]byte, len(dst), len(dst)+size)
		copy(grown, dst)
		dst = grown
	}
	dst = append(dst, BatchMagic...)
	dst = binary.LittleEndian.AppendUint16(dst, uint16(len(b.Input)))
	dst = append(dst, b.Input...)
	dst = binary.LittleEndian.AppendUint32(dst, uint32(len(b.Records)))
	for _, r := range b.Records {
		var ns int64
		if !r.Time.IsZero() {
			ns = r.Time.UnixNano()
		}
		dst = binary.LittleEndian.AppendUint64(dst, r.Offset)
		dst = binary.LittleEndian.AppendUint64(dst, uint64(ns))
		dst = binary.LittleEndian.AppendUint16(dst, uint16(len(r.Topic)))
		dst = append(dst, r.Topic...)
		dst = binary.LittleEndian.AppendUint32(dst, uint32(len(r.Payload)))
		dst = append(dst, r.Payload...)
	}
	return dst, nil
}

func checkString(what, s string) error {
	if len(s) > maxString {
		return fmt.Errorf("cellsdk: encode batch: %s of %d bytes exceeds the u16 length", what, len(s))
	}
	if !utf8.ValidString(s) {
		return fmt.Errorf("cellsdk: encode batch: %s is not valid UTF-8", what)
	}
	return nil
}

// DecodeBatch decodes a batch strictly: every length is checked against the bytes left,
// names must be UTF-8, the count must be at least one and no bytes may follow the last
// record. Errors wrap ErrBadBatch. Payloads alias buf; Input and Topic are copies.
func DecodeBatch(buf []byte) (Batch, error) {
	d := decoder{buf: buf}
	if len(buf) < len(BatchMagic) || string(buf[:len(BatchMagic)]) != BatchMagic {
		return Batch{}, d.fail("missing %q magic", BatchMagic)
	}
	d.pos = len(BatchMagic)
	var b Batch
	var ok bool
	if b.Input, ok = d.str("input"); !ok {
		return Batch{}, d.err
	}
	count, ok := d.u32("record count")
	if !ok {
		return Batch{}, d.err
	}
	if count == 0 {
		return Batch{}, d.fail("record count is zero (a batch holds one or more)")
	}
	if left := uint64(len(buf) - d.pos); uint64(count) > left/recordMin {
		return Batch{}, d.fail("record count %d cannot fit in the %d bytes left", count, left)
	}
	b.Records = make([]Record, count)
	for i := range b.Records {
		r := &b.Records[i]
		d.rec = i + 1
		off, ok1 := d.u64("offset")
		ns, ok2 := d.u64("time")
		topic, ok3 := d.str("topic")
		n, ok4 := d.u32("payload length")
		if !(ok1 && ok2 && ok3 && ok4) {
			return Batch{}, d.err
		}
		if uint64(n) > uint64(len(buf)-d.pos) {
			return Batch{}, d.fail("payload length %d exceeds the %d bytes left", n, len(buf)-d.pos)
		}
		r.Offset = off
		r.Time = time.Unix(0, int64(ns))
		r.Topic = topic
		r.Payload = buf[d.pos : d.pos+int(n) : d.pos+int(n)]
		d.pos += int(n)
	}
	d.rec = 0
	if d.pos != len(buf) {
		return Batch{}, d.fail("%d bytes follow the last record", len(buf)-d.pos)
	}
	return b, nil
}

// decoder reads little-endian fields; the first failure is kept in err and every read
// after it fails too, so callers may check once after a group of reads.
type decoder struct {
	buf []byte
	pos int
	rec int // 1-based record being decoded, 0 for the header
	err error
}

func (d *decoder) fail(format string, args ...any) error {
	if d.err != nil {
		return d.err
	}
	where := "header"
	if d.rec > 0 {
		where = fmt.Sprintf("record %d", d.rec)
	}
	d.err = fmt.Errorf("%w: %s at byte %d: %s", ErrBadBatch, where, d.pos, fmt.Sprintf(format, args...))
	return d.err
}

func (d *decoder) take(n int, what string) ([]byte, bool) {
	if d.err != nil {
		return nil, false
	}
	if len(d.buf)-d.pos < n {
		d.fail("%s needs %d bytes, %d left", what, n, len(d.buf)-d.pos)
		return nil, false
	}
	p := d.buf[d.pos : d.pos+n]
	d.pos += n
	return p, true
}

func (d *decoder) u32(what string) (uint32, bool) {
	p, ok := d.take(4, what)
	if !ok {
		return 0, false
	}
	return binary.LittleEndian.Uint32(p), true
}

func (d *decoder) u64(what string) (uint64, bool) {
	p, ok := d.take(8, what)
	if !ok {
		return 0, false
	}
	return binary.LittleEndian.Uint64(p), true
}

func (d *decoder) str(what string) (string, bool) {
	p, ok := d.take(2, what+" length")
	if !ok {
		return "", false
	}
	p, ok = d.take(int(binary.LittleEndian.Uint16(p)), what)
	if !ok {
		return "", false
	}
	if !utf8.Valid(p) {
		d.pos -= len(p)
		d.fail("%s is not valid UTF-8", what)
		return "", false
	}
	return string(p), true
}
