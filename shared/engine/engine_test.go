package engine

import (
	"bytes"
	"encoding/binary"
	"encoding/hex"
	"encoding/json"
	"math"
	"strconv"
	"strings"
	"testing"
	"time"
)

func mustParse(t testing.TB, tmpl string) *Engine {
	t.Helper()
	e, err := Parse([]byte(tmpl))
	if err != nil {
		t.Fatalf("Parse(%s): %v", tmpl, err)
	}
	return e
}

func TestParse(t *testing.T) {
	e := mustParse(t, `{"name":"rmis","version":3,"fields":[
		{"name":"time","type":"timestamp"},
		{"name":"temp","type":"int16","unit":"°C","scale":0.01,"offset":-10},
		{"name":"on","type":"bool"},
		{"name":"f","type":"float32"}]}`)
	if e.Name != "rmis" || e.Version != 3 || len(e.Fields) != 4 || e.Size() != 8+2+1+4 {
		t.Errorf("parsed %+v, size %d", e, e.Size())
	}
	if e.Fields[2].Scale != nil || *e.Fields[3].Scale != 1 || *e.Fields[1].Scale != 0.01 || e.Fields[1].Unit != "°C" {
		t.Errorf("scales %v %v, unit %q", *e.Fields[2].Scale, *e.Fields[1].Scale, e.Fields[1].Unit)
	}
	// The transform cell's config: fields only.
	if e := mustParse(t, `{"fields":[{"name":"n","type":"uint64"}]}`); e.Size() != 8 || e.Name != "" {
		t.Errorf("cell config: %+v", e)
	}
	// A parsed engine marshals to a template that parses to the same engine.
	b, _ := json.Marshal(e)
	if again := mustParse(t, string(b)); again.Size() != e.Size() || *again.Fields[1].Scale != 0.01 || again.Fields[1].Offset != -10 {
		t.Errorf("re-parsed %s", b)
	}
}

func TestParseErrors(t *testing.T) {
	many := make([]string, MaxFields+1)
	for i := range many {
		many[i] = `{"name":"f` + strconv.Itoa(i) + `","type":"uint8"}`
	}
	for _, tc := range []struct{ tmpl, want string }{
		{``, "EOF"},
		{`[]`, "cannot unmarshal array"},
		{`{"fields":[]}`, "fields: empty"},
		{`{}`, "fields: empty"},
		{`{"fields":[{"name":"a","type":"int8"}]} {}`, "data after the template"},
		{`{"fields":[{"name":"a","type":"int8","colour":1}]}`, `unknown field "colour"`},
		{`{"name":"x","fields":[{"name":"a","type":"int8"}],"extra":1}`, `unknown field "extra"`},
		{`{"fields":[{"name":"","type":"int8"}]}`, "fields[0]: name: empty"},
		{`{"fields":[{"name":"a","type":"int8"},{"name":"a","type":"int8"}]}`, `fields[1]: name "a": used twice`},
		{`{"fields":[{"name":"` + strings.Repeat("n", MaxNameLen+1) + `","type":"int8"}]}`, "65 bytes, want at most 64"},
		{`{"name":"` + strings.Repeat("n", MaxNameLen+1) + `","fields":[{"name":"a","type":"int8"}]}`, "engine: name: 65 bytes"},
		{`{"fields":[{"name":"a","type":"int24"}]}`, `fields[0] (a): type "int24": want int8…int64`},
		{`{"fields":[{"name":"a","type":"Int8"}]}`, `type "Int8"`},
		{`{"fields":[{"name":"a","type":"int8","scale":0}]}`, "fields[0] (a): scale 0: want a finite non-zero number"},
		{`{"fields":[{"name":"a","type":"int8","scale":1e999}]}`, "cannot unmarshal number 1e999"},
		{`{"fields":[{"name":"a","type":"bool","scale":2}]}`, "scale and offset do not apply to type bool"},
		{`{"fields":[{"name":"a","type":"timestamp","offset":2}]}`, "do not apply to type timestamp"},
		{`{"fields":[{"name":"a","type":"int8","unit":"` + strings.Repeat("u", MaxUnitLen+1) + `"}]}`, "unit"},
		{`{"version":-1,"fields":[{"name":"a","type":"int8"}]}`, "version -1"},
		{`{"fields":[` + strings.Join(many, ",") + `]}`, "fields: 257, want at most 256"},
	} {
		_, err := Parse([]byte(tc.tmpl))
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("Parse(%.80s): %v, want %q", tc.tmpl, err, tc.want)
		}
	}
	// Validate catches what JSON cannot express.
	nan := math.NaN()
	for _, e := range []*Engine{
		{Fields: []Field{{Name: "a", Type: "int8", Scale: &nan}}},
		{Fields: []Field{{Name: "a", Type: "int8", Offset: math.Inf(1)}}},
		{Fields: []Field{{Name: "\xff", Type: "int8"}}},
	} {
		if err := e.Validate(); err == nil {
			t.Errorf("Validate(%+v) passed", e.Fields)
		}
	}
	var unready Engine
	if _, err := unready.Encode([]byte(`{}`)); err != errNotValidated {
		t.Errorf("Encode on an unvalidated engine: %v", err)
	}
}

