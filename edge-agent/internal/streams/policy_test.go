package streams

import (
	"errors"
	"fmt"
	"testing"
	"time"

	"github.com/cloudskin/cloudskin/edge-agent/internal/journal"
	"github.com/cloudskin/cloudskin/shared/protocol"
)

func TestQuotaRejectNew(t *testing.T) {
	s := openT(t, t.TempDir(), spec(small), Options{})
	var accepted, refused uint64
	for i := uint64(1); i <= 150; i++ {
		off, err := s.AppendWait(rec(s.NextOffset()))
		switch {
		case err == nil:
			if refused > 0 {
				t.Fatalf("append %d accepted after an earlier one was refused", i)
			}
			accepted++
			if off != accepted {
				t.Fatalf("offset %d, want %d", off, accepted)
			}
		case errors.Is(err, ErrFull) && errors.Is(err, journal.ErrFull):
			refused++
		default:
			t.Fatalf("append %d: %v", i, err)
		}
	}
	st := s.Status()
	if refused == 0 || accepted+refused != 150 {
		t.Fatalf("accepted %d, refused %d: want both, 150 in all", accepted, refused)
	}
	if st.Rejected != refused || st.Dropped != 0 || st.Records != accepted {
		t.Errorf("Rejected %d, Dropped %d, Records %d; want %d, 0, %d", st.Rejected, st.Dropped, st.Records, refused, accepted)
	}
	if st.LocalBytes > 16<<10 {
		t.Errorf("LocalBytes %d over the quota", st.LocalBytes)
	}
	if st.FirstLocal != 1 || st.NextOffset != accepted+1 {
		t.Errorf("local %d..%d, want 1..%d: reject-new must keep everything it accepted", st.FirstLocal, st.NextOffset-1, accepted)
	}
	checkRecords(t, s, 1, accepted)
}

func TestQuotaDropOldest(t *testing.T) {
	s := openT(t, t.TempDir(), spec(small, func(sp *protocol.StreamSpec) { sp.OnFull = protocol.OnFullDropOldest }), Options{})
	appendN(t, s, 500) // ~100 KiB through a 16 KiB quota; every append succeeds
	st := s.Status()
	if st.Rejected != 0 || st.Records != 500 || st.NextOffset != 501 {
		t.Fatalf("Rejected %d, Records %d, NextOffset %d; want 0, 500, 501", st.Rejected, st.Records, st.NextOffset)
	}
	if st.Dropped == 0 || st.Dropped != st.FirstLocal-1 {
		t.Errorf("Dropped = %d, FirstLocal = %d: every record below FirstLocal must be counted", st.Dropped, st.FirstLocal)
	}
	if st.LocalBytes > 16<<10 {
		t.Errorf("LocalBytes %d over the quota", st.LocalBytes)
	}
	// Whole segments go: the stream keeps at least 3 of its 4.
	if local := st.NextOffset - st.FirstLocal; local < 55 {
		t.Errorf("only %d records kept of a quota that holds about 78", local)
	}
	checkRecords(t, s, st.FirstLocal, 500)
	if _, err := s.Read(1, 1, 0); !errors.Is(err, ErrNotLocal) {
		t.Errorf("Read(1) = %v, want ErrNotLocal", err)
	}
	// Nothing was spilled, so a cursor at 1 moves on to what exists.
	if got := s.Cursor("late"); got != st.FirstLocal {
		t.Errorf("Cursor of a new reader = %d, want FirstLocal %d", got, st.FirstLocal)
	}
}

