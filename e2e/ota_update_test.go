package e2e

import (
	"bytes"
	"fmt"
	"io/fs"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/cloudskin/cloudskin/shared/ota"
	"github.com/cloudskin/cloudskin/shared/testenv"
)

// buildRelease builds the agent at version with the release key built in;
// broken builds one that cannot reach the console (main.testBreakHealth),
// so that it fails its health check honestly.
func buildRelease(t *testing.T, dir, version, pubKey string, broken bool) string {
	t.Helper()
	out := filepath.Join(dir, version, "cloudskin-agent")
	ld := fmt.Sprintf("-X main.version=%s -X 'main.releaseKey=%s'", version, pubKey)
	if broken {
		ld += " -X main.testBreakHealth=1"
	}
	cmd := exec.Command("go", "build", "-ldflags", ld, "-o", out, "../edge-agent")
	if b, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("build %s: %v\n%s", version, err, b)
	}
	return out
}

// makeBundle signs a bundle of the agent binary at bin.
func makeBundle(t *testing.T, bin, version string, priv []byte) []byte {
	t.Helper()
	var buf bytes.Buffer
	if _, err := ota.Build(&buf, version, runtime.GOARCH, map[string]string{ota.Product: bin}, priv); err != nil {
		t.Fatal(err)
	}
	return buf.Bytes()
}

type rolloutView struct {
	ID     string `json:"id"`
	State  string `json:"state"`
	Reason string `json:"reason"`
	Nodes  []struct {
		Node    string `json:"node"`
		State   string `json:"state"`
		Phase   string `json:"phase"`
		Running string `json:"running"`
		Slot    string `json:"slot"`
		Error   string `json:"error"`
	} `json:"nodes"`
}

// TestOTAUpdate: a real agent at 1.0.0 with a running cell is updated over
// the air to 1.1.0 (committed, cell still running); a bundle tampered with
// at rest on the console is refused by the node; a broken 1.2.0 fails its
// health check and the node rolls back to 1.1.0 by itself, also when it is
// killed -9 in the middle of that check; the rollouts halt and say why.
func TestOTAUpdate(t *testing.T) {
	work := t.TempDir()
	if _, err := ota.CreateKeys(filepath.Join(work, "keys")); err != nil {
		t.Fatal(err)
	}
	pubText, err := os.ReadFile(filepath.Join(work, "keys", ota.PublicKeyFile))
	if err != nil {
		t.Fatal(err)
	}
	pub := strings.TrimSpace(string(pubText))
	privKey, err := ota.LoadPrivateKey(filepath.Join(work, "keys", ota.PrivateKeyFile))
	if err != nil {
		t.Fatal(err)
	}
	n0 := buildRelease(t, work, "1.0.0", pub, false)
	n1 := buildRelease(t, work, "1.1.0", pub, false)
	n2 := buildRelease(t, work, "1.2.0", pub, true)

	c := newConsole(t, backends[0], "--release-key", filepath.Join(work, "keys", ota.PublicKeyFile))
	jwt := c.login()
	octet := http.Header{"Authorization": {"Bearer " + jwt}, "Content-Type": {"application/octet-stream"}}
	upload := func(b []byte, want int) string {
		t.Helper()
		code, _, raw := c.send("POST", "/api/v1/bundles", octet, bytes.NewReader(b))
		if code != want {
			t.Fatalf("upload: %d %s, want %d", code, raw, want)
		}
		var v struct{ ID string }
		if want == 201 {
			mustUnmarshal(t, raw, &v)
		}
		return v.ID
	}
	b1 := makeBundle(t, n1, "1.1.0", privKey)
	b2 := makeBundle(t, n2, "1.2.0", privKey)
	id1 := upload(b1, 201)
	id2 := upload(b2, 201)
	tampered := append([]byte(nil), b1...)
	tampered[len(tampered)-2000] ^= 0xff
	upload(tampered, 400)

	// The node runs the factory release, 1.0.0, with one cell.
	a := agentFor(t, c, "edge-1", c.token(jwt), "")
	a.proc = testenv.Start(t, "agent edge-1", nil, n0, a.args...)
	waitNodeVersion(t, c, jwt, "edge-1", "1.0.0")
	mod := uploadModule(t, c, jwt, "minimal", watModule(t, "../cells/minimal.wat"))
	c.do("POST", "/api/v1/cells", jwt, map[string]any{"id": "keep", "node": "edge-1", "module": mod, "inputs": []any{}}, 201, nil)
	waitCellState(t, c, jwt, "keep", "running")

	rollout := func(bundle string, health int) string {
		t.Helper()
		var r rolloutView
		c.do("POST", "/api/v1/rollouts", jwt, map[string]any{"bundle": bundle, "selector": map[string]any{"nodes": []string{"edge-1"}},
			"health_seconds": health, "max_failures": 0}, 201, &r)
		return r.ID
	}
	waitRollout := func(id, state string) rolloutView {
		t.Helper()
		var r rolloutView
		waitFor(t, 3*time.Minute, "rollout "+id+" "+state, func() error {
			c.do("GET", "/api/v1/rollouts/"+id, jwt, nil, 200, &r)
			if r.State != state {
				return fmt.Errorf("rollout %s (%s), nodes %+v", r.State, r.Reason, r.Nodes)
			}
			return nil
		})
		return r
	}

	// N → N+1 succeeds and the cell keeps running.
	r := waitRollout(rollout(id1, 30), "completed")
	if r.Nodes[0].Phase != "committed" || r.Nodes[0].Running != "1.1.0" {
		t.Fatalf("after 1.1.0: %+v", r.Nodes[0])
	}
	waitNodeVersion(t, c, jwt, "edge-1", "1.1.0")
	waitCellState(t, c, jwt, "keep", "running")

	// A bundle changed at rest on the console is refused by the node.
	blob := findBlob(t, c.data, b2)
	orig, _ := os.ReadFile(blob)
	bad := append([]byte(nil), orig...)
	bad[len(bad)/2] ^= 0xff
	if err := os.WriteFile(blob, bad, 0o644); err != nil {
		t.Fatal(err)
	}
	r = waitRollout(rollout(id2, 15), "halted")
	if r.Nodes[0].Phase != "refused" || r.Nodes[0].Running != "1.1.0" {
		t.Fatalf("tampered at rest: %+v", r.Nodes[0])
	}
	if err := os.WriteFile(blob, orig, 0o644); err != nil {
		t.Fatal(err)
	}

	// A broken N+2 fails its health check; the node is killed -9 while it
	// checks, restarted from the factory binary (as systemd would), and
	// still rolls back to 1.1.0 by itself.
	id := rollout(id2, 12)
	waitFor(t, 2*time.Minute, "1.2.0 under its health check", func() error {
		var r rolloutView
		c.do("GET", "/api/v1/rollouts/"+id, jwt, nil, 200, &r)
		if len(r.Nodes) == 0 || (r.Nodes[0].Phase != "restarting" && r.Nodes[0].Phase != "checking") {
			return fmt.Errorf("node %+v", r.Nodes)
		}
		return nil
	})
	time.Sleep(2 * time.Second) // the broken release is running by now
	a.proc.Kill(syscall.SIGKILL)
	waitFor(t, 10*time.Second, "agent killed", func() error {
		if !a.proc.Exited() {
			return fmt.Errorf("still running")
		}
		return nil
	})
	a.proc = testenv.Start(t, "agent edge-1 after kill -9", nil, n0, a.args...)
	r = waitRollout(id, "halted")
	if r.Nodes[0].Phase != "rolled-back" || r.Nodes[0].Running != "1.1.0" || r.Nodes[0].Error == "" {
		t.Fatalf("broken 1.2.0: %+v", r.Nodes[0])
	}
	waitNodeVersion(t, c, jwt, "edge-1", "1.1.0")
	waitCellState(t, c, jwt, "keep", "running")
	var evs struct {
		Events []struct{ Kind, Message string } `json:"events"`
	}
	c.do("GET", "/api/v1/nodes/edge-1/events?limit=100", jwt, nil, 200, &evs)
	kinds := map[string]bool{}
	for _, e := range evs.Events {
		kinds[e.Kind] = true
	}
	for _, k := range []string{"ota.committed", "ota.refused", "ota.rolled_back"} {
		if !kinds[k] {
			t.Errorf("no %s event among %+v", k, evs.Events)
		}
	}
}

