package tier

import (
	"context"
	"crypto/hmac"
	"crypto/md5"
	"crypto/rand"
	"crypto/sha256"
	"encoding/base64"
	"encoding/hex"
	"errors"
	"fmt"
	"hash"
	"io"
	"math"
	"regexp"
	"strconv"
	"strings"
	"time"

	"github.com/cloudskin/cloudskin/console/internal/store"
	"github.com/cloudskin/cloudskin/shared/protocol"
	"github.com/cloudskin/cloudskin/shared/segment"
)

// UploadRequest is what an agent declares about a sealed segment before
// uploading it.
type UploadRequest struct {
	First   uint64    `json:"first"`
	Last    uint64    `json:"last"`
	Count   uint64    `json:"count"`
	MinTime time.Time `json:"min_time"`
	MaxTime time.Time `json:"max_time"`
	Bytes   int64     `json:"bytes"`
	SHA256  string    `json:"sha256"` // hex
	MD5     string    `json:"md5"`    // hex
}

// Upload tells the agent how to send the segment's bytes: Method URL with
// Headers, before ExpiresAt. URL is absolute for S3 and relative to the
// console's base URL for the console's own store.
type Upload struct {
	Method    string            `json:"method"`
	URL       string            `json:"url"`
	Headers   map[string]string `json:"headers"`
	ExpiresAt time.Time         `json:"expires_at"`
}

// Ticket answers an upload request: the segment's id, and either
// Committed (nothing left to do) or where to upload.
type Ticket struct {
	ID        string  `json:"id"`
	Committed bool    `json:"committed"`
	Upload    *Upload `json:"upload,omitempty"`
}

// Segment is a segment as the API shows it.
type Segment struct {
	ID          string     `json:"id"`
	Node        string     `json:"node"`
	Stream      string     `json:"stream"`
	First       uint64     `json:"first"`
	Last        uint64     `json:"last"`
	Count       uint64     `json:"count"`
	MinTime     time.Time  `json:"min_time"`
	MaxTime     time.Time  `json:"max_time"`
	Bytes       int64      `json:"bytes"`
	SHA256      string     `json:"sha256"`
	MD5         string     `json:"md5"`
	Committed   bool       `json:"committed"`
	CreatedAt   time.Time  `json:"created_at"`
	CommittedAt *time.Time `json:"committed_at,omitempty"`
}

func view(r *store.StreamSegment) Segment {
	return Segment{
		ID: r.ID, Node: r.Node, Stream: r.Stream, First: r.First, Last: r.Last, Count: r.Count,
		MinTime: time.UnixMicro(r.MinUS).UTC(), MaxTime: time.UnixMicro(r.MaxUS).UTC(), Bytes: r.Bytes,
		SHA256: r.SHA256, MD5: r.MD5, Committed: r.Committed, CreatedAt: r.CreatedAt.UTC(), CommittedAt: r.CommittedAt,
	}
}

// ConflictError is a request that collides with a segment the stream
// already has; it wraps ErrConflict.
type ConflictError struct {
	Msg      string
	Existing Segment
}

func (e *ConflictError) Error() string { return e.Msg }
func (e *ConflictError) Unwrap() error { return ErrConflict }

var idRE = regexp.MustCompile(`^seg_[0-9a-f]{32}$`)

// ValidID reports whether id has the form of a segment id.
func ValidID(id string) bool { return idRE.MatchString(id) }

func newID() string {
	var b [16]byte
	rand.Read(b[:])
	return "seg_" + hex.EncodeToString(b[:])
}

func objectKey(node, stream string, first uint64, id string) string {
	return fmt.Sprintf("segments/%s/%s/%020d-%s.cseg", node, stream, first, id)
}

func invalid(format string, args ...any) error {
	return fmt.Errorf("%w: %s", ErrInvalid, fmt.Sprintf(format, args...))
}

func checkNames(node, stream string) error {
	if err := protocol.ValidateNodeName(node); err != nil {
		return fmt.Errorf("%w: %w", ErrInvalid, err)
	}
	if err := protocol.ValidateStreamName(stream); err != nil {
		return fmt.Errorf("%w: %w", ErrInvalid, err)
	}
	return nil
}

func checkHex(field, v string, n int) (string, error) {
	v = strings.ToLower(v)
	if len(v) != n || strings.Trim(v, "0123456789abcdef") != "" {
		return "", invalid("%s: want %d hex digits", field, n)
	}
	return v, nil
}

