package e2e

import (
	"bufio"
	"bytes"
	"crypto/ed25519"
	crand "crypto/rand"
	"crypto/sha256"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	paho "github.com/eclipse/paho.mqtt.golang"

	"github.com/cloudskin/cloudskin/shared/ota"
	"github.com/cloudskin/cloudskin/shared/protocol"
)

// otaBundle is a bundle as the API shows it.
type otaBundle struct {
	ID      string     `json:"id"`
	Version string     `json:"version"`
	Arch    string     `json:"arch"`
	Size    int64      `json:"size_bytes"`
	Files   []ota.File `json:"files"`
	URL     string     `json:"url"`
}

// otaRollout is a rollout as the API shows it.
type otaRollout struct {
	ID      string         `json:"id"`
	Bundle  string         `json:"bundle"`
	Version string         `json:"version"`
	State   string         `json:"state"`
	Reason  string         `json:"reason"`
	Wave    int            `json:"wave"`
	Waves   int            `json:"waves"`
	Counts  map[string]int `json:"counts"`
	Nodes   []struct {
		Node     string  `json:"node"`
		Wave     int     `json:"wave"`
		State    string  `json:"state"`
		Reason   string  `json:"reason"`
		Phase    string  `json:"phase"`
		Running  string  `json:"running"`
		Slot     string  `json:"slot"`
		Error    string  `json:"error"`
		Progress float64 `json:"progress"`
	} `json:"nodes"`
	Skipped []struct {
		Node   string `json:"node"`
		Reason string `json:"reason"`
	} `json:"skipped"`
}

func (r otaRollout) node(name string) string {
	for _, n := range r.Nodes {
		if n.Node == name {
			return n.State
		}
	}
	return ""
}

// releaseKeys is a release key pair from ota.CreateKeys and the public
// key's file, what the console's --release-key takes.
type releaseKeys struct {
	pubPath string
	priv    ed25519.PrivateKey
}

func newReleaseKeys(t *testing.T) releaseKeys {
	t.Helper()
	dir := filepath.Join(t.TempDir(), "keys")
	if _, err := ota.CreateKeys(dir); err != nil {
		t.Fatal(err)
	}
	priv, err := ota.LoadPrivateKey(filepath.Join(dir, ota.PrivateKeyFile))
	if err != nil {
		t.Fatal(err)
	}
	return releaseKeys{filepath.Join(dir, ota.PublicKeyFile), priv}
}

// bundle builds a signed bundle whose agent binary is a script saying
// version, padded to about size bytes.
func (k releaseKeys) bundle(t *testing.T, version, arch string, size int) []byte {
	t.Helper()
	bin := filepath.Join(t.TempDir(), ota.Product)
	script := "#!/bin/sh\necho cloudskin-agent " + version + "\n"
	if pad := size - len(script); pad > 0 {
		// Incompressible padding: the bundle is gzip, and its size is
		// what the range requests below cut.
		noise := make([]byte, pad*3/4)
		crand.Read(noise)
		script += "# " + base64.StdEncoding.EncodeToString(noise) + "\n"
	}
	if err := os.WriteFile(bin, []byte(script), 0o755); err != nil {
		t.Fatal(err)
	}
	var buf bytes.Buffer
	if _, err := ota.Build(&buf, version, arch, map[string]string{ota.Product: bin}, k.priv); err != nil {
		t.Fatal(err)
	}
	return buf.Bytes()
}

func sha256hex(b []byte) string {
	s := sha256.Sum256(b)
	return hex.EncodeToString(s[:])
}

func stripSignature(t *testing.T, good []byte) []byte {
	t.Helper()
	out, err := ota.Rewrite(good, func(name string, body []byte) ([]byte, bool) { return body, name != ota.SignatureName })
	if err != nil {
		t.Fatal(err)
	}
	return out
}

// zeros is an endless reader of zero bytes.
type zeros struct{}

func (zeros) Read(p []byte) (int, error) {
	clear(p)
	return len(p), nil
}

