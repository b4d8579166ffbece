// Package engine is the dataspace's reading codec: a dataset's engine is a JSON template
// that says how each field of a sensor reading (a "dataread") is packed into a compact
// binary blob, and how the blob is turned back into JSON for consumers. The edge's
// transform cell encodes with it and the console decodes with it, so both agree.
//
// # Template
//
//	{"name":"rmis-5min","version":1,"fields":[
//	  {"name":"time","type":"timestamp"},
//	  {"name":"temp","type":"int16","unit":"°C","scale":0.01},
//	  {"name":"pressure","type":"uint16","unit":"hPa","scale":0.1}]}
//
// Name and version are optional (the transform cell's config is just {"fields":[…]}).
// Types: int8 … int64, uint8 … uint64, float32, float64, bool, timestamp. Scale
// (default 1, finite, non-zero) and offset (default 0) apply to the numeric types as in
// a CAN DBC file: value = raw × scale + offset. Bool and timestamp take neither. Unit is
// a label for people; the codec does not convert units.
//
// # Blob
//
// Fields in template order, little-endian, no padding, no header: Size() bytes exactly.
//   - integer types: raw = round((value − offset) / scale), half away from zero, range
//     checked; 64-bit types with scale 1 and offset 0 are parsed exactly, beyond
//     float64's 53-bit mantissa.
//   - float32/float64: raw = (value − offset) / scale, not rounded; NaN and ±Inf are
//     refused (JSON cannot carry them, and Decode refuses them in a blob).
//   - bool: one byte, 0 or 1, from a JSON boolean.
//   - timestamp: int64 milliseconds since the Unix epoch, years 0000–9999. The reading
//     holds an RFC 3339 string (any offset; digits below the millisecond are truncated
//     toward the past) or an integer number of Unix milliseconds. Decode writes RFC 3339
//     in UTC with the fraction trimmed: "2022-01-01T07:05:00Z", "…:00.25Z".
//
// A blob carries no version byte: the engine version is stored with the dataset that
// names it, a header would cost several percent of a 30-byte reading, and Decode's exact
// length check already rejects a blob written by an engine of another size.
//
// # Readings
//
// A reading is one JSON object. Every template field must be present with a value of
// the right JSON type (no nulls); keys the template does not name are ignored, so a
// sensor may send more than a dataset stores (a position, a station id).
package engine

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math"
	"strconv"
	"strings"
	"unicode/utf8"
)

// Limits on a template, so that a hostile one cannot make blobs or decoded readings huge.
const (
	MaxFields   = 256
	MaxNameLen  = 64 // bytes, for field names and the engine name
	MaxUnitLen  = 32 // bytes
	maxBlobSize = MaxFields * 8
)

// Engine is a dataset's template. Build it with Parse, or fill it in and call Validate;
// do not change it after.
type Engine struct {
	Name    string  `json:"name,omitempty"`
	Version int     `json:"version,omitempty"`
	Fields  []Field `json:"fields"`

	compiled []compiled
	size     int
}

// Field is one value of a reading.
type Field struct {
	Name   string   `json:"name"`
	Type   string   `json:"type"`
	Unit   string   `json:"unit,omitempty"`
	Scale  *float64 `json:"scale,omitempty"` // nil means 1; set by Validate for numeric types
	Offset float64  `json:"offset,omitempty"`
}

type kind struct {
	size     int
	signed   bool
	float    bool
	min, max float64 // representable raw range for integers
}

const (
	typeBool      = "bool"
	typeTimestamp = "timestamp"
)

var kinds = map[string]kind{
	"int8":        {size: 1, signed: true, min: math.MinInt8, max: math.MaxInt8},
	"int16":       {size: 2, signed: true, min: math.MinInt16, max: math.MaxInt16},
	"int32":       {size: 4, signed: true, min: math.MinInt32, max: math.MaxInt32},
	"int64":       {size: 8, signed: true, min: math.MinInt64, max: math.MaxInt64},
	"uint8":       {size: 1, max: math.MaxUint8},
	"uint16":      {size: 2, max: math.MaxUint16},
	"uint32":      {size: 4, max: math.MaxUint32},
	"uint64":      {size: 8, max: math.MaxUint64},
	"float32":     {size: 4, float: true},
	"float64":     {size: 8, float: true},
	typeBool:      {size: 1},
	typeTimestamp: {size: 8, signed: true},
}

const typeList = "int8…int64, uint8…uint64, float32, float64, bool or timestamp"

// compiled is what Encode and Decode need of a field, worked out once.
type compiled struct {
	name     string
	key      []byte // the JSON-quoted name followed by ':'
	typ      string
	k        kind
	scale    float64
	offset   float64
	exact    bool // scale 1 and offset 0: integers go through without float64
	decimals int  // digits after the point that scale and offset can produce
}

