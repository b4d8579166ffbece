package store

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"testing"
	"time"
)

func newSegment(id, node, stream string, first, last uint64, minUS, maxUS int64) *StreamSegment {
	return &StreamSegment{
		ID: id, Node: node, Stream: stream, First: first, Last: last, Count: last - first + 1,
		MinUS: minUS, MaxUS: maxUS, Bytes: 100, SHA256: fmt.Sprintf("%064d", first), MD5: fmt.Sprintf("%032d", first),
		Key: "segments/" + node + "/" + stream + "/" + id,
	}
}

func TestSegments(t *testing.T) {
	eachDB(t, func(t *testing.T, db testDB) {
		s := db.open()
		ctx := context.Background()
		now := time.Now().UTC()
		long := now.Add(-time.Hour) // nothing is stale

		for _, seg := range []*StreamSegment{
			newSegment("a", "edge-1", "temps", 0, 9, 1000, 1900),
			newSegment("b", "edge-1", "temps", 10, 19, 2000, 2900),
			newSegment("c", "edge-1", "temps", 30, 39, 4000, 4900), // a gap: 20..29 not spilled
			newSegment("x", "edge-2", "temps", 0, 99, 1000, 9900),  // another node
			newSegment("y", "edge-1", "other", 0, 99, 1000, 9900),  // another stream
		} {
			if replaced, err := s.CreateSegment(ctx, seg, long); err != nil || len(replaced) != 0 {
				t.Fatalf("create %s: %v %v", seg.ID, replaced, err)
			}
		}
		// Overlaps, whatever their first offset, are conflicts naming the
		// existing segment.
		for _, r := range [][2]uint64{{0, 9}, {5, 12}, {9, 9}, {0, 100}, {19, 30}} {
			_, err := s.CreateSegment(ctx, newSegment("z", "edge-1", "temps", r[0], r[1], 0, 0), long)
			var ov *SegmentOverlap
			if !errors.Is(err, ErrConflict) || !errors.As(err, &ov) || ov.Existing.Node != "edge-1" {
				t.Fatalf("overlap %v: %v", r, err)
			}
		}
		if _, err := s.CreateSegment(ctx, newSegment("a", "edge-1", "temps", 50, 59, 0, 0), long); !errors.Is(err, ErrConflict) {
			t.Fatalf("duplicate id: %v", err)
		}

		got, err := s.SegmentByFirst(ctx, "edge-1", "temps", 10)
		if err != nil || got.ID != "b" || got.Committed || got.CreatedAt.IsZero() {
			t.Fatalf("by first: %+v %v", got, err)
		}
		if _, err := s.SegmentByFirst(ctx, "edge-1", "temps", 11); !errors.Is(err, ErrNotFound) {
			t.Fatalf("by first, none: %v", err)
		}
		// Nothing is readable before it is committed.
		if list, err := s.CommittedSegments(ctx, "edge-1", "temps", 0, 10); err != nil || len(list) != 0 {
			t.Fatalf("committed before commit: %v %v", list, err)
		}
		if _, ok, err := s.SegmentSummary(ctx, "edge-1", "temps"); ok || err != nil {
			t.Fatalf("summary before commit: %v %v", ok, err)
		}
		for _, id := range []string{"a", "b", "c", "x"} {
			seg, changed, err := s.CommitSegment(ctx, id, now)
			if err != nil || !changed || !seg.Committed || seg.CommittedAt == nil {
				t.Fatalf("commit %s: %+v %v", id, seg, err)
			}
		}
		if seg, changed, err := s.CommitSegment(ctx, "a", now.Add(time.Hour)); err != nil || changed || !seg.CommittedAt.Before(now.Add(time.Minute)) {
			t.Fatalf("second commit changed the segment: %+v %v", seg, err)
		}
		if _, _, err := s.CommitSegment(ctx, "nope", now); !errors.Is(err, ErrNotFound) {
			t.Fatalf("commit unknown: %v", err)
		}

		ids := func(list []StreamSegment) (out []string) {
			for _, s := range list {
				out = append(out, s.ID)
			}
			return out
		}
		for _, tc := range []struct {
			from  uint64
			limit int
			want  string
		}{{0, 10, "[a b c]"}, {9, 10, "[a b c]"}, {10, 10, "[b c]"}, {20, 10, "[c]"}, {40, 10, "[]"}, {0, 2, "[a b]"}} {
			list, err := s.CommittedSegments(ctx, "edge-1", "temps", tc.from, tc.limit)
			if got := fmt.Sprint(ids(list)); err != nil || got != tc.want {
				t.Errorf("committed from %d limit %d: %s %v, want %s", tc.from, tc.limit, got, err, tc.want)
			}
		}
		for off, want := range map[uint64]string{0: "a", 9: "a", 10: "b", 35: "c", 39: "c"} {
			if seg, err := s.SegmentHolding(ctx, "edge-1", "temps", off); err != nil || seg.ID != want {
				t.Errorf("holding %d: %v %v, want %s", off, seg, err, want)
			}
		}
		for _, off := range []uint64{20, 29, 40} {
			if _, err := s.SegmentHolding(ctx, "edge-1", "temps", off); !errors.Is(err, ErrNotFound) {
				t.Errorf("holding %d: %v, want ErrNotFound", off, err)
			}
		}
		for _, tc := range []struct {
			us   int64
			from uint64
			want string
		}{{0, 0, "a"}, {1900, 0, "a"}, {1901, 0, "b"}, {3000, 0, "c"}, {1000, 10, "b"}, {4900, 0, "c"}, {4901, 0, ""}} {
			seg, err := s.SegmentAtTime(ctx, "edge-1", "temps", tc.us, tc.from)
			switch {
			case tc.want == "" && !errors.Is(err, ErrNotFound):
				t.Errorf("at %d µs from %d: %v, want none", tc.us, tc.from, err)
			case tc.want != "" && (err != nil || seg.ID != tc.want):
				t.Errorf("at %d µs from %d: %v %v, want %s", tc.us, tc.from, seg, err, tc.want)
			}
		}
		sum, ok, err := s.SegmentSummary(ctx, "edge-1", "temps")
		if !ok || err != nil || sum != (SegmentSummary{Segments: 3, First: 0, Next: 40, Bytes: 300}) {
			t.Fatalf("summary %+v %v %v", sum, ok, err)
		}

		if err := s.DeleteSegment(ctx, "a"); err != nil {
			t.Fatal(err)
		}
		if err := s.DeleteSegment(ctx, "a"); !errors.Is(err, ErrNotFound) {
			t.Fatalf("delete twice: %v", err)
		}
		if sum, _, _ := s.SegmentSummary(ctx, "edge-1", "temps"); sum.First != 10 {
			t.Fatalf("summary after delete: %+v", sum)
		}
	})
}

