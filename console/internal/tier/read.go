package tier

import (
	"container/list"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"sync"
	"time"

	"github.com/cloudskin/cloudskin/console/internal/store"
	"github.com/cloudskin/cloudskin/shared/protocol"
	"github.com/cloudskin/cloudskin/shared/segment"
)

// List returns node's committed segments of stream holding offsets at or
// after from, in offset order; limit is 1..MaxListLimit, 0 for 100.
func (s *Service) List(ctx context.Context, node, stream string, from uint64, limit int) ([]Segment, error) {
	if err := checkNames(node, stream); err != nil {
		return nil, err
	}
	if limit == 0 {
		limit = 100
	}
	if limit < 1 || limit > MaxListLimit {
		return nil, invalid("limit %d: want 1 to %d", limit, MaxListLimit)
	}
	rows, err := s.store.CommittedSegments(ctx, node, stream, from, limit)
	if err != nil {
		return nil, err
	}
	out := make([]Segment, len(rows))
	for i := range rows {
		out[i] = view(&rows[i])
	}
	return out, nil
}

// OpenBlob opens a committed segment's bytes; the reader may also be an
// io.ReadSeeker. The caller closes it.
func (s *Service) OpenBlob(ctx context.Context, node, stream, id string) (Segment, io.ReadCloser, error) {
	row, err := s.segmentOf(ctx, node, stream, id)
	if err != nil {
		return Segment{}, nil, err
	}
	if !row.Committed {
		return Segment{}, nil, fmt.Errorf("segment %s is not committed: %w", id, ErrNotFound)
	}
	rc, err := s.backend.open(ctx, row)
	if err != nil {
		return Segment{}, nil, err
	}
	return view(row), rc, nil
}

// Delete removes a segment's row, then its object (an object left by a
// crash in between is garbage, never a dangling row).
func (s *Service) Delete(ctx context.Context, node, stream, id string) error {
	row, err := s.segmentOf(ctx, node, stream, id)
	if err != nil {
		return err
	}
	if err := s.store.DeleteSegment(ctx, id); err != nil {
		return err
	}
	s.cache.remove(id)
	if err := s.backend.remove(ctx, row.Key); err != nil {
		s.log.Error("deleted segment's object not removed", "key", row.Key, "err", err)
	}
	s.log.Info("segment deleted", "node", node, "stream", stream, "id", id, "first", row.First, "last", row.Last)
	return nil
}

// ReadRecords returns up to limit (1..MaxReadRecords) spilled records of
// node's stream from offset from on, in offset order, read from committed
// segments (each verified against its checksum), and next, the offset to
// read from next. Offsets no committed segment holds are skipped. Reading
// stops early once MaxReadBytes of payload are gathered. The records'
// headers and payloads are shared with the cache: do not modify them.
func (s *Service) ReadRecords(ctx context.Context, node, stream string, from uint64, limit int) ([]protocol.StreamRecord, uint64, error) {
	if err := checkNames(node, stream); err != nil {
		return nil, from, err
	}
	if limit < 1 || limit > MaxReadRecords {
		return nil, from, invalid("limit %d: want 1 to %d", limit, MaxReadRecords)
	}
	seg, err := s.store.SegmentHolding(ctx, node, stream, from)
	if errors.Is(err, store.ErrNotFound) {
		seg, err = s.nextSegment(ctx, node, stream, from)
	}
	if err != nil || seg == nil {
		return nil, from, err
	}
	var out []protocol.StreamRecord
	next, size := from, 0
	for seg != nil {
		recs, err := s.records(ctx, seg)
		if err != nil {
			return nil, from, err
		}
		for _, r := range recs {
			if r.Offset < next {
				continue
			}
			out = append(out, r)
			next, size = r.Offset+1, size+len(r.Payload)
			if len(out) == limit || size >= MaxReadBytes {
				return out, next, nil
			}
		}
		if seg, err = s.nextSegment(ctx, node, stream, seg.Last+1); err != nil {
			return nil, from, err
		}
	}
	return out, next, nil
}

// nextSegment is the first committed segment holding offsets at or after
// from, or nil.
func (s *Service) nextSegment(ctx context.Context, node, stream string, from uint64) (*store.StreamSegment, error) {
	rows, err := s.store.CommittedSegments(ctx, node, stream, from, 1)
	if err != nil || len(rows) == 0 {
		return nil, err
	}
	return &rows[0], nil
}

// OffsetAt finds the first spilled record, by offset, whose time is at or
// after t: the start of a time-range read. ok is false when no committed
// segment has a record that recent.
func (s *Service) OffsetAt(ctx context.Context, node, stream string, t time.Time) (uint64, bool, error) {
	if err := checkNames(node, stream); err != nil {
		return 0, false, err
	}
	us := t.UnixMicro()
	var from uint64
	for {
		seg, err := s.store.SegmentAtTime(ctx, node, stream, us, from)
		if errors.Is(err, store.ErrNotFound) {
			return 0, false, nil
		}
		if err != nil {
			return 0, false, err
		}
		recs, err := s.records(ctx, seg)
		if err != nil {
			return 0, false, err
		}
		for _, r := range recs {
			if r.Offset >= from && r.Time.UnixMicro() >= us {
				return r.Offset, true, nil
			}
		}
		// The declared max time was looser than the records: look further.
		from = seg.Last + 1
	}
}

