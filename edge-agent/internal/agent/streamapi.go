package agent

import (
	"context"
	"encoding/json"
	"errors"
	"net/http"
	"strconv"
	"time"

	"github.com/cloudskin/cloudskin/edge-agent/internal/streams"
	"github.com/cloudskin/cloudskin/shared/protocol"
)

// The node answers the console's requests about its streams (nodes/{node}/
// requests → replies): the console reads records only the node holds this
// way. The same reads are served on the agent's local HTTP listener for
// whoever is on the node.

const maxRequestBytes = 4 << 10

// readRecords reads up to limit records from offset from, within
// protocol.MaxReplyBytes of payload. Offsets only the object store holds
// are read back through the console (rehydration).
func (m *streamManager) readRecords(ctx context.Context, name string, from uint64, limit int) ([]protocol.StreamRecord, uint64, error) {
	s, ok := m.get(name)
	if !ok {
		return nil, 0, errNoStream
	}
	if limit <= 0 || limit > 1000 {
		limit = 100
	}
	if from < s.FirstLocal() && from < s.Status().FirstOffset {
		from = s.Status().FirstOffset
	}
	recs, err := m.readAny(ctx, s, from, limit, protocol.MaxReplyBytes/2)
	if err != nil {
		return nil, 0, err
	}
	out := make([]protocol.StreamRecord, len(recs))
	next := from
	for i, r := range recs {
		out[i] = protocol.StreamRecord{Offset: r.Offset, Time: r.Time.UTC(), Topic: r.Topic, Headers: r.Headers, Payload: r.Payload}
		next = r.Offset + 1
	}
	return out, next, nil
}

var errNoStream = errors.New("no such stream on this node")

// serveRequest answers one console request.
func (a *Agent) serveRequest(payload []byte) {
	if len(payload) > maxRequestBytes {
		a.log.Warn("oversized console request dropped", "bytes", len(payload))
		return
	}
	var req protocol.Request
	if err := json.Unmarshal(payload, &req); err != nil || req.ID == "" {
		a.log.Warn("malformed console request dropped", "err", err)
		return
	}
	reply := protocol.Reply{ID: req.ID}
	ctx, cancel := context.WithTimeout(context.Background(), 8*time.Second)
	defer cancel()
	fail := func(code int, err error) {
		reply.Code, reply.Error = code, err.Error()
	}
	switch req.Method {
	case protocol.MethodStreamRecords:
		recs, next, err := a.streams.readRecords(ctx, req.Stream, req.From, req.Limit)
		switch {
		case errors.Is(err, errNoStream):
			fail(http.StatusNotFound, err)
		case errors.Is(err, streams.ErrNotLocal):
			fail(http.StatusGone, err)
		case err != nil:
			fail(http.StatusInternalServerError, err)
		default:
			reply.Records, reply.Next = recs, next
		}
	case protocol.MethodStreamOffsetAt:
		s, ok := a.streams.get(req.Stream)
		if !ok {
			fail(http.StatusNotFound, errNoStream)
			break
		}
		off, err := s.OffsetAt(req.Time)
		if err != nil {
			fail(http.StatusGone, err)
			break
		}
		reply.Offset = off
	default:
		fail(http.StatusBadRequest, errors.New("unknown method "+strconv.Quote(req.Method)))
	}
	b, err := json.Marshal(reply)
	if err != nil {
		return
	}
	a.client.Publish(a.topics.Node(a.cfg.Name, protocol.LeafReplies), 1, false, b)
}

// Local HTTP: GET /api/v1/streams, /api/v1/streams/{stream},
// /api/v1/streams/{stream}/records?from=&limit=
func (a *Agent) registerStreamAPI(mux *http.ServeMux) {
	writeJSON := func(w http.ResponseWriter, code int, v any) {
		w.Header().Set("Content-Type", "application/json")
		w.WriteHeader(code)
		json.NewEncoder(w).Encode(v)
	}
	fail := func(w http.ResponseWriter, code int, msg string) {
		writeJSON(w, code, map[string]string{"error": msg})
	}
	mux.HandleFunc("GET /api/v1/streams", func(w http.ResponseWriter, r *http.Request) {
		writeJSON(w, http.StatusOK, map[string]any{"streams": a.streams.status()})
	})
	mux.HandleFunc("GET /api/v1/streams/{stream}", func(w http.ResponseWriter, r *http.Request) {
		s, ok := a.streams.get(r.PathValue("stream"))
		if !ok {
			fail(w, http.StatusNotFound, errNoStream.Error())
			return
		}
		writeJSON(w, http.StatusOK, s.Status())
	})
	mux.HandleFunc("GET /api/v1/streams/{stream}/records", func(w http.ResponseWriter, r *http.Request) {
		q := r.URL.Query()
		var from uint64
		var limit int
		var err error
		if v := q.Get("from"); v != "" {
			if from, err = strconv.ParseUint(v, 10, 64); err != nil {
				fail(w, http.StatusBadRequest, "from: not an offset")
				return
			}
		}
		if v := q.Get("limit"); v != "" {
			if limit, err = strconv.Atoi(v); err != nil || limit < 1 || limit > 1000 {
				fail(w, http.StatusBadRequest, "limit: 1-1000")
				return
			}
		}
		if v := q.Get("since"); v != "" {
			t, err := time.Parse(time.RFC3339Nano, v)
			if err != nil {
				fail(w, http.StatusBadRequest, "since: not an RFC 3339 time")
				return
			}
			s, ok := a.streams.get(r.PathValue("stream"))
			if !ok {
				fail(w, http.StatusNotFound, errNoStream.Error())
				return
			}
			if from, err = s.OffsetAt(t); err != nil {
				fail(w, http.StatusGone, err.Error())
				return
			}
		}
		recs, next, err := a.streams.readRecords(r.Context(), r.PathValue("stream"), from, limit)
		switch {
		case errors.Is(err, errNoStream):
			fail(w, http.StatusNotFound, err.Error())
		case err != nil:
			fail(w, http.StatusBadGateway, err.Error())
		default:
			writeJSON(w, http.StatusOK, map[string]any{"records": recs, "next": next})
		}
	})
}
