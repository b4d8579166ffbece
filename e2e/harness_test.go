// Package e2e runs the console and the agent as real processes against real
// databases (SQLite, PostgreSQL) and brokers (embedded, Mosquitto), and
// exercises them as an operator, a sensor or an attacker would.
package e2e

import (
	"bytes"
	"context"
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
	"syscall"
	"testing"
	"time"

	"github.com/cloudskin/cloudskin/shared/testenv"
)

const adminPassword = "e2e-admin-password"

var binDir string

func TestMain(m *testing.M) {
	dir, err := os.MkdirTemp("", "cloudskin-e2e-bin")
	if err != nil {
		panic(err)
	}
	binDir = dir
	for name, pkg := range map[string]string{"cloudskin-console": "../console", "cloudskin-agent": "../edge-agent"} {
		cmd := exec.Command("go", "build", "-o", filepath.Join(dir, name), pkg)
		cmd.Stdout, cmd.Stderr = os.Stderr, os.Stderr
		if err := cmd.Run(); err != nil {
			fmt.Fprintln(os.Stderr, "build", name, err)
			os.Exit(1)
		}
	}
	code := m.Run()
	os.RemoveAll(dir)
	os.Exit(code)
}

func freePort(t *testing.T) int {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port
}

// proc is a child process with its output kept for failure reports.
type proc struct {
	name string
	cmd  *exec.Cmd
	out  *syncBuffer
	done chan struct{}
}

type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

func start(t *testing.T, name string, env []string, bin string, args ...string) *proc {
	t.Helper()
	cmd := exec.Command(bin, args...)
	cmd.Env = append(os.Environ(), env...)
	out := &syncBuffer{}
	cmd.Stdout, cmd.Stderr = out, out
	if err := cmd.Start(); err != nil {
		t.Fatalf("start %s: %v", name, err)
	}
	p := &proc{name: name, cmd: cmd, out: out, done: make(chan struct{})}
	go func() { cmd.Wait(); close(p.done) }()
	t.Cleanup(func() {
		p.kill(syscall.SIGKILL)
		if t.Failed() {
			t.Logf("---- %s output ----\n%s", name, tail(out.String(), 6000))
		}
	})
	return p
}

func tail(s string, n int) string {
	if len(s) > n {
		return "…" + s[len(s)-n:]
	}
	return s
}

func (p *proc) kill(sig syscall.Signal) {
	select {
	case <-p.done:
		return
	default:
	}
	_ = p.cmd.Process.Signal(sig)
	select {
	case <-p.done:
	case <-time.After(15 * time.Second):
		_ = p.cmd.Process.Kill()
		<-p.done
	}
}

func (p *proc) exited() bool {
	select {
	case <-p.done:
		return true
	default:
		return false
	}
}

// backend is one database + broker combination.
type backend struct {
	name      string
	postgres  bool
	mosquitto bool
}

var backends = []backend{
	{name: "sqlite+embedded"},
	{name: "postgres+embedded", postgres: true},
	{name: "sqlite+mosquitto", mosquitto: true},
	{name: "postgres+mosquitto", postgres: true, mosquitto: true},
}

// consoleEnv is what a console process needs, kept across restarts.
type consoleEnv struct {
	t        *testing.T
	be       backend
	data     string
	dbURL    string
	httpPort int
	mqttPort int
	mosq     *mosquitto
	proc     *proc
	url      string
}

func newConsole(t *testing.T, be backend) *consoleEnv {
	t.Helper()
	c := &consoleEnv{t: t, be: be, data: t.TempDir(), httpPort: freePort(t), mqttPort: freePort(t)}
	c.url = fmt.Sprintf("http://127.0.0.1:%d", c.httpPort)
	if be.postgres {
		c.dbURL = testenv.PostgresDB(t)
	}
	if be.mosquitto {
		c.mosq = newMosquitto(t, c.mqttPort)
	}
	c.start()
	return c
}

func (c *consoleEnv) args() []string {
	a := []string{"serve", "--data", c.data, "--http", fmt.Sprintf("127.0.0.1:%d", c.httpPort),
		"--default-heartbeat", "500ms", "--log-level", "debug"}
	if c.dbURL != "" {
		a = append(a, "--db", c.dbURL)
	}
	if c.mosq != nil {
		a = append(a, "--broker", c.mosq.url(), "--mosquitto-dir", c.mosq.dir, "--mosquitto-pidfile", c.mosq.pidFile)
	} else {
		a = append(a, "--mqtt", fmt.Sprintf("127.0.0.1:%d", c.mqttPort))
	}
	return a
}

func (c *consoleEnv) start() {
	t := c.t
	t.Helper()
	c.proc = start(t, "console", []string{"CLOUDSKIN_ADMIN_PASSWORD=" + adminPassword}, filepath.Join(binDir, "cloudskin-console"), c.args()...)
	if c.mosq != nil {
		c.mosq.ensureRunning(t)
	}
	waitFor(t, 30*time.Second, "console ready", func() error {
		if c.proc.exited() {
			t.Fatalf("console exited:\n%s", c.proc.out.String())
		}
		resp, err := http.Get(c.url + "/readyz")
		if err != nil {
			return err
		}
		resp.Body.Close()
		if resp.StatusCode != 200 {
			return fmt.Errorf("readyz %d", resp.StatusCode)
		}
		return nil
	})
}

