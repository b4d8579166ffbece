package ui

import (
	"context"
	"crypto/ed25519"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"net/url"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/cloudskin/cloudskin/console/internal/api"
	"github.com/cloudskin/cloudskin/console/internal/auth"
	"github.com/cloudskin/cloudskin/console/internal/cells"
	"github.com/cloudskin/cloudskin/console/internal/fleet"
	"github.com/cloudskin/cloudskin/console/internal/metrics"
	"github.com/cloudskin/cloudskin/console/internal/objects"
	"github.com/cloudskin/cloudskin/console/internal/ota"
	"github.com/cloudskin/cloudskin/console/internal/store"
	otabundle "github.com/cloudskin/cloudskin/shared/ota"
	"github.com/cloudskin/cloudskin/shared/protocol"
)

var quiet = slog.New(slog.NewTextHandler(io.Discard, nil))

// fixture is a console's API and UI over a store seeded with a fleet.
type fixture struct {
	handler http.Handler // UI + API, as the console serves them
	api     http.Handler
	tokens  *auth.Tokens
	admin   string // a JWT
	// release signs bundles the console accepts (its --release-key is the
	// public half, unless the fixture has no key).
	release ed25519.PrivateKey
}

// discard is a broker that drops what is published.
type discard struct{}

func (discard) Publish(string, []byte, bool) error { return nil }

// newFixture seeds nodes nodes, each with a few telemetry samples, and
// detail samples (15 min at 5 s) for edge-0000.
func newFixture(tb testing.TB, nodes, detail int) *fixture {
	return newFixtureKey(tb, nodes, detail, true)
}

// newFixtureKey is newFixture with (withKey) or without a release key.
func newFixtureKey(tb testing.TB, nodes, detail int, withKey bool) *fixture {
	tb.Helper()
	ctx := context.Background()
	dir := tb.TempDir()
	st, err := store.Open(ctx, "", dir, quiet)
	if err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(func() { st.Close() })
	m := metrics.New()
	topics := protocol.NewTopics("")
	fl := fleet.New(fleet.Config{Topics: topics}, st, m, quiet)
	now := time.Now().Add(-time.Duration(detail+5) * 5 * time.Second)
	for i := range nodes {
		name := fmt.Sprintf("edge-%04d", i)
		tok, _, err := fl.CreateToken(ctx, time.Hour, "", "bench")
		if err != nil {
			tb.Fatal(err)
		}
		power := "grid"
		if i%3 == 0 {
			power = "green"
		}
		labels := map[string]string{"site": fmt.Sprintf("site-%d", i%20), "power": power,
			"lat": fmt.Sprintf("%.4f", 41.4+float64(i%40)*0.01), "lon": fmt.Sprintf("%.4f", 1.6+float64(i/40)*0.01)}
		if _, err := fl.Enroll(ctx, fleet.EnrollRequest{Token: tok, Name: name, Arch: "amd64", OS: "linux", Labels: labels}); err != nil {
			tb.Fatal(err)
		}
		n := 3
		if i == 0 {
			n = detail
		}
		for s := range n {
			bat := float64(20 + (i*7+s)%80)
			t := protocol.Telemetry{Node: name, Seq: uint64(s + 1), Time: now.Add(time.Duration(s) * 5 * time.Second),
				CPU: protocol.CPU{Percent: float64((i + s) % 100), Cores: 4}, Memory: protocol.Memory{TotalBytes: 8 << 30, UsedBytes: 2 << 30, Percent: 25},
				Network: protocol.Network{RxBytesPerS: 1200, TxBytesPerS: 800},
				Energy:  protocol.Energy{Source: "model", PowerW: 20 + float64(s%10)}}
			if power == "green" {
				t.Energy.BatteryPct = &bat
			}
			payload, _ := json.Marshal(t)
			if err := fl.Sink(ctx, topics.Node(name, protocol.LeafTelemetry), payload); err != nil {
				tb.Fatal(err)
			}
		}
	}
	hash, err := auth.HashPassword("admin-password")
	if err != nil {
		tb.Fatal(err)
	}
	for _, u := range []store.User{{Username: "admin", PasswordHash: hash, Role: store.RoleAdmin}, {Username: "coop", PasswordHash: hash, Role: store.RoleConsumer}} {
		if err := st.CreateUser(ctx, &u); err != nil {
			tb.Fatal(err)
		}
	}
	tokens := auth.NewTokens([]byte("0123456789abcdef0123456789abcdef"), time.Hour)
	pub, err := otabundle.CreateKeys(filepath.Join(dir, "keys"))
	if err != nil {
		tb.Fatal(err)
	}
	priv, err := otabundle.LoadPrivateKey(filepath.Join(dir, "keys", otabundle.PrivateKeyFile))
	if err != nil {
		tb.Fatal(err)
	}
	if !withKey {
		pub = nil
	}
	objs, err := objects.NewFS(filepath.Join(dir, "objects"))
	if err != nil {
		tb.Fatal(err)
	}
	cs := cells.New(topics, st, discard{}, quiet)
	updates, err := ota.New(ota.Config{ReleaseKey: pub, TempDir: filepath.Join(dir, "tmp")}, st, objs, cs, quiet)
	if err != nil {
		tb.Fatal(err)
	}
	a := &api.Server{Store: st, Fleet: fl, Cells: cs, OTA: updates, Tokens: tokens, Metrics: m, Log: quiet,
		Ready: func(context.Context) error { return nil }}
	h := a.Handler()
	u, err := New(Config{API: h, Log: quiet})
	if err != nil {
		tb.Fatal(err)
	}
	jwt, _, err := tokens.Issue("admin", store.RoleAdmin)
	if err != nil {
		tb.Fatal(err)
	}
	return &fixture{handler: u.Wrap(h), api: h, tokens: tokens, admin: jwt, release: priv}
}