// TestEncode pins the blob layout byte by byte and the errors at each type's edges.
func TestEncode(t *testing.T) {
	for _, tc := range []struct {
		field, value string
		want         string // hex of the blob, or the error's text after "error: "
	}{
		{`{"type":"int8"}`, `-128`, "80"},
		{`{"type":"int8"}`, `127`, "7f"},
		{`{"type":"int8"}`, `128`, `error: field "v": 128 scales to 128, outside int8 (values -128…127)`},
		{`{"type":"int8"}`, `-129`, "error: outside int8"},
		{`{"type":"int8"}`, `127.4`, "7f"}, // rounds to 127
		{`{"type":"int8"}`, `127.5`, "error: 127.5 scales to 128"},
		{`{"type":"int8"}`, `-0.5`, "ff"}, // half away from zero
		{`{"type":"int8"}`, `0.49`, "00"},
		{`{"type":"uint8"}`, `255`, "ff"},
		{`{"type":"uint8"}`, `-1`, "error: outside uint8 (values 0…255)"},
		{`{"type":"int16"}`, `-32768`, "0080"},
		{`{"type":"int16"}`, `32767`, "ff7f"},
		{`{"type":"int16"}`, `32768`, "error: outside int16"},
		{`{"type":"uint16"}`, `65535`, "ffff"},
		{`{"type":"uint16"}`, `65536`, "error: outside uint16"},
		{`{"type":"int32"}`, `-2147483648`, "00000080"},
		{`{"type":"int32"}`, `2147483648`, "error: outside int32"},
		{`{"type":"uint32"}`, `4294967295`, "ffffffff"},
		{`{"type":"uint32"}`, `4294967296`, "error: outside uint32"},
		{`{"type":"int64"}`, `-9223372036854775808`, "0000000000000080"},
		{`{"type":"int64"}`, `9223372036854775807`, "ffffffffffffff7f"},
		{`{"type":"int64"}`, `9223372036854775808`, "error: outside int64 (values -9223372036854775808…9223372036854775807)"},
		{`{"type":"int64"}`, `1e3`, "e803000000000000"},
		{`{"type":"uint64"}`, `18446744073709551615`, "ffffffffffffffff"},
		{`{"type":"uint64"}`, `18446744073709551616`, "error: outside uint64 (values 0…18446744073709551615)"},
		{`{"type":"uint64"}`, `9007199254740993`, "0100000000002000"}, // 2^53+1, exact
		{`{"type":"int16","scale":0.01}`, `-21.5`, "9af7"},            // -2150
		{`{"type":"int16","scale":0.01}`, `327.675`, "error: field \"v\": 327.675 scales to 32768, outside int16 (values -327.68…327.67)"},
		{`{"type":"int16","scale":0.01}`, `0.005`, "0100"},                // 0.5 rounds away from zero
		{`{"type":"uint16","scale":0.1,"offset":800}`, `809.178`, "5c00"}, // 91.78 → 92
		{`{"type":"uint16","scale":0.1,"offset":800}`, `799.9`, "error: outside uint16 (values 800…7353.5)"},
		{`{"type":"int8","scale":-2}`, `10`, "fb"}, // negative scales flip the axis
		{`{"type":"float32"}`, `3`, "00004040"},
		{`{"type":"float32","offset":1}`, `3`, "00000040"},
		{`{"type":"float32"}`, `1e39`, "error: beyond float32"},
		{`{"type":"float64","scale":1e-300}`, `1e10`, "error: scales to +Inf"},
		{`{"type":"float64"}`, `1e999`, "error: 1e999 is beyond float64"},
		{`{"type":"float64"}`, `-0.1`, "9a9999999999b9bf"},
		{`{"type":"bool"}`, `true`, "01"},
		{`{"type":"bool"}`, `false`, "00"},
		{`{"type":"bool"}`, `1`, "error: want a boolean, got 1"},
		{`{"type":"int8"}`, `"1"`, `error: want a number, got "1"`},
		{`{"type":"int8"}`, `null`, "error: want a number, got null"},
		{`{"type":"int8"}`, `[1]`, "error: want a number, got [1]"},
		{`{"type":"timestamp"}`, `"1970-01-01T00:00:00.001Z"`, "0100000000000000"},
		{`{"type":"timestamp"}`, `"1970-01-01T01:00:00.0019+01:00"`, "0100000000000000"}, // truncated to the ms
		{`{"type":"timestamp"}`, `1`, "0100000000000000"},
		{`{"type":"timestamp"}`, `-1`, "ffffffffffffffff"},
		{`{"type":"timestamp"}`, `"1969-12-31T23:59:59.9999Z"`, "ffffffffffffffff"}, // toward the past
		{`{"type":"timestamp"}`, `1.5`, "error: 1.5 is not a whole number of Unix milliseconds"},
		{`{"type":"timestamp"}`, `"2022-01-01 00:00"`, `error: "2022-01-01 00:00" is not an RFC 3339 time`},
		{`{"type":"timestamp"}`, `"0000-01-01T00:00:00+00:01"`, "error: outside the years 0000–9999"},
		{`{"type":"timestamp"}`, `253402300800000`, "error: outside the years 0000–9999"},
		{`{"type":"timestamp"}`, `true`, "error: want an RFC 3339 string or Unix milliseconds, got true"},
	} {
		e := mustParse(t, `{"fields":[{"name":"v",`+tc.field[1:]+`]}`)
		blob, err := e.Encode([]byte(`{"v":` + tc.value + `}`))
		got := hex.EncodeToString(blob)
		if err != nil {
			got = "error: " + err.Error()
		}
		if want, isErr := strings.CutPrefix(tc.want, "error: "); isErr && !strings.Contains(got, want) || !isErr && got != tc.want {
			t.Errorf("%s ← %s: %s, want %s", tc.field, tc.value, got, tc.want)
		}
	}
}

