// Package e2e runs the console and the agent as real processes against real
// databases (SQLite, PostgreSQL) and brokers (embedded, Mosquitto), and
// exercises them as an operator, a sensor or an attacker would.
package e2e

import (
	"bytes"
	"context"
	"debug/elf"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
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
	t        testing.TB
	be       backend
	data     string
	dbURL    string
	httpPort int
	mqttPort int
	mosq     *testenv.Mosquitto
	proc     *testenv.Process
	url      string
	extra    []string // more serve flags
}

func newConsole(t testing.TB, be backend, extra ...string) *consoleEnv {
	t.Helper()
	c := &consoleEnv{t: t, be: be, data: t.TempDir(), httpPort: testenv.FreePort(t), mqttPort: testenv.FreePort(t), extra: extra}
	c.url = fmt.Sprintf("http://127.0.0.1:%d", c.httpPort)
	if be.postgres {
		c.dbURL = testenv.PostgresDB(t)
	}
	if be.mosquitto {
		// Client ids are usernames, as in deploy/mosquitto: no session takeover.
		c.mosq = testenv.NewMosquitto(t, t.TempDir(), "use_username_as_clientid true")
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
		a = append(a, "--broker", c.mosq.URL(), "--mosquitto-dir", c.mosq.Dir, "--mosquitto-pidfile", c.mosq.PidFile)
	} else {
		a = append(a, "--mqtt", fmt.Sprintf("127.0.0.1:%d", c.mqttPort))
	}
	return append(a, c.extra...)
}

