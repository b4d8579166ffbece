package benchpeer

import (
	"flag"
	"fmt"
	"path/filepath"
	"slices"
	"testing"
	"time"

	"github.com/tidwall/wal"
	"golang.org/x/sync/errgroup"

	"github.com/cloudskin/cloudskin/edge-agent/internal/ingest/ingesttest"
)

const (
	topic    = "sensors/bench/reading"
	walBatch = 256
	// maxWindow is the most a publisher may keep in flight and still get
	// the same treatment from every peer. nats-server pipelines at most
	// 1024 per connection and ours holds EmbeddedConfig.MaxPending (1024
	// by default) per client; near that bound each throttles in its own
	// way (ours counts a message until the whole batch of PUBACKs it was
	// finished with is written), so the window stays well below it.
	maxWindow = 512
)

var (
	sizes      = []int{100, 1024}
	publishers = []int{1, 8, 64}
	window     = flag.Int("window", 256, fmt.Sprintf("QoS 1 messages each publisher keeps unacknowledged (1..%d)", maxWindow))
)

// A publisher is one MQTT connection of a row.
type publisher interface {
	// publish sends n QoS 1 messages, at most the window unacknowledged,
	// and returns the publish→PUBACK latency of each.
	publish(topic string, payload []byte, n int) ([]time.Duration, error)
	close()
}

// A client is the MQTT client implementation a row's publishers use.
type client struct {
	name string
	dial func(url, id string, window int) (publisher, error)
}

var clients = []client{
	{"lean", dialLean}, // the load generator: the broker is what is measured
	{"paho", dialPaho}, // what a typical Go client gets
}

// BenchmarkIngest runs every row: client × payload size × publishers ×
// peer. The peers are the innermost loop so that the rows compared with
// each other run back to back, under the same background load.
func BenchmarkIngest(b *testing.B) {
	if *window < 1 || *window > maxWindow {
		b.Fatalf("-window %d: use 1..%d", *window, maxWindow)
	}
	for _, c := range clients {
		for _, size := range sizes {
			for _, pubs := range publishers {
				for _, p := range peers {
					b.Run(fmt.Sprintf("client=%s/size=%d/pubs=%d/peer=%s", c.name, size, pubs, p.name), func(b *testing.B) {
						var conns []publisher
						closeAfterBroker(b, &conns)
						t := p.start(b)
						conns = dial(b, c, t.url, pubs, *window)
						publishRow(b, conns, size)
						if t.verify != nil && !b.Failed() {
							t.verify(b)
						}
					})
				}
			}
		}
	}
}

// closeAfterBroker closes the publishers *conns once the test ends, after
// the broker (cleanups run last in, first out, and this one is registered
// before the broker starts). The broker thus closes idle, connected
// clients. Had they disconnected first, the embedded broker could be
// closing while one of them leaves, and mochi's Server.Close (v2.7.9) can
// deadlock then: Clients.GetByListener takes its read lock twice, and a
// client's removal waiting for the write lock in between blocks both
// (mochi-mqtt/server#488).
func closeAfterBroker(tb testing.TB, conns *[]publisher) {
	tb.Cleanup(func() {
		for _, p := range *conns {
			p.close()
		}
	})
}

// dial connects pubs publishers of client c to url.
func dial(tb testing.TB, c client, url string, pubs, window int) []publisher {
	tb.Helper()
	conns := make([]publisher, 0, pubs)
	for i := range pubs {
		p, err := c.dial(url, fmt.Sprintf("bench-%d", i), window)
		if err != nil {
			for _, p := range conns {
				p.close()
			}
			tb.Fatal(err)
		}
		conns = append(conns, p)
	}
	return conns
}

// publishRow sends b.N messages of size bytes, shared among the
// publishers, which publish at the same time, and reports the rate and
// the latency percentiles.
func publishRow(b *testing.B, conns []publisher, size int) {
	payload := make([]byte, size)
	for i := range payload {
		payload[i] = byte('a' + i%26)
	}
	lat := make([][]time.Duration, len(conns))
	var g errgroup.Group

	b.ResetTimer()
	start := time.Now()
	for i, p := range conns {
		n := b.N / len(conns)
		if i < b.N%len(conns) {
			n++
		}
		g.Go(func() error {
			var err error
			lat[i], err = p.publish(topic, payload, n)
			return err
		})
	}
	err := g.Wait()
	elapsed := time.Since(start)
	b.StopTimer()
	if err != nil {
		b.Fatal(err)
	}

	all := slices.Concat(lat...)
	slices.Sort(all)
	if len(all) != b.N {
		b.Fatalf("%d of %d messages acknowledged", len(all), b.N)
	}
	b.ReportMetric(float64(b.N)/elapsed.Seconds(), "msgs/s")
	b.ReportMetric(float64(b.N*size)/elapsed.Seconds()/1e6, "MB/s")
	b.ReportMetric(ms(percentile(all, 50)), "p50-ms")
	b.ReportMetric(ms(percentile(all, 99)), "p99-ms")
}

// BenchmarkWAL is the disk's ceiling: the same records written straight to
// tidwall/wal, walBatch per WriteBatch, each batch one fsync. The latency is
// a batch's write time.
func BenchmarkWAL(b *testing.B) {
	for _, size := range sizes {
		b.Run(fmt.Sprintf("size=%d/batch=%d", size, walBatch), func(b *testing.B) {
			l, err := wal.Open(filepath.Join(b.TempDir(), "wal"), &wal.Options{LogFormat: wal.Binary, SegmentSize: 4 << 20, NoCopy: true})
			if err != nil {
				b.Fatal(err)
			}
			defer l.Close()
			rec := ingesttest.Encode(topic, make([]byte, size))
			var batch wal.Batch
			var lat []time.Duration
			index := uint64(1)
			b.ResetTimer()
			start := time.Now()
			for done := 0; done < b.N; {
				n := min(walBatch, b.N-done)
				batch.Clear()
				for range n {
					batch.Write(index, rec)
					index++
				}
				t0 := time.Now()
				if err := l.WriteBatch(&batch); err != nil {
					b.Fatal(err)
				}
				lat = append(lat, time.Since(t0))
				done += n
			}
			elapsed := time.Since(start)
			b.StopTimer()
			slices.Sort(lat)
			b.ReportMetric(float64(b.N)/elapsed.Seconds(), "msgs/s")
			b.ReportMetric(float64(b.N*size)/elapsed.Seconds()/1e6, "MB/s")
			b.ReportMetric(ms(percentile(lat, 50)), "p50-ms")
			b.ReportMetric(ms(percentile(lat, 99)), "p99-ms")
		})
	}
}

func percentile(sorted []time.Duration, p int) time.Duration {
	if len(sorted) == 0 {
		return 0
	}
	return sorted[min(len(sorted)-1, len(sorted)*p/100)]
}

func ms(d time.Duration) float64 { return float64(d) / float64(time.Millisecond) }
