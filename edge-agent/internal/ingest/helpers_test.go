package ingest_test

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	paho "github.com/eclipse/paho.mqtt.golang"
	"github.com/mochi-mqtt/server/v2/packets"

	"github.com/cloudskin/cloudskin/edge-agent/internal/ingest"
	"github.com/cloudskin/cloudskin/edge-agent/internal/ingest/ingesttest"
	"github.com/cloudskin/cloudskin/edge-agent/internal/journal"
	"github.com/cloudskin/cloudskin/shared/testenv"
)

// wait is how long anything that should happen may take on a loaded
// machine; the tests never assert how fast something happens.
const wait = 20 * time.Second

func testLogger(t *testing.T) *slog.Logger {
	t.Helper()
	return slog.New(slog.NewTextHandler(tlogWriter{t}, &slog.HandlerOptions{Level: slog.LevelInfo}))
}

// tlogWriter sends log lines to the test's log, shown if it fails.
type tlogWriter struct{ t *testing.T }

func (w tlogWriter) Write(p []byte) (int, error) {
	w.t.Log(strings.TrimRight(string(p), "\n"))
	return len(p), nil
}

func openJournal(t *testing.T, opts journal.Options) *journal.Journal {
	t.Helper()
	j, err := journal.Open(filepath.Join(t.TempDir(), "wal"), opts)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { j.Close() })
	return j
}

// newSink is a journal-backed sink for filters, closed when the test ends
// (before its journal).
func newSink(t *testing.T, jopts journal.Options, opts ingesttest.Options) *ingesttest.JournalSink {
	t.Helper()
	j := openJournal(t, jopts)
	s := ingesttest.NewJournalSink(j, opts)
	t.Cleanup(s.Close)
	return s
}

func startEmbedded(t *testing.T, sink ingest.Sink, cfg ingest.EmbeddedConfig) *ingest.Embedded {
	t.Helper()
	if cfg.Addr == "" {
		cfg.Addr = "127.0.0.1:0"
	}
	e, err := ingest.StartEmbedded(cfg, sink, testLogger(t))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { e.Close() })
	return e
}

// stored returns the payloads in j, in order.
func stored(t *testing.T, j *journal.Journal) []string {
	t.Helper()
	msgs, err := ingesttest.Messages(j)
	if err != nil {
		t.Fatal(err)
	}
	out := make([]string, len(msgs))
	for i, m := range msgs {
		out[i] = m.Payload
	}
	return out
}

