package benchpeer

import (
	"fmt"
	"log/slog"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	paho "github.com/eclipse/paho.mqtt.golang"
	"github.com/tidwall/wal"

	"github.com/cloudskin/cloudskin/edge-agent/internal/ingest"
	"github.com/cloudskin/cloudskin/edge-agent/internal/ingest/ingesttest"
	"github.com/cloudskin/cloudskin/edge-agent/internal/journal"
	"github.com/cloudskin/cloudskin/shared/testenv"
)

const (
	topic    = "sensors/bench/reading"
	inflight = 64 // per publisher
	walBatch = 256
)

var (
	sizes      = []int{100, 1024}
	publishers = []int{1, 8, 64}
)

// durableSink is the sink "ours" is measured with: the journal with group
// commit. When the streams package lands, build its stream set on dir here
// instead — the one line to change.
func durableSink(b *testing.B, dir string, noSync bool) ingest.Sink {
	j, err := journal.Open(dir, journal.Options{NoSync: noSync, MinFreeBytes: -1})
	if err != nil {
		b.Fatal(err)
	}
	s := ingesttest.NewJournalSink(j, ingesttest.Options{})
	b.Cleanup(func() {
		s.Close()
		j.Close()
	})
	return s
}

// A peer is a broker started for one benchmark row; it returns the URL the
// publishers connect to.
type peer struct {
	name  string
	start func(b *testing.B) string
}

// stored counts the messages a sink reported durable, to check after a row
// that ours took the durable path for every message.
type stored struct {
	ingest.Sink
	n atomic.Int64
}

func (s *stored) Append(topic string, payload []byte, h map[string]string, done func(error)) bool {
	return s.Sink.Append(topic, payload, h, func(err error) {
		if err == nil {
			s.n.Add(1)
		}
		done(err)
	})
}

var peers = []peer{
	{"ours-durable", func(b *testing.B) string { return startOurs(b, false) }},
	{"ours-nosync", func(b *testing.B) string { return startOurs(b, true) }},
	{"mosquitto", startMosquitto},
	{"nats-sync", func(b *testing.B) string { return startNATS(b, true) }},
	{"nats-default", func(b *testing.B) string { return startNATS(b, false) }},
}

func BenchmarkIngest(b *testing.B) {
	for _, p := range peers {
		for _, size := range sizes {
			for _, pubs := range publishers {
				b.Run(fmt.Sprintf("peer=%s/size=%d/pubs=%d", p.name, size, pubs), func(b *testing.B) {
					url := p.start(b)
					publish(b, url, pubs, size)
				})
			}
		}
	}
}

func startOurs(b *testing.B, noSync bool) string {
	sink := &stored{Sink: durableSink(b, filepath.Join(b.TempDir(), "wal"), noSync)}
	b.Cleanup(func() {
		// Every acknowledged message was durable first.
		if n := sink.n.Load(); n != int64(b.N) && !b.Failed() {
			b.Errorf("the sink stored %d messages, %d were acknowledged", n, b.N)
		}
	})
	quiet := slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelError}))
	e, err := ingest.StartEmbedded(ingest.EmbeddedConfig{Addr: "127.0.0.1:0"}, sink, quiet)
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { e.Close() })
	return "tcp://" + e.Addr()
}

func startMosquitto(b *testing.B) string {
	dir := b.TempDir()
	if err := os.WriteFile(filepath.Join(dir, "passwd"), nil, 0o600); err != nil {
		b.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, "acl"), []byte("topic readwrite #\n"), 0o600); err != nil {
		b.Fatal(err)
	}
	m := testenv.NewMosquitto(b, dir, "allow_anonymous true")
	m.Start(b)
	return m.URL()
}

// natsServer finds the nats-server binary; a benchmark without its peer is
// not run silently.
func natsServer(b *testing.B) string {
	if p, err := exec.LookPath("nats-server"); err == nil {
		return p
	}
	gopath, err := exec.Command("go", "env", "GOPATH").Output()
	if err == nil {
		p := filepath.Join(strings.TrimSpace(string(gopath)), "bin", "nats-server")
		if _, err := os.Stat(p); err == nil {
			return p
		}
	}
	b.Fatal("nats-server is not installed (a peer of this benchmark): go install github.com/nats-io/nats-server/v2@v2.15.2")
	return ""
}

