package ota

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"sort"
	"strings"
	"time"

	"github.com/cloudskin/cloudskin/console/internal/store"
	otabundle "github.com/cloudskin/cloudskin/shared/ota"
	"github.com/cloudskin/cloudskin/shared/protocol"
)

// Defaults and bounds of a rollout request.
const (
	DefaultHealthSeconds   = 120
	DefaultDownloadSeconds = 600
	maxWaveSize            = 10000
)

// Selector picks nodes: every label must match and, when Nodes is set,
// the node must be one of them. An empty selector picks every node.
type Selector struct {
	Labels map[string]string `json:"labels,omitempty"`
	Nodes  []string          `json:"nodes,omitempty"`
}

// Request is what an operator posts to start a rollout.
type Request struct {
	Bundle   string   `json:"bundle"`
	Selector Selector `json:"selector"`
	// Percent of the eligible nodes to update (1-100; absent: 100), the
	// first by name.
	Percent *int `json:"percent,omitempty"`
	// WaveSize is how many nodes update at once (absent: 1).
	WaveSize int `json:"wave_size,omitempty"`
	// MaxFailures or MaxFailurePct (of the nodes to update; not both) is
	// the failures tolerated: one more halts the rollout. Neither: 0.
	MaxFailures   *int     `json:"max_failures,omitempty"`
	MaxFailurePct *float64 `json:"max_failure_pct,omitempty"`
	// HealthSeconds is how long a node's new release has to prove itself
	// before the node rolls back on its own (5-3600; absent: 120).
	HealthSeconds int `json:"health_seconds,omitempty"`
	// DownloadSeconds is the download allowance: a node that reports no
	// progress for HealthSeconds+DownloadSeconds counts as failed
	// (10-86400; absent: 600).
	DownloadSeconds int `json:"download_seconds,omitempty"`
}

// normalize checks r and fills in the defaults.
func (r *Request) normalize() error {
	id, err := ParseID(r.Bundle)
	if err != nil {
		return err
	}
	r.Bundle = id
	bad := func(format string, a ...any) error {
		return fmt.Errorf("%w: "+format, append([]any{ErrInvalid}, a...)...)
	}
	if r.Percent == nil {
		p := 100
		r.Percent = &p
	}
	switch {
	case *r.Percent < 1 || *r.Percent > 100:
		return bad("percent %d must be 1-100", *r.Percent)
	case r.WaveSize < 0 || r.WaveSize > maxWaveSize:
		return bad("wave_size %d must be 1-%d", r.WaveSize, maxWaveSize)
	case r.MaxFailures != nil && r.MaxFailurePct != nil:
		return bad("give max_failures or max_failure_pct, not both")
	case r.MaxFailures != nil && (*r.MaxFailures < 0 || *r.MaxFailures > maxWaveSize):
		return bad("max_failures %d must be 0-%d", *r.MaxFailures, maxWaveSize)
	case r.MaxFailurePct != nil && !(*r.MaxFailurePct >= 0 && *r.MaxFailurePct <= 100):
		return bad("max_failure_pct %v must be 0-100", *r.MaxFailurePct)
	case r.HealthSeconds != 0 && (r.HealthSeconds < 5 || r.HealthSeconds > 3600):
		return bad("health_seconds %d must be 5-3600", r.HealthSeconds)
	case r.DownloadSeconds != 0 && (r.DownloadSeconds < 10 || r.DownloadSeconds > 86400):
		return bad("download_seconds %d must be 10-86400", r.DownloadSeconds)
	case len(r.Selector.Labels) > 64 || len(r.Selector.Nodes) > 10000:
		return bad("selector: at most 64 labels and 10000 nodes")
	}
	for k, v := range r.Selector.Labels {
		if k == "" || len(k) > 63 || len(v) > 256 {
			return bad("selector: label %q=%q: key 1-63 characters, value at most 256", k, v)
		}
	}
	for _, n := range r.Selector.Nodes {
		if err := protocol.ValidateNodeName(n); err != nil {
			return bad("selector: %v", err)
		}
	}
	if r.WaveSize == 0 {
		r.WaveSize = 1
	}
	if r.HealthSeconds == 0 {
		r.HealthSeconds = DefaultHealthSeconds
	}
	if r.DownloadSeconds == 0 {
		r.DownloadSeconds = DefaultDownloadSeconds
	}
	return nil
}

// Skip is a node the selector matched that the rollout leaves alone.
type Skip struct {
	Node   string `json:"node"`
	Reason string `json:"reason"`
}

// NoTargetsError: the rollout would update no node (422). Skipped says
// why each matching node was left out.
type NoTargetsError struct {
	Matched int
	Skipped []Skip
}

