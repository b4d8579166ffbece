package ingest

import (
	"errors"
	"fmt"
	"log/slog"
	"slices"
	"sync"
	"time"

	paho "github.com/eclipse/paho.mqtt.golang"
)

// Defaults of ExternalConfig.
const (
	DefaultRetryDelay     = 5 * time.Second
	DefaultConnectTimeout = 10 * time.Second
	DefaultKeepAlive      = 30 * time.Second
)

// ErrNotConnected is returned by External.Publish while the broker is
// unreachable.
var ErrNotConnected = errors.New("ingest: not connected to the broker")

// ExternalConfig configures ingestion from a broker the node already runs.
type ExternalConfig struct {
	// Broker is the broker's URL, e.g. tcp://127.0.0.1:1883. Required.
	Broker string
	// ClientID names the agent's persistent session on the broker, which
	// holds the messages not yet acknowledged while the agent is away; it
	// must stay the same across restarts. Required. Publish and Subscribe
	// use a second connection named ClientID+"-local".
	ClientID string
	// Username and Password log in to the broker, if it asks.
	Username, Password string
	// Filters are the durable streams' topic filters, subscribed at QoS 1;
	// SetFilters changes them.
	Filters []string
	// RetryDelay is how long to stay away after the sink refused a message
	// before reconnecting, which makes the broker redeliver what was not
	// acknowledged; 0 means DefaultRetryDelay.
	RetryDelay time.Duration
	// ConnectTimeout bounds the first connection in StartExternal and each
	// attempt after; 0 means DefaultConnectTimeout.
	ConnectTimeout time.Duration
	// KeepAlive is the MQTT keep-alive; 0 means DefaultKeepAlive.
	KeepAlive time.Duration
	// MaxPending bounds the messages received and not yet acknowledged; 0
	// means DefaultMaxPending. The broker's own in-flight window (Mosquitto:
	// max_inflight_messages) normally keeps below it; past it a message is
	// left unacknowledged for redelivery.
	MaxPending int
}

func (c ExternalConfig) withDefaults() (ExternalConfig, error) {
	switch {
	case c.Broker == "":
		return c, errors.New("ingest: ExternalConfig.Broker is required (e.g. tcp://127.0.0.1:1883)")
	case c.ClientID == "":
		return c, errors.New("ingest: ExternalConfig.ClientID is required: the broker keeps unacknowledged messages under it")
	case c.RetryDelay < 0, c.ConnectTimeout < 0, c.KeepAlive < 0:
		return c, fmt.Errorf("ingest: ExternalConfig durations must not be negative (RetryDelay %v, ConnectTimeout %v, KeepAlive %v)",
			c.RetryDelay, c.ConnectTimeout, c.KeepAlive)
	case c.MaxPending < 0:
		return c, fmt.Errorf("ingest: ExternalConfig.MaxPending must not be negative (0 means %d), got %d", DefaultMaxPending, c.MaxPending)
	}
	if c.RetryDelay == 0 {
		c.RetryDelay = DefaultRetryDelay
	}
	if c.ConnectTimeout == 0 {
		c.ConnectTimeout = DefaultConnectTimeout
	}
	if c.KeepAlive == 0 {
		c.KeepAlive = DefaultKeepAlive
	}
	if c.MaxPending == 0 {
		c.MaxPending = DefaultMaxPending
	}
	c.Filters = slices.Clone(c.Filters)
	return c, nil
}

// External ingests from an existing broker (Mosquitto on the node): it
// subscribes to the durable streams' filters with a persistent session
// (CleanSession=false, a fixed client id, QoS 1) and acknowledges each
// message only after the sink stored it (paho's automatic ack is off).
//
// A message the sink refuses is not acknowledged. The broker sends it again
// only on a new connection, so after a refusal External disconnects, waits
// RetryDelay (the broker queues meanwhile: back-pressure into the broker,
// bounded by its max_queued_messages), and reconnects; the broker then
// redelivers everything unacknowledged. Duplicates are expected.
//
// Messages reach the sink in the order the broker sent them: paho's handler
// runs in order (SetOrderMatters(true)) but only queues the message and
// returns at once, so keep-alives are never stalled (the pitfall with
// ordered paho handlers is a handler that blocks).
type External struct {
	cfg   ExternalConfig
	sink  Sink
	log   *slog.Logger
	stats counters
	warn  limiter

	q       *queue[inbound]
	appends chan *item[inbound]
	retry   chan struct{} // cap 1: reconnect to get unacknowledged messages redelivered
	stop    chan struct{}
	wg      sync.WaitGroup

	mu      sync.Mutex
	client  paho.Client // the ingest connection; replaced on every reconnect External makes
	local   paho.Client // Publish and Subscribe
	filters []string
	dropped []string // filters removed while not connected: unsubscribed on the next connection
	subs    []localSub
	closed  bool

	subMu sync.Mutex // serializes changes of the ingest connection's subscriptions
}

