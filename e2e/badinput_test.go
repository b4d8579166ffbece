package e2e

import (
	"bytes"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"path/filepath"
	"strings"
	"testing"
	"time"

	paho "github.com/eclipse/paho.mqtt.golang"
	"github.com/glebarez/sqlite"
	"github.com/golang-jwt/jwt/v5"
	"gorm.io/driver/postgres"
	"gorm.io/gorm"
	"gorm.io/gorm/logger"

	"github.com/cloudskin/cloudskin/shared/protocol"
	"github.com/cloudskin/cloudskin/shared/testenv"
)

// TestBadInput proves the "bad input" requirement: malformed or oversized
// telemetry, unknown nodes, wrong topics, a reused enrollment token, forged
// or expired JWTs and wrong passwords each get a 4xx or a refusal, a log
// line and a counter in /metrics, while nothing crashes and nothing stored
// is lost. It runs on the two ends of the backend table: SQLite with the
// embedded broker, and PostgreSQL with Mosquitto.
func TestBadInput(t *testing.T) {
	for _, be := range backends {
		if be.postgres != be.mosquitto {
			continue // the mixed combinations add nothing here
		}
		t.Run(be.name, func(t *testing.T) { testBadInput(t, be) })
	}
}

func testBadInput(t *testing.T, be backend) {
	c := newConsole(t, be)
	jwt := c.login()
	// A well-behaved node publishes throughout; what it stored before the
	// attacks must all be there after them.
	good := newAgent(t, c, "edge-good", c.token(jwt), "")
	began := time.Now().Add(-time.Minute)
	waitFor(t, 15*time.Second, "edge-good online with telemetry", func() error {
		n, err := c.tryNode(jwt, "edge-good")
		if err != nil {
			return err
		}
		if n.Status != "online" || len(c.samples(jwt, "edge-good", began)) < 4 {
			return fmt.Errorf("status %s", n.Status)
		}
		return nil
	})
	before := c.samples(jwt, "edge-good", began)

	t.Run("http", func(t *testing.T) { badHTTP(t, c.on(t)) })
	t.Run("jwt", func(t *testing.T) { badJWT(t, c.on(t), jwt) })
	t.Run("enroll", func(t *testing.T) { badEnroll(t, c.on(t), jwt) })
	t.Run("mqtt", func(t *testing.T) { badMQTT(t, c.on(t), jwt, good) })

	t.Run("survives", func(t *testing.T) {
		c := c.on(t)
		if c.proc.Exited() {
			t.Fatalf("console exited:\n%s", testenv.Tail(c.proc.Out.String(), 4000))
		}
		for _, path := range []string{"/healthz", "/readyz"} {
			if code, raw := c.request("GET", path, "", nil); code != 200 {
				t.Fatalf("GET %s: %d %s", path, code, raw)
			}
		}
		// Everything stored before is still there, and more keeps coming.
		var after []sample
		waitFor(t, 10*time.Second, "edge-good telemetry after the attacks", func() error {
			after = c.samples(jwt, "edge-good", began)
			if len(after) <= len(before) {
				return fmt.Errorf("%d samples, had %d before the attacks", len(after), len(before))
			}
			return nil
		})
		kept := map[int64]bool{}
		for _, s := range after {
			kept[s.Time.UnixNano()] = true
		}
		for _, s := range before {
			if !kept[s.Time.UnixNano()] {
				t.Fatalf("sample %d of edge-good at %s was lost", s.Seq, s.Time)
			}
		}
		if n := c.node(jwt, "edge-good"); n.Status != "online" {
			t.Fatalf("edge-good is %s (%s) after the attacks", n.Status, n.StatusReason)
		}
		if good.proc.Exited() {
			t.Fatalf("the well-behaved agent exited:\n%s", testenv.Tail(good.proc.Out.String(), 4000))
		}
		if got := good.metric("cloudskin_agent_telemetry_dropped_total", `reason="outbox_full"`); got != 0 {
			t.Fatalf("the well-behaved agent dropped %v samples", got)
		}
		c.login() // the admin is not locked out by the failed logins
	})
}

// on returns c reporting to t, so a failing subtest stops only itself.
func (c *consoleEnv) on(t *testing.T) *consoleEnv {
	cc := *c
	cc.t = t
	return &cc
}

// refusal is what refused input must leave behind: a counter that went up
// by exactly one per refusal, and a log line.
type refusal struct {
	c      *consoleEnv
	reason string
	count  float64
	times  int // refusals expected; 0 means 1
	mark   int
	logs   *testenv.Buffer
	line   []string
}

// expectRefusal notes the counter for reason and where the console's log
// ends now; check then waits for the counter to go up by one and for a log
// line, after this point, holding every part of line. An empty reason
// checks no counter, and no line checks no log.
func (c *consoleEnv) expectRefusal(reason string, line ...string) *refusal {
	c.t.Helper()
	return c.expectRefusalIn(c.proc.Out, reason, line...)
}

// expectRefusalIn is expectRefusal with the log line looked for in logs
// (Mosquitto's output rather than the console's).
func (c *consoleEnv) expectRefusalIn(logs *testenv.Buffer, reason string, line ...string) *refusal {
	c.t.Helper()
	r := &refusal{c: c, reason: reason, mark: len(logs.String()), logs: logs, line: line}
	if reason != "" {
		r.count = c.rejected(reason)
	}
	return r
}

func (c *consoleEnv) rejected(reason string) float64 {
	c.t.Helper()
	return c.metric("cloudskin_console_rejected_total", `reason="`+reason+`"`)
}

func (r *refusal) check() {
	t := r.c.t
	t.Helper()
	if r.reason != "" {
		want := r.count + float64(max(r.times, 1))
		waitFor(t, 5*time.Second, "counter "+r.reason, func() error {
			got := r.c.rejected(r.reason)
			if got > want {
				t.Fatalf("rejected_total{reason=%q} went from %v to %v, want %v: counted more than once", r.reason, r.count, got, want)
			}
			if got != want {
				return fmt.Errorf("rejected_total{reason=%q} = %v, want %v", r.reason, got, want)
			}
			return nil
		})
	}
	if len(r.line) > 0 {
		waitFor(t, 5*time.Second, fmt.Sprintf("log line with %q", r.line), func() error {
			for _, l := range strings.Split(r.logs.String()[r.mark:], "\n") {
				if containsAll(l, r.line) {
					return nil
				}
			}
			return fmt.Errorf("not logged")
		})
	}
}

