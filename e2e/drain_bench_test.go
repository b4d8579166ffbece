package e2e

import (
	"bytes"
	"encoding/binary"
	"encoding/json"
	"fmt"
	"hash/fnv"
	"math/rand/v2"
	"strconv"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	paho "github.com/eclipse/paho.mqtt.golang"

	"github.com/cloudskin/cloudskin/shared/protocol"
	"github.com/cloudskin/cloudskin/shared/testenv"
)

// The drain scenario's sizes. The cap (2 MiB/s, a 16 Mbit/s uplink) is far
// below what versitygw takes on loopback, so the cap and not the store is
// the limit (the uncapped peer shows it), and it drains the 32 MiB backlog
// in about 16 s: long enough that 20 ms sampling errs by well under 1 %,
// short enough for a run of about a minute. Segments of 256 KiB give about
// 130 sealed segments, and at the cap each takes 125 ms, so the uploader's
// per-segment round trips (target, PUT, commit, state fsync) would show in
// the ratio if they cost more than the limiter's 64 KiB burst absorbs.
const (
	drainCap          = 2 << 20   // --spill-bandwidth, bytes/s
	drainSegmentBytes = 256 << 10 // segment_bytes
	drainPayloadBytes = 4 << 10
	drainBacklogMsgs  = 8192 // 32 MiB of payload published during the outage
	drainPublishers   = 4
	drainLivePerSec   = 80 // 320 KiB/s of payload: about 15 % of the cap
	drainPoll         = 20 * time.Millisecond
	// drainPeakWindow is short enough to catch a limiter that lets bursts
	// through, long enough (16 segments at the cap) that one segment more
	// or less in it moves the rate by only a few percent.
	drainPeakWindow = 2 * time.Second
)

// BenchmarkBacklogDrain measures the streams issue's target "backlog drain
// ≥ 80 % of the bandwidth cap while ingesting live" on real processes: a
// console keeping segments in versitygw, an agent with a spilling stream,
// paho publishers on its sensor broker. The store is stopped while 32 MiB
// are published, then started again while a live publisher keeps sending
// at a steady rate; the agent's spilled_bytes (the encoded segment bytes it
// uploaded, which is also what the cap counts) give the drain rate from
// the first segment committed after the restart until every record that
// existed at the restart is spilled. The uncapped peer runs the same
// scenario without --spill-bandwidth: what the store and console take.
//
// It reports and does not assert the ratio. It does assert that the
// backlog reaches zero and that every acknowledged message reads back,
// unchanged, from the cloud tier through the console.
func BenchmarkBacklogDrain(b *testing.B) {
	for _, bc := range []struct {
		name string
		cap  int64 // bytes/s; 0: no cap
	}{
		{"cap=2MiBps", drainCap},
		{"cap=none", 0},
	} {
		b.Run(bc.name, func(b *testing.B) {
			var runs []drainResult
			for range b.N {
				runs = append(runs, backlogDrain(b, bc.cap))
			}
			r := meanDrain(runs)
			b.ReportMetric(0, "ns/op") // the scenario's wall time means nothing
			b.ReportMetric(r.rate/(1<<20), "drain-MiB/s")
			if bc.cap > 0 {
				b.ReportMetric(r.rate/float64(bc.cap), "of-cap")
				b.ReportMetric(r.peak/float64(bc.cap), "peak-of-cap")
			}
			b.ReportMetric(float64(r.backlog)/(1<<20), "backlog-MiB")
			b.ReportMetric(r.drain.Seconds(), "drain-s")
			b.ReportMetric(r.wait.Seconds(), "wait-s")
			b.ReportMetric(r.liveMsgs, "live-msgs/s")
			b.ReportMetric(r.liveBytes/(1<<10), "live-KiB/s")
		})
	}
}

