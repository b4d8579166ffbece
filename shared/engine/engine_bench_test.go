package engine

import (
	"encoding/json"
	"testing"
)

// BenchmarkRMIS measures the codec on the real RMIS readings, one reading per op, next to
// its peer, encoding/json, storing the same reading as JSON text: Marshal as the
// "encode" and Unmarshal as the "decode". It reports the seed's storage argument too:
// blob-bytes and json-bytes per reading, and their ratio (target ≤ 0.25).
func BenchmarkRMIS(b *testing.B) {
	e := mustParse(b, rmisEngine)
	readings, _ := rmisReadings(b)
	blobs := make([][]byte, len(readings))
	maps := make([]map[string]any, len(readings))
	var jsonBytes, blobBytes int
	for i, r := range readings {
		var err error
		if blobs[i], err = e.Encode(r); err != nil {
			b.Fatal(err)
		}
		if err := json.Unmarshal(r, &maps[i]); err != nil {
			b.Fatal(err)
		}
		jsonBytes += len(r)
		blobBytes += len(blobs[i])
	}
	n := float64(len(readings))
	sizes := func(b *testing.B) {
		b.ReportMetric(float64(blobBytes)/n, "blob-bytes")
		b.ReportMetric(float64(jsonBytes)/n, "json-bytes")
		b.ReportMetric(float64(blobBytes)/float64(jsonBytes), "blob/json")
	}

	b.Run("encode/engine", func(b *testing.B) {
		i := 0
		for b.Loop() {
			if _, err := e.Encode(readings[i%len(readings)]); err != nil {
				b.Fatal(err)
			}
			i++
		}
		sizes(b)
	})
	b.Run("encode/json.Marshal", func(b *testing.B) {
		i := 0
		for b.Loop() {
			if _, err := json.Marshal(maps[i%len(maps)]); err != nil {
				b.Fatal(err)
			}
			i++
		}
	})
	b.Run("decode/engine", func(b *testing.B) {
		i := 0
		for b.Loop() {
			if _, err := e.Decode(blobs[i%len(blobs)]); err != nil {
				b.Fatal(err)
			}
			i++
		}
		sizes(b)
	})
	b.Run("decode/json.Unmarshal", func(b *testing.B) {
		i := 0
		for b.Loop() {
			var m map[string]any
			if err := json.Unmarshal(readings[i%len(readings)], &m); err != nil {
				b.Fatal(err)
			}
			i++
		}
	})
}
