package agent

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"strings"
	"time"

	"github.com/cloudskin/cloudskin/edge-agent/internal/cells"
	"github.com/cloudskin/cloudskin/shared/protocol"
)

// A cell that migrated keeps reading the stream it read on its old node
// (Input.Node) through the console, which serves what that node spilled
// from the cloud tier and the rest from the node while it is online. Its
// cursor is the cell's own (rc.remote), carried in its checkpoints, so the
// records the cell had not read when it moved are neither skipped nor read
// twice.

const remoteRetry = 5 * time.Second

var remoteHTTP = &http.Client{Timeout: time.Minute}

func (m *cellManager) readRemote(rc *runningCell, cell *cells.Cell, in protocol.Input, stop chan struct{}) {
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	go func() {
		select {
		case <-stop:
			cancel()
		case <-ctx.Done():
		}
	}()
	log := m.log.With("cell", rc.spec.ID, "input", in.Name, "stream", in.Stream, "stream_node", in.Node)
	maxBytes := streamBatchBytes
	limit := cellBatch
	for ctx.Err() == nil {
		m.mu.Lock()
		from := max(rc.remote[in.Name], in.From)
		m.mu.Unlock()
		recs, err := m.remoteRecords(ctx, in.Node, in.Stream, from, limit)
		if err != nil {
			if ctx.Err() != nil {
				return
			}
			log.Warn("remote stream not readable; retrying", "from", from, "err", err, "in", remoteRetry)
			if !sleepCtx(ctx, remoteRetry) {
				return
			}
			continue
		}
		if len(recs) == 0 {
			if !sleepCtx(ctx, streamIdleWait) {
				return
			}
			continue
		}
		batch := make([]cells.Record, 0, len(recs))
		for _, r := range recs {
			if in.InPartition(r.Offset) {
				batch = append(batch, cells.Record{Offset: r.Offset, TimeNS: r.Time.UnixNano(), Topic: r.Topic, Payload: r.Payload})
			}
		}
		commit := func(next uint64) error {
			m.mu.Lock()
			if rc.remote == nil {
				rc.remote = map[string]uint64{}
			}
			rc.remote[in.Name] = next
			m.mu.Unlock()
			return nil
		}
		switch m.deliverStream(ctx, rc, cell, commit, in.Name, batch, recs[len(recs)-1].Offset+1, &maxBytes, log) {
		case deliverStop:
			return
		case deliverHeld:
			if !sleepCtx(ctx, streamIdleWait) {
				return
			}
		}
	}
}

// remoteRecords reads records of another node's stream from offset from.
func (m *cellManager) remoteRecords(ctx context.Context, node, stream string, from uint64, limit int) ([]protocol.StreamRecord, error) {
	u := fmt.Sprintf("%s/api/v1/nodes/%s/streams/%s/records?from=%d&limit=%d", strings.TrimRight(m.a.cfg.Console, "/"),
		url.PathEscape(node), url.PathEscape(stream), from, limit)
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, u, nil)
	if err != nil {
		return nil, err
	}
	req.SetBasicAuth(m.a.cred.Node, m.a.cred.Secret)
	resp, err := remoteHTTP.Do(req)
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(io.LimitReader(resp.Body, 64<<20))
	if err != nil {
		return nil, err
	}
	if resp.StatusCode != http.StatusOK {
		return nil, fmt.Errorf("%s: %s", resp.Status, strings.TrimSpace(string(body)))
	}
	var page struct {
		Records []protocol.StreamRecord `json:"records"`
	}
	if err := json.Unmarshal(body, &page); err != nil {
		return nil, err
	}
	return page.Records, nil
}