// inbound is a message and the connection it came on.
type inbound struct {
	msg    paho.Message
	client paho.Client
}

type localSub struct {
	filter string
	fn     func(topic string, payload []byte)
}

// StartExternal connects to cfg.Broker and starts ingesting. It fails if the
// broker cannot be reached within cfg.ConnectTimeout; after that it
// reconnects on its own for as long as it runs.
func StartExternal(cfg ExternalConfig, sink Sink, log *slog.Logger) (*External, error) {
	cfg, err := cfg.withDefaults()
	if err != nil {
		return nil, err
	}
	if sink == nil {
		return nil, errors.New("ingest: StartExternal needs a sink")
	}
	if log == nil {
		log = slog.Default()
	}
	log = log.With("component", "sensor-ingest", "broker", cfg.Broker, "client_id", cfg.ClientID)
	e := &External{
		cfg: cfg, sink: sink, log: log, warn: limiter{log: log},
		appends: make(chan *item[inbound], cfg.MaxPending),
		retry:   make(chan struct{}, 1),
		stop:    make(chan struct{}),
		filters: cfg.Filters,
	}
	e.q = newQueue(cfg.MaxPending, DefaultMaxPendingBytes, e.finish)

	c := e.newIngestClient(false)
	if err := connect(c, cfg.ConnectTimeout); err != nil {
		return nil, fmt.Errorf("ingest: connect to %s as %q: %w", cfg.Broker, cfg.ClientID, err)
	}
	e.client = c
	e.local = paho.NewClient(e.clientOptions(cfg.ClientID+"-local", false).
		SetCleanSession(true).
		SetOnConnectHandler(e.resubscribeLocal))
	if err := connect(e.local, cfg.ConnectTimeout); err != nil {
		c.Disconnect(250)
		return nil, fmt.Errorf("ingest: connect to %s as %q: %w", cfg.Broker, cfg.ClientID+"-local", err)
	}

	e.wg.Add(3)
	go func() { defer e.wg.Done(); e.q.run() }()
	go func() { defer e.wg.Done(); e.appendLoop() }()
	go func() { defer e.wg.Done(); e.reconnectLoop() }()
	log.Info("ingesting from external broker", "filters", cfg.Filters)
	return e, nil
}

func connect(c paho.Client, timeout time.Duration) error {
	tok := c.Connect()
	if !tok.WaitTimeout(timeout) {
		c.Disconnect(0)
		return fmt.Errorf("no answer within %v", timeout)
	}
	return tok.Error()
}

func (e *External) clientOptions(id string, retry bool) *paho.ClientOptions {
	o := paho.NewClientOptions().
		AddBroker(e.cfg.Broker).
		SetClientID(id).
		SetKeepAlive(e.cfg.KeepAlive).
		SetConnectTimeout(e.cfg.ConnectTimeout).
		SetAutoReconnect(true).
		SetMaxReconnectInterval(max(e.cfg.RetryDelay, 10*time.Second)).
		SetConnectRetry(retry).
		SetConnectRetryInterval(e.cfg.RetryDelay).
		SetOrderMatters(true). // handlers only queue; see External
		SetConnectionLostHandler(func(_ paho.Client, err error) {
			e.log.Warn("connection to broker lost; reconnecting", "client", id, "err", err)
		})
	if e.cfg.Username != "" {
		o.SetUsername(e.cfg.Username).SetPassword(e.cfg.Password)
	}
	return o
}

// newIngestClient makes the ingest connection: persistent session, manual
// acknowledgement, every message to onMessage (subscriptions have no
// handlers of their own, so messages that arrive before the subscriptions
// are renewed after a reconnect are handled too).
func (e *External) newIngestClient(retry bool) paho.Client {
	var c paho.Client
	o := e.clientOptions(e.cfg.ClientID, retry).
		SetCleanSession(false).
		SetAutoAckDisabled(true).
		SetDefaultPublishHandler(func(_ paho.Client, m paho.Message) { e.onMessage(c, m) }).
		SetOnConnectHandler(e.resubscribe)
	c = paho.NewClient(o)
	return c
}

