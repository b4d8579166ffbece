package streams

import (
	"errors"
	"fmt"
	"time"

	"github.com/cloudskin/cloudskin/edge-agent/internal/journal"
)

// Backoff between attempts to reopen a journal after a write error.
const (
	minRecoverBackoff = 100 * time.Millisecond
	maxRecoverBackoff = 30 * time.Second
)

// pending is one appended record waiting for the committer.
type pending struct {
	enc  []byte
	err  error // refused before writing (ErrTooLarge)
	done func(offset uint64, err error)
}

// Append queues a record for the stream's committer goroutine and returns
// at once; it never waits for the disk. done (nil: nobody to tell) is
// called exactly once, from the committer goroutine, after the record is
// durable (fsync'd) with its offset, or with an error: one wrapping ErrFull
// (reject-new and no room), ErrTooLarge, ErrClosed (the stream closed
// before the record was taken), ErrUnavailable or a journal write error.
// Calls to done happen in append order. done must be quick and must not
// wait for another append of the same stream (it runs on the goroutine
// that writes); it may call Append. After Close, done is called with
// ErrClosed before Append returns.
//
// An error from a journal write does not prove the record is absent: part
// of a failed group may be on disk, and it is then read back after the
// recovery (a publisher that resends stores it twice). The queue is not
// bounded here: the caller bounds what it has in flight (ingest does, per
// client).
func (s *Stream) Append(r Record, done func(offset uint64, err error)) {
	if done == nil {
		done = func(uint64, error) {}
	}
	if r.Time.IsZero() {
		r.Time = s.now()
	}
	p := pending{done: done}
	enc := encodeRecord(make([]byte, 0, encodedSize(&r)), &r, 0)
	if len(enc) > s.opts.MaxRecordBytes {
		p.err = fmt.Errorf("%w: %s: the record takes %d bytes, the limit is %d",
			ErrTooLarge, s.name, len(enc), s.opts.MaxRecordBytes)
	} else {
		p.enc = enc
	}
	s.qmu.Lock()
	if s.qclosed {
		s.qmu.Unlock()
		done(0, ErrClosed)
		return
	}
	wasEmpty := len(s.queue) == 0
	s.queue = append(s.queue, p)
	s.qmu.Unlock()
	if wasEmpty {
		select {
		case s.wake <- struct{}{}:
		default:
		}
	}
}

// AppendWait appends r and waits until it is durable.
func (s *Stream) AppendWait(r Record) (uint64, error) {
	type result struct {
		off uint64
		err error
	}
	ch := make(chan result, 1)
	s.Append(r, func(off uint64, err error) { ch <- result{off, err} })
	res := <-ch
	return res.off, res.err
}

// committer is the state only the committer goroutine touches.
type committer struct {
	batch   []pending
	spare   []pending
	encs    [][]byte
	sizes   []int64
	broken  error // the write error being recovered from
	backoff time.Duration
	retry   *time.Timer
}

func (c *committer) retryC() <-chan time.Time {
	if c.retry == nil {
		return nil
	}
	return c.retry.C
}

// run is the committer: it writes the queue in groups, one journal write
// (one fsync) per group, so that while one group is on its way to the disk
// the next accumulates. Between groups it runs maintenance and the work of
// Update and ApplyRetention.
func (s *Stream) run() {
	defer close(s.exited)
	c := &committer{}
	tick := time.NewTicker(s.opts.MaintainEvery)
	defer tick.Stop()
	for {
		if s.take(c) {
			s.commit(c)
			select { // keep maintenance going under a constant load
			case f := <-s.ctl:
				f(c)
			case <-tick.C:
				s.maintainIfHealthy(c)
			case <-c.retryC():
				s.recover(c)
			default:
			}
			continue
		}
		select {
		case <-s.wake:
		case f := <-s.ctl:
			f(c)
		case <-tick.C:
			s.maintainIfHealthy(c)
		case <-c.retryC():
			s.recover(c)
		case <-s.stop:
			s.shutdown(c)
			return
		}
	}
}

// take moves the next group (at most maxGroupRecords records and
// maxGroupBytes bytes, at least one record) from the queue to c.batch.
func (s *Stream) take(c *committer) bool {
	clear(c.batch)
	c.batch = c.batch[:0]
	s.qmu.Lock()
	defer s.qmu.Unlock()
	n, size := 0, 0
	for n < len(s.queue) && n < maxGroupRecords {
		b := len(s.queue[n].enc)
		if n > 0 && size+b > maxGroupBytes {
			break
		}
		size += b
		n++
	}
	switch {
	case n == 0:
		return false
	case n == len(s.queue): // the usual case: swap buffers
		c.batch, s.queue = s.queue, c.batch[:0]
	default:
		c.batch = append(c.batch, s.queue[:n]...)
		m := copy(s.queue, s.queue[n:])
		clear(s.queue[m:])
		s.queue = s.queue[:m]
	}
	return true
}

