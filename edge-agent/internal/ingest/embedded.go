package ingest

import (
	"errors"
	"fmt"
	"log/slog"
	"net"
	"sync"
	"sync/atomic"

	mqtt "github.com/mochi-mqtt/server/v2"
	"github.com/mochi-mqtt/server/v2/hooks/auth"
	"github.com/mochi-mqtt/server/v2/listeners"
	"github.com/mochi-mqtt/server/v2/packets"
)

// Defaults of EmbeddedConfig.
const (
	DefaultAddr          = "127.0.0.1:1883"
	DefaultMaxPacketSize = 1 << 20
	DefaultMaxPending    = 1024
	// DefaultMaxPendingBytes bounds the memory one client's outstanding
	// messages take (MaxPending messages of MaxPacketSize would be 1 GiB).
	DefaultMaxPendingBytes = 16 << 20
)

// EmbeddedConfig configures the embedded broker. The zero value is the
// production setting.
type EmbeddedConfig struct {
	// Addr is the TCP address sensors connect to; "" means DefaultAddr.
	// Sensors on the node's own network segment are trusted: bind to
	// loopback or a sensor-only interface. Port 0 picks a free port (Addr
	// tells which).
	Addr string
	// MaxPacketSize bounds one MQTT packet in bytes; 0 means
	// DefaultMaxPacketSize. A client that sends a larger one is dropped.
	MaxPacketSize uint32
	// MaxPending bounds, per client, the messages received and not yet
	// acknowledged (QoS 1 and 2) or delivered (QoS 0); 0 means
	// DefaultMaxPending, at most 65535. A client at the bound is not read
	// until acknowledgements drain. MQTT 5 clients are told it as their
	// receive maximum.
	MaxPending int
	// MaxPendingBytes bounds the payload bytes of those messages in the
	// same way; 0 means DefaultMaxPendingBytes. A single larger message is
	// taken when nothing else of its client is pending.
	MaxPendingBytes int
}

func (c EmbeddedConfig) withDefaults() (EmbeddedConfig, error) {
	if c.Addr == "" {
		c.Addr = DefaultAddr
	}
	if c.MaxPacketSize == 0 {
		c.MaxPacketSize = DefaultMaxPacketSize
	}
	if c.MaxPacketSize < 64 {
		return c, fmt.Errorf("ingest: EmbeddedConfig.MaxPacketSize must be at least 64 bytes (0 means %d), got %d", DefaultMaxPacketSize, c.MaxPacketSize)
	}
	if c.MaxPending == 0 {
		c.MaxPending = DefaultMaxPending
	}
	if c.MaxPending < 0 || c.MaxPending > 65535 {
		return c, fmt.Errorf("ingest: EmbeddedConfig.MaxPending must be 1..65535 (0 means %d), got %d", DefaultMaxPending, c.MaxPending)
	}
	if c.MaxPendingBytes == 0 {
		c.MaxPendingBytes = DefaultMaxPendingBytes
	}
	if c.MaxPendingBytes < 0 {
		return c, fmt.Errorf("ingest: EmbeddedConfig.MaxPendingBytes must not be negative (0 means %d), got %d", DefaultMaxPendingBytes, c.MaxPendingBytes)
	}
	return c, nil
}

// Stats counts what a broker did with the messages it received.
type Stats struct {
	Durable     uint64 // stored by the sink, then acknowledged and delivered
	Passed      uint64 // matched no stream: plain broker behaviour
	Full        uint64 // refused by the sink with ErrFull
	Failed      uint64 // refused by the sink with another error
	Dropped     uint64 // QoS 0 messages lost to a refusal (no acknowledgement to withhold)
	Disconnects uint64 // MQTT 3.1.1 clients disconnected over a refusal (no negative ack exists)
	Waits       uint64 // times a client was not read because MaxPending were outstanding
	Redelivered uint64 // external mode: reconnects to get unacknowledged messages again
}

type counters struct {
	durable, passed, full, failed, dropped, disconnects, waits, redelivered atomic.Uint64
}

