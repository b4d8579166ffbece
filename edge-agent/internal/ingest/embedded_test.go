package ingest_test

import (
	"bytes"
	"errors"
	"fmt"
	"net"
	"slices"
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
)

var sensors = ingesttest.Options{Filters: []string{"sensors/#"}}

func brokerURL(e *ingest.Embedded) string { return "tcp://" + e.Addr() }

// publishAll publishes payloads asynchronously, at most inflight at a time,
// and fails the test if any is not acknowledged.
func publishAll(t *testing.T, c paho.Client, qos func(i int) byte, topic func(i int) string, payloads []string, inflight int) {
	t.Helper()
	sem := make(chan struct{}, inflight)
	var wg sync.WaitGroup
	var failed atomic.Value
	for i, p := range payloads {
		sem <- struct{}{}
		tok := c.Publish(topic(i), qos(i), false, p)
		wg.Add(1)
		go func() {
			defer wg.Done()
			defer func() { <-sem }()
			if !tok.WaitTimeout(wait) {
				failed.Store(fmt.Errorf("publish %q: not acknowledged within %v", p, wait))
			} else if err := tok.Error(); err != nil {
				failed.Store(fmt.Errorf("publish %q: %w", p, err))
			}
		}()
	}
	wg.Wait()
	if err, _ := failed.Load().(error); err != nil {
		t.Fatal(err)
	}
}

func numbered(prefix string, n int) []string {
	out := make([]string, n)
	for i := range out {
		out[i] = fmt.Sprintf("%s-%04d", prefix, i)
	}
	return out
}

func qos1(int) byte          { return 1 }
func sensorTopic(int) string { return "sensors/s1/temp" }

// Every message a paho publisher gets a PUBACK for is in the journal, once,
// in the order it was published, and local subscribers get it too.
func TestEmbeddedQoS1StoresInOrder(t *testing.T) {
	sink := newSink(t, journal.Options{}, sensors)
	e := startEmbedded(t, sink, ingest.EmbeddedConfig{})
	var sub collector
	if err := e.Subscribe("sensors/#", sub.add); err != nil {
		t.Fatal(err)
	}
	c := pahoClient(t, brokerURL(e), "pub", nil)
	want := numbered("m", 500)
	publishAll(t, c, qos1, sensorTopic, want, 128)

	if got := stored(t, sink.J); !slices.Equal(got, want) {
		t.Fatalf("journal holds %d messages, want the %d acknowledged ones in order; first: %v", len(got), len(want), got[:min(5, len(got))])
	}
	eventually(t, "subscriber got every message", func() error {
		if got := sub.payloads(); !slices.Equal(got, want) {
			return fmt.Errorf("got %d of %d", len(got), len(want))
		}
		return nil
	})
	if s := e.Stats(); s.Durable != 500 || s.Passed != 0 {
		t.Errorf("stats %+v, want 500 durable", s)
	}
}

// The key durability property: a PUBACK is not sent before the sink says
// the message is durable, even when it is long written.
func TestEmbeddedAckWaitsForDone(t *testing.T) {
	inner := newSink(t, journal.Options{}, sensors)
	held := newHeldSink(inner)
	defer held.release()
	e := startEmbedded(t, held, ingest.EmbeddedConfig{})
	var sub collector
	if err := e.Subscribe("#", sub.add); err != nil {
		t.Fatal(err)
	}

	raw := connectRaw(t, e.Addr(), 4, "raw")
	raw.publish(1, 7, "sensors/a", "first")
	p := pahoClient(t, brokerURL(e), "paho", nil)
	tok := p.Publish("sensors/b", 1, false, "second")

	eventually(t, "both messages in the journal", func() error {
		if n := inner.J.Len(); n != 2 {
			return fmt.Errorf("%d records", n)
		}
		return nil
	})
	if pk, err := raw.read(500 * time.Millisecond); !errors.Is(err, errTimeout) {
		t.Fatalf("got packet type %d (id %d) / err %v before the sink was done; want nothing", pk.FixedHeader.Type, pk.PacketID, err)
	}
	if tok.WaitTimeout(100 * time.Millisecond) {
		t.Fatalf("paho's publish completed (err %v) before the sink was done", tok.Error())
	}
	if got := sub.payloads(); len(got) != 0 {
		t.Fatalf("subscribers got %v before the sink was done", got)
	}

	held.release()
	if ack := raw.mustRead(packets.Puback); ack.PacketID != 7 {
		t.Fatalf("PUBACK for id %d, want 7", ack.PacketID)
	}
	if !tok.WaitTimeout(wait) || tok.Error() != nil {
		t.Fatalf("paho's publish after done: %v", tok.Error())
	}
	eventually(t, "subscriber got both", func() error {
		if got := sub.payloads(); len(got) != 2 {
			return fmt.Errorf("got %v", got)
		}
		return nil
	})
}

