package agent

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"path/filepath"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	paho "github.com/eclipse/paho.mqtt.golang"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/cloudskin/cloudskin/edge-agent/internal/journal"
	"github.com/cloudskin/cloudskin/shared/protocol"
)

// Node events (protocol.NodeEvent) wait in their own durable outbox, a
// journal beside the telemetry outbox, until the broker acknowledged them on
// a connection that stayed up: an event the node took while it could not
// reach the console arrives after the reconnect, and one whose
// acknowledgement was uncertain is sent again (the console keeps one per
// event id). Events are few and tell the operator what the node did on its
// own, so they are not in the telemetry outbox, whose quota drops the oldest
// samples of a long outage.

const (
	eventsDir          = "events"
	eventsMaxBytes     = 4 << 20
	eventsSegmentBytes = 64 << 10
	eventsWindow       = 64 // events in flight at once
)

type eventOutbox struct {
	a    *Agent
	log  *slog.Logger
	j    *journal.Journal
	mu   sync.Mutex // serialises appends with the drop of the oldest
	wake chan struct{}
	seq  atomic.Uint64

	published prometheus.Counter
	dropped   prometheus.Counter
	pending   prometheus.Gauge
}

func openEventOutbox(a *Agent) (*eventOutbox, error) {
	j, err := journal.Open(filepath.Join(a.cfg.Data, eventsDir), journal.Options{MaxBytes: eventsMaxBytes, SegmentSize: eventsSegmentBytes, Logger: a.log})
	if err != nil {
		return nil, fmt.Errorf("event outbox: %w", err)
	}
	o := &eventOutbox{a: a, log: a.log.With("component", "events"), j: j, wake: make(chan struct{}, 1),
		published: prometheus.NewCounter(prometheus.CounterOpts{Name: "cloudskin_agent_events_published_total", Help: "Node events (nodes/{node}/events) acknowledged by the broker."}),
		dropped:   prometheus.NewCounter(prometheus.CounterOpts{Name: "cloudskin_agent_events_dropped_total", Help: "Node events lost: the event outbox was full, or a record was corrupt."}),
		pending:   prometheus.NewGauge(prometheus.GaugeOpts{Name: "cloudskin_agent_events_pending", Help: "Node events waiting in the on-disk event outbox."}),
	}
	a.m.registry.MustRegister(o.published, o.dropped, o.pending)
	o.pending.Set(float64(j.Len()))
	return o, nil
}

func (o *eventOutbox) close() error { return o.j.Close() }

// add names the event and appends it to the outbox; it is sent as soon as
// the node is connected. When the outbox is full the oldest tenth is
// dropped, counted.
func (o *eventOutbox) add(ev protocol.NodeEvent) error {
	ev.Node = o.a.cfg.Name
	if ev.Time.IsZero() {
		ev.Time = time.Now()
	}
	ev.Time = ev.Time.UTC()
	// Unique across restarts: the time in base 36, and a counter for
	// events of the same nanosecond.
	ev.ID = strconv.FormatInt(time.Now().UnixNano(), 36) + "-" + strconv.FormatUint(o.seq.Add(1), 10)
	if err := ev.Validate(ev.Node, ev.Time); err != nil {
		return err
	}
	b, err := json.Marshal(&ev)
	if err != nil {
		return err
	}
	if len(b) > protocol.MaxEventBytes {
		return fmt.Errorf("event %s of %d bytes exceeds %d", ev.Kind, len(b), protocol.MaxEventBytes)
	}
	o.mu.Lock()
	_, _, err = o.j.Append(b)
	if errors.Is(err, journal.ErrFull) {
		n := max(o.j.Len()/10, 1)
		if err = o.j.TruncateFront(o.j.FirstIndex() + n); err == nil {
			o.dropped.Add(float64(n))
			o.log.Warn("event outbox full: dropped the oldest events", "dropped", n)
			_, _, err = o.j.Append(b)
		}
	}
	o.pending.Set(float64(o.j.Len()))
	o.mu.Unlock()
	if err != nil {
		return err
	}
	o.kick()
	return nil
}

// kick asks the send loop to look at the outbox now (an event was added,
// or the node connected).
func (o *eventOutbox) kick() {
	select {
	case o.wake <- struct{}{}:
	default:
	}
}

// run sends the outbox while the node is connected.
func (o *eventOutbox) run(ctx context.Context) error {
	retry := time.Second
	for {
		sent, err := o.sendBatch()
		wait := time.Second
		switch {
		case errors.Is(err, errNotConnected):
			// The connect handler kicks.
		case err != nil:
			o.log.Debug("events not sent; will retry", "err", err)
			wait, retry = retry, min(retry*2, 10*time.Second)
		case sent > 0:
			retry = time.Second
			continue
		}
		select {
		case <-ctx.Done():
			return nil
		case <-o.wake:
		case <-time.After(wait):
		}
	}
}

// sendBatch publishes up to eventsWindow events in order and removes them
// once all were acknowledged on the same connection.
func (o *eventOutbox) sendBatch() (int, error) {
	if o.j.Len() == 0 {
		return 0, nil
	}
	if !o.a.client.IsConnectionOpen() {
		return 0, errNotConnected
	}
	epoch := o.a.epoch.Load()
	first := o.j.FirstIndex()
	last := min(o.j.LastIndex(), first+eventsWindow-1)
	topic := o.a.topics.Node(o.a.cfg.Name, protocol.LeafEvents)
	var flights []paho.Token
	for i := first; i <= last; i++ {
		b, err := o.j.Read(i)
		if err != nil {
			if errors.Is(err, journal.ErrCorrupt) {
				o.dropped.Inc()
				o.log.Error("corrupt event skipped", "index", i, "err", err)
				continue
			}
			return 0, err
		}
		flights = append(flights, o.a.client.Publish(topic, 1, false, b))
	}
	deadline := time.Now().Add(15 * time.Second)
	for _, tok := range flights {
		if !tok.WaitTimeout(time.Until(deadline)) {
			return 0, errors.New("event publish not acknowledged in time")
		}
		if err := tok.Error(); err != nil {
			return 0, err
		}
	}
	if o.a.epoch.Load() != epoch || !o.a.client.IsConnectionOpen() {
		return 0, errors.New("connection changed while publishing events")
	}
	o.mu.Lock()
	err := o.j.TruncateFront(last + 1)
	o.pending.Set(float64(o.j.Len()))
	o.mu.Unlock()
	if err != nil {
		return 0, err
	}
	o.published.Add(float64(len(flights)))
	o.log.Debug("events sent", "events", len(flights))
	return int(last - first + 1), nil
}