// TestOTA: bundles are verified against the release key on upload and
// served with ranges to nodes; rollouts refuse bad input, hand the update
// to nodes wave by wave through their desired state, follow what the
// nodes report (over MQTT, as an agent would) and halt on failure; a
// console without a release key takes no bundle. On every database and
// broker.
func TestOTA(t *testing.T) {
	for _, be := range backends {
		t.Run(be.name, func(t *testing.T) { testOTA(t, be) })
	}
}

func testOTA(t *testing.T, be backend) {
	keys := newReleaseKeys(t)
	c := newConsole(t, be, "--release-key", keys.pubPath)
	jwt := c.login()
	nodes := map[string]enrollment{}
	for _, n := range []string{"edge-1", "edge-2", "edge-3"} {
		nodes[n] = c.enroll(jwt, n)
	}
	consumer := otaConsumer(t, c, jwt)
	good := keys.bundle(t, "1.2.0", "amd64", 64<<10)
	id := sha256hex(good)
	octet := func(jwt string) http.Header {
		return http.Header{"Authorization": {"Bearer " + jwt}, "Content-Type": {"application/octet-stream"}}
	}
	basic := func(node, secret string) http.Header {
		return http.Header{"Authorization": {"Basic " + base64.StdEncoding.EncodeToString([]byte(node+":"+secret))},
			"Content-Type": {"application/octet-stream"}}
	}
	bearer := http.Header{"Authorization": {"Bearer " + jwt}, "Content-Type": {"application/json"}}

	t.Run("upload", func(t *testing.T) {
		c := c.on(t)
		code, header, raw := c.send("POST", "/api/v1/bundles", octet(jwt), bytes.NewReader(good))
		var b otaBundle
		mustUnmarshal(t, raw, &b)
		if code != 201 || b.ID != id || b.Version != "1.2.0" || b.Arch != "amd64" || b.Size != int64(len(good)) ||
			len(b.Files) != 1 || b.Files[0].Name != ota.Product || b.URL != "/api/v1/bundles/"+id+"/blob" || header.Get("Location") != "/api/v1/bundles/"+id {
			t.Fatalf("upload: %d %s", code, raw)
		}
		if code, _, raw := c.send("POST", "/api/v1/bundles", octet(jwt), bytes.NewReader(good)); code != 200 || !bytes.Contains(raw, []byte(id)) {
			t.Fatalf("same bundle again: %d %s", code, raw)
		}
		tampered, err := ota.Rewrite(good, func(name string, body []byte) ([]byte, bool) {
			if name == ota.Product {
				body = bytes.Replace(body, []byte("echo cloudskin-agent"), []byte("Echo cloudskin-agent"), 1)
			}
			return body, true
		})
		if err != nil {
			t.Fatal(err)
		}
		cases := []struct {
			name   string
			header http.Header
			body   []byte
			code   int
			reason string
		}{
			{"unsigned", octet(jwt), stripSignature(t, good), 400, "unsigned"},
			{"tampered", octet(jwt), tampered, 400, "tampered: file cloudskin-agent does not match its sha256"},
			{"another key", octet(jwt), newReleaseKeys(t).bundle(t, "1.2.1", "amd64", 10), 400, "does not match the release key"},
			{"not a bundle", octet(jwt), []byte("\x7fELF not a tar"), 400, "malformed"},
			{"the release again, other bytes", octet(jwt), keys.bundle(t, "1.2.0", "amd64", 100), 409, "release 1.2.0 for amd64 is bundle " + id},
			{"json", bearer, good, 415, "application/octet-stream"},
			{"no token", http.Header{"Content-Type": {"application/octet-stream"}}, good, 401, "bearer"},
			{"consumer", octet(consumer), good, 403, "role"},
			{"node credential", basic("edge-1", nodes["edge-1"].Credential), good, 401, "bearer"},
		}
		for _, tc := range cases {
			code, header, raw := c.send("POST", "/api/v1/bundles", tc.header, bytes.NewReader(tc.body))
			if code != tc.code || !strings.Contains(apiErr(t, header, raw), tc.reason) {
				t.Errorf("%s: %d %s, want %d with %q", tc.name, code, raw, tc.code, tc.reason)
			}
		}
		// Oversized: refused by its Content-Length before a byte is read,
		// and, sent chunked, after 256 MiB.
		conn, err := net.Dial("tcp", strings.TrimPrefix(c.url, "http://"))
		if err != nil {
			t.Fatal(err)
		}
		defer conn.Close()
		fmt.Fprintf(conn, "POST /api/v1/bundles HTTP/1.1\r\nHost: console\r\nAuthorization: Bearer %s\r\nContent-Type: application/octet-stream\r\nContent-Length: %d\r\n\r\n", jwt, 256<<20+1)
		resp, err := http.ReadResponse(bufio.NewReader(conn), nil)
		if err != nil || resp.StatusCode != 413 {
			t.Fatalf("Content-Length over 256 MiB: %v %v", resp, err)
		}
		resp.Body.Close()
		req, _ := http.NewRequest("POST", c.url+"/api/v1/bundles", io.LimitReader(zeros{}, 256<<20+4096))
		req.Header = octet(jwt)
		req.ContentLength = -1
		if resp, err := http.DefaultClient.Do(req); err == nil {
			raw, _ := io.ReadAll(resp.Body)
			resp.Body.Close()
			if resp.StatusCode != 413 {
				t.Fatalf("chunked over 256 MiB: %d %s", resp.StatusCode, raw)
			}
		} else {
			// The console answered and closed while the client still wrote.
			t.Logf("chunked upload over 256 MiB: %v", err)
		}
		var list struct{ Bundles []otaBundle }
		c.do("GET", "/api/v1/bundles", jwt, nil, 200, &list)
		if len(list.Bundles) != 1 || list.Bundles[0].ID != id {
			t.Fatalf("bundles after the refusals: %+v", list)
		}
		c.do("GET", "/api/v1/bundles/"+id, jwt, nil, 200, &b)
		if b.Version != "1.2.0" || len(b.Files) != 1 || b.Files[0].SHA256 == "" {
			t.Fatalf("bundle %+v", b)
		}
	})

	t.Run("read access", func(t *testing.T) {
		c := c.on(t)
		for _, tc := range []struct {
			name, method, path string
			header             http.Header
			code               int
		}{
			{"list without token", "GET", "/api/v1/bundles", nil, 401},
			{"list as consumer", "GET", "/api/v1/bundles", http.Header{"Authorization": {"Bearer " + consumer}}, 403},
			{"blob as consumer", "GET", "/api/v1/bundles/" + id + "/blob", http.Header{"Authorization": {"Bearer " + consumer}}, 403},
			{"blob, wrong node secret", "GET", "/api/v1/bundles/" + id + "/blob", basic("edge-1", "nope"), 401},
			{"blob without credential", "GET", "/api/v1/bundles/" + id + "/blob", nil, 401},
			{"rollouts without token", "GET", "/api/v1/rollouts", nil, 401},
			{"rollouts as consumer", "GET", "/api/v1/rollouts", http.Header{"Authorization": {"Bearer " + consumer}}, 403},
			{"rollout as a node", "POST", "/api/v1/rollouts", basic("edge-1", nodes["edge-1"].Credential), 401},
			{"delete as a node", "DELETE", "/api/v1/bundles/" + id, basic("edge-1", nodes["edge-1"].Credential), 401},
			{"unknown bundle", "GET", "/api/v1/bundles/" + strings.Repeat("0", 64), bearer, 404},
			{"bad bundle id", "GET", "/api/v1/bundles/xyz/blob", bearer, 400},
		} {
			code, header, raw := c.send(tc.method, tc.path, tc.header, nil)
			if code != tc.code {
				t.Errorf("%s: %d %s, want %d", tc.name, code, raw, tc.code)
			} else {
				apiErr(t, header, raw)
			}
		}
		// A node downloads the blob with its credential, in ranges (a
		// resumed download).
		asNode := basic("edge-2", nodes["edge-2"].Credential)
		code, header, raw := c.send("GET", "/api/v1/bundles/"+id+"/blob", asNode, nil)
		if code != 200 || !bytes.Equal(raw, good) || header.Get("ETag") != `"`+id+`"` || header.Get("Accept-Ranges") != "bytes" {
			t.Fatalf("blob as node: %d, %d bytes, headers %v", code, len(raw), header)
		}
		asNode.Set("Range", "bytes=1000-1999")
		code, header, raw = c.send("GET", "/api/v1/bundles/"+id+"/blob", asNode, nil)
		if code != 206 || !bytes.Equal(raw, good[1000:2000]) || header.Get("Content-Range") != fmt.Sprintf("bytes 1000-1999/%d", len(good)) {
			t.Fatalf("range: %d %q, %d bytes", code, header.Get("Content-Range"), len(raw))
		}
		asNode.Set("Range", fmt.Sprintf("bytes=%d-", len(good)-10))
		if code, _, raw = c.send("GET", "/api/v1/bundles/"+id+"/blob", asNode, nil); code != 206 || !bytes.Equal(raw, good[len(good)-10:]) {
			t.Fatalf("open range: %d %d bytes", code, len(raw))
		}
		asNode.Set("Range", fmt.Sprintf("bytes=%d-", len(good)+10))
		if code, _, _ = c.send("GET", "/api/v1/bundles/"+id+"/blob", asNode, nil); code != 416 {
			t.Fatalf("range past the end: %d", code)
		}
		asNode.Del("Range")
		asNode.Set("If-None-Match", `"`+id+`"`)
		if code, _, _ = c.send("GET", "/api/v1/bundles/"+id+"/blob", asNode, nil); code != 304 {
			t.Fatalf("If-None-Match: %d", code)
		}
	})

	t.Run("rollout bad input", func(t *testing.T) {
		c := c.on(t)
		body := func(s string) string { return strings.ReplaceAll(s, "ID", id) }
		for _, tc := range []struct {
			name, body, reason string
			code               int
		}{
			{"unknown bundle", `{"bundle":"` + strings.Repeat("0", 64) + `"}`, "not found", 404},
			{"bad bundle id", `{"bundle":"../../etc/passwd"}`, "bundle id", 400},
			{"percent 0", body(`{"bundle":"ID","percent":0}`), "percent 0 must be 1-100", 400},
			{"percent 101", body(`{"bundle":"ID","percent":101}`), "percent 101", 400},
			{"both thresholds", body(`{"bundle":"ID","max_failures":1,"max_failure_pct":5}`), "not both", 400},
			{"health_seconds 1", body(`{"bundle":"ID","health_seconds":1}`), "health_seconds", 400},
			{"unknown field", body(`{"bundle":"ID","force":true}`), "unknown field", 400},
			{"not JSON", `{"bundle":`, "malformed JSON", 400},
			{"unknown node", body(`{"bundle":"ID","selector":{"nodes":["edge-9"]}}`), "edge-9", 404},
			{"no matching nodes", body(`{"bundle":"ID","selector":{"labels":{"site":"mars"}}}`), "no node matches the selector", 422},
			{"every match skipped (offline)", body(`{"bundle":"ID"}`), "all skipped", 422},
		} {
			code, header, raw := c.send("POST", "/api/v1/rollouts", bearer, strings.NewReader(tc.body))
			if code != tc.code || !strings.Contains(apiErr(t, header, raw), tc.reason) {
				t.Errorf("%s: %d %s, want %d with %q", tc.name, code, raw, tc.code, tc.reason)
			}
			if tc.code == 422 && tc.name != "no matching nodes" && !bytes.Contains(raw, []byte(`"reason":"offline since`)) {
				t.Errorf("%s: the detail does not say why each node was skipped: %s", tc.name, raw)
			}
		}
		for _, p := range []string{"/api/v1/rollouts/nope", "/api/v1/rollouts/nope/cancel"} {
			method := map[bool]string{true: "POST", false: "GET"}[strings.HasSuffix(p, "cancel")]
			if code, _, raw := c.send(method, p, bearer, nil); code != 404 {
				t.Errorf("%s %s: %d %s", method, p, code, raw)
			}
		}
		if code, _, raw := c.send("GET", "/api/v1/rollouts?state=paused", bearer, nil); code != 400 {
			t.Errorf("list by unknown state: %d %s", code, raw)
		}
	})

	t.Run("rollout", func(t *testing.T) {
		c := c.on(t)
		// edge-1 and edge-2 come online as nodes would, running 1.1.0;
		// edge-3 stays offline.
		fakes := map[string]*fakeNode{}
		for _, n := range []string{"edge-1", "edge-2"} {
			fakes[n] = newFakeNode(t, nodes[n])
			fakes[n].status("1.1.0")
			waitFor(t, 10*time.Second, n+" online", func() error {
				if nv := c.node(jwt, n); nv.Status != "online" {
					return fmt.Errorf("%s is %s", n, nv.Status)
				}
				return nil
			})
		}
		var r otaRollout
		c.do("POST", "/api/v1/rollouts", jwt, map[string]any{"bundle": id, "selector": map[string]any{"labels": map[string]string{"site": "e2e"}},
			"wave_size": 1, "health_seconds": 30}, 201, &r)
		if r.State != "running" || r.Waves != 2 || r.node("edge-1") != "updating" || r.node("edge-2") != "pending" ||
			len(r.Skipped) != 1 || r.Skipped[0].Node != "edge-3" || !strings.HasPrefix(r.Skipped[0].Reason, "offline") {
			t.Fatalf("started %+v", r)
		}
		// edge-1's desired state carries the update; it downloads the
		// bundle as a node (resuming once), reports its phases, commits.
		u := fakes["edge-1"].waitUpdate(t, r.ID)
		if u.Bundle != id || u.SHA256 != id || u.Size != int64(len(good)) || u.Version != "1.2.0" || u.HealthSeconds != 30 || u.URL != "/api/v1/bundles/"+id+"/blob" {
			t.Fatalf("update %+v", u)
		}
		if fakes["edge-2"].update() != nil {
			t.Fatal("edge-2 got the update before wave 2")
		}
		asNode := basic("edge-1", nodes["edge-1"].Credential)
		asNode.Set("Range", "bytes=0-4095")
		_, _, head := c.send("GET", u.URL, asNode, nil)
		asNode.Set("Range", "bytes=4096-")
		_, _, tail := c.send("GET", u.URL, asNode, nil)
		if sha256hex(append(head, tail...)) != u.SHA256 {
			t.Fatal("the downloaded bundle does not match the update's sha256")
		}
		fakes["edge-1"].report(u, protocol.UpdateDownloading, 0.5, "1.1.0", "")
		fakes["edge-1"].report(u, protocol.UpdateChecking, 1, "1.2.0", "")
		waitRollout(t, c, jwt, r.ID, "edge-1 checking", func(r otaRollout) bool {
			return r.Nodes[0].Phase == "checking" && r.Nodes[0].Running == "1.2.0" && r.Nodes[0].Slot == "b"
		})
		fakes["edge-1"].report(u, protocol.UpdateCommitted, 1, "1.2.0", "")
		fakes["edge-1"].status("1.2.0") // the new release says its version
		r = waitRollout(t, c, jwt, r.ID, "wave 2", func(r otaRollout) bool { return r.node("edge-1") == "committed" && r.Wave == 2 })
		if u := fakes["edge-2"].waitUpdate(t, r.ID); u.Bundle != id {
			t.Fatalf("edge-2 update %+v", u)
		}
		fakes["edge-1"].waitUpdate(t, "") // committed: its update is withdrawn
		// edge-2 rolls back: with max_failures 0 the rollout halts.
		fakes["edge-2"].report(u, protocol.UpdateRolledBack, 1, "1.1.0", "health check: no console connection within 30s")
		r = waitRollout(t, c, jwt, r.ID, "halted", func(r otaRollout) bool { return r.State == "halted" })
		if !strings.Contains(r.Reason, "edge-2 (rolled-back: health check: no console connection within 30s)") || r.Counts["committed"] != 1 || r.Counts["failed"] != 1 {
			t.Fatalf("halted %+v", r)
		}
		fakes["edge-2"].waitUpdate(t, "")
		var list struct{ Rollouts []otaRollout }
		c.do("GET", "/api/v1/rollouts", jwt, nil, 200, &list)
		if len(list.Rollouts) != 1 || len(list.Rollouts[0].Nodes) != 2 || list.Rollouts[0].Nodes[1].Error == "" {
			t.Fatalf("list %+v", list)
		}
		// A second rollout of the same release skips edge-1, which runs it
		// now; cancelling it withdraws edge-2's update.
		c.do("POST", "/api/v1/rollouts", jwt, map[string]any{"bundle": id}, 201, &r)
		if len(r.Nodes) != 1 || r.Nodes[0].Node != "edge-2" || r.Nodes[0].State != "updating" {
			t.Fatalf("second rollout %+v", r)
		}
		for _, s := range r.Skipped {
			if s.Node == "edge-1" && s.Reason != "runs 1.2.0, not older than 1.2.0" {
				t.Fatalf("edge-1 skipped for %q", s.Reason)
			}
		}
		fakes["edge-2"].waitUpdate(t, r.ID)
		if code, _, raw := c.send("DELETE", "/api/v1/bundles/"+id, bearer, nil); code != 409 {
			t.Fatalf("delete a bundle in use: %d %s", code, raw)
		}
		c.do("POST", "/api/v1/rollouts/"+r.ID+"/cancel", jwt, nil, 200, &r)
		if r.State != "cancelled" || r.node("edge-2") != "cancelled" {
			t.Fatalf("cancelled %+v", r)
		}
		fakes["edge-2"].waitUpdate(t, "")
		if code, _, raw := c.send("POST", "/api/v1/rollouts/"+r.ID+"/cancel", bearer, nil); code != 409 {
			t.Fatalf("cancel twice: %d %s", code, raw)
		}
	})

	// Without a release key the console refuses uploads; one backend is
	// enough to show it.
	if be == backends[0] {
		t.Run("no release key", func(t *testing.T) {
			plain := newConsole(t, be)
			code, header, raw := plain.send("POST", "/api/v1/bundles", octet(plain.login()), bytes.NewReader(good))
			if code != 409 || !strings.Contains(apiErr(t, header, raw), "--release-key") {
				t.Fatalf("upload without a release key: %d %s", code, raw)
			}
		})
	}
	if c.proc.Exited() {
		t.Fatalf("console exited:\n%s", c.proc.Out.String())
	}
}