func (e *NoTargetsError) Error() string {
	if e.Matched == 0 {
		return "no node matches the selector"
	}
	return fmt.Sprintf("no node to update: %d match the selector, all skipped (see detail)", e.Matched)
}

// NodeProgress is one node of a rollout as the API shows it.
type NodeProgress struct {
	Node   string `json:"node"`
	Wave   int    `json:"wave"`
	State  string `json:"state"`
	Reason string `json:"reason,omitempty"`
	// The newest update status the node reported for this rollout.
	Phase      string     `json:"phase,omitempty"`
	Running    string     `json:"running,omitempty"`
	Slot       string     `json:"slot,omitempty"`
	Error      string     `json:"error,omitempty"`
	Progress   float64    `json:"progress"`
	StartedAt  *time.Time `json:"started_at"`
	ReportedAt *time.Time `json:"reported_at"`
	ProgressAt *time.Time `json:"progress_at"`
	FinishedAt *time.Time `json:"finished_at"`
}

// Rollout is a rollout as the API shows it.
type Rollout struct {
	ID              string           `json:"id"`
	Bundle          string           `json:"bundle"`
	Version         string           `json:"version"`
	Arch            string           `json:"arch"`
	Selector        Selector         `json:"selector"`
	Percent         int              `json:"percent"`
	WaveSize        int              `json:"wave_size"`
	MaxFailures     *int             `json:"max_failures,omitempty"`
	MaxFailurePct   *float64         `json:"max_failure_pct,omitempty"`
	Threshold       int              `json:"threshold"` // failures tolerated
	HealthSeconds   int              `json:"health_seconds"`
	DownloadSeconds int              `json:"download_seconds"`
	State           string           `json:"state"`
	Reason          string           `json:"reason,omitempty"`
	Wave            int              `json:"wave"`
	Waves           int              `json:"waves"`
	Counts          map[string]int   `json:"counts"`
	Update          *json.RawMessage `json:"update"` // what the nodes' desired states carry
	CreatedBy       string           `json:"created_by"`
	CreatedAt       time.Time        `json:"created_at"`
	UpdatedAt       time.Time        `json:"updated_at"`
	FinishedAt      *time.Time       `json:"finished_at"`
	Nodes           []NodeProgress   `json:"nodes"`
	Skipped         []Skip           `json:"skipped"`
}

// Create starts a rollout of a bundle: the selector's nodes of the
// bundle's arch that run an older release (or one the console cannot
// read), are online and in no other active rollout; of those, the first
// Percent by name, in waves of WaveSize. The first wave starts at once.
func (s *Service) Create(ctx context.Context, req Request, by string) (*Rollout, error) {
	if err := req.normalize(); err != nil {
		return nil, err
	}
	b, err := s.store.BundleByID(ctx, req.Bundle)
	if err != nil {
		return nil, err
	}
	nodes, err := s.store.ListNodes(ctx)
	if err != nil {
		return nil, err
	}
	known := make(map[string]bool, len(nodes))
	for _, n := range nodes {
		known[n.Name] = true
	}
	for _, n := range req.Selector.Nodes {
		if !known[n] {
			return nil, fmt.Errorf("selector: node %s: %w", n, store.ErrNotFound)
		}
	}
	bv, err := otabundle.ParseVersion(b.Version)
	if err != nil {
		return nil, fmt.Errorf("bundle %s: stored version unreadable: %w", b.ID, err)
	}

	s.mu.Lock()
	defer s.mu.Unlock()
	active, err := s.store.ActiveRollouts(ctx)
	if err != nil {
		return nil, err
	}
	matched, eligible, skipped := pick(nodes, req.Selector, b, bv, active)
	if len(eligible) == 0 {
		return nil, &NoTargetsError{Matched: matched, Skipped: skipped}
	}
	percent := *req.Percent
	take := (len(eligible)*percent + 99) / 100 // rounded up: at least one node
	for _, n := range eligible[take:] {
		skipped = append(skipped, Skip{n, fmt.Sprintf("outside the %d%% of this rollout (%d of %d eligible nodes)", percent, take, len(eligible))})
	}
	targets := eligible[:take]
	threshold := 0
	switch {
	case req.MaxFailures != nil:
		threshold = *req.MaxFailures
	case req.MaxFailurePct != nil:
		threshold = int(*req.MaxFailurePct * float64(len(targets)) / 100)
	}

	now := s.now().UTC()
	id := newID(bv, b.Arch)
	spec := protocol.UpdateSpec{Rollout: id, Bundle: b.ID, Version: b.Version, URL: BlobURL(b.ID), SHA256: b.ID,
		Size: b.SizeBytes, HealthSeconds: req.HealthSeconds}
	if err := spec.Validate(); err != nil {
		return nil, fmt.Errorf("%w: %v", ErrInvalid, err)
	}
	specJSON, _ := json.Marshal(spec)
	reqJSON, _ := json.Marshal(req)
	r := &store.Rollout{
		ID: id, Bundle: b.ID, Version: b.Version, Arch: b.Arch, Request: string(reqJSON), UpdateSpec: string(specJSON),
		WaveSize: req.WaveSize, Waves: (len(targets) + req.WaveSize - 1) / req.WaveSize, Threshold: threshold,
		HealthSeconds: req.HealthSeconds, DownloadSeconds: req.DownloadSeconds, State: store.RolloutRunning,
		CreatedBy: by, CreatedAt: now, UpdatedAt: now,
	}
	rows := make([]store.RolloutNode, 0, len(targets)+len(skipped))
	for i, n := range targets {
		name := n
		rows = append(rows, store.RolloutNode{Rollout: id, Node: n, Wave: i/req.WaveSize + 1, State: store.NodePending, Active: &name})
	}
	st := newStep(r, rows, now)
	st.advance() // the first wave starts with the rollout
	bump := st.bump()
	for _, sk := range skipped {
		rows = append(rows, store.RolloutNode{Rollout: id, Node: sk.Node, State: store.NodeSkipped, Reason: sk.Reason})
	}
	if err := s.store.CreateRollout(ctx, r, rows, bump); err != nil {
		return nil, err
	}
	s.log.Info("rollout started", "rollout", id, "bundle", b.ID, "version", b.Version, "arch", b.Arch, "nodes", len(targets),
		"skipped", len(skipped), "waves", r.Waves, "threshold", threshold, "first_wave", bump, "by", by)
	s.publish(ctx, bump)
	return rolloutView(r, rows), nil
}

