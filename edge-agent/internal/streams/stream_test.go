package streams

import (
	"errors"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/cloudskin/cloudskin/shared/protocol"
)

func TestAppendRead(t *testing.T) {
	s := openT(t, t.TempDir(), spec(), Options{})
	if got := s.NextOffset(); got != 1 {
		t.Fatalf("NextOffset of a new stream = %d, want 1", got)
	}
	if recs, err := s.Read(1, 10, 0); err != nil || len(recs) != 0 {
		t.Fatalf("Read of an empty stream = %v, %v; want nothing", recs, err)
	}
	appendN(t, s, 20)
	checkRecords(t, s, 1, 20)

	if got, want := s.FirstLocal(), uint64(1); got != want {
		t.Errorf("FirstLocal = %d, want %d", got, want)
	}
	if got, want := s.NextOffset(), uint64(21); got != want {
		t.Errorf("NextOffset = %d, want %d", got, want)
	}
	recs, err := s.Read(5, 3, 0)
	if err != nil || len(recs) != 3 || recs[0].Offset != 5 || recs[2].Offset != 7 {
		t.Fatalf("Read(5, 3) = %d records, %v; want 5..7", len(recs), err)
	}
	// maxBytes: each record is about 190 bytes; the first always comes.
	if recs, _ := s.Read(1, 100, 500); len(recs) != 2 {
		t.Errorf("Read(1, 100, 500 bytes) = %d records, want 2", len(recs))
	}
	if recs, _ := s.Read(1, 100, 1); len(recs) != 1 {
		t.Errorf("Read(1, 100, 1 byte) = %d records, want 1 (the first always comes)", len(recs))
	}
	if recs, err := s.Read(21, 10, 0); err != nil || len(recs) != 0 {
		t.Errorf("Read(NextOffset) = %v, %v; want nothing", recs, err)
	}
	if _, err := s.Read(0, 10, 0); !errors.Is(err, ErrNotLocal) {
		t.Errorf("Read(0) err = %v, want ErrNotLocal", err)
	}

	// A zero time is the stream's clock; headers may be nil.
	clk := newClock(base.Add(time.Hour))
	s2 := openT(t, t.TempDir(), spec(), Options{Now: clk.Now})
	off, err := s2.AppendWait(Record{Topic: "sensors/x", Payload: []byte("p")})
	if err != nil {
		t.Fatal(err)
	}
	recs, _ = s2.Read(off, 1, 0)
	if len(recs) != 1 || !recs[0].Time.Equal(clk.Now()) || recs[0].Headers != nil {
		t.Errorf("record with a zero time = %+v, want time %v and nil headers", recs, clk.Now())
	}
}

func TestConcurrentAppendersShareFsyncs(t *testing.T) {
	s := openT(t, t.TempDir(), spec(), Options{})
	const writers, each = 16, 100
	var mu sync.Mutex
	seen := map[uint64]bool{}
	var wg sync.WaitGroup
	for w := range writers {
		wg.Go(func() {
			for i := range each {
				off, err := s.AppendWait(Record{Topic: "sensors/w", Payload: []byte{byte(w), byte(i)}})
				if err != nil {
					t.Error(err)
					return
				}
				mu.Lock()
				if seen[off] {
					t.Errorf("offset %d given twice", off)
				}
				seen[off] = true
				mu.Unlock()
			}
		})
	}
	wg.Wait()
	for off := uint64(1); off <= writers*each; off++ {
		if !seen[off] {
			t.Fatalf("offset %d never given", off)
		}
	}
	st := s.Stats()
	if st.Appended != writers*each {
		t.Errorf("Appended = %d, want %d", st.Appended, writers*each)
	}
	if st.Batches >= st.Appended {
		t.Errorf("%d records took %d journal writes: no group commit", st.Appended, st.Batches)
	}
	t.Logf("%d records in %d fsyncs: %.1f per fsync", st.Appended, st.Batches, float64(st.Appended)/float64(st.Batches))
}

