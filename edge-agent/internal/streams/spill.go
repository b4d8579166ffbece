package streams

import (
	"fmt"
	"time"
)

// Spilling hands sealed ranges of records to an uploader (package agent),
// which puts them in the object store and then calls MarkSpilled. Only then
// may the local copies go, and they go lazily: when the quota needs room or
// retention says so, so reads of recent history stay local.
//
// Ranges follow the local segments: a range ends where a local segment
// ends, so that once it is spilled, freeing it removes whole segment files
// (the journal rewrites a segment it cuts into).

// NextSealed returns the oldest range [first, last] not yet spilled that is
// sealed, if Spill is on. first is the spill position: SpilledThrough, or
// FirstLocal if records were dropped before they could be spilled; ranges
// are contiguous otherwise and come in order. A range is sealed when the
// local segment holding first is complete (a later one exists): the range
// then runs to that segment's end, so it holds SegmentBytes of records,
// less only when a range sealed by age ended inside that segment. Or its
// oldest record is older than SealSeconds: the range is then every
// un-spilled record up to now.
func (s *Stream) NextSealed() (first, last uint64, ok bool) {
	s.mu.Lock()
	p := s.pol
	through := s.st.SpilledThrough
	s.mu.Unlock()
	if !p.spill {
		return 0, 0, false
	}
	first, next := max(through, s.FirstLocal()), s.NextOffset()
	if first >= next {
		return 0, 0, false
	}
	segs, err := s.segments()
	if err != nil {
		s.log.Warn("streams: list segments", "stream", s.name, "err", err)
		return 0, 0, false
	}
	if i := segmentHolding(segs, first); i >= 0 && i+1 < len(segs) && segs[i+1].index <= next {
		return first, segs[i+1].index - 1, true
	}
	t, ok := s.oldestTime(first, next)
	if !ok || s.now().Sub(t) >= p.seal {
		// Nothing readable to date the range by: let it go rather than
		// hold it back forever.
		return first, next - 1, true
	}
	return 0, 0, false
}

// oldestTime returns the time of the first readable record in [from, next).
func (s *Stream) oldestTime(from, next uint64) (time.Time, bool) {
	j, err := s.acquire()
	if err != nil {
		return time.Time{}, true // not readable now; decide on the next call
	}
	defer s.release()
	t, _, ok := timeFrom(j, from, next)
	return t, ok
}

// MarkSpilled records that every offset below through is in the object
// store, adds bytes (the size of what was uploaded) to SpilledBytes, and
// returns once that is durable. From then on the local records below
// through may be removed (first when the quota needs room). A through at
// or below SpilledThrough is a repeated mark and does nothing; one past
// NextOffset is an error.
//
// If the state cannot be written, the error is returned but the mark holds
// in memory (the records are in the object store), so a restart uploads
// the range again.
func (s *Stream) MarkSpilled(through uint64, bytes int64) error {
	if n := s.NextOffset(); through > n {
		return fmt.Errorf("streams: %s: mark spilled through %d, past the next offset %d", s.name, through, n)
	}
	s.mu.Lock()
	if through <= s.st.SpilledThrough {
		s.mu.Unlock()
		return nil
	}
	if s.st.SpilledFrom == 0 {
		// The range began at the spill position (records below it, if any,
		// never were spilled); FirstLocal only grows, so it is not below.
		s.st.SpilledFrom = min(max(s.st.SpilledThrough, s.FirstLocal()), through-1)
		s.st.SpilledFrom = max(s.st.SpilledFrom, 1)
	}
	s.st.SpilledThrough = through
	s.st.SpilledBytes += max(bytes, 0)
	if fl := s.FirstLocal(); through < fl {
		// Records between the range and the local log were removed before
		// they were spilled: they exist nowhere now.
		s.st.addLost(through, fl-1)
	}
	s.stVer++
	s.mu.Unlock()
	return s.persist()
}

// SetUploadError records the uploader's last error for Status; nil clears it.
func (s *Stream) SetUploadError(err error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if err == nil {
		s.uploadErr = ""
	} else {
		s.uploadErr = err.Error()
	}
}
