package agent

import (
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"slices"
	"sort"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/cloudskin/cloudskin/edge-agent/internal/ingest"
	"github.com/cloudskin/cloudskin/edge-agent/internal/streams"
	"github.com/cloudskin/cloudskin/shared/protocol"
)

const streamsDir = "streams"

// streamManager owns the node's durable streams: those of the local config
// (a node that must ingest before it ever reaches the console) and those of
// the desired state; a local one wins a name clash. It routes ingested
// messages to the streams whose filters match (ingest.Sink), runs one
// uploader per spilling stream, and reports every stream's figures.
type streamManager struct {
	a   *Agent
	dir string
	log *slog.Logger

	mu      sync.RWMutex
	local   []protocol.StreamSpec
	streams map[string]*streamEntry
	// changed is called (outside mu) after the set of streams or their
	// topics changed: the external ingestion broker resubscribes.
	changed func(filters []string)
	spill   *spillClient // nil until the node has a credential (tests without a console)
}

type streamEntry struct {
	s      *streams.Stream
	local  bool
	stop   chan struct{} // closes the uploader
	done   chan struct{}
	rateAt time.Time
	rateN  uint64
	rate   float64
}

func newStreamManager(a *Agent, local []protocol.StreamSpec) (*streamManager, error) {
	m := &streamManager{a: a, dir: filepath.Join(a.cfg.Data, streamsDir), log: a.log.With("component", "streams"), local: local, streams: map[string]*streamEntry{}}
	// The spill client exists before the first streams open, so a local
	// stream with spill on starts its uploader with them.
	m.spill = newSpillClient(a)
	if err := os.MkdirAll(m.dir, 0o700); err != nil {
		return nil, fmt.Errorf("streams dir: %w", err)
	}
	if err := m.apply(nil); err != nil {
		m.close()
		return nil, err
	}
	return m, nil
}

// apply opens, updates and closes streams so that exactly the local ones and
// desired ones run. A closed stream keeps its data on disk: declaring it again
// continues it.
func (m *streamManager) apply(desired []protocol.StreamSpec) error {
	want := map[string]protocol.StreamSpec{}
	isLocal := map[string]bool{}
	for _, s := range desired {
		want[s.Name] = s
	}
	for _, s := range m.local {
		want[s.Name] = s
		isLocal[s.Name] = true
	}
	var errs []error
	m.mu.Lock()
	for name, e := range m.streams {
		if _, ok := want[name]; !ok {
			m.closeEntry(e)
			delete(m.streams, name)
			m.log.Info("stream closed (no longer declared; data kept)", "stream", name)
		}
	}
	for name, spec := range want {
		if e, ok := m.streams[name]; ok {
			if !sameStreamSpec(e.s.Spec(), spec) {
				if err := e.s.Update(spec); err != nil {
					errs = append(errs, fmt.Errorf("stream %s: %w", name, err))
				} else {
					m.log.Info("stream updated", "stream", name)
					m.restartUploader(e)
				}
			}
			e.local = isLocal[name]
			continue
		}
		s, err := streams.Open(filepath.Join(m.dir, name), spec, streams.Options{Logger: m.log.With("stream", name)})
		if err != nil {
			errs = append(errs, fmt.Errorf("stream %s: %w", name, err))
			continue
		}
		e := &streamEntry{s: s, local: isLocal[name], rateAt: time.Now()}
		m.streams[name] = e
		m.startUploader(e)
		m.log.Info("stream open", "stream", name, "topics", spec.Topics, "first", s.FirstLocal(), "next", s.NextOffset(), "spill", spec.Spill)
	}
	filters := m.filtersLocked()
	changed := m.changed
	m.mu.Unlock()
	if changed != nil {
		changed(filters)
	}
	return errors.Join(errs...)
}

func sameStreamSpec(a, b protocol.StreamSpec) bool {
	return fmt.Sprintf("%+v", a) == fmt.Sprintf("%+v", b)
}

func (m *streamManager) filtersLocked() []string {
	var out []string
	for _, e := range m.streams {
		for _, f := range e.s.Spec().Topics {
			if !slices.Contains(out, f) {
				out = append(out, f)
			}
		}
	}
	sort.Strings(out)
	return out
}

// onChange sets the function told about the streams' topic filters after
// every change.
func (m *streamManager) onChange(f func(filters []string)) {
	m.mu.Lock()
	m.changed = f
	m.mu.Unlock()
}

// filters returns every topic filter of every stream.
func (m *streamManager) filters() []string {
	m.mu.RLock()
	defer m.mu.RUnlock()
	return m.filtersLocked()
}

func (m *streamManager) closeEntry(e *streamEntry) {
	if e.stop != nil {
		close(e.stop)
		<-e.done
		e.stop = nil
	}
	if err := e.s.Close(); err != nil {
		m.log.Warn("stream close", "stream", e.s.Spec().Name, "err", err)
	}
}

func (m *streamManager) close() {
	m.mu.Lock()
	defer m.mu.Unlock()
	for name, e := range m.streams {
		m.closeEntry(e)
		delete(m.streams, name)
	}
}

// get returns an open stream by name.
func (m *streamManager) get(name string) (*streams.Stream, bool) {
	m.mu.RLock()
	defer m.mu.RUnlock()
	e, ok := m.streams[name]
	if !ok {
		return nil, false
	}
	return e.s, true
}

