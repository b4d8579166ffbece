// Package ota is the console's side of over-the-air updates: it keeps the
// release bundles operators upload (signed, shared/ota) and runs rollouts
// that hand a release to a set of nodes, wave by wave, through each node's
// desired state, and halt when too many nodes fail.
package ota

import (
	"context"
	"crypto/ed25519"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"sync"
	"time"

	"github.com/cloudskin/cloudskin/console/internal/objects"
	"github.com/cloudskin/cloudskin/console/internal/store"
)

// Errors the API maps to status codes; bundles the release key refuses
// wrap shared/ota.ErrRefused (400), unknown ids store.ErrNotFound (404).
var (
	// ErrInvalid wraps a refused request or parameter (400).
	ErrInvalid = errors.New("invalid")
	// ErrNoKey: the console has no release key, so it can verify no
	// bundle (409).
	ErrNoKey = errors.New("this console has no release key, so it accepts no bundle: start it with --release-key PATH " +
		"(the release.pub that `cloudskin-console keys create` wrote)")
	// ErrTooLarge: a bundle over MaxBundleBytes (413).
	ErrTooLarge = fmt.Errorf("bundle is larger than %d MiB", MaxBundleBytes>>20)
	// ErrFinished: the rollout is completed or cancelled already (409).
	ErrFinished = errors.New("rollout is finished")
)

// MaxBundleBytes bounds an uploaded bundle.
const MaxBundleBytes = 256 << 20

// Publisher publishes a node's desired state (cells.Service); the state
// itself, with its update, comes from the store.
type Publisher interface {
	Republish(ctx context.Context, node string) error
}

// Config tunes the service.
type Config struct {
	// ReleaseKey verifies uploaded bundles; nil refuses every upload.
	ReleaseKey ed25519.PublicKey
	// TempDir holds an upload while it is verified (created if missing).
	TempDir string
	// Interval between two steps of the rollouts; node reports (Kick) also
	// step them at once.
	Interval time.Duration
}

// Service keeps bundles and runs rollouts.
type Service struct {
	cfg     Config
	store   *store.Store
	objects objects.Store
	pub     Publisher
	log     *slog.Logger
	now     func() time.Time
	kick    chan struct{}
	// maxBytes bounds an upload: MaxBundleBytes (tests lower it).
	maxBytes int64

	// mu makes each change to a rollout (step, report, create, cancel)
	// one read-modify-write in this process; SaveRollout's revision check
	// guards against other console replicas.
	mu sync.Mutex
	// unpublished holds nodes whose desired state changed in the store but
	// could not be published (broker down); each step retries them.
	unpublished map[string]bool
}

// New returns the OTA service. Leftovers of uploads a crash interrupted
// are removed from cfg.TempDir.
func New(cfg Config, st *store.Store, objs objects.Store, pub Publisher, log *slog.Logger) (*Service, error) {
	if cfg.Interval <= 0 {
		cfg.Interval = 5 * time.Second
	}
	if cfg.TempDir == "" {
		cfg.TempDir = os.TempDir()
	}
	if err := os.MkdirAll(cfg.TempDir, 0o700); err != nil {
		return nil, fmt.Errorf("ota temp dir: %w", err)
	}
	for _, pattern := range []string{"upload-*", "verify-*"} {
		old, _ := filepath.Glob(filepath.Join(cfg.TempDir, pattern))
		for _, p := range old {
			os.RemoveAll(p)
		}
	}
	return &Service{
		cfg: cfg, store: st, objects: objs, pub: pub, log: log.With("component", "ota"), now: time.Now,
		kick: make(chan struct{}, 1), unpublished: map[string]bool{}, maxBytes: MaxBundleBytes,
	}, nil
}

// Kick asks for a step now: a node reported its actual state.
func (s *Service) Kick() {
	select {
	case s.kick <- struct{}{}:
	default:
	}
}

// KeyConfigured says whether uploads can be verified (ErrNoKey if not).
func (s *Service) KeyConfigured() error {
	if len(s.cfg.ReleaseKey) != ed25519.PublicKeySize {
		return ErrNoKey
	}
	return nil
}