// onMessage runs on paho's router goroutine, in the order the broker sent
// the messages. It must not block.
func (e *External) onMessage(c paho.Client, m paho.Message) {
	if m.Retained() {
		// A retained message replayed because we (re)subscribed, not a new
		// reading: stored when it was published.
		m.Ack()
		e.stats.passed.Add(1)
		return
	}
	it, ok := e.q.tryAdmit(inbound{msg: m, client: c}, len(m.Payload())+len(m.Topic()))
	if !ok && e.q.closed() {
		return // closing: unacknowledged, so redelivered to the next run
	}
	if !ok {
		e.stats.dropped.Add(1)
		e.warn.Warn("too many messages pending; leaving one unacknowledged for redelivery", "topic", m.Topic(), "max_pending", e.cfg.MaxPending)
		e.requestRetry(c)
		return
	}
	e.appends <- it // never blocks: it holds at most MaxPending, as the queue
}

// appendLoop hands queued messages to the sink in order.
func (e *External) appendLoop() {
	for {
		select {
		case <-e.stop:
			return
		case it := <-e.appends:
			in := it.v
			if in.client != e.current() {
				// Its connection is gone, so its ack could not be sent:
				// the broker redelivers it on the new connection.
				e.q.complete(it, errStale)
				continue
			}
			if !e.sink.Append(in.msg.Topic(), in.msg.Payload(), nil, func(err error) { e.q.complete(it, err) }) {
				e.q.pass(it)
			}
		}
	}
}

var errStale = errors.New("ingest: message from a closed connection")

// finish acknowledges a message the sink stored, in arrival order.
func (e *External) finish(it *item[inbound]) {
	in := it.v
	switch {
	case errors.Is(it.err, errStale):
		return
	case it.err != nil:
		if errors.Is(it.err, ErrFull) {
			e.stats.full.Add(1)
		} else {
			e.stats.failed.Add(1)
		}
		e.warn.Warn("sensor message refused; left unacknowledged for redelivery", "topic", in.msg.Topic(), "err", it.err)
		e.requestRetry(in.client)
		return
	case it.durable:
		e.stats.durable.Add(1)
	default:
		e.stats.passed.Add(1)
	}
	in.msg.Ack() // dropped by paho if the connection is gone: then it is redelivered
}

// requestRetry asks for a reconnect if the refused message came on the
// current connection (one from an older connection is redelivered already).
func (e *External) requestRetry(from paho.Client) {
	if from == e.current() {
		signal(e.retry)
	}
}

func (e *External) current() paho.Client {
	e.mu.Lock()
	defer e.mu.Unlock()
	return e.client
}

// reconnectLoop leaves and rejoins the broker after a refusal so that it
// redelivers what was not acknowledged.
func (e *External) reconnectLoop() {
	for {
		select {
		case <-e.stop:
			return
		case <-e.retry:
		}
		e.stats.redelivered.Add(1)
		e.log.Warn("disconnecting to have refused messages redelivered", "reconnect_in", e.cfg.RetryDelay)
		e.current().Disconnect(250)
		select {
		case <-e.stop:
			return
		case <-time.After(e.cfg.RetryDelay):
		}
		c := e.newIngestClient(true) // retries until it connects
		e.mu.Lock()
		if e.closed {
			e.mu.Unlock()
			return
		}
		e.client = c
		e.mu.Unlock()
		tok := c.Connect()
		select {
		case <-e.stop:
			c.Disconnect(250) // Close may have come before Connect
			return
		case <-tok.Done():
		}
		if err := tok.Error(); err != nil {
			e.log.Error("reconnect failed", "err", err) // with ConnectRetry only on Disconnect
		}
	}
}

// resubscribe renews the durable subscriptions on every (re)connection.
// The persistent session would keep them, but the filters may have changed
// while away.
func (e *External) resubscribe(c paho.Client) {
	e.subMu.Lock()
	defer e.subMu.Unlock()
	e.mu.Lock()
	filters, dropped := slices.Clone(e.filters), slices.Clone(e.dropped)
	e.mu.Unlock()
	if len(dropped) > 0 {
		if err := unsubscribe(c, dropped, e.cfg.ConnectTimeout); err != nil {
			e.log.Error("unsubscribe from dropped stream filters failed", "filters", dropped, "err", err)
		} else {
			e.mu.Lock()
			e.dropped = slices.DeleteFunc(e.dropped, func(f string) bool { return slices.Contains(dropped, f) })
			e.mu.Unlock()
		}
	}
	if err := subscribe(c, filters, 1, e.cfg.ConnectTimeout); err != nil {
		e.log.Error("subscribe to stream filters failed", "filters", filters, "err", err)
	}
}

func unsubscribe(c paho.Client, filters []string, timeout time.Duration) error {
	tok := c.Unsubscribe(filters...)
	if !tok.WaitTimeout(timeout) {
		return fmt.Errorf("no answer within %v", timeout)
	}
	return tok.Error()
}