// drainResult is one run's figures.
type drainResult struct {
	backlog      int64         // encoded bytes spilled from the restart until the backlog was spilled
	backlogLocal int64         // the backlog's local (journal) bytes at the restart
	wait         time.Duration // store restart → first segment committed (the uploader's backoff)
	drain        time.Duration // first segment committed → backlog spilled
	rate         float64       // encoded bytes/s over drain
	peak         float64       // the highest rate between two commits at least drainPeakWindow apart
	liveMsgs     float64       // live messages acknowledged per second
	liveBytes    float64       // live payload bytes acknowledged per second
	records      int           // records read back
}

func meanDrain(runs []drainResult) drainResult {
	var m drainResult
	for _, r := range runs {
		m.backlog += r.backlog
		m.backlogLocal += r.backlogLocal
		m.wait += r.wait
		m.drain += r.drain
		m.rate += r.rate
		m.peak += r.peak
		m.liveMsgs += r.liveMsgs
		m.liveBytes += r.liveBytes
		m.records += r.records
	}
	n := len(runs)
	m.backlog /= int64(n)
	m.backlogLocal /= int64(n)
	m.wait /= time.Duration(n)
	m.drain /= time.Duration(n)
	m.rate /= float64(n)
	m.peak /= float64(n)
	m.liveMsgs /= float64(n)
	m.liveBytes /= float64(n)
	m.records /= n
	return m
}

// drainSample is the agent's spill figures at one moment.
type drainSample struct {
	at             time.Time
	spilledBytes   int64
	spilledThrough uint64
}