// validate checks a request and returns the row it describes.
func validate(node, stream string, req UploadRequest) (*store.StreamSegment, error) {
	if err := checkNames(node, stream); err != nil {
		return nil, err
	}
	if req.First > req.Last {
		return nil, invalid("first %d is after last %d", req.First, req.Last)
	}
	if req.Last > math.MaxInt64 {
		return nil, invalid("last %d: offsets must stay below 2^63", req.Last)
	}
	if req.Count != req.Last-req.First+1 {
		return nil, invalid("count %d: offsets %d..%d hold %d records", req.Count, req.First, req.Last, req.Last-req.First+1)
	}
	if req.MinTime.IsZero() || req.MaxTime.IsZero() {
		return nil, invalid("min_time and max_time are required")
	}
	minUS, maxUS := req.MinTime.UnixMicro(), req.MaxTime.UnixMicro()
	if minUS > maxUS {
		return nil, invalid("min_time %s is after max_time %s", req.MinTime.Format(time.RFC3339Nano), req.MaxTime.Format(time.RFC3339Nano))
	}
	if req.Bytes < int64(segment.MinSize) || req.Bytes > MaxSegmentBytes {
		return nil, invalid("bytes %d: a segment is %d bytes to %d MiB", req.Bytes, segment.MinSize, MaxSegmentBytes>>20)
	}
	sha, err := checkHex("sha256", req.SHA256, 64)
	if err != nil {
		return nil, err
	}
	md, err := checkHex("md5", req.MD5, 32)
	if err != nil {
		return nil, err
	}
	return &store.StreamSegment{
		Node: node, Stream: stream, First: req.First, Last: req.Last, Count: req.Count,
		MinUS: minUS, MaxUS: maxUS, Bytes: req.Bytes, SHA256: sha, MD5: md,
	}, nil
}

// sameContent reports whether an existing row describes the same segment.
func sameContent(a, b *store.StreamSegment) bool {
	return a.First == b.First && a.Last == b.Last && a.Count == b.Count && a.MinUS == b.MinUS && a.MaxUS == b.MaxUS &&
		a.Bytes == b.Bytes && a.SHA256 == b.SHA256 && a.MD5 == b.MD5
}

// Request registers a sealed segment of node's stream and says where to
// upload it. It is idempotent: the same segment again gets the same id (and
// Committed if it is). A segment with the same first offset but other
// content, or an overlapping range, is a *ConflictError — except that an
// uncommitted segment whose upload URL expired more than a few minutes ago
// is abandoned and gives way, so an agent that re-sealed differently after
// a crash is not stuck.
func (s *Service) Request(ctx context.Context, node, stream string, req UploadRequest) (Ticket, error) {
	row, err := validate(node, stream, req)
	if err != nil {
		return Ticket{}, err
	}
	staleBefore := s.now().Add(-s.cfg.UploadTTL - staleGrace)
	existing, err := s.store.SegmentByFirst(ctx, node, stream, req.First)
	switch {
	case err == nil && sameContent(existing, row):
		return s.ticket(ctx, existing, "again")
	case err == nil && (existing.Committed || !existing.CreatedAt.Before(staleBefore)):
		s.m.requests.WithLabelValues("conflict").Inc()
		return Ticket{}, &ConflictError{
			Msg:      fmt.Sprintf("%s/%s: a different segment starting at offset %d exists (sha256 %s)", node, stream, req.First, existing.SHA256),
			Existing: view(existing),
		}
	case err != nil && !errors.Is(err, store.ErrNotFound):
		return Ticket{}, err
	}
	// Check the store answers before recording anything, so an outage
	// leaves no rows behind.
	if err := s.backend.probe(ctx); err != nil {
		s.m.requests.WithLabelValues("unavailable").Inc()
		return Ticket{}, err
	}
	row.ID = newID()
	row.Key = objectKey(node, stream, row.First, row.ID)
	replaced, err := s.store.CreateSegment(ctx, row, staleBefore)
	var ov *store.SegmentOverlap
	if errors.As(err, &ov) {
		if sameContent(&ov.Existing, row) { // the same request, concurrently
			return s.ticket(ctx, &ov.Existing, "again")
		}
		s.m.requests.WithLabelValues("conflict").Inc()
		return Ticket{}, &ConflictError{
			Msg: fmt.Sprintf("%s/%s: offsets %d..%d overlap segment %d..%d", node, stream,
				row.First, row.Last, ov.Existing.First, ov.Existing.Last),
			Existing: view(&ov.Existing),
		}
	}
	if err != nil {
		return Ticket{}, err
	}
	for _, r := range replaced {
		s.log.Warn("abandoned segment upload replaced", "node", node, "stream", stream, "id", r.ID,
			"first", r.First, "last", r.Last, "requested_at", r.CreatedAt, "by", row.ID)
		if err := s.backend.remove(ctx, r.Key); err != nil {
			s.log.Error("abandoned segment object not removed", "key", r.Key, "err", err)
		}
	}
	s.log.Info("segment upload requested", "node", node, "stream", stream, "id", row.ID,
		"first", row.First, "last", row.Last, "bytes", row.Bytes, "backend", s.backend.name())
	return s.ticket(ctx, row, "new")
}

