package journal

import (
	"bytes"
	"testing"

	"github.com/tidwall/wal"
)

// The three benchmarks write the same 256-byte records with an fsync before
// each acknowledgement; compare ns/op (per record) side by side.

var benchRecord = bytes.Repeat([]byte("s"), 256)

// BenchmarkAppendSynced: one record per Append, so one fsync per record.
func BenchmarkAppendSynced(b *testing.B) {
	j := openT(b, tempJournalDir(b), Options{})
	b.SetBytes(int64(len(benchRecord)))
	for b.Loop() {
		if _, _, err := j.Append(benchRecord); err != nil {
			b.Fatal(err)
		}
	}
	reportBatches(b, j)
}

// BenchmarkCommitterParallel: many goroutines commit one record each and
// share fsyncs (group commit), as MQTT ingestion will.
func BenchmarkCommitterParallel(b *testing.B) {
	j := openT(b, tempJournalDir(b), Options{})
	b.SetBytes(int64(len(benchRecord)))
	b.SetParallelism(16) // 16 committers per CPU
	b.RunParallel(func(pb *testing.PB) {
		for pb.Next() {
			if _, _, err := j.Commit(benchRecord); err != nil {
				b.Error(err)
				return
			}
		}
	})
	reportBatches(b, j)
}

// BenchmarkWALWriteSynced is the peer: tidwall/wal alone, one Write (one
// fsync) per record, no checksum.
func BenchmarkWALWriteSynced(b *testing.B) {
	w, err := wal.Open(tempJournalDir(b), &wal.Options{SegmentSize: DefaultSegmentSize})
	if err != nil {
		b.Fatal(err)
	}
	defer w.Close()
	b.SetBytes(int64(len(benchRecord)))
	var i uint64
	for b.Loop() {
		i++
		if err := w.Write(i, benchRecord); err != nil {
			b.Fatal(err)
		}
	}
}

// BenchmarkAppendNoSync shows the journal's own cost (framing, checksum,
// quota and free-space checks) without the disk.
func BenchmarkAppendNoSync(b *testing.B) {
	j := openT(b, tempJournalDir(b), Options{NoSync: true})
	b.SetBytes(int64(len(benchRecord)))
	for b.Loop() {
		if _, _, err := j.Append(benchRecord); err != nil {
			b.Fatal(err)
		}
	}
}

func reportBatches(b *testing.B, j *Journal) {
	if st := j.Stats(); st.Batches > 0 {
		b.ReportMetric(float64(st.Records)/float64(st.Batches), "records/fsync")
	}
}
