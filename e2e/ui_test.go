package e2e

import (
	"context"
	"fmt"
	"net/http"
	"net/url"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/chromedp/cdproto/cdp"
	"github.com/chromedp/cdproto/network"
	"github.com/chromedp/chromedp"
	paho "github.com/eclipse/paho.mqtt.golang"
)

// chromiumPath is the browser the UI tests drive (.ci/run installs it).
func chromiumPath() string {
	if p := os.Getenv("CLOUDSKIN_CHROMIUM"); p != "" {
		return p
	}
	return "/usr/bin/chromium"
}

// browser is one headless Chromium tab and where its screenshots go.
type browser struct {
	t    *testing.T
	ctx  context.Context
	shot string // screenshots of this run (kept after the test)
	docs bool   // also write them to docs/screenshots (CLOUDSKIN_UPDATE_SCREENSHOTS=1)
}

func newBrowser(t *testing.T, width, height int) *browser {
	t.Helper()
	if _, err := os.Stat(chromiumPath()); err != nil {
		t.Fatalf("the UI tests need Chromium at %s (apt-get install chromium, or set CLOUDSKIN_CHROMIUM): %v", chromiumPath(), err)
	}
	opts := append(chromedp.DefaultExecAllocatorOptions[:],
		chromedp.ExecPath(chromiumPath()), chromedp.Headless, chromedp.NoSandbox, chromedp.DisableGPU,
		chromedp.WindowSize(width, height))
	actx, cancelA := chromedp.NewExecAllocator(context.Background(), opts...)
	ctx, cancel := chromedp.NewContext(actx)
	t.Cleanup(func() { cancel(); cancelA() })
	dir, err := os.MkdirTemp("", "cloudskin-ui-screenshots-")
	if err != nil {
		t.Fatal(err)
	}
	b := &browser{t: t, ctx: ctx, shot: dir, docs: os.Getenv("CLOUDSKIN_UPDATE_SCREENSHOTS") == "1"}
	// The first action starts the browser, which lives as long as the
	// context of that call: no timeout on it.
	if err := chromedp.Do(ctx, chromedp.EmulateViewport(int64(width), int64(height))); err != nil {
		t.Fatalf("start %s: %v", chromiumPath(), err)
	}
	t.Logf("screenshots in %s", dir)
	return b
}

// do runs steps with a time limit, failing the test with what was asked.
func (b *browser) do(steps ...chromedp.Action[chromedp.Void]) {
	b.t.Helper()
	ctx, cancel := context.WithTimeout(b.ctx, 30*time.Second)
	defer cancel()
	if err := chromedp.Do(ctx, steps...); err != nil {
		b.t.Fatalf("browser: %v (page: %s)", err, b.location())
	}
}

func (b *browser) location() string {
	ctx, cancel := context.WithTimeout(b.ctx, 2*time.Second)
	defer cancel()
	loc, _ := chromedp.Run(ctx, chromedp.Location())
	return loc
}

// open navigates and returns the HTTP status of the page.
func (b *browser) open(u string) int64 {
	b.t.Helper()
	ctx, cancel := context.WithTimeout(b.ctx, 30*time.Second)
	defer cancel()
	resp, err := chromedp.Run(ctx, chromedp.NavigateResponse(u))
	if err != nil {
		b.t.Fatalf("open %s: %v", u, err)
	}
	return resp.Status
}

func (b *browser) text(sel string) string {
	b.t.Helper()
	ctx, cancel := context.WithTimeout(b.ctx, 30*time.Second)
	defer cancel()
	s, err := chromedp.Run(ctx, chromedp.Text(chromedp.CSS(sel)))
	if err != nil {
		b.t.Fatalf("text of %s: %v (page: %s)", sel, err, b.location())
	}
	return s
}

