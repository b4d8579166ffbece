package streams

import (
	"testing"
	"time"

	"github.com/cloudskin/cloudskin/shared/protocol"
)

func spilling(sp *protocol.StreamSpec) {
	sp.SegmentBytes, sp.QuotaBytes, sp.Spill = 4<<10, 1<<20, true
}

func TestNextSealedBySize(t *testing.T) {
	clk := newClock(base.Add(100 * time.Second))
	s := openT(t, t.TempDir(), spec(spilling), Options{Now: clk.Now})
	if _, _, ok := s.NextSealed(); ok {
		t.Fatal("an empty stream has a sealed range")
	}
	appendN(t, s, 90) // ~19 KiB: 4 full segments of 20 records, the fifth open
	segs, err := s.segments()
	if err != nil {
		t.Fatal(err)
	}
	want := uint64(1)
	for i := 0; i+1 < len(segs); i++ {
		first, last, ok := s.NextSealed()
		if !ok || first != want || last != segs[i+1].index-1 {
			t.Fatalf("NextSealed = %d..%d (%v), want %d..%d", first, last, ok, want, segs[i+1].index-1)
		}
		if first, _, _ := s.NextSealed(); first != want {
			t.Fatal("NextSealed moved without MarkSpilled")
		}
		if err := s.MarkSpilled(last+1, int64(segs[i].size)); err != nil {
			t.Fatal(err)
		}
		want = last + 1
	}
	if first, last, ok := s.NextSealed(); ok {
		t.Errorf("the open segment is sealed (%d..%d) before SealSeconds", first, last)
	}
	st := s.Status()
	if want != 81 {
		t.Errorf("spilled through %d, want 81 (4 segments of 20 records)", want)
	}
	if st.SpilledThrough != want || st.BacklogBytes <= 0 || st.BacklogBytes > 4<<10+300 {
		t.Errorf("SpilledThrough %d (want %d), BacklogBytes %d", st.SpilledThrough, want, st.BacklogBytes)
	}
	if got, wantAge := st.OldestUnspilledAgeSeconds, clk.Now().Sub(rec(want).Time).Seconds(); got != wantAge {
		t.Errorf("OldestUnspilledAgeSeconds = %v, want %v", got, wantAge)
	}
	checkRecords(t, s, 1, 90) // marking spilled removes nothing by itself
}

func TestNextSealedByAge(t *testing.T) {
	clk := newClock(base)
	s := openT(t, t.TempDir(), spec(spilling, func(sp *protocol.StreamSpec) { sp.SealSeconds = 30 }), Options{Now: clk.Now})
	appendN(t, s, 5) // times base+1s..base+5s
	clk.Set(base.Add(30 * time.Second))
	if _, _, ok := s.NextSealed(); ok {
		t.Fatal("sealed before the oldest record is 30 s old")
	}
	clk.Set(base.Add(31 * time.Second))
	first, last, ok := s.NextSealed()
	if !ok || first != 1 || last != 5 {
		t.Fatalf("NextSealed = %d..%d (%v), want 1..5", first, last, ok)
	}
	if err := s.MarkSpilled(6, 100); err != nil {
		t.Fatal(err)
	}
	if _, _, ok := s.NextSealed(); ok {
		t.Error("a sealed range with nothing left to spill")
	}
	appendN(t, s, 3) // 6..8, times base+6s..
	clk.Set(base.Add(37 * time.Second))
	if first, last, ok := s.NextSealed(); !ok || first != 6 || last != 8 {
		t.Errorf("NextSealed = %d..%d (%v), want 6..8", first, last, ok)
	}

	// The default seal is 60 s; without Spill nothing is ever sealed.
	s2 := openT(t, t.TempDir(), spec(), Options{Now: clk.Now})
	appendN(t, s2, 3)
	clk.Set(base.Add(time.Hour))
	if _, _, ok := s2.NextSealed(); ok {
		t.Error("a stream without Spill has a sealed range")
	}
	s3 := openT(t, t.TempDir(), spec(spilling), Options{Now: clk.Now})
	appendN(t, s3, 3)
	clk.Set(base.Add(62 * time.Second))
	if _, _, ok := s3.NextSealed(); !ok {
		t.Error("not sealed after the default 60 s")
	}
}

func TestMarkSpilledPersists(t *testing.T) {
	dir := t.TempDir()
	s := openT(t, dir, spec(spilling), Options{})
	appendN(t, s, 30)
	for _, m := range []struct {
		through uint64
		bytes   int64
		ok      bool
	}{
		{10, 1000, true},
		{20, 234, true},
		{15, 999, true}, // behind: a repeated mark, ignored
		{32, 1, false},  // past NextOffset
	} {
		if err := s.MarkSpilled(m.through, m.bytes); (err == nil) != m.ok {
			t.Errorf("MarkSpilled(%d) = %v", m.through, err)
		}
	}
	s.SetUploadError(errTest("console unreachable"))
	if st := s.Status(); st.LastUploadError != "console unreachable" {
		t.Errorf("LastUploadError = %q", st.LastUploadError)
	}
	s.SetUploadError(nil)
	closeT(t, s)

	s = openT(t, dir, spec(spilling), Options{})
	st := s.Status()
	if st.SpilledThrough != 20 || st.SpilledBytes != 1234 || st.FirstOffset != 1 || st.LastUploadError != "" {
		t.Errorf("after reopen SpilledThrough %d, SpilledBytes %d, FirstOffset %d, LastUploadError %q; want 20, 1234, 1, empty",
			st.SpilledThrough, st.SpilledBytes, st.FirstOffset, st.LastUploadError)
	}
	if first, _, ok := s.NextSealed(); ok && first != 20 {
		t.Errorf("NextSealed first = %d, want 20", first)
	}
}

type errTest string

func (e errTest) Error() string { return string(e) }