// otaConsumer registers, approves and logs in a dataspace consumer.
func otaConsumer(t *testing.T, c *consoleEnv, admin string) string {
	t.Helper()
	c.do("POST", "/api/v1/auth/register", "", map[string]any{"username": "buyer", "password": "correct horse battery", "role": "consumer",
		"profile": map[string]any{"nationality": "ES", "sector": "agriculture", "org_type": "private"}}, 201, nil)
	c.do("POST", "/api/v1/users/buyer/approve", admin, nil, 200, nil)
	var out struct{ Token string }
	c.do("POST", "/api/v1/auth/login", "", map[string]string{"username": "buyer", "password": "correct horse battery"}, 200, &out)
	return out.Token
}

func waitRollout(t *testing.T, c *consoleEnv, jwt, id, what string, cond func(otaRollout) bool) otaRollout {
	t.Helper()
	var r otaRollout
	waitFor(t, 15*time.Second, "rollout "+id+": "+what, func() error {
		c.do("GET", "/api/v1/rollouts/"+id, jwt, nil, 200, &r)
		if !cond(r) {
			b, _ := json.Marshal(r)
			return fmt.Errorf("rollout %s", b)
		}
		return nil
	})
	return r
}

// fakeNode speaks MQTT as an enrolled node: it publishes status and
// actual state and follows its retained desired state. It stands in for
// the agent's side of OTA.
type fakeNode struct {
	t      *testing.T
	e      enrollment
	conn   *mqttConn
	topics protocol.Topics

	mu      sync.Mutex
	desired protocol.Desired
}

