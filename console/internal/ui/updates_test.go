package ui

import (
	"bytes"
	"crypto/ed25519"
	"crypto/rand"
	"mime/multipart"
	"net/http"
	"net/http/httptest"
	"net/url"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"

	otabundle "github.com/cloudskin/cloudskin/shared/ota"
)

// bundle builds a signed bundle of the agent.
func bundle(t *testing.T, version, arch string, key ed25519.PrivateKey) []byte {
	t.Helper()
	bin := filepath.Join(t.TempDir(), otabundle.Product)
	if err := os.WriteFile(bin, []byte("agent "+version+" "+arch), 0o755); err != nil {
		t.Fatal(err)
	}
	var buf bytes.Buffer
	if _, err := otabundle.Build(&buf, version, arch, map[string]string{otabundle.Product: bin}, key); err != nil {
		t.Fatal(err)
	}
	return buf.Bytes()
}

// post sends a form as htmx does (CSRF header), or as a plain form when
// htmx is false (CSRF field).
func (f *fixture) post(t *testing.T, path string, form url.Values, htmx bool) *httptest.ResponseRecorder {
	t.Helper()
	if !htmx {
		form.Set(csrfField, csrfToken(f.admin))
	}
	req := httptest.NewRequest(http.MethodPost, path, strings.NewReader(form.Encode()))
	req.Header.Set("Content-Type", "application/x-www-form-urlencoded")
	if htmx {
		req.Header.Set("HX-Request", "true")
		req.Header.Set(csrfHeader, csrfToken(f.admin))
	}
	req.AddCookie(&http.Cookie{Name: sessionCookie, Value: f.admin})
	rec := httptest.NewRecorder()
	f.handler.ServeHTTP(rec, req)
	return rec
}

// upload posts a file to the bundle form as htmx does (nil: no file).
func (f *fixture) upload(t *testing.T, content []byte) *httptest.ResponseRecorder {
	t.Helper()
	var body bytes.Buffer
	mw := multipart.NewWriter(&body)
	if content != nil {
		fw, err := mw.CreateFormFile("bundle", "cloudskin-agent_1.2.0_amd64.ota.tar.gz")
		if err != nil {
			t.Fatal(err)
		}
		fw.Write(content)
	}
	mw.Close()
	req := httptest.NewRequest(http.MethodPost, "/ui/bundles", &body)
	req.Header.Set("Content-Type", mw.FormDataContentType())
	req.Header.Set("HX-Request", "true")
	req.Header.Set(csrfHeader, csrfToken(f.admin))
	req.AddCookie(&http.Cookie{Name: sessionCookie, Value: f.admin})
	rec := httptest.NewRecorder()
	f.handler.ServeHTTP(rec, req)
	return rec
}

func TestBundleUpload(t *testing.T) {
	f := newFixture(t, 3, 1)
	_, other, err := ed25519.GenerateKey(rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	good := bundle(t, "1.2.0", "amd64", f.release)
	tampered, err := otabundle.Rewrite(good, func(name string, body []byte) ([]byte, bool) {
		if name == otabundle.Product {
			body = bytes.Replace(body, []byte("agent 1.2.0 amd64"), []byte("Agent 1.2.0 amd64"), 1)
		}
		return body, true
	})
	if err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		name    string
		content []byte
		code    int
		want    []string
	}{
		{"no file", nil, 400, []string{"choose a bundle file"}},
		{"not a bundle", []byte("hello, not a tar"), 400, []string{"Refused (400)", "bundle refused", "--release-key"}},
		{"signed with another key", bundle(t, "1.2.0", "amd64", other), 400, []string{"bundle refused", "tampered", "signature does not match the release key"}},
		{"tampered file", tampered, 400, []string{"tampered", "does not match its sha256"}},
		{"good", good, 200, []string{"Bundle 1.2.0 for amd64 verified and kept", "uploaded by admin"}},
		{"same again", good, 200, []string{"Bundle 1.2.0 for amd64"}},
	} {
		rec := f.upload(t, tc.content)
		body := rec.Body.String()
		if rec.Code != tc.code {
			t.Errorf("%s: %d, want %d: %s", tc.name, rec.Code, tc.code, body)
			continue
		}
		for _, w := range tc.want {
			if !strings.Contains(body, w) {
				t.Errorf("%s: %q not in %s", tc.name, w, body)
			}
		}
	}
	page := f.get(t, "/ui/updates", f.admin, false).Body.String()
	for _, w := range []string{"<th scope=\"row\">1.2.0</th><td>amd64</td>", `<option value="`, "No rollouts yet"} {
		if !strings.Contains(page, w) {
			t.Errorf("updates page without %q", w)
		}
	}

	// A console started without --release-key says so.
	nokey := newFixtureKey(t, 1, 1, false)
	rec := nokey.upload(t, good)
	if rec.Code != http.StatusConflict || !strings.Contains(rec.Body.String(), "start it with --release-key") {
		t.Errorf("no release key: %d %s", rec.Code, rec.Body.String())
	}
}

