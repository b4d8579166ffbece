package engine

import (
	"bytes"
	"encoding/json"
	"testing"
)

// fuzzEngine has every type, with scales whose decode-encode round trip is exact.
const fuzzEngine = `{"fields":[
	{"name":"t","type":"timestamp"},
	{"name":"a","type":"int8"},
	{"name":"b","type":"uint8","scale":0.5},
	{"name":"c","type":"int16","scale":0.01,"offset":-40},
	{"name":"d","type":"uint16"},
	{"name":"e","type":"int32","scale":0.001},
	{"name":"f","type":"uint32"},
	{"name":"g","type":"int64"},
	{"name":"h","type":"uint64"},
	{"name":"i","type":"float32"},
	{"name":"j","type":"float64"},
	{"name":"k","type":"bool"}]}`

// FuzzDecode feeds Decode arbitrary bytes. It must not panic, must refuse a blob of the
// wrong size, and whatever it accepts must be valid JSON that encodes to the same blob.
func FuzzDecode(f *testing.F) {
	e := mustParse(f, fuzzEngine)
	good, err := e.Encode([]byte(`{"t":"2022-01-01T00:05:00Z","a":-1,"b":2.5,"c":-21.5,"d":7,"e":1.234,"f":9,` +
		`"g":-9223372036854775808,"h":18446744073709551615,"i":0.1,"j":-1e300,"k":true}`))
	if err != nil {
		f.Fatal(err)
	}
	f.Add(good)
	f.Add(good[:len(good)-1])
	f.Add(append(bytes.Clone(good), 0))
	f.Add(bytes.Repeat([]byte{0xff}, e.Size()))
	f.Add(make([]byte, e.Size()))
	f.Add([]byte{})
	f.Fuzz(func(t *testing.T, blob []byte) {
		out, err := e.Decode(blob)
		if err != nil {
			return
		}
		if len(blob) != e.Size() {
			t.Fatalf("accepted %d bytes, Size %d", len(blob), e.Size())
		}
		if !json.Valid(out) {
			t.Fatalf("invalid JSON %s", out)
		}
		again, err := e.Encode(out)
		if err != nil {
			t.Fatalf("Encode(Decode(%x)) = Encode(%s): %v", blob, out, err)
		}
		if !bytes.Equal(again, blob) {
			t.Fatalf("Encode(Decode(%x)) = %x via %s", blob, again, out)
		}
	})
}

// FuzzParse feeds Parse arbitrary templates: no panic, and an accepted engine is within
// the limits and encodes and decodes its own zero blob without panicking.
func FuzzParse(f *testing.F) {
	f.Add([]byte(fuzzEngine))
	f.Add([]byte(rmisEngine))
	f.Add([]byte(`{"fields":[{"name":"a","type":"int8","scale":-1e-300,"offset":1e300}]}`))
	f.Add([]byte(`{"fields":[{"name":"a","type":"bool","scale":1}]}`))
	f.Fuzz(func(t *testing.T, tmpl []byte) {
		e, err := Parse(tmpl)
		if err != nil {
			return
		}
		if n := len(e.Fields); n == 0 || n > MaxFields || e.Size() > maxBlobSize || e.Size() < n {
			t.Fatalf("accepted %d fields, size %d", n, e.Size())
		}
		if out, err := e.Decode(make([]byte, e.Size())); err == nil && !json.Valid(out) {
			t.Fatalf("invalid JSON %s", out)
		}
		_, _ = e.Encode([]byte(`{}`))
	})
}
