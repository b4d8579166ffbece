// Package fleet is the console's view of its edge nodes: enrollment, node
// credentials, liveness (online/offline) and telemetry intake and queries.
package fleet

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"regexp"
	"strconv"
	"sync/atomic"
	"time"

	"github.com/cloudskin/cloudskin/console/internal/auth"
	"github.com/cloudskin/cloudskin/console/internal/metrics"
	"github.com/cloudskin/cloudskin/console/internal/store"
	"github.com/cloudskin/cloudskin/shared/protocol"
)

// ReservedBrokerUser is the console's own MQTT username; no node may take it.
const ReservedBrokerUser = "cloudskin-console"

// ErrInvalid wraps every input the fleet refuses as malformed.
var ErrInvalid = errors.New("invalid input")

// Config tunes the fleet service.
type Config struct {
	Topics protocol.Topics
	// BrokerURL is what enrolling agents are told to connect to.
	BrokerURL string
	// DefaultHeartbeat is assumed for a node that has not said its own.
	DefaultHeartbeat time.Duration
	// MissedHeartbeats before a silent node is marked offline.
	MissedHeartbeats int
	// Retention is how long telemetry is kept.
	Retention time.Duration
	// HashBrokerPassword hashes a node secret for an external broker's
	// password file; nil when the broker is embedded.
	HashBrokerPassword func(secret string) (string, error)
	// CredentialsChanged is called after a node enrolls (to rewrite an
	// external broker's password file).
	CredentialsChanged func(ctx context.Context) error
	// Replies receives a node's answers to console requests (nodes/{node}/replies);
	// nil drops them.
	Replies func(node string, payload []byte)
}

// Service implements the fleet's operations.
type Service struct {
	cfg   Config
	store *store.Store
	m     *metrics.Metrics
	log   *slog.Logger
	now   func() time.Time
	// onActual holds a func(node string) called after a node's actual
	// state is stored (a migration waiting on it steps at once).
	onActual atomic.Value
	// onPosition holds a func(protocol.Position) called with every valid
	// moving-target position a node reports.
	onPosition atomic.Value
}

// OnPosition sets what is called with every moving-target position.
func (s *Service) OnPosition(f func(protocol.Position)) { s.onPosition.Store(f) }

// OnActual sets what is called after a node's actual state is stored.
func (s *Service) OnActual(f func(node string)) { s.onActual.Store(f) }

// New returns a fleet service.
func New(cfg Config, st *store.Store, m *metrics.Metrics, log *slog.Logger) *Service {
	if cfg.MissedHeartbeats <= 0 {
		cfg.MissedHeartbeats = 3
	}
	if cfg.DefaultHeartbeat <= 0 {
		cfg.DefaultHeartbeat = 5 * time.Second
	}
	return &Service{cfg: cfg, store: st, m: m, log: log.With("component", "fleet"), now: time.Now}
}

// CreateToken makes a one-time enrollment token valid for ttl.
func (s *Service) CreateToken(ctx context.Context, ttl time.Duration, description, createdBy string) (string, time.Time, error) {
	if ttl < time.Second || ttl > 30*24*time.Hour {
		return "", time.Time{}, fmt.Errorf("%w: ttl %s must be between 1s and 720h", ErrInvalid, ttl)
	}
	if len(description) > 200 {
		return "", time.Time{}, fmt.Errorf("%w: description longer than 200 characters", ErrInvalid)
	}
	secret := "cset_" + auth.NewSecret(24)
	exp := s.now().UTC().Add(ttl)
	err := s.store.CreateToken(ctx, &store.EnrollmentToken{
		TokenHash: auth.HashSecret(secret), Description: description, CreatedBy: createdBy, ExpiresAt: exp,
	})
	if err != nil {
		return "", time.Time{}, err
	}
	s.log.Info("enrollment token created", "by", createdBy, "expires", exp, "description", description)
	return secret, exp, nil
}

// EnrollRequest is what an agent sends with its token.
type EnrollRequest struct {
	Token   string            `json:"token"`
	Name    string            `json:"name"`
	Arch    string            `json:"arch"`
	OS      string            `json:"os"`
	Version string            `json:"version"`
	Labels  map[string]string `json:"labels"`
}

// EnrollResponse carries the node's credential, shown once.
type EnrollResponse struct {
	Node        string `json:"node"`
	Credential  string `json:"credential"`
	BrokerURL   string `json:"broker_url"`
	TopicPrefix string `json:"topic_prefix"`
}