// doneCounter counts the done calls of the sink it wraps.
type doneCounter struct {
	inner ingest.Sink
	n     atomic.Int64
}

func (d *doneCounter) Append(topic string, payload []byte, h map[string]string, done func(error)) bool {
	return d.inner.Append(topic, payload, h, func(err error) { done(err); d.n.Add(1) })
}

// A client's PUBACKs come in the order of its PUBLISHes even when its
// messages go to streams whose commits finish in another order.
func TestEmbeddedAcksInPublishOrder(t *testing.T) {
	slowJ := newSink(t, journal.Options{}, ingesttest.Options{})
	slow := newHeldSink(slowJ)
	defer slow.release()
	fast := &doneCounter{inner: newSink(t, journal.Options{}, ingesttest.Options{})}
	e := startEmbedded(t, routeSink{"slow/": slow, "fast/": fast}, ingest.EmbeddedConfig{})

	raw := connectRaw(t, e.Addr(), 4, "raw")
	raw.publish(1, 1, "slow/a", "s1")
	raw.publish(1, 2, "fast/a", "f2")
	raw.publish(1, 3, "fast/a", "f3")
	eventually(t, "fast stream done with both of its messages", func() error {
		if n := fast.n.Load(); n != 2 {
			return fmt.Errorf("%d done", n)
		}
		return nil
	})
	if pk, err := raw.read(500 * time.Millisecond); !errors.Is(err, errTimeout) {
		t.Fatalf("got packet type %d id %d (err %v) while the first message is not durable; want nothing", pk.FixedHeader.Type, pk.PacketID, err)
	}
	slow.release()
	for want := uint16(1); want <= 3; want++ {
		if ack := raw.mustRead(packets.Puback); ack.PacketID != want {
			t.Fatalf("PUBACK for id %d, want %d", ack.PacketID, want)
		}
	}

	// Many, interleaved, with a slower disk for one stream.
	e2 := startEmbedded(t, routeSink{
		"slow/": newSink(t, journal.Options{}, ingesttest.Options{CommitDelay: 10 * time.Millisecond}),
		"fast/": newSink(t, journal.Options{}, ingesttest.Options{}),
	}, ingest.EmbeddedConfig{})
	raw2 := connectRaw(t, e2.Addr(), 4, "raw2")
	const n = 300
	go func() {
		for i := 1; i <= n; i++ {
			topic := "fast/x"
			if i%3 == 0 {
				topic = "slow/x"
			}
			raw2.publish(1, uint16(i), topic, fmt.Sprint(i))
		}
	}()
	for want := uint16(1); want <= n; want++ {
		if ack := raw2.mustRead(packets.Puback); ack.PacketID != want {
			t.Fatalf("PUBACK for id %d, want %d", ack.PacketID, want)
		}
	}
}

// One publisher with many messages in flight shares commits: with 5 ms per
// commit a publisher acknowledged one commit at a time would get exactly one
// message per commit (at most 200 msgs/s).
func TestEmbeddedPipelinesOnePublisher(t *testing.T) {
	sink := newSink(t, journal.Options{}, ingesttest.Options{Filters: []string{"sensors/#"}, CommitDelay: 5 * time.Millisecond})
	e := startEmbedded(t, sink, ingest.EmbeddedConfig{})
	c := pahoClient(t, brokerURL(e), "pub", nil)
	want := numbered("m", 4000)
	start := time.Now()
	publishAll(t, c, qos1, sensorTopic, want, 512)
	elapsed := time.Since(start)

	commits, records := sink.Commits()
	t.Logf("%d messages in %d commits (%.1f per commit), %.0f msgs/s", records, commits,
		float64(records)/float64(commits), float64(records)/elapsed.Seconds())
	if records != uint64(len(want)) {
		t.Fatalf("sink committed %d messages, want %d", records, len(want))
	}
	if per := float64(records) / float64(commits); per < 4 {
		t.Fatalf("%.1f messages per commit: the publisher's messages are not pipelined into group commits", per)
	}
	if got := stored(t, sink.J); !slices.Equal(got, want) {
		t.Fatalf("journal order differs from publish order")
	}
}