func TestSegmentStaleUploadReplaced(t *testing.T) {
	eachDB(t, func(t *testing.T, db testDB) {
		s := db.open()
		ctx := context.Background()
		for _, seg := range []*StreamSegment{
			newSegment("old-pending", "n", "s", 0, 9, 0, 0),
			newSegment("old-committed", "n", "s", 20, 29, 0, 0),
		} {
			if _, err := s.CreateSegment(ctx, seg, time.Time{}); err != nil {
				t.Fatal(err)
			}
		}
		if _, _, err := s.CommitSegment(ctx, "old-committed", time.Now()); err != nil {
			t.Fatal(err)
		}
		fresh := time.Now().Add(-time.Hour)
		stale := time.Now().Add(time.Hour)
		// A recent uncommitted upload still blocks its range.
		if _, err := s.CreateSegment(ctx, newSegment("new", "n", "s", 0, 14, 0, 0), fresh); !errors.Is(err, ErrConflict) {
			t.Fatalf("over a fresh pending upload: %v", err)
		}
		// An abandoned one gives way and is handed back for cleanup.
		replaced, err := s.CreateSegment(ctx, newSegment("new", "n", "s", 0, 14, 0, 0), stale)
		if err != nil || len(replaced) != 1 || replaced[0].ID != "old-pending" {
			t.Fatalf("over a stale pending upload: %v %v", replaced, err)
		}
		if _, err := s.SegmentByID(ctx, "old-pending"); !errors.Is(err, ErrNotFound) {
			t.Fatalf("stale row kept: %v", err)
		}
		// A committed segment never does.
		if _, err := s.CreateSegment(ctx, newSegment("new2", "n", "s", 25, 30, 0, 0), stale); !errors.Is(err, ErrConflict) {
			t.Fatalf("over a committed segment: %v", err)
		}
	})
}

func TestSegmentCreateRace(t *testing.T) {
	eachDB(t, func(t *testing.T, db testDB) {
		s := db.open()
		ctx := context.Background()
		// Overlapping ranges with different first offsets race, round after
		// round: the overlap check and the insert are one step, so exactly
		// one of each round wins.
		for round := range 5 {
			var wg sync.WaitGroup
			errs := make([]error, 20)
			base := uint64(round) * 1000
			for i := range errs {
				wg.Add(1)
				go func() {
					defer wg.Done()
					_, errs[i] = s.CreateSegment(ctx, newSegment(fmt.Sprint("r", round, "-", i), "n", "s", base+uint64(i), base+uint64(i)+50, 0, 0), time.Time{})
				}()
			}
			wg.Wait()
			won := 0
			for _, err := range errs {
				switch {
				case err == nil:
					won++
				case !errors.Is(err, ErrConflict):
					t.Errorf("unexpected: %v", err)
				}
			}
			if won != 1 {
				t.Fatalf("round %d: %d overlapping segments created", round, won)
			}
		}
	})
}
