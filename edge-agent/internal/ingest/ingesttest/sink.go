// Package ingesttest gives the ingest tests and benchmarks a Sink on real
// files — a journal written with group commit — standing in for the streams
// package, and the small tools to read back what it stored. Only tests and
// benchmarks import it.
package ingesttest

import (
	"encoding/binary"
	"errors"
	"fmt"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/cloudskin/cloudskin/edge-agent/internal/ingest"
	"github.com/cloudskin/cloudskin/edge-agent/internal/journal"
)

// Options configure a JournalSink.
type Options struct {
	// Filters are the MQTT topic filters of the messages the sink takes;
	// nil means every topic.
	Filters []string
	// CommitDelay is added to every commit before its messages are done: a
	// slower disk.
	CommitDelay time.Duration
	// MaxBatch bounds the records of one commit; 0 means 4096.
	MaxBatch int
}

// JournalSink is an ingest.Sink that appends each message to a journal.
// One goroutine commits: it writes everything queued since its last commit
// with one write and one fsync (group commit), in arrival order, then calls
// the messages' done functions.
type JournalSink struct {
	J    *journal.Journal
	opts Options

	mu      sync.Mutex
	queue   []pending
	closed  bool
	wake    chan struct{}
	stopped chan struct{}

	commits, records atomic.Uint64
}

type pending struct {
	rec  []byte
	done func(error)
}

// ErrClosed is the error of messages appended after Close.
var ErrClosed = errors.New("ingesttest: sink closed")

// NewJournalSink starts a sink on j. Close it before closing j.
func NewJournalSink(j *journal.Journal, opts Options) *JournalSink {
	if opts.MaxBatch <= 0 {
		opts.MaxBatch = 4096
	}
	s := &JournalSink{J: j, opts: opts, wake: make(chan struct{}, 1), stopped: make(chan struct{})}
	go s.run()
	return s
}

// Append implements ingest.Sink.
func (s *JournalSink) Append(topic string, payload []byte, _ map[string]string, done func(error)) bool {
	if !s.matches(topic) {
		return false
	}
	s.mu.Lock()
	if s.closed {
		s.mu.Unlock()
		done(ErrClosed)
		return true
	}
	s.queue = append(s.queue, pending{rec: Encode(topic, payload), done: done})
	s.mu.Unlock()
	select {
	case s.wake <- struct{}{}:
	default:
	}
	return true
}

func (s *JournalSink) matches(topic string) bool {
	if s.opts.Filters == nil {
		return true
	}
	for _, f := range s.opts.Filters {
		if Match(f, topic) {
			return true
		}
	}
	return false
}

func (s *JournalSink) run() {
	defer close(s.stopped)
	recs := make([][]byte, 0, s.opts.MaxBatch)
	for {
		s.mu.Lock()
		for len(s.queue) == 0 {
			if s.closed {
				s.mu.Unlock()
				return
			}
			s.mu.Unlock()
			<-s.wake
			s.mu.Lock()
		}
		n := min(len(s.queue), s.opts.MaxBatch)
		group := make([]pending, n)
		copy(group, s.queue)
		s.queue = s.queue[n:]
		s.mu.Unlock()

		recs = recs[:0]
		for _, p := range group {
			recs = append(recs, p.rec)
		}
		_, _, err := s.J.Append(recs...)
		if errors.Is(err, journal.ErrFull) {
			err = fmt.Errorf("%w: %w", ingest.ErrFull, err)
		}
		if s.opts.CommitDelay > 0 {
			time.Sleep(s.opts.CommitDelay)
		}
		s.commits.Add(1)
		s.records.Add(uint64(n))
		for _, p := range group {
			p.done(err)
		}
	}
}

// Commits returns how many commits (journal writes with one fsync) were made
// and how many messages they held.
func (s *JournalSink) Commits() (commits, records uint64) {
	return s.commits.Load(), s.records.Load()
}

// Close commits what is queued and stops. Later appends are done with
// ErrClosed.
func (s *JournalSink) Close() {
	s.mu.Lock()
	s.closed = true
	s.mu.Unlock()
	select {
	case s.wake <- struct{}{}:
	default:
	}
	<-s.stopped
}

// Encode is the record a JournalSink stores for a message:
// uvarint(len(topic)) topic payload.
func Encode(topic string, payload []byte) []byte {
	b := make([]byte, 0, binary.MaxVarintLen64+len(topic)+len(payload))
	b = binary.AppendUvarint(b, uint64(len(topic)))
	b = append(b, topic...)
	return append(b, payload...)
}

// Decode splits a record made by Encode.
func Decode(rec []byte) (topic string, payload []byte, err error) {
	n, k := binary.Uvarint(rec)
	if k <= 0 || uint64(len(rec)-k) < n {
		return "", nil, fmt.Errorf("ingesttest: malformed record of %d bytes", len(rec))
	}
	return string(rec[k : k+int(n)]), rec[k+int(n):], nil
}

// Message is one stored message.
type Message struct {
	Topic   string
	Payload string
}

// Messages reads every record of j.
func Messages(j *journal.Journal) ([]Message, error) {
	var out []Message
	if j.Len() == 0 {
		return nil, nil
	}
	for i := j.FirstIndex(); i <= j.LastIndex(); i++ {
		rec, err := j.Read(i)
		if err != nil {
			return nil, err
		}
		t, p, err := Decode(rec)
		if err != nil {
			return nil, fmt.Errorf("record %d: %w", i, err)
		}
		out = append(out, Message{Topic: t, Payload: string(p)})
	}
	return out, nil
}

// Match reports whether topic matches the MQTT topic filter (with + and #
// wildcards; a wildcard first level does not match a $ topic).
func Match(filter, topic string) bool {
	if strings.HasPrefix(topic, "$") && (strings.HasPrefix(filter, "+") || strings.HasPrefix(filter, "#")) {
		return false
	}
	fs, ts := strings.Split(filter, "/"), strings.Split(topic, "/")
	for i, f := range fs {
		if f == "#" {
			return true
		}
		if i >= len(ts) {
			return false
		}
		if f != "+" && f != ts[i] {
			return false
		}
	}
	return len(fs) == len(ts)
}
