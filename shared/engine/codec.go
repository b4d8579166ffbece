package engine

import (
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"math"
	"strconv"
	"strings"
	"time"
)

// Timestamps are kept to years 0000–9999, which is what RFC 3339 can write.
var (
	minMilli = time.Date(0, 1, 1, 0, 0, 0, 0, time.UTC).UnixMilli()
	maxMilli = time.Date(9999, 12, 31, 23, 59, 59, 999e6, time.UTC).UnixMilli()
)

// Encode packs one reading, a JSON object, into a blob of Size() bytes. Keys the
// template does not name are ignored; of a repeated key the last counts.
func (e *Engine) Encode(reading []byte) ([]byte, error) {
	if err := e.ready(); err != nil {
		return nil, err
	}
	var obj map[string]json.RawMessage
	if err := json.Unmarshal(reading, &obj); err != nil {
		return nil, fmt.Errorf("engine: payload is not a JSON object: %w", err)
	}
	if obj == nil {
		return nil, errors.New("engine: payload is not a JSON object: null")
	}
	out := make([]byte, 0, e.size)
	for i := range e.compiled {
		c := &e.compiled[i]
		v, ok := obj[c.name]
		if !ok {
			return nil, fmt.Errorf("engine: field %q missing", c.name)
		}
		var err error
		if out, err = c.append(out, v); err != nil {
			return nil, fmt.Errorf("engine: field %q: %w", c.name, err)
		}
	}
	return out, nil
}

// append adds one JSON value, already known to be well-formed, to the blob.
func (c *compiled) append(out []byte, v json.RawMessage) ([]byte, error) {
	switch c.typ {
	case typeBool:
		switch string(v) {
		case "true":
			return append(out, 1), nil
		case "false":
			return append(out, 0), nil
		}
		return nil, fmt.Errorf("want a boolean, got %s", short(v))
	case typeTimestamp:
		ms, err := milliseconds(v)
		if err != nil {
			return nil, err
		}
		return binary.LittleEndian.AppendUint64(out, uint64(ms)), nil
	}
	if len(v) == 0 || (v[0] != '-' && (v[0] < '0' || v[0] > '9')) {
		return nil, fmt.Errorf("want a number, got %s", short(v))
	}
	return c.appendNumber(out, string(v))
}

func (c *compiled) appendNumber(out []byte, num string) ([]byte, error) {
	k := c.k
	if c.exact && k.size == 8 && !k.float { // beyond float64's 53-bit mantissa
		if k.signed {
			if i, err := strconv.ParseInt(num, 10, 64); err == nil {
				return binary.LittleEndian.AppendUint64(out, uint64(i)), nil
			}
		} else if u, err := strconv.ParseUint(num, 10, 64); err == nil {
			return binary.LittleEndian.AppendUint64(out, u), nil
		}
		// 1.5, 1e3 or out of range: the float path rounds or says why.
	}
	x, err := strconv.ParseFloat(num, 64)
	if err != nil {
		return nil, fmt.Errorf("%s is beyond float64", num)
	}
	raw := (x - c.offset) / c.scale
	if math.IsNaN(raw) || math.IsInf(raw, 0) {
		return nil, fmt.Errorf("%s scales to %v", num, raw)
	}
	if k.float {
		if k.size == 4 {
			if math.Abs(raw) > math.MaxFloat32 {
				return nil, fmt.Errorf("%s scales to %v, beyond float32", num, raw)
			}
			return binary.LittleEndian.AppendUint32(out, math.Float32bits(float32(raw))), nil
		}
		return binary.LittleEndian.AppendUint64(out, math.Float64bits(raw)), nil
	}
	raw = math.Round(raw)
	// k.max for 64-bit types rounds up to 2^63 / 2^64 in float64, so compare with >=.
	if raw < k.min || raw > k.max || (k.size == 8 && raw >= k.max) {
		return nil, fmt.Errorf("%s scales to %v, outside %s (%s)", num, raw, c.typ, c.valueRange())
	}
	var u uint64
	if k.signed {
		u = uint64(int64(raw))
	} else {
		u = uint64(raw)
	}
	return appendUint(out, u, k.size), nil
}

// valueRange says which readings fit, for error messages.
func (c *compiled) valueRange() string {
	if c.exact { // print 64-bit bounds exactly, not as rounded floats
		if c.k.signed {
			bits := 8*c.k.size - 1
			return fmt.Sprintf("values %d…%d", int64(-1)<<bits, int64(1)<<bits-1)
		}
		return fmt.Sprintf("values 0…%d", uint64(1)<<(8*c.k.size)-1)
	}
	lo, hi := c.k.min*c.scale+c.offset, c.k.max*c.scale+c.offset
	if lo > hi {
		lo, hi = hi, lo
	}
	return fmt.Sprintf("values %s…%s", c.format(lo), c.format(hi))
}