func TestDoneCalledOnceInOrder(t *testing.T) {
	s := openT(t, t.TempDir(), spec(), Options{MaxRecordBytes: 1000})
	const n = 2000
	type call struct {
		i   int
		off uint64
		err error
	}
	var mu sync.Mutex
	var calls []call
	all := make(chan struct{})
	for i := range n {
		r := Record{Topic: "sensors/a", Payload: []byte{byte(i)}}
		if i%500 == 250 {
			r.Payload = make([]byte, 2000) // too large
		}
		s.Append(r, func(off uint64, err error) {
			mu.Lock()
			calls = append(calls, call{i, off, err})
			if len(calls) == n {
				close(all)
			}
			mu.Unlock()
		})
	}
	select {
	case <-all:
	case <-time.After(30 * time.Second):
		t.Fatal("not every done was called")
	}
	mu.Lock()
	defer mu.Unlock()
	want := uint64(1)
	for k, c := range calls {
		if c.i != k {
			t.Fatalf("call %d is for append %d: out of order", k, c.i)
		}
		if c.i%500 == 250 {
			if !errors.Is(c.err, ErrTooLarge) {
				t.Errorf("append %d: err = %v, want ErrTooLarge", c.i, c.err)
			}
			continue
		}
		if c.err != nil || c.off != want {
			t.Fatalf("append %d: offset %d, err %v; want offset %d", c.i, c.off, c.err, want)
		}
		want++
	}
	time.Sleep(10 * time.Millisecond)
	if len(calls) != n {
		t.Errorf("%d calls, want exactly %d", len(calls), n)
	}
	if st := s.Status(); st.Rejected != 4 {
		t.Errorf("Rejected = %d, want 4", st.Rejected)
	}
}

func TestTooLarge(t *testing.T) {
	s := openT(t, t.TempDir(), spec(), Options{})
	_, err := s.AppendWait(Record{Topic: "sensors/a", Payload: make([]byte, DefaultMaxRecordBytes)})
	if !errors.Is(err, ErrTooLarge) {
		t.Fatalf("1 MiB payload: err = %v, want ErrTooLarge", err)
	}
	off, err := s.AppendWait(Record{Topic: "sensors/a", Payload: make([]byte, DefaultMaxRecordBytes-100)})
	if err != nil || off != 1 {
		t.Fatalf("payload just under the limit: %d, %v", off, err)
	}
	if st := s.Status(); st.Rejected != 1 || st.Records != 1 {
		t.Errorf("Rejected = %d, Records = %d; want 1, 1", st.Rejected, st.Records)
	}
}

func TestNotify(t *testing.T) {
	s := openT(t, t.TempDir(), spec(), Options{})
	ch := s.Notify()
	select {
	case <-ch:
		t.Fatal("Notify closed before any record")
	default:
	}
	appendN(t, s, 1)
	select {
	case <-ch:
	case <-time.After(5 * time.Second):
		t.Fatal("Notify not closed after an append")
	}
	if s.Notify() == ch {
		t.Error("Notify returned the closed channel again")
	}
}

func TestClose(t *testing.T) {
	dir := t.TempDir()
	s, err := Open(dir, spec(), Options{Logger: testLogger(t)})
	if err != nil {
		t.Fatal(err)
	}
	// Records queued when Close starts are still written.
	var wg sync.WaitGroup
	var failed int
	var mu sync.Mutex
	for i := range 200 {
		wg.Add(1)
		s.Append(Record{Topic: "sensors/x", Payload: []byte{byte(i)}}, func(_ uint64, err error) {
			if err != nil {
				mu.Lock()
				failed++
				mu.Unlock()
			}
			wg.Done()
		})
	}
	ch := s.Notify()
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	wg.Wait()
	if failed != 0 {
		t.Errorf("%d queued records failed on Close", failed)
	}
	select {
	case <-ch:
	default:
		t.Error("Notify channel not closed by Close")
	}
	if err := s.Close(); !errors.Is(err, ErrClosed) {
		t.Errorf("second Close: %v, want ErrClosed", err)
	}
	if _, err := s.AppendWait(rec(1)); !errors.Is(err, ErrClosed) {
		t.Errorf("Append after Close: %v, want ErrClosed", err)
	}
	if _, err := s.Read(1, 1, 0); !errors.Is(err, ErrClosed) {
		t.Errorf("Read after Close: %v, want ErrClosed", err)
	}
	if err := s.ApplyRetention(); !errors.Is(err, ErrClosed) {
		t.Errorf("ApplyRetention after Close: %v, want ErrClosed", err)
	}
	s2 := openT(t, dir, spec(), Options{})
	if got := s2.NextOffset(); got != 201 {
		t.Errorf("after reopen NextOffset = %d, want 201", got)
	}
}

func TestOpenRejects(t *testing.T) {
	dir := t.TempDir()
	if _, err := Open(dir, protocol.StreamSpec{Name: "Bad Name", Topics: []string{"a"}}, Options{}); err == nil {
		t.Error("Open accepted an invalid spec")
	}
	s := openT(t, dir, spec(), Options{})
	if _, err := Open(dir, spec(), Options{}); err == nil {
		t.Error("a second Open of the same directory succeeded")
	}
	_ = s
}

