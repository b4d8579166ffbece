package ota

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"io"
	"log/slog"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/cloudskin/cloudskin/console/internal/cells"
	"github.com/cloudskin/cloudskin/console/internal/objects"
	"github.com/cloudskin/cloudskin/console/internal/store"
	"github.com/cloudskin/cloudskin/shared/protocol"
)

var quiet = slog.New(slog.NewTextHandler(io.Discard, nil))

// bus keeps the newest desired state published for each node, as a
// retaining broker would.
type bus struct {
	mu      sync.Mutex
	desired map[string]protocol.Desired
	fail    error
}

func (b *bus) Publish(topic string, payload []byte, retain bool) error {
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.fail != nil {
		return b.fail
	}
	var d protocol.Desired
	if err := json.Unmarshal(payload, &d); err != nil {
		return err
	}
	b.desired[d.Node] = d
	return nil
}

// fixture is a SQLite store, an object store, the real cells service
// publishing to a fake bus, and the OTA service on a fake clock.
type fixture struct {
	t   *testing.T
	ctx context.Context
	st  *store.Store
	bus *bus
	svc *Service
	now time.Time
}

func newFixture(t *testing.T) *fixture {
	t.Helper()
	ctx := context.Background()
	dir := t.TempDir()
	st, err := store.Open(ctx, "", dir, quiet)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { st.Close() })
	objs, err := objects.NewFS(filepath.Join(dir, "objects"))
	if err != nil {
		t.Fatal(err)
	}
	f := &fixture{t: t, ctx: ctx, st: st, bus: &bus{desired: map[string]protocol.Desired{}}, now: time.Date(2030, 1, 2, 3, 4, 5, 0, time.UTC)}
	svc, err := New(Config{TempDir: filepath.Join(dir, "tmp")}, st, objs, cells.New(protocol.NewTopics(""), st, f.bus, quiet), quiet)
	if err != nil {
		t.Fatal(err)
	}
	svc.now = func() time.Time { return f.now }
	f.svc = svc
	return f
}

// node enrolls a node; opts are arch=, version=, status= and label k=v.
func (f *fixture) node(name string, opts ...string) {
	f.t.Helper()
	n := &store.Node{Name: name, CredentialHash: "x", Arch: "amd64", Version: "1.1.0", Status: protocol.StateOnline, Labels: "{}"}
	labels := map[string]string{}
	for _, o := range opts {
		k, v, _ := strings.Cut(o, "=")
		switch k {
		case "arch":
			n.Arch = v
		case "version":
			n.Version = v
		case "status":
			n.Status = v
		default:
			labels[k] = v
		}
	}
	b, _ := json.Marshal(labels)
	n.Labels = string(b)
	tok := "tok-" + name
	if err := f.st.CreateToken(f.ctx, &store.EnrollmentToken{TokenHash: tok, ExpiresAt: time.Now().Add(time.Hour)}); err != nil {
		f.t.Fatal(err)
	}
	if err := f.st.Enroll(f.ctx, tok, time.Now(), n); err != nil {
		f.t.Fatal(err)
	}
}

// bundle records a bundle of version and arch (its bytes are not needed
// to run rollouts) and returns its id.
func (f *fixture) bundle(version, arch string) string {
	f.t.Helper()
	sum := sha256.Sum256([]byte(version + "/" + arch))
	id := hex.EncodeToString(sum[:])
	v := strings.TrimPrefix(strings.SplitN(version, "-", 2)[0], "v")
	if err := f.st.CreateBundle(f.ctx, &store.Bundle{ID: id, Version: version, Semver: v, Arch: arch, SizeBytes: 1000,
		Manifest: "{}", UploadedAt: f.now}); err != nil {
		f.t.Fatal(err)
	}
	return id
}

func (f *fixture) start(req Request) *Rollout {
	f.t.Helper()
	r, err := f.svc.Create(f.ctx, req, "ops")
	if err != nil {
		f.t.Fatalf("create %+v: %v", req, err)
	}
	return r
}

func (f *fixture) get(id string) *Rollout {
	f.t.Helper()
	r, err := f.svc.Rollout(f.ctx, id)
	if err != nil {
		f.t.Fatal(err)
	}
	return r
}

// report sends an update status of node for rollout r, timed at the
// fixture's clock plus skew.
func (f *fixture) report(r *Rollout, node, phase string, progress float64, skew time.Duration, errText string) {
	f.t.Helper()
	u := protocol.UpdateStatus{Rollout: r.ID, Bundle: r.Bundle, Version: r.Version, Running: "1.1.0", Slot: "a",
		Phase: phase, Progress: progress, Error: errText, Time: f.now.Add(skew)}
	if phase == protocol.UpdateCommitted || phase == protocol.UpdateChecking {
		u.Running, u.Slot = r.Version, "b"
	}
	if err := f.svc.OnUpdateStatus(f.ctx, node, u); err != nil {
		f.t.Fatal(err)
	}
}

// updating lists the nodes whose published desired state carries the
// update of rollout r, checking every desired state is valid for its agent.
func (f *fixture) updating(r *Rollout) []string {
	f.t.Helper()
	f.bus.mu.Lock()
	defer f.bus.mu.Unlock()
	var out []string
	for name, d := range f.bus.desired {
		if err := d.Validate(name); err != nil {
			f.t.Fatalf("published desired state of %s the agent would refuse: %v", name, err)
		}
		if d.Update == nil || d.Update.Rollout != r.ID {
			continue
		}
		if d.Update.Bundle != r.Bundle || d.Update.URL != BlobURL(r.Bundle) || d.Update.Version != r.Version ||
			d.Update.HealthSeconds != r.HealthSeconds || d.Update.SHA256 != r.Bundle {
			f.t.Fatalf("%s: update %+v, want that of rollout %+v", name, d.Update, r)
		}
		out = append(out, name)
	}
	slices.Sort(out)
	return out
}

// states maps each node of r to its state.
func states(r *Rollout) map[string]string {
	out := map[string]string{}
	for _, n := range r.Nodes {
		out[n.Node] = n.State
	}
	return out
}

func intp(n int) *int { return &n }
