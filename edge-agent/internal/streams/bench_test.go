package streams

import (
	"bytes"
	"fmt"
	"sync/atomic"
	"testing"
	"time"

	"github.com/tidwall/wal"

	"github.com/cloudskin/cloudskin/shared/protocol"
)

// The benchmarks store the same record (256-byte payload, a topic, one
// header) with an fsync before it counts as written. BenchmarkAppend goes
// through a stream (encoding, CRC framing, quota check, group commit);
// BenchmarkRawWALBatch is the peer: tidwall/wal alone, one WriteBatch and
// fsync per batch of a fixed size, no checksum, no concurrency to manage.
// Compare ns/op (per record) and records/fsync side by side.

var benchRec = Record{
	Time:    base,
	Topic:   "sensors/station-042/temp",
	Headers: map[string]string{"unit": "C"},
	Payload: bytes.Repeat([]byte("s"), 256),
}

func BenchmarkAppend(b *testing.B) {
	for _, c := range []struct {
		name     string
		inFlight int // records each goroutine has outstanding
		noSync   bool
	}{
		{"wait", 1, false},          // each appender waits for its fsync (32 appenders)
		{"pipelined-64", 64, false}, // each keeps 64 in flight, as a broker with a publish window does
		{"nosync", 64, true},        // the durability-off peer: the stream's own CPU cost
	} {
		b.Run(c.name, func(b *testing.B) {
			// A quota the run cannot fill: measure appends, not the policy.
			s := openT(b, b.TempDir(), spec(func(sp *protocol.StreamSpec) { sp.QuotaBytes = 8 << 30 }), Options{NoSync: c.noSync})
			var failed atomic.Uint64
			b.SetBytes(int64(len(benchRec.Payload)))
			b.SetParallelism(16)
			start := time.Now()
			b.ResetTimer()
			b.RunParallel(func(pb *testing.PB) {
				sem := make(chan struct{}, c.inFlight)
				for pb.Next() {
					sem <- struct{}{}
					s.Append(benchRec, func(_ uint64, err error) {
						if err != nil && failed.Add(1) == 1 {
							b.Error(err)
						}
						<-sem
					})
				}
				for range c.inFlight {
					sem <- struct{}{}
				}
			})
			b.StopTimer()
			reportRate(b, start, s.Stats().Appended, s.Stats().Batches)
		})
	}
}

func BenchmarkRawWALBatch(b *testing.B) {
	enc := encodeRecord(nil, &benchRec, 0)
	for _, batch := range []int{1, 16, 256, 1024} {
		b.Run(fmt.Sprintf("batch-%d", batch), func(b *testing.B) {
			w, err := wal.Open(b.TempDir(), &wal.Options{SegmentSize: DefaultSegmentBytes, LogFormat: wal.Binary})
			if err != nil {
				b.Fatal(err)
			}
			defer w.Close()
			b.SetBytes(int64(len(benchRec.Payload)))
			var wb wal.Batch
			var index, batches uint64
			start := time.Now()
			b.ResetTimer()
			for n := 0; n < b.N; {
				wb.Clear()
				k := min(batch, b.N-n)
				for range k {
					index++
					wb.Write(index, enc)
				}
				if err := w.WriteBatch(&wb); err != nil {
					b.Fatal(err)
				}
				batches++
				n += k
			}
			b.StopTimer()
			reportRate(b, start, index, batches)
		})
	}
}

func reportRate(b *testing.B, start time.Time, records, batches uint64) {
	if d := time.Since(start).Seconds(); d > 0 {
		b.ReportMetric(float64(records)/d, "records/s")
	}
	if batches > 0 {
		b.ReportMetric(float64(records)/float64(batches), "records/fsync")
	}
}
