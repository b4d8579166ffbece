package e2e

import (
	"encoding/json"
	"fmt"
	"net/http"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	paho "github.com/eclipse/paho.mqtt.golang"

	"github.com/cloudskin/cloudskin/shared/protocol"
)

// localRecords reads a whole stream through the agent's local HTTP API.
func (a *agentEnv) localRecords(t *testing.T, stream string) []protocol.StreamRecord {
	t.Helper()
	var all []protocol.StreamRecord
	from := uint64(0)
	for {
		var page struct {
			Records []protocol.StreamRecord `json:"records"`
			Next    uint64                  `json:"next"`
		}
		url := fmt.Sprintf("http://127.0.0.1:%d/api/v1/streams/%s/records?from=%d&limit=1000", a.httpPort, stream, from)
		resp, err := http.Get(url)
		if err != nil {
			t.Fatalf("read %s: %v", url, err)
		}
		err = json.NewDecoder(resp.Body).Decode(&page)
		resp.Body.Close()
		if resp.StatusCode != 200 || err != nil {
			t.Fatalf("read %s: %d %v", url, resp.StatusCode, err)
		}
		if len(page.Records) == 0 {
			return all
		}
		all = append(all, page.Records...)
		from = page.Next
	}
}

func (a *agentEnv) streamStatus(stream string) (protocol.StreamStatus, error) {
	var st protocol.StreamStatus
	resp, err := http.Get(fmt.Sprintf("http://127.0.0.1:%d/api/v1/streams/%s", a.httpPort, stream))
	if err != nil {
		return st, err
	}
	defer resp.Body.Close()
	if resp.StatusCode != 200 {
		return st, fmt.Errorf("status %d", resp.StatusCode)
	}
	return st, json.NewDecoder(resp.Body).Decode(&st)
}

type sensorMsg struct {
	P   int `json:"p"`
	Seq int `json:"seq"`
}

// TestStreamIngestKill9 kills the agent with SIGKILL in the middle of a
// loaded QoS 1 ingest and proves that every message a publisher got a PUBACK
// for is in the stream after the restart. Messages in flight at the kill may
// be in the stream without their PUBACK having reached the publisher; a
// publisher that resends them creates duplicates (at-least-once), which the
// test counts and reports.
func TestStreamIngestKill9(t *testing.T) {
	c := newConsole(t, backends[0])
	jwt := c.login()
	stream := `{"name":"sensors","topics":["sensors/#"],"segment_bytes":65536}`
	a := newAgent(t, c, "edge-1", c.token(jwt), "", "--stream", stream)
	sensors := "tcp://" + flagValue(a.args, "--sensors")
	waitFor(t, 30*time.Second, "stream open", func() error { _, err := a.streamStatus("sensors"); return err })

	const publishers = 8
	var (
		mu    sync.Mutex
		acked = map[sensorMsg]bool{}
		sent  atomic.Int64
		stop  atomic.Bool
		wg    sync.WaitGroup
	)
	for p := range publishers {
		cl := paho.NewClient(paho.NewClientOptions().AddBroker(sensors).SetClientID(fmt.Sprintf("load-%d", p)).
			SetAutoReconnect(false).SetConnectRetry(false).SetMaxResumePubInFlight(64).SetWriteTimeout(5 * time.Second))
		if tok := cl.Connect(); !tok.WaitTimeout(10*time.Second) || tok.Error() != nil {
			t.Fatalf("publisher %d: %v", p, tok.Error())
		}
		defer cl.Disconnect(0)
		wg.Add(1)
		go func() {
			defer wg.Done()
			window := make(chan struct{}, 32) // messages in flight per publisher
			var inner sync.WaitGroup
			for seq := 0; !stop.Load() && cl.IsConnectionOpen(); seq++ {
				window <- struct{}{}
				m := sensorMsg{P: p, Seq: seq}
				b, _ := json.Marshal(m)
				tok := cl.Publish(fmt.Sprintf("sensors/p%d", p), 1, false, b)
				sent.Add(1)
				inner.Add(1)
				go func() {
					defer inner.Done()
					defer func() { <-window }()
					if tok.WaitTimeout(20*time.Second) && tok.Error() == nil {
						mu.Lock()
						acked[m] = true
						mu.Unlock()
					}
				}()
			}
			inner.Wait()
		}()
	}
	// Let the load run, then kill the agent in the middle of it.
	waitFor(t, 30*time.Second, "a loaded ingest", func() error {
		mu.Lock()
		n := len(acked)
		mu.Unlock()
		if n < 3000 {
			return fmt.Errorf("%d acknowledged", n)
		}
		return nil
	})
	a.proc.Kill(syscall.SIGKILL)
	stop.Store(true)
	wg.Wait()
	mu.Lock()
	nAcked := len(acked)
	mu.Unlock()
	t.Logf("sent %d, acknowledged %d before the kill", sent.Load(), nAcked)

	a.start()
	waitFor(t, 30*time.Second, "agent back with its stream", func() error { _, err := a.streamStatus("sensors"); return err })
	recs := a.localRecords(t, "sensors")
	seen := map[sensorMsg]int{}
	var prev uint64
	for i, r := range recs {
		if i > 0 && r.Offset != prev+1 {
			t.Fatalf("offsets jump from %d to %d", prev, r.Offset)
		}
		prev = r.Offset
		var m sensorMsg
		if err := json.Unmarshal(r.Payload, &m); err != nil {
			t.Fatalf("record %d: %q: %v", r.Offset, r.Payload, err)
		}
		seen[m]++
	}
	lost, dups, unackedStored := 0, 0, 0
	for m := range acked {
		if seen[m] == 0 {
			lost++
		}
	}
	for m, n := range seen {
		dups += n - 1
		if !acked[m] {
			unackedStored++
		}
	}
	t.Logf("stream holds %d records: %d distinct, %d duplicates, %d stored without their PUBACK reaching the publisher", len(recs), len(seen), dups, unackedStored)
	if lost > 0 {
		t.Fatalf("%d acknowledged messages are not in the stream after kill -9", lost)
	}
	// The stream keeps taking messages after the restart, at the next offset.
	pub := paho.NewClient(paho.NewClientOptions().AddBroker(sensors).SetClientID("after"))
	if tok := pub.Connect(); !tok.WaitTimeout(10*time.Second) || tok.Error() != nil {
		t.Fatal(tok.Error())
	}
	defer pub.Disconnect(0)
	if tok := pub.Publish("sensors/after", 1, false, `{"p":99,"seq":0}`); !tok.WaitTimeout(10*time.Second) || tok.Error() != nil {
		t.Fatal(tok.Error())
	}
	st, err := a.streamStatus("sensors")
	if err != nil || st.NextOffset != prev+2 {
		t.Fatalf("after restart: next offset %d (want %d), %v", st.NextOffset, prev+2, err)
	}
}
