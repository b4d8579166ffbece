// NDVI summarises the vegetation index of raster tiles. Each input record is one tile,
// little-endian:
//
//	width  uint32
//	height uint32
//	red    [width*height]uint16   row-major
//	nir    [width*height]uint16   row-major, same order
//
// For every pixel NDVI = (NIR − Red) / (NIR + Red); pixels with NIR + Red = 0 carry no
// signal and are skipped. Each tile yields one JSON record on output "ndvi":
//
//	{"width":W,"height":H,"min":…,"max":…,"mean":…,"valid_pixels":N}
//
// with min, max and mean null when no pixel is valid. A record whose length does not
// match its header is logged and the handler returns ErrBadTile (-200).
package main

import (
	"encoding/binary"
	"encoding/json"
	"fmt"

	"github.com/cloudskin/cloudskin/shared/cellsdk"
)

const (
	output     = "ndvi"
	ErrBadTile = cellsdk.Code(-200)
)

type summary struct {
	Width  uint32   `json:"width"`
	Height uint32   `json:"height"`
	Min    *float64 `json:"min"`
	Max    *float64 `json:"max"`
	Mean   *float64 `json:"mean"`
	Valid  uint64   `json:"valid_pixels"`
}

func init() { cellsdk.Handle(handle) }

func main() {}

func handle(b cellsdk.Batch) error {
	bad := 0
	for _, r := range b.Records {
		s, err := summarize(r.Payload)
		if err != nil {
			cellsdk.Errorf("record %d: %v", r.Offset, err)
			bad++
			continue
		}
		out, err := json.Marshal(s)
		if err != nil {
			return err
		}
		if err := cellsdk.Emit(output, out); err != nil {
			return fmt.Errorf("emit %s: %w", output, err)
		}
	}
	if bad > 0 {
		return cellsdk.Fail(ErrBadTile, "%d of %d tiles malformed", bad, len(b.Records))
	}
	return nil
}

func summarize(tile []byte) (summary, error) {
	if len(tile) < 8 {
		return summary{}, fmt.Errorf("tile of %d bytes has no 8-byte header", len(tile))
	}
	s := summary{Width: binary.LittleEndian.Uint32(tile), Height: binary.LittleEndian.Uint32(tile[4:])}
	pixels := uint64(s.Width) * uint64(s.Height) // cannot overflow: both are u32
	if want := 8 + 4*pixels; uint64(len(tile)) != want {
		return summary{}, fmt.Errorf("%dx%d tile needs %d bytes, got %d", s.Width, s.Height, want, len(tile))
	}
	red, nir := tile[8:8+2*pixels], tile[8+2*pixels:]
	var lo, hi, sum float64
	for i := uint64(0); i < pixels; i++ {
		r := float64(binary.LittleEndian.Uint16(red[2*i:]))
		n := float64(binary.LittleEndian.Uint16(nir[2*i:]))
		if r+n == 0 {
			continue
		}
		v := (n - r) / (n + r)
		if s.Valid == 0 || v < lo {
			lo = v
		}
		if s.Valid == 0 || v > hi {
			hi = v
		}
		sum += v
		s.Valid++
	}
	if s.Valid > 0 {
		mean := sum / float64(s.Valid)
		s.Min, s.Max, s.Mean = &lo, &hi, &mean
	}
	return s, nil
}