// Parse reads a template strictly: unknown keys, trailing data, empty or repeated names,
// unknown types and unusable scales are refused with the field they concern.
func Parse(b []byte) (*Engine, error) {
	var e Engine
	dec := json.NewDecoder(bytes.NewReader(b))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&e); err != nil {
		return nil, fmt.Errorf("engine: %w", err)
	}
	if _, err := dec.Token(); err != io.EOF {
		return nil, errors.New("engine: data after the template object")
	}
	if err := e.Validate(); err != nil {
		return nil, err
	}
	return &e, nil
}

// Validate checks the template and prepares it for Encode and Decode; Parse calls it.
// A numeric field's nil scale becomes 1.
func (e *Engine) Validate() error {
	e.compiled, e.size = nil, 0
	if len(e.Name) > MaxNameLen {
		return fmt.Errorf("engine: name: %d bytes, want at most %d", len(e.Name), MaxNameLen)
	}
	if e.Version < 0 {
		return fmt.Errorf("engine: version %d: want 0 or more", e.Version)
	}
	switch n := len(e.Fields); {
	case n == 0:
		return errors.New("engine: fields: empty; want at least one field")
	case n > MaxFields:
		return fmt.Errorf("engine: fields: %d, want at most %d", n, MaxFields)
	}
	cs := make([]compiled, len(e.Fields))
	names := make(map[string]bool, len(e.Fields))
	size := 0
	for i := range e.Fields {
		f := &e.Fields[i]
		where := fmt.Sprintf("engine: fields[%d]", i)
		switch {
		case f.Name == "":
			return fmt.Errorf("%s: name: empty", where)
		case len(f.Name) > MaxNameLen:
			return fmt.Errorf("%s: name %.16q…: %d bytes, want at most %d", where, f.Name, len(f.Name), MaxNameLen)
		case !utf8.ValidString(f.Name):
			return fmt.Errorf("%s: name %q: not UTF-8", where, f.Name)
		case names[f.Name]:
			return fmt.Errorf("%s: name %q: used twice", where, f.Name)
		}
		names[f.Name] = true
		where = fmt.Sprintf("%s (%s)", where, f.Name)
		k, ok := kinds[f.Type]
		if !ok {
			return fmt.Errorf("%s: type %q: want %s", where, f.Type, typeList)
		}
		if len(f.Unit) > MaxUnitLen || !utf8.ValidString(f.Unit) {
			return fmt.Errorf("%s: unit %.16q: want UTF-8 of at most %d bytes", where, f.Unit, MaxUnitLen)
		}
		scale := 1.0
		if f.Scale != nil {
			scale = *f.Scale
		}
		if f.Type == typeBool || f.Type == typeTimestamp {
			if scale != 1 || f.Offset != 0 {
				return fmt.Errorf("%s: scale and offset do not apply to type %s", where, f.Type)
			}
		} else if f.Scale == nil {
			f.Scale = &scale
		}
		if scale == 0 || math.IsNaN(scale) || math.IsInf(scale, 0) {
			return fmt.Errorf("%s: scale %v: want a finite non-zero number", where, scale)
		}
		if math.IsNaN(f.Offset) || math.IsInf(f.Offset, 0) { // JSON cannot say so, Validate's callers can
			return fmt.Errorf("%s: offset %v: want a finite number", where, f.Offset)
		}
		key, _ := json.Marshal(f.Name) // a valid UTF-8 string always marshals
		cs[i] = compiled{
			name:     f.Name,
			key:      append(key, ':'),
			typ:      f.Type,
			k:        k,
			scale:    scale,
			offset:   f.Offset,
			exact:    scale == 1 && f.Offset == 0,
			decimals: max(decimals(scale), decimals(f.Offset)),
		}
		size += k.size
	}
	e.compiled, e.size = cs, size
	return nil
}

// decimals counts the digits after the point in x's shortest decimal form, so that a
// decoded 0.01-scaled value prints as 21.5, not 21.500000000000004.
func decimals(x float64) int {
	s := strconv.FormatFloat(x, 'f', -1, 64)
	if i := strings.IndexByte(s, '.'); i >= 0 {
		return len(s) - i - 1
	}
	return 0
}

// Size is the length of every blob of this engine, in bytes.
func (e *Engine) Size() int { return e.size }

var errNotValidated = errors.New("engine: template not validated; build it with Parse or call Validate")

func (e *Engine) ready() error {
	if e == nil || len(e.compiled) == 0 || len(e.compiled) != len(e.Fields) {
		return errNotValidated
	}
	return nil
}