func containsAll(s string, parts []string) bool {
	for _, p := range parts {
		if !strings.Contains(s, p) {
			return false
		}
	}
	return true
}

// send makes a request with full control over headers and body; a body
// that is an io.Reader without a length goes out chunked.
func (c *consoleEnv) send(method, path string, header http.Header, body io.Reader) (int, http.Header, []byte) {
	c.t.Helper()
	req, err := http.NewRequest(method, c.url+path, body)
	if err != nil {
		c.t.Fatal(err)
	}
	for k, v := range header {
		req.Header[k] = v
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		c.t.Fatalf("%s %s: %v", method, path, err)
	}
	defer resp.Body.Close()
	raw, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, resp.Header, raw
}

// apiErr checks that an error response is JSON with an "error" field and
// returns that field.
func apiErr(t *testing.T, header http.Header, raw []byte) string {
	t.Helper()
	if ct := header.Get("Content-Type"); !strings.HasPrefix(ct, "application/json") {
		t.Fatalf("error response has Content-Type %q, want JSON: %s", ct, raw)
	}
	var body struct {
		Error *string `json:"error"`
	}
	if err := json.Unmarshal(raw, &body); err != nil || body.Error == nil || *body.Error == "" {
		t.Fatalf("error response is not JSON with an \"error\" field: %s (%v)", raw, err)
	}
	return *body.Error
}

func jsonHeader(ct string) http.Header {
	h := http.Header{}
	if ct != "" {
		h.Set("Content-Type", ct)
	}
	return h
}

// hideLen hides a reader's length so the client sends it chunked.
type hideLen struct{ io.Reader }

func badHTTP(t *testing.T, c *consoleEnv) {
	login := func(user, pw string) []byte {
		b, _ := json.Marshal(map[string]string{"username": user, "password": pw})
		return b
	}
	big := append([]byte(`{"username":"admin","password":"`), bytes.Repeat([]byte("x"), 1<<20)...)
	big = append(big, `"}`...)

	jwt := c.login()
	var wrongPasswordMsg string
	for _, tc := range []struct {
		name   string
		method string
		path   string
		header http.Header
		body   func() io.Reader
		auth   bool // send the admin's token
		code   int
		reason string   // counter that must go up by one, if any
		line   []string // log line that must appear, if any
	}{
		{name: "wrong password", method: "POST", path: "/api/v1/auth/login", header: jsonHeader("application/json"),
			body: func() io.Reader { return bytes.NewReader(login("admin", "not-the-password")) },
			code: 401, reason: "login_failed", line: []string{`msg="login failed"`, "username=admin"}},
		{name: "unknown user", method: "POST", path: "/api/v1/auth/login", header: jsonHeader("application/json"),
			body: func() io.Reader { return bytes.NewReader(login("mallory", adminPassword)) },
			code: 401, reason: "login_failed", line: []string{`msg="login failed"`, "username=mallory"}},
		{name: "empty password", method: "POST", path: "/api/v1/auth/login", header: jsonHeader("application/json"),
			body: func() io.Reader { return bytes.NewReader(login("admin", "")) },
			code: 401, reason: "login_failed", line: []string{`msg="request refused"`, "code=401"}},
		{name: "malformed JSON", method: "POST", path: "/api/v1/auth/login", header: jsonHeader("application/json"),
			body: func() io.Reader { return strings.NewReader(`{"username":"admin","password":`) },
			code: 400, reason: "bad_request", line: []string{`msg="request refused"`, "code=400"}},
		{name: "JSON array", method: "POST", path: "/api/v1/auth/login", header: jsonHeader("application/json"),
			body: func() io.Reader { return strings.NewReader(`["admin"]`) },
			code: 400, reason: "bad_request", line: []string{`msg="request refused"`, "code=400"}},
		{name: "unknown field", method: "POST", path: "/api/v1/auth/login", header: jsonHeader("application/json"),
			body: func() io.Reader {
				return strings.NewReader(`{"username":"admin","password":"` + adminPassword + `","role":"admin"}`)
			},
			code: 400, reason: "bad_request", line: []string{`msg="request refused"`, "code=400", "unknown field"}},
		{name: "body over 1 MiB", method: "POST", path: "/api/v1/auth/login", header: jsonHeader("application/json"),
			body: func() io.Reader { return bytes.NewReader(big) },
			code: 413, reason: "bad_request", line: []string{`msg="request refused"`, "code=413"}},
		// Sent chunked, the limit trips while the JSON is decoded.
		{name: "body over 1 MiB chunked", method: "POST", path: "/api/v1/enroll", header: jsonHeader("application/json"),
			body: func() io.Reader { return hideLen{bytes.NewReader(big)} },
			code: 413, reason: "bad_request", line: []string{`msg="request refused"`, "path=/api/v1/enroll"}},
		{name: "data after the JSON value", method: "POST", path: "/api/v1/auth/login", header: jsonHeader("application/json"),
			body: func() io.Reader {
				return io.MultiReader(bytes.NewReader(login("admin", adminPassword)), strings.NewReader(" trailing garbage"))
			},
			code: 400, reason: "bad_request", line: []string{`msg="request refused"`, "data after the JSON value"}},
		{name: "wrong content type", method: "POST", path: "/api/v1/auth/login", header: jsonHeader("text/plain"),
			body: func() io.Reader { return bytes.NewReader(login("admin", adminPassword)) },
			code: 415, reason: "bad_request", line: []string{`msg="request refused"`, "code=415"}},
		{name: "form content type", method: "POST", path: "/api/v1/enroll", header: jsonHeader("application/x-www-form-urlencoded"),
			body: func() io.Reader { return strings.NewReader("token=x&name=edge-x") },
			code: 415, reason: "bad_request", line: []string{`msg="request refused"`, "code=415"}},
		{name: "no token", method: "GET", path: "/api/v1/nodes",
			code: 401, reason: "jwt_invalid", line: []string{`msg="request refused"`, "code=401"}},
		{name: "no node credential", method: "GET", path: "/api/v1/agent/whoami",
			code: 401, reason: "node_credential_invalid", line: []string{`msg="node credential refused"`}},
		{name: "unknown route", method: "GET", path: "/api/v1/no-such-thing", auth: true, code: 404},
		{name: "unknown route without a token", method: "GET", path: "/api/v1/no-such-thing", code: 404},
		{name: "wrong method under the API", method: "DELETE", path: "/api/v1/auth/login", code: 405},
		{name: "unknown top-level route", method: "POST", path: "/admin.php", header: jsonHeader("application/json"),
			body: func() io.Reader { return strings.NewReader(`{}`) }, code: 404},
		{name: "wrong method", method: "DELETE", path: "/healthz", code: 405},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c := c.on(t)
			r := c.expectRefusal(tc.reason, tc.line...)
			var body io.Reader
			if tc.body != nil {
				body = tc.body()
			}
			header := tc.header.Clone()
			if tc.auth {
				if header == nil {
					header = http.Header{}
				}
				header.Set("Authorization", "Bearer "+jwt)
			}
			code, header, raw := c.send(tc.method, tc.path, header, body)
			if code != tc.code {
				t.Fatalf("%s %s: %d, want %d: %s", tc.method, tc.path, code, tc.code, testenv.Tail(string(raw), 300))
			}
			msg := apiErr(t, header, raw)
			r.check()
			// No user enumeration: an unknown user gets the very answer a
			// wrong password gets.
			switch tc.name {
			case "wrong password":
				wrongPasswordMsg = msg
			case "unknown user":
				if msg != wrongPasswordMsg {
					t.Fatalf("unknown user answered %q, wrong password %q: tells users apart", msg, wrongPasswordMsg)
				}
			}
		})
	}

	// Operator queries that are malformed are refused, not executed.
	for _, tc := range []struct {
		name, path string
		code       int
	}{
		{"invalid node name", "/api/v1/nodes/Edge_1", 400},
		{"unknown node", "/api/v1/nodes/edge-nobody", 404},
		{"bad since", "/api/v1/nodes/edge-good/telemetry?since=yesterday", 400},
		{"bad limit", "/api/v1/nodes/edge-good/telemetry?limit=lots", 400},
		{"limit too big", "/api/v1/nodes/edge-good/telemetry?limit=10000000", 400},
		{"until before since", "/api/v1/nodes/edge-good/telemetry?since=1m&until=2h", 400},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c := c.on(t)
			r := c.expectRefusal("bad_request", `msg="request refused"`, fmt.Sprintf("code=%d", tc.code))
			if tc.code == 404 {
				// Not found is an answer, not a refusal to count or log.
				r = c.expectRefusal("")
			}
			code, header, raw := c.send("GET", tc.path, http.Header{"Authorization": {"Bearer " + jwt}}, nil)
			if code != tc.code {
				t.Fatalf("GET %s: %d, want %d: %s", tc.path, code, tc.code, raw)
			}
			apiErr(t, header, raw)
			r.check()
		})
	}
}