func TestEncodeReadings(t *testing.T) {
	e := mustParse(t, `{"fields":[{"name":"a","type":"uint8"},{"name":"b","type":"bool"}]}`)
	for _, tc := range []struct{ reading, want string }{
		{`{"a":1,"b":true}`, "0101"},
		{`{"b":true,"a":1}`, "0101"},                                   // template order, not reading order
		{`{"a":1,"b":true,"lat":41.4,"station":"x","n":null}`, "0101"}, // extra keys ignored
		{`{"a":1,"a":2,"b":false}`, "0200"},                            // the last of a repeated key
		{`{"a":1}`, `error: engine: field "b" missing`},
		{`{}`, `error: field "a" missing`},
		{`[]`, "error: payload is not a JSON object"},
		{`null`, "error: payload is not a JSON object: null"},
		{`{"a":1,"b":true} x`, "error: payload is not a JSON object"},
		{`{"a":1,"b":true`, "error: payload is not a JSON object"},
		{``, "error: payload is not a JSON object"},
	} {
		blob, err := e.Encode([]byte(tc.reading))
		got := hex.EncodeToString(blob)
		if err != nil {
			got = "error: " + err.Error()
		}
		if want, isErr := strings.CutPrefix(tc.want, "error: "); isErr && !strings.Contains(got, want) || !isErr && got != tc.want {
			t.Errorf("Encode(%s): %s, want %s", tc.reading, got, tc.want)
		}
	}
}

func TestDecode(t *testing.T) {
	e := mustParse(t, `{"fields":[
		{"name":"t","type":"timestamp"},
		{"name":"temp","type":"int16","scale":0.01},
		{"name":"p","type":"uint16","scale":0.1,"offset":800},
		{"name":"on","type":"bool"},
		{"name":"n","type":"uint64"},
		{"name":"i","type":"int64"},
		{"name":"f","type":"float32"},
		{"name":"g","type":"float64","scale":2},
		{"name":"h","type":"int8","scale":0.3},
		{"name":"say \"hi\"","type":"uint8"}]}`)
	in := `{"t":"2022-01-01T00:05:00.250-07:00","temp":-21.5,"p":809.178,"on":true,` +
		`"n":18446744073709551615,"i":-9223372036854775807,"f":0.1,"g":-3,"h":0.9,"say \"hi\"":7}`
	blob, err := e.Encode([]byte(in))
	if err != nil {
		t.Fatal(err)
	}
	if len(blob) != e.Size() || e.Size() != 8+2+2+1+8+8+4+8+1+1 {
		t.Fatalf("blob %d bytes, Size %d", len(blob), e.Size())
	}
	got, err := e.Decode(blob)
	if err != nil {
		t.Fatal(err)
	}
	want := `{"t":"2022-01-01T07:05:00.25Z","temp":-21.5,"p":809.2,"on":true,` +
		`"n":18446744073709551615,"i":-9223372036854775807,"f":0.1,"g":-3,"h":0.9,"say \"hi\"":7}`
	if string(got) != want {
		t.Errorf("Decode\n got %s\nwant %s", got, want)
	}
	if !json.Valid(got) {
		t.Errorf("Decode wrote invalid JSON %s", got)
	}

	for _, tc := range []struct {
		name string
		edit func([]byte) []byte
		want string
	}{
		{"short", func(b []byte) []byte { return b[:len(b)-1] }, "blob is 42 bytes, want 43"},
		{"long", func(b []byte) []byte { return append(b, 0) }, "blob is 44 bytes, want 43"},
		{"empty", func([]byte) []byte { return nil }, "blob is 0 bytes"},
		{"bool 2", func(b []byte) []byte { b[12] = 2; return b }, `field "on": byte 2, want 0 or 1`},
		{"year 10000", func(b []byte) []byte { binary.LittleEndian.PutUint64(b, uint64(maxMilli+1)); return b }, `field "t": 253402300800000 ms is outside`},
		{"NaN", func(b []byte) []byte { binary.LittleEndian.PutUint32(b[29:], 0x7fc00000); return b }, `field "f": NaN in the blob`},
		{"Inf", func(b []byte) []byte { binary.LittleEndian.PutUint64(b[33:], math.Float64bits(math.Inf(-1))); return b }, `field "g": -Inf`},
		{"scaled to Inf", func(b []byte) []byte {
			binary.LittleEndian.PutUint64(b[33:], math.Float64bits(math.MaxFloat64))
			return b
		}, `field "g": 1.7976931348623157e+308 scales to +Inf`},
	} {
		_, err := e.Decode(tc.edit(bytes.Clone(blob)))
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%s: %v, want %q", tc.name, err, tc.want)
		}
	}
}