func (c *consoleEnv) brokerURL() string {
	if c.mosq != nil {
		return c.mosq.url()
	}
	return fmt.Sprintf("tcp://127.0.0.1:%d", c.mqttPort)
}

func (c *consoleEnv) stop() { c.proc.kill(syscall.SIGTERM) }

// token makes an enrollment token through the API.
func (c *consoleEnv) token(jwt string) string {
	c.t.Helper()
	var out struct {
		Token string `json:"token"`
	}
	c.do("POST", "/api/v1/tokens", jwt, map[string]any{"ttl": "10m"}, 201, &out)
	return out.Token
}

func (c *consoleEnv) login() string {
	c.t.Helper()
	var out struct {
		Token string `json:"token"`
	}
	c.do("POST", "/api/v1/auth/login", "", map[string]string{"username": "admin", "password": adminPassword}, 200, &out)
	return out.Token
}

// do sends a JSON request and checks the status; out may be nil.
func (c *consoleEnv) do(method, path, jwt string, body any, wantStatus int, out any) []byte {
	c.t.Helper()
	code, raw := c.request(method, path, jwt, body)
	if code != wantStatus {
		c.t.Fatalf("%s %s: status %d, want %d: %s", method, path, code, wantStatus, raw)
	}
	if out != nil {
		if err := json.Unmarshal(raw, out); err != nil {
			c.t.Fatalf("%s %s: decode %s: %v", method, path, raw, err)
		}
	}
	return raw
}

func (c *consoleEnv) request(method, path, jwt string, body any) (int, []byte) {
	c.t.Helper()
	var r io.Reader
	switch b := body.(type) {
	case nil:
	case []byte:
		r = bytes.NewReader(b)
	default:
		raw, _ := json.Marshal(b)
		r = bytes.NewReader(raw)
	}
	req, _ := http.NewRequest(method, c.url+path, r)
	if body != nil {
		req.Header.Set("Content-Type", "application/json")
	}
	if jwt != "" {
		req.Header.Set("Authorization", "Bearer "+jwt)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		c.t.Fatalf("%s %s: %v", method, path, err)
	}
	defer resp.Body.Close()
	raw, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, raw
}

// metric reads one sample of a counter from /metrics (0 if absent).
func (c *consoleEnv) metric(name, labels string) float64 {
	c.t.Helper()
	return scrape(c.t, c.url+"/metrics", name, labels)
}

func scrape(t *testing.T, url, name, labels string) float64 {
	t.Helper()
	resp, err := http.Get(url)
	if err != nil {
		t.Fatalf("scrape %s: %v", url, err)
	}
	defer resp.Body.Close()
	raw, _ := io.ReadAll(resp.Body)
	prefix := name
	if labels != "" {
		prefix += "{" + labels + "}"
	}
	for _, line := range strings.Split(string(raw), "\n") {
		if v, ok := strings.CutPrefix(line, prefix+" "); ok {
			var f float64
			fmt.Sscan(v, &f)
			return f
		}
	}
	return 0
}

type agentEnv struct {
	t        *testing.T
	name     string
	data     string
	httpPort int
	args     []string
	proc     *proc
}

// newAgent starts an agent; brokerURL overrides the enrolled broker ("" keeps it).
func newAgent(t *testing.T, c *consoleEnv, name, token, brokerURL string, extra ...string) *agentEnv {
	t.Helper()
	a := &agentEnv{t: t, name: name, data: t.TempDir(), httpPort: freePort(t)}
	a.args = []string{"run", "--console", c.url, "--name", name, "--data", a.data,
		"--http", fmt.Sprintf("127.0.0.1:%d", a.httpPort), "--telemetry-interval", "250ms", "--heartbeat", "500ms",
		"--label", "site=e2e", "--power-class", "green", "--lat", "41.56", "--lon", "1.69", "--log-level", "debug"}
	if token != "" {
		a.args = append(a.args, "--token", token)
	}
	if brokerURL != "" {
		a.args = append(a.args, "--broker", brokerURL)
	}
	a.args = append(a.args, extra...)
	a.start()
	return a
}

func (a *agentEnv) start() {
	a.proc = start(a.t, "agent "+a.name, nil, filepath.Join(binDir, "cloudskin-agent"), a.args...)
}

func (a *agentEnv) metric(name, labels string) float64 {
	a.t.Helper()
	return scrape(a.t, fmt.Sprintf("http://127.0.0.1:%d/metrics", a.httpPort), name, labels)
}

// waitFor polls cond until it returns nil or the timeout passes.
func waitFor(t *testing.T, timeout time.Duration, what string, cond func() error) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	var err error
	for time.Now().Before(deadline) {
		if err = cond(); err == nil {
			return
		}
		time.Sleep(100 * time.Millisecond)
	}
	t.Fatalf("timed out after %s waiting for %s: %v", timeout, what, err)
}

func ctxTimeout(t *testing.T, d time.Duration) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), d)
	t.Cleanup(cancel)
	return ctx
}
