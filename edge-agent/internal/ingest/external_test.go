package ingest_test

import (
	"errors"
	"fmt"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/cloudskin/cloudskin/edge-agent/internal/ingest"
	"github.com/cloudskin/cloudskin/edge-agent/internal/ingest/ingesttest"
	"github.com/cloudskin/cloudskin/edge-agent/internal/journal"
	"github.com/cloudskin/cloudskin/shared/testenv"
)

func startExternal(t *testing.T, cfg ingest.ExternalConfig, sink ingest.Sink) *ingest.External {
	t.Helper()
	e, err := ingest.StartExternal(cfg, sink, testLogger(t))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { e.Close() })
	return e
}

// counts returns how often each payload is stored.
func counts(t *testing.T, j *journal.Journal) map[string]int {
	t.Helper()
	m := map[string]int{}
	for _, p := range stored(t, j) {
		m[p]++
	}
	return m
}

// Messages published to Mosquitto on a stream's filters are stored in the
// order the broker delivered them and acknowledged: a new connection with
// the same session gets none of them again.
func TestExternalStoresAndAcks(t *testing.T) {
	m := startMosquitto(t)
	sink := newSink(t, journal.Options{}, ingesttest.Options{}) // what arrives is what the filters subscribed
	cfg := ingest.ExternalConfig{Broker: m.URL(), ClientID: "agent-1", Filters: []string{"sensors/#"}, RetryDelay: 200 * time.Millisecond}
	e := startExternal(t, cfg, sink)
	var sub collector
	if err := e.Subscribe("cells/#", sub.add); err != nil {
		t.Fatal(err)
	}

	pub := pahoClient(t, m.URL(), "sensor", nil)
	want := numbered("e", 300)
	publishAll(t, pub, qos1, sensorTopic, want, 64)
	publishAll(t, pub, qos1, func(int) string { return "other/x" }, []string{"not a stream"}, 1)
	eventually(t, "every message stored, in order", func() error {
		if got := stored(t, sink.J); !slices.Equal(got, want) {
			return fmt.Errorf("%d of %d stored (or out of order)", len(got), len(want))
		}
		return nil
	})
	eventually(t, "every message acknowledged", func() error {
		if s := e.Stats(); s.Durable != 300 {
			return fmt.Errorf("stats %+v", s)
		}
		return nil
	})

	// Cell outputs go to the broker; local subscribers get them from it.
	if err := e.Publish("cells/c1/out", []byte("result")); err != nil {
		t.Fatal(err)
	}
	eventually(t, "cell output delivered", func() error {
		if got := sub.payloads(); !slices.Equal(got, []string{"result"}) {
			return fmt.Errorf("got %v", got)
		}
		return nil
	})

	// Acknowledged means the session holds nothing more for us.
	e.Close()
	e2 := startExternal(t, cfg, sink)
	time.Sleep(time.Second)
	if n := sink.J.Len(); n != 300 {
		t.Fatalf("journal holds %d records after reconnecting, want 300: acknowledged messages were redelivered", n)
	}

	// New filters: subscribed now, the old one dropped.
	if err := e2.SetFilters([]string{"other/#"}); err != nil {
		t.Fatal(err)
	}
	publishAll(t, pub, qos1, func(i int) string { return []string{"sensors/x", "other/x"}[i] }, []string{"dropped filter", "new filter"}, 1)
	eventually(t, "message on the new filter stored", func() error {
		if got := stored(t, sink.J); got[len(got)-1] != "new filter" {
			return fmt.Errorf("last stored %q", got[len(got)-1])
		}
		return nil
	})
	time.Sleep(300 * time.Millisecond)
	if n := sink.J.Len(); n != 301 {
		t.Fatalf("journal holds %d records, want 301 (nothing from the dropped filter)", n)
	}
}

// flakySink refuses the first attempt of some messages (a write error, or
// a full stream) and stores everything else and every retry.
type flakySink struct {
	inner ingest.Sink
	fail  func(payload string) error

	mu       sync.Mutex
	attempts map[string]int
}

func (f *flakySink) Append(topic string, payload []byte, h map[string]string, done func(error)) bool {
	p := string(payload)
	f.mu.Lock()
	f.attempts[p]++
	first := f.attempts[p] == 1
	f.mu.Unlock()
	if first {
		if err := f.fail(p); err != nil {
			go done(err)
			return true
		}
	}
	return f.inner.Append(topic, payload, h, done)
}