// QoS 2 messages are stored once and acknowledged (PUBREC) after the
// commit; mixed with QoS 1 they keep their order in the journal and for
// subscribers.
func TestEmbeddedQoS2(t *testing.T) {
	sink := newSink(t, journal.Options{}, sensors)
	e := startEmbedded(t, sink, ingest.EmbeddedConfig{})
	var sub collector
	if err := e.Subscribe("sensors/#", sub.add); err != nil {
		t.Fatal(err)
	}
	c := pahoClient(t, brokerURL(e), "pub", nil)
	want := numbered("q", 200)
	publishAll(t, c, func(i int) byte { return byte(1 + i%2) }, sensorTopic, want, 32)
	if got := stored(t, sink.J); !slices.Equal(got, want) {
		t.Fatalf("journal holds %d messages, want %d in order", len(got), len(want))
	}
	eventually(t, "subscriber got every message in order", func() error {
		if got := sub.payloads(); !slices.Equal(got, want) {
			return fmt.Errorf("got %d of %d (or out of order)", len(got), len(want))
		}
		return nil
	})

	// Only QoS 2, with the packet flow checked by hand.
	raw := connectRaw(t, e.Addr(), 4, "raw")
	raw.publish(2, 9, "sensors/q2", "exactly-once")
	if rec := raw.mustRead(packets.Pubrec); rec.PacketID != 9 {
		t.Fatalf("PUBREC for id %d, want 9", rec.PacketID)
	}
	if got := stored(t, sink.J); got[len(got)-1] != "exactly-once" {
		t.Fatalf("PUBREC came before the message was stored")
	}
	raw.send(packets.Packet{FixedHeader: packets.FixedHeader{Type: packets.Pubrel, Qos: 1}, PacketID: 9})
	if comp := raw.mustRead(packets.Pubcomp); comp.PacketID != 9 {
		t.Fatalf("PUBCOMP for id %d, want 9", comp.PacketID)
	}
}

// QoS 0 messages are appended (and delivered once stored); nothing is
// acknowledged.
func TestEmbeddedQoS0(t *testing.T) {
	sink := newSink(t, journal.Options{}, sensors)
	e := startEmbedded(t, sink, ingest.EmbeddedConfig{})
	var sub collector
	if err := e.Subscribe("sensors/#", sub.add); err != nil {
		t.Fatal(err)
	}
	c := pahoClient(t, brokerURL(e), "pub", nil)
	want := numbered("z", 100)
	publishAll(t, c, func(int) byte { return 0 }, sensorTopic, want, 100)
	eventually(t, "QoS 0 messages stored", func() error {
		if got := stored(t, sink.J); !slices.Equal(got, want) {
			return fmt.Errorf("%d of %d stored", len(got), len(want))
		}
		return nil
	})
	eventually(t, "QoS 0 messages delivered", func() error {
		if got := sub.payloads(); !slices.Equal(got, want) {
			return fmt.Errorf("%d of %d delivered", len(got), len(want))
		}
		return nil
	})
}

