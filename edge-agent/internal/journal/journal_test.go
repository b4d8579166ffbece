package journal

import (
	"bytes"
	"errors"
	"math/rand/v2"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

func TestEmptyJournal(t *testing.T) {
	j := openT(t, tempJournalDir(t), Options{NoSync: true})
	if f, l, n, next := j.FirstIndex(), j.LastIndex(), j.Len(), j.NextIndex(); f != 0 || l != 0 || n != 0 || next != 1 {
		t.Fatalf("empty journal: first %d last %d len %d next %d, want 0 0 0 1", f, l, n, next)
	}
	for _, i := range []uint64{0, 1, 2} {
		if _, err := j.Read(i); !errors.Is(err, ErrNotFound) {
			t.Errorf("Read(%d) on empty journal: %v, want ErrNotFound", i, err)
		}
	}
	if f, l, err := j.Append(); f != 0 || l != 0 || err != nil {
		t.Errorf("Append() = %d, %d, %v; want 0, 0, nil", f, l, err)
	}
	if j.Recovered().Cut() {
		t.Errorf("fresh journal reports a cut: %+v", j.Recovered())
	}
}

func TestEmptyRecord(t *testing.T) {
	dir := tempJournalDir(t)
	j := openT(t, dir, Options{NoSync: true})
	if first, _, err := j.Append([]byte{}, nil, []byte("x")); err != nil || first != 1 {
		t.Fatalf("Append(empty, nil, x) = %d, %v", first, err)
	}
	closeT(t, j)
	j = openT(t, dir, Options{NoSync: true})
	for i, want := range []string{"", "", "x"} {
		if got, err := j.Read(uint64(i + 1)); err != nil || string(got) != want {
			t.Errorf("Read(%d) = %q, %v; want %q", i+1, got, err, want)
		}
	}
}

func TestAppendReadReopen(t *testing.T) {
	dir := tempJournalDir(t)
	opts := Options{SegmentSize: 4 << 10} // several segments, real fsync
	j := openT(t, dir, opts)
	appendN(t, j, 40)
	first, last, err := j.Append(payloadFor(41), payloadFor(42), payloadFor(43), payloadFor(44))
	if err != nil || first != 41 || last != 44 {
		t.Fatalf("Append(batch) = %d, %d, %v; want 41, 44, nil", first, last, err)
	}
	appendN(t, j, 36)
	if f, l, n := j.FirstIndex(), j.LastIndex(), j.Len(); f != 1 || l != 80 || n != 80 {
		t.Fatalf("first %d last %d len %d, want 1 80 80", f, l, n)
	}
	checkRecords(t, j, 1, 80)
	if st := j.Stats(); st.Records != 80 || st.Batches != 77 {
		t.Errorf("Stats = %+v, want 80 records in 77 batches", st)
	}
	total, _, err := diskUsage(dir)
	if err != nil || total != j.SizeBytes() {
		t.Errorf("SizeBytes = %d, files hold %d (%v)", j.SizeBytes(), total, err)
	}
	if n := len(segmentFiles(t, dir)); n < 3 {
		t.Errorf("want several segments of 4 KiB, got %d", n)
	}
	closeT(t, j)
	if _, err := j.Read(1); !errors.Is(err, ErrClosed) {
		t.Errorf("Read after Close: %v, want ErrClosed", err)
	}
	if _, _, err := j.Append([]byte("x")); !errors.Is(err, ErrClosed) {
		t.Errorf("Append after Close: %v, want ErrClosed", err)
	}
	if err := j.Close(); !errors.Is(err, ErrClosed) {
		t.Errorf("second Close: %v, want ErrClosed", err)
	}

	j = openT(t, dir, opts)
	if rep := j.Recovered(); rep.Cut() || rep.CorruptCount != 0 {
		t.Errorf("clean reopen reports %+v", rep)
	}
	if f, l := j.FirstIndex(), j.LastIndex(); f != 1 || l != 80 {
		t.Fatalf("after reopen first %d last %d, want 1 80", f, l)
	}
	if j.SizeBytes() != total {
		t.Errorf("after reopen SizeBytes = %d, want %d", j.SizeBytes(), total)
	}
	checkRecords(t, j, 1, 80)
	appendN(t, j, 5)
	checkRecords(t, j, 1, 85)
}

func TestIndicesMonotonic(t *testing.T) {
	dir := tempJournalDir(t)
	opts := Options{SegmentSize: 2 << 10, NoSync: true}
	j := openT(t, dir, opts)
	appendN(t, j, 30)

	if err := j.TruncateFront(12); err != nil {
		t.Fatal(err)
	}
	if f, l, n := j.FirstIndex(), j.LastIndex(), j.Len(); f != 12 || l != 30 || n != 19 {
		t.Fatalf("after TruncateFront(12): first %d last %d len %d, want 12 30 19", f, l, n)
	}
	if _, err := j.Read(11); !errors.Is(err, ErrNotFound) {
		t.Errorf("Read(11) after truncation: %v, want ErrNotFound", err)
	}
	checkRecords(t, j, 12, 30)
	if err := j.TruncateFront(5); err != nil {
		t.Errorf("TruncateFront before FirstIndex: %v, want no-op", err)
	}
	if err := j.TruncateFront(32); !errors.Is(err, ErrNotFound) {
		t.Errorf("TruncateFront past NextIndex: %v, want ErrNotFound", err)
	}
	total, _, _ := diskUsage(dir)
	if j.SizeBytes() != total {
		t.Errorf("SizeBytes after truncate = %d, files hold %d", j.SizeBytes(), total)
	}

	closeT(t, j)
	j = openT(t, dir, opts)
	if f, l := j.FirstIndex(), j.LastIndex(); f != 12 || l != 30 {
		t.Fatalf("after reopen first %d last %d, want 12 30", f, l)
	}

	// Removing everything leaves an empty journal that keeps counting.
	if err := j.TruncateFront(j.NextIndex()); err != nil {
		t.Fatal(err)
	}
	if f, l, n, next := j.FirstIndex(), j.LastIndex(), j.Len(), j.NextIndex(); f != 0 || l != 0 || n != 0 || next != 31 {
		t.Fatalf("emptied: first %d last %d len %d next %d, want 0 0 0 31", f, l, n, next)
	}
	if err := j.TruncateFront(31); err != nil {
		t.Errorf("TruncateFront(NextIndex) on empty journal: %v", err)
	}
	closeT(t, j)
	j = openT(t, dir, opts)
	if f, l, next := j.FirstIndex(), j.LastIndex(), j.NextIndex(); f != 0 || l != 0 || next != 31 {
		t.Fatalf("emptied and reopened: first %d last %d next %d, want 0 0 31", f, l, next)
	}
	appendN(t, j, 3)
	if f, l := j.FirstIndex(), j.LastIndex(); f != 31 || l != 33 {
		t.Fatalf("appended after emptying: first %d last %d, want 31 33", f, l)
	}
	checkRecords(t, j, 31, 33)
}

// The journal predicts when the library starts a segment file, to fsync the
// directory then; the prediction must match the files.
func TestSegmentRollPrediction(t *testing.T) {
	dir := tempJournalDir(t)
	j := openT(t, dir, Options{SegmentSize: 1000, NoSync: true})
	rng := rand.New(rand.NewPCG(1, 2))
	for range 300 {
		batch := make([][]byte, 1+rng.IntN(4))
		for k := range batch {
			batch[k] = make([]byte, rng.IntN(700))
		}
		if _, _, err := j.Append(batch...); err != nil {
			t.Fatal(err)
		}
		segs := segmentFiles(t, dir)
		if got := segs[len(segs)-1].size; got != j.tail {
			t.Fatalf("last segment holds %d bytes, journal predicted %d", got, j.tail)
		}
	}
	total, _, _ := diskUsage(dir)
	if total != j.SizeBytes() {
		t.Errorf("SizeBytes = %d, files hold %d", j.SizeBytes(), total)
	}
}

func TestQuota(t *testing.T) {
	dir := tempJournalDir(t)
	opts := Options{SegmentSize: 4 << 10, MaxBytes: 16 << 10, NoSync: true}
	j := openT(t, dir, opts)
	rec := bytes.Repeat([]byte("q"), 500)
	var n int
	for {
		_, _, err := j.Append(rec)
		if errors.Is(err, ErrFull) {
			if !strings.Contains(err.Error(), "quota") {
				t.Errorf("ErrFull message does not say why: %v", err)
			}
			break
		}
		if err != nil {
			t.Fatal(err)
		}
		if n++; n > 100 {
			t.Fatal("quota never reached")
		}
	}
	size, next := j.SizeBytes(), j.NextIndex()
	if size > opts.MaxBytes || size+entrySize(len(rec)) <= opts.MaxBytes {
		t.Fatalf("stopped at %d bytes; quota %d, record %d", size, opts.MaxBytes, entrySize(len(rec)))
	}
	// A batch that does not fit as a whole is refused as a whole.
	if _, _, err := j.Append([]byte("small"), rec); !errors.Is(err, ErrFull) {
		t.Fatalf("batch over quota: %v, want ErrFull", err)
	}
	total, _, _ := diskUsage(dir)
	if j.SizeBytes() != size || j.NextIndex() != next || total != size {
		t.Fatalf("refused append changed the log: size %d→%d (files %d), next %d→%d", size, j.SizeBytes(), total, next, j.NextIndex())
	}
	if st := j.Stats(); st.Rejected != 3 {
		t.Errorf("Stats.Rejected = %d, want 3", st.Rejected)
	}

	closeT(t, j)
	j = openT(t, dir, opts)
	if rep := j.Recovered(); rep.Cut() {
		t.Fatalf("log at quota needed repair: %+v", rep)
	}
	if j.NextIndex() != next || j.SizeBytes() != size {
		t.Fatalf("reopened: next %d size %d, want %d %d", j.NextIndex(), j.SizeBytes(), next, size)
	}
	if _, _, err := j.Append(rec); !errors.Is(err, ErrFull) {
		t.Fatalf("Append at quota after reopen: %v, want ErrFull", err)
	}
	// Dropping the oldest makes room again.
	if err := j.TruncateFront(j.FirstIndex() + j.Len()/2); err != nil {
		t.Fatal(err)
	}
	if j.SizeBytes() >= size {
		t.Fatalf("TruncateFront freed nothing: %d bytes", j.SizeBytes())
	}
	if _, _, err := j.Append(rec); err != nil {
		t.Fatalf("Append after making room: %v", err)
	}
}

func TestFreeSpaceReserve(t *testing.T) {
	dir := tempJournalDir(t)
	j := openT(t, dir, Options{MinFreeBytes: 1 << 62, NoSync: true})
	_, _, err := j.Append([]byte("x"))
	if !errors.Is(err, ErrFull) || !strings.Contains(err.Error(), "free") {
		t.Fatalf("Append with no room for the reserve: %v, want ErrFull about free space", err)
	}
	if j.SizeBytes() != 0 || j.NextIndex() != 1 {
		t.Fatalf("refused append changed the log: size %d next %d", j.SizeBytes(), j.NextIndex())
	}
	closeT(t, j)
	j = openT(t, dir, Options{MinFreeBytes: -1, NoSync: true})
	if _, _, err := j.Append([]byte("x")); err != nil {
		t.Fatalf("Append with the check off: %v", err)
	}
}

func TestReadDetectsCorruptRecord(t *testing.T) {
	dir := tempJournalDir(t)
	opts := Options{SegmentSize: 2 << 10, NoSync: true}
	j := openT(t, dir, opts)
	appendN(t, j, 40)
	closeT(t, j)

	segs := segmentFiles(t, dir)
	// A bit flip in an older segment: not the tail, so never cut.
	victim := rawEntries(t, segs[0])[2]
	flipByte(t, segs[0].path, victim.payload+3)
	// A length prefix damaged so that a whole older segment cannot be parsed.
	broken := segs[1]
	flipByte(t, broken.path, 0)

	j = openT(t, dir, opts)
	if rep := j.Recovered(); rep.Cut() {
		t.Fatalf("damage before the tail was cut: %+v", rep)
	}
	if _, err := j.Read(victim.index); !errors.Is(err, ErrCorrupt) || !strings.Contains(err.Error(), "checksum") {
		t.Errorf("Read(%d) with a flipped bit: %v, want ErrCorrupt (checksum)", victim.index, err)
	}
	if _, err := j.Read(broken.index); !errors.Is(err, ErrCorrupt) {
		t.Errorf("Read(%d) in an unparseable segment: %v, want ErrCorrupt", broken.index, err)
	}
	checkRecords(t, j, 1, victim.index-1)
	checkRecords(t, j, victim.index+1, segs[1].index-1)
	checkRecords(t, j, segs[2].index, 40)
	if j.LastIndex() != 40 {
		t.Errorf("LastIndex = %d, want 40", j.LastIndex())
	}

	// A consumer that skips the unreadable records can still move past
	// them: truncating inside the unparseable segment removes all of it.
	if err := j.TruncateFront(broken.index + 1); err != nil {
		t.Fatalf("TruncateFront inside an unparseable segment: %v", err)
	}
	if j.FirstIndex() != segs[2].index {
		t.Fatalf("FirstIndex = %d, want %d (the next segment)", j.FirstIndex(), segs[2].index)
	}
	checkRecords(t, j, segs[2].index, 40)
	appendN(t, j, 2)
}

func TestOpenLocksDirectory(t *testing.T) {
	dir := tempJournalDir(t)
	j := openT(t, dir, Options{NoSync: true})
	if _, err := Open(dir, Options{NoSync: true}); !errors.Is(err, ErrLocked) {
		t.Fatalf("second Open: %v, want ErrLocked", err)
	}
	closeT(t, j)
	openT(t, dir, Options{NoSync: true})
}

func TestOptionsValidation(t *testing.T) {
	for _, opts := range []Options{{SegmentSize: -1}, {MaxBytes: -1}} {
		if _, err := Open(tempJournalDir(t), opts); err == nil || !strings.Contains(err.Error(), "Options.") {
			t.Errorf("Open(%+v): %v, want an error naming the field", opts, err)
		}
	}
}

func TestOpenRemovesStaleTruncation(t *testing.T) {
	dir := tempJournalDir(t)
	j := openT(t, dir, Options{NoSync: true})
	appendN(t, j, 3)
	closeT(t, j)
	stale := filepath.Join(dir, "00000000000000000002.START.TEMP")
	if err := os.WriteFile(stale, []byte("half a segment"), 0o640); err != nil {
		t.Fatal(err)
	}
	j = openT(t, dir, Options{NoSync: true})
	if rep := j.Recovered(); len(rep.StaleFiles) != 1 || rep.Cut() {
		t.Errorf("Recovered = %+v, want one stale file and no cut", rep)
	}
	if _, err := os.Stat(stale); !os.IsNotExist(err) {
		t.Errorf("stale file still there: %v", err)
	}
	checkRecords(t, j, 1, 3)
}