// startNATS runs nats-server with JetStream on files and its MQTT
// listener. syncAlways makes JetStream fsync every write before acking it
// (the like-for-like peer); otherwise it syncs on its default interval.
func startNATS(b *testing.B, syncAlways bool) string {
	bin := natsServer(b)
	dir := b.TempDir()
	port, mqttPort := testenv.FreePort(b), testenv.FreePort(b)
	syncLine := ""
	if syncAlways {
		syncLine = "sync_interval: always"
	}
	conf := fmt.Sprintf(`server_name: bench
listen: 127.0.0.1:%d
jetstream {
  store_dir: %q
  %s
}
mqtt {
  listen: 127.0.0.1:%d
}
`, port, filepath.Join(dir, "js"), syncLine, mqttPort)
	confPath := filepath.Join(dir, "nats.conf")
	if err := os.WriteFile(confPath, []byte(conf), 0o600); err != nil {
		b.Fatal(err)
	}
	proc := testenv.Start(b, "nats-server", nil, bin, "-c", confPath)
	url := fmt.Sprintf("tcp://127.0.0.1:%d", mqttPort)
	// Ready once an MQTT client gets in (JetStream must be up for that).
	deadline := time.Now().Add(30 * time.Second)
	for {
		if proc.Exited() {
			b.Fatalf("nats-server exited:\n%s", proc.Out.String())
		}
		if c, err := net.DialTimeout("tcp", fmt.Sprintf("127.0.0.1:%d", mqttPort), time.Second); err == nil {
			c.Close()
			if cl, err := connect(url, "probe"); err == nil {
				cl.Disconnect(0)
				return url
			}
		}
		if time.Now().After(deadline) {
			b.Fatalf("nats-server MQTT not ready:\n%s", testenv.Tail(proc.Out.String(), 4000))
		}
		time.Sleep(100 * time.Millisecond)
	}
}

func connect(url, id string) (paho.Client, error) {
	o := paho.NewClientOptions().AddBroker(url).SetClientID(id).SetCleanSession(true).
		SetAutoReconnect(false).SetConnectTimeout(10 * time.Second).SetWriteTimeout(30 * time.Second).
		SetKeepAlive(60 * time.Second)
	c := paho.NewClient(o)
	tok := c.Connect()
	if !tok.WaitTimeout(15 * time.Second) {
		return nil, fmt.Errorf("connect %s: no answer", url)
	}
	return c, tok.Error()
}

type sent struct {
	tok paho.Token
	at  time.Time
}

// publish sends b.N messages of size bytes from pubs publishers, each with
// up to inflight unacknowledged, and reports rate and latency.
func publish(b *testing.B, url string, pubs, size int) {
	clients := make([]paho.Client, pubs)
	for i := range clients {
		c, err := connect(url, fmt.Sprintf("bench-%d-%d", i, time.Now().UnixNano()))
		if err != nil {
			b.Fatal(err)
		}
		clients[i] = c
		defer c.Disconnect(50)
	}
	payload := make([]byte, size)
	for i := range payload {
		payload[i] = byte('a' + i%26)
	}
	lat := make([][]time.Duration, pubs)
	errs := make(chan error, pubs)
	var wg sync.WaitGroup

	b.ResetTimer()
	start := time.Now()
	for i, c := range clients {
		n := b.N / pubs
		if i < b.N%pubs {
			n++
		}
		lat[i] = make([]time.Duration, 0, n)
		queue := make(chan sent, inflight-1) // plus the one being waited for
		wg.Add(2)
		go func() { // waits for the acknowledgements, which come in order
			defer wg.Done()
			for s := range queue {
				if !s.tok.WaitTimeout(time.Minute) {
					errs <- fmt.Errorf("no PUBACK within a minute")
					return
				}
				if err := s.tok.Error(); err != nil {
					errs <- err
					return
				}
				lat[i] = append(lat[i], time.Since(s.at))
			}
		}()
		go func() {
			defer wg.Done()
			defer close(queue)
			for range n {
				at := time.Now()
				queue <- sent{c.Publish(topic, 1, false, payload), at}
			}
		}()
	}
	wg.Wait()
	elapsed := time.Since(start)
	b.StopTimer()
	select {
	case err := <-errs:
		b.Fatal(err)
	default:
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
