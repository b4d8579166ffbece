package segment

import (
	"bytes"
	"reflect"
	"testing"
	"time"
)

// FuzzDecode feeds Decode arbitrary bytes, and the same bytes with their
// trailer recomputed so the fuzzer gets past the checksum into the header
// and record parsers. Decode must not panic, and whatever it accepts must
// re-encode to the very same bytes.
func FuzzDecode(f *testing.F) {
	one := []Record{{Offset: 0, Time: time.UnixMicro(0).UTC(), Topic: "", Payload: nil}}
	many := sampleRecords(1<<40, 8)
	big := sampleRecords(5, 2)
	big[1].Payload = bytes.Repeat([]byte{0xff}, 300)
	big[1].Headers = map[string]string{"a": "", "b": "é", "c": "x"}
	for _, seg := range [][]byte{
		mustEncode(f, "n", "s", one),
		mustEncode(f, "edge-1", "temps", many),
		mustEncode(f, "node-with-a-long-name-0123456789", "stream_a-b", big),
	} {
		f.Add(seg)
		f.Add(seg[:len(seg)/2])
		f.Add(seg[:len(seg)-TrailerSize])
	}
	f.Add([]byte(Magic))
	f.Add([]byte{})
	f.Fuzz(func(t *testing.T, b []byte) {
		check(t, b)
		if len(b) >= TrailerSize {
			check(t, reseal(bytes.Clone(b)))
		}
	})
}

func check(t *testing.T, b []byte) {
	hdr, recs, err := Decode(b)
	if err != nil {
		if recs != nil {
			t.Fatalf("error %v with %d records", err, len(recs))
		}
		return
	}
	if uint64(len(recs)) != hdr.Count {
		t.Fatalf("%d records, header says %d", len(recs), hdr.Count)
	}
	again, err := Encode(hdr, recs)
	if err != nil {
		t.Fatalf("a decoded segment does not encode: %v", err)
	}
	if !bytes.Equal(again, b) {
		t.Fatal("an accepted segment re-encodes to other bytes: the encoding is not canonical")
	}
	h2, recs2, err := Decode(again)
	if err != nil || !reflect.DeepEqual(h2, hdr) || !reflect.DeepEqual(recs2, recs) {
		t.Fatalf("re-encoded segment decodes differently: %v", err)
	}
}