// consoleSecret is the console's JWT signing key, read from its database.
// A test cannot make the console issue an expired token or one for another
// role; signing them with the real key isolates what is checked (expiry,
// algorithm, issuer, role) from the signature.
func consoleSecret(t *testing.T, c *consoleEnv) []byte {
	t.Helper()
	secret, err := readSetting(c, "jwt_secret")
	if err != nil {
		t.Fatalf("read the console's JWT secret: %v", err)
	}
	return []byte(secret)
}

// readSetting reads one row of the console's settings table.
func readSetting(c *consoleEnv, key string) (string, error) {
	dialector := sqlite.Open(filepath.Join(c.data, "console.db") + "?_pragma=busy_timeout(5000)")
	if c.dbURL != "" {
		dialector = postgres.Open(c.dbURL)
	}
	db, err := gorm.Open(dialector, &gorm.Config{Logger: logger.Discard})
	if err != nil {
		return "", err
	}
	if sqlDB, err := db.DB(); err == nil {
		defer sqlDB.Close()
	}
	var value string
	res := db.Raw("SELECT value FROM settings WHERE key = ?", key).Scan(&value)
	if res.Error == nil && value == "" {
		return "", fmt.Errorf("no setting %q", key)
	}
	return value, res.Error
}

func signed(t *testing.T, method jwt.SigningMethod, key any, claims jwt.MapClaims) string {
	t.Helper()
	s, err := jwt.NewWithClaims(method, claims).SignedString(key)
	if err != nil {
		t.Fatal(err)
	}
	return s
}

