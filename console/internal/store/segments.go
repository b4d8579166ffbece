package store

import (
	"context"
	"fmt"
	"hash/fnv"
	"time"

	"gorm.io/gorm"
)

// Queries on StreamSegment (streams.go). Offsets are stored as signed
// 64-bit integers by both databases, so callers keep them below 2^63.

// SegmentOverlap is returned (wrapping ErrConflict) when a new segment's
// range overlaps a segment the stream already has.
type SegmentOverlap struct {
	Existing StreamSegment // the overlapping segment with the lowest First
}

func (e *SegmentOverlap) Error() string {
	return fmt.Sprintf("segment %d..%d of %s/%s: %s", e.Existing.First, e.Existing.Last, e.Existing.Node, e.Existing.Stream, ErrConflict)
}

func (e *SegmentOverlap) Unwrap() error { return ErrConflict }

// CreateSegment records seg (uncommitted) unless its offset range overlaps
// another segment of the same node's stream, in which case it returns a
// *SegmentOverlap. Uncommitted segments created before staleBefore do not
// block: an upload that was never committed in time is abandoned, so they
// are deleted and returned for the caller to remove their objects.
func (s *Store) CreateSegment(ctx context.Context, seg *StreamSegment, staleBefore time.Time) (replaced []StreamSegment, err error) {
	err = s.db.WithContext(ctx).Transaction(func(tx *gorm.DB) error {
		replaced = nil
		if err := s.lockStream(tx, seg.Node, seg.Stream); err != nil {
			return err
		}
		var overlapping []StreamSegment
		err := tx.Where(`node = ? AND stream = ? AND "first" <= ? AND "last" >= ?`, seg.Node, seg.Stream, seg.Last, seg.First).
			Order(`"first"`).Find(&overlapping).Error
		if err != nil {
			return err
		}
		var stale []string
		for _, o := range overlapping {
			if o.Committed || !o.CreatedAt.Before(staleBefore) {
				return &SegmentOverlap{Existing: o}
			}
			stale = append(stale, o.ID)
		}
		if len(stale) > 0 {
			if err := tx.Where("id IN ? AND committed = ?", stale, false).Delete(&StreamSegment{}).Error; err != nil {
				return err
			}
		}
		if err := tx.Create(seg).Error; err != nil {
			if isUnique(err) {
				return fmt.Errorf("segment %s: %w", seg.ID, ErrConflict)
			}
			return err
		}
		replaced = overlapping
		return nil
	})
	return replaced, err
}

// lockStream serialises segment creation per stream. SQLite has one
// connection, so its transactions are serial already; PostgreSQL takes a
// transaction-scoped advisory lock, because an overlap check cannot lock
// rows that do not exist yet.
func (s *Store) lockStream(tx *gorm.DB, node, stream string) error {
	if s.dialect != "postgres" {
		return nil
	}
	h := fnv.New64a()
	h.Write([]byte("segments\x00" + node + "\x00" + stream))
	return tx.Exec("SELECT pg_advisory_xact_lock(?)", int64(h.Sum64())).Error
}

// SegmentByID returns one segment, or ErrNotFound.
func (s *Store) SegmentByID(ctx context.Context, id string) (*StreamSegment, error) {
	var seg StreamSegment
	if err := s.db.WithContext(ctx).Where("id = ?", id).Take(&seg).Error; err != nil {
		return nil, notFound(err, "segment "+id)
	}
	return &seg, nil
}

// SegmentByFirst returns the segment (committed or not) of a node's stream
// that starts at first, or ErrNotFound.
func (s *Store) SegmentByFirst(ctx context.Context, node, stream string, first uint64) (*StreamSegment, error) {
	var seg StreamSegment
	err := s.db.WithContext(ctx).Where(`node = ? AND stream = ? AND "first" = ?`, node, stream, first).Take(&seg).Error
	if err != nil {
		return nil, notFound(err, fmt.Sprintf("segment %s/%s@%d", node, stream, first))
	}
	return &seg, nil
}

