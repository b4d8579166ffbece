// Package tier is the console's cloud tier for streams: agents upload
// sealed WAL segments (package segment) through it into object storage —
// the console's own object store, or S3 with presigned URLs so agents never
// hold S3 credentials — and the console reads records back by offset or
// time. A segment is usable, and the agent may delete its copy, only once
// Commit has checked the stored object's size and checksums.
package tier

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"strings"
	"time"

	"github.com/minio/minio-go/v7"
	"github.com/minio/minio-go/v7/pkg/credentials"
	"github.com/prometheus/client_golang/prometheus"
	"golang.org/x/sync/singleflight"

	"github.com/cloudskin/cloudskin/console/internal/objects"
	"github.com/cloudskin/cloudskin/console/internal/store"
)

// Limits.
const (
	MaxSegmentBytes = 1 << 30 // one uploaded segment
	MaxListLimit    = 1000    // segments per List
	MaxReadRecords  = 10000   // records per ReadRecords
	// MaxReadBytes stops ReadRecords early (after at least one record) once
	// this many payload bytes are gathered, to bound an API answer.
	MaxReadBytes = 16 << 20

	DefaultUploadTTL     = 15 * time.Minute
	DefaultCacheSegments = 8
	DefaultCacheBytes    = 256 << 20
	// staleGrace is how long after its upload URL expired an uncommitted
	// segment still blocks its offset range (see Service.Request).
	staleGrace = 5 * time.Minute
)

// Errors the API maps to status codes (see api.tierError).
var (
	ErrInvalid   = errors.New("invalid request")          // 400
	ErrMismatch  = errors.New("upload does not match")    // 400: body differs from the declared size or checksums
	ErrTooLarge  = errors.New("upload too large")         // 413
	ErrForbidden = errors.New("forbidden")                // 403: bad or expired upload signature
	ErrNotFound  = store.ErrNotFound                      // 404
	ErrConflict  = store.ErrConflict                      // 409: overlapping or different segment
	ErrMissing   = errors.New("segment not uploaded")     // 409 on commit: the agent uploads again
	ErrCorrupt   = errors.New("stored segment corrupt")   // 500: a committed object fails verification
	ErrUnavail   = errors.New("object store unavailable") // 503: retry later
)

// Config selects and tunes the object backend. Without S3Endpoint segments
// go to the console's own object store, uploaded through its blob endpoint.
type Config struct {
	S3Endpoint  string // host:port
	S3Bucket    string
	S3AccessKey string
	S3SecretKey string
	S3Region    string // default us-east-1
	S3UseTLS    bool
	// BlobSecret signs the console's own upload URLs (HMAC-SHA256); at least
	// 16 bytes, required without S3. Replicas sharing a database must share
	// it.
	BlobSecret []byte
	// UploadTTL is how long an upload URL stays valid (default 15 min).
	UploadTTL time.Duration
	// CacheSegments and CacheBytes bound the decoded segments kept in memory
	// for reads (defaults 8 and 256 MiB).
	CacheSegments int
	CacheBytes    int64
}

// UsesS3 reports whether segments go to S3.
func (c Config) UsesS3() bool { return c.S3Endpoint != "" }

// Validate says which field is wrong and why.
func (c Config) Validate() error {
	var errs []error
	if c.UsesS3() {
		if strings.Contains(c.S3Endpoint, "://") || strings.Contains(c.S3Endpoint, "/") {
			errs = append(errs, fmt.Errorf("s3 endpoint %q: want host:port, without a scheme or path (TLS is S3UseTLS)", c.S3Endpoint))
		}
		if c.S3Bucket == "" {
			errs = append(errs, errors.New("s3 bucket: required with an S3 endpoint"))
		}
		if c.S3AccessKey == "" || c.S3SecretKey == "" {
			errs = append(errs, errors.New("s3 access key and secret key: required with an S3 endpoint"))
		}
	} else if len(c.BlobSecret) < 16 {
		errs = append(errs, errors.New("blob secret: at least 16 bytes are needed to sign upload URLs"))
	}
	if c.UploadTTL < 0 || c.UploadTTL > 7*24*time.Hour {
		errs = append(errs, fmt.Errorf("upload ttl %s: want 0 (default) up to 7 days", c.UploadTTL))
	}
	if c.CacheSegments < 0 || c.CacheBytes < 0 {
		errs = append(errs, errors.New("cache sizes must not be negative"))
	}
	return errors.Join(errs...)
}

// Service is the cloud tier.
type Service struct {
	cfg     Config
	store   *store.Store
	backend backend
	m       *tierMetrics
	log     *slog.Logger
	cache   *cache
	loads   singleflight.Group
	now     func() time.Time
}