func eval[T any](b *browser, js string) T {
	b.t.Helper()
	ctx, cancel := context.WithTimeout(b.ctx, 10*time.Second)
	defer cancel()
	v, err := chromedp.Run(ctx, chromedp.Evaluate[T](js))
	if err != nil {
		b.t.Fatalf("evaluate %s: %v", js, err)
	}
	return v
}

// until waits for a JavaScript condition in the page.
func (b *browser) until(what, js string, timeout time.Duration) {
	b.t.Helper()
	deadline := time.Now().Add(timeout)
	for {
		ctx, cancel := context.WithTimeout(b.ctx, 5*time.Second)
		ok, err := chromedp.Run(ctx, chromedp.Evaluate[bool](js))
		cancel()
		if err == nil && ok {
			return
		}
		if time.Now().After(deadline) {
			b.screenshot("failed-" + strings.ReplaceAll(what, " ", "-"))
			body := eval[string](b, `document.querySelector("main") ? document.querySelector("main").innerText.slice(0, 3000) : ""`)
			b.t.Fatalf("timed out after %v waiting for %s (page %s, err %v):\n%s", timeout, what, b.location(), err, body)
		}
		time.Sleep(250 * time.Millisecond)
	}
}

func (b *browser) screenshot(name string) {
	b.t.Helper()
	ctx, cancel := context.WithTimeout(b.ctx, 30*time.Second)
	defer cancel()
	png, err := chromedp.Run(ctx, chromedp.FullScreenshot(100) /* 100: PNG */)
	if err != nil {
		b.t.Logf("screenshot %s: %v", name, err)
		return
	}
	_ = os.WriteFile(filepath.Join(b.shot, name+".png"), png, 0o644)
	if b.docs && docShots[name] {
		if err := os.WriteFile(filepath.Join("..", "docs", "screenshots", name+".png"), png, 0o644); err != nil {
			b.t.Errorf("update docs/screenshots: %v", err)
		}
	}
}

// docShots are the screenshots kept in docs/screenshots.
var docShots = map[string]bool{"fleet-overview": true, "node-detail": true, "decisions": true}

func (b *browser) cookies() []*network.Cookie {
	b.t.Helper()
	ctx, cancel := context.WithTimeout(b.ctx, 10*time.Second)
	defer cancel()
	cs, err := chromedp.Run(ctx, func(ctx context.Context, t *chromedp.Target) ([]*network.Cookie, error) {
		res, err := cdp.Call(ctx, t, network.GetCookies, network.GetCookiesParams{})
		if err != nil {
			return nil, err
		}
		return res.Cookies, nil
	})
	if err != nil {
		b.t.Fatalf("cookies: %v", err)
	}
	return cs
}

func (b *browser) cookie(name string) *network.Cookie {
	for _, c := range b.cookies() {
		if c.Name == name {
			return c
		}
	}
	return nil
}

func (b *browser) login(base, user, password string) {
	b.t.Helper()
	b.open(base + "/ui/")
	b.do(chromedp.WaitVisible(chromedp.CSS("#username")),
		chromedp.SendKeys(chromedp.CSS("#username"), user),
		chromedp.SendKeys(chromedp.CSS("#password"), password),
		chromedp.Click(chromedp.CSS("form button[type=submit]")))
	b.until("logged in as "+user, `!!document.querySelector(".who") && document.querySelector(".who").textContent.includes(`+strconv.Quote(user)+`)`, 15*time.Second)
}

// post sends a form post as a browser without JavaScript would, with the
// session cookie; csrf "" leaves the token out.
func uiPost(t *testing.T, base, path, session, csrf string, form url.Values) int {
	t.Helper()
	if csrf != "" {
		form.Set("_csrf", csrf)
	}
	req, _ := http.NewRequest("POST", base+path, strings.NewReader(form.Encode()))
	req.Header.Set("Content-Type", "application/x-www-form-urlencoded")
	req.AddCookie(&http.Cookie{Name: "cloudskin_session", Value: session})
	cl := &http.Client{CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }}
	resp, err := cl.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	return resp.StatusCode
}