// CommitSegment marks a segment committed; changed is false when it already
// was (nothing changes then). An unknown id is ErrNotFound.
func (s *Store) CommitSegment(ctx context.Context, id string, at time.Time) (seg *StreamSegment, changed bool, err error) {
	res := s.db.WithContext(ctx).Model(&StreamSegment{}).Where("id = ? AND committed = ?", id, false).
		Updates(map[string]any{"committed": true, "committed_at": at.UTC()})
	if res.Error != nil {
		return nil, false, res.Error
	}
	seg, err = s.SegmentByID(ctx, id)
	return seg, res.RowsAffected > 0, err
}

// CommittedSegments lists a stream's committed segments that hold offsets
// at or after from, in offset order, at most limit.
func (s *Store) CommittedSegments(ctx context.Context, node, stream string, from uint64, limit int) ([]StreamSegment, error) {
	var out []StreamSegment
	err := s.db.WithContext(ctx).
		Where(`node = ? AND stream = ? AND committed = ? AND "last" >= ?`, node, stream, true, from).
		Order(`"first"`).Limit(limit).Find(&out).Error
	return out, err
}

// SegmentHolding returns the committed segment whose range holds offset, or
// ErrNotFound.
func (s *Store) SegmentHolding(ctx context.Context, node, stream string, offset uint64) (*StreamSegment, error) {
	var seg StreamSegment
	err := s.db.WithContext(ctx).
		Where(`node = ? AND stream = ? AND committed = ? AND "first" <= ? AND "last" >= ?`, node, stream, true, offset, offset).
		Order(`"first"`).Take(&seg).Error
	if err != nil {
		return nil, notFound(err, fmt.Sprintf("segment holding %s/%s@%d", node, stream, offset))
	}
	return &seg, nil
}

// SegmentAtTime returns the first committed segment (by offset) starting at
// or after from whose newest record is at or after us (Unix microseconds),
// or ErrNotFound.
func (s *Store) SegmentAtTime(ctx context.Context, node, stream string, us int64, from uint64) (*StreamSegment, error) {
	var seg StreamSegment
	err := s.db.WithContext(ctx).
		Where(`node = ? AND stream = ? AND committed = ? AND max_us >= ? AND "last" >= ?`, node, stream, true, us, from).
		Order(`"first"`).Take(&seg).Error
	if err != nil {
		return nil, notFound(err, fmt.Sprintf("segment of %s/%s at %d µs", node, stream, us))
	}
	return &seg, nil
}

// SegmentSummary describes a stream's committed segments.
type SegmentSummary struct {
	Segments int64
	First    uint64 // lowest committed offset
	Next     uint64 // one past the highest committed offset
	Bytes    int64  // sum of segment sizes
}

// SegmentSummary sums up a stream's committed segments; ok is false when
// there are none.
func (s *Store) SegmentSummary(ctx context.Context, node, stream string) (SegmentSummary, bool, error) {
	var row struct {
		N     int64
		Lo    *int64
		Hi    *int64
		Total *int64
	}
	err := s.db.WithContext(ctx).Model(&StreamSegment{}).
		Select(`COUNT(*) AS n, MIN("first") AS lo, MAX("last") AS hi, CAST(SUM(bytes) AS BIGINT) AS total`).
		Where("node = ? AND stream = ? AND committed = ?", node, stream, true).Scan(&row).Error
	if err != nil || row.N == 0 || row.Lo == nil || row.Hi == nil {
		return SegmentSummary{}, false, err
	}
	sum := SegmentSummary{Segments: row.N, First: uint64(*row.Lo), Next: uint64(*row.Hi) + 1}
	if row.Total != nil {
		sum.Bytes = *row.Total
	}
	return sum, true, nil
}

// DeleteSegment removes a segment's row (its object is the caller's);
// deleting an unknown one is ErrNotFound.
func (s *Store) DeleteSegment(ctx context.Context, id string) error {
	res := s.db.WithContext(ctx).Where("id = ?", id).Delete(&StreamSegment{})
	if res.Error != nil {
		return res.Error
	}
	if res.RowsAffected == 0 {
		return fmt.Errorf("segment %s: %w", id, ErrNotFound)
	}
	return nil
}