// A message the sink refuses is not acknowledged; External reconnects and
// Mosquitto redelivers it, so in the end every message is stored
// (duplicates expected).
func TestExternalRedeliversRefused(t *testing.T) {
	m := startMosquitto(t)
	inner := newSink(t, journal.Options{}, sensors)
	var n int
	flaky := &flakySink{inner: inner, attempts: map[string]int{}, fail: func(p string) error {
		if _, err := fmt.Sscanf(p, "r-%d", &n); err != nil {
			return nil
		}
		switch {
		case n%10 == 0:
			return fmt.Errorf("%w: test quota", ingest.ErrFull)
		case n%7 == 0:
			return errors.New("test write error")
		}
		return nil
	}}
	e := startExternal(t, ingest.ExternalConfig{
		Broker: m.URL(), ClientID: "agent-flaky", Filters: []string{"sensors/#"}, RetryDelay: 100 * time.Millisecond,
	}, flaky)
	pub := pahoClient(t, m.URL(), "sensor", nil)
	want := numbered("r", 100)
	publishAll(t, pub, qos1, sensorTopic, want, 16)
	eventually(t, "every message stored in the end", func() error {
		c := counts(t, inner.J)
		for _, p := range want {
			if c[p] == 0 {
				return fmt.Errorf("%s missing (%d distinct stored)", p, len(c))
			}
		}
		return nil
	})
	c := counts(t, inner.J)
	dups := 0
	for _, k := range c {
		dups += k - 1
	}
	s := e.Stats()
	t.Logf("%d messages stored with %d duplicates; stats %+v", len(want), dups, s)
	if s.Full == 0 || s.Failed == 0 || s.Redelivered == 0 {
		t.Fatalf("stats %+v: want refusals of both kinds and at least one reconnect for redelivery", s)
	}
}

// Messages not acknowledged when the agent stops are redelivered to the
// next run with the same client id, with those published meanwhile.
func TestExternalRestartRedelivers(t *testing.T) {
	m := startMosquitto(t)
	inner := newSink(t, journal.Options{}, sensors)
	held := newHeldSink(inner)
	defer held.release()
	cfg := ingest.ExternalConfig{Broker: m.URL(), ClientID: "agent-restart", Filters: []string{"sensors/#"}, RetryDelay: 100 * time.Millisecond}
	e1, err := ingest.StartExternal(cfg, held, testLogger(t))
	if err != nil {
		t.Fatal(err)
	}
	pub := pahoClient(t, m.URL(), "sensor", nil)
	first := numbered("a", 10)
	publishAll(t, pub, qos1, sensorTopic, first, 10)
	eventually(t, "first messages written (their done held back)", func() error {
		if n := inner.J.Len(); n != 10 {
			return fmt.Errorf("%d stored", n)
		}
		return nil
	})
	e1.Close()
	held.release() // done after Close: must not crash, and acks nothing

	second := numbered("b", 10)
	publishAll(t, pub, qos1, sensorTopic, second, 10) // while the agent is away

	e2 := startExternal(t, cfg, inner)
	eventually(t, "everything stored after the restart", func() error {
		c := counts(t, inner.J)
		for _, p := range first {
			if c[p] < 2 {
				return fmt.Errorf("%s stored %d times, want it redelivered", p, c[p])
			}
		}
		for _, p := range second {
			if c[p] == 0 {
				return fmt.Errorf("%s missing", p)
			}
		}
		return nil
	})
	t.Logf("journal holds %d records for 20 messages; stats %+v", inner.J.Len(), e2.Stats())
}

func TestExternalConfigErrors(t *testing.T) {
	port := testenv.FreePort(t) // nothing listens there
	for _, cfg := range []ingest.ExternalConfig{
		{ClientID: "x"},
		{Broker: "tcp://127.0.0.1:1"},
		{Broker: "tcp://127.0.0.1:1", ClientID: "x", RetryDelay: -1},
		{Broker: fmt.Sprintf("tcp://127.0.0.1:%d", port), ClientID: "x", ConnectTimeout: 2 * time.Second},
	} {
		if e, err := ingest.StartExternal(cfg, inertSink{}, testLogger(t)); err == nil {
			e.Close()
			t.Errorf("%+v: started, want an error", cfg)
		} else {
			t.Logf("%v", err)
		}
	}
}

type inertSink struct{}

func (inertSink) Append(string, []byte, map[string]string, func(error)) bool { return false }
