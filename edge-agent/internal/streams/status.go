package streams

import (
	"slices"

	"github.com/cloudskin/cloudskin/edge-agent/internal/journal"
	"github.com/cloudskin/cloudskin/shared/protocol"
)

// Status returns the stream's figures. Records counts the records appended
// since Open; IngestPerSec is left 0 for the caller, which computes it
// from Records between two calls. Dropped counts only records removed by
// drop-oldest before they were spilled: a loss; retention is not one and is
// counted in Stats().Expired. BacklogBytes is estimated where the spill
// position lies inside a segment (in proportion to its records).
func (s *Stream) Status() protocol.StreamStatus {
	first, next := s.FirstLocal(), s.NextOffset()
	segs, _ := s.segments()
	s.mu.Lock()
	p := s.pol
	out := protocol.StreamStatus{
		Name:            s.name,
		Topics:          slices.Clone(s.spec.Topics),
		FirstOffset:     s.firstOffsetLocked(),
		FirstLocal:      first,
		NextOffset:      next,
		SpilledThrough:  s.st.SpilledThrough,
		SpilledBytes:    s.st.SpilledBytes,
		LastUploadError: s.uploadErr,
	}
	s.mu.Unlock()
	for _, sg := range segs {
		out.LocalBytes += sg.size
	}
	if p.spill {
		pos := max(out.SpilledThrough, first)
		if pos < next {
			out.BacklogBytes = backlogBytes(segs, pos, next)
			if t, ok := s.oldestTime(pos, next); ok && !t.IsZero() {
				out.OldestUnspilledAgeSeconds = max(s.now().Sub(t).Seconds(), 0)
			}
		}
	}
	out.Records = s.appended.Load()
	out.Dropped = s.dropped.Load()
	out.Rejected = s.rejected.Load()
	out.Cursors = s.cursorStatus(next)
	return out
}

// backlogBytes estimates the bytes of the records in [pos, next).
func backlogBytes(segs []segment, pos, next uint64) int64 {
	var b int64
	for i, sg := range segs {
		end := next
		if i+1 < len(segs) {
			end = segs[i+1].index
		}
		switch {
		case end <= pos || end <= sg.index:
		case sg.index >= pos:
			b += sg.size
		default:
			b += sg.size * int64(end-pos) / int64(end-sg.index)
		}
	}
	return b
}

// Stats are a stream's counters since Open, beyond Status.
type Stats struct {
	Appended uint64 // records made durable
	// Batches counts journal writes, each one fsync (plus one per new
	// segment file): Appended/Batches is the group-commit factor.
	Batches    uint64
	Rejected   uint64 // refused: ErrFull under reject-new, or ErrTooLarge
	Dropped    uint64 // removed by drop-oldest before they were spilled
	Expired    uint64 // removed by retention
	Freed      uint64 // local copies of spilled records removed to make room
	Corrupt    uint64 // records Read skipped because they fail their check
	Recoveries uint64 // journal reopened after a write error
	// WriteError is the journal write error the stream is recovering from;
	// empty when it takes appends.
	WriteError string
	// Recovered is what the last journal open repaired.
	Recovered journal.RecoveryReport
}

// Stats returns the stream's counters.
func (s *Stream) Stats() Stats {
	st := Stats{
		Appended:   s.appended.Load(),
		Batches:    s.batches.Load(),
		Rejected:   s.rejected.Load(),
		Dropped:    s.dropped.Load(),
		Expired:    s.expired.Load(),
		Freed:      s.freed.Load(),
		Corrupt:    s.corrupt.Load(),
		Recoveries: s.recoveries.Load(),
	}
	s.mu.Lock()
	if s.writeErr != nil {
		st.WriteError = s.writeErr.Error()
	}
	st.Recovered = s.recovered
	s.mu.Unlock()
	return st
}