// Append implements ingest.Sink: the message goes to every stream whose
// filters match its topic, and done runs once it is durable in all of them.
func (m *streamManager) Append(topic string, payload []byte, headers map[string]string, done func(error)) bool {
	m.mu.RLock()
	var targets []*streams.Stream
	for _, e := range m.streams {
		if slices.ContainsFunc(e.s.Spec().Topics, func(f string) bool { return protocol.MatchFilter(f, topic) }) {
			targets = append(targets, e.s)
		}
	}
	m.mu.RUnlock()
	if len(targets) == 0 {
		return false
	}
	rec := streams.Record{Time: time.Now(), Topic: topic, Headers: headers, Payload: payload}
	if len(targets) == 1 {
		targets[0].Append(rec, func(_ uint64, err error) { done(sinkErr(err)) })
		return true
	}
	var mu sync.Mutex
	left := len(targets)
	var first error
	for _, s := range targets {
		s.Append(rec, func(_ uint64, err error) {
			mu.Lock()
			if err != nil && first == nil {
				first = err
			}
			left--
			last := left == 0
			mu.Unlock()
			if last {
				done(sinkErr(first))
			}
		})
	}
	return true
}

func sinkErr(err error) error {
	if errors.Is(err, streams.ErrFull) {
		return fmt.Errorf("%w: %w", ingest.ErrFull, err)
	}
	return err
}

// status reports every stream's figures, with the ingest rate since the
// previous call.
func (m *streamManager) status() []protocol.StreamStatus {
	m.mu.Lock()
	defer m.mu.Unlock()
	out := make([]protocol.StreamStatus, 0, len(m.streams))
	now := time.Now()
	for _, e := range m.streams {
		st := e.s.Status()
		if dt := now.Sub(e.rateAt).Seconds(); dt >= 1 {
			e.rate = float64(st.Records-e.rateN) / dt
			e.rateAt, e.rateN = now, st.Records
		}
		st.IngestPerSec = e.rate
		out = append(out, st)
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Name < out[j].Name })
	return out
}

// streamCollector exports every stream's figures at scrape time.
type streamCollector struct{ m *streamManager }

var (
	descStreamRecords  = prometheus.NewDesc("cloudskin_agent_stream_records_total", "Records appended to the stream since the agent started.", []string{"stream"}, nil)
	descStreamLocal    = prometheus.NewDesc("cloudskin_agent_stream_local_bytes", "Bytes of the stream on the node's disk.", []string{"stream"}, nil)
	descStreamSpilled  = prometheus.NewDesc("cloudskin_agent_stream_spilled_bytes", "Bytes of the stream confirmed by the object store.", []string{"stream"}, nil)
	descStreamBacklog  = prometheus.NewDesc("cloudskin_agent_stream_upload_backlog_bytes", "Local bytes not yet in the object store.", []string{"stream"}, nil)
	descStreamOldest   = prometheus.NewDesc("cloudskin_agent_stream_oldest_unspilled_age_seconds", "Age of the oldest record not yet in the object store.", []string{"stream"}, nil)
	descStreamDropped  = prometheus.NewDesc("cloudskin_agent_stream_dropped_total", "Records deleted before they reached the object store (drop-oldest policy).", []string{"stream"}, nil)
	descStreamRejected = prometheus.NewDesc("cloudskin_agent_stream_rejected_total", "Records refused (reject-new policy, oversized).", []string{"stream"}, nil)
	descStreamUpErr    = prometheus.NewDesc("cloudskin_agent_stream_upload_failing", "1 while the last segment upload failed.", []string{"stream"}, nil)
	descCursorLag      = prometheus.NewDesc("cloudskin_agent_stream_cursor_lag_records", "Records between a cursor and the end of its stream.", []string{"stream", "cursor"}, nil)
)

func (c streamCollector) Describe(ch chan<- *prometheus.Desc) {
	for _, d := range []*prometheus.Desc{descStreamRecords, descStreamLocal, descStreamSpilled, descStreamBacklog, descStreamOldest, descStreamDropped, descStreamRejected, descStreamUpErr, descCursorLag} {
		ch <- d
	}
}

func (c streamCollector) Collect(ch chan<- prometheus.Metric) {
	c.m.mu.RLock()
	sts := make([]protocol.StreamStatus, 0, len(c.m.streams))
	for _, e := range c.m.streams {
		sts = append(sts, e.s.Status())
	}
	c.m.mu.RUnlock()
	for _, st := range sts {
		n := st.Name
		ch <- prometheus.MustNewConstMetric(descStreamRecords, prometheus.CounterValue, float64(st.Records), n)
		ch <- prometheus.MustNewConstMetric(descStreamLocal, prometheus.GaugeValue, float64(st.LocalBytes), n)
		ch <- prometheus.MustNewConstMetric(descStreamSpilled, prometheus.GaugeValue, float64(st.SpilledBytes), n)
		ch <- prometheus.MustNewConstMetric(descStreamBacklog, prometheus.GaugeValue, float64(st.BacklogBytes), n)
		ch <- prometheus.MustNewConstMetric(descStreamOldest, prometheus.GaugeValue, st.OldestUnspilledAgeSeconds, n)
		ch <- prometheus.MustNewConstMetric(descStreamDropped, prometheus.CounterValue, float64(st.Dropped), n)
		ch <- prometheus.MustNewConstMetric(descStreamRejected, prometheus.CounterValue, float64(st.Rejected), n)
		failing := 0.0
		if st.LastUploadError != "" {
			failing = 1
		}
		ch <- prometheus.MustNewConstMetric(descStreamUpErr, prometheus.GaugeValue, failing, n)
		for _, cu := range st.Cursors {
			ch <- prometheus.MustNewConstMetric(descCursorLag, prometheus.GaugeValue, float64(cu.Lag), n, cu.Name)
		}
	}
}