// Enroll exchanges a one-time token for a node credential.
func (s *Service) Enroll(ctx context.Context, req EnrollRequest) (*EnrollResponse, error) {
	if err := protocol.ValidateNodeName(req.Name); err != nil {
		return nil, fmt.Errorf("%w: %v", ErrInvalid, err)
	}
	if req.Name == ReservedBrokerUser {
		return nil, fmt.Errorf("%w: node name %q is reserved for the console", ErrInvalid, req.Name)
	}
	if err := ValidateLabels(req.Labels); err != nil {
		return nil, err
	}
	if len(req.Arch) > 32 || len(req.OS) > 32 || len(req.Version) > 64 {
		return nil, fmt.Errorf("%w: arch, os or version too long", ErrInvalid)
	}
	if req.Token == "" {
		s.m.Reject(metrics.RejectEnrollToken)
		s.log.Warn("enrollment refused", "node", req.Name, "err", "no token")
		return nil, store.ErrTokenUnknown
	}
	secret := "csnc_" + auth.NewSecret(32)
	labels, _ := json.Marshal(req.Labels)
	now := s.now().UTC()
	n := &store.Node{
		Name: req.Name, CredentialHash: auth.HashSecret(secret), Arch: req.Arch, OS: req.OS,
		Version: req.Version, Labels: string(labels), Status: protocol.StateOffline, EnrolledAt: now,
		StatusReason: "enrolled",
	}
	if s.cfg.HashBrokerPassword != nil {
		h, err := s.cfg.HashBrokerPassword(secret)
		if err != nil {
			return nil, err
		}
		n.BrokerHash = h
	}
	if err := s.store.Enroll(ctx, auth.HashSecret(req.Token), now, n); err != nil {
		switch {
		case errors.Is(err, store.ErrTokenUsed):
			s.m.Reject(metrics.RejectEnrollTokenReused)
		case errors.Is(err, store.ErrTokenExpired):
			s.m.Reject(metrics.RejectEnrollTokenExpired)
		case errors.Is(err, store.ErrTokenUnknown):
			s.m.Reject(metrics.RejectEnrollToken)
		}
		s.log.Warn("enrollment refused", "node", req.Name, "err", err)
		return nil, err
	}
	s.m.Enrollments.Inc()
	s.log.Info("node enrolled", "node", req.Name, "arch", req.Arch, "os", req.OS)
	if s.cfg.CredentialsChanged != nil {
		if err := s.cfg.CredentialsChanged(ctx); err != nil {
			s.log.Error("broker credentials not updated after enrollment", "node", req.Name, "err", err)
		}
	}
	return &EnrollResponse{Node: req.Name, Credential: secret, BrokerURL: s.cfg.BrokerURL, TopicPrefix: s.cfg.Topics.Prefix}, nil
}

// AuthenticateNode checks a node credential.
func (s *Service) AuthenticateNode(ctx context.Context, name, secret string) bool {
	if protocol.ValidateNodeName(name) != nil || secret == "" {
		return false
	}
	n, err := s.store.NodeByName(ctx, name)
	if err != nil {
		if !errors.Is(err, store.ErrNotFound) {
			s.log.Error("node lookup failed", "node", name, "err", err)
		}
		auth.SecretMatches("", secret) // same work either way
		return false
	}
	return auth.SecretMatches(n.CredentialHash, secret)
}

var labelKeyRE = regexp.MustCompile(`^[a-z0-9]([a-z0-9._/-]{0,61}[a-z0-9])?$`)

// ValidateLabels checks node labels, including the ones the platform reads:
// lat and lon (decimal degrees) and power (green or grid).
func ValidateLabels(labels map[string]string) error {
	if len(labels) > 64 {
		return fmt.Errorf("%w: %d labels, at most 64", ErrInvalid, len(labels))
	}
	for k, v := range labels {
		if !labelKeyRE.MatchString(k) {
			return fmt.Errorf("%w: label key %q: use lowercase letters, digits, '.', '_', '/', '-'", ErrInvalid, k)
		}
		if len(v) > 256 {
			return fmt.Errorf("%w: label %s: value longer than 256 characters", ErrInvalid, k)
		}
	}
	for key, limit := range map[string]float64{"lat": 90, "lon": 180} {
		if v, ok := labels[key]; ok {
			f, err := strconv.ParseFloat(v, 64)
			if err != nil || f < -limit || f > limit {
				return fmt.Errorf("%w: label %s=%q is not a number within ±%v", ErrInvalid, key, v, limit)
			}
		}
	}
	if p, ok := labels["power"]; ok && p != "green" && p != "grid" {
		return fmt.Errorf("%w: label power=%q: want green or grid", ErrInvalid, p)
	}
	return nil
}