// TestRoundTrip: Decode(Encode(x)) is x to within half a scale step, for every type.
func TestRoundTrip(t *testing.T) {
	e := mustParse(t, `{"fields":[
		{"name":"a","type":"int8","scale":0.5,"offset":-3},
		{"name":"b","type":"uint16","scale":0.001},
		{"name":"c","type":"int32","scale":0.0001,"offset":100},
		{"name":"d","type":"uint32","scale":3},
		{"name":"e","type":"int64","scale":0.01},
		{"name":"f","type":"float32","scale":0.5},
		{"name":"g","type":"float64","offset":-1.25}]}`)
	step := map[string]float64{"a": 0.5, "b": 0.001, "c": 0.0001, "d": 3, "e": 0.01}
	for i := range 2000 {
		x := float64(i)*0.7919 - 700
		in := map[string]float64{
			"a": -3 + math.Mod(x, 60), "b": math.Abs(x) / 20, "c": x * 3, "d": math.Abs(x) * 1e4,
			"e": x * 1e9, "f": x / 7, "g": x * 1e-5,
		}
		reading, _ := json.Marshal(in)
		blob, err := e.Encode(reading)
		if err != nil {
			t.Fatalf("Encode(%s): %v", reading, err)
		}
		dec, err := e.Decode(blob)
		if err != nil {
			t.Fatal(err)
		}
		var out map[string]float64
		if err := json.Unmarshal(dec, &out); err != nil {
			t.Fatalf("Decode wrote %s: %v", dec, err)
		}
		for k, v := range in {
			tol := step[k]/2 + 1e-9*math.Abs(v)
			if k == "f" {
				tol = math.Abs(v) * 1e-7 // float32's precision
			}
			if k == "g" {
				tol = 1e-15 // (x − offset) + offset, in float64
			}
			if d := math.Abs(out[k] - v); d > tol {
				t.Fatalf("%s: %v → %v (off by %g, step %g); blob %x, decoded %s", k, v, out[k], d, step[k], blob, dec)
			}
		}
	}
}

func TestTimestampForms(t *testing.T) {
	e := mustParse(t, `{"fields":[{"name":"t","type":"timestamp"}]}`)
	want := `{"t":"2022-01-01T07:05:00Z"}`
	for _, in := range []string{`"2022-01-01T00:05:00-07:00"`, `"2022-01-01T07:05:00Z"`, `"2022-01-01T07:05:00.0004Z"`, `1641020700000`} {
		blob, err := e.Encode([]byte(`{"t":` + in + `}`))
		if err != nil {
			t.Fatalf("%s: %v", in, err)
		}
		if got, _ := e.Decode(blob); string(got) != want {
			t.Errorf("%s → %s, want %s", in, got, want)
		}
	}
	for _, ms := range []int64{minMilli, maxMilli, 0} {
		blob := binary.LittleEndian.AppendUint64(nil, uint64(ms))
		got, err := e.Decode(blob)
		if err != nil {
			t.Fatal(err)
		}
		var back struct{ T time.Time }
		if err := json.Unmarshal(got, &back); err != nil || back.T.UnixMilli() != ms {
			t.Errorf("%d → %s → %v (%v)", ms, got, back.T, err)
		}
	}
}