func (c *counters) stats() Stats {
	return Stats{
		Durable: c.durable.Load(), Passed: c.passed.Load(), Full: c.full.Load(), Failed: c.failed.Load(),
		Dropped: c.dropped.Load(), Disconnects: c.disconnects.Load(), Waits: c.waits.Load(),
		Redelivered: c.redelivered.Load(),
	}
}

// Embedded is the agent's own MQTT broker for sensors (mochi-mqtt), with the
// acknowledgement of durable messages taken over from the library: see the
// package documentation.
//
// QoS 1: the hook answers the library "reject" (no ack, no delivery), queues
// the message and hands it to the sink; when the commit is done and every
// earlier message of the same client is finished, the PUBACK is written and
// the message delivered to local subscribers. The client's read loop goes
// on meanwhile, so its next messages join the same group commits.
//
// QoS 2: the hook waits in the read loop until the message is durable (and
// every earlier one finished), then lets the library send PUBREC and
// deliver. Simple and correct, but a QoS 2 publisher gets one message per
// commit; publishers that want throughput use QoS 1.
//
// QoS 0: handed to the sink and delivered once stored; nothing is
// acknowledged, so a crash before the fsync loses it.
type Embedded struct {
	cfg   EmbeddedConfig
	sink  Sink
	log   *slog.Logger
	srv   *mqtt.Server
	ln    net.Listener
	local *mqtt.Client // inline client that delivers messages after their commit
	stats counters
	warn  limiter

	subIDs   atomic.Int32
	sessions sync.Map // *mqtt.Client → *session
	mu       sync.Mutex
	closed   bool
	wg       sync.WaitGroup
}

// session is one client connection's in-order acknowledgement queue.
type session struct {
	cl   *mqtt.Client
	q    *queue[packets.Packet]
	dead atomic.Bool // disconnected over a refusal: write nothing more
}

// StartEmbedded starts the broker on cfg.Addr. A nil sink makes it a plain
// broker (no stream configured).
func StartEmbedded(cfg EmbeddedConfig, sink Sink, log *slog.Logger) (*Embedded, error) {
	cfg, err := cfg.withDefaults()
	if err != nil {
		return nil, err
	}
	if log == nil {
		log = slog.Default()
	}
	log = log.With("component", "sensor-broker")
	caps := mqtt.NewDefaultServerCapabilities()
	caps.MaximumPacketSize = cfg.MaxPacketSize
	caps.ReceiveMaximum = uint16(cfg.MaxPending)
	srv := mqtt.New(&mqtt.Options{InlineClient: true, Capabilities: caps, Logger: slog.New(quieter{log.Handler(), slog.LevelInfo})})
	e := &Embedded{cfg: cfg, sink: sink, log: log, srv: srv, warn: limiter{log: log}}
	e.local = srv.NewClient(nil, mqtt.LocalListener, "cloudskin-ingest", true)
	if err := srv.AddHook(new(auth.AllowHook), nil); err != nil {
		return nil, err
	}
	if sink != nil {
		if err := srv.AddHook(&hook{e: e}, nil); err != nil {
			return nil, err
		}
	}
	ln, err := net.Listen("tcp", cfg.Addr)
	if err != nil {
		return nil, fmt.Errorf("ingest: sensor broker listener %s: %w", cfg.Addr, err)
	}
	e.ln = ln
	if err := srv.AddListener(listeners.NewNet("sensors", ln)); err != nil {
		ln.Close()
		return nil, fmt.Errorf("ingest: sensor broker listener %s: %w", cfg.Addr, err)
	}
	if err := srv.Serve(); err != nil {
		srv.Close()
		return nil, fmt.Errorf("ingest: sensor broker: %w", err)
	}
	log.Info("sensor broker listening", "addr", e.Addr(), "durable", sink != nil, "max_pending", cfg.MaxPending)
	return e, nil
}

// Addr is the address the broker listens on.
func (e *Embedded) Addr() string { return e.ln.Addr().String() }