// New builds the tier over a database and, unless cfg names S3, the
// console's object store objs; its metrics go on reg (nil: not exported).
// It does not contact S3: an unreachable S3 shows up per request as 503.
func New(cfg Config, st *store.Store, objs objects.Store, reg *prometheus.Registry, log *slog.Logger) (*Service, error) {
	if err := cfg.Validate(); err != nil {
		return nil, fmt.Errorf("cloud tier: %w", err)
	}
	if cfg.UploadTTL == 0 {
		cfg.UploadTTL = DefaultUploadTTL
	}
	if cfg.CacheSegments == 0 {
		cfg.CacheSegments = DefaultCacheSegments
	}
	if cfg.CacheBytes == 0 {
		cfg.CacheBytes = DefaultCacheBytes
	}
	if cfg.S3Region == "" {
		cfg.S3Region = "us-east-1"
	}
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	log = log.With("component", "tier")
	m, err := newMetrics(reg)
	if err != nil {
		return nil, fmt.Errorf("cloud tier metrics: %w", err)
	}
	s := &Service{cfg: cfg, store: st, m: m, log: log, cache: newCache(cfg.CacheSegments, cfg.CacheBytes), now: time.Now}
	if cfg.UsesS3() {
		client, err := minio.New(cfg.S3Endpoint, &minio.Options{
			Creds:  credentials.NewStaticV4(cfg.S3AccessKey, cfg.S3SecretKey, ""),
			Secure: cfg.S3UseTLS, Region: cfg.S3Region,
			// Few retries: the agent retries whole uploads, and an outage
			// should answer 503 quickly rather than after ten back-offs.
			MaxRetries: 3,
		})
		if err != nil {
			return nil, fmt.Errorf("cloud tier: s3 client for %s: %w", cfg.S3Endpoint, err)
		}
		s.backend = &s3Backend{client: client, bucket: cfg.S3Bucket}
		log.Info("cloud tier on S3", "endpoint", cfg.S3Endpoint, "bucket", cfg.S3Bucket, "tls", cfg.S3UseTLS)
	} else {
		if objs == nil {
			return nil, errors.New("cloud tier: no S3 configured and no object store given")
		}
		s.backend = &fsBackend{objs: objs, secret: cfg.BlobSecret}
	}
	return s, nil
}

// Backend is "s3" or "objects" (the console's own store).
func (s *Service) Backend() string { return s.backend.name() }

// Ready checks that the object backend answers.
func (s *Service) Ready(ctx context.Context) error { return s.backend.probe(ctx) }

type tierMetrics struct {
	requests       *prometheus.CounterVec
	committed      prometheus.Counter
	committedBytes prometheus.Counter
	commitFailures *prometheus.CounterVec
	uploadsRefused *prometheus.CounterVec
	cache          *prometheus.CounterVec
	corrupt        prometheus.Counter
}

// Commit failure and upload refusal reasons (label values).
const (
	reasonMissing     = "missing"
	reasonSize        = "size_mismatch"
	reasonChecksum    = "checksum_mismatch"
	reasonUnavailable = "unavailable"
	reasonSignature   = "bad_signature"
	reasonExpired     = "expired"
	reasonCommitted   = "already_committed"
	reasonTooLarge    = "too_large"
)

func newMetrics(reg *prometheus.Registry) (*tierMetrics, error) {
	m := &tierMetrics{
		requests: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "cloudskin_console_tier_upload_requests_total",
			Help: "Segment upload requests from agents, by result (new, again, already_committed, conflict, unavailable).",
		}, []string{"result"}),
		committed: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "cloudskin_console_tier_segments_committed_total",
			Help: "Segments checked in the object store and committed; the agent may delete its copy.",
		}),
		committedBytes: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "cloudskin_console_tier_committed_bytes_total",
			Help: "Bytes of committed segments.",
		}),
		commitFailures: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "cloudskin_console_tier_commit_failures_total",
			Help: "Commits refused, by reason (missing, size_mismatch, checksum_mismatch, unavailable); the agent uploads again.",
		}, []string{"reason"}),
		uploadsRefused: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "cloudskin_console_tier_uploads_refused_total",
			Help: "Uploads to the console's blob endpoint refused, by reason (bad_signature, expired, size_mismatch, checksum_mismatch, too_large, already_committed).",
		}, []string{"reason"}),
		cache: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "cloudskin_console_tier_read_cache_total",
			Help: "Decoded-segment cache lookups for reads, by result (hit, miss).",
		}, []string{"result"}),
		corrupt: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "cloudskin_console_tier_corrupt_segments_total",
			Help: "Committed segments that failed verification when read back; should stay 0.",
		}),
	}
	if reg != nil {
		for _, c := range []prometheus.Collector{m.requests, m.committed, m.committedBytes, m.commitFailures, m.uploadsRefused, m.cache, m.corrupt} {
			if err := reg.Register(c); err != nil {
				return nil, err
			}
		}
	}
	return m, nil
}
