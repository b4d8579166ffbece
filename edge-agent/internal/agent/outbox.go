package agent

import (
	"context"
	"encoding/json"
	"errors"
	"time"

	paho "github.com/eclipse/paho.mqtt.golang"

	"github.com/cloudskin/cloudskin/edge-agent/internal/journal"
	"github.com/cloudskin/cloudskin/shared/protocol"
)

// sampleLoop takes a sample every interval and appends it to the outbox.
// Sampling never waits for the network.
func (a *Agent) sampleLoop(ctx context.Context) error {
	t := time.NewTicker(a.cfg.TelemetryInterval)
	defer t.Stop()
	var last time.Time
	for {
		if err := a.sampleOnce(ctx, &last); err != nil {
			a.m.sampleErrors.Inc()
			a.log.Error("telemetry sample not stored", "err", err)
		}
		select {
		case <-ctx.Done():
			return nil
		case <-t.C:
		}
	}
}

func (a *Agent) sampleOnce(ctx context.Context, last *time.Time) error {
	now := time.Now().UTC().Truncate(time.Microsecond)
	// The console keeps one sample per (node, time): times must strictly
	// increase even if the clock steps back.
	if !now.After(*last) {
		now = last.Add(time.Microsecond)
	}
	s, err := a.sampler.Sample(ctx, now)
	if err != nil {
		return err
	}
	s.Node = a.cfg.Name
	s.Time = now
	s.Seq = a.outbox.NextIndex()
	b, err := json.Marshal(&s)
	if err != nil {
		return err
	}
	if err := a.appendWithQuota(b); err != nil {
		return err
	}
	*last = now
	a.m.samples.Inc()
	a.updateOutboxGauges()
	a.wake()
	return nil
}

// appendWithQuota appends, dropping the oldest tenth of the outbox (and
// counting it) when the disk quota is reached: an outage longer than the
// quota loses its oldest telemetry, visibly, never the newest.
func (a *Agent) appendWithQuota(b []byte) error {
	_, _, err := a.outbox.Append(b)
	if !errors.Is(err, journal.ErrFull) {
		return err
	}
	n := max(a.outbox.Len()/10, 1)
	first := a.outbox.FirstIndex()
	if err := a.outbox.TruncateFront(first + n); err != nil {
		return err
	}
	a.m.dropped.WithLabelValues("outbox_full").Add(float64(n))
	a.log.Warn("telemetry outbox full: dropped oldest samples", "dropped", n, "quota_bytes", a.cfg.OutboxMaxBytes)
	_, _, err = a.outbox.Append(b)
	return err
}

func (a *Agent) updateOutboxGauges() {
	a.m.outboxRecords.Set(float64(a.outbox.Len()))
	a.m.outboxBytes.Set(float64(a.outbox.SizeBytes()))
}

// sendWindow is how many samples are in flight at once during a back-fill.
const sendWindow = 128

// outboxSegmentBytes keeps segments small: the journal's TruncateFront
// rewrites the rest of a segment, once per acknowledged batch.
const outboxSegmentBytes = 256 << 10

// sendLoop publishes the outbox in order and removes what the broker
// acknowledged. A sample leaves the outbox only after a PUBACK on a
// connection that stayed up; anything uncertain is sent again, and the
// console's (node, time) key makes the repeat harmless.
func (a *Agent) sendLoop(ctx context.Context) error {
	retry := time.Second
	for {
		sent, err := a.sendBatch()
		switch {
		case err != nil:
			a.m.publishFailures.Inc()
			a.log.Debug("telemetry send failed; will retry", "err", err)
			if !sleepCtx(ctx, retry) {
				return nil
			}
			retry = min(retry*2, 10*time.Second)
			continue
		case sent > 0:
			retry = time.Second
			continue // more may be waiting: keep draining
		}
		select {
		case <-ctx.Done():
			return nil
		case <-a.pending:
		case <-time.After(time.Second):
		}
	}
}

var errNotConnected = errors.New("not connected")

func (a *Agent) sendBatch() (int, error) {
	if a.outbox.Len() == 0 {
		return 0, nil
	}
	if !a.client.IsConnectionOpen() {
		return 0, errNotConnected
	}
	epoch := a.epoch.Load()
	first := a.outbox.FirstIndex()
	last := min(a.outbox.LastIndex(), first+sendWindow-1)
	topic := a.topics.Node(a.cfg.Name, protocol.LeafTelemetry)
	var flights []paho.Token
	for i := first; i <= last; i++ {
		b, err := a.outbox.Read(i)
		if err != nil {
			if errors.Is(err, journal.ErrCorrupt) {
				// A damaged record can never be sent; skip it, visibly.
				a.m.dropped.WithLabelValues("corrupt").Inc()
				a.log.Error("corrupt telemetry record skipped", "index", i, "err", err)
				continue
			}
			return 0, err
		}
		flights = append(flights, a.client.Publish(topic, 1, false, b))
	}
	deadline := time.Now().Add(15 * time.Second)
	for _, tok := range flights {
		if !tok.WaitTimeout(time.Until(deadline)) {
			return 0, errors.New("publish not acknowledged in time")
		}
		if err := tok.Error(); err != nil {
			return 0, err
		}
	}
	if a.epoch.Load() != epoch || !a.client.IsConnectionOpen() {
		return 0, errors.New("connection changed while publishing")
	}
	if err := a.outbox.TruncateFront(last + 1); err != nil {
		return 0, err
	}
	n := int(last - first + 1)
	a.m.published.Add(float64(len(flights)))
	a.updateOutboxGauges()
	if n > 1 {
		a.log.Info("telemetry back-filled", "samples", n, "remaining", a.outbox.Len())
	}
	return n, nil
}

func sleepCtx(ctx context.Context, d time.Duration) bool {
	select {
	case <-ctx.Done():
		return false
	case <-time.After(d):
		return true
	}
}