// Range sums up node's spilled stream: the lowest committed offset, one
// past the highest, and the bytes stored; ok is false when nothing is.
// Offsets in between may be missing where segments were never committed.
func (s *Service) Range(ctx context.Context, node, stream string) (first, next uint64, spilledBytes int64, ok bool, err error) {
	if err := checkNames(node, stream); err != nil {
		return 0, 0, 0, false, err
	}
	sum, ok, err := s.store.SegmentSummary(ctx, node, stream)
	return sum.First, sum.Next, sum.Bytes, ok, err
}

// records returns a committed segment's records, decoded and verified, from
// the cache or the object store; concurrent readers of one segment share
// one load.
func (s *Service) records(ctx context.Context, seg *store.StreamSegment) ([]protocol.StreamRecord, error) {
	if recs, ok := s.cache.get(seg.ID); ok {
		s.m.cache.WithLabelValues("hit").Inc()
		return recs, nil
	}
	s.m.cache.WithLabelValues("miss").Inc()
	v, err, _ := s.loads.Do(seg.ID, func() (any, error) {
		// Detached from one caller's cancellation: others may wait on it.
		lctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 10*time.Minute)
		defer cancel()
		recs, err := s.load(lctx, seg)
		if err != nil {
			return nil, err
		}
		s.cache.put(seg.ID, recs, seg.Bytes)
		return recs, nil
	})
	if err != nil {
		return nil, err
	}
	return v.([]protocol.StreamRecord), nil
}

func (s *Service) load(ctx context.Context, seg *store.StreamSegment) ([]protocol.StreamRecord, error) {
	rc, err := s.backend.open(ctx, seg)
	if err != nil {
		if errors.Is(err, ErrCorrupt) {
			s.m.corrupt.Inc()
		}
		return nil, err
	}
	defer rc.Close()
	b, err := io.ReadAll(io.LimitReader(rc, seg.Bytes+1))
	if err != nil {
		return nil, fmt.Errorf("%w: read segment %s: %w", ErrUnavail, seg.ID, err)
	}
	bad := func(format string, args ...any) error {
		s.m.corrupt.Inc()
		err := fmt.Errorf("%w: segment %s (%s/%s %d..%d): %s", ErrCorrupt, seg.ID, seg.Node, seg.Stream, seg.First, seg.Last, fmt.Sprintf(format, args...))
		s.log.Error("stored segment failed verification", "err", err)
		return err
	}
	if int64(len(b)) != seg.Bytes {
		return nil, bad("%d bytes stored, %d committed", len(b), seg.Bytes)
	}
	if sum := sha256.Sum256(b); hex.EncodeToString(sum[:]) != seg.SHA256 {
		return nil, bad("sha256 differs from the committed one")
	}
	hdr, recs, err := segment.Decode(b)
	if err != nil {
		return nil, bad("%v", err)
	}
	if hdr.Node != seg.Node || hdr.Stream != seg.Stream || hdr.First != seg.First || hdr.Last != seg.Last || hdr.Count != seg.Count {
		return nil, bad("its header says %s/%s %d..%d (%d records)", hdr.Node, hdr.Stream, hdr.First, hdr.Last, hdr.Count)
	}
	out := make([]protocol.StreamRecord, len(recs))
	for i, r := range recs {
		out[i] = protocol.StreamRecord{Offset: r.Offset, Time: r.Time, Topic: r.Topic, Headers: r.Headers, Payload: r.Payload}
	}
	return out, nil
}

// cache keeps the most recently read decoded segments, bounded by count and
// by their encoded size; a segment larger than the byte bound is not kept.
type cache struct {
	mu       sync.Mutex
	maxN     int
	maxBytes int64
	bytes    int64
	lru      *list.List // front: most recent
	byID     map[string]*list.Element
}

type cacheEntry struct {
	id    string
	recs  []protocol.StreamRecord
	bytes int64
}

func newCache(n int, bytes int64) *cache {
	return &cache{maxN: n, maxBytes: bytes, lru: list.New(), byID: map[string]*list.Element{}}
}

func (c *cache) get(id string) ([]protocol.StreamRecord, bool) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if e, ok := c.byID[id]; ok {
		c.lru.MoveToFront(e)
		return e.Value.(*cacheEntry).recs, true
	}
	return nil, false
}

func (c *cache) put(id string, recs []protocol.StreamRecord, bytes int64) {
	if c.maxN <= 0 || bytes > c.maxBytes {
		return
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	if _, ok := c.byID[id]; ok {
		return
	}
	c.byID[id] = c.lru.PushFront(&cacheEntry{id: id, recs: recs, bytes: bytes})
	c.bytes += bytes
	for c.lru.Len() > c.maxN || c.bytes > c.maxBytes {
		c.evict(c.lru.Back())
	}
}

func (c *cache) remove(id string) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if e, ok := c.byID[id]; ok {
		c.evict(e)
	}
}

func (c *cache) evict(e *list.Element) {
	ent := c.lru.Remove(e).(*cacheEntry)
	delete(c.byID, ent.id)
	c.bytes -= ent.bytes
}

func (c *cache) len() int {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.lru.Len()
}