// An MQTT 5 publisher whose stream is full gets PUBACK (or PUBREC) with
// reason 0x97, quota exceeded, and stays connected; nothing refused is
// stored and everything acknowledged is.
func TestEmbeddedFullMQTT5(t *testing.T) {
	sink := newSink(t, journal.Options{MaxBytes: 400}, sensors)
	e := startEmbedded(t, sink, ingest.EmbeddedConfig{})
	raw := connectRaw(t, e.Addr(), 5, "v5")
	pad := strings.Repeat("x", 40)
	ok := map[string]bool{}
	refused := map[string]bool{}
	// The first few fit, one at a time.
	id := uint16(0)
	for range 3 {
		id++
		p := fmt.Sprintf("m%02d-%s", id, pad)
		raw.publish(1, id, "sensors/a", p)
		ack := raw.mustRead(packets.Puback)
		if ack.PacketID != id || ack.ReasonCode != 0 {
			t.Fatalf("PUBACK id %d reason %#x, want id %d success", ack.PacketID, ack.ReasonCode, id)
		}
		ok[p] = true
	}
	// Then a burst that overflows the quota.
	var burst []string
	for range 20 {
		id++
		p := fmt.Sprintf("m%02d-%s", id, pad)
		burst = append(burst, p)
		raw.publish(1, id, "sensors/a", p)
	}
	for i, p := range burst {
		ack := raw.mustRead(packets.Puback)
		if want := uint16(4 + i); ack.PacketID != want {
			t.Fatalf("PUBACK for id %d, want %d (in order)", ack.PacketID, want)
		}
		switch ack.ReasonCode {
		case 0:
			ok[p] = true
		case packets.ErrQuotaExceeded.Code:
			refused[p] = true
		default:
			t.Fatalf("PUBACK reason %#x, want 0 or 0x97", ack.ReasonCode)
		}
	}
	if len(refused) == 0 {
		t.Fatal("no PUBACK with reason 0x97 although the stream's quota was exceeded")
	}
	st := stored(t, sink.J)
	for _, p := range st {
		if refused[p] {
			t.Errorf("%q was refused yet stored", p[:3])
		}
	}
	for p := range ok {
		if !slices.Contains(st, p) {
			t.Errorf("%q was acknowledged yet not stored", p[:3])
		}
	}
	// QoS 2: the refusal is a PUBREC with the reason code.
	raw.publish(2, 100, "sensors/a", "q2-"+strings.Repeat(pad, 10)) // over the quota whatever fits

	if rec := raw.mustRead(packets.Pubrec); rec.PacketID != 100 || rec.ReasonCode != packets.ErrQuotaExceeded.Code {
		t.Fatalf("PUBREC id %d reason %#x, want id 100 reason 0x97", rec.PacketID, rec.ReasonCode)
	}
	// Still connected.
	raw.send(packets.Packet{FixedHeader: packets.FixedHeader{Type: packets.Pingreq}})
	raw.mustRead(packets.Pingresp)
	if s := e.Stats(); s.Full != uint64(len(refused))+1 || s.Disconnects != 0 {
		t.Errorf("stats %+v: want %d full, no disconnects", s, len(refused)+1)
	}
}

// MQTT 3.1.1 has no negative acknowledgement: a client whose message is
// refused is disconnected without a PUBACK, and the broker serves others.
func TestEmbeddedFullMQTT311Disconnects(t *testing.T) {
	sink := newSink(t, journal.Options{MaxBytes: 1}, sensors) // nothing fits
	e := startEmbedded(t, sink, ingest.EmbeddedConfig{})
	var sub collector
	if err := e.Subscribe("#", sub.add); err != nil {
		t.Fatal(err)
	}

	raw := connectRaw(t, e.Addr(), 4, "v311")
	raw.publish(1, 1, "sensors/a", "refused")
	raw.closedByBroker()

	// paho sees the connection drop, its publish unacknowledged.
	lost := make(chan error, 1)
	p := pahoClient(t, brokerURL(e), "paho311", func(o *paho.ClientOptions) {
		o.SetConnectionLostHandler(func(_ paho.Client, err error) { lost <- err })
	})
	tok := p.Publish("sensors/a", 1, false, "refused too")
	select {
	case <-lost:
	case <-time.After(wait):
		t.Fatal("paho client not disconnected")
	}
	if tok.WaitTimeout(100*time.Millisecond) && tok.Error() == nil {
		t.Fatal("paho's refused publish completed without error") // it stays pending for a resend
	}

	// QoS 0 cannot be refused: it is dropped and counted, the client stays.
	raw0 := connectRaw(t, e.Addr(), 4, "qos0")
	raw0.publish(0, 0, "sensors/a", "dropped")
	eventually(t, "QoS 0 drop counted", func() error {
		if s := e.Stats(); s.Dropped != 1 {
			return fmt.Errorf("stats %+v", s)
		}
		return nil
	})
	raw0.send(packets.Packet{FixedHeader: packets.FixedHeader{Type: packets.Pingreq}})
	raw0.mustRead(packets.Pingresp)

	// Others go on: a topic no stream matches is plain broker business.
	other := connectRaw(t, e.Addr(), 4, "other")
	other.publish(1, 5, "other/a", "fine")
	if ack := other.mustRead(packets.Puback); ack.PacketID != 5 {
		t.Fatalf("PUBACK id %d, want 5", ack.PacketID)
	}
	if s := e.Stats(); s.Disconnects != 2 || s.Full != 3 {
		t.Errorf("stats %+v: want 2 disconnects, 3 full", s)
	}
	if n := sink.J.Len(); n != 0 {
		t.Errorf("journal holds %d records, want none", n)
	}
	eventually(t, "subscriber got only the accepted message", func() error {
		if got := sub.payloads(); !slices.Equal(got, []string{"fine"}) {
			return fmt.Errorf("got %v", got)
		}
		return nil
	})
}