func eventually(t *testing.T, what string, cond func() error) {
	t.Helper()
	deadline := time.Now().Add(wait)
	for {
		err := cond()
		if err == nil {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s: not within %v: %v", what, wait, err)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// pahoClient connects a paho client (MQTT 3.1.1) to addr.
func pahoClient(t *testing.T, url, id string, tune func(*paho.ClientOptions)) paho.Client {
	t.Helper()
	o := paho.NewClientOptions().AddBroker(url).SetClientID(id).
		SetAutoReconnect(false).SetConnectTimeout(wait).SetWriteTimeout(wait)
	if tune != nil {
		tune(o)
	}
	c := paho.NewClient(o)
	if tok := c.Connect(); !tok.WaitTimeout(wait) || tok.Error() != nil {
		t.Fatalf("connect %s to %s: %v", id, url, tok.Error())
	}
	t.Cleanup(func() { c.Disconnect(100) })
	return c
}

// collector records what a subscriber receives.
type collector struct {
	mu   sync.Mutex
	msgs []ingesttest.Message
}

func (c *collector) add(topic string, payload []byte) {
	c.mu.Lock()
	c.msgs = append(c.msgs, ingesttest.Message{Topic: topic, Payload: string(payload)})
	c.mu.Unlock()
}

func (c *collector) payloads() []string {
	c.mu.Lock()
	defer c.mu.Unlock()
	out := make([]string, len(c.msgs))
	for i, m := range c.msgs {
		out[i] = m.Payload
	}
	return out
}

// heldSink wraps a sink and holds every done until release: the message is
// in the journal, but the sink has not said so yet. It counts appends.
type heldSink struct {
	inner    ingest.Sink
	appended atomic.Int64
	gate     chan struct{}
	once     sync.Once
}

func newHeldSink(inner ingest.Sink) *heldSink {
	return &heldSink{inner: inner, gate: make(chan struct{})}
}

func (h *heldSink) Append(topic string, payload []byte, headers map[string]string, done func(error)) bool {
	ok := h.inner.Append(topic, payload, headers, func(err error) {
		go func() { <-h.gate; done(err) }()
	})
	if ok {
		h.appended.Add(1)
	}
	return ok
}

func (h *heldSink) release() { h.once.Do(func() { close(h.gate) }) }

// routeSink sends topics under each prefix to its own sink: one client's
// messages going to streams whose commits finish in different orders.
type routeSink map[string]ingest.Sink

func (r routeSink) Append(topic string, payload []byte, headers map[string]string, done func(error)) bool {
	for prefix, s := range r {
		if strings.HasPrefix(topic, prefix) {
			return s.Append(topic, payload, headers, done)
		}
	}
	return false
}

// rawClient speaks MQTT over a plain TCP connection, encoding and decoding
// with the broker library's packet code: for what paho cannot do (MQTT 5,
// exact packet order, broken input).
type rawClient struct {
	t       *testing.T
	conn    net.Conn
	r       *bufio.Reader
	version byte
}

func dialRaw(t *testing.T, addr string) *rawClient {
	t.Helper()
	conn, err := net.DialTimeout("tcp", addr, wait)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	return &rawClient{t: t, conn: conn, r: bufio.NewReader(conn)}
}

// connectRaw connects with MQTT version 4 (3.1.1) or 5.
func connectRaw(t *testing.T, addr string, version byte, id string) *rawClient {
	t.Helper()
	c := dialRaw(t, addr)
	c.version = version
	pk := packets.Packet{
		FixedHeader:     packets.FixedHeader{Type: packets.Connect},
		ProtocolVersion: version,
		Connect: packets.ConnectParams{
			ProtocolName: []byte("MQTT"), Clean: true, ClientIdentifier: id, Keepalive: 60,
		},
	}
	c.send(pk)
	ack, err := c.read(wait)
	if err != nil {
		t.Fatalf("connack: %v", err)
	}
	if ack.FixedHeader.Type != packets.Connack || ack.ReasonCode != 0 {
		t.Fatalf("connect: got packet type %d reason %#x", ack.FixedHeader.Type, ack.ReasonCode)
	}
	return c
}

func (c *rawClient) send(pk packets.Packet) {
	c.t.Helper()
	pk.ProtocolVersion = c.version
	var buf bytes.Buffer
	var err error
	switch pk.FixedHeader.Type {
	case packets.Connect:
		err = pk.ConnectEncode(&buf)
	case packets.Publish:
		err = pk.PublishEncode(&buf)
	case packets.Pubrel:
		err = pk.PubrelEncode(&buf)
	case packets.Pingreq:
		err = pk.PingreqEncode(&buf)
	case packets.Subscribe:
		err = pk.SubscribeEncode(&buf)
	default:
		c.t.Fatalf("rawClient cannot send packet type %d", pk.FixedHeader.Type)
	}
	if err != nil {
		c.t.Fatal(err)
	}
	c.conn.SetWriteDeadline(time.Now().Add(wait))
	if _, err := c.conn.Write(buf.Bytes()); err != nil {
		c.t.Fatalf("write: %v", err)
	}
}

func (c *rawClient) publish(qos byte, id uint16, topic, payload string) {
	c.t.Helper()
	c.send(packets.Packet{
		FixedHeader: packets.FixedHeader{Type: packets.Publish, Qos: qos},
		TopicName:   topic, Payload: []byte(payload), PacketID: id,
	})
}

var errTimeout = errors.New("no packet")

// read returns the next packet, errTimeout if none comes within d, or the
// connection's error (io.EOF when the broker closed it).
func (c *rawClient) read(d time.Duration) (packets.Packet, error) {
	var pk packets.Packet
	c.conn.SetReadDeadline(time.Now().Add(d))
	b, err := c.r.ReadByte()
	if err != nil {
		var ne net.Error
		if errors.As(err, &ne) && ne.Timeout() {
			return pk, errTimeout
		}
		return pk, err
	}
	c.conn.SetReadDeadline(time.Now().Add(wait)) // the rest of a started packet
	if err := pk.FixedHeader.Decode(b); err != nil {
		return pk, err
	}
	n, _, err := packets.DecodeLength(c.r)
	if err != nil {
		return pk, err
	}
	pk.FixedHeader.Remaining = n
	body := make([]byte, n)
	if _, err := io.ReadFull(c.r, body); err != nil {
		return pk, err
	}
	pk.ProtocolVersion = c.version
	switch pk.FixedHeader.Type {
	case packets.Connack:
		err = pk.ConnackDecode(body)
	case packets.Puback:
		err = pk.PubackDecode(body)
	case packets.Pubrec:
		err = pk.PubrecDecode(body)
	case packets.Pubcomp:
		err = pk.PubcompDecode(body)
	case packets.Publish:
		err = pk.PublishDecode(body)
	case packets.Suback:
		err = pk.SubackDecode(body)
	case packets.Disconnect:
		err = pk.DisconnectDecode(body)
	case packets.Pingresp:
	default:
		err = fmt.Errorf("unexpected packet type %d", pk.FixedHeader.Type)
	}
	return pk, err
}

// mustRead reads the next packet and checks its type.
func (c *rawClient) mustRead(typ byte) packets.Packet {
	c.t.Helper()
	pk, err := c.read(wait)
	if err != nil {
		c.t.Fatalf("waiting for packet type %d: %v", typ, err)
	}
	if pk.FixedHeader.Type != typ {
		c.t.Fatalf("got packet type %d, want %d", pk.FixedHeader.Type, typ)
	}
	return pk
}

// closedByBroker waits until the broker drops the connection, ignoring
// anything it sends first except a PUBACK or PUBREC (which must not come).
func (c *rawClient) closedByBroker() {
	c.t.Helper()
	for {
		pk, err := c.read(wait)
		switch {
		case errors.Is(err, errTimeout):
			c.t.Fatalf("the broker did not close the connection within %v", wait)
		case err != nil:
			return
		case pk.FixedHeader.Type == packets.Puback || pk.FixedHeader.Type == packets.Pubrec:
			c.t.Fatalf("got an acknowledgement (type %d, id %d, reason %#x) where none may come",
				pk.FixedHeader.Type, pk.PacketID, pk.ReasonCode)
		}
	}
}

// startMosquitto runs a real Mosquitto that lets anonymous clients use
// every topic.
func startMosquitto(t *testing.T) *testenv.Mosquitto {
	t.Helper()
	dir := t.TempDir()
	if err := os.WriteFile(filepath.Join(dir, "passwd"), nil, 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, "acl"), []byte("topic readwrite #\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	m := testenv.NewMosquitto(t, dir, "allow_anonymous true")
	m.Start(t)
	return m
}