func badJWT(t *testing.T, c *consoleEnv, adminJWT string) {
	secret := consoleSecret(t, c)
	now := time.Now()
	claims := func(edit func(jwt.MapClaims)) jwt.MapClaims {
		m := jwt.MapClaims{
			"role": "admin", "iss": "cloudskin-console", "sub": "admin",
			"iat": now.Unix(), "nbf": now.Add(-time.Minute).Unix(), "exp": now.Add(time.Hour).Unix(),
		}
		if edit != nil {
			edit(m)
		}
		return m
	}
	valid := signed(t, jwt.SigningMethodHS256, secret, claims(nil))
	// An operator account made by the admin; its token is signed here with
	// the console's key like the others.
	if code, raw := c.request("POST", "/api/v1/users", adminJWT, map[string]any{"username": "ops", "password": "operator-password", "role": "operator"}); code != 201 && code != 409 {
		t.Fatalf("create operator: %d %s", code, raw)
	}
	operator := signed(t, jwt.SigningMethodHS256, secret, claims(func(m jwt.MapClaims) { m["role"], m["sub"] = "operator", "ops" }))

	// The control: a token signed with the real key passes, so each
	// refusal below is for the one thing that case changes.
	for _, tok := range []string{adminJWT, valid, operator} {
		if code, raw := c.request("GET", "/api/v1/nodes", tok, nil); code != 200 {
			t.Fatalf("control token refused: %d %s", code, raw)
		}
	}

	parts := strings.Split(operator, ".")
	promoted := base64.RawURLEncoding.EncodeToString([]byte(strings.Replace(
		string(mustDecode(t, parts[1])), `"role":"operator"`, `"role":"admin"`, 1)))
	if promoted == parts[1] {
		t.Fatal("could not rewrite the role in the operator token")
	}

	for _, tc := range []struct {
		name   string
		header string
	}{
		{"forged: other secret", "Bearer " + signed(t, jwt.SigningMethodHS256, []byte("not-the-console-secret"), claims(nil))},
		{"expired", "Bearer " + signed(t, jwt.SigningMethodHS256, secret, claims(func(m jwt.MapClaims) {
			m["iat"], m["nbf"], m["exp"] = now.Add(-2*time.Hour).Unix(), now.Add(-2*time.Hour).Unix(), now.Add(-time.Hour).Unix()
		}))},
		{"forged and expired", "Bearer " + signed(t, jwt.SigningMethodHS256, []byte("not-the-console-secret"), claims(func(m jwt.MapClaims) {
			m["exp"] = now.Add(-time.Hour).Unix()
		}))},
		{"alg none", "Bearer " + signed(t, jwt.SigningMethodNone, jwt.UnsafeAllowNoneSignatureType, claims(nil))},
		{"alg HS512 with the real key", "Bearer " + signed(t, jwt.SigningMethodHS512, secret, claims(nil))},
		{"wrong issuer", "Bearer " + signed(t, jwt.SigningMethodHS256, secret, claims(func(m jwt.MapClaims) { m["iss"] = "someone-else" }))},
		{"no expiry", "Bearer " + signed(t, jwt.SigningMethodHS256, secret, claims(func(m jwt.MapClaims) { delete(m, "exp") }))},
		{"not yet valid", "Bearer " + signed(t, jwt.SigningMethodHS256, secret, claims(func(m jwt.MapClaims) { m["nbf"] = now.Add(time.Hour).Unix() }))},
		{"no role", "Bearer " + signed(t, jwt.SigningMethodHS256, secret, claims(func(m jwt.MapClaims) { delete(m, "role") }))},
		{"no subject", "Bearer " + signed(t, jwt.SigningMethodHS256, secret, claims(func(m jwt.MapClaims) { delete(m, "sub") }))},
		{"role rewritten", "Bearer " + parts[0] + "." + promoted + "." + parts[2]},
		{"garbage", "Bearer abc.def.ghi"},
		{"empty bearer", "Bearer "},
		{"basic scheme", "Basic " + base64.StdEncoding.EncodeToString([]byte("admin:"+adminPassword))},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c := c.on(t)
			r := c.expectRefusal("jwt_invalid", `msg="request refused"`, "path=/api/v1/tokens", "code=401")
			code, header, raw := c.send("POST", "/api/v1/tokens", http.Header{"Authorization": {tc.header}, "Content-Type": {"application/json"}}, strings.NewReader(`{"ttl":"10m"}`))
			if code != 401 {
				t.Fatalf("POST /api/v1/tokens with %s: %d, want 401: %s", tc.name, code, raw)
			}
			apiErr(t, header, raw)
			r.check()
		})
	}

	// A valid token of a non-admin may read but not make enrollment tokens.
	t.Run("operator cannot create tokens", func(t *testing.T) {
		c := c.on(t)
		r := c.expectRefusal("forbidden", `msg="request forbidden"`, "user=ops", "role=operator")
		code, header, raw := c.send("POST", "/api/v1/tokens", http.Header{"Authorization": {"Bearer " + operator}, "Content-Type": {"application/json"}}, strings.NewReader(`{"ttl":"10m"}`))
		if code != 403 {
			t.Fatalf("operator POST /api/v1/tokens: %d, want 403: %s", code, raw)
		}
		apiErr(t, header, raw)
		r.check()
	})
}

func mustDecode(t *testing.T, seg string) []byte {
	t.Helper()
	b, err := base64.RawURLEncoding.DecodeString(seg)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// enrollment is what POST /api/v1/enroll returns.
type enrollment struct {
	Node       string `json:"node"`
	Credential string `json:"credential"`
	BrokerURL  string `json:"broker_url"`
}

func enrollBody(token, name string, labels map[string]string) map[string]any {
	if labels == nil {
		labels = map[string]string{"site": "e2e"}
	}
	return map[string]any{"token": token, "name": name, "arch": "amd64", "os": "linux", "version": "e2e", "labels": labels}
}

func (c *consoleEnv) enroll(jwt, name string) enrollment {
	c.t.Helper()
	var e enrollment
	c.do("POST", "/api/v1/enroll", "", enrollBody(c.token(jwt), name, nil), 201, &e)
	if e.Credential == "" || e.BrokerURL == "" {
		c.t.Fatalf("enrollment of %s without credential or broker: %+v", name, e)
	}
	return e
}

// whoami asks the console who a node credential belongs to.
func (c *consoleEnv) whoami(name, secret string) (int, []byte) {
	c.t.Helper()
	req, _ := http.NewRequest("GET", c.url+"/api/v1/agent/whoami", nil)
	req.SetBasicAuth(name, secret)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		c.t.Fatal(err)
	}
	defer resp.Body.Close()
	raw, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, raw
}