// Topics no stream matches get plain broker behaviour: acknowledged and
// delivered, never appended; order with durable ones is kept.
func TestEmbeddedNonMatchingTopics(t *testing.T) {
	sink := newSink(t, journal.Options{}, sensors)
	e := startEmbedded(t, sink, ingest.EmbeddedConfig{})
	var sub collector
	if err := e.Subscribe("#", sub.add); err != nil {
		t.Fatal(err)
	}
	c := pahoClient(t, brokerURL(e), "pub", nil)
	want := numbered("x", 100)
	topic := func(i int) string {
		if i%2 == 0 {
			return "other/a"
		}
		return "sensors/a"
	}
	publishAll(t, c, qos1, topic, want, 16)
	var durable []string
	for i, p := range want {
		if topic(i) == "sensors/a" {
			durable = append(durable, p)
		}
	}
	if got := stored(t, sink.J); !slices.Equal(got, durable) {
		t.Fatalf("journal holds %v..., want only the sensors/ messages", got[:min(4, len(got))])
	}
	eventually(t, "subscriber got all, in order", func() error {
		if got := sub.payloads(); !slices.Equal(got, want) {
			return fmt.Errorf("%d of %d", len(got), len(want))
		}
		return nil
	})
	if s := e.Stats(); s.Passed != 50 || s.Durable != 50 {
		t.Errorf("stats %+v: want 50 passed, 50 durable", s)
	}
}

// Garbage and oversized packets drop their client; the broker keeps serving.
func TestEmbeddedDropsBadClients(t *testing.T) {
	sink := newSink(t, journal.Options{}, sensors)
	e := startEmbedded(t, sink, ingest.EmbeddedConfig{})
	good := pahoClient(t, brokerURL(e), "good", nil)
	publishAll(t, good, qos1, sensorTopic, []string{"before"}, 1)

	garbage := dialRaw(t, e.Addr())
	garbage.conn.Write([]byte("GET / HTTP/1.1\r\nHost: x\r\n\r\n"))
	garbage.closedByBroker()

	// A PUBLISH with QoS 3 (malformed) after a proper CONNECT.
	bad := connectRaw(t, e.Addr(), 4, "bad")
	bad.conn.Write([]byte{0x36, 0x05, 0x00, 0x01, 'a', 0x00, 0x01})
	bad.closedByBroker()

	// A PUBLISH over the 1 MiB limit: the broker drops the client as soon as
	// it reads the length, so the write itself may fail.
	big := connectRaw(t, e.Addr(), 4, "big")
	var buf bytes.Buffer
	oversized := packets.Packet{
		FixedHeader: packets.FixedHeader{Type: packets.Publish, Qos: 1},
		TopicName:   "sensors/big", Payload: make([]byte, ingest.DefaultMaxPacketSize+1), PacketID: 1,
		ProtocolVersion: 4,
	}
	if err := oversized.PublishEncode(&buf); err != nil {
		t.Fatal(err)
	}
	go big.conn.Write(buf.Bytes())
	big.closedByBroker()

	publishAll(t, good, qos1, sensorTopic, []string{"after"}, 1)
	if got := stored(t, sink.J); !slices.Equal(got, []string{"before", "after"}) {
		t.Fatalf("journal holds %d records, want before and after", len(got))
	}
}

