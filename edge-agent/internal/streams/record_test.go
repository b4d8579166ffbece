package streams

import (
	"bytes"
	"errors"
	"maps"
	"strings"
	"testing"
	"time"
)

func TestRecordRoundTrip(t *testing.T) {
	cases := []struct {
		name string
		r    Record
	}{
		{"empty", Record{Time: base}},
		{"plain", Record{Time: base.Add(1500 * time.Nanosecond), Topic: "sensors/a/b", Payload: []byte(`{"t":21.5}`)}},
		{"headers", Record{Time: base, Topic: "x", Headers: map[string]string{"b": "2", "a": "", "": "empty key"}, Payload: []byte{0, 1, 2}}},
		{"before 1970", Record{Time: time.Date(1960, 1, 1, 0, 0, 0, 0, time.UTC), Topic: "old"}},
		{"large", Record{Time: base, Topic: strings.Repeat("t", 300), Payload: bytes.Repeat([]byte{0xff}, 70000)}},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			enc := encodeRecord(nil, &c.r, 0)
			if len(enc) > encodedSize(&c.r) {
				t.Errorf("encoded %d bytes, encodedSize says at most %d", len(enc), encodedSize(&c.r))
			}
			got, flags, err := decodeRecord(enc)
			if err != nil {
				t.Fatal(err)
			}
			if flags != 0 {
				t.Errorf("flags %#x", flags)
			}
			if !got.Time.Equal(c.r.Time.Truncate(time.Microsecond)) || got.Topic != c.r.Topic ||
				!bytes.Equal(got.Payload, c.r.Payload) || !maps.Equal(got.Headers, c.r.Headers) {
				t.Errorf("got %+v, want %+v", got, c.r)
			}
			if len(c.r.Headers) == 0 && got.Headers != nil {
				t.Errorf("no headers decode as %v, want nil", got.Headers)
			}
			tm, err := decodeTime(enc)
			if err != nil || !tm.Equal(got.Time) {
				t.Errorf("decodeTime = %v, %v; want %v", tm, err, got.Time)
			}
		})
	}
}

func TestDecodeRecordRejects(t *testing.T) {
	good := encodeRecord(nil, &Record{Time: base, Topic: "a/b", Headers: map[string]string{"k": "v"}, Payload: []byte("p")}, 0)
	cases := map[string][]byte{
		"nil":           nil,
		"one byte":      {1},
		"version 2":     append([]byte{2}, good[1:]...),
		"unknown flags": append([]byte{1, 0x80}, good[2:]...),
		"cut in time":   good[:3],
		"cut in topic":  good[:len(good)-8],
		"huge count":    {1, 0, 0, 0, 0xff, 0xff, 0xff, 0xff, 0x0f},
	}
	for name, b := range cases {
		if _, _, err := decodeRecord(b); !errors.Is(err, errDecode) {
			t.Errorf("%s: err = %v, want errDecode", name, err)
		}
	}
}

// FuzzDecodeRecord: decoding arbitrary bytes never panics, and whatever
// decodes encodes back to something that decodes the same.
func FuzzDecodeRecord(f *testing.F) {
	f.Add(encodeRecord(nil, &Record{Time: base, Topic: "sensors/x", Headers: map[string]string{"a": "b"}, Payload: []byte("hello")}, 0))
	f.Add(encodeRecord(nil, &Record{Time: base}, flagFiller))
	f.Add([]byte{1, 0, 0, 0, 3, 'a', 'b'})
	f.Add([]byte{})
	f.Fuzz(func(t *testing.T, b []byte) {
		r, flags, err := decodeRecord(b)
		if err != nil {
			return
		}
		again, flags2, err := decodeRecord(encodeRecord(nil, &r, flags))
		if err != nil {
			t.Fatalf("re-encoded record does not decode: %v", err)
		}
		if flags2 != flags || !again.Time.Equal(r.Time) || again.Topic != r.Topic ||
			!bytes.Equal(again.Payload, r.Payload) || !maps.Equal(again.Headers, r.Headers) {
			t.Fatalf("round trip changed the record: %+v → %+v", r, again)
		}
		decodeTime(b)
	})
}
