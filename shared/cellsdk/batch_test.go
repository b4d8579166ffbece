package cellsdk

import (
	"bytes"
	"encoding/binary"
	"errors"
	"reflect"
	"strings"
	"testing"
	"time"
)

func sampleBatch() Batch {
	return Batch{
		Input: "sensors",
		Records: []Record{
			{Offset: 7, Time: time.Unix(0, 1_700_000_000_123_456_789), Topic: "site/a/t1", Payload: []byte(`{"sensor":"t1","value":21.5}`)},
			{Offset: 8, Time: time.Unix(0, -5), Topic: "", Payload: []byte{}},
			{Offset: 1<<64 - 1, Time: time.Unix(0, 1), Topic: "é/ü", Payload: bytes.Repeat([]byte{0xff}, 300)},
		},
	}
}

func TestBatchRoundTrip(t *testing.T) {
	in := sampleBatch()
	enc, err := EncodeBatch(in)
	if err != nil {
		t.Fatal(err)
	}
	out, err := DecodeBatch(enc)
	if err != nil {
		t.Fatal(err)
	}
	if out.Input != in.Input || len(out.Records) != len(in.Records) {
		t.Fatalf("got %+v", out)
	}
	for i, r := range out.Records {
		w := in.Records[i]
		if r.Offset != w.Offset || !r.Time.Equal(w.Time) || r.Topic != w.Topic || !bytes.Equal(r.Payload, w.Payload) {
			t.Errorf("record %d: got %+v, want %+v", i, r, w)
		}
	}
}

// TestBatchLayout pins the byte layout of docs/cell-abi.md, so a change to the encoder
// that the decoder mirrors cannot slip through the round trip.
func TestBatchLayout(t *testing.T) {
	enc, err := EncodeBatch(Batch{Input: "in", Records: []Record{{Offset: 0x0102, Time: time.Unix(0, 0x0a0b), Topic: "t", Payload: []byte("xy")}}})
	if err != nil {
		t.Fatal(err)
	}
	want := []byte{
		'C', 'S', 'B', '1',
		2, 0, 'i', 'n',
		1, 0, 0, 0,
		0x02, 0x01, 0, 0, 0, 0, 0, 0,
		0x0b, 0x0a, 0, 0, 0, 0, 0, 0,
		1, 0, 't',
		2, 0, 0, 0, 'x', 'y',
	}
	if !bytes.Equal(enc, want) {
		t.Fatalf("encoding\n got % x\nwant % x", enc, want)
	}
}

func TestEncodeZeroTime(t *testing.T) {
	enc, err := EncodeBatch(Batch{Input: "in", Records: []Record{{}}})
	if err != nil {
		t.Fatal(err)
	}
	b, err := DecodeBatch(enc)
	if err != nil {
		t.Fatal(err)
	}
	if got := b.Records[0].Time.UnixNano(); got != 0 {
		t.Fatalf("zero time encoded as %d ns, want 0", got)
	}
}

func TestAppendBatchKeepsPrefix(t *testing.T) {
	enc, err := AppendBatch([]byte("prefix"), sampleBatch())
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.HasPrefix(enc, []byte("prefix"+BatchMagic)) {
		t.Fatalf("got % x", enc[:12])
	}
}

func TestEncodeBatchErrors(t *testing.T) {
	long := strings.Repeat("a", 1<<16)
	tests := []struct {
		name string
		b    Batch
		want string
	}{
		{"no records", Batch{Input: "in"}, "no records"},
		{"long input", Batch{Input: long, Records: []Record{{}}}, "input of 65536 bytes"},
		{"long topic", Batch{Input: "in", Records: []Record{{}, {Topic: long}}}, "record 1 topic"},
		{"bad utf8 input", Batch{Input: "\xff", Records: []Record{{}}}, "not valid UTF-8"},
		{"bad utf8 topic", Batch{Input: "in", Records: []Record{{Topic: "a\xc3"}}}, "not valid UTF-8"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := EncodeBatch(tt.b)
			if err == nil || !strings.Contains(err.Error(), tt.want) {
				t.Fatalf("got %v, want an error containing %q", err, tt.want)
			}
		})
	}
}

