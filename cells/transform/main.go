// Transform packs sensor JSON into fixed little-endian binary records, the kind a
// constrained uplink or a PLC expects. Config is the record template:
//
//	{"fields":[{"name":"temp","type":"int16","scale":0.01,"offset":0}, …]}
//
// Types: int8 … int64, uint8 … uint64, float32, float64, bool. A numeric field is stored
// as raw = round((value − offset) / scale) (no rounding for floats), so value = raw ×
// scale + offset as in a CAN DBC file; scale defaults to 1, offset to 0. A bool is
// stored as one byte, 0 or 1, from a JSON boolean. Fields are packed in template order
// without padding, and each valid input record is emitted to output "encoded".
//
// An input record that is not a JSON object, lacks a field or holds a value the type
// cannot represent is logged with the reason and skipped; the handler then returns
// ErrInvalidInput (-200), which the agent records as an event on the cell.
package main

import (
	"bytes"
	"encoding/binary"
	"encoding/json"
	"fmt"
	"math"
	"strconv"

	"github.com/cloudskin/cloudskin/shared/cellsdk"
)

const (
	output          = "encoded"
	ErrInvalidInput = cellsdk.Code(-200)
)

type field struct {
	Name   string   `json:"name"`
	Type   string   `json:"type"`
	Scale  *float64 `json:"scale"`
	Offset float64  `json:"offset"`
}

type kind struct {
	size     int
	signed   bool
	float    bool
	min, max float64 // representable raw range for integers
}

var kinds = map[string]kind{
	"int8":    {size: 1, signed: true, min: math.MinInt8, max: math.MaxInt8},
	"int16":   {size: 2, signed: true, min: math.MinInt16, max: math.MaxInt16},
	"int32":   {size: 4, signed: true, min: math.MinInt32, max: math.MaxInt32},
	"int64":   {size: 8, signed: true, min: math.MinInt64, max: math.MaxInt64},
	"uint8":   {size: 1, max: math.MaxUint8},
	"uint16":  {size: 2, max: math.MaxUint16},
	"uint32":  {size: 4, max: math.MaxUint32},
	"uint64":  {size: 8, max: math.MaxUint64},
	"float32": {size: 4, float: true},
	"float64": {size: 8, float: true},
	"bool":    {size: 1},
}

var template []field

func init() {
	cellsdk.Init(configure)
	cellsdk.Handle(handle)
}

func main() {}

func configure(raw []byte) error {
	fields, err := parseConfig(raw)
	if err != nil {
		return err
	}
	template = fields
	return nil
}

func parseConfig(raw []byte) ([]field, error) {
	var c struct {
		Fields []field `json:"fields"`
	}
	dec := json.NewDecoder(bytes.NewReader(raw))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&c); err != nil {
		return nil, fmt.Errorf("config: %w", err)
	}
	if len(c.Fields) == 0 {
		return nil, fmt.Errorf("config: fields: empty; want at least one field")
	}
	names := map[string]bool{}
	for i := range c.Fields {
		f := &c.Fields[i]
		where := fmt.Sprintf("config: fields[%d]", i)
		switch {
		case f.Name == "":
			return nil, fmt.Errorf("%s: name: empty", where)
		case names[f.Name]:
			return nil, fmt.Errorf("%s: name %q: used twice", where, f.Name)
		}
		names[f.Name] = true
		if _, ok := kinds[f.Type]; !ok {
			return nil, fmt.Errorf("%s (%s): type %q: want int8…int64, uint8…uint64, float32, float64 or bool", where, f.Name, f.Type)
		}
		if f.Scale == nil {
			one := 1.0
			f.Scale = &one
		}
		if *f.Scale == 0 || math.IsNaN(*f.Scale) || math.IsInf(*f.Scale, 0) {
			return nil, fmt.Errorf("%s (%s): scale %v: want a finite non-zero number", where, f.Name, *f.Scale)
		}
	}
	return c.Fields, nil
}