func (f *fixture) get(tb testing.TB, path, jwt string, bearer bool) *httptest.ResponseRecorder {
	req := httptest.NewRequest(http.MethodGet, path, nil)
	if bearer {
		req.Header.Set("Authorization", "Bearer "+jwt)
	} else {
		req.AddCookie(&http.Cookie{Name: sessionCookie, Value: jwt})
	}
	rec := httptest.NewRecorder()
	f.handler.ServeHTTP(rec, req)
	return rec
}

func TestPages(t *testing.T) {
	f := newFixture(t, 30, 20)
	consumer, _, _ := f.tokens.Issue("coop", store.RoleConsumer)
	for _, tc := range []struct {
		path, jwt string
		code      int
		want      string
	}{
		{"/ui/fleet", f.admin, 200, `href="/ui/nodes/edge-0007"`},
		{"/ui/fleet", "", 303, ""},
		{"/ui/fleet", "not-a-jwt", 303, ""},
		{"/ui/nodes/edge-0000", f.admin, 200, `id="series"`},
		{"/ui/nodes/nope", f.admin, 404, `role="alert"`},
		{"/ui/decisions", f.admin, 200, "No decisions"},
		{"/ui/updates", f.admin, 200, "No bundles: build them with <code>make images</code>"},
		{"/ui/updates/rollouts", f.admin, 200, "No rollouts yet"},
		{"/ui/rollouts", f.admin, 302, ""}, // the old placeholder's address
		{"/ui/rollouts/1.2.0-amd64-abcdef", f.admin, 404, `role="alert"`},
		{"/ui/updates", consumer, 403, "403"},
		{"/ui/rollouts/1.2.0-amd64-abcdef", consumer, 403, "403"},
		{"/ui/fleet", consumer, 403, "403"},
		{"/ui/nodes/edge-0000", consumer, 403, "403"},
		{"/ui/admin", consumer, 403, "403"},
		{"/", "", 302, ""},
		{"/api/v1/nodes", "", 401, "missing bearer token"}, // the API is still the API
	} {
		rec := f.get(t, tc.path, tc.jwt, false)
		if rec.Code != tc.code || !strings.Contains(rec.Body.String(), tc.want) {
			t.Errorf("GET %s (%q): %d, want %d with %q:\n%.400s", tc.path, tc.jwt[:min(len(tc.jwt), 8)], rec.Code, tc.code, tc.want, rec.Body.String())
		}
	}
	// The nav leads admins to Updates (no "not yet" any more).
	if body := f.get(t, "/ui/fleet", f.admin, false).Body.String(); !strings.Contains(body, `href="/ui/updates"`) || strings.Contains(body, "not yet") {
		t.Error("admin's nav without Updates, or with a placeholder")
	}
	// A consumer's navigation has no fleet link.
	rec := f.get(t, "/ui/fleet", consumer, false)
	if strings.Contains(rec.Body.String(), `href="/ui/fleet"`) {
		t.Error("consumer's 403 page links to the fleet")
	}
}

func TestCSRF(t *testing.T) {
	f := newFixture(t, 1, 1)
	post := func(token string, header bool) int {
		form := url.Values{"ttl": {"1h"}}
		if token != "" && !header {
			form.Set(csrfField, token)
		}
		req := httptest.NewRequest(http.MethodPost, "/ui/tokens", strings.NewReader(form.Encode()))
		req.Header.Set("Content-Type", "application/x-www-form-urlencoded")
		if header {
			req.Header.Set(csrfHeader, token)
			req.Header.Set("HX-Request", "true")
		}
		req.AddCookie(&http.Cookie{Name: sessionCookie, Value: f.admin})
		rec := httptest.NewRecorder()
		f.handler.ServeHTTP(rec, req)
		return rec.Code
	}
	good := csrfToken(f.admin)
	for _, tc := range []struct {
		name   string
		token  string
		header bool
		code   int
	}{
		{"none", "", false, 403},
		{"wrong field", "x" + good, false, 403},
		{"another session's", csrfToken("other"), true, 403},
		{"field", good, false, 200},
		{"header (htmx)", good, true, 200},
	} {
		if got := post(tc.token, tc.header); got != tc.code {
			t.Errorf("%s: %d, want %d", tc.name, got, tc.code)
		}
	}
}

func TestLayoutMap(t *testing.T) {
	rows := []nodeRow{
		{HasLatLon: true, Lat: 41.60, Lon: 1.60}, // north-west
		{HasLatLon: true, Lat: 41.50, Lon: 1.80}, // south-east
		{HasLatLon: true, Lat: 41.55, Lon: 1.70},
		{HasLatLon: true, Lat: 41.55, Lon: 1.70}, // same spot: spread apart
		{},                                       // no labels: not drawn
	}
	m := layoutMap(rows, 960, 440)
	if len(m.Points) != 4 || m.Unplaced != 1 {
		t.Fatalf("points %d unplaced %d", len(m.Points), m.Unplaced)
	}
	for _, p := range m.Points {
		if p.X < 0 || p.X > 960 || p.Y < 0 || p.Y > 440 {
			t.Fatalf("point outside the viewport: %+v", p)
		}
	}
	if nw, se := m.Points[0], m.Points[1]; !(nw.X < se.X && nw.Y < se.Y) {
		t.Fatalf("north-west %+v should be left of and above south-east %+v", nw, se)
	}
	if a, b := m.Points[2], m.Points[3]; a.X == b.X && a.Y == b.Y {
		t.Fatal("nodes at one spot drawn on top of each other")
	}
	if one := layoutMap(rows[:1], 960, 440); len(one.Points) != 1 || one.Points[0].X != 480 {
		t.Fatalf("one node: %+v", one.Points)
	}
}