func backlogDrain(b *testing.B, capBps int64) drainResult {
	s3 := testenv.NewS3(b)
	c := newConsole(b, backends[0], "--s3-endpoint", s3.Endpoint, "--s3-bucket", s3.Bucket,
		"--s3-access-key", s3.AccessKey, "--s3-secret-key", s3.SecretKey, "--s3-region", s3.Region)
	jwt := c.login()
	var extra []string
	if capBps > 0 {
		extra = append(extra, "--spill-bandwidth", strconv.FormatInt(capBps, 10))
	}
	a := newAgent(b, c, "edge-1", c.token(jwt), "", extra...)
	waitFor(b, 15*time.Second, "edge-1 online", func() error {
		n, err := c.tryNode(jwt, "edge-1")
		if err == nil && n.Status != "online" {
			err = fmt.Errorf("status %s", n.Status)
		}
		return err
	})
	c.do("PUT", "/api/v1/nodes/edge-1/streams/sensors", jwt, map[string]any{
		"topics": []string{"sensors/#"}, "spill": true, "segment_bytes": drainSegmentBytes, "seal_seconds": 1,
	}, 200, nil)
	broker := "tcp://" + flagValue(a.args, "--sensors")
	status := func() protocol.StreamStatus {
		b.Helper()
		st, err := a.streamStatus("sensors")
		if err != nil {
			b.Fatalf("stream status: %v", err)
		}
		return st
	}
	spilled := func(st protocol.StreamStatus) error {
		if st.SpilledThrough != st.NextOffset || st.BacklogBytes != 0 || st.LastUploadError != "" {
			return fmt.Errorf("spilled through %d of %d, backlog %d B, error %q", st.SpilledThrough, st.NextOffset, st.BacklogBytes, st.LastUploadError)
		}
		return nil
	}
	waitFor(b, 30*time.Second, "stream open", func() error { _, err := a.streamStatus("sensors"); return err })

	// A few records first: the uploader runs (the node is enrolled) and the
	// path to the store works before the outage.
	acked := &ackLog{m: map[msgID]bool{}}
	publishAll(b, broker, "warm", 32, 1, acked)
	waitFor(b, 60*time.Second, "warm-up spilled", func() error { return spilled(status()) })

	// The outage: the backlog grows.
	s3.Stop()
	publishAll(b, broker, "backlog", drainBacklogMsgs, drainPublishers, acked)
	waitFor(b, 30*time.Second, "uploads failing", func() error {
		if st := status(); st.LastUploadError == "" {
			return fmt.Errorf("no upload error yet, backlog %d B", st.BacklogBytes)
		}
		return nil
	})
	live := startLive(b, broker, drainLivePerSec, acked)
	time.Sleep(2 * time.Second) // live ingestion at its steady rate before the store returns

	// The store returns: sample the agent's figures until every record that
	// existed at the restart is spilled.
	st0 := status()
	s3.Start()
	restart := time.Now()
	samples := []drainSample{{restart, st0.SpilledBytes, st0.SpilledThrough}}
	// Up to a minute of backoff, then four times the drain at the cap.
	deadline := restart.Add(90*time.Second + 4*time.Second*time.Duration(st0.BacklogBytes/max(capBps, 1<<20)))
	for samples[len(samples)-1].spilledThrough < st0.NextOffset {
		if time.Now().After(deadline) {
			b.Fatalf("backlog not drained after %s: %+v", time.Since(restart).Round(time.Second), status())
		}
		if a.proc.Exited() {
			b.Fatal("the agent exited")
		}
		time.Sleep(drainPoll)
		st := status()
		samples = append(samples, drainSample{time.Now(), st.SpilledBytes, st.SpilledThrough})
	}
	liveMsgs, liveBytes := live.stop(b)

	// Once live ingestion stops the stream drains to zero, and nothing is
	// lost: every acknowledged message reads back from the cloud tier.
	waitFor(b, 60*time.Second, "backlog zero", func() error { return spilled(status()) })
	if st := status(); st.Dropped != 0 || st.Rejected != 0 {
		b.Fatalf("dropped %d, rejected %d records", st.Dropped, st.Rejected)
	}
	records := verifyDrained(b, c, jwt, acked)

	// The window starts at the first commit after the restart (not at the
	// restart: the uploader may still be in its backoff) and ends when the
	// backlog is spilled; the first segment's bytes fall before it.
	first := 1
	for samples[first].spilledBytes == st0.SpilledBytes {
		first++
	}
	last := samples[len(samples)-1]
	r := drainResult{
		backlog:      last.spilledBytes - st0.SpilledBytes,
		backlogLocal: st0.BacklogBytes,
		wait:         samples[first].at.Sub(restart),
		drain:        last.at.Sub(samples[first].at),
		liveMsgs:     liveMsgs,
		liveBytes:    liveBytes,
		records:      records,
	}
	if first < len(samples)-1 {
		r.rate = float64(last.spilledBytes-samples[first].spilledBytes) / r.drain.Seconds()
	} else {
		// Everything in one poll: the rate is at least this.
		r.drain = last.at.Sub(samples[first-1].at)
		r.rate = float64(r.backlog) / r.drain.Seconds()
	}
	r.peak = peakRate(samples[first-1:], drainPeakWindow)
	capText, ratio := "none", ""
	if capBps > 0 {
		capText = fmt.Sprintf("%.2f MiB/s", float64(capBps)/(1<<20))
		ratio = fmt.Sprintf(" (%.1f %% of the cap, at most %.1f %% over %s)", 100*r.rate/float64(capBps), 100*r.peak/float64(capBps), drainPeakWindow)
	}
	b.Logf("cap %s: backlog %.1f MiB encoded (%.1f MiB local, offsets %d..%d) drained at %.2f MiB/s%s in %.1f s, after %.1f s until the first commit; live %.0f msgs/s, %.0f KiB/s; %d records read back",
		capText, float64(r.backlog)/(1<<20), float64(r.backlogLocal)/(1<<20), st0.SpilledThrough, st0.NextOffset-1,
		r.rate/(1<<20), ratio, r.drain.Seconds(), r.wait.Seconds(), r.liveMsgs, r.liveBytes/(1<<10), records)
	return r
}

