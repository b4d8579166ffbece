package benchpeer

import (
	"errors"
	"fmt"
	"log/slog"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/cloudskin/cloudskin/edge-agent/internal/ingest"
	"github.com/cloudskin/cloudskin/edge-agent/internal/streams"
	"github.com/cloudskin/cloudskin/shared/protocol"
	"github.com/cloudskin/cloudskin/shared/testenv"
)

// A peer is a broker started fresh for one benchmark row.
type peer struct {
	name  string
	start func(b *testing.B) target
}

// target is a started peer: the URL publishers connect to and, for ours,
// what to check and report once every message is acknowledged.
type target struct {
	url    string
	verify func(b *testing.B) // nil: nothing to look at after the row
}

var peers = []peer{
	{"ours-durable", func(b *testing.B) target { return startOurs(b, false) }},
	{"ours-nosync", func(b *testing.B) target { return startOurs(b, true) }},
	{"mosquitto", startMosquitto},
	{"nats-sync", func(b *testing.B) target { return startNATS(b, true) }},
	{"nats-default", func(b *testing.B) target { return startNATS(b, false) }},
}

// benchStream is the stream the rows ingest into, as an operator would
// declare it. The quota is one a row cannot fill (also with a larger
// -benchtime): the rows measure appends, not the full-stream policy.
var benchStream = protocol.StreamSpec{
	Name:       "bench",
	Topics:     []string{"sensors/#"},
	QuotaBytes: 8 << 30,
}

// openStream opens benchStream in a fresh directory with the options the
// agent uses (streamManager.apply in package agent: a logger and nothing
// else), plus NoSync for the non-durable peer.
func openStream(tb testing.TB, noSync bool) *streams.Stream {
	tb.Helper()
	s, err := streams.Open(filepath.Join(tb.TempDir(), "streams", benchStream.Name), benchStream,
		streams.Options{Logger: quietLog(), NoSync: noSync})
	if err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(func() {
		if err := s.Close(); err != nil {
			tb.Error(err)
		}
	})
	return s
}

// streamSink is the agent's ingest.Sink (streamManager.Append in package
// agent) for a node with one stream: a message whose topic the stream's
// filters match is appended with its ingest time and headers, and done
// runs from the stream's committer once the group holding it is fsync'd.
// (The manager also takes a read lock to find the streams and fans out to
// several when more than one matches; neither happens here.)
type streamSink struct {
	s *streams.Stream
}

func (k *streamSink) Append(topic string, payload []byte, headers map[string]string, done func(error)) bool {
	if !slices.ContainsFunc(k.s.Spec().Topics, func(f string) bool { return protocol.MatchFilter(f, topic) }) {
		return false
	}
	rec := streams.Record{Time: time.Now(), Topic: topic, Headers: headers, Payload: payload}
	k.s.Append(rec, func(_ uint64, err error) { done(sinkErr(err)) })
	return true
}

// sinkErr tells the broker a full stream is back-pressure (ingest.ErrFull).
func sinkErr(err error) error {
	if errors.Is(err, streams.ErrFull) {
		return fmt.Errorf("%w: %w", ingest.ErrFull, err)
	}
	return err
}

// startOurs runs the agent's embedded broker on a stream and checks, after
// the row, that every acknowledged message went the durable path and is
// in the stream (the PUBACK waited for the commit).
func startOurs(b *testing.B, noSync bool) target {
	e, s := runOurs(b, noSync)
	return target{url: "tcp://" + e.Addr(), verify: func(b *testing.B) {
		if err := checkStored(e, s, b.N); err != nil {
			b.Error(err)
		}
		if st := s.Stats(); st.Batches > 0 {
			b.ReportMetric(float64(st.Appended)/float64(st.Batches), "recs/commit")
		}
	}}
}

// runOurs starts the embedded broker in its production configuration on
// a fresh stream. Its per-client bound of unacknowledged messages
// (EmbeddedConfig.MaxPending, 1024) is well above any window the
// benchmark takes (maxWindow), so the publishers' window alone limits
// what is in flight.
func runOurs(tb testing.TB, noSync bool) (*ingest.Embedded, *streams.Stream) {
	tb.Helper()
	s := openStream(tb, noSync)
	e, err := ingest.StartEmbedded(ingest.EmbeddedConfig{Addr: "127.0.0.1:0"}, &streamSink{s: s}, quietLog())
	if err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(func() { e.Close() }) // runs before the stream closes
	return e, s
}

// checkStored compares what the broker and the stream counted with the
// number of messages the publishers saw acknowledged.
func checkStored(e *ingest.Embedded, s *streams.Stream, acked int) error {
	st, ss := e.Stats(), s.Stats()
	if st.Durable != uint64(acked) || st.Passed != 0 || ss.Appended != uint64(acked) {
		return fmt.Errorf("%d messages acknowledged; the broker counted %d durable and %d passed through, the stream appended %d",
			acked, st.Durable, st.Passed, ss.Appended)
	}
	return nil
}

// startMosquitto runs Mosquitto without persistence. It acknowledges an
// incoming QoS 1 PUBLISH as it handles it, so it bounds nothing a publisher
// has in flight (max_inflight_messages is for outgoing messages, and there
// are no subscribers).
func startMosquitto(b *testing.B) target {
	dir := b.TempDir()
	if err := os.WriteFile(filepath.Join(dir, "passwd"), nil, 0o600); err != nil {
		b.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, "acl"), []byte("topic readwrite #\n"), 0o600); err != nil {
		b.Fatal(err)
	}
	m := testenv.NewMosquitto(b, dir, "allow_anonymous true")
	m.Start(b)
	return target{url: m.URL()}
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
//
// nats-server v2.15 pipelines at most 1024 QoS 1 PUBLISHes per connection
// (mqttMaxPipelined, not configurable) and sends their PUBACKs in order
// as JetStream stores them; mqtt.max_ack_pending bounds deliveries to
// subscribers, of which there are none. The publishers' window (at most
// maxWindow) is therefore what is in flight, as with ours. js_api_timeout
// is raised from 5 s: nats-sync stores a few thousand messages a second,
// so with 64 publishers × 256 in flight a message waits longer than 5 s
// for its store, and nats-server would close the connection.
func startNATS(b *testing.B, syncAlways bool) target {
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
  js_api_timeout: "2m"
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
			if p, err := dialLean(url, "probe", 1); err == nil {
				p.close()
				return target{url: url}
			}
		}
		if time.Now().After(deadline) {
			b.Fatalf("nats-server MQTT not ready:\n%s", testenv.Tail(proc.Out.String(), 4000))
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// quietLog keeps the brokers' and streams' routine logs out of the
// benchmark output.
func quietLog() *slog.Logger {
	return slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelError}))
}
