package agent

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"sync"
	"time"
)

// The agent forwards what cells emit on dataset outputs (spec.Datasets)
// into the dataspace: engine blobs, batched per dataset, posted to the
// console with the node's credential and the node's position. A queue
// holds what the console has not taken yet (bounded: the oldest go first,
// counted), and is retried every second.

const (
	forwardEvery    = time.Second
	forwardBatch    = 1000
	forwardQueueMax = 100_000
)

type forwarded struct {
	Time time.Time `json:"time"`
	Lat  *float64  `json:"lat,omitempty"`
	Lon  *float64  `json:"lon,omitempty"`
	Blob []byte    `json:"blob"`
}

type datasetForwarder struct {
	a        *Agent
	lat, lon *float64
	mu       sync.Mutex
	queues   map[string][]forwarded
	dropped  uint64
	client   *http.Client
}

func newDatasetForwarder(a *Agent) *datasetForwarder {
	f := &datasetForwarder{a: a, queues: map[string][]forwarded{}, client: &http.Client{Timeout: 30 * time.Second}}
	lat, err1 := strconv.ParseFloat(a.cfg.Lat, 64)
	lon, err2 := strconv.ParseFloat(a.cfg.Lon, 64)
	if err1 == nil && err2 == nil {
		f.lat, f.lon = &lat, &lon
	}
	return f
}

func (f *datasetForwarder) add(dataset string, blob []byte) {
	f.mu.Lock()
	defer f.mu.Unlock()
	q := append(f.queues[dataset], forwarded{Time: time.Now().UTC(), Lat: f.lat, Lon: f.lon, Blob: blob})
	if len(q) > forwardQueueMax {
		f.dropped += uint64(len(q) - forwardQueueMax)
		q = q[len(q)-forwardQueueMax:]
	}
	f.queues[dataset] = q
}

// run sends the queues every second until ctx ends.
func (f *datasetForwarder) run(ctx context.Context) error {
	t := time.NewTicker(forwardEvery)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return nil
		case <-t.C:
		}
		f.mu.Lock()
		var names []string
		for ds, q := range f.queues {
			if len(q) > 0 {
				names = append(names, ds)
			}
		}
		f.mu.Unlock()
		for _, ds := range names {
			for ctx.Err() == nil {
				f.mu.Lock()
				q := f.queues[ds]
				n := min(len(q), forwardBatch)
				batch := append([]forwarded(nil), q[:n]...)
				f.mu.Unlock()
				if n == 0 {
					break
				}
				if err := f.send(ctx, ds, batch); err != nil {
					f.a.log.Warn("dataset readings not forwarded; retrying", "dataset", ds, "queued", len(q), "err", err)
					break
				}
				f.mu.Lock()
				f.queues[ds] = f.queues[ds][n:]
				f.mu.Unlock()
			}
		}
	}
}

func (f *datasetForwarder) send(ctx context.Context, dataset string, batch []forwarded) error {
	body, _ := json.Marshal(map[string]any{"datareads": batch})
	u := strings.TrimRight(f.a.cfg.Console, "/") + "/api/v1/datasets/" + url.PathEscape(dataset) + "/datareads/blobs"
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, u, bytes.NewReader(body))
	if err != nil {
		return err
	}
	req.Header.Set("Content-Type", "application/json")
	req.SetBasicAuth(f.a.cred.Node, f.a.cred.Secret)
	resp, err := f.client.Do(req)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(io.LimitReader(resp.Body, 64<<10))
	if resp.StatusCode != http.StatusOK {
		return fmt.Errorf("%s: %s", resp.Status, strings.TrimSpace(string(b)))
	}
	var res struct {
		Rejected []struct {
			Index int
			Error string
		}
	}
	if json.Unmarshal(b, &res) == nil && len(res.Rejected) > 0 {
		// Refused readings are the console's to count; they are not resent.
		f.a.log.Warn("dataset readings refused", "dataset", dataset, "refused", len(res.Rejected), "first", res.Rejected[0].Error)
	}
	return nil
}