func badEnroll(t *testing.T, c *consoleEnv, jwt string) {
	var short struct {
		Token     string    `json:"token"`
		ExpiresAt time.Time `json:"expires_at"`
	}
	c.do("POST", "/api/v1/tokens", jwt, map[string]any{"ttl": "1s"}, 201, &short)

	tok := c.token(jwt)
	var first enrollment
	c.do("POST", "/api/v1/enroll", "", enrollBody(tok, "edge-first", nil), 201, &first)
	if code, raw := c.whoami("edge-first", first.Credential); code != 200 {
		t.Fatalf("fresh credential refused: %d %s", code, raw)
	}

	enrollFails := func(t *testing.T, body map[string]any, wantCode int, reason string) {
		t.Helper()
		c := c.on(t)
		r := c.expectRefusal(reason, `msg="request refused"`, "path=/api/v1/enroll", fmt.Sprintf("code=%d", wantCode))
		code, header, raw := c.send("POST", "/api/v1/enroll", jsonHeader("application/json"), bytes.NewReader(mustJSON(t, body)))
		if code != wantCode {
			t.Fatalf("enroll %v: %d, want %d: %s", body["name"], code, wantCode, raw)
		}
		apiErr(t, header, raw)
		r.check()
	}

	t.Run("token reused for another name", func(t *testing.T) {
		enrollFails(t, enrollBody(tok, "edge-second", nil), 401, "enroll_token_reused")
		if code, _ := c.on(t).request("GET", "/api/v1/nodes/edge-second", jwt, nil); code != 404 {
			t.Fatalf("edge-second exists after a refused enrollment: %d", code)
		}
	})
	t.Run("token reused for the same name", func(t *testing.T) {
		// Would re-key edge-first, locking out the real node.
		enrollFails(t, enrollBody(tok, "edge-first", nil), 401, "enroll_token_reused")
	})
	t.Run("garbage token", func(t *testing.T) {
		enrollFails(t, enrollBody("cset_not-a-token", "edge-garbage", nil), 401, "enroll_token_invalid")
	})
	t.Run("empty token", func(t *testing.T) {
		// No counter: an empty token is refused before the store is asked,
		// and is not counted (see the report on this test).
		enrollFails(t, enrollBody("", "edge-empty", nil), 401, "")
	})

	// Invalid input with a good token is refused before the token is
	// spent: the same token still enrolls a node afterwards.
	fresh := c.token(jwt)
	for _, tc := range []struct {
		name   string
		node   string
		labels map[string]string
	}{
		{"uppercase and underscore", "Edge_1", nil},
		{"slash", "a/b", nil},
		{"mqtt wildcard", "edge-+", nil},
		{"70 characters", strings.Repeat("e", 70), nil},
		{"empty name", "", nil},
		{"leading dash", "-edge", nil},
		{"reserved console user", "cloudskin-console", nil},
		{"lat not a number", "edge-lat", map[string]string{"lat": "x"}},
		{"lat out of range", "edge-lat", map[string]string{"lat": "91"}},
		{"lon out of range", "edge-lon", map[string]string{"lon": "-181"}},
		{"power nuclear", "edge-power", map[string]string{"power": "nuclear"}},
		{"label key", "edge-key", map[string]string{"Bad Key": "v"}},
		{"label value", "edge-value", map[string]string{"note": strings.Repeat("v", 300)}},
	} {
		t.Run("invalid "+tc.name, func(t *testing.T) {
			enrollFails(t, enrollBody(fresh, tc.node, tc.labels), 400, "bad_request")
		})
	}
	t.Run("invalid arch", func(t *testing.T) {
		b := enrollBody(fresh, "edge-arch", nil)
		b["arch"] = strings.Repeat("x", 100)
		enrollFails(t, b, 400, "bad_request")
	})
	t.Run("name already enrolled", func(t *testing.T) {
		enrollFails(t, enrollBody(fresh, "edge-first", nil), 409, "")
	})
	t.Run("token not spent by refusals", func(t *testing.T) {
		c.on(t).do("POST", "/api/v1/enroll", "", enrollBody(fresh, "edge-third", nil), 201, nil)
	})

	t.Run("expired token", func(t *testing.T) {
		time.Sleep(time.Until(short.ExpiresAt.Add(100 * time.Millisecond)))
		enrollFails(t, enrollBody(short.Token, "edge-late", nil), 401, "enroll_token_expired")
	})

	t.Run("first node intact", func(t *testing.T) {
		c := c.on(t)
		if code, raw := c.whoami("edge-first", first.Credential); code != 200 || !strings.Contains(string(raw), `"name":"edge-first"`) {
			t.Fatalf("edge-first's credential after the refusals: %d %s", code, raw)
		}
		for _, tc := range []struct{ name, user, secret string }{
			{"wrong credential", "edge-first", "csnc_wrong"},
			{"another node's credential", "edge-third", first.Credential},
			{"unknown node", "edge-nobody", first.Credential},
			{"invalid name", "Edge_First", first.Credential},
			{"empty credential", "edge-first", ""},
		} {
			r := c.expectRefusal("node_credential_invalid", `msg="node credential refused"`)
			code, raw := c.whoami(tc.user, tc.secret)
			if code != 401 {
				t.Fatalf("whoami with %s: %d, want 401: %s", tc.name, code, raw)
			}
			r.check()
		}
		n := c.node(jwt, "edge-first")
		if n.Labels["site"] != "e2e" || n.Arch != "amd64" {
			t.Fatalf("edge-first changed: %+v", n)
		}
	})
}

// mqttConn is one MQTT client of the test, standing in for a node or an
// attacker.
type mqttConn struct {
	paho.Client
	lost chan error
}

// dialMQTT connects once, MQTT 3.1.1 only (paho would otherwise retry a
// refused connection as 3.1, and a refusal would count twice).
func dialMQTT(t *testing.T, url, user, secret, clientID string) (*mqttConn, error) {
	t.Helper()
	m := &mqttConn{lost: make(chan error, 1)}
	opts := paho.NewClientOptions().AddBroker(url).SetClientID(clientID).
		SetUsername(user).SetPassword(secret).SetProtocolVersion(4).
		SetCleanSession(true).SetAutoReconnect(false).SetConnectRetry(false).
		SetConnectTimeout(5 * time.Second).SetKeepAlive(30 * time.Second).SetWriteTimeout(5 * time.Second)
	opts.SetConnectionLostHandler(func(_ paho.Client, err error) {
		select {
		case m.lost <- err:
		default:
		}
	})
	m.Client = paho.NewClient(opts)
	tok := m.Connect()
	if !tok.WaitTimeout(10 * time.Second) {
		return nil, fmt.Errorf("connect as %q: timed out", user)
	}
	if err := tok.Error(); err != nil {
		return nil, err
	}
	t.Cleanup(func() { m.Disconnect(0) })
	return m, nil
}

// dialNode connects as an enrolled node with its own client id, waiting
// for an external broker to load the node's fresh credential. A node has
// one session: dialling again takes over (closes) the previous connection.
func dialNode(t *testing.T, e enrollment) *mqttConn {
	t.Helper()
	var m *mqttConn
	waitFor(t, 15*time.Second, e.Node+" connected to MQTT", func() error {
		var err error
		m, err = dialMQTT(t, e.BrokerURL, e.Node, e.Credential, protocol.ClientID(e.Node))
		return err
	})
	return m
}