func TestDecodeBatchErrors(t *testing.T) {
	good, err := EncodeBatch(Batch{Input: "in", Records: []Record{{Offset: 1, Topic: "t", Payload: []byte("xy")}}})
	if err != nil {
		t.Fatal(err)
	}
	patched := func(at int, b ...byte) []byte {
		p := bytes.Clone(good)
		copy(p[at:], b)
		return p
	}
	le32 := func(v uint32) []byte { return binary.LittleEndian.AppendUint32(nil, v) }
	// Offsets into good: magic 0, input_len 4, input 6, count 8, offset 12, time 20,
	// topic_len 28, topic 30, payload_len 31, payload 35, end 37.
	tests := []struct {
		name string
		buf  []byte
		want string
	}{
		{"empty", nil, "magic"},
		{"wrong magic", patched(0, 'C', 'S', 'B', '2'), "magic"},
		{"magic only", good[:4], "input length needs 2 bytes"},
		{"input cut", good[:7], "input needs 2 bytes, 1 left"},
		{"input too long", patched(4, 0xff, 0xff), "input needs 65535 bytes"},
		{"input not utf8", patched(6, 0xff), "input is not valid UTF-8"},
		{"count cut", good[:10], "record count needs 4 bytes"},
		{"count zero", patched(8, le32(0)...), "record count is zero"},
		{"count too large", patched(8, le32(2)...), "record count 2 cannot fit"},
		{"count huge", patched(8, le32(0xffffffff)...), "cannot fit"},
		{"payload length cut", patched(28, 6, 0), "record 1 at byte 36: payload length needs 4 bytes, 1 left"},
		{"topic cut", good[:29], "cannot fit"},
		{"topic too long", patched(28, 9, 0), "record 1"},
		{"topic not utf8", patched(30, 0x80), "topic is not valid UTF-8"},
		{"payload too long", patched(31, le32(3)...), "payload length 3 exceeds the 2 bytes left"},
		{"payload huge", patched(31, le32(0xffffffff)...), "exceeds"},
		{"trailing bytes", append(bytes.Clone(good), 0), "1 bytes follow the last record"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := DecodeBatch(tt.buf)
			if err == nil {
				t.Fatal("decoded; want an error")
			}
			if !errors.Is(err, ErrBadBatch) {
				t.Errorf("error %v does not wrap ErrBadBatch", err)
			}
			if !strings.Contains(err.Error(), tt.want) {
				t.Errorf("got %q, want it to contain %q", err, tt.want)
			}
		})
	}
}

func TestDecodeBatchPayloadCannotGrowIntoNextRecord(t *testing.T) {
	enc, err := EncodeBatch(Batch{Input: "in", Records: []Record{{Payload: []byte("a")}, {Payload: []byte("b")}}})
	if err != nil {
		t.Fatal(err)
	}
	b, err := DecodeBatch(enc)
	if err != nil {
		t.Fatal(err)
	}
	_ = append(b.Records[0].Payload, 'X')
	if string(b.Records[1].Payload) != "b" || enc[len(enc)-1] != 'b' {
		t.Fatal("appending to a payload overwrote the batch buffer")
	}
}

func FuzzDecodeBatch(f *testing.F) {
	for _, b := range []Batch{
		sampleBatch(),
		{Input: "", Records: []Record{{}}},
		{Input: "in", Records: []Record{{Offset: 1, Topic: "a/b", Payload: []byte{0, 1, 2}}}},
	} {
		enc, err := EncodeBatch(b)
		if err != nil {
			f.Fatal(err)
		}
		f.Add(enc)
		f.Add(enc[:len(enc)-1])
	}
	f.Add([]byte("CSB1"))
	f.Add([]byte{'C', 'S', 'B', '1', 0, 0, 0xff, 0xff, 0xff, 0xff})
	f.Fuzz(func(t *testing.T, buf []byte) {
		b, err := DecodeBatch(buf)
		if err != nil {
			if !errors.Is(err, ErrBadBatch) {
				t.Fatalf("error %v does not wrap ErrBadBatch", err)
			}
			return
		}
		// The encoding has no slack, so a batch that decodes re-encodes to the same bytes.
		enc, err := EncodeBatch(b)
		if err != nil {
			t.Fatalf("decoded batch does not encode: %v", err)
		}
		if !bytes.Equal(enc, buf) {
			t.Fatalf("round trip changed the bytes\n  in % x\n out % x", buf, enc)
		}
		again, err := DecodeBatch(enc)
		if err != nil {
			t.Fatal(err)
		}
		if !reflect.DeepEqual(normalize(again), normalize(b)) {
			t.Fatalf("second decode differs: %+v vs %+v", again, b)
		}
	})
}

// normalize makes batches comparable with DeepEqual: time.Time carries a location
// pointer and empty payloads may be nil or not.
func normalize(b Batch) Batch {
	out := Batch{Input: b.Input}
	for _, r := range b.Records {
		r.Time = time.Unix(0, r.Time.UnixNano()).UTC()
		if len(r.Payload) == 0 {
			r.Payload = nil
		}
		out.Records = append(out.Records, r)
	}
	return out
}