// peakRate is the highest spill rate between two commits at least window
// apart. A commit is a sample whose spilled bytes grew: it is exact in
// bytes and late by at most one poll.
func peakRate(samples []drainSample, window time.Duration) float64 {
	var commits []drainSample
	for i := 1; i < len(samples); i++ {
		if samples[i].spilledBytes != samples[i-1].spilledBytes {
			commits = append(commits, samples[i])
		}
	}
	peak := 0.0
	for i, c := range commits {
		for _, d := range commits[i+1:] {
			if dt := d.at.Sub(c.at); dt >= window {
				peak = max(peak, float64(d.spilledBytes-c.spilledBytes)/dt.Seconds())
				break
			}
		}
	}
	return peak
}

// msgID names one published message: its publisher's tag and sequence.
type msgID struct {
	tag string
	seq int
}

// ackLog is the set of messages the broker acknowledged.
type ackLog struct {
	mu sync.Mutex
	m  map[msgID]bool
}

func (l *ackLog) add(id msgID) {
	l.mu.Lock()
	l.m[id] = true
	l.mu.Unlock()
}

// drainPayload is message id's payload: its tag and sequence, then bytes
// that follow from them, so a reader can check every byte.
func drainPayload(id msgID) []byte {
	h := fnv.New64a()
	h.Write([]byte(id.tag))
	rng := rand.New(rand.NewPCG(h.Sum64(), uint64(id.seq)))
	p := make([]byte, drainPayloadBytes+8)
	n := copy(p, fmt.Sprintf("%s %d ", id.tag, id.seq))
	for i := n; i < drainPayloadBytes; i += 8 {
		binary.LittleEndian.PutUint64(p[i:], rng.Uint64())
	}
	return p[:drainPayloadBytes]
}

func parseDrainPayload(p []byte) (msgID, bool) {
	parts := bytes.SplitN(p, []byte(" "), 3)
	if len(parts) != 3 {
		return msgID{}, false
	}
	seq, err := strconv.Atoi(string(parts[1]))
	return msgID{string(parts[0]), seq}, err == nil
}

func drainClient(tb testing.TB, broker, id string) paho.Client {
	tb.Helper()
	cl := paho.NewClient(paho.NewClientOptions().AddBroker(broker).SetClientID(id).
		SetAutoReconnect(false).SetConnectRetry(false).SetWriteTimeout(10 * time.Second))
	if tok := cl.Connect(); !tok.WaitTimeout(10*time.Second) || tok.Error() != nil {
		tb.Fatalf("connect %s: %v", id, tok.Error())
	}
	tb.Cleanup(func() { cl.Disconnect(0) })
	return cl
}

// publishAll publishes n QoS 1 messages tagged tag on sensors/{tag} from
// clients publishers, 64 in flight each, and returns once all are
// acknowledged.
func publishAll(tb testing.TB, broker, tag string, n, clients int, acked *ackLog) {
	tb.Helper()
	errs := make(chan error, clients)
	var wg sync.WaitGroup
	for p := range clients {
		cl := drainClient(tb, broker, fmt.Sprintf("drain-%s-%d", tag, p))
		wg.Go(func() {
			type inflight struct {
				id  msgID
				tok paho.Token
			}
			var batch []inflight
			for seq := p; seq < n || len(batch) > 0; seq += clients {
				if seq < n {
					id := msgID{tag, seq}
					batch = append(batch, inflight{id, cl.Publish("sensors/"+tag, 1, false, drainPayload(id))})
				}
				if len(batch) < 64 && seq < n {
					continue
				}
				for _, f := range batch {
					if !f.tok.WaitTimeout(30*time.Second) || f.tok.Error() != nil {
						errs <- fmt.Errorf("publish %v: not acknowledged: %v", f.id, f.tok.Error())
						return
					}
					acked.add(f.id)
				}
				batch = batch[:0]
			}
		})
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		tb.Fatal(err)
	}
}