// pick returns how many nodes the selector matched, those to update (by
// name) and those it skips, with why.
func pick(nodes []store.Node, sel Selector, b *store.Bundle, bv otabundle.Version, active map[string]string) (int, []string, []Skip) {
	sort.Slice(nodes, func(i, j int) bool { return nodes[i].Name < nodes[j].Name })
	only := map[string]bool{}
	for _, n := range sel.Nodes {
		only[n] = true
	}
	matched := 0
	var eligible []string
	var skipped []Skip
	for _, n := range nodes {
		if len(only) > 0 && !only[n.Name] {
			continue
		}
		var labels map[string]string
		_ = json.Unmarshal([]byte(n.Labels), &labels)
		match := true
		for k, v := range sel.Labels {
			if got, ok := labels[k]; !ok || got != v {
				match = false
				break
			}
		}
		if !match {
			continue
		}
		matched++
		skip := func(format string, a ...any) { skipped = append(skipped, Skip{n.Name, fmt.Sprintf(format, a...)}) }
		nv, verr := otabundle.ParseVersion(n.Version)
		switch {
		case n.Arch == "":
			skip("arch unknown: the node has not reported it")
		case n.Arch != b.Arch:
			skip("arch %s, the bundle is for %s", n.Arch, b.Arch)
		case verr == nil && nv.Compare(bv) >= 0:
			skip("runs %s, not older than %s", n.Version, b.Version)
		case active[n.Name] != "":
			skip("in rollout %s", active[n.Name])
		case n.Status != protocol.StateOnline:
			skip("%s since %s", n.Status, time.UnixMicro(n.StatusUS).UTC().Format(time.RFC3339))
		default:
			eligible = append(eligible, n.Name)
		}
	}
	return matched, eligible, skipped
}

// newID names a rollout after its release and arch, and a random suffix.
func newID(v otabundle.Version, arch string) string {
	var b [3]byte
	_, _ = rand.Read(b[:])
	return fmt.Sprintf("%d.%d.%d-%s-%s", v[0], v[1], v[2], arch, hex.EncodeToString(b[:]))
}