func (c *consoleEnv) start() {
	t := c.t
	t.Helper()
	c.proc = testenv.Start(t, "console", []string{"CLOUDSKIN_ADMIN_PASSWORD=" + adminPassword}, filepath.Join(binDir, "cloudskin-console"), c.args()...)
	if c.mosq != nil {
		c.mosq.Start(t)
	}
	waitFor(t, 30*time.Second, "console ready", func() error {
		if c.proc.Exited() {
			t.Fatalf("console exited:\n%s", c.proc.Out.String())
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
		return c.mosq.URL()
	}
	return fmt.Sprintf("tcp://127.0.0.1:%d", c.mqttPort)
}

func (c *consoleEnv) stop() { c.proc.Kill(syscall.SIGTERM) }

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

func scrape(t testing.TB, url, name, labels string) float64 {
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
	t        testing.TB
	name     string
	data     string
	httpPort int
	args     []string
	proc     *testenv.Process
	arm64    bool     // bin/linux-arm64/cloudskin-agent, under qemu-user off arm64 (newArm64Agent)
	env      []string // extra environment (KEY=value)
}

// newAgent starts an agent; brokerURL overrides the enrolled broker ("" keeps it).
func newAgent(t testing.TB, c *consoleEnv, name, token, brokerURL string, extra ...string) *agentEnv {
	t.Helper()
	a := agentFor(t, c, name, token, brokerURL, extra...)
	a.start()
	return a
}

// newArm64Agent is newAgent for an arm64 node: the agent make agent-arm64
// built, under qemu-user unless this machine is arm64. It is as slow as
// emulation (wasmtime compiles cells several times slower): wait generously.
func newArm64Agent(t testing.TB, c *consoleEnv, name, token, brokerURL string, extra ...string) *agentEnv {
	t.Helper()
	a := agentFor(t, c, name, token, brokerURL, extra...)
	a.arm64 = true
	a.start()
	return a
}

// agentFor is an agent's data directory, ports and flags, not yet started.
func agentFor(t testing.TB, c *consoleEnv, name, token, brokerURL string, extra ...string) *agentEnv {
	t.Helper()
	a := &agentEnv{t: t, name: name, data: t.TempDir(), httpPort: testenv.FreePort(t)}
	a.args = []string{"run", "--console", c.url, "--name", name, "--data", a.data,
		"--http", fmt.Sprintf("127.0.0.1:%d", a.httpPort), "--telemetry-interval", "250ms", "--heartbeat", "500ms",
		"--label", "site=e2e", "--power-class", "green", "--lat", "41.56", "--lon", "1.69", "--log-level", "debug",
		"--sensors", fmt.Sprintf("127.0.0.1:%d", testenv.FreePort(t))}
	if token != "" {
		a.args = append(a.args, "--token", token)
	}
	if brokerURL != "" {
		a.args = append(a.args, "--broker", brokerURL)
	}
	a.args = append(a.args, extra...)
	return a
}

func (a *agentEnv) start() {
	if a.arm64 {
		bin, args := arm64Command(a.t, a.args)
		a.proc = testenv.Start(a.t, "agent "+a.name+" (arm64)", a.env, bin, args...)
		return
	}
	a.proc = testenv.Start(a.t, "agent "+a.name, a.env, filepath.Join(binDir, "cloudskin-agent"), a.args...)
}

// The arm64 agent comes from make agent-arm64, not from TestMain: it takes a
// cross C compiler. Off arm64 it runs under qemu-user with Debian's arm64
// libc as the loader's root, invoked explicitly: Debian's qemu-user-static
// registers binfmt_misc only under systemd or binfmt-support.
var (
	arm64Build    sync.Once
	arm64BuildOut []byte
	arm64BuildErr error
)

const (
	arm64Agent   = "../bin/linux-arm64/cloudskin-agent"
	arm64Sysroot = "/usr/aarch64-linux-gnu"
)

// arm64Command is the command line that runs the arm64 agent with args here.
// Anything missing fails the test with what to install: CI installs it all,
// and a skip would hide that.
func arm64Command(t testing.TB, args []string) (string, []string) {
	t.Helper()
	bin, err := filepath.Abs(arm64Agent)
	if err != nil {
		t.Fatal(err)
	}
	// The amd64 agent is built fresh by TestMain; so is the arm64 one,
	// once, so that the two never run different code (a no-op build takes
	// well under a second).
	arm64Build.Do(func() {
		cmd := exec.Command("make", "--no-print-directory", "agent-arm64")
		cmd.Dir = ".."
		arm64BuildOut, arm64BuildErr = cmd.CombinedOutput()
	})
	if arm64BuildErr != nil {
		t.Fatalf("make agent-arm64: %v\n%s\n(it needs apt-get install gcc-aarch64-linux-gnu libc6-dev-arm64-cross; .ci/run does both)", arm64BuildErr, arm64BuildOut)
	}
	f, err := elf.Open(bin)
	if err != nil {
		t.Fatalf("no arm64 agent: %v: run make agent-arm64 (it needs apt-get install gcc-aarch64-linux-gnu libc6-dev-arm64-cross; .ci/run does both)", err)
	}
	machine := f.Machine
	f.Close()
	if machine != elf.EM_AARCH64 {
		t.Fatalf("%s is built for %s, not arm64: run make agent-arm64", bin, machine)
	}
	if runtime.GOARCH == "arm64" {
		return bin, args
	}
	qemu, err := exec.LookPath("qemu-aarch64-static")
	if err != nil {
		t.Fatalf("qemu-aarch64-static not found: apt-get install qemu-user-static (.ci/run does) to run the arm64 agent on %s", runtime.GOARCH)
	}
	if _, err := os.Stat(filepath.Join(arm64Sysroot, "lib", "ld-linux-aarch64.so.1")); err != nil {
		t.Fatalf("no arm64 C library for qemu -L %s: apt-get install libc6-dev-arm64-cross (.ci/run does)", arm64Sysroot)
	}
	return qemu, append([]string{"-L", arm64Sysroot, bin}, args...)
}

func (a *agentEnv) metric(name, labels string) float64 {
	a.t.Helper()
	return scrape(a.t, fmt.Sprintf("http://127.0.0.1:%d/metrics", a.httpPort), name, labels)
}

// waitFor polls cond until it returns nil or the timeout passes.
func waitFor(t testing.TB, timeout time.Duration, what string, cond func() error) {
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