func uiGet(t *testing.T, base, path, session string) int {
	t.Helper()
	req, _ := http.NewRequest("GET", base+path, nil)
	req.AddCookie(&http.Cookie{Name: "cloudskin_session", Value: session})
	cl := &http.Client{CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }}
	resp, err := cl.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	return resp.StatusCode
}

// TestUI drives the operator web UI in headless Chromium as an operator
// would: log in, see the node on the overview and its live charts, upload
// the aggregator and deploy it as an app, see it count, move it to a second
// node by hand, read the Planner's decision; then a consumer sees only the
// dataspace. CSRF and logout are checked on the way.
func TestUI(t *testing.T) {
	c := newConsole(t, backends[0], placementFlags...)
	jwt := c.login()
	a1 := newAgent(t, c, "edge-1", c.token(jwt), "")
	waitStatus(t, c, jwt, "edge-1", "online", 15*time.Second)
	wasm := filepath.Join(t.TempDir(), "aggregator.wasm")
	if err := os.WriteFile(wasm, buildCell(t, "aggregator"), 0o644); err != nil {
		t.Fatal(err)
	}

	b := newBrowser(t, 1280, 900)
	// Not logged in: any UI page leads to the login form.
	b.open(c.url + "/ui/fleet")
	b.do(chromedp.WaitVisible(chromedp.CSS("#username")))
	b.screenshot("login")
	b.login(c.url, "admin", adminPassword)

	// The session cookie: HttpOnly and SameSite=Strict.
	sc := b.cookie("cloudskin_session")
	if sc == nil || !sc.HTTPOnly || sc.SameSite != network.CookieSameSiteStrict {
		t.Fatalf("session cookie %+v: want HttpOnly, SameSite=Strict", sc)
	}
	csrf := eval[string](b, `JSON.parse(document.body.getAttribute("hx-headers"))["X-CSRF-Token"]`)

	t.Run("overview", func(t *testing.T) {
		b.until("edge-1 online on the overview", `(() => { const r = [...document.querySelectorAll("table.nodes tbody tr")].find(r => r.querySelector("th").textContent.trim() === "edge-1"); return !!r && r.classList.contains("online") })()`, 15*time.Second)
		if n := eval[int](b, `document.querySelectorAll("svg .mark.online").length`); n != 1 {
			t.Fatalf("map marks online: %d", n)
		}
		b.screenshot("fleet-overview")
	})

	t.Run("node detail live", func(t *testing.T) {
		b.do(chromedp.Click(chromedp.CSS(`table.nodes a[href="/ui/nodes/edge-1"]`)))
		b.until("charts drawn", `document.querySelectorAll("#charts .uplot").length === 5`, 15*time.Second)
		b.until("live stream", `document.getElementById("live-state").textContent === "live"`, 15*time.Second)
		first := eval[string](b, `document.getElementById("latest").dataset.t || ""`)
		b.until("a new sample pushed over SSE", `(document.getElementById("latest").dataset.t || "") !== `+strconv.Quote(first), 15*time.Second)
		b.screenshot("node-detail")
	})

	t.Run("csrf", func(t *testing.T) {
		if code := uiPost(t, c.url, "/ui/tokens", sc.Value, "", url.Values{"ttl": {"1h"}}); code != http.StatusForbidden {
			t.Fatalf("POST without a CSRF token: %d, want 403", code)
		}
		if code := uiPost(t, c.url, "/ui/tokens", sc.Value, "not-the-token", url.Values{"ttl": {"1h"}}); code != http.StatusForbidden {
			t.Fatalf("POST with a wrong CSRF token: %d, want 403", code)
		}
		if code := uiPost(t, c.url, "/ui/tokens", sc.Value, csrf, url.Values{"ttl": {"1h"}}); code != http.StatusOK {
			t.Fatalf("POST with the CSRF token: %d, want 200", code)
		}
	})

	var second *agentEnv
	top := t // agents live as long as the whole test
	t.Run("deploy and migrate", func(t *testing.T) {
		b.open(c.url + "/ui/apps")
		b.do(chromedp.WaitVisible(chromedp.CSS("#module-file")),
			chromedp.SetUploadFiles(chromedp.CSS("#module-file"), []string{wasm}),
			chromedp.SendKeys(chromedp.CSS("#module-name"), "aggregator"),
			chromedp.Click(chromedp.CSS("#upload-form button[type=submit]")))
		b.until("module uploaded", `!!document.querySelector("#upload-result .alert.ok")`, 30*time.Second)
		b.open(c.url + "/ui/apps")
		b.do(chromedp.WaitVisible(chromedp.CSS("#app-name")),
			chromedp.SendKeys(chromedp.CSS("#app-name"), "farm"),
			chromedp.Click(chromedp.CSS("#app-form button[type=submit]")))
		b.until("app created", `!!document.querySelector("#app-result .alert.ok")`, 30*time.Second)
		b.until("farm-agg running", `(() => { const s = document.querySelector("#cell-farm-agg .state"); return !!s && s.textContent === "running" })()`, 2*time.Minute)

		// Sensor readings: the invocations counter rises on the page.
		stop := make(chan struct{})
		done := sensorLoop(t, flagValue(a1.args, "--sensors"), stop)
		t.Cleanup(func() { close(stop); <-done })
		invocations := func() int {
			return eval[int](b, `parseInt(document.querySelector("#cell-farm-agg .invocations").textContent, 10) || 0`)
		}
		b.until("invocations counted", `(parseInt((document.querySelector("#cell-farm-agg .invocations")||{}).textContent, 10) || 0) > 0`, 30*time.Second)
		n0 := invocations()
		b.until("invocations rising", `(parseInt((document.querySelector("#cell-farm-agg .invocations")||{}).textContent, 10) || 0) > `+strconv.Itoa(n0), 30*time.Second)
		b.screenshot("apps-cells")

		// A second node; the operator moves the cell there by hand.
		second = newAgent(top, c, "edge-2", c.token(jwt), "", "--power-class", "grid", "--lat", "41.585", "--lon", "1.735")
		waitStatus(t, c, jwt, "edge-2", "online", 15*time.Second)
		b.open(c.url + "/ui/apps")
		b.until("edge-2 offered as a target", `!!document.querySelector('#to-farm-agg option[value="edge-2"]')`, 15*time.Second)
		b.do(chromedp.SetValue(chromedp.CSS("#to-farm-agg"), "edge-2"),
			chromedp.Click(chromedp.CSS("#cell-farm-agg form button[type=submit]")))
		b.until("the move shown", `!!document.querySelector("#moves .move")`, 30*time.Second)
		b.until("the move done", `!!document.querySelector('#moves .move[data-phase="done"]')`, 3*time.Minute)
		if why := b.text("#moves .move .why"); !strings.Contains(why, "edge-2") {
			t.Fatalf("move's why %q does not name edge-2", why)
		}
		b.until("farm-agg on edge-2", `(() => { const r = document.querySelector("#cell-farm-agg"); return !!r && r.querySelector('a[href="/ui/nodes/edge-2"]') && r.querySelector(".state").textContent === "running" })()`, time.Minute)
		b.screenshot("migrated")

		b.open(c.url + "/ui/decisions?cell=farm-agg")
		b.do(chromedp.WaitVisible(chromedp.CSS(".decision")))
		first := b.text(".decision")
		if !strings.Contains(first, "manual") || !strings.Contains(first, "edge-2") || !strings.Contains(first, "Why:") {
			t.Fatalf("newest decision: %q", first)
		}
		if n := eval[int](b, `document.querySelectorAll(".decision").length`); n < 2 {
			t.Fatalf("%d decisions, want the placement and the move", n)
		}
		if n := eval[int](b, `document.querySelector(".decision table.candidates").querySelectorAll("tbody tr").length`); n < 1 {
			t.Fatal("decision without candidates")
		}
		b.screenshot("decisions")

		b.open(c.url + "/ui/fleet")
		b.until("both nodes on the map", `document.querySelectorAll("svg .mark").length === 2`, 10*time.Second)
		b.screenshot("fleet-overview")
	})

	t.Run("keyboard and tablet", func(t *testing.T) {
		b.open(c.url + "/ui/fleet")
		b.do(chromedp.KeyEvent("\t"))
		if !eval[bool](b, `document.activeElement.classList.contains("skip")`) {
			t.Fatal("the first Tab does not reach the skip link")
		}
		if n := eval[int](b, `[...document.querySelectorAll("input:not([type=hidden]), select")].filter(e => !(e.labels && e.labels.length) && !e.getAttribute("aria-label")).length`); n != 0 {
			t.Fatalf("%d controls without a label", n)
		}
		b.do(chromedp.EmulateViewport(768, 1024))
		defer b.do(chromedp.EmulateViewport(1280, 900))
		for _, p := range []string{"/ui/fleet", "/ui/apps", "/ui/nodes/edge-2", "/ui/decisions", "/ui/updates"} {
			b.open(c.url + p)
			if w := eval[int](b, `document.documentElement.scrollWidth`); w > 768 {
				t.Fatalf("%s at 768 px is %d px wide", p, w)
			}
			for _, form := range []string{"/ui/apps"} {
				if p == form {
					if n := eval[int](b, `[...document.querySelectorAll("input:not([type=hidden]), select")].filter(e => !(e.labels && e.labels.length) && !e.getAttribute("aria-label")).length`); n != 0 {
						t.Fatalf("%s: %d controls without a label", p, n)
					}
				}
			}
		}
		b.open(c.url + "/ui/apps")
		b.screenshot("tablet-apps")
	})

	t.Run("other pages", func(t *testing.T) {
		for path, want := range map[string]string{"/ui/models": "Models", "/ui/dataspace": "Dataspace", "/ui/admin": "Administration"} {
			if code := b.open(c.url + path); code != 200 {
				t.Fatalf("%s: %d", path, code)
			}
			if txt := b.text("main"); !strings.Contains(txt, want) {
				t.Fatalf("%s: %q", path, txt)
			}
		}
		b.open(c.url + "/ui/admin")
		b.do(chromedp.Click(chromedp.CSS("#token-form button[type=submit]")))
		b.until("token shown once", `(document.querySelector("#new-token")||{}).textContent?.startsWith("cset_") === true`, 15*time.Second)
	})

	t.Run("updates", func(t *testing.T) {
		b.open(c.url + "/ui/fleet")
		b.do(chromedp.Click(chromedp.CSS(`nav a[href="/ui/updates"]`)))
		b.until("updates page", `location.pathname === "/ui/updates" && document.querySelector("#bundle-form") !== null`, 15*time.Second)
		txt := b.text("main")
		for _, want := range []string{"No bundles: build them with make images", "--release-key", "Upload a bundle first", "No rollouts yet"} {
			if !strings.Contains(txt, want) {
				t.Fatalf("updates page without %q: %q", want, txt)
			}
		}
		if n := eval[int](b, `[...document.querySelectorAll("main input:not([type=hidden]), main select")].filter(e => !(e.labels && e.labels.length) && !e.getAttribute("aria-label")).length`); n != 0 {
			t.Fatalf("%d controls without a label", n)
		}
		if code := b.open(c.url + "/ui/rollouts"); code != 200 || !strings.HasSuffix(b.location(), "/ui/updates") {
			t.Fatalf("/ui/rollouts (the old placeholder): %d at %s", code, b.location())
		}
		b.screenshot("updates")
	})

	t.Run("logout", func(t *testing.T) {
		b.open(c.url + "/ui/fleet")
		b.do(chromedp.Click(chromedp.CSS(".logout button")))
		b.do(chromedp.WaitVisible(chromedp.CSS("#username")))
		if ck := b.cookie("cloudskin_session"); ck != nil {
			t.Fatalf("session cookie kept after logout: %+v", ck)
		}
		if code := b.open(c.url + "/ui/fleet"); code != 200 || !strings.Contains(b.location(), "/ui/login") {
			t.Fatalf("after logout /ui/fleet: %d at %s", code, b.location())
		}
	})

	t.Run("consumer", func(t *testing.T) {
		c.do("POST", "/api/v1/users", jwt, map[string]any{"username": "coop", "password": "coop-password-1", "role": "consumer",
			"profile": map[string]any{"nationality": "ES", "sector": "agriculture", "org_type": "private"}}, 201, nil)
		b.login(c.url, "coop", "coop-password-1")
		if loc := b.location(); !strings.HasSuffix(loc, "/ui/dataspace") {
			t.Fatalf("consumer landed on %s", loc)
		}
		if n := eval[int](b, `document.querySelectorAll('nav a[href^="/ui/fleet"], nav a[href^="/ui/apps"], nav a[href^="/ui/decisions"], nav a[href^="/ui/models"], nav a[href^="/ui/updates"], nav a[href^="/ui/admin"]').length`); n != 0 {
			t.Fatalf("consumer nav has %d fleet/admin links", n)
		}
		if n := eval[int](b, `document.querySelectorAll('nav a[href="/ui/dataspace"]').length`); n != 1 {
			t.Fatal("consumer nav without the dataspace")
		}
		b.screenshot("consumer-dataspace")
		for _, p := range []string{"/ui/fleet", "/ui/nodes/edge-1", "/ui/apps", "/ui/decisions", "/ui/updates", "/ui/admin"} {
			if code := b.open(c.url + p); code != http.StatusForbidden {
				t.Fatalf("consumer GET %s: %d, want 403", p, code)
			}
			if h := b.text("h1"); !strings.Contains(h, "403") {
				t.Fatalf("consumer %s: page %q", p, h)
			}
		}
		ck := b.cookie("cloudskin_session")
		if code := uiGet(t, c.url, "/ui/nodes/edge-1/live", ck.Value); code != http.StatusForbidden {
			t.Fatalf("consumer live stream: %d", code)
		}
	})
	for _, a := range []*agentEnv{a1, second} {
		if a != nil && a.proc.Exited() {
			t.Fatalf("agent %s exited", a.name)
		}
	}
}

// sensorLoop publishes a reading to a node's sensor broker every 300 ms
// until stop is closed (a background sensor: errors are retried).
func sensorLoop(t *testing.T, sensors string, stop <-chan struct{}) <-chan struct{} {
	t.Helper()
	pub := paho.NewClient(paho.NewClientOptions().AddBroker("tcp://" + sensors).
		SetClientID("e2e-ui-sensor-" + strconv.FormatInt(time.Now().UnixNano(), 36)).SetAutoReconnect(true).SetConnectRetry(true))
	if tok := pub.Connect(); !tok.WaitTimeout(10*time.Second) || tok.Error() != nil {
		t.Fatalf("connect sensor to %s: %v", sensors, tok.Error())
	}
	done := make(chan struct{})
	go func() {
		defer close(done)
		defer pub.Disconnect(100)
		for i := 0; ; i++ {
			select {
			case <-stop:
				return
			case <-time.After(300 * time.Millisecond):
			}
			pub.Publish("sensors/field/t1", 1, false, fmt.Sprintf(`{"sensor":"t1","value":%d}`, i%17)).WaitTimeout(5 * time.Second)
		}
	}()
	return done
}