func handle(b cellsdk.Batch) error {
	bad := 0
	for _, r := range b.Records {
		out, err := encode(r.Payload)
		if err != nil {
			cellsdk.Errorf("record %d on %q: %v", r.Offset, r.Topic, err)
			bad++
			continue
		}
		if err := cellsdk.Emit(output, out); err != nil {
			return fmt.Errorf("emit %s: %w", output, err)
		}
	}
	if bad > 0 {
		return cellsdk.Fail(ErrInvalidInput, "%d of %d records invalid", bad, len(b.Records))
	}
	return nil
}

// encode packs one JSON object by the template.
func encode(payload []byte) ([]byte, error) {
	dec := json.NewDecoder(bytes.NewReader(payload))
	dec.UseNumber() // keep int64 values exact when no scaling applies
	var obj map[string]any
	if err := dec.Decode(&obj); err != nil {
		return nil, fmt.Errorf("payload is not a JSON object: %w", err)
	}
	var out []byte
	for _, f := range template {
		v, ok := obj[f.Name]
		if !ok {
			return nil, fmt.Errorf("field %q missing", f.Name)
		}
		var err error
		if out, err = appendField(out, f, v); err != nil {
			return nil, fmt.Errorf("field %q: %w", f.Name, err)
		}
	}
	return out, nil
}

func appendField(out []byte, f field, v any) ([]byte, error) {
	k := kinds[f.Type]
	if f.Type == "bool" {
		b, ok := v.(bool)
		if !ok {
			return nil, fmt.Errorf("want a boolean, got %v", v)
		}
		if b {
			return append(out, 1), nil
		}
		return append(out, 0), nil
	}
	num, ok := v.(json.Number)
	if !ok {
		return nil, fmt.Errorf("want a number, got %v", v)
	}
	exact := *f.Scale == 1 && f.Offset == 0 && !k.float
	if exact && k.size == 8 { // beyond float64's 53-bit mantissa: parse as an integer
		if k.signed {
			i, err := strconv.ParseInt(num.String(), 10, 64)
			if err != nil {
				return nil, fmt.Errorf("%s is not an int64", num)
			}
			return binary.LittleEndian.AppendUint64(out, uint64(i)), nil
		}
		u, err := strconv.ParseUint(num.String(), 10, 64)
		if err != nil {
			return nil, fmt.Errorf("%s is not a uint64", num)
		}
		return binary.LittleEndian.AppendUint64(out, u), nil
	}
	x, err := num.Float64()
	if err != nil {
		return nil, fmt.Errorf("%s is not a finite number", num)
	}
	raw := (x - f.Offset) / *f.Scale
	if math.IsNaN(raw) || math.IsInf(raw, 0) {
		return nil, fmt.Errorf("%v scales to %v", x, raw)
	}
	if k.float {
		if k.size == 4 {
			if math.Abs(raw) > math.MaxFloat32 {
				return nil, fmt.Errorf("%v scales to %v, beyond float32", x, raw)
			}
			return binary.LittleEndian.AppendUint32(out, math.Float32bits(float32(raw))), nil
		}
		return binary.LittleEndian.AppendUint64(out, math.Float64bits(raw)), nil
	}
	raw = math.Round(raw)
	// k.max for 64-bit types rounds up to 2^63 / 2^64 in float64, so compare with >=.
	if raw < k.min || raw > k.max || (k.size == 8 && raw >= k.max) {
		return nil, fmt.Errorf("%v scales to %v, outside %s", x, raw, f.Type)
	}
	var u uint64
	if k.signed {
		u = uint64(int64(raw))
	} else {
		u = uint64(raw)
	}
	switch k.size {
	case 1:
		return append(out, byte(u)), nil
	case 2:
		return binary.LittleEndian.AppendUint16(out, uint16(u)), nil
	case 4:
		return binary.LittleEndian.AppendUint32(out, uint32(u)), nil
	}
	return binary.LittleEndian.AppendUint64(out, u), nil
}