// holds fails unless cond stays true for d.
func holds(t *testing.T, d time.Duration, what string, cond func() error) {
	t.Helper()
	for end := time.Now().Add(d); time.Now().Before(end); time.Sleep(100 * time.Millisecond) {
		if err := cond(); err != nil {
			t.Fatalf("%s: %v", what, err)
		}
	}
}

func (m *mqttConn) publish(topic string, payload []byte, qos byte) error {
	tok := m.Publish(topic, qos, false, payload)
	if !tok.WaitTimeout(5 * time.Second) {
		return fmt.Errorf("publish %s: no acknowledgement", topic)
	}
	return tok.Error()
}

// waitLost waits for the broker to drop the connection.
func (m *mqttConn) waitLost(t *testing.T, why string) {
	t.Helper()
	select {
	case <-m.lost:
	case <-time.After(5 * time.Second):
		t.Fatalf("the broker kept the connection open after %s", why)
	}
}

func goodSample(node string, seq uint64, at time.Time) protocol.Telemetry {
	return protocol.Telemetry{
		Node: node, Seq: seq, Time: at.UTC(),
		CPU:    protocol.CPU{Percent: 12.5, Cores: 4},
		Memory: protocol.Memory{TotalBytes: 8 << 30, UsedBytes: 2 << 30, AvailableBytes: 6 << 30, Percent: 25},
		Disk:   protocol.Disk{Path: "/", TotalBytes: 100 << 30, UsedBytes: 10 << 30, FreeBytes: 90 << 30, Percent: 10},
		Energy: protocol.Energy{Source: protocol.EnergyModel, PowerW: 7.5},
	}
}

