package streams

import (
	"errors"
	"maps"
	"os"
	"path/filepath"
	"sync"
	"testing"

	"github.com/cloudskin/cloudskin/shared/protocol"
)

func TestCursors(t *testing.T) {
	dir := t.TempDir()
	s := openT(t, dir, spec(), Options{})
	appendN(t, s, 10)
	if got := s.Cursor("a"); got != 1 {
		t.Fatalf("new cursor = %d, want 1", got)
	}
	steps := []struct {
		name string
		next uint64
		ok   bool
	}{
		{"a", 4, true},
		{"a", 4, true},   // the same again: nothing to do
		{"a", 3, false},  // backwards
		{"a", 11, true},  // up to NextOffset
		{"a", 12, false}, // past it
		{"b", 7, true},
		{"", 1, false},
	}
	for _, st := range steps {
		err := s.CommitCursor(st.name, st.next)
		if st.ok && err != nil {
			t.Errorf("CommitCursor(%q, %d): %v", st.name, st.next, err)
		}
		if !st.ok && !errors.Is(err, ErrCursor) {
			t.Errorf("CommitCursor(%q, %d) = %v, want ErrCursor", st.name, st.next, err)
		}
	}
	s.Cursor("fresh") // handed out, never committed: not persisted
	if got, want := s.Cursors(), map[string]uint64{"a": 11, "b": 7, "fresh": 1}; !maps.Equal(got, want) {
		t.Errorf("Cursors() = %v, want %v", got, want)
	}
	cs := s.Status().Cursors
	if len(cs) != 3 || cs[0] != (protocol.CursorStatus{Name: "a", Committed: 11, Lag: 0}) ||
		cs[1] != (protocol.CursorStatus{Name: "b", Committed: 7, Lag: 4}) {
		t.Errorf("Status().Cursors = %+v", cs)
	}
	if err := s.SetCursor("b", 2); err != nil { // rewind
		t.Errorf("SetCursor back: %v", err)
	}
	if err := s.SetCursor("b", 99); !errors.Is(err, ErrCursor) {
		t.Errorf("SetCursor past NextOffset = %v, want ErrCursor", err)
	}
	closeT(t, s)

	s = openT(t, dir, spec(), Options{})
	if got, want := s.Cursors(), map[string]uint64{"a": 11, "b": 2}; !maps.Equal(got, want) {
		t.Errorf("after reopen Cursors() = %v, want %v", got, want)
	}
	if err := s.DeleteCursor("a"); err != nil {
		t.Fatal(err)
	}
	if err := s.DeleteCursor("nope"); err != nil {
		t.Errorf("DeleteCursor of an unknown cursor: %v", err)
	}
	closeT(t, s)
	s = openT(t, dir, spec(), Options{})
	if got, want := s.Cursors(), map[string]uint64{"b": 2}; !maps.Equal(got, want) {
		t.Errorf("after delete and reopen Cursors() = %v, want %v", got, want)
	}
	if got := s.Cursor("a"); got != 1 {
		t.Errorf("deleted cursor starts over at %d, want 1", got)
	}
}

func TestConcurrentCursorCommits(t *testing.T) {
	dir := t.TempDir()
	s := openT(t, dir, spec(), Options{})
	appendN(t, s, 100)
	var wg sync.WaitGroup
	for c := range 8 {
		name := string(rune('a' + c))
		wg.Go(func() {
			for next := uint64(1); next <= 101; next += 5 {
				if err := s.CommitCursor(name, next); err != nil {
					t.Error(err)
					return
				}
			}
		})
	}
	wg.Wait()
	closeT(t, s)
	s = openT(t, dir, spec(), Options{})
	for name, c := range s.Cursors() {
		if c != 101 {
			t.Errorf("cursor %s = %d after reopen, want 101", name, c)
		}
	}
	if len(s.Cursors()) != 8 {
		t.Errorf("%d cursors, want 8", len(s.Cursors()))
	}
}

// A damaged state file does not stop the stream: it is set aside and the
// stream starts with no cursors.
func TestDamagedStateFile(t *testing.T) {
	dir := t.TempDir()
	s := openT(t, dir, spec(), Options{})
	appendN(t, s, 3)
	if err := s.CommitCursor("a", 2); err != nil {
		t.Fatal(err)
	}
	closeT(t, s)
	if err := os.WriteFile(filepath.Join(dir, stateName), []byte(`{"version":1,"cur`), 0o640); err != nil {
		t.Fatal(err)
	}
	s = openT(t, dir, spec(), Options{})
	if got := s.Cursors(); len(got) != 0 {
		t.Errorf("Cursors() = %v, want none", got)
	}
	if s.NextOffset() != 4 {
		t.Errorf("NextOffset = %d, want 4", s.NextOffset())
	}
	matches, _ := filepath.Glob(filepath.Join(dir, stateName+".bad-*"))
	if len(matches) != 1 {
		t.Errorf("damaged state file not set aside: %v", matches)
	}
}