// livePublisher sends QoS 1 messages on sensors/live at a steady rate.
type livePublisher struct {
	stopc  chan struct{}
	done   chan struct{}
	start  time.Time
	end    time.Time
	acked  atomic.Int64
	failed atomic.Int64
}

func startLive(tb testing.TB, broker string, perSec int, acked *ackLog) *livePublisher {
	tb.Helper()
	cl := drainClient(tb, broker, "drain-live")
	l := &livePublisher{stopc: make(chan struct{}), done: make(chan struct{}), start: time.Now()}
	go func() {
		defer close(l.done)
		var waits sync.WaitGroup
		defer waits.Wait()
		tick := time.NewTicker(time.Second / time.Duration(perSec))
		defer tick.Stop()
		for seq := 0; ; seq++ {
			select {
			case <-l.stopc:
				l.end = time.Now()
				return
			case <-tick.C:
			}
			id := msgID{"live", seq}
			tok := cl.Publish("sensors/live", 1, false, drainPayload(id))
			waits.Go(func() {
				if tok.WaitTimeout(30*time.Second) && tok.Error() == nil {
					acked.add(id)
					l.acked.Add(1)
				} else {
					l.failed.Add(1)
				}
			})
		}
	}()
	tb.Cleanup(func() {
		select {
		case <-l.stopc:
		default:
			close(l.stopc)
		}
		<-l.done
	})
	return l
}

// stop ends the live publisher once its messages are acknowledged and
// returns the acknowledged messages and payload bytes per second.
func (l *livePublisher) stop(tb testing.TB) (msgs, payloadBytes float64) {
	tb.Helper()
	close(l.stopc)
	<-l.done
	if n := l.failed.Load(); n > 0 {
		tb.Fatalf("%d live messages were not acknowledged", n)
	}
	secs := l.end.Sub(l.start).Seconds()
	msgs = float64(l.acked.Load()) / secs
	return msgs, msgs * drainPayloadBytes
}

// verifyDrained reads the whole stream through the console and checks that
// it all comes from the cloud tier, with contiguous offsets, and holds every
// acknowledged message unchanged. It returns the number of records.
func verifyDrained(tb testing.TB, c *consoleEnv, jwt string, acked *ackLog) int {
	tb.Helper()
	seen := map[msgID]int{}
	next := uint64(1)
	for {
		var p recordsPage
		code, raw := c.request("GET", fmt.Sprintf("/api/v1/nodes/edge-1/streams/sensors/records?from=%d&limit=1000", next), jwt, nil)
		if code != 200 || json.Unmarshal(raw, &p) != nil {
			tb.Fatalf("records from %d: %d %.300s", next, code, raw)
		}
		if len(p.Records) == 0 {
			break
		}
		if p.Source != "cloud" {
			tb.Fatalf("records from %d came from %q, not the cloud tier", next, p.Source)
		}
		for _, r := range p.Records {
			if r.Offset != next {
				tb.Fatalf("offset %d follows %d", r.Offset, next-1)
			}
			next++
			id, ok := parseDrainPayload(r.Payload)
			if !ok || r.Topic != "sensors/"+id.tag || !bytes.Equal(r.Payload, drainPayload(id)) {
				tb.Fatalf("record %d (topic %s, %d bytes, %.40q) is not a message that was published", r.Offset, r.Topic, len(r.Payload), r.Payload)
			}
			seen[id]++
		}
		next = p.Next
	}
	acked.mu.Lock()
	defer acked.mu.Unlock()
	missing, dups := 0, 0
	for id := range acked.m {
		if seen[id] == 0 {
			missing++
		}
	}
	for _, n := range seen {
		dups += n - 1
	}
	if missing > 0 {
		tb.Fatalf("%d of %d acknowledged messages are missing from the %d records read back", missing, len(acked.m), next-1)
	}
	if dups > 0 {
		tb.Logf("%d duplicate records (at least once)", dups)
	}
	return int(next - 1)
}