func milliseconds(v json.RawMessage) (int64, error) {
	var ms int64
	switch {
	case len(v) > 0 && v[0] == '"':
		var s string
		if err := json.Unmarshal(v, &s); err != nil {
			return 0, err
		}
		t, err := time.Parse(time.RFC3339Nano, s)
		if err != nil {
			return 0, fmt.Errorf("%s is not an RFC 3339 time", short(v))
		}
		ms = t.UnixMilli()
	case len(v) > 0 && (v[0] == '-' || v[0] >= '0' && v[0] <= '9'):
		var err error
		if ms, err = strconv.ParseInt(string(v), 10, 64); err != nil {
			return 0, fmt.Errorf("%s is not a whole number of Unix milliseconds", short(v))
		}
	default:
		return 0, fmt.Errorf("want an RFC 3339 string or Unix milliseconds, got %s", short(v))
	}
	if ms < minMilli || ms > maxMilli {
		return 0, fmt.Errorf("%s is outside the years 0000–9999", short(v))
	}
	return ms, nil
}

// Decode turns a blob back into a JSON object with the fields in template order:
// integers as raw × scale + offset, printed to the decimals scale and offset allow;
// timestamps as RFC 3339 in UTC. A blob of the wrong length, a bool byte other than 0
// or 1, a NaN or infinite float, or a timestamp outside the years 0000–9999 is refused:
// Encode never writes one.
func (e *Engine) Decode(blob []byte) ([]byte, error) {
	if err := e.ready(); err != nil {
		return nil, err
	}
	if len(blob) != e.size {
		return nil, fmt.Errorf("engine: blob is %d bytes, want %d", len(blob), e.size)
	}
	out := make([]byte, 0, 2+len(e.compiled)*24)
	out = append(out, '{')
	for i := range e.compiled {
		c := &e.compiled[i]
		if i > 0 {
			out = append(out, ',')
		}
		out = append(out, c.key...)
		n := c.k.size
		var err error
		if out, err = c.appendJSON(out, readUint(blob[:n])); err != nil {
			return nil, fmt.Errorf("engine: field %q: %w", c.name, err)
		}
		blob = blob[n:]
	}
	return append(out, '}'), nil
}

func (c *compiled) appendJSON(out []byte, u uint64) ([]byte, error) {
	k := c.k
	switch {
	case c.typ == typeBool:
		if u > 1 {
			return nil, fmt.Errorf("byte %d, want 0 or 1", u)
		}
		return strconv.AppendBool(out, u == 1), nil
	case c.typ == typeTimestamp:
		ms := int64(u)
		if ms < minMilli || ms > maxMilli {
			return nil, fmt.Errorf("%d ms is outside the years 0000–9999", ms)
		}
		out = append(out, '"')
		out = time.UnixMilli(ms).UTC().AppendFormat(out, time.RFC3339Nano)
		return append(out, '"'), nil
	case k.float:
		var raw float64
		bits := 64
		if k.size == 4 {
			raw, bits = float64(math.Float32frombits(uint32(u))), 32
		} else {
			raw = math.Float64frombits(u)
		}
		if math.IsNaN(raw) || math.IsInf(raw, 0) {
			return nil, fmt.Errorf("%v in the blob", raw)
		}
		if c.exact {
			return strconv.AppendFloat(out, raw, 'g', -1, bits), nil
		}
		v := raw*c.scale + c.offset
		if math.IsInf(v, 0) {
			return nil, fmt.Errorf("%v scales to %v", raw, v)
		}
		return strconv.AppendFloat(out, v, 'g', -1, 64), nil
	}
	shift := uint(64 - 8*k.size)
	if k.signed {
		i := int64(u<<shift) >> shift // sign-extend
		if c.exact {
			return strconv.AppendInt(out, i, 10), nil
		}
		return append(out, c.format(float64(i)*c.scale+c.offset)...), nil
	}
	if c.exact {
		return strconv.AppendUint(out, u, 10), nil
	}
	return append(out, c.format(float64(u)*c.scale+c.offset)...), nil
}

// format prints a scaled integer to the decimals its scale and offset can produce,
// without trailing zeros.
func (c *compiled) format(v float64) string {
	s := strconv.FormatFloat(v, 'f', c.decimals, 64)
	if c.decimals > 0 {
		s = strings.TrimRight(strings.TrimRight(s, "0"), ".")
	}
	if s == "-0" {
		s = "0"
	}
	return s
}

func appendUint(out []byte, u uint64, size int) []byte {
	switch size {
	case 1:
		return append(out, byte(u))
	case 2:
		return binary.LittleEndian.AppendUint16(out, uint16(u))
	case 4:
		return binary.LittleEndian.AppendUint32(out, uint32(u))
	}
	return binary.LittleEndian.AppendUint64(out, u)
}

func readUint(b []byte) uint64 {
	switch len(b) {
	case 1:
		return uint64(b[0])
	case 2:
		return uint64(binary.LittleEndian.Uint16(b))
	case 4:
		return uint64(binary.LittleEndian.Uint32(b))
	}
	return binary.LittleEndian.Uint64(b)
}

// short quotes a JSON value for an error message, cut to a readable length.
func short(v []byte) string {
	const n = 40
	if len(v) > n {
		return string(v[:n]) + "…"
	}
	return string(v)
}