func newFakeNode(t *testing.T, e enrollment) *fakeNode {
	t.Helper()
	f := &fakeNode{t: t, e: e, topics: protocol.NewTopics("")}
	f.conn = dialNode(t, e)
	tok := f.conn.Subscribe(f.topics.Node(e.Node, protocol.LeafDesired), 1, func(_ paho.Client, m paho.Message) {
		var d protocol.Desired
		if json.Unmarshal(m.Payload(), &d) == nil && d.Validate(e.Node) == nil {
			f.mu.Lock()
			if d.Generation >= f.desired.Generation {
				f.desired = d
			}
			f.mu.Unlock()
		}
	})
	if !tok.WaitTimeout(5*time.Second) || tok.Error() != nil {
		t.Fatalf("%s: subscribe to its desired state: %v", e.Node, tok.Error())
	}
	return f
}

func (f *fakeNode) status(version string) {
	f.t.Helper()
	b, _ := json.Marshal(protocol.Status{Node: f.e.Node, State: protocol.StateOnline, Time: time.Now().UTC(), Version: version,
		Arch: "amd64", OS: "linux", HeartbeatSeconds: 60, Labels: map[string]string{"site": "e2e"}})
	if err := f.conn.publish(f.topics.Node(f.e.Node, protocol.LeafStatus), b, 1); err != nil {
		f.t.Fatal(err)
	}
}

