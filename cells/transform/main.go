// Transform packs sensor JSON into fixed little-endian binary records, the kind a
// constrained uplink, a PLC or the dataspace's blob store expects. Config is a dataset
// engine (package shared/engine), of which only the fields are required:
//
//	{"fields":[{"name":"temp","type":"int16","scale":0.01,"offset":0}, …]}
//
// Types: int8 … int64, uint8 … uint64, float32, float64, bool, timestamp. A numeric field
// is stored as raw = round((value − offset) / scale) (no rounding for floats), so value =
// raw × scale + offset as in a CAN DBC file; scale defaults to 1, offset to 0. A bool is
// stored as one byte, 0 or 1, from a JSON boolean; a timestamp as int64 Unix
// milliseconds, from an RFC 3339 string or a number of milliseconds. Fields are packed
// in template order without padding, and each valid input record is emitted to output
// "encoded". The console decodes these records with the same engine.
//
// An input record that is not a JSON object, lacks a field or holds a value the type
// cannot represent is logged with the reason and skipped; the handler then returns
// ErrInvalidInput (-200), which the agent records as an event on the cell.
package main

import (
	"fmt"

	"github.com/cloudskin/cloudskin/shared/cellsdk"
	"github.com/cloudskin/cloudskin/shared/engine"
)

const (
	output          = "encoded"
	ErrInvalidInput = cellsdk.Code(-200)
)

var template *engine.Engine

func init() {
	cellsdk.Init(configure)
	cellsdk.Handle(handle)
}

func main() {}

func configure(raw []byte) error {
	e, err := engine.Parse(raw)
	if err != nil {
		return fmt.Errorf("config: %w", err)
	}
	template = e
	return nil
}

func handle(b cellsdk.Batch) error {
	bad := 0
	for _, r := range b.Records {
		out, err := template.Encode(r.Payload)
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