func mustJSON(t *testing.T, v any) []byte {
	t.Helper()
	b, err := json.Marshal(v)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

func hasSeq(samples []sample, seq uint64) bool {
	for _, s := range samples {
		if s.Seq == seq {
			return true
		}
	}
	return false
}

// waitStored waits until node has stored the sample with seq.
func waitStored(t *testing.T, c *consoleEnv, jwt, node string, seq uint64, since time.Time) {
	t.Helper()
	waitFor(t, 10*time.Second, fmt.Sprintf("sample %d of %s stored", seq, node), func() error {
		if !hasSeq(c.samples(jwt, node, since), seq) {
			return fmt.Errorf("not stored")
		}
		return nil
	})
}

// lastWill selects offline transitions caused by a node's (last will)
// offline status.
const lastWill = `reason="last will",status="offline"`

func badMQTT(t *testing.T, c *consoleEnv, jwt string, good *agentEnv) {
	embedded := c.mosq == nil
	topics := protocol.NewTopics("")
	// edge-a sends bad payloads on its own topics, edge-b is a victim, and
	// edge-m (mallory) reaches for what is not hers.
	a, b, mal := c.enroll(jwt, "edge-a"), c.enroll(jwt, "edge-b"), c.enroll(jwt, "edge-m")
	since := time.Now().Add(-10 * time.Minute)
	var seq uint64 = 9000
	next := func() (uint64, time.Time) {
		seq++
		// Distinct past times: each sample would be stored as a new one.
		return seq, time.Now().Add(-time.Duration(seq-9000) * time.Second)
	}
	publishGood := func(t *testing.T, m *mqttConn, node string) uint64 {
		t.Helper()
		s, at := next()
		if err := m.publish(topics.Node(node, protocol.LeafTelemetry), mustJSON(t, goodSample(node, s, at)), 1); err != nil {
			t.Fatalf("%s publishing a good sample: %v", node, err)
		}
		waitStored(t, c.on(t), jwt, node, s, since)
		return s
	}

	// Controls: edge-a and edge-b are real nodes whose good samples are
	// stored, so "not stored" below means refused.
	conA, conB := dialNode(t, a), dialNode(t, b)
	controlA := publishGood(t, conA, "edge-a")
	publishGood(t, conB, "edge-b")

	t.Run("refused connections", func(t *testing.T) {
		for _, tc := range []struct{ name, user, secret string }{
			{"unknown node", "edge-ghost", a.Credential},
			{"wrong password", "edge-a", "csnc_wrong"},
			{"another node's credential", "edge-b", a.Credential},
			{"console user with a node credential", "cloudskin-console", a.Credential},
			{"invalid username", "edge/#", a.Credential},
			{"anonymous", "", ""},
		} {
			t.Run(tc.name, func(t *testing.T) {
				c := c.on(t)
				r := c.expectRefusal("broker_auth_failed", `msg="MQTT connection refused: bad node credential"`)
				if !embedded {
					// Mosquitto refuses on its own; the console never hears
					// of it, so the proof is the refusal and Mosquitto's log.
					r = c.expectRefusalIn(c.mosq.Proc.Out, "", "not authorised")
				}
				clientID := protocol.ClientID(tc.user)
				if tc.user == "" || tc.user == "cloudskin-console" {
					clientID = "badinput-" + strings.Trim(tc.user, "/#")
				}
				if m, err := dialMQTT(t, a.BrokerURL, tc.user, tc.secret, clientID); err == nil {
					m.Disconnect(0)
					t.Fatalf("connected as %q with %s", tc.user, tc.name)
				}
				r.check()
			})
		}
		// A refused login in a node's name does not end that node's session.
		if !conA.IsConnectionOpen() || !conB.IsConnectionOpen() {
			t.Fatal("a refused connection closed a real node's session")
		}
	})

	// Mallory, with her own good credential, claims the client id of
	// edge-good or of the console, which would close their sessions. The
	// embedded broker refuses her; Mosquitto (use_username_as_clientid)
	// gives her her own id. Either way nobody else is disconnected.
	t.Run("session takeover", func(t *testing.T) {
		for _, victim := range []string{protocol.ClientID("edge-good"), "cloudskin-console"} {
			t.Run(victim, func(t *testing.T) {
				c := c.on(t)
				connects := good.metric("cloudskin_agent_mqtt_connects_total", "")
				mark := len(c.proc.Out.String())
				r := c.expectRefusal("broker_auth_failed", `msg="MQTT connection refused: client id is not the node's"`, "username=edge-m", "client_id="+victim)
				m, err := dialMQTT(t, mal.BrokerURL, mal.Node, mal.Credential, victim)
				if embedded {
					if err == nil {
						t.Fatalf("edge-m connected with client id %s", victim)
					}
					r.check()
				} else if err != nil {
					t.Fatalf("Mosquitto refused edge-m with client id %s: %v", victim, err)
				} else {
					defer m.Disconnect(0)
				}
				holds(t, time.Second, "sessions of edge-good and the console", func() error {
					if got := good.metric("cloudskin_agent_mqtt_connected", ""); got != 1 {
						return fmt.Errorf("edge-good's agent is disconnected")
					}
					if got := good.metric("cloudskin_agent_mqtt_connects_total", ""); got != connects {
						return fmt.Errorf("edge-good's agent reconnected (%v connects, had %v)", got, connects)
					}
					if strings.Contains(c.proc.Out.String()[mark:], "lost MQTT broker connection") {
						return fmt.Errorf("the console lost its broker connection")
					}
					return nil
				})
			})
		}
	})

	// Publishing outside one's own subtree. The embedded broker counts it
	// and disconnects a QoS 1 offender; Mosquitto drops the message
	// silently, so there the proof is that it had no effect.
	t.Run("denied topics", func(t *testing.T) {
		for _, tc := range []struct {
			name    string
			topic   string
			payload func(seq uint64, at time.Time) []byte
			// gone checks the message had no effect.
			gone func(t *testing.T, seq uint64)
		}{
			{"telemetry as another node", topics.Node("edge-b", protocol.LeafTelemetry),
				func(seq uint64, at time.Time) []byte { return mustJSON(t, goodSample("edge-b", seq, at)) },
				func(t *testing.T, seq uint64) {
					if hasSeq(c.on(t).samples(jwt, "edge-b", since), seq) {
						t.Fatal("edge-m's forged sample was stored as edge-b's")
					}
				}},
			{"status offline for another node", topics.Node("edge-good", protocol.LeafStatus),
				func(_ uint64, at time.Time) []byte {
					return mustJSON(t, protocol.Status{Node: "edge-good", State: protocol.StateOffline, Time: at})
				},
				func(t *testing.T, _ uint64) {
					if n := c.on(t).node(jwt, "edge-good"); n.Status != "online" {
						t.Fatalf("edge-m's forged status put edge-good %s (%s)", n.Status, n.StatusReason)
					}
				}},
			{"desired of another node", topics.Node("edge-b", protocol.LeafDesired),
				func(seq uint64, _ time.Time) []byte { return []byte(fmt.Sprintf(`{"forged":%d}`, seq)) }, nil},
			{"outside the prefix", "elsewhere/edge-m/telemetry",
				func(seq uint64, at time.Time) []byte { return mustJSON(t, goodSample("edge-m", seq, at)) }, nil},
			{"its own desired state", topics.Node("edge-m", protocol.LeafDesired),
				func(seq uint64, _ time.Time) []byte { return []byte(fmt.Sprintf(`{"forged":%d}`, seq)) }, nil},
			{"a leaf nodes do not write", topics.Node("edge-m", "firmware"),
				func(seq uint64, at time.Time) []byte { return mustJSON(t, goodSample("edge-m", seq, at)) },
				func(t *testing.T, seq uint64) {
					if hasSeq(c.on(t).samples(jwt, "edge-m", since), seq) {
						t.Fatal("a sample on an unknown leaf was stored")
					}
				}},
		} {
			t.Run(tc.name, func(t *testing.T) {
				c := c.on(t)
				r := c.expectRefusal("topic_denied", `msg="MQTT topic refused"`, "node=edge-m", "topic="+tc.topic, "write=true")
				if !embedded {
					r = c.expectRefusal("")
				}
				offline := c.metric("cloudskin_console_node_transitions_total", lastWill)
				m := dialNode(t, mal)
				s, at := next()
				err := m.publish(tc.topic, tc.payload(s, at), 1)
				if embedded {
					m.waitLost(t, "a denied QoS 1 publish")
				} else if err != nil {
					t.Fatalf("Mosquitto: publish to %s: %v", tc.topic, err)
				}
				r.check()
				// A later good sample from edge-b is stored, so the forged
				// one had every chance to arrive before it.
				publishGood(t, conB, "edge-b")
				if tc.gone != nil {
					tc.gone(t, s)
				}
				// A forged offline status would be short-lived (edge-good's
				// next heartbeat), but not uncounted.
				if got := c.metric("cloudskin_console_node_transitions_total", lastWill); got != offline {
					t.Fatalf("a node went offline by last will during the attack (%v → %v)", offline, got)
				}
			})
		}
	})

	t.Run("denied subscriptions", func(t *testing.T) {
		c := c.on(t)
		filters := []string{
			topics.Node("edge-b", protocol.LeafDesired),
			topics.AllNodes(protocol.LeafTelemetry),
			topics.Prefix + "/nodes/edge-good/#",
			"#",
		}
		spy := dialNode(t, mal)
		got := make(chan string, 100)
		r := c.expectRefusal("topic_denied", `msg="MQTT topic refused"`, "node=edge-m", "topic=#", "write=false")
		r.times = len(filters)
		for _, f := range filters {
			tok := spy.Subscribe(f, 1, func(_ paho.Client, m paho.Message) { got <- m.Topic() })
			if !tok.WaitTimeout(5 * time.Second) {
				t.Fatalf("subscribe %s: no answer", f)
			}
			if embedded {
				if code := tok.(*paho.SubscribeToken).Result()[f]; code != 0x80 {
					t.Fatalf("subscribe %s granted (code %#x), want refused (0x80)", f, code)
				}
			}
		}
		if embedded {
			r.check()
		}
		// While the spy listens, edge-good keeps publishing telemetry. A node
		// may not write even its own desired state (only the console does):
		// edge-b's attempt never reaches edge-b's own subscription.
		desired := topics.Node("edge-b", protocol.LeafDesired)
		own := make(chan struct{}, 1)
		if tok := conB.Subscribe(desired, 1, func(paho.Client, paho.Message) {
			select {
			case own <- struct{}{}:
			default:
			}
		}); !tok.WaitTimeout(5*time.Second) || tok.Error() != nil {
			t.Fatalf("edge-b subscribing to its own desired state: %v", tok.Error())
		}
		n0 := len(c.samples(jwt, "edge-good", since))
		if !embedded {
			// The embedded broker disconnects a QoS 1 offender (tested
			// under wrong topics); Mosquitto drops the message silently.
			if err := conB.publish(desired, []byte(`{"from":"edge-b"}`), 1); err != nil {
				t.Fatal(err)
			}
		}
		waitFor(t, 10*time.Second, "edge-good publishing while the spy listens", func() error {
			if n := len(c.samples(jwt, "edge-good", since)); n < n0+3 {
				return fmt.Errorf("%d new samples", n-n0)
			}
			return nil
		})
		select {
		case topic := <-got:
			t.Fatalf("edge-m received a message on %s", topic)
		default:
		}
		select {
		case <-own:
			t.Fatal("edge-b wrote its own desired state")
		default:
		}
	})

	t.Run("bad payloads on its own topics", func(t *testing.T) {
		tel := topics.Node("edge-a", protocol.LeafTelemetry)
		for _, tc := range []struct {
			name    string
			topic   string
			reason  string
			line    string
			payload func(seq uint64, at time.Time) []byte
		}{
			{"malformed JSON", tel, "telemetry_malformed", "malformed telemetry dropped",
				func(seq uint64, _ time.Time) []byte {
					return []byte(fmt.Sprintf(`{"node":"edge-a","seq":%d,"time":`, seq))
				}},
			{"wrong JSON type", tel, "telemetry_malformed", "malformed telemetry dropped",
				func(seq uint64, _ time.Time) []byte {
					return []byte(fmt.Sprintf(`{"node":"edge-a","seq":%d,"cpu":"hot"}`, seq))
				}},
			{"names another node", tel, "telemetry_invalid", "invalid telemetry dropped",
				func(seq uint64, at time.Time) []byte { return mustJSON(t, goodSample("edge-b", seq, at)) }},
			{"cpu 500 percent", tel, "telemetry_invalid", "invalid telemetry dropped",
				func(seq uint64, at time.Time) []byte {
					s := goodSample("edge-a", seq, at)
					s.CPU.Percent = 500
					return mustJSON(t, s)
				}},
			{"an hour in the future", tel, "telemetry_invalid", "invalid telemetry dropped",
				func(seq uint64, _ time.Time) []byte {
					return mustJSON(t, goodSample("edge-a", seq, time.Now().Add(time.Hour)))
				}},
			{"unknown energy source", tel, "telemetry_invalid", "invalid telemetry dropped",
				func(seq uint64, at time.Time) []byte {
					s := goodSample("edge-a", seq, at)
					s.Energy.Source = "perpetual-motion"
					return mustJSON(t, s)
				}},
			{"100 KiB", tel, "telemetry_oversized", "oversized telemetry dropped",
				func(seq uint64, at time.Time) []byte {
					// A valid sample padded with JSON whitespace: only the
					// size limit stands between it and the database.
					b := mustJSON(t, goodSample("edge-a", seq, at))
					if len(b)+100<<10 <= protocol.MaxTelemetryBytes {
						t.Fatal("padding does not exceed the telemetry limit")
					}
					return append(b, bytes.Repeat([]byte(" "), 100<<10)...)
				}},
			{"status for another node", topics.Node("edge-a", protocol.LeafStatus), "status_invalid", "invalid status dropped",
				func(_ uint64, at time.Time) []byte {
					return mustJSON(t, protocol.Status{Node: "edge-good", State: protocol.StateOffline, Time: at})
				}},
			{"malformed status", topics.Node("edge-a", protocol.LeafStatus), "status_invalid", "malformed status dropped",
				func(uint64, time.Time) []byte { return []byte(`{"state":`) }},
		} {
			t.Run(tc.name, func(t *testing.T) {
				c := c.on(t)
				r := c.expectRefusal(tc.reason, `msg="`+tc.line+`"`, "node=edge-a")
				s, at := next()
				if err := conA.publish(tc.topic, tc.payload(s, at), 1); err != nil {
					t.Fatalf("publish: %v", err)
				}
				r.check()
				if !conA.IsConnectionOpen() {
					t.Fatal("a refused payload cost edge-a its connection")
				}
				for _, node := range []string{"edge-a", "edge-b"} {
					if hasSeq(c.samples(jwt, node, since), s) {
						t.Fatalf("refused sample %d stored for %s", s, node)
					}
				}
			})
		}
		// After all that, edge-a's good samples still go through, its
		// earlier one is still there, and edge-good was not put offline.
		c := c.on(t)
		publishGood(t, conA, "edge-a")
		if !hasSeq(c.samples(jwt, "edge-a", since), controlA) {
			t.Fatal("edge-a's first sample was lost")
		}
		if n := c.node(jwt, "edge-good"); n.Status != "online" {
			t.Fatalf("edge-good is %s (%s)", n.Status, n.StatusReason)
		}
	})

	t.Run("packet over the broker limit", func(t *testing.T) {
		c := c.on(t)
		// The broker drops the client before the console sees a byte; the
		// embedded one counts it, Mosquitto logs it.
		r := c.expectRefusal("packet_oversized", `msg="MQTT client disconnected: packet larger than the broker accepts"`, "username=edge-m")
		if !embedded {
			r = c.expectRefusalIn(c.mosq.Proc.Out, "", "edge-m disconnected due to oversize packet")
		}
		m := dialNode(t, mal)
		s, at := next()
		b := append(mustJSON(t, goodSample("edge-m", s, at)), bytes.Repeat([]byte(" "), 300<<10)...)
		_ = m.publish(topics.Node("edge-m", protocol.LeafTelemetry), b, 1)
		m.waitLost(t, "a 300 KiB packet")
		r.check()
		if hasSeq(c.samples(jwt, "edge-m", since), s) {
			t.Fatal("the 300 KiB sample was stored")
		}
		if code, raw := c.request("GET", "/healthz", "", nil); code != 200 {
			t.Fatalf("healthz after the huge packet: %d %s", code, raw)
		}
		// The broker still serves everyone else.
		if !conA.IsConnectionOpen() || !conB.IsConnectionOpen() {
			t.Fatal("other clients lost their connections")
		}
		publishGood(t, conB, "edge-b")
	})
}