func subscribe(c paho.Client, filters []string, qos byte, timeout time.Duration) error {
	if len(filters) == 0 {
		return nil
	}
	m := make(map[string]byte, len(filters))
	for _, f := range filters {
		m[f] = qos
	}
	tok := c.SubscribeMultiple(m, nil)
	if !tok.WaitTimeout(timeout) {
		return fmt.Errorf("no answer within %v", timeout)
	}
	if err := tok.Error(); err != nil {
		return err
	}
	for f, code := range tok.(*paho.SubscribeToken).Result() {
		if code == 0x80 {
			return fmt.Errorf("broker refused the subscription to %q", f)
		}
	}
	return nil
}

// SetFilters replaces the durable streams' filters: new ones are subscribed,
// dropped ones unsubscribed (on the next connection if not connected now).
func (e *External) SetFilters(filters []string) error {
	e.subMu.Lock()
	defer e.subMu.Unlock()
	e.mu.Lock()
	old := e.filters
	e.filters = slices.Clone(filters)
	e.dropped = slices.DeleteFunc(e.dropped, func(f string) bool { return slices.Contains(filters, f) })
	c := e.client
	e.mu.Unlock()
	var added, removed []string
	for _, f := range filters {
		if !slices.Contains(old, f) {
			added = append(added, f)
		}
	}
	for _, f := range old {
		if !slices.Contains(filters, f) {
			removed = append(removed, f)
		}
	}
	if !c.IsConnectionOpen() {
		// The persistent session keeps the old subscriptions: resubscribe
		// drops these and subscribes the new set on the next connection.
		e.mu.Lock()
		e.dropped = append(e.dropped, removed...)
		e.mu.Unlock()
		return nil
	}
	if len(removed) > 0 {
		if err := unsubscribe(c, removed, e.cfg.ConnectTimeout); err != nil {
			return fmt.Errorf("ingest: unsubscribe %v: %w", removed, err)
		}
	}
	if err := subscribe(c, added, 1, e.cfg.ConnectTimeout); err != nil {
		return fmt.Errorf("ingest: subscribe %v: %w", added, err)
	}
	e.log.Info("stream filters changed", "filters", filters)
	return nil
}

// Publish sends a message from the agent itself (a cell's output) to the
// broker at QoS 0; it does not go to the sink.
func (e *External) Publish(topic string, payload []byte) error {
	e.mu.Lock()
	c := e.local
	e.mu.Unlock()
	if !c.IsConnectionOpen() {
		return ErrNotConnected
	}
	c.Publish(topic, 0, false, payload)
	return nil
}

// Subscribe calls fn for every message on a topic matching filter, as the
// broker delivers it (at QoS 0, on the second connection: not after the
// sink stored it). fn runs on the connection's delivery goroutine, in
// order, and must return quickly. While the broker is unreachable the
// subscription is made on the next connection.
func (e *External) Subscribe(filter string, fn func(topic string, payload []byte)) error {
	e.mu.Lock()
	e.subs = append(e.subs, localSub{filter, fn})
	c := e.local
	e.mu.Unlock()
	if !c.IsConnectionOpen() {
		return nil // resubscribeLocal subscribes it on the next connection
	}
	tok := c.Subscribe(filter, 0, func(_ paho.Client, m paho.Message) { fn(m.Topic(), m.Payload()) })
	if !tok.WaitTimeout(e.cfg.ConnectTimeout) {
		return fmt.Errorf("ingest: subscribe %q: no answer within %v", filter, e.cfg.ConnectTimeout)
	}
	if err := tok.Error(); err != nil {
		return fmt.Errorf("ingest: subscribe %q: %w", filter, err)
	}
	return nil
}

func (e *External) resubscribeLocal(c paho.Client) {
	e.mu.Lock()
	subs := slices.Clone(e.subs)
	e.mu.Unlock()
	for _, s := range subs {
		fn := s.fn
		tok := c.Subscribe(s.filter, 0, func(_ paho.Client, m paho.Message) { fn(m.Topic(), m.Payload()) })
		if tok.WaitTimeout(e.cfg.ConnectTimeout) && tok.Error() == nil {
			continue
		}
		e.log.Error("resubscribe failed", "filter", s.filter, "err", tok.Error())
	}
}

// Stats returns the counters since start.
func (e *External) Stats() Stats { return e.stats.stats() }

// Close disconnects. Messages not yet acknowledged stay with the broker's
// session and are redelivered when an External with the same ClientID
// connects again.
func (e *External) Close() error {
	e.mu.Lock()
	if e.closed {
		e.mu.Unlock()
		return nil
	}
	e.closed = true
	c, local := e.client, e.local
	e.mu.Unlock()
	close(e.stop)
	e.q.close()
	c.Disconnect(250)
	local.Disconnect(250)
	e.wg.Wait()
	return nil
}