// A client with MaxPending messages outstanding is not read until some are
// acknowledged: back-pressure, not unbounded memory. Close still works while
// a client waits.
func TestEmbeddedBackPressure(t *testing.T) {
	inner := newSink(t, journal.Options{}, sensors)
	held := newHeldSink(inner)
	defer held.release()
	e := startEmbedded(t, held, ingest.EmbeddedConfig{MaxPending: 4})
	raw := connectRaw(t, e.Addr(), 4, "fast")
	for i := 1; i <= 10; i++ {
		raw.publish(1, uint16(i), "sensors/a", fmt.Sprint(i))
	}
	eventually(t, "4 messages handed to the sink", func() error {
		if n := held.appended.Load(); n != 4 {
			return fmt.Errorf("%d appended", n)
		}
		return nil
	})
	time.Sleep(300 * time.Millisecond)
	if n := held.appended.Load(); n != 4 {
		t.Fatalf("%d messages taken from a client with 4 outstanding; want the client not read", n)
	}
	if s := e.Stats(); s.Waits != 1 {
		t.Fatalf("stats %+v: want 1 wait", s)
	}
	held.release()
	for want := uint16(1); want <= 10; want++ {
		if ack := raw.mustRead(packets.Puback); ack.PacketID != want {
			t.Fatalf("PUBACK id %d, want %d", ack.PacketID, want)
		}
	}

	// The bound in bytes: three 309-byte messages fit in 1000, a fourth waits.
	inner3 := newSink(t, journal.Options{}, sensors)
	held3 := newHeldSink(inner3)
	defer held3.release()
	e3 := startEmbedded(t, held3, ingest.EmbeddedConfig{MaxPendingBytes: 1000})
	raw3 := connectRaw(t, e3.Addr(), 4, "big")
	for i := 1; i <= 6; i++ {
		raw3.publish(1, uint16(i), "sensors/a", strings.Repeat("x", 300))
	}
	eventually(t, "3 messages handed to the sink", func() error {
		if n := held3.appended.Load(); n != 3 {
			return fmt.Errorf("%d appended", n)
		}
		return nil
	})
	time.Sleep(300 * time.Millisecond)
	if n := held3.appended.Load(); n != 3 {
		t.Fatalf("%d messages taken with 927 of 1000 bytes pending; want the client not read", n)
	}
	held3.release()
	for want := uint16(1); want <= 6; want++ {
		if ack := raw3.mustRead(packets.Puback); ack.PacketID != want {
			t.Fatalf("PUBACK id %d, want %d", ack.PacketID, want)
		}
	}

	// Close while a client waits for room.
	inner2 := newSink(t, journal.Options{}, sensors)
	held2 := newHeldSink(inner2)
	defer held2.release()
	e2, err := ingest.StartEmbedded(ingest.EmbeddedConfig{Addr: "127.0.0.1:0", MaxPending: 2}, held2, testLogger(t))
	if err != nil {
		t.Fatal(err)
	}
	raw2 := connectRaw(t, e2.Addr(), 4, "stuck")
	for i := 1; i <= 5; i++ {
		raw2.publish(1, uint16(i), "sensors/a", fmt.Sprint(i))
	}
	eventually(t, "2 messages handed to the sink", func() error {
		if n := held2.appended.Load(); n != 2 {
			return fmt.Errorf("%d appended", n)
		}
		return nil
	})
	closed := make(chan error, 1)
	go func() { closed <- e2.Close() }()
	select {
	case err := <-closed:
		if err != nil {
			t.Fatal(err)
		}
	case <-time.After(wait):
		t.Fatal("Close hangs while a client waits for room")
	}
	held2.release() // done after Close: must not crash
}

// A client that goes away with messages still committing crashes nothing;
// what was committed stays stored.
func TestEmbeddedClientGoneWhileCommitting(t *testing.T) {
	inner := newSink(t, journal.Options{}, sensors)
	held := newHeldSink(inner)
	defer held.release()
	e := startEmbedded(t, held, ingest.EmbeddedConfig{})
	for k, version := range []byte{4, 5} {
		raw := connectRaw(t, e.Addr(), version, fmt.Sprintf("gone-v%d", version))
		for i := 1; i <= 10; i++ {
			raw.publish(1, uint16(i), "sensors/a", fmt.Sprint(i))
		}
		raw.publish(2, 11, "sensors/a", "11") // waits in the read loop
		eventually(t, "the client's messages handed to the sink", func() error {
			if n := held.appended.Load(); n != int64(11*(k+1)) {
				return fmt.Errorf("%d appended", n)
			}
			return nil
		})
		raw.conn.Close()
	}
	held.release()
	eventually(t, "held messages stored", func() error {
		if n := inner.J.Len(); n != 22 {
			return fmt.Errorf("%d stored, want 22", n)
		}
		return nil
	})
	after := connectRaw(t, e.Addr(), 4, "after")
	after.publish(1, 1, "sensors/a", "still serving")
	after.mustRead(packets.Puback)
}

