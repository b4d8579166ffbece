package streams

import (
	"errors"
	"fmt"
	"time"

	"github.com/cloudskin/cloudskin/edge-agent/internal/journal"
	"github.com/cloudskin/cloudskin/shared/protocol"
)

// This file holds what decides which local records go: the on-full policy
// (when a write hits the quota), retention, and the quota after Update. All
// of it runs on the committer goroutine, the only one that writes or
// truncates the journal, so a decision made from the list of segment files
// is still true when it is carried out.

// entrySize is how many bytes a record of n encoded bytes takes in a
// segment file, what the journal's quota counts (package journal documents
// the format: uvarint(len(frame)) frame, frame = crc[4] version[1] data).
func entrySize(n int) int64 {
	f := n + 5
	return int64(uvarintLen(f) + f)
}

// segment is one of the journal's segment files.
type segment struct {
	index uint64 // offset of its first record
	size  int64
}

// segments lists the journal's segment files in offset order.
func (s *Stream) segments() ([]segment, error) {
	s.tmu.Lock()
	defer s.tmu.Unlock()
	infos, err := journal.ListSegments(s.walDir)
	if err != nil {
		return nil, err
	}
	segs := make([]segment, len(infos))
	for i, in := range infos {
		segs[i] = segment{index: in.Index, size: in.Size}
	}
	return segs, nil
}

// segmentHolding returns the position in segs of the segment that holds
// offset, or -1.
func segmentHolding(segs []segment, offset uint64) int {
	i := -1
	for k, sg := range segs {
		if sg.index > offset {
			break
		}
		i = k
	}
	return i
}

// truncate removes the local records below cut.
func (s *Stream) truncate(j *journal.Journal, cut uint64) error {
	s.tmu.Lock()
	err := j.TruncateFront(cut)
	s.tmu.Unlock()
	s.syncBounds(j)
	return err
}

// write appends encs, whose journal sizes are sizes, applying the on-full
// policy, and returns the offset of the first record written and how many
// were written: a prefix of encs, at consecutive offsets. Normally that is
// one journal write. When the quota is reached it first frees records that
// are already in the object store; then, under reject-new, it writes what
// fits and refuses the rest (err wraps ErrFull); under drop-oldest it
// removes the oldest records, counting each in Dropped, until all fit. Any
// other error is a journal write error: nothing after n was written.
func (s *Stream) write(encs [][]byte, sizes []int64) (first uint64, n int, err error) {
	j := s.j
	p := s.policy()
	defer s.syncBounds(j)
	for n < len(encs) {
		k, need := fit(j.SizeBytes(), p.quota, sizes[n:])
		var full error
		if k > 0 {
			f, _, err := j.Append(encs[n : n+k]...)
			if err == nil {
				if n == 0 {
					first = f
				}
				n += k
				s.batches.Add(1)
				continue
			}
			if !errors.Is(err, journal.ErrFull) {
				return first, n, err
			}
			full, need = err, max(need, 1) // the disk, not the quota, is full
		} else {
			full = fmt.Errorf("%w: %s holds %d bytes; %d more would exceed the quota of %d",
				journal.ErrFull, s.name, j.SizeBytes(), sizes[n], p.quota)
		}
		if s.freeSpilled(j) {
			continue
		}
		if p.onFull == protocol.OnFullDropOldest && s.dropOldest(j, need) {
			continue
		}
		rest := len(encs) - n
		s.rejected.Add(uint64(rest))
		s.log.Warn("streams: stream full; records refused", "stream", s.name, "policy", p.onFull,
			"refused", rest, "local_bytes", j.SizeBytes(), "quota", p.quota, "err", full)
		return first, n, fmt.Errorf("%w: %w", ErrFull, full)
	}
	return first, n, nil
}

// fit returns how many of the leading entries fit in the quota, and how
// many bytes would have to be freed for all of them to fit.
func fit(used, quota int64, sizes []int64) (k int, need int64) {
	var sum int64
	k = -1
	for i, sz := range sizes {
		if k < 0 && used+sum+sz > quota {
			k = i
		}
		sum += sz
	}
	if k < 0 {
		k = len(sizes)
	}
	return k, used + sum - quota
}

// freeSpilled removes the local records that are already in the object
// store. It reports whether it removed any.
func (s *Stream) freeSpilled(j *journal.Journal) bool {
	s.mu.Lock()
	through := s.st.SpilledThrough
	s.mu.Unlock()
	first := j.FirstIndex()
	if first == 0 || through <= first {
		return false
	}
	cut := min(through, j.NextIndex())
	if err := s.truncate(j, cut); err != nil {
		s.log.Error("streams: could not free spilled records", "stream", s.name, "through", cut, "err", err)
		return false
	}
	s.freed.Add(cut - first)
	s.log.Info("streams: freed local copies of spilled records", "stream", s.name, "first", first, "last", cut-1,
		"local_bytes", j.SizeBytes())
	return true
}