// Cancel stops a running or halted rollout: nodes not started stay
// untouched, and nodes updating have the update withdrawn from their
// desired state (see docs/api.md for what an agent does then).
func (s *Service) Cancel(ctx context.Context, id, by string) (*Rollout, error) {
	if err := validRolloutID(id); err != nil {
		return nil, err
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	for attempt := 0; ; attempt++ {
		r, ns, err := s.store.RolloutByID(ctx, id)
		if err != nil {
			return nil, err
		}
		if r.State == store.RolloutCompleted || r.State == store.RolloutCancelled {
			return nil, fmt.Errorf("rollout %s is %s already: %w", id, r.State, ErrFinished)
		}
		now := s.now().UTC()
		st := newStep(r, ns, now)
		st.cancel("cancelled by " + by)
		err = s.store.SaveRollout(ctx, r, st.dirtyRows(), st.bump())
		if store.ErrStale(err) && attempt < 5 {
			continue
		}
		if err != nil {
			return nil, err
		}
		s.log.Info("rollout cancelled", "rollout", id, "by", by, "withdrawn", len(st.bump()))
		s.publish(ctx, st.bump())
		return rolloutView(r, ns), nil
	}
}

// Rollout returns one rollout with its nodes.
func (s *Service) Rollout(ctx context.Context, id string) (*Rollout, error) {
	if err := validRolloutID(id); err != nil {
		return nil, err
	}
	r, ns, err := s.store.RolloutByID(ctx, id)
	if err != nil {
		return nil, err
	}
	return rolloutView(r, ns), nil
}

// RolloutStates are the states a rollout can be in.
var RolloutStates = []string{store.RolloutRunning, store.RolloutCompleted, store.RolloutHalted, store.RolloutCancelled}

// Rollouts returns rollouts with their nodes, newest first, at most
// limit, of the given state ("" for any).
func (s *Service) Rollouts(ctx context.Context, state string, limit int) ([]Rollout, error) {
	var states []string
	if state != "" {
		ok := false
		for _, st := range RolloutStates {
			ok = ok || st == state
		}
		if !ok {
			return nil, fmt.Errorf("%w: state %q is not one of %s", ErrInvalid, state, strings.Join(RolloutStates, ", "))
		}
		states = []string{state}
	}
	if limit < 1 || limit > 1000 {
		return nil, fmt.Errorf("%w: limit %d must be 1-1000", ErrInvalid, limit)
	}
	rs, err := s.store.ListRollouts(ctx, states, limit)
	if err != nil {
		return nil, err
	}
	ids := make([]string, len(rs))
	for i := range rs {
		ids[i] = rs[i].ID
	}
	nodes, err := s.store.RolloutNodes(ctx, ids)
	if err != nil {
		return nil, err
	}
	out := make([]Rollout, len(rs))
	for i := range rs {
		out[i] = *rolloutView(&rs[i], nodes[rs[i].ID])
	}
	return out, nil
}

func validRolloutID(id string) error {
	if id == "" || len(id) > 80 || strings.Trim(id, "0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ.-_") != "" {
		return fmt.Errorf("%w: rollout id %q", ErrInvalid, id)
	}
	return nil
}

// NodeStates are the states of a rollout's nodes the counts show.
var NodeStates = []string{store.NodePending, store.NodeUpdating, store.NodeCommitted, store.NodeFailed, store.NodeCancelled, store.NodeNotStarted}

func rolloutView(r *store.Rollout, ns []store.RolloutNode) *Rollout {
	var req Request
	_ = json.Unmarshal([]byte(r.Request), &req)
	out := &Rollout{
		ID: r.ID, Bundle: r.Bundle, Version: r.Version, Arch: r.Arch, Selector: req.Selector, WaveSize: r.WaveSize,
		MaxFailures: req.MaxFailures, MaxFailurePct: req.MaxFailurePct, Threshold: r.Threshold,
		HealthSeconds: r.HealthSeconds, DownloadSeconds: r.DownloadSeconds, State: r.State, Reason: r.Reason,
		Wave: r.Wave, Waves: r.Waves, Counts: map[string]int{}, CreatedBy: r.CreatedBy, CreatedAt: r.CreatedAt.UTC(),
		UpdatedAt: r.UpdatedAt.UTC(), FinishedAt: utc(r.FinishedAt), Nodes: []NodeProgress{}, Skipped: []Skip{},
	}
	if req.Percent != nil {
		out.Percent = *req.Percent
	}
	if json.Valid([]byte(r.UpdateSpec)) {
		raw := json.RawMessage(r.UpdateSpec)
		out.Update = &raw
	}
	for _, st := range NodeStates {
		out.Counts[st] = 0
	}
	for _, n := range ns {
		if n.State == store.NodeSkipped {
			out.Skipped = append(out.Skipped, Skip{n.Node, n.Reason})
			continue
		}
		out.Counts[n.State]++
		out.Nodes = append(out.Nodes, NodeProgress{
			Node: n.Node, Wave: n.Wave, State: n.State, Reason: n.Reason, Phase: n.Phase, Running: n.Running, Slot: n.Slot,
			Error: n.Error, Progress: n.Progress, StartedAt: utc(n.StartedAt), ReportedAt: utc(n.ReportedAt),
			ProgressAt: utc(n.ProgressAt), FinishedAt: utc(n.FinishedAt),
		})
	}
	return out
}

func utc(t *time.Time) *time.Time {
	if t == nil {
		return nil
	}
	u := t.UTC()
	return &u
}
