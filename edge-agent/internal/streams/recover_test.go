package streams

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/cloudskin/cloudskin/shared/protocol"
)

// damage functions change the end of a segment file as a crash or a bad
// disk would.
var damages = []struct {
	name string
	do   func(b []byte) []byte
}{
	{"byte flipped in the last record", func(b []byte) []byte { b[len(b)-20] ^= 0x40; return b }},
	{"cut in the middle of the last record", func(b []byte) []byte { return b[:len(b)-100] }},
}

func damageLastSegment(t *testing.T, dir string, do func([]byte) []byte) {
	t.Helper()
	path := lastSegment(t, dir)
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(path, do(b), 0o640); err != nil {
		t.Fatal(err)
	}
}

func TestTornTail(t *testing.T) {
	for _, segBytes := range []int64{0, 4 << 10} {
		for _, d := range damages {
			t.Run(fmt.Sprintf("%s/segment=%d", d.name, segBytes), func(t *testing.T) {
				dir := t.TempDir()
				sp := spec(func(sp *protocol.StreamSpec) { sp.SegmentBytes = segBytes })
				s := openT(t, dir, sp, Options{})
				appendN(t, s, 50)
				if err := s.CommitCursor("c", 30); err != nil {
					t.Fatal(err)
				}
				closeT(t, s)
				damageLastSegment(t, dir, d.do)

				s = openT(t, dir, sp, Options{})
				if rep := s.Stats().Recovered; !rep.Cut() || rep.FirstDropped != 50 {
					t.Errorf("Recovered = %+v, want record 50 cut", rep)
				}
				if got := s.NextOffset(); got != 50 {
					t.Fatalf("NextOffset = %d, want 50 (back to the last whole record)", got)
				}
				checkRecords(t, s, 1, 49)
				if got := s.Cursor("c"); got != 30 {
					t.Errorf("cursor = %d, want 30", got)
				}
				appendN(t, s, 5) // offsets continue at 50
				checkRecords(t, s, 1, 54)
				closeT(t, s)
				s = openT(t, dir, sp, Options{})
				if rep := s.Stats().Recovered; rep.Cut() {
					t.Errorf("second open cut again: %+v", rep)
				}
				checkRecords(t, s, 1, 54)
			})
		}
	}
}

// If the repair cuts records a reader had already passed, their offsets
// are not given to new records: a filler takes them.
func TestRepairBelowCursorKeepsOffsets(t *testing.T) {
	for _, d := range damages {
		t.Run(d.name, func(t *testing.T) {
			dir := t.TempDir()
			s := openT(t, dir, spec(), Options{})
			appendN(t, s, 50)
			if err := s.CommitCursor("c", 51); err != nil { // the reader had record 50
				t.Fatal(err)
			}
			closeT(t, s)
			damageLastSegment(t, dir, d.do)

			s = openT(t, dir, spec(), Options{})
			if got := s.NextOffset(); got != 51 {
				t.Fatalf("NextOffset = %d, want 51: offset 50 was read before the repair", got)
			}
			off, err := s.AppendWait(rec(51))
			if err != nil || off != 51 {
				t.Fatalf("append after repair = %d, %v; want 51", off, err)
			}
			recs, err := s.Read(45, 100, 0)
			if err != nil {
				t.Fatal(err)
			}
			var offs []uint64
			for _, r := range recs {
				offs = append(offs, r.Offset)
			}
			if got := fmt.Sprint(offs); got != "[45 46 47 48 49 51]" {
				t.Errorf("offsets read = %s, want [45 46 47 48 49 51] (the filler is skipped)", got)
			}
			if got := s.Cursor("c"); got != 51 {
				t.Errorf("cursor = %d, want 51", got)
			}
		})
	}
}

// A record that fails its checksum but is followed by valid ones is kept by
// the journal; Read skips it and counts it.
func TestCorruptRecordIsSkipped(t *testing.T) {
	dir := t.TempDir()
	s := openT(t, dir, spec(), Options{})
	appendN(t, s, 10)
	closeT(t, s)
	path := lastSegment(t, dir)
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	entry := len(b) / 10       // the records are all the same size
	b[5*entry+entry/2] ^= 0xff // inside record 6's payload
	if err := os.WriteFile(path, b, 0o640); err != nil {
		t.Fatal(err)
	}
	s = openT(t, dir, spec(), Options{})
	recs, err := s.Read(1, 100, 0)
	if err != nil {
		t.Fatal(err)
	}
	if len(recs) != 9 {
		t.Fatalf("%d records, want 9 (one skipped)", len(recs))
	}
	s.Read(1, 100, 0)
	if got := s.Stats().Corrupt; got != 1 {
		t.Errorf("Corrupt = %d, want 1 (counted once)", got)
	}
	if recs[5].Offset != 7 {
		t.Errorf("record after the skipped one has offset %d, want 7", recs[5].Offset)
	}
	if got, err := s.OffsetAt(base.Add(8 * time.Second)); err != nil || got != 8 {
		t.Errorf("OffsetAt over a corrupt record = %d, %v; want 8", got, err)
	}
}