func TestReopenKeepsEverything(t *testing.T) {
	dir := t.TempDir()
	clk := newClock(base)
	sp := spec(small, func(sp *protocol.StreamSpec) { sp.Spill = true; sp.OnFull = protocol.OnFullDropOldest })
	s := openT(t, dir, sp, Options{Now: clk.Now})
	appendN(t, s, 100)
	if err := s.CommitCursor("cell.a.in", 40); err != nil {
		t.Fatal(err)
	}
	if err := s.MarkSpilled(30, 5000); err != nil {
		t.Fatal(err)
	}
	appendN(t, s, 60) // past the quota: spilled records are freed, then the oldest dropped
	before := s.Status()
	if before.FirstLocal <= 1 {
		t.Fatalf("FirstLocal = %d: the quota freed nothing", before.FirstLocal)
	}
	closeT(t, s)

	s = openT(t, dir, sp, Options{Now: clk.Now})
	after := s.Status()
	for _, c := range []struct {
		name      string
		got, want uint64
	}{
		{"FirstLocal", after.FirstLocal, before.FirstLocal},
		{"NextOffset", after.NextOffset, before.NextOffset},
		{"SpilledThrough", after.SpilledThrough, 30},
		{"FirstOffset", after.FirstOffset, before.FirstOffset},
		{"cursor", s.Cursor("cell.a.in"), max(40, before.FirstLocal)},
	} {
		if c.got != c.want {
			t.Errorf("after reopen %s = %d, want %d", c.name, c.got, c.want)
		}
	}
	if after.SpilledBytes != 5000 {
		t.Errorf("SpilledBytes = %d, want 5000", after.SpilledBytes)
	}
	checkRecords(t, s, after.FirstLocal, after.NextOffset-1)
	appendN(t, s, 1) // numbering continues
}

func TestOffsetsContinueAfterEverythingIsRemoved(t *testing.T) {
	dir := t.TempDir()
	clk := newClock(base)
	sp := spec(func(sp *protocol.StreamSpec) { sp.RetentionSeconds = 60 })
	s := openT(t, dir, sp, Options{Now: clk.Now})
	appendN(t, s, 10)
	clk.Set(base.Add(time.Hour))
	if err := s.ApplyRetention(); err != nil {
		t.Fatal(err)
	}
	if got := s.FirstLocal(); got != 11 {
		t.Fatalf("FirstLocal after everything expired = %d, want 11", got)
	}
	closeT(t, s)
	s = openT(t, dir, sp, Options{Now: clk.Now})
	if got := s.NextOffset(); got != 11 {
		t.Fatalf("NextOffset after reopen = %d, want 11 (offsets must not restart)", got)
	}
	if _, err := s.Read(5, 1, 0); !errors.Is(err, ErrNotLocal) {
		t.Errorf("Read(5) = %v, want ErrNotLocal", err)
	}
	appendN(t, s, 1)
}

func TestUpdate(t *testing.T) {
	dir := t.TempDir()
	sp := spec(func(sp *protocol.StreamSpec) { sp.SegmentBytes = 4 << 10; sp.QuotaBytes = 64 << 10 })
	s := openT(t, dir, sp, Options{})
	appendN(t, s, 200) // ~40 KiB
	if err := s.Update(spec(func(sp *protocol.StreamSpec) { sp.Name = "other" })); err == nil {
		t.Error("Update changed the name")
	}
	if err := s.Update(protocol.StreamSpec{Name: "s"}); err == nil {
		t.Error("Update accepted a spec without topics")
	}
	// A smaller quota under drop-oldest drops down to it at once.
	sp2 := spec(small, func(sp *protocol.StreamSpec) { sp.OnFull = protocol.OnFullDropOldest; sp.Topics = []string{"a/+", "b"} })
	if err := s.Update(sp2); err != nil {
		t.Fatal(err)
	}
	if got := s.Spec(); strings.Join(got.Topics, ",") != "a/+,b" || got.QuotaBytes != sp2.QuotaBytes || got.SegmentBytes != sp2.SegmentBytes {
		t.Errorf("Spec() = %+v, want %+v", got, sp2)
	}
	st := s.Status()
	if st.LocalBytes > sp2.QuotaBytes {
		t.Errorf("LocalBytes = %d after lowering the quota to %d", st.LocalBytes, sp2.QuotaBytes)
	}
	if st.Dropped == 0 || st.Dropped != st.FirstLocal-1 {
		t.Errorf("Dropped = %d, FirstLocal = %d; want Dropped = FirstLocal-1 > 0", st.Dropped, st.FirstLocal)
	}
	checkRecords(t, s, st.FirstLocal, st.NextOffset-1)
	appendN(t, s, 50)
}