// dropOldest removes the oldest local records to free at least need bytes
// (drop-oldest policy), whole segments where it can, since the journal
// rewrites the segment it cuts into. Each removed record is counted in
// Dropped and logged: a visible loss. It reports whether it removed any.
func (s *Stream) dropOldest(j *journal.Journal, need int64) bool {
	first, next := j.FirstIndex(), j.NextIndex()
	if first == 0 {
		return false
	}
	segs, err := s.segments()
	if err != nil {
		s.log.Error("streams: list segments", "stream", s.name, "err", err)
		return false
	}
	cut := uint64(0)
	var acc int64
	for i := 0; i+1 < len(segs); i++ {
		acc += segs[i].size
		if acc >= need || i+2 == len(segs) {
			cut = segs[i+1].index
			break
		}
	}
	if cut <= first {
		// Everything is in one segment: cut inside it, estimating the count
		// from the average record size (the caller retries if short).
		size := max(j.SizeBytes(), 1)
		count := next - first
		k := uint64(need)*count/uint64(size) + 1
		cut = min(first+k, next)
	}
	if err := s.truncate(j, cut); err != nil {
		s.log.Error("streams: could not drop the oldest records", "stream", s.name, "through", cut, "err", err)
		return false
	}
	s.dropped.Add(cut - first)
	s.log.Warn("streams: stream full; dropped the oldest records (drop-oldest policy)", "stream", s.name,
		"dropped", cut-first, "first", first, "last", cut-1, "local_bytes", j.SizeBytes())
	s.markLost(first, cut)
	return true
}

// markLost records that the local records [first, cut) were removed; those
// not in the object store are lost, which matters once anything was
// spilled: the gap they leave between spilled ranges is remembered, so
// that cursors skip it (see Cursor).
func (s *Stream) markLost(first, cut uint64) {
	s.mu.Lock()
	lo := max(first, s.st.SpilledThrough)
	if s.st.SpilledFrom == 0 || lo >= cut {
		s.mu.Unlock()
		return
	}
	s.st.addLost(lo, cut-1)
	s.stVer++
	s.mu.Unlock()
	if err := s.persist(); err != nil {
		s.log.Error("streams: could not record dropped range", "stream", s.name, "first", lo, "last", cut-1, "err", err)
	}
}

func (s *Stream) maintainIfHealthy(c *committer) {
	if c.broken == nil && s.j != nil {
		s.maintain(s.j)
	}
}

// maintain applies retention and a quota lowered by Update.
func (s *Stream) maintain(j *journal.Journal) {
	s.applyRetention(j)
	p := s.policy()
	for j.SizeBytes() > p.quota {
		if s.freeSpilled(j) {
			continue
		}
		if p.onFull != protocol.OnFullDropOldest || !s.dropOldest(j, j.SizeBytes()-p.quota) {
			break
		}
	}
}

// ApplyRetention applies the retention limits now, rather than at the next
// background pass (every Options.MaintainEvery).
func (s *Stream) ApplyRetention() error {
	return s.do(func(c *committer) error {
		if c.broken != nil {
			return fmt.Errorf("%w: %s: %w", ErrUnavailable, s.name, c.broken)
		}
		s.maintain(s.j)
		return nil
	})
}

// applyRetention removes local records by age and by size. With Spill,
// only records already in the object store go; without it, any record.
// Retention removes whole segments (Kafka does the same), so up to one
// segment more than the limits stays; only when the whole log is one
// segment does it cut inside it. Cursors do not hold records back: a
// cursor that lags past retention reads from the object store, or (without
// Spill) moves on to the first record that still exists. Removed records
// are counted in Expired, not in Dropped: retention is not a loss.
func (s *Stream) applyRetention(j *journal.Journal) {
	p := s.policy()
	if p.retention <= 0 && p.retentionBytes <= 0 {
		return
	}
	first, next := j.FirstIndex(), j.NextIndex()
	if first == 0 {
		return
	}
	limit := next
	if p.spill {
		s.mu.Lock()
		limit = min(limit, s.st.SpilledThrough)
		s.mu.Unlock()
	}
	if limit <= first {
		return
	}
	segs, err := s.segments()
	if err != nil || len(segs) == 0 {
		return
	}
	target := first
	if p.retention > 0 {
		target = max(target, s.searchTime(j, first, limit, s.now().Add(-p.retention)))
	}
	if p.retentionBytes > 0 {
		size := j.SizeBytes()
		for i := 0; i+1 < len(segs) && size > p.retentionBytes; i++ {
			size -= segs[i].size
			target = max(target, segs[i+1].index)
		}
	}
	target = min(target, limit)
	cut := target
	if len(segs) > 1 {
		if i := segmentHolding(segs, target); i >= 0 {
			cut = segs[i].index
		}
	}
	if cut <= first {
		return
	}
	if err := s.truncate(j, cut); err != nil {
		s.log.Error("streams: retention could not remove records", "stream", s.name, "through", cut, "err", err)
		return
	}
	s.expired.Add(cut - first)
	s.log.Info("streams: retention removed local records", "stream", s.name, "first", first, "last", cut-1,
		"local_bytes", j.SizeBytes())
	s.markLost(first, cut)
}

// searchTime returns the first offset in [lo, hi) whose record's time is
// at or after t, or hi if there is none. It is a binary search: exact when
// times do not decrease with offsets (they are ingest times), and when a
// clock step makes them decrease, an offset where they cross t. Records
// that cannot be read are passed over.
func (s *Stream) searchTime(j *journal.Journal, lo, hi uint64, t time.Time) uint64 {
	for lo < hi {
		mid := lo + (hi-lo)/2
		rt, at, ok := timeFrom(j, mid, hi)
		switch {
		case !ok:
			hi = mid
		case rt.Before(t):
			lo = at + 1
		default:
			hi = mid
		}
	}
	return lo
}

// timeFrom returns the time and offset of the first readable record in
// [from, hi).
func timeFrom(j *journal.Journal, from, hi uint64) (time.Time, uint64, bool) {
	for i := from; i < hi; i++ {
		b, err := j.Read(i)
		if err != nil {
			if errors.Is(err, journal.ErrClosed) {
				break
			}
			continue
		}
		if t, err := decodeTime(b); err == nil {
			return t, i, true
		}
	}
	return time.Time{}, 0, false
}