func (f *fakeNode) update() *protocol.UpdateSpec {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.desired.Update
}

// waitUpdate waits for the desired state to carry rollout's update, or
// none when rollout is "".
func (f *fakeNode) waitUpdate(t *testing.T, rollout string) protocol.UpdateSpec {
	t.Helper()
	var u protocol.UpdateSpec
	waitFor(t, 10*time.Second, f.e.Node+" desired update "+rollout, func() error {
		got := f.update()
		switch {
		case rollout == "" && got == nil:
			return nil
		case rollout != "" && got != nil && got.Rollout == rollout:
			u = *got
			return nil
		}
		return fmt.Errorf("desired update %+v", got)
	})
	return u
}

func (f *fakeNode) report(u protocol.UpdateSpec, phase string, progress float64, running, errText string) {
	f.t.Helper()
	slot := "a"
	if running == u.Version {
		slot = "b"
	}
	b, _ := json.Marshal(protocol.Actual{Node: f.e.Node, Time: time.Now().UTC(), Cells: []protocol.CellStatus{},
		Update: &protocol.UpdateStatus{Rollout: u.Rollout, Bundle: u.Bundle, Version: u.Version, Running: running, Slot: slot,
			Phase: phase, Error: errText, Progress: progress, Time: time.Now().UTC()}})
	if err := f.conn.publish(f.topics.Node(f.e.Node, protocol.LeafActual), b, 1); err != nil {
		f.t.Fatal(err)
	}
}