func TestRollouts(t *testing.T) {
	f := newFixture(t, 3, 1)
	up := func(version, arch string) string {
		t.Helper()
		f.upload(t, bundle(t, version, arch, f.release))
		m := regexp.MustCompile(`<option value="([0-9a-f]{64})">` + regexp.QuoteMeta(version+" "+arch)).
			FindStringSubmatch(f.get(t, "/ui/updates", f.admin, false).Body.String())
		if m == nil {
			t.Fatalf("bundle %s %s not offered in the rollout form", version, arch)
		}
		return m[1]
	}
	amd, arm := up("1.2.0", "amd64"), up("1.2.0", "arm64")

	for _, tc := range []struct {
		name string
		form url.Values
		code int
		want []string
	}{
		{"no bundle", url.Values{}, 400, []string{"choose a bundle"}},
		{"bad labels", url.Values{"bundle": {amd}, "labels": {"site"}}, 400, []string{`&#34;site&#34; is not key=value`}},
		{"bad number", url.Values{"bundle": {amd}, "percent": {"half"}}, 400, []string{"percent: not a whole number"}},
		{"percent out of range", url.Values{"bundle": {amd}, "percent": {"150"}}, 400, []string{"Refused (400)", "percent 150 must be 1-100"}},
		{"unknown node", url.Values{"bundle": {amd}, "nodes": {"edge-9999"}}, 404, []string{"Refused (404)", "edge-9999"}},
		{"no match", url.Values{"bundle": {amd}, "labels": {"site=nowhere"}}, 422, []string{"no node matches the selector"}},
		{"every match skipped", url.Values{"bundle": {arm}, "labels": {"power=green, site=site-0"}}, 422,
			[]string{"Refused (422)", "1 node(s) skipped", "<strong>edge-0000</strong>: arch amd64, the bundle is for arm64"}},
	} {
		rec := f.post(t, "/ui/rollouts", tc.form, true)
		body := rec.Body.String()
		if rec.Code != tc.code {
			t.Errorf("%s: %d, want %d: %s", tc.name, rec.Code, tc.code, body)
			continue
		}
		for _, w := range tc.want {
			if !strings.Contains(body, w) {
				t.Errorf("%s: %q not in %s", tc.name, w, body)
			}
		}
	}
	// Without htmx the refusal page names the skipped nodes too.
	rec := f.post(t, "/ui/rollouts", url.Values{"bundle": {arm}, "nodes": {"edge-0001"}}, false)
	if rec.Code != 422 || !strings.Contains(rec.Body.String(), "edge-0001: arch amd64, the bundle is for arm64") {
		t.Errorf("plain post, all skipped: %d %s", rec.Code, rec.Body.String())
	}

	// Start one: its page follows the nodes live, and it can be cancelled once.
	rec = f.post(t, "/ui/rollouts", url.Values{"bundle": {amd}, "nodes": {"edge-0000, edge-0001"}, "percent": {"50"},
		"wave_size": {"1"}, "max_failures": {"0"}, "health_seconds": {"30"}}, true)
	body := rec.Body.String()
	m := regexp.MustCompile(`href="/ui/rollouts/([^"]+)"`).FindStringSubmatch(body)
	if rec.Code != 200 || m == nil || !strings.Contains(body, "started: 1 node(s) in 1 wave(s)") ||
		!strings.Contains(body, "<strong>edge-0001</strong>: outside the 50% of this rollout") {
		t.Fatalf("start: %d %s", rec.Code, body)
	}
	id := m[1]
	page := f.get(t, "/ui/rollouts/"+id, f.admin, false).Body.String()
	for _, w := range []string{`hx-get="/ui/rollouts/` + id + `/progress" hx-trigger="every 2s"`, `id="rn-edge-0000" data-state="updating"`,
		`<progress max="100" value="0"`, "Cancel rollout", "nodes edge-0000, edge-0001, 50% of the eligible", "30 s"} {
		if !strings.Contains(page, w) {
			t.Errorf("rollout page without %q:\n%s", w, page)
		}
	}
	if l := f.get(t, "/ui/updates/rollouts", f.admin, false).Body.String(); !strings.Contains(l, id) || !strings.Contains(l, "state-running") {
		t.Errorf("rollouts list without %s running: %s", id, l)
	}
	if rec := f.post(t, "/ui/rollouts/"+id+"/cancel", url.Values{}, true); rec.Code != 200 || !strings.Contains(rec.Body.String(), "cancelled") {
		t.Errorf("cancel: %d %s", rec.Code, rec.Body.String())
	}
	if rec := f.post(t, "/ui/rollouts/"+id+"/cancel", url.Values{}, true); rec.Code != 409 || !strings.Contains(rec.Body.String(), "Refused (409)") {
		t.Errorf("cancel again: %d %s", rec.Code, rec.Body.String())
	}
	// Final: the progress stops polling and the cancel button is gone.
	rec = f.get(t, "/ui/rollouts/"+id+"/progress", f.admin, false)
	if body := rec.Body.String(); rec.Code != 200 || strings.Contains(body, "hx-trigger") || !strings.Contains(body, `data-state="cancelled"`) {
		t.Errorf("progress after cancel: %d %s", rec.Code, body)
	}
	if page := f.get(t, "/ui/rollouts/"+id, f.admin, false).Body.String(); strings.Contains(page, "Cancel rollout") {
		t.Error("a cancelled rollout offers to cancel")
	}
	// A plain form post lands on the rollout's page.
	rec = f.post(t, "/ui/rollouts", url.Values{"bundle": {amd}, "nodes": {"edge-0002"}}, false)
	if loc := rec.Header().Get("Location"); rec.Code != http.StatusSeeOther || !strings.HasPrefix(loc, "/ui/rollouts/1.2.0-amd64-") {
		t.Errorf("plain post: %d to %q", rec.Code, loc)
	}
}