// Publish delivers a message from the agent itself (a cell's output) to the
// broker's subscribers, at QoS 0. It does not go to the sink: cells write to
// streams directly.
func (e *Embedded) Publish(topic string, payload []byte) error {
	return e.srv.Publish(topic, payload, false, 0)
}

// Subscribe calls fn for every message on a topic matching filter: a
// durable message once it is stored, any other right away. fn runs on the
// broker's delivery path and must return quickly; it must not modify
// payload.
func (e *Embedded) Subscribe(filter string, fn func(topic string, payload []byte)) error {
	id := int(e.subIDs.Add(1))
	err := e.srv.Subscribe(filter, id, func(_ *mqtt.Client, _ packets.Subscription, pk packets.Packet) {
		fn(pk.TopicName, pk.Payload)
	})
	if err != nil {
		return fmt.Errorf("ingest: subscribe %q: %w", filter, err)
	}
	return nil
}

// Stats returns the counters since start.
func (e *Embedded) Stats() Stats { return e.stats.stats() }

// Close disconnects every client and stops the broker. Messages still being
// committed are not acknowledged; their publishers send them again.
func (e *Embedded) Close() error {
	e.mu.Lock()
	if e.closed {
		e.mu.Unlock()
		return nil
	}
	e.closed = true
	e.mu.Unlock()
	// Wake read loops waiting in the hook first: the library's Close waits
	// for every client's read loop to end.
	e.sessions.Range(func(_, v any) bool {
		v.(*session).q.close()
		return true
	})
	err := e.srv.Close()
	e.wg.Wait()
	return err
}

// session returns cl's session, creating it on its first message; nil once
// the broker is closing.
func (e *Embedded) session(cl *mqtt.Client) *session {
	if v, ok := e.sessions.Load(cl); ok {
		return v.(*session)
	}
	e.mu.Lock()
	defer e.mu.Unlock()
	if e.closed {
		return nil
	}
	s := &session{cl: cl}
	s.q = newQueue(e.cfg.MaxPending, e.cfg.MaxPendingBytes, func(it *item[packets.Packet]) { e.finish(s, it) })
	s.q.onWait = func() { e.stats.waits.Add(1) }
	e.sessions.Store(cl, s)
	e.wg.Add(1)
	go func() {
		defer e.wg.Done()
		s.q.run()
	}()
	return s
}

// onPublish runs in cl's read loop for each message it publishes.
func (e *Embedded) onPublish(cl *mqtt.Client, pk packets.Packet) (packets.Packet, error) {
	s := e.session(cl)
	if s == nil {
		return pk, packets.ErrRejectPacket
	}
	qos := pk.FixedHeader.Qos
	it, ok := s.q.admit(pk, len(pk.Payload)+len(pk.TopicName), qos == 2)
	if !ok {
		return pk, packets.ErrRejectPacket
	}
	done := func(err error) { s.q.complete(it, err) }
	if !e.sink.Append(pk.TopicName, pk.Payload, headers(pk), done) && s.q.bypass(it) {
		e.stats.passed.Add(1)
		return pk, nil // nothing outstanding before it: the library acks and delivers
	}
	if qos < 2 {
		return pk, packets.ErrRejectPacket // finish acks and delivers it in its turn
	}
	select {
	case <-it.wait:
	case <-s.q.stop:
		return pk, packets.ErrRejectPacket
	}
	if it.err != nil || s.dead.Load() {
		return pk, packets.ErrRejectPacket // finish sent the negative PUBREC or disconnected
	}
	return pk, nil // durable: the library sends PUBREC and delivers
}

// finish acknowledges and delivers one message whose turn has come; it runs
// on the session's queue goroutine.
func (e *Embedded) finish(s *session, it *item[packets.Packet]) {
	if s.dead.Load() {
		return
	}
	pk := it.v
	if it.err != nil {
		e.refuse(s, pk, it.err)
		return
	}
	if it.durable {
		e.stats.durable.Add(1)
	} else {
		e.stats.passed.Add(1)
	}
	switch pk.FixedHeader.Qos {
	case 2:
		return // the hook, waiting on it.wait, lets the library go on
	case 1:
		// A client gone meanwhile makes this fail; it resends the message.
		_ = s.cl.WritePacket(packets.Packet{
			FixedHeader: packets.FixedHeader{Type: packets.Puback},
			PacketID:    pk.PacketID,
			ReasonCode:  packets.CodeSuccess.Code,
		})
	}
	e.deliver(pk)
}