func TestQuotaFreesSpilledRecordsFirst(t *testing.T) {
	for _, onFull := range []string{protocol.OnFullReject, protocol.OnFullDropOldest} {
		t.Run(onFull, func(t *testing.T) {
			s := openT(t, t.TempDir(), spec(small, func(sp *protocol.StreamSpec) { sp.OnFull = onFull; sp.Spill = true }), Options{})
			appendN(t, s, 75) // just under the quota
			if err := s.MarkSpilled(50, 10_000); err != nil {
				t.Fatal(err)
			}
			appendN(t, s, 40) // fits only once the 49 spilled records are gone
			st, stats := s.Status(), s.Stats()
			if st.Dropped != 0 || st.Rejected != 0 {
				t.Errorf("Dropped %d, Rejected %d: spilled records must make room first", st.Dropped, st.Rejected)
			}
			if st.FirstLocal != 50 || stats.Freed != 49 {
				t.Errorf("FirstLocal %d, Freed %d; want 50, 49", st.FirstLocal, stats.Freed)
			}
			if st.FirstOffset != 1 {
				t.Errorf("FirstOffset = %d, want 1 (in the object store)", st.FirstOffset)
			}
			checkRecords(t, s, 50, 115)
			if _, err := s.Read(10, 1, 0); !errors.Is(err, ErrNotLocal) {
				t.Errorf("Read(10) = %v, want ErrNotLocal", err)
			}
			if got := s.Cursor("reader"); got != 1 {
				t.Errorf("new cursor = %d, want 1 (spilled records are readable)", got)
			}

			// Past what spilling freed, the policy applies.
			appendN(t, s, 0)
			var refused int
			for range 60 {
				if _, err := s.AppendWait(rec(s.NextOffset())); errors.Is(err, ErrFull) {
					refused++
				} else if err != nil {
					t.Fatal(err)
				}
			}
			st = s.Status()
			switch onFull {
			case protocol.OnFullReject:
				if refused == 0 || st.Rejected != uint64(refused) || st.Dropped != 0 {
					t.Errorf("refused %d, Rejected %d, Dropped %d", refused, st.Rejected, st.Dropped)
				}
			case protocol.OnFullDropOldest:
				if refused != 0 || st.Dropped == 0 || st.Dropped != st.FirstLocal-50 {
					t.Errorf("refused %d, Dropped %d, FirstLocal %d: want Dropped = FirstLocal-50", refused, st.Dropped, st.FirstLocal)
				}
			}
		})
	}
}

// Records dropped unspilled between spilled ones leave a hole that cursors
// skip, rather than waiting for the object store to serve it.
func TestDroppedRangeBetweenSpilledIsSkipped(t *testing.T) {
	dir := t.TempDir()
	sp := spec(small, func(sp *protocol.StreamSpec) { sp.OnFull = protocol.OnFullDropOldest; sp.Spill = true })
	s := openT(t, dir, sp, Options{})
	appendN(t, s, 20)
	if err := s.MarkSpilled(21, 1); err != nil {
		t.Fatal(err)
	}
	if err := s.CommitCursor("slow", 21); err != nil {
		t.Fatal(err)
	}
	appendN(t, s, 200) // the uploader is offline: drops beyond the spilled
	st := s.Status()
	if st.Dropped == 0 {
		t.Fatal("nothing dropped")
	}
	if got := s.Cursor("slow"); got != st.FirstLocal {
		t.Errorf("cursor in the dropped range = %d, want FirstLocal %d", got, st.FirstLocal)
	}
	if got := s.Cursor("new"); got != 1 {
		t.Errorf("new cursor = %d, want 1 (spilled)", got)
	}
	first, _, ok := s.NextSealed()
	if !ok || first != st.FirstLocal {
		t.Errorf("NextSealed first = %d (%v), want FirstLocal %d", first, ok, st.FirstLocal)
	}
	closeT(t, s)
	s = openT(t, dir, sp, Options{})
	if got := s.Cursor("slow"); got != st.FirstLocal {
		t.Errorf("after reopen cursor = %d, want %d", got, st.FirstLocal)
	}
}

func TestLostRanges(t *testing.T) {
	var st state
	for _, r := range [][2]uint64{{10, 19}, {40, 49}, {20, 25}, {30, 35}, {36, 39}, {5, 5}} {
		st.addLost(r[0], r[1])
	}
	if got, want := fmt.Sprint(st.Lost), "[{5 5} {10 25} {30 49}]"; got != want {
		t.Fatalf("Lost = %s, want %s", got, want)
	}
	for off, want := range map[uint64]uint64{1: 1, 5: 6, 10: 26, 26: 26, 29: 29, 30: 50, 49: 50, 50: 50} {
		if got := st.skipLost(off); got != want {
			t.Errorf("skipLost(%d) = %d, want %d", off, got, want)
		}
	}
}