func (s *Service) ticket(ctx context.Context, row *store.StreamSegment, result string) (Ticket, error) {
	if row.Committed {
		s.m.requests.WithLabelValues("already_committed").Inc()
		return Ticket{ID: row.ID, Committed: true}, nil
	}
	if result != "new" {
		if err := s.backend.probe(ctx); err != nil {
			s.m.requests.WithLabelValues("unavailable").Inc()
			return Ticket{}, err
		}
	}
	up, err := s.backend.target(ctx, row, s.now().Add(s.cfg.UploadTTL))
	if err != nil {
		return Ticket{}, err
	}
	s.m.requests.WithLabelValues(result).Inc()
	return Ticket{ID: row.ID, Upload: &up}, nil
}

// BlobUpload is one PUT to the console's blob endpoint.
type BlobUpload struct {
	ID, Exp, Sig  string
	ContentMD5    string // the request's Content-MD5 header, if any
	ContentLength int64  // -1 when unknown
	Body          io.Reader
}

// PutBlob stores an upload to the console's own store. The URL's signature
// and expiry are checked first; then the body is streamed into the store
// while its size, SHA-256 and MD5 are computed, and it replaces the object
// only if all three match what the agent declared — a mismatching body never
// becomes the object, so an earlier good upload survives a bad retry.
func (s *Service) PutBlob(ctx context.Context, up BlobUpload) (Segment, error) {
	fs, ok := s.backend.(*fsBackend)
	if !ok {
		return Segment{}, fmt.Errorf("%w: segments are uploaded to S3, not to the console", ErrNotFound)
	}
	exp, err := strconv.ParseInt(up.Exp, 10, 64)
	if err != nil || !ValidID(up.ID) || !hmac.Equal([]byte(up.Sig), []byte(sign(fs.secret, up.ID, up.Exp))) {
		s.m.uploadsRefused.WithLabelValues(reasonSignature).Inc()
		return Segment{}, fmt.Errorf("%w: invalid upload signature", ErrForbidden)
	}
	if s.now().Unix() > exp {
		s.m.uploadsRefused.WithLabelValues(reasonExpired).Inc()
		return Segment{}, fmt.Errorf("%w: upload URL expired at %s: request a new one", ErrForbidden, time.Unix(exp, 0).UTC().Format(time.RFC3339))
	}
	row, err := s.store.SegmentByID(ctx, up.ID)
	if err != nil {
		return Segment{}, err
	}
	if row.Committed {
		s.m.uploadsRefused.WithLabelValues(reasonCommitted).Inc()
		return Segment{}, fmt.Errorf("%w: segment %s is committed and cannot be replaced", ErrConflict, row.ID)
	}
	if up.ContentLength > row.Bytes {
		s.m.uploadsRefused.WithLabelValues(reasonTooLarge).Inc()
		return Segment{}, fmt.Errorf("%w: %d bytes sent, %d declared", ErrTooLarge, up.ContentLength, row.Bytes)
	}
	if up.ContentLength >= 0 && up.ContentLength != row.Bytes {
		s.m.uploadsRefused.WithLabelValues(reasonSize).Inc()
		return Segment{}, fmt.Errorf("%w: %d bytes sent, %d declared", ErrMismatch, up.ContentLength, row.Bytes)
	}
	if up.ContentMD5 != "" {
		raw, _ := hex.DecodeString(row.MD5)
		if up.ContentMD5 != base64.StdEncoding.EncodeToString(raw) {
			s.m.uploadsRefused.WithLabelValues(reasonChecksum).Inc()
			return Segment{}, fmt.Errorf("%w: Content-MD5 %s is not the declared md5", ErrMismatch, up.ContentMD5)
		}
	}
	vr := &verifier{r: io.LimitReader(up.Body, row.Bytes+1), want: row, sha: sha256.New(), md5: md5.New()}
	if _, _, err := fs.objs.Put(ctx, row.Key, vr); err != nil {
		if vr.reason != "" {
			s.m.uploadsRefused.WithLabelValues(vr.reason).Inc()
			s.log.Warn("segment upload refused", "id", row.ID, "node", row.Node, "stream", row.Stream, "err", vr.err)
			return Segment{}, vr.err
		}
		return Segment{}, fmt.Errorf("store segment %s: %w", row.ID, err)
	}
	s.log.Info("segment uploaded", "id", row.ID, "node", row.Node, "stream", row.Stream, "bytes", row.Bytes)
	return view(row), nil
}

