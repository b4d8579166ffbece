package cells

import (
	"encoding/binary"
	"fmt"
	"math"
)

var batchMagic = [4]byte{'C', 'S', 'B', '1'}

// batchSize is the encoded size of a batch (docs/cell-abi.md, "Batch encoding").
func batchSize(input string, records []Record) int {
	n := 4 + 2 + len(input) + 4
	for i := range records {
		n += 8 + 8 + 2 + len(records[i].Topic) + 4 + len(records[i].Payload)
	}
	return n
}

// appendBatch appends the ABI v1 encoding of one batch to dst.
func appendBatch(dst []byte, input string, records []Record) ([]byte, error) {
	if len(input) > math.MaxUint16 {
		return dst, fmt.Errorf("cells: input name is %d bytes, at most %d", len(input), math.MaxUint16)
	}
	if uint64(len(records)) > math.MaxUint32 {
		return dst, fmt.Errorf("cells: %d records in one batch", len(records))
	}
	dst = append(dst, batchMagic[:]...)
	dst = binary.LittleEndian.AppendUint16(dst, uint16(len(input)))
	dst = append(dst, input...)
	dst = binary.LittleEndian.AppendUint32(dst, uint32(len(records)))
	for i := range records {
		r := &records[i]
		if len(r.Topic) > math.MaxUint16 {
			return dst, fmt.Errorf("cells: record %d: topic is %d bytes, at most %d", i, len(r.Topic), math.MaxUint16)
		}
		if uint64(len(r.Payload)) > math.MaxUint32 {
			return dst, fmt.Errorf("cells: record %d: payload too large", i)
		}
		dst = binary.LittleEndian.AppendUint64(dst, r.Offset)
		dst = binary.LittleEndian.AppendUint64(dst, uint64(r.TimeNS))
		dst = binary.LittleEndian.AppendUint16(dst, uint16(len(r.Topic)))
		dst = append(dst, r.Topic...)
		dst = binary.LittleEndian.AppendUint32(dst, uint32(len(r.Payload)))
		dst = append(dst, r.Payload...)
	}
	return dst, nil
}
