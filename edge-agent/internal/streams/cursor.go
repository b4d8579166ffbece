package streams

import (
	"fmt"
	"sort"

	"github.com/cloudskin/cloudskin/shared/protocol"
)

// Cursors are named readers' positions, kept in the stream's state file.
// A cursor is the next offset to deliver: a reader reads from it, handles
// the records, then commits the offset after the last one it handled. A
// crash between handling and committing delivers those records again, so
// readers get every record at least once, in offset order.
//
// Cursors do not hold records back: retention, drop-oldest and freeing
// spilled records remove local records whatever the cursors say. A lagging
// cursor then reads from the object store (Read returns ErrNotLocal), and
// where the records exist nowhere any more (expired without Spill, or
// dropped), Cursor moves it on to the first record that still exists; the
// skipped records are counted in Status (Dropped) and Stats (Expired).

// Cursor returns the next offset to deliver to the named reader. A new
// cursor starts at FirstOffset and is persisted on its first commit.
func (s *Stream) Cursor(name string) uint64 {
	s.mu.Lock()
	defer s.mu.Unlock()
	c, ok := s.st.Cursors[name]
	if !ok {
		if c, ok = s.fresh[name]; !ok {
			c = s.firstOffsetLocked()
			s.fresh[name] = c
		}
	}
	return s.deliverableLocked(c)
}

// deliverableLocked moves a position past records that exist nowhere.
func (s *Stream) deliverableLocked(c uint64) uint64 {
	return s.st.skipLost(max(c, s.firstOffsetLocked()))
}

// CommitCursor records that the named reader is done with every offset
// below next, and returns once that is durable. Cursors only move forward:
// a commit below the committed position, or past NextOffset, fails with an
// error wrapping ErrCursor; committing the same position again is a no-op.
func (s *Stream) CommitCursor(name string, next uint64) error {
	return s.setCursor(name, next, false)
}

// SetCursor moves the named cursor to next, also backwards: to replay a
// stream, or to restore a reader's position from a snapshot. next must not
// be past NextOffset.
func (s *Stream) SetCursor(name string, next uint64) error {
	return s.setCursor(name, next, true)
}

func (s *Stream) setCursor(name string, next uint64, back bool) error {
	if name == "" {
		return fmt.Errorf("%w: %s: empty cursor name", ErrCursor, s.name)
	}
	if n := s.NextOffset(); next > n {
		return fmt.Errorf("%w %q of %s: %d is past the next offset %d", ErrCursor, name, s.name, next, n)
	}
	s.mu.Lock()
	cur, ok := s.st.Cursors[name]
	switch {
	case ok && next == cur:
		s.mu.Unlock()
		return nil
	case ok && next < cur && !back:
		s.mu.Unlock()
		return fmt.Errorf("%w %q of %s: commit %d is behind the committed %d", ErrCursor, name, s.name, next, cur)
	}
	if s.st.Cursors == nil {
		s.st.Cursors = map[string]uint64{}
	}
	s.st.Cursors[name] = next
	delete(s.fresh, name)
	s.stVer++
	s.mu.Unlock()
	return s.persist()
}

// DeleteCursor removes the named cursor; removing one that does not exist
// does nothing.
func (s *Stream) DeleteCursor(name string) error {
	s.mu.Lock()
	delete(s.fresh, name)
	_, ok := s.st.Cursors[name]
	if ok {
		delete(s.st.Cursors, name)
		s.stVer++
	}
	s.mu.Unlock()
	if !ok {
		return nil
	}
	return s.persist()
}

// Cursors returns every cursor's next offset to deliver, as Cursor
// returns it (those handed out but not yet committed included).
func (s *Stream) Cursors() map[string]uint64 {
	s.mu.Lock()
	defer s.mu.Unlock()
	out := make(map[string]uint64, len(s.st.Cursors)+len(s.fresh))
	for n, c := range s.fresh {
		out[n] = s.deliverableLocked(c)
	}
	for n, c := range s.st.Cursors {
		out[n] = s.deliverableLocked(c)
	}
	return out
}

func (s *Stream) cursorStatus(next uint64) []protocol.CursorStatus {
	cs := s.Cursors()
	out := make([]protocol.CursorStatus, 0, len(cs))
	for n, c := range cs {
		var lag uint64
		if next > c {
			lag = next - c
		}
		out = append(out, protocol.CursorStatus{Name: n, Committed: c, Lag: lag})
	}
	sort.Slice(out, func(a, b int) bool { return out[a].Name < out[b].Name })
	return out
}
