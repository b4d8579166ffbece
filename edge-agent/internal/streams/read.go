package streams

import (
	"errors"
	"fmt"
	"time"

	"github.com/cloudskin/cloudskin/edge-agent/internal/journal"
)

// maxCorruptRemembered bounds the offsets remembered as corrupt (for
// logging each once and counting it once).
const maxCorruptRemembered = 4096

// Read returns the durable records from offset from on: at most maxRecords
// (DefaultReadRecords if 0 or less) and, after the first, no more than
// maxBytes (Record.Size; 0 or less: no limit) in all. The first record is
// returned whatever its size, so a reader always makes progress.
//
// from below FirstLocal returns an error wrapping ErrNotLocal: the records
// are in the object store, or gone (compare with FirstOffset). From
// NextOffset on, Read returns no records and no error; wait on Notify.
//
// A record that fails its checksum or cannot be decoded is skipped: the
// result then has a gap in its offsets. It is logged once and counted in
// Stats().Corrupt; refusing it forever would stop every reader (and the
// uploader) at that offset. Fillers (see record.go) are skipped silently.
func (s *Stream) Read(from uint64, maxRecords int, maxBytes int) ([]Record, error) {
	if maxRecords <= 0 {
		maxRecords = DefaultReadRecords
	}
	j, err := s.acquire()
	if err != nil {
		return nil, err
	}
	defer s.release()
	first, next := j.FirstIndex(), j.NextIndex()
	if first == 0 {
		first = next
	}
	if from < first {
		return nil, s.notLocal(from, first)
	}
	var out []Record
	size := 0
	for i := from; i < next && len(out) < maxRecords; i++ {
		b, err := j.Read(i)
		switch {
		case errors.Is(err, journal.ErrNotFound):
			// Removed meanwhile (retention, quota).
			if len(out) > 0 {
				return out, nil
			}
			return nil, s.notLocal(from, s.FirstLocal())
		case errors.Is(err, journal.ErrCorrupt):
			s.skipCorrupt(i, err)
			continue
		case err != nil:
			if len(out) > 0 {
				return out, nil
			}
			if errors.Is(err, journal.ErrClosed) {
				return nil, ErrClosed
			}
			return nil, fmt.Errorf("streams: %s: read %d: %w", s.name, i, err)
		}
		r, flags, err := decodeRecord(b)
		if err != nil {
			s.skipCorrupt(i, err)
			continue
		}
		if flags&flagFiller != 0 {
			continue
		}
		if n := r.Size(); len(out) > 0 && maxBytes > 0 && size+n > maxBytes {
			break
		} else {
			size += n
		}
		r.Offset = i
		out = append(out, r)
	}
	return out, nil
}

func (s *Stream) notLocal(from, first uint64) error {
	return fmt.Errorf("%w: %s: offset %d; the first local offset is %d (the first offset at all is %d)",
		ErrNotLocal, s.name, from, first, s.FirstOffset())
}

func (s *Stream) skipCorrupt(offset uint64, err error) {
	s.mu.Lock()
	seen := s.corruptAt[offset]
	if !seen && len(s.corruptAt) < maxCorruptRemembered {
		s.corruptAt[offset] = true
	}
	s.mu.Unlock()
	if !seen {
		s.corrupt.Add(1)
		s.log.Warn("streams: skipping a corrupt record", "stream", s.name, "offset", offset, "err", err)
	}
}

// OffsetAt returns the first local offset whose record's time is at or
// after t: NextOffset if every local record is older, FirstLocal if none
// is (older records may be in the object store: see Status().FirstOffset).
// Record times are ingest times, so they do not decrease with offsets and
// the binary search is exact; should a clock step make them decrease, it
// returns an offset where they cross t.
func (s *Stream) OffsetAt(t time.Time) (uint64, error) {
	j, err := s.acquire()
	if err != nil {
		return 0, err
	}
	defer s.release()
	first, next := j.FirstIndex(), j.NextIndex()
	if first == 0 {
		return next, nil
	}
	return s.searchTime(j, first, next, t), nil
}