// commit writes c.batch with one journal write (more only when the stream
// is full and its policy makes room) and calls every done in order.
func (s *Stream) commit(c *committer) {
	c.encs, c.sizes = c.encs[:0], c.sizes[:0]
	for _, p := range c.batch {
		if p.err == nil {
			c.encs = append(c.encs, p.enc)
			c.sizes = append(c.sizes, entrySize(len(p.enc)))
		}
	}
	var first uint64
	var n int
	var werr error
	if len(c.encs) > 0 {
		if c.broken != nil {
			werr = fmt.Errorf("%w: %s: %w", ErrUnavailable, s.name, c.broken)
		} else {
			first, n, werr = s.write(c.encs, c.sizes)
			if werr != nil && !errors.Is(werr, ErrFull) {
				s.fail(c, werr)
			}
		}
	}
	if n > 0 {
		s.appended.Add(uint64(n))
		s.wakeReaders()
	}
	k := 0
	for _, p := range c.batch {
		switch {
		case p.err != nil:
			s.rejected.Add(1)
			p.done(0, p.err)
		case k < n:
			p.done(first+uint64(k), nil)
			k++
		default:
			p.done(0, werr)
			k++
		}
	}
}

// fail starts the recovery after a journal write error: the journal takes
// no more writes (journal.ErrFailed) until it is closed and opened again,
// which repairs its tail.
func (s *Stream) fail(c *committer, err error) {
	s.mu.Lock()
	s.writeErr = err
	s.mu.Unlock()
	if c.broken != nil {
		return
	}
	c.broken = err
	c.backoff = minRecoverBackoff
	c.retry = time.NewTimer(c.backoff)
	s.log.Error("streams: write failed; refusing appends until the log is reopened", "stream", s.name, "err", err, "retry_in", c.backoff)
}

// recover tries to reopen the journal, backing off while it fails.
func (s *Stream) recover(c *committer) {
	if c.broken == nil {
		return
	}
	if err := s.reopen("recovering from a write error"); err != nil {
		c.backoff = min(2*c.backoff, maxRecoverBackoff)
		c.retry.Reset(c.backoff)
		s.mu.Lock()
		s.writeErr = fmt.Errorf("%w (reopen: %w)", c.broken, err)
		s.mu.Unlock()
		s.log.Error("streams: reopen after a write error failed; retrying", "stream", s.name, "err", err, "retry_in", c.backoff)
		return
	}
	s.log.Info("streams: log reopened after a write error; appends resume", "stream", s.name,
		"write_error", c.broken, "next_offset", s.NextOffset())
	c.broken, c.retry = nil, nil
	s.recoveries.Add(1)
	s.mu.Lock()
	s.writeErr = nil
	s.mu.Unlock()
	s.wakeReaders() // a failed group may have reached the disk after all
}

// shutdown writes what is still queued and closes the journal.
func (s *Stream) shutdown(c *committer) {
	for s.take(c) {
		s.commit(c)
	}
	if c.retry != nil {
		c.retry.Stop()
	}
	s.tmu.Lock()
	s.jmu.Lock()
	s.closed.Store(true)
	if s.j != nil {
		if err := s.j.Close(); err != nil {
			s.cerr = fmt.Errorf("streams: close %s: %w", s.name, err)
		}
		s.j = nil
	}
	s.jmu.Unlock()
	s.tmu.Unlock()
	s.wakeReaders()
}

// reopen closes and opens the journal: after a write error (the open
// repairs the tail) or to apply a new quota or segment size.
func (s *Stream) reopen(reason string) error {
	s.tmu.Lock()
	defer s.tmu.Unlock()
	s.jmu.Lock()
	defer s.jmu.Unlock()
	if s.j != nil {
		if err := s.j.Close(); err != nil {
			s.log.Warn("streams: closing the log to reopen it", "stream", s.name, "reason", reason, "err", err)
		}
		s.j = nil
	}
	j, err := journal.Open(s.walDir, s.journalOptions())
	if err != nil {
		return err
	}
	rep := j.Recovered()
	s.mu.Lock()
	s.recovered = rep
	s.mu.Unlock()
	if err := s.continueNumbering(j); err != nil {
		j.Close()
		return err
	}
	s.j = j
	s.syncBounds(j)
	s.log.Debug("streams: log reopened", "stream", s.name, "reason", reason)
	return nil
}