// A journal write error fails the group, is reported, and the stream
// reopens its journal and takes appends again.
func TestWriteErrorRecovery(t *testing.T) {
	dir := t.TempDir()
	sp := spec(func(sp *protocol.StreamSpec) { sp.SegmentBytes, sp.QuotaBytes = 4<<10, 1<<20 })
	s := openT(t, dir, sp, Options{})
	appendN(t, s, 5)
	// The next segment file cannot be created where a directory has its
	// name (this works for root too, unlike permissions).
	var blockers []string
	for i := s.NextOffset(); i < s.NextOffset()+40; i++ {
		p := filepath.Join(dir, walDirName, fmt.Sprintf("%020d", i))
		if err := os.Mkdir(p, 0o750); err != nil {
			t.Fatal(err)
		}
		blockers = append(blockers, p)
	}
	var werr error
	acked := map[uint64]bool{}
	for range 40 {
		off, err := s.AppendWait(rec(s.NextOffset()))
		if err != nil {
			werr = err
			break
		}
		acked[off] = true
	}
	if werr == nil || errors.Is(werr, ErrFull) {
		t.Fatalf("append error = %v, want a write error", werr)
	}
	if s.Stats().WriteError == "" {
		t.Error("Stats().WriteError empty after a write error")
	}
	for _, p := range blockers {
		os.Remove(p)
	}
	deadline := time.Now().Add(20 * time.Second)
	var off uint64
	for {
		var err error
		off, err = s.AppendWait(Record{Topic: "sensors/x", Payload: []byte("after")})
		if err == nil {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("still failing after 20 s: %v", err)
		}
		time.Sleep(20 * time.Millisecond)
	}
	st := s.Stats()
	if st.Recoveries < 1 || st.WriteError != "" {
		t.Errorf("Recoveries %d, WriteError %q; want ≥ 1 and empty", st.Recoveries, st.WriteError)
	}
	// Everything acknowledged is there; the failed group may be too.
	recs, err := s.Read(1, 1000, 0)
	if err != nil {
		t.Fatal(err)
	}
	got := map[uint64]bool{}
	for _, r := range recs {
		got[r.Offset] = true
	}
	for o := range acked {
		if !got[o] {
			t.Errorf("acknowledged record %d lost", o)
		}
	}
	if !got[off] || off < 6 {
		t.Errorf("record after recovery at %d, want readable and after the first 5", off)
	}
	appendN(t, s, 30) // rolls into new segments
}

func TestOffsetAt(t *testing.T) {
	s := openT(t, t.TempDir(), spec(func(sp *protocol.StreamSpec) { sp.SegmentBytes = 4 << 10 }), Options{})
	// Times do not decrease, with runs of equal ones: offset o has time
	// base + (o/3)s, so offsets 3..5 share base+1s.
	if _, err := s.OffsetAt(base); err != nil {
		t.Fatal(err)
	}
	if got, _ := s.OffsetAt(base); got != 1 {
		t.Errorf("OffsetAt on an empty stream = %d, want NextOffset 1", got)
	}
	for o := uint64(1); o <= 100; o++ {
		r := rec(o)
		r.Time = base.Add(time.Duration(o/3) * time.Second)
		if _, err := s.AppendWait(r); err != nil {
			t.Fatal(err)
		}
	}
	for _, c := range []struct {
		at   time.Time
		want uint64
	}{
		{base.Add(-time.Hour), 1},
		{base, 1},
		{base.Add(time.Second), 3},
		{base.Add(1500 * time.Millisecond), 6},
		{base.Add(10 * time.Second), 30},
		{base.Add(33 * time.Second), 99},
		{base.Add(34 * time.Second), 101},
	} {
		if got, err := s.OffsetAt(c.at); err != nil || got != c.want {
			t.Errorf("OffsetAt(base%+v) = %d, %v; want %d", c.at.Sub(base), got, err, c.want)
		}
	}
}