// refuse tells the publisher that the sink refused its message.
func (e *Embedded) refuse(s *session, pk packets.Packet, err error) {
	full := errors.Is(err, ErrFull)
	code, reason := packets.ErrUnspecifiedError, "stream write failed"
	if full {
		e.stats.full.Add(1)
		code, reason = packets.ErrQuotaExceeded, "stream full"
	} else {
		e.stats.failed.Add(1)
	}
	qos := pk.FixedHeader.Qos
	if qos == 0 {
		e.stats.dropped.Add(1)
		e.warn.Warn("sensor message dropped: QoS 0 cannot be refused", "client", s.cl.ID, "topic", pk.TopicName, "err", err)
		return
	}
	if s.cl.Properties.ProtocolVersion == 5 {
		typ := packets.Puback
		if qos == 2 {
			typ = packets.Pubrec // a PUBREC with a failure code ends the QoS 2 flow
		}
		_ = s.cl.WritePacket(packets.Packet{
			FixedHeader: packets.FixedHeader{Type: typ},
			PacketID:    pk.PacketID,
			ReasonCode:  code.Code,
			Properties:  packets.Properties{ReasonString: reason},
		})
		e.warn.Warn("sensor message refused", "client", s.cl.ID, "topic", pk.TopicName, "reason_code", code.Code, "err", err)
		return
	}
	// MQTT 3.1.1 has no negative acknowledgement. Dropping the connection
	// is the refusal: the client resends what was not acknowledged after it
	// reconnects, by which time there may be room again.
	s.dead.Store(true)
	e.stats.disconnects.Add(1)
	e.warn.Warn("sensor client disconnected: its message was refused and MQTT 3.1.1 has no negative ack",
		"client", s.cl.ID, "topic", pk.TopicName, "err", err)
	s.cl.Stop(code)
	s.q.close()
}

// deliver hands a message the broker did not deliver itself (the hook
// rejected it to take over its acknowledgement) to subscribers.
func (e *Embedded) deliver(pk packets.Packet) {
	pk.Properties.TopicAlias, pk.Properties.TopicAliasFlag = 0, false // resolved already
	pk.FixedHeader.Dup = false
	if err := e.srv.InjectPacket(e.local, pk); err != nil {
		e.warn.Warn("sensor message not delivered to local subscribers", "topic", pk.TopicName, "err", err)
	}
}

func (e *Embedded) dropSession(cl *mqtt.Client) {
	if v, ok := e.sessions.LoadAndDelete(cl); ok {
		v.(*session).q.close()
	}
}

// headers are a message's MQTT 5 user properties (a repeated key keeps its
// last value); nil when it has none.
func headers(pk packets.Packet) map[string]string {
	if len(pk.Properties.User) == 0 {
		return nil
	}
	h := make(map[string]string, len(pk.Properties.User))
	for _, u := range pk.Properties.User {
		h[u.Key] = u.Val
	}
	return h
}

// hook connects the broker library to the Embedded.
type hook struct {
	mqtt.HookBase
	e *Embedded
}

func (h *hook) ID() string { return "cloudskin-ingest" }

func (h *hook) Provides(b byte) bool { return b == mqtt.OnPublish || b == mqtt.OnDisconnect }

// OnPublish runs synchronously in the publishing client's read loop.
// Inline publishes (cell outputs, and the deliveries of durable messages)
// are not the sensors' and pass straight through.
func (h *hook) OnPublish(cl *mqtt.Client, pk packets.Packet) (packets.Packet, error) {
	if cl.Net.Inline {
		return pk, nil
	}
	return h.e.onPublish(cl, pk)
}

func (h *hook) OnDisconnect(cl *mqtt.Client, _ error, _ bool) { h.e.dropSession(cl) }