func waitNodeVersion(t *testing.T, c *consoleEnv, jwt, node, version string) {
	t.Helper()
	waitFor(t, 2*time.Minute, node+" runs "+version, func() error {
		var n struct {
			Status  string `json:"status"`
			Version string `json:"version"`
		}
		code, raw := c.request("GET", "/api/v1/nodes/"+node, jwt, nil)
		if code != 200 {
			return fmt.Errorf("%d %s", code, raw)
		}
		mustUnmarshal(t, raw, &n)
		if n.Status != "online" || n.Version != version {
			return fmt.Errorf("%s %s", n.Status, n.Version)
		}
		return nil
	})
}

func waitCellState(t *testing.T, c *consoleEnv, jwt, cell, state string) {
	t.Helper()
	waitFor(t, 2*time.Minute, cell+" "+state, func() error {
		var v struct {
			Status *struct {
				State string `json:"state"`
			} `json:"status"`
		}
		c.do("GET", "/api/v1/cells/"+cell, jwt, nil, 200, &v)
		if v.Status == nil || v.Status.State != state {
			return fmt.Errorf("%+v", v.Status)
		}
		return nil
	})
}

// findBlob finds the console's stored copy of a bundle in its data dir.
func findBlob(t *testing.T, dir string, want []byte) string {
	t.Helper()
	var found string
	filepath.WalkDir(dir, func(p string, d fs.DirEntry, err error) error {
		if err != nil || d.IsDir() || found != "" {
			return nil
		}
		if st, err := d.Info(); err == nil && st.Size() == int64(len(want)) {
			if b, err := os.ReadFile(p); err == nil && bytes.Equal(b, want) {
				found = p
			}
		}
		return nil
	})
	if found == "" {
		t.Fatal("the console's copy of the bundle was not found")
	}
	return found
}