// verifier hashes what passes through and, at the end, turns io.EOF into
// an error unless size and checksums match — which makes objects.Put drop
// its temporary file instead of renaming it into place.
type verifier struct {
	r        io.Reader
	want     *store.StreamSegment
	sha, md5 hash.Hash
	n        int64
	reason   string
	err      error
}

func (v *verifier) Read(p []byte) (int, error) {
	if v.err != nil {
		return 0, v.err
	}
	n, err := v.r.Read(p)
	v.n += int64(n)
	v.sha.Write(p[:n])
	v.md5.Write(p[:n])
	switch {
	case v.n > v.want.Bytes:
		v.reason, v.err = reasonTooLarge, fmt.Errorf("%w: body is longer than the declared %d bytes", ErrTooLarge, v.want.Bytes)
	case err == io.EOF && v.n != v.want.Bytes:
		v.reason, v.err = reasonSize, fmt.Errorf("%w: body has %d bytes, %d declared", ErrMismatch, v.n, v.want.Bytes)
	case err == io.EOF && hex.EncodeToString(v.sha.Sum(nil)) != v.want.SHA256:
		v.reason, v.err = reasonChecksum, fmt.Errorf("%w: body's sha256 is %x, %s declared", ErrMismatch, v.sha.Sum(nil), v.want.SHA256)
	case err == io.EOF && hex.EncodeToString(v.md5.Sum(nil)) != v.want.MD5:
		v.reason, v.err = reasonChecksum, fmt.Errorf("%w: body's md5 is %x, %s declared", ErrMismatch, v.md5.Sum(nil), v.want.MD5)
	default:
		return n, err
	}
	return n, v.err
}

// Commit checks that node's segment id is stored with its declared size
// and checksums and marks it committed; only then may the agent delete its
// copy. A missing or different object is ErrMissing (upload again); an
// unreachable store is ErrUnavail. Committing twice is fine.
func (s *Service) Commit(ctx context.Context, node, stream, id string) (Segment, error) {
	row, err := s.segmentOf(ctx, node, stream, id)
	if err != nil {
		return Segment{}, err
	}
	if row.Committed {
		return view(row), nil
	}
	reason, err := s.backend.verify(ctx, row)
	if err != nil {
		if errors.Is(err, ErrUnavail) {
			s.m.commitFailures.WithLabelValues(reasonUnavailable).Inc()
		}
		return Segment{}, err
	}
	if reason != "" {
		s.m.commitFailures.WithLabelValues(reason).Inc()
		s.log.Warn("segment commit refused", "node", node, "stream", stream, "id", id, "reason", reason)
		msg := map[string]string{
			reasonMissing:  "no object has been uploaded",
			reasonSize:     "the stored object's size differs from the declared bytes",
			reasonChecksum: "the stored object's checksum differs from the declared one",
		}[reason]
		return Segment{}, fmt.Errorf("%w: segment %s: %s; upload it again", ErrMissing, id, msg)
	}
	row, changed, err := s.store.CommitSegment(ctx, id, s.now())
	if err != nil {
		return Segment{}, err
	}
	if changed {
		s.m.committed.Inc()
		s.m.committedBytes.Add(float64(row.Bytes))
		s.log.Info("segment committed", "node", node, "stream", stream, "id", id, "first", row.First, "last", row.Last, "bytes", row.Bytes)
	}
	return view(row), nil
}

// segmentOf finds node's segment id of stream; another node's or stream's
// segment is not found, whoever asks.
func (s *Service) segmentOf(ctx context.Context, node, stream, id string) (*store.StreamSegment, error) {
	if err := checkNames(node, stream); err != nil {
		return nil, err
	}
	if !ValidID(id) {
		return nil, fmt.Errorf("segment %q: %w", id, ErrNotFound)
	}
	row, err := s.store.SegmentByID(ctx, id)
	if err != nil {
		return nil, err
	}
	if row.Node != node || row.Stream != stream {
		return nil, fmt.Errorf("segment %s of %s/%s: %w", id, node, stream, ErrNotFound)
	}
	return row, nil
}
