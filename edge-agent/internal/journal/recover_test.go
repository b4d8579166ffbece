package journal

import (
	"bytes"
	"errors"
	"os"
	"slices"
	"testing"
)

// TestOpenRepairsTail damages the last segment the ways a crash, a full disk
// or bad media do, and checks that Open cuts exactly the damaged tail, keeps
// every valid record before it, reports the cut, and takes appends again.
func TestOpenRepairsTail(t *testing.T) {
	const n = 60
	type want struct {
		cut      bool
		torn     bool
		dropped  int      // RecordsDropped
		last     uint64   // LastIndex after Open, relative to n (0 = n)
		corrupt  []uint64 // kept but unreadable, relative to n
		firstCut uint64   // FirstDropped, relative to n
	}
	cases := []struct {
		name   string
		damage func(t *testing.T, seg segment, entries []rawEntry)
		want   want
	}{
		{
			name: "last bytes missing",
			damage: func(t *testing.T, seg segment, _ []rawEntry) {
				if err := os.Truncate(seg.path, seg.size-3); err != nil {
					t.Fatal(err)
				}
			},
			want: want{cut: true, torn: true, last: n - 1, firstCut: n},
		},
		{
			name: "only the first byte of a two-byte length",
			damage: func(t *testing.T, seg segment, es []rawEntry) {
				last := es[len(es)-1]
				if last.payload-last.start != 2+headerSize {
					t.Fatalf("last record needs a two-byte length prefix; has %d bytes", last.end-last.start)
				}
				if err := os.Truncate(seg.path, last.start+1); err != nil {
					t.Fatal(err)
				}
			},
			want: want{cut: true, torn: true, last: n - 1, firstCut: n},
		},
		{
			name: "garbage after the last record",
			damage: func(t *testing.T, seg segment, _ []rawEntry) {
				appendFile(t, seg.path, bytes.Repeat([]byte{0xff}, 13))
			},
			want: want{cut: true, torn: true, last: n, firstCut: n + 1},
		},
		{
			name: "zeros after the last record",
			damage: func(t *testing.T, seg segment, _ []rawEntry) {
				// A file system may extend a file with zeros the data
				// never reached; each zero parses as an empty entry.
				appendFile(t, seg.path, make([]byte, 64))
			},
			want: want{cut: true, dropped: 64, last: n, firstCut: n + 1},
		},
		{
			name: "bit flip in the last record",
			damage: func(t *testing.T, seg segment, es []rawEntry) {
				flipByte(t, seg.path, es[len(es)-1].payload+5)
			},
			want: want{cut: true, dropped: 1, last: n - 1, firstCut: n},
		},
		{
			name: "bit flip in the checksum of the last two records",
			damage: func(t *testing.T, seg segment, es []rawEntry) {
				for _, e := range es[len(es)-2:] {
					flipByte(t, seg.path, e.payload-headerSize)
				}
			},
			want: want{cut: true, dropped: 2, last: n - 2, firstCut: n - 1},
		},
		{
			name: "torn record after a record with a bad checksum",
			damage: func(t *testing.T, seg segment, es []rawEntry) {
				flipByte(t, seg.path, es[len(es)-2].payload)
				if err := os.Truncate(seg.path, seg.size-1); err != nil {
					t.Fatal(err)
				}
			},
			want: want{cut: true, torn: true, dropped: 1, last: n - 2, firstCut: n - 1},
		},
		{
			name: "bit flip in a middle record of the last segment",
			damage: func(t *testing.T, seg segment, es []rawEntry) {
				flipByte(t, seg.path, es[len(es)-3].payload+1)
			},
			want: want{last: n, corrupt: []uint64{n - 2}},
		},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			dir := tempJournalDir(t)
			opts := Options{SegmentSize: 8 << 10, NoSync: true}
			j := openT(t, dir, opts)
			appendN(t, j, n)
			closeT(t, j)
			segs := segmentFiles(t, dir)
			if len(segs) < 2 {
				t.Fatalf("want the records spread over several segments, got %d", len(segs))
			}
			seg := segs[len(segs)-1]
			tc.damage(t, seg, rawEntries(t, seg))
			damaged := fileSize(t, seg.path)

			j = openT(t, dir, opts)
			rep := j.Recovered()
			w := tc.want
			if rep.Cut() != w.cut || rep.Torn != w.torn || rep.RecordsDropped != w.dropped {
				t.Fatalf("Recovered = %+v; want cut %v torn %v dropped %d", rep, w.cut, w.torn, w.dropped)
			}
			if w.cut {
				if rep.Segment != seg.path || rep.FirstDropped != w.firstCut || rep.Reason == "" ||
					rep.Offset+rep.BytesDropped != damaged || fileSize(t, seg.path) != rep.Offset {
					t.Errorf("Recovered = %+v; want segment %s (%d bytes) cut from index %d", rep, seg.path, damaged, w.firstCut)
				}
			}
			if !slices.Equal(rep.Corrupt, w.corrupt) || rep.CorruptCount != len(w.corrupt) {
				t.Errorf("Recovered.Corrupt = %v (%d), want %v", rep.Corrupt, rep.CorruptCount, w.corrupt)
			}
			if j.LastIndex() != w.last {
				t.Fatalf("LastIndex = %d, want %d", j.LastIndex(), w.last)
			}
			for i := uint64(1); i <= w.last; i++ {
				got, err := j.Read(i)
				if slices.Contains(w.corrupt, i) {
					if !errors.Is(err, ErrCorrupt) {
						t.Errorf("Read(%d) of a damaged middle record: %v, want ErrCorrupt", i, err)
					}
					continue
				}
				if err != nil || !bytes.Equal(got, payloadFor(i)) {
					t.Fatalf("Read(%d) = %q…, %v; want the record intact", i, trim(got), err)
				}
			}
			appendN(t, j, 5)
			checkRecords(t, j, w.last+1, w.last+5)
			total, _, _ := diskUsage(dir)
			if j.SizeBytes() != total {
				t.Errorf("SizeBytes = %d, files hold %d", j.SizeBytes(), total)
			}

			// The repair is final: the next Open finds nothing to cut.
			closeT(t, j)
			j = openT(t, dir, opts)
			if rep := j.Recovered(); rep.Cut() {
				t.Errorf("second Open cut again: %+v", rep)
			}
			if j.LastIndex() != w.last+5 {
				t.Errorf("after second Open LastIndex = %d, want %d", j.LastIndex(), w.last+5)
			}
		})
	}
}

// A last segment that holds nothing valid is cut to empty; the records in
// the segments before it are all kept.
func TestOpenRepairsWholeLastSegment(t *testing.T) {
	dir := tempJournalDir(t)
	opts := Options{SegmentSize: 4 << 10, NoSync: true}
	j := openT(t, dir, opts)
	appendN(t, j, 40)
	closeT(t, j)
	segs := segmentFiles(t, dir)
	seg := segs[len(segs)-1]
	for _, e := range rawEntries(t, seg) {
		flipByte(t, seg.path, e.payload-headerSize+1)
	}

	j = openT(t, dir, opts)
	rep := j.Recovered()
	if rep.Offset != 0 || rep.FirstDropped != seg.index || rep.RecordsDropped != int(40-seg.index+1) {
		t.Fatalf("Recovered = %+v; want segment %d cut to nothing", rep, seg.index)
	}
	if j.LastIndex() != seg.index-1 {
		t.Fatalf("LastIndex = %d, want %d", j.LastIndex(), seg.index-1)
	}
	checkRecords(t, j, 1, seg.index-1)
	appendN(t, j, 3)
	checkRecords(t, j, 1, seg.index+2)
}
