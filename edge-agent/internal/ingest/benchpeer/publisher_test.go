package benchpeer

import (
	"bytes"
	"fmt"
	"testing"
	"time"

	"golang.org/x/sync/errgroup"
)

// TestPublishers checks each client against ours-durable: every message
// is acknowledged once, with a latency, and stored in the stream as sent.
func TestPublishers(t *testing.T) {
	const pubs, perPub, window = 3, 200, 16
	payload := bytes.Repeat([]byte("x"), 100)
	for _, c := range clients {
		t.Run(c.name, func(t *testing.T) {
			var conns []publisher
			closeAfterBroker(t, &conns)
			e, s := runOurs(t, false)
			conns = dial(t, c, "tcp://"+e.Addr(), pubs, window)
			var g errgroup.Group
			for i, p := range conns {
				g.Go(func() error {
					lat, err := p.publish(topic, payload, perPub)
					if err == nil && len(lat) != perPub {
						err = fmt.Errorf("publisher %d: %d latencies for %d messages", i, len(lat), perPub)
					}
					for _, d := range lat {
						if d <= 0 || d > time.Minute {
							return fmt.Errorf("publisher %d: latency %v", i, d)
						}
					}
					return err
				})
			}
			if err := g.Wait(); err != nil {
				t.Fatal(err)
			}
			if err := checkStored(e, s, pubs*perPub); err != nil {
				t.Fatal(err)
			}
			recs, err := s.Read(s.FirstLocal(), pubs*perPub+1, 0)
			if err != nil {
				t.Fatal(err)
			}
			if len(recs) != pubs*perPub {
				t.Fatalf("the stream holds %d records, want %d", len(recs), pubs*perPub)
			}
			for _, r := range recs {
				if r.Topic != topic || !bytes.Equal(r.Payload, payload) {
					t.Fatalf("record %d: topic %q, %d payload bytes; want %q, %d", r.Offset, r.Topic, len(r.Payload), topic, len(payload))
				}
			}
		})
	}
}