func TestRetentionByAge(t *testing.T) {
	for _, spill := range []bool{false, true} {
		t.Run(fmt.Sprint("spill=", spill), func(t *testing.T) {
			clk := newClock(base.Add(300 * time.Second))
			sp := spec(func(sp *protocol.StreamSpec) {
				sp.SegmentBytes, sp.QuotaBytes, sp.RetentionSeconds, sp.Spill = 4<<10, 1<<20, 100, spill
			})
			s := openT(t, t.TempDir(), sp, Options{Now: clk.Now})
			appendN(t, s, 300) // record i has time base+i s; records < base+200 s are expired
			const firstKept = 200
			if spill {
				if err := s.MarkSpilled(60, 1); err != nil {
					t.Fatal(err)
				}
				if err := s.ApplyRetention(); err != nil {
					t.Fatal(err)
				}
				if fl := s.FirstLocal(); fl > 60 || fl < 40 {
					t.Errorf("FirstLocal = %d: retention must stop at the spilled (60), in whole segments", fl)
				}
				if err := s.MarkSpilled(301, 1); err != nil {
					t.Fatal(err)
				}
			}
			if err := s.ApplyRetention(); err != nil {
				t.Fatal(err)
			}
			st, stats := s.Status(), s.Stats()
			if st.FirstLocal > firstKept {
				t.Errorf("FirstLocal = %d: retention removed unexpired records (from %d on)", st.FirstLocal, firstKept)
			}
			if st.FirstLocal <= firstKept-25 {
				t.Errorf("FirstLocal = %d: expired records older than a segment were kept", st.FirstLocal)
			}
			if stats.Expired != st.FirstLocal-1 || st.Dropped != 0 {
				t.Errorf("Expired %d, Dropped %d, FirstLocal %d: want Expired = FirstLocal-1, Dropped 0", stats.Expired, st.Dropped, st.FirstLocal)
			}
			checkRecords(t, s, st.FirstLocal, 300)
			want := st.FirstLocal // without spill the expired records exist nowhere
			if spill {
				want = 1
			}
			if got := s.Cursor("reader"); got != want {
				t.Errorf("Cursor = %d, want %d", got, want)
			}
		})
	}
}

// A log of one segment is cut inside it, or a slow stream would never
// expire anything.
func TestRetentionCutsInsideASingleSegment(t *testing.T) {
	clk := newClock(base.Add(50 * time.Second))
	s := openT(t, t.TempDir(), spec(func(sp *protocol.StreamSpec) { sp.RetentionSeconds = 20 }), Options{Now: clk.Now})
	appendN(t, s, 40)
	if n := segmentCount(t, s); n != 1 {
		t.Fatalf("%d segments, want 1", n)
	}
	if err := s.ApplyRetention(); err != nil {
		t.Fatal(err)
	}
	if got := s.FirstLocal(); got != 30 {
		t.Errorf("FirstLocal = %d, want 30 (the first record at or after base+30 s)", got)
	}
	checkRecords(t, s, 30, 40)
}

func TestRetentionByBytes(t *testing.T) {
	for _, spill := range []bool{false, true} {
		t.Run(fmt.Sprint("spill=", spill), func(t *testing.T) {
			sp := spec(func(sp *protocol.StreamSpec) {
				sp.SegmentBytes, sp.QuotaBytes, sp.RetentionBytes, sp.Spill = 4<<10, 1<<20, 10<<10, spill
			})
			s := openT(t, t.TempDir(), sp, Options{})
			appendN(t, s, 200) // ~42 KiB in 10 segments
			if err := s.ApplyRetention(); err != nil {
				t.Fatal(err)
			}
			if spill {
				if fl := s.FirstLocal(); fl != 1 {
					t.Fatalf("FirstLocal = %d: retention removed records not yet spilled", fl)
				}
				if err := s.MarkSpilled(201, 1); err != nil {
					t.Fatal(err)
				}
				if err := s.ApplyRetention(); err != nil {
					t.Fatal(err)
				}
			}
			st, stats := s.Status(), s.Stats()
			if st.LocalBytes > 10<<10 {
				t.Errorf("LocalBytes = %d, over the retention of %d", st.LocalBytes, 10<<10)
			}
			if st.LocalBytes < 10<<10-4300 {
				t.Errorf("LocalBytes = %d: removed more than whole segments over the limit", st.LocalBytes)
			}
			if stats.Expired != st.FirstLocal-1 || st.Dropped != 0 {
				t.Errorf("Expired %d, Dropped %d, FirstLocal %d", stats.Expired, st.Dropped, st.FirstLocal)
			}
			checkRecords(t, s, st.FirstLocal, 200)
		})
	}
}

func TestRetentionRunsInTheBackground(t *testing.T) {
	clk := newClock(base.Add(time.Hour))
	sp := spec(func(sp *protocol.StreamSpec) { sp.RetentionSeconds = 60 })
	s := openT(t, t.TempDir(), sp, Options{Now: clk.Now, MaintainEvery: 10 * time.Millisecond})
	appendN(t, s, 10)
	deadline := time.Now().Add(10 * time.Second)
	for s.FirstLocal() != 11 {
		if time.Now().After(deadline) {
			t.Fatalf("FirstLocal = %d after 10 s, want 11", s.FirstLocal())
		}
		time.Sleep(10 * time.Millisecond)
	}
}
