package segment

import (
	"bytes"
	"crypto/sha256"
	"encoding/binary"
	"errors"
	"fmt"
	"hash/crc32"
	"reflect"
	"runtime"
	"strings"
	"testing"
	"time"
)

var t0 = time.Date(2026, 11, 29, 3, 6, 12, 672471000, time.UTC)

func sampleRecords(first uint64, n int) []Record {
	recs := make([]Record, n)
	for i := range recs {
		recs[i] = Record{
			Offset:  first + uint64(i),
			Time:    t0.Add(time.Duration(i) * 1500 * time.Microsecond),
			Topic:   fmt.Sprintf("sensors/field-%d/t1", i%3),
			Payload: []byte(fmt.Sprintf(`{"value":%d}`, i)),
		}
		if i%2 == 0 {
			recs[i].Headers = map[string]string{"content-type": "application/json", "a": "ü"}
		}
	}
	return recs
}

func mustEncode(t testing.TB, node, stream string, recs []Record) []byte {
	t.Helper()
	b, err := Encode(NewHeader(node, stream, recs), recs)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

func TestRoundTrip(t *testing.T) {
	recs := sampleRecords(1000, 50)
	recs[3].Payload = nil
	recs[4].Topic = ""
	recs[5].Time = recs[5].Time.Add(123 * time.Nanosecond) // truncated to µs
	b := mustEncode(t, "edge-1", "temps", recs)
	hdr, got, err := Decode(b)
	if err != nil {
		t.Fatal(err)
	}
	want := Header{Node: "edge-1", Stream: "temps", First: 1000, Last: 1049, Count: 50,
		MinTime: t0.Truncate(time.Microsecond), MaxTime: t0.Add(49 * 1500 * time.Microsecond).Truncate(time.Microsecond)}
	if !reflect.DeepEqual(hdr, want) {
		t.Fatalf("header %+v, want %+v", hdr, want)
	}
	if len(got) != len(recs) {
		t.Fatalf("%d records, want %d", len(got), len(recs))
	}
	for i, r := range got {
		w := recs[i]
		if r.Offset != w.Offset || !r.Time.Equal(w.Time.Truncate(time.Microsecond)) || r.Time.Location() != time.UTC ||
			r.Topic != w.Topic || !bytes.Equal(r.Payload, w.Payload) || !reflect.DeepEqual(r.Headers, w.Headers) {
			t.Fatalf("record %d: got %+v, want %+v", i, r, w)
		}
	}
	// Canonical: what decodes re-encodes to the same bytes.
	again, err := Encode(hdr, got)
	if err != nil || !bytes.Equal(again, b) {
		t.Fatalf("re-encoding differs (%v)", err)
	}
}

func TestEncoderStreams(t *testing.T) {
	recs := sampleRecords(7, 20)
	hdr := NewHeader("n", "s", recs)
	var buf bytes.Buffer
	e, err := NewEncoder(&buf, hdr)
	if err != nil {
		t.Fatal(err)
	}
	for _, r := range recs {
		if err := e.Add(r); err != nil {
			t.Fatal(err)
		}
	}
	if err := e.Add(Record{Offset: 27, Time: t0}); !errors.Is(err, ErrInvalid) {
		t.Fatalf("one record too many: %v", err)
	}
	if err := e.Close(); err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(buf.Bytes(), mustEncode(t, "n", "s", recs)) {
		t.Fatal("the streaming encoder and Encode disagree")
	}

	short, _ := NewEncoder(&bytes.Buffer{}, hdr)
	short.Add(recs[0])
	if err := short.Close(); !errors.Is(err, ErrInvalid) {
		t.Fatalf("closing with records missing: %v", err)
	}
}

func TestEncodeRefuses(t *testing.T) {
	good := sampleRecords(10, 3)
	hdr := NewHeader("edge-1", "temps", good)
	mod := func(f func(h *Header, rs []Record)) (Header, []Record) {
		h := hdr
		rs := make([]Record, len(good))
		copy(rs, good)
		f(&h, rs)
		return h, rs
	}
	cases := map[string]func(h *Header, rs []Record){
		"bad node":          func(h *Header, rs []Record) { h.Node = "Edge_1" },
		"bad stream":        func(h *Header, rs []Record) { h.Stream = "a/b" },
		"count mismatch":    func(h *Header, rs []Record) { h.Count = 4 },
		"last before first": func(h *Header, rs []Record) { h.First, h.Last = 12, 10 },
		"gap":               func(h *Header, rs []Record) { rs[1].Offset = 99 },
		"time before min":   func(h *Header, rs []Record) { rs[1].Time = hdr.MinTime.Add(-time.Microsecond) },
		"time after max":    func(h *Header, rs []Record) { rs[1].Time = hdr.MaxTime.Add(time.Microsecond) },
		"min after max":     func(h *Header, rs []Record) { h.MinTime = hdr.MaxTime.Add(time.Second) },
		"topic not UTF-8":   func(h *Header, rs []Record) { rs[0].Topic = "\xff" },
		"empty header name": func(h *Header, rs []Record) { rs[0].Headers = map[string]string{"": "x"} },
		"topic too long":    func(h *Header, rs []Record) { rs[0].Topic = strings.Repeat("t", MaxTopicLen+1) },
		"payload too large": func(h *Header, rs []Record) { rs[0].Payload = make([]byte, MaxRecordSize) },
	}
	for name, f := range cases {
		h, rs := mod(f)
		if _, err := Encode(h, rs); !errors.Is(err, ErrInvalid) {
			t.Errorf("%s: %v, want ErrInvalid", name, err)
		}
	}
	if _, err := Encode(NewHeader("n", "s", nil), nil); !errors.Is(err, ErrInvalid) {
		t.Errorf("empty segment: %v, want ErrInvalid", err)
	}
}

// reseal recomputes the trailer so a test reaches the checks behind it.
func reseal(b []byte) []byte {
	sum := sha256.Sum256(b[:len(b)-TrailerSize])
	copy(b[len(b)-TrailerSize:], sum[:])
	return b
}

// withHeader rebuilds a segment's header JSON, keeping its records, with the
// CRCs and trailer made right again.
func withHeader(b []byte, js string) []byte {
	hlen := binary.BigEndian.Uint32(b[len(Magic):])
	recs := b[len(Magic)+4+int(hlen) : len(b)-TrailerSize]
	out := append([]byte(Magic), 0, 0, 0, 0)
	binary.BigEndian.PutUint32(out[len(Magic):], uint32(len(js)))
	out = append(out, js...)
	out = append(out, recs...)
	return reseal(append(out, make([]byte, TrailerSize)...))
}

func TestDecodeRefuses(t *testing.T) {
	good := mustEncode(t, "edge-1", "temps", sampleRecords(10, 3))
	hdr, _, _ := Decode(good)
	hlen := int(binary.BigEndian.Uint32(good[len(Magic):]))
	firstRec := len(Magic) + 4 + hlen
	minUS, maxUS := hdr.MinTime.UnixMicro(), hdr.MaxTime.UnixMicro()
	hj := func(node, stream string, first, last, count uint64, lo, hi int64) string {
		return fmt.Sprintf(`{"node":%q,"stream":%q,"first":%d,"last":%d,"count":%d,"min_time_us":%d,"max_time_us":%d}`,
			node, stream, first, last, count, lo, hi)
	}
	edit := func(f func(b []byte) []byte) []byte { return f(bytes.Clone(good)) }
	cases := map[string][]byte{
		"empty":            nil,
		"short":            good[:MinSize-1],
		"bad magic":        edit(func(b []byte) []byte { b[7] = '2'; return reseal(b) }),
		"flipped bit":      edit(func(b []byte) []byte { b[len(b)/2] ^= 1; return b }),
		"truncated":        good[:len(good)-1],
		"trailing garbage": append(bytes.Clone(good), 0),
		"payload bit, resealed": edit(func(b []byte) []byte {
			b[firstRec+4+8+8+5] ^= 0x40 // inside the first record: the CRC catches it
			return reseal(b)
		}),
		"zero header length": edit(func(b []byte) []byte { binary.BigEndian.PutUint32(b[len(Magic):], 0); return reseal(b) }),
		"huge header length": edit(func(b []byte) []byte {
			binary.BigEndian.PutUint32(b[len(Magic):], 1<<31)
			return reseal(b)
		}),
		"header not JSON":       withHeader(good, strings.Repeat("x", hlen)),
		"header unknown field":  withHeader(good, `{"zzz":1,`+hj("edge-1", "temps", 10, 12, 3, minUS, maxUS)[1:]),
		"header trailing data":  withHeader(good, hj("edge-1", "temps", 10, 12, 3, minUS, maxUS)+"}"),
		"header bad node":       withHeader(good, hj("EDGE", "temps", 10, 12, 3, minUS, maxUS)),
		"header bad stream":     withHeader(good, hj("edge-1", "", 10, 12, 3, minUS, maxUS)),
		"header count too big":  withHeader(good, hj("edge-1", "temps", 10, 13, 4, minUS, maxUS)),
		"header count too few":  withHeader(good, hj("edge-1", "temps", 10, 11, 2, minUS, maxUS)),
		"header count mismatch": withHeader(good, hj("edge-1", "temps", 10, 12, 2, minUS, maxUS)),
		"header zero count":     withHeader(good, hj("edge-1", "temps", 10, 12, 0, minUS, maxUS)),
		"header overflow range": withHeader(good, hj("edge-1", "temps", 0, 1<<64-1, 0, minUS, maxUS)),
		"header first shifted":  withHeader(good, hj("edge-1", "temps", 11, 13, 3, minUS, maxUS)),
		"header min after max":  withHeader(good, hj("edge-1", "temps", 10, 12, 3, maxUS, minUS)),
		"header not canonical":  withHeader(good, " "+hj("edge-1", "temps", 10, 12, 3, minUS, maxUS)),
		"time below min":        withHeader(good, hj("edge-1", "temps", 10, 12, 3, minUS+1, maxUS)),
		"time above max":        withHeader(good, hj("edge-1", "temps", 10, 12, 3, minUS, maxUS-1)),
		"a billion records":     withHeader(good, hj("edge-1", "temps", 0, 999_999_999, 1_000_000_000, minUS, maxUS)),
		"record length huge": edit(func(b []byte) []byte {
			binary.BigEndian.PutUint32(b[firstRec:], 1<<30)
			return reseal(b)
		}),
		"record length small": edit(func(b []byte) []byte {
			binary.BigEndian.PutUint32(b[firstRec:], 3)
			return reseal(b)
		}),
	}
	for name, b := range cases {
		if h, recs, err := Decode(b); !errors.Is(err, ErrCorrupt) || recs != nil || h != (Header{}) {
			t.Errorf("%s: %v (%d records), want ErrCorrupt and nothing", name, err, len(recs))
		}
	}
}

// segmentOf builds a one-record segment from a hand-made body, CRC and
// trailer right, to test the body parser's refusals.
func segmentOf(body []byte) []byte {
	hj := fmt.Sprintf(`{"node":"n","stream":"s","first":5,"last":5,"count":1,"min_time_us":0,"max_time_us":%d}`, int64(1)<<62)
	b := append([]byte(Magic), 0, 0, 0, 0)
	binary.BigEndian.PutUint32(b[len(Magic):], uint32(len(hj)))
	b = append(b, hj...)
	frame := binary.BigEndian.AppendUint32(nil, uint32(len(body)))
	frame = append(frame, body...)
	b = append(b, frame...)
	b = binary.BigEndian.AppendUint32(b, crc32c(frame))
	return reseal(append(b, make([]byte, TrailerSize)...))
}

func body(parts ...[]byte) []byte {
	b := binary.BigEndian.AppendUint64(nil, 5)
	b = binary.BigEndian.AppendUint64(b, 1000)
	for _, p := range parts {
		b = append(b, p...)
	}
	return b
}

func TestDecodeBody(t *testing.T) {
	if _, recs, err := Decode(segmentOf(body([]byte{1, 't', 1, 1, 'k', 1, 'v', 'p'}))); err != nil ||
		recs[0].Topic != "t" || recs[0].Headers["k"] != "v" || string(recs[0].Payload) != "p" {
		t.Fatalf("hand-made record: %+v %v", recs, err)
	}
	cases := map[string][]byte{
		"topic longer than body":   body([]byte{9, 't', 0}),
		"topic not UTF-8":          body([]byte{1, 0xff, 0}),
		"non-minimal varint":       body([]byte{0x81, 0x00, 't', 0}),
		"varint overflow":          body([]byte{0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x01, 0}),
		"too many headers":         body([]byte{0, 0xff, 0x7f}),
		"headers beyond body":      body([]byte{0, 2, 1, 'k', 0}),
		"empty header name":        body([]byte{0, 1, 0, 0}),
		"duplicate header":         body([]byte{0, 2, 1, 'k', 0, 1, 'k', 0}),
		"headers out of order":     body([]byte{0, 2, 1, 'b', 0, 1, 'a', 0}),
		"header value not UTF-8":   body([]byte{0, 1, 1, 'k', 1, 0xc3}),
		"header value beyond body": body([]byte{0, 1, 1, 'k', 5, 'v'}),
		"wrong offset": func() []byte {
			b := body([]byte{0, 0})
			binary.BigEndian.PutUint64(b, 6)
			return b
		}(),
		"negative time": func() []byte {
			b := body([]byte{0, 0})
			binary.BigEndian.PutUint64(b[8:], 1<<63)
			return b
		}(),
	}
	for name, b := range cases {
		if _, _, err := Decode(segmentOf(b)); !errors.Is(err, ErrCorrupt) {
			t.Errorf("%s: %v, want ErrCorrupt", name, err)
		}
	}
}

func TestDecodeAllocationsBounded(t *testing.T) {
	// A header promising a billion records in a tiny blob must fail before
	// allocating for them.
	good := mustEncode(t, "n", "s", sampleRecords(0, 1))
	hdr, _, _ := Decode(good)
	bad := withHeader(good, fmt.Sprintf(`{"node":"n","stream":"s","first":0,"last":999999999,"count":1000000000,"min_time_us":%d,"max_time_us":%d}`,
		hdr.MinTime.UnixMicro(), hdr.MaxTime.UnixMicro()))
	if _, _, err := Decode(bad); !errors.Is(err, ErrCorrupt) {
		t.Fatalf("lying header: %v", err)
	}
	var before, after runtime.MemStats
	runtime.ReadMemStats(&before)
	for range 10 {
		Decode(bad)
	}
	runtime.ReadMemStats(&after)
	if grown := after.TotalAlloc - before.TotalAlloc; grown > 1<<20 {
		t.Fatalf("decoding a lying header ten times allocated %d bytes", grown)
	}
}

func BenchmarkDecode(b *testing.B) {
	recs := sampleRecords(0, 4096)
	for i := range recs {
		recs[i].Payload = bytes.Repeat([]byte("x"), 256)
	}
	seg := mustEncode(b, "edge-1", "temps", recs)
	b.SetBytes(int64(len(seg)))
	b.ReportAllocs()
	for b.Loop() {
		if _, _, err := Decode(seg); err != nil {
			b.Fatal(err)
		}
	}
}

func BenchmarkEncode(b *testing.B) {
	recs := sampleRecords(0, 4096)
	for i := range recs {
		recs[i].Payload = bytes.Repeat([]byte("x"), 256)
	}
	hdr := NewHeader("edge-1", "temps", recs)
	seg := mustEncode(b, "edge-1", "temps", recs)
	b.SetBytes(int64(len(seg)))
	b.ReportAllocs()
	for b.Loop() {
		if _, err := Encode(hdr, recs); err != nil {
			b.Fatal(err)
		}
	}
}

func crc32c(b []byte) uint32 { return crc32.Checksum(b, crc32.MakeTable(crc32.Castagnoli)) }