// TestOTAKeysCreate: `cloudskin-console keys create` writes a release key
// pair (the private half readable only by its owner), prints the public
// key, and refuses to overwrite a pair.
func TestOTAKeysCreate(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "keys")
	bin := filepath.Join(binDir, "cloudskin-console")
	out, err := exec.Command(bin, "keys", "create", "--dir", dir).Output()
	if err != nil {
		t.Fatalf("keys create: %v", err)
	}
	pub, err := ota.ParsePublicKey(string(out))
	if err != nil {
		t.Fatalf("stdout %q: %v", out, err)
	}
	if fromFile, err := ota.LoadPublicKey(filepath.Join(dir, ota.PublicKeyFile)); err != nil || !fromFile.Equal(pub) {
		t.Fatalf("release.pub: %v", err)
	}
	st, err := os.Stat(filepath.Join(dir, ota.PrivateKeyFile))
	if err != nil || st.Mode().Perm() != 0o600 {
		t.Fatalf("release.key: %v %v", st, err)
	}
	priv, err := ota.LoadPrivateKey(filepath.Join(dir, ota.PrivateKeyFile))
	if err != nil || !priv.Public().(ed25519.PublicKey).Equal(pub) {
		t.Fatalf("the private key does not match the public one: %v", err)
	}
	before, _ := os.ReadFile(filepath.Join(dir, ota.PrivateKeyFile))
	cmd := exec.Command(bin, "keys", "create", "--dir", dir)
	msg, err := cmd.CombinedOutput()
	if err == nil || !strings.Contains(string(msg), "exists already") {
		t.Fatalf("second keys create: %v %s", err, msg)
	}
	if after, _ := os.ReadFile(filepath.Join(dir, ota.PrivateKeyFile)); !bytes.Equal(before, after) {
		t.Fatal("the private key was overwritten")
	}
}
