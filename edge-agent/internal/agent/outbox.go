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
	if a.auto != nil {
		// Edge autonomy decides on every sample, connected or not, even
		// if the outbox cannot take it.
		a.auto.observe(now, s.Energy)
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

// appendWithQuota appends. When the disk quota is reached it first frees
// what the broker already acknowledged, then drops the oldest tenth of the
// unsent samples, counted: an outage longer than the quota loses its oldest
// telemetry, visibly, never the newest.
func (a *Agent) appendWithQuota(b []byte) error {
	_, _, err := a.outbox.Append(b)
	if !errors.Is(err, journal.ErrFull) {
		return err
	}
	if acked := a.acked.Load(); acked >= a.outbox.FirstIndex() && acked != 0 {
		if err := a.outbox.TruncateFront(acked + 1); err != nil {
			return err
		}
		if _, _, err = a.outbox.Append(b); !errors.Is(err, journal.ErrFull) {
			return err
		}
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

// unsent is how many samples wait for the broker's acknowledgement.
func (a *Agent) unsent() uint64 {
	next, from := a.outbox.NextIndex(), max(a.outbox.FirstIndex(), a.acked.Load()+1)
	if a.outbox.Len() == 0 || from >= next {
		return 0
	}
	return next - from
}

func (a *Agent) updateOutboxGauges() {
	a.m.outboxRecords.Set(float64(a.unsent()))
	a.m.outboxBytes.Set(float64(a.outbox.SizeBytes()))
}

// sendWindow is how many samples are in flight at once during a back-fill.
const sendWindow = 128

// outboxSegmentBytes keeps segments small: the journal's TruncateFront
// rewrites the rest of a segment.
const outboxSegmentBytes = 256 << 10

// Acknowledged samples are removed from the outbox lazily — after this
// many, or this long — not after every PUBACK: each truncation costs a
// segment rewrite and two fsyncs, which an SD card or eMMC on an idle node
// should not pay every 5 s. Until then the acknowledged prefix stays on
// disk; after a restart it is sent once more and the console drops it as
// duplicates.
const (
	truncateEvery   = 512
	truncateMaxWait = time.Minute
)

// sendLoop publishes the outbox in order and removes what the broker
// acknowledged. A sample leaves the outbox only after a PUBACK on a
// connection that stayed up; anything uncertain is sent again, and the
// console's (node, time) key makes the repeat harmless.
func (a *Agent) sendLoop(ctx context.Context) error {
	retry := time.Second
	a.truncatedAt = time.Now()
	defer func() {
		if err := a.maybeTruncate(true); err != nil {
			a.log.Warn("outbox not trimmed at shutdown", "err", err)
		}
	}()
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
	if err := a.maybeTruncate(false); err != nil {
		return 0, err
	}
	if a.unsent() == 0 {
		return 0, nil
	}
	if !a.client.IsConnectionOpen() {
		return 0, errNotConnected
	}
	epoch := a.epoch.Load()
	first := max(a.outbox.FirstIndex(), a.acked.Load()+1)
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
	a.acked.Store(last)
	n := int(last - first + 1)
	a.m.published.Add(float64(len(flights)))
	a.updateOutboxGauges()
	if n > 1 {
		a.log.Info("telemetry back-filled", "samples", n, "remaining", a.unsent())
	}
	return n, nil
}

// maybeTruncate removes the acknowledged prefix when enough of it has
// gathered, it has waited long enough, or force is set (shutdown).
func (a *Agent) maybeTruncate(force bool) error {
	acked, first := a.acked.Load(), a.outbox.FirstIndex()
	if acked == 0 || first == 0 || acked < first {
		return nil
	}
	if !force && acked-first+1 < truncateEvery && time.Since(a.truncatedAt) < truncateMaxWait {
		return nil
	}
	if err := a.outbox.TruncateFront(acked + 1); err != nil {
		return err
	}
	a.truncatedAt = time.Now()
	a.updateOutboxGauges()
	return nil
}

func sleepCtx(ctx context.Context, d time.Duration) bool {
	select {
	case <-ctx.Done():
		return false
	case <-time.After(d):
		return true
	}
}