// The agent's own publishes (cell outputs) reach subscribers and never the
// sink; MQTT 5 user properties reach the sink as headers; without a sink
// the broker is a plain broker.
func TestEmbeddedPublishSubscribeAndHeaders(t *testing.T) {
	var mu sync.Mutex
	var gotHeaders []map[string]string
	inner := newSink(t, journal.Options{}, ingesttest.Options{}) // every topic
	sink := sinkFunc(func(topic string, payload []byte, h map[string]string, done func(error)) bool {
		mu.Lock()
		gotHeaders = append(gotHeaders, h)
		mu.Unlock()
		return inner.Append(topic, payload, h, done)
	})
	e := startEmbedded(t, sink, ingest.EmbeddedConfig{})
	var sub collector
	if err := e.Subscribe("cells/#", sub.add); err != nil {
		t.Fatal(err)
	}
	if err := e.Publish("cells/c1/out", []byte("result")); err != nil {
		t.Fatal(err)
	}
	eventually(t, "cell output delivered", func() error {
		if got := sub.payloads(); !slices.Equal(got, []string{"result"}) {
			return fmt.Errorf("got %v", got)
		}
		return nil
	})
	if n := inner.J.Len(); n != 0 {
		t.Fatalf("the agent's own publish was appended (%d records)", n)
	}

	raw := connectRaw(t, e.Addr(), 5, "v5")
	raw.send(packets.Packet{
		FixedHeader: packets.FixedHeader{Type: packets.Publish, Qos: 1},
		TopicName:   "sensors/a", Payload: []byte("with headers"), PacketID: 1,
		Properties: packets.Properties{User: []packets.UserProperty{{Key: "unit", Val: "C"}}},
	})
	raw.mustRead(packets.Puback)
	mu.Lock()
	h := gotHeaders[len(gotHeaders)-1]
	mu.Unlock()
	if h["unit"] != "C" {
		t.Fatalf("headers %v, want unit=C", h)
	}

	plain := startEmbedded(t, nil, ingest.EmbeddedConfig{})
	var psub collector
	if err := plain.Subscribe("#", psub.add); err != nil {
		t.Fatal(err)
	}
	publishAll(t, pahoClient(t, brokerURL(plain), "p", nil), qos1, sensorTopic, []string{"plain"}, 1)
	eventually(t, "plain broker delivers", func() error {
		if got := psub.payloads(); !slices.Equal(got, []string{"plain"}) {
			return fmt.Errorf("got %v", got)
		}
		return nil
	})
}

func TestEmbeddedConfigErrors(t *testing.T) {
	for _, cfg := range []ingest.EmbeddedConfig{
		{Addr: "127.0.0.1:0", MaxPending: -1},
		{Addr: "127.0.0.1:0", MaxPending: 70000},
		{Addr: "127.0.0.1:0", MaxPacketSize: 10},
		{Addr: "127.0.0.1:0", MaxPendingBytes: -1},
		{Addr: "256.0.0.1:99999"},
	} {
		if e, err := ingest.StartEmbedded(cfg, nil, testLogger(t)); err == nil {
			e.Close()
			t.Errorf("%+v: started, want an error", cfg)
		}
	}
	// The address in use is an error that names it.
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	_, err = ingest.StartEmbedded(ingest.EmbeddedConfig{Addr: l.Addr().String()}, nil, testLogger(t))
	if err == nil || !strings.Contains(err.Error(), l.Addr().String()) {
		t.Errorf("address in use: err %v, want it to name the address", err)
	}
}

type sinkFunc func(topic string, payload []byte, h map[string]string, done func(error)) bool

func (f sinkFunc) Append(topic string, payload []byte, h map[string]string, done func(error)) bool {
	return f(topic, payload, h, done)
}
