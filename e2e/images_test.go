package e2e

import (
	"bufio"
	"bytes"
	"crypto/ed25519"
	"debug/elf"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	paho "github.com/eclipse/paho.mqtt.golang"

	"github.com/cloudskin/cloudskin/shared/ota"
	"github.com/cloudskin/cloudskin/shared/testenv"
)

// The images these tests check are built by `make images` itself, once per
// test binary, into their own directory (never bin/images, which is the
// developer's), signed with the development key that run makes there.
const (
	imagesVersion    = "0.0.1-e2e"
	imagesDebVersion = "0.0.1~e2e" // what firmware-images makes of it for dpkg
	imagesDir        = "../bin/e2e-images"
)

var (
	imagesOnce sync.Once
	imagesOut  []byte
	imagesErr  error
)

// imageSet is what one `make images` run left in its directory.
type imageSet struct {
	dir     string
	pub     ed25519.PublicKey
	pubText string
}

func (s imageSet) deb(arch string) string {
	return filepath.Join(s.dir, fmt.Sprintf("cloudskin-agent_%s_%s.deb", imagesDebVersion, arch))
}

func (s imageSet) bundle(arch string) string {
	return filepath.Join(s.dir, fmt.Sprintf("cloudskin-agent_%s_%s.ota.tar.gz", imagesVersion, arch))
}

// builtImages runs `make images` the first time a test needs it. After
// make agent-arm64 and make build (as in .ci/run) the Go build cache holds
// both agents' packages, so this costs two links and two packages.
func builtImages(t testing.TB) imageSet {
	t.Helper()
	dir, err := filepath.Abs(imagesDir)
	if err != nil {
		t.Fatal(err)
	}
	imagesOnce.Do(func() {
		if imagesErr = os.RemoveAll(dir); imagesErr != nil {
			return
		}
		start := time.Now()
		cmd := exec.Command("make", "--no-print-directory", "images", "VERSION="+imagesVersion, "IMAGES_DIR="+dir)
		cmd.Dir = ".."
		// Never sign test images with a real release key from the environment.
		cmd.Env = append(withoutEnvVar(os.Environ(), "RELEASE_SIGNING_KEY"), "RELEASE_SIGNING_KEY=")
		imagesOut, imagesErr = cmd.CombinedOutput()
		imagesOut = append(imagesOut, fmt.Sprintf("(make images took %s)\n", time.Since(start).Round(time.Second))...)
	})
	if imagesErr != nil {
		t.Fatalf("make images: %v\n%s\n(it needs apt-get install gcc-aarch64-linux-gnu libc6-dev-arm64-cross; .ci/run does both)", imagesErr, imagesOut)
	}
	raw, err := os.ReadFile(filepath.Join(dir, ota.PublicKeyFile))
	if err != nil {
		t.Fatalf("make images left no %s: %v\n%s", ota.PublicKeyFile, err, imagesOut)
	}
	pub, err := ota.ParsePublicKey(string(raw))
	if err != nil {
		t.Fatal(err)
	}
	return imageSet{dir: dir, pub: pub, pubText: strings.TrimSpace(string(raw))}
}

func withoutEnvVar(env []string, name string) []string {
	out := env[:0:0]
	for _, kv := range env {
		if !strings.HasPrefix(kv, name+"=") {
			out = append(out, kv)
		}
	}
	return out
}

// TestImagesArm64Deb checks the arm64 image as an operator meets it: the
// .deb's files, control fields and conffile, its maintainer scripts and the
// unit's sandbox; then a first boot of the agent taken out of that .deb,
// under qemu-user: an enrollment token and the node's settings dropped on
// the image's boot partition, moved into place by the package's first-boot
// step, enrollment from the token file with the packaged configuration, and
// a cell deployed, running and handling a reading. The arm64 OTA bundle of
// the same run verifies with the release key and carries the same agent.
func TestImagesArm64Deb(t *testing.T) {
	imgs := builtImages(t)
	t.Logf("make images:\n%s", imagesOut)
	deb := imgs.deb("arm64")
	st, err := os.Stat(deb)
	if err != nil {
		t.Fatalf("no arm64 .deb: %v", err)
	}
	if st.Size() > 30<<20 {
		t.Errorf("arm64 .deb is %.1f MiB, over the 30 MiB target", float64(st.Size())/(1<<20))
	}

	// Contents: path → mode and owner, as dpkg will install them.
	listing := runCmd(t, "dpkg-deb", "-c", deb)
	entries := map[string]string{}
	for _, line := range strings.Split(strings.TrimSpace(listing), "\n") {
		f := strings.Fields(line)
		if len(f) < 6 {
			t.Fatalf("dpkg-deb -c line %q", line)
		}
		entries[strings.TrimPrefix(f[5], ".")] = f[0] + " " + f[1]
	}
	for path, want := range map[string]string{
		"/usr/bin/cloudskin-agent":                    "-rwxr-xr-x root/root",
		"/lib/systemd/system/cloudskin-agent.service": "-rw-r--r-- root/root",
		"/etc/cloudskin/agent.yaml":                   "-rw-r--r-- root/root",
		"/usr/lib/cloudskin/firstboot":                "-rwxr-xr-x root/root",
	} {
		if got := entries[path]; got != want {
			t.Errorf("%s in the .deb: %q, want %q\n%s", path, got, want, listing)
		}
	}

	// Control: the fields apt and dpkg act on.
	for field, want := range map[string]string{
		"Package": "cloudskin-agent", "Architecture": "arm64", "Version": imagesDebVersion,
	} {
		if got := strings.TrimSpace(runCmd(t, "dpkg-deb", "-f", deb, field)); got != want {
			t.Errorf("control %s: %q, want %q", field, got, want)
		}
	}
	if dep := runCmd(t, "dpkg-deb", "-f", deb, "Depends"); !strings.Contains(dep, "libc6 (>= 2.") {
		t.Errorf("Depends %q: no versioned libc6 (the agent links glibc through cgo)", dep)
	}
	if conf := strings.TrimSpace(runCmd(t, "dpkg-deb", "-I", deb, "conffiles")); conf != "/etc/cloudskin/agent.yaml" {
		t.Errorf("conffiles %q, want /etc/cloudskin/agent.yaml (edits must survive upgrades)", conf)
	}
	control := t.TempDir()
	runCmd(t, "dpkg-deb", "-e", deb, control)
	for _, script := range []string{"postinst", "prerm", "postrm"} {
		runCmd(t, "sh", "-n", filepath.Join(control, script))
	}

	// The files themselves.
	root := t.TempDir()
	runCmd(t, "dpkg-deb", "-x", deb, root)
	agent := filepath.Join(root, "usr", "bin", "cloudskin-agent")
	f, err := elf.Open(agent)
	if err != nil {
		t.Fatal(err)
	}
	machine := f.Machine
	f.Close()
	if machine != elf.EM_AARCH64 {
		t.Fatalf("the arm64 .deb holds a %s binary", machine)
	}
	bin, err := os.ReadFile(agent)
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Contains(bin, []byte(imgs.pubText)) {
		t.Error("the packaged agent does not embed the release public key (-X main.releaseKey)")
	}
	qemu, qargs := qemuArm64(t, agent, "version")
	if out, err := exec.Command(qemu, qargs...).CombinedOutput(); err != nil || strings.TrimSpace(string(out)) != imagesVersion {
		t.Fatalf("cloudskin-agent version under qemu: %q (%v), want %s", out, err, imagesVersion)
	}
	checkUnit(t, filepath.Join(root, "lib", "systemd", "system", "cloudskin-agent.service"))

	// The OTA bundle: signed with the release key, for arm64 only, and
	// carrying exactly the packaged agent.
	t.Run("bundle", func(t *testing.T) {
		open := func() *os.File {
			f, err := os.Open(imgs.bundle("arm64"))
			if err != nil {
				t.Fatal(err)
			}
			t.Cleanup(func() { f.Close() })
			return f
		}
		dir := filepath.Join(t.TempDir(), "files")
		m, err := ota.Verify(open(), ota.Check{Key: imgs.pub, Arch: "arm64", Running: ""}, dir)
		if err != nil {
			t.Fatalf("bundle does not verify with %s: %v", ota.PublicKeyFile, err)
		}
		if m.Version != imagesVersion || m.Arch != "arm64" {
			t.Fatalf("manifest %+v", m)
		}
		got, err := os.ReadFile(filepath.Join(dir, ota.Product))
		if err != nil || !bytes.Equal(got, bin) {
			t.Fatalf("the bundle's agent differs from the .deb's (%v)", err)
		}
		if _, err := ota.Verify(open(), ota.Check{Key: imgs.pub, Arch: "amd64"}, t.TempDir()+"/x"); !errors.Is(err, ota.ErrWrongArch) {
			t.Fatalf("an amd64 node took the arm64 bundle: %v", err)
		}
		other, _, _ := ed25519.GenerateKey(nil)
		if _, err := ota.Verify(open(), ota.Check{Key: other, Arch: "arm64"}, t.TempDir()+"/x"); !errors.Is(err, ota.ErrTampered) {
			t.Fatalf("the bundle verified with another key: %v", err)
		}
	})

	// First boot. The operator flashed the image and dropped two files on
	// its boot partition: the token, and the node's settings in a file
	// written on Windows (CRLF), with a line that must not reach the agent.
	c := newConsole(t, backends[0])
	jwt := c.login()
	boot := filepath.Join(root, "boot", "firmware")
	if err := os.MkdirAll(boot, 0o755); err != nil {
		t.Fatal(err)
	}
	writeText(t, filepath.Join(boot, "cloudskin-enroll-token"), c.token(jwt)+"\r\n")
	writeText(t, filepath.Join(boot, "cloudskin-agent.env"),
		"# node settings\r\nCLOUDSKIN_NAME=edge-img\r\nCLOUDSKIN_CONSOLE="+c.url+"\r\nLD_PRELOAD=/tmp/evil.so\r\n")
	firstBoot(t, root)
	data := filepath.Join(root, "var", "lib", "cloudskin")
	tok, err := os.Stat(filepath.Join(data, "enroll-token"))
	if err != nil || tok.Mode().Perm() != 0o600 {
		t.Fatalf("token not moved to the data dir with mode 0600: %v %v", tok, err)
	}
	for _, f := range []string{"cloudskin-enroll-token", "cloudskin-agent.env"} {
		if _, err := os.Stat(filepath.Join(boot, f)); !errors.Is(err, os.ErrNotExist) {
			t.Errorf("first boot left %s on the boot partition (%v)", f, err)
		}
	}
	env := readEnvFile(t, filepath.Join(root, "etc", "cloudskin", "agent.env"))
	if len(env) != 2 || env[0] != "CLOUDSKIN_NAME=edge-img" || env[1] != "CLOUDSKIN_CONSOLE="+c.url {
		t.Fatalf("agent.env after first boot: %q, want only the two CLOUDSKIN_ settings", env)
	}

	// The unit's command line, with the packaged configuration (its paths
	// under this image root) and agent.env as systemd passes it; the ports
	// move off the defaults so tests can run side by side.
	conf := packagedConfig(t, root)
	httpPort, sensors := testenv.FreePort(t), fmt.Sprintf("127.0.0.1:%d", testenv.FreePort(t))
	env = append(env, fmt.Sprintf("CLOUDSKIN_HTTP=127.0.0.1:%d", httpPort), "CLOUDSKIN_SENSORS="+sensors)
	qemu, qargs = qemuArm64(t, agent, "run", "--config", conf)
	proc := testenv.Start(t, "agent edge-img (arm64, from the .deb)", env, qemu, qargs...)
	waitStatus(t, c, jwt, "edge-img", "online", qemuStartTimeout)
	var node struct {
		Arch    string `json:"arch"`
		Version string `json:"version"`
	}
	c.do("GET", "/api/v1/nodes/edge-img", jwt, nil, 200, &node)
	if node.Arch != "arm64" || node.Version != imagesVersion {
		t.Fatalf("edge-img reports arch %q version %q, want arm64 %s", node.Arch, node.Version, imagesVersion)
	}
	if _, err := os.Stat(filepath.Join(data, "enroll-token")); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("the spent token is still in the data dir (%v)", err)
	}
	if _, err := os.Stat(filepath.Join(data, "credential.json")); err != nil {
		t.Errorf("no credential after enrollment: %v", err)
	}

	// A cell on the new node: deployed, compiled under emulation, running,
	// and counting a reading a sensor publishes to the node's broker.
	mod := uploadModule(t, c, jwt, "minimal", watModule(t, "../cells/minimal.wat"))
	c.do("POST", "/api/v1/cells", jwt, map[string]any{"id": "counter", "node": "edge-img", "module": mod,
		"inputs": []map[string]any{{"name": "readings", "topics": []string{"sensors/#"}}}, "outputs": []string{"count"}}, 201, nil)
	c.waitCellOn(t, jwt, "counter", "edge-img", qemuCompileTimeout)
	counts := make(chan string, 10)
	sub := sensorClient(t, sensors)
	if tok := sub.Subscribe("cells/counter/count", 1, func(_ paho.Client, m paho.Message) { counts <- string(m.Payload()) }); !tok.WaitTimeout(10*time.Second) || tok.Error() != nil {
		t.Fatalf("subscribe: %v", tok.Error())
	}
	// A reading every 2 s until one is counted: "running" is reported once
	// the cell started, and its input may be subscribed a moment later.
	pub := sensorClient(t, sensors)
	deadline := time.After(60 * time.Second)
	tick := time.NewTicker(2 * time.Second)
	defer tick.Stop()
counted:
	for {
		if tok := pub.Publish("sensors/field-1/t", 1, false, `{"t":21.5}`); !tok.WaitTimeout(10*time.Second) || tok.Error() != nil {
			t.Fatalf("publish: %v", tok.Error())
		}
		select {
		case n := <-counts:
			if v, err := strconv.Atoi(n); err != nil || v < 1 {
				t.Fatalf("the cell emitted %q, want a count of records", n)
			}
			break counted
		case <-tick.C:
		case <-deadline:
			t.Fatal("the cell emitted nothing for a minute of readings")
		}
	}
	if proc.Exited() {
		t.Fatal("the agent exited")
	}

	// Once enrolled, the first-boot step leaves a later drop alone: it
	// holds no secret the node would use (recovery is by hand, see the
	// operator guide).
	writeText(t, filepath.Join(boot, "cloudskin-enroll-token"), "cset_late")
	firstBoot(t, root)
	if _, err := os.Stat(filepath.Join(data, "enroll-token")); !errors.Is(err, os.ErrNotExist) {
		t.Error("first boot moved a token onto an enrolled node")
	}
	proc.Kill(syscall.SIGTERM)
}

// checkUnit holds the packaged unit to what the node needs: the dedicated
// user, the sandbox, the restart policy, and the paths the package installs.
// Where systemd-analyze is present it must parse the unit without a warning
// and rate its exposure "OK" or better.
func checkUnit(t *testing.T, path string) {
	t.Helper()
	raw, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	keys := map[string][]string{}
	for _, line := range strings.Split(string(raw), "\n") {
		if k, v, ok := strings.Cut(strings.TrimSpace(line), "="); ok && !strings.HasPrefix(line, "#") {
			keys[k] = append(keys[k], v)
		}
	}
	for k, want := range map[string]string{
		"User": "cloudskin", "Group": "cloudskin",
		"ExecStart":       "/usr/bin/cloudskin-agent run --config /etc/cloudskin/agent.yaml",
		"ExecStartPre":    "+/usr/lib/cloudskin/firstboot",
		"EnvironmentFile": "-/etc/cloudskin/agent.env",
		"Restart":         "always", "RestartSec": "5", "StartLimitIntervalSec": "0",
		"NoNewPrivileges": "yes", "ProtectSystem": "strict", "ProtectHome": "yes", "PrivateTmp": "yes",
		"ReadWritePaths": "/var/lib/cloudskin", "CapabilityBoundingSet": "",
		"WantedBy": "multi-user.target",
	} {
		if got := keys[k]; len(got) != 1 || got[0] != want {
			t.Errorf("unit %s=%q, want %q", k, got, want)
		}
	}
	// wasmtime maps compiled cells executable.
	if _, ok := keys["MemoryDenyWriteExecute"]; ok {
		t.Error("MemoryDenyWriteExecute would stop every cell")
	}
	sa, err := exec.LookPath("systemd-analyze")
	if err != nil {
		t.Log("systemd-analyze not installed: unit syntax and exposure not rated here")
		return
	}
	out, err := exec.Command(sa, "verify", path).CombinedOutput()
	for _, line := range strings.Split(string(out), "\n") {
		// The binaries are not installed on this machine; anything else
		// (an unknown key, a bad value) is the unit's fault.
		if line != "" && !strings.Contains(line, "is not executable: No such file") {
			t.Errorf("systemd-analyze verify: %s", line)
		}
	}
	// Exposure 0–10, as "security" prints it; --threshold takes it ×10.
	// 1.7 when written; 3.0 still rates "OK".
	out, err = exec.Command(sa, "security", "--offline=yes", "--threshold=30", path).CombinedOutput()
	switch {
	case !strings.Contains(string(out), "Overall exposure level"):
		// systemd before 250 cannot rate a unit file offline.
		t.Logf("systemd-analyze security --offline unavailable (%v): %s", err, tailLines(string(out), 3))
	case err != nil:
		t.Errorf("systemd-analyze security rates the unit above 3.0 (%v):\n%s", err, tailLines(string(out), 30))
	default:
		t.Logf("systemd-analyze security: %s", tailLines(string(out), 1))
	}
}

// firstBoot runs the package's first-boot step against an image root, as
// the unit's ExecStartPre would against /.
func firstBoot(t *testing.T, root string) {
	t.Helper()
	cmd := exec.Command("sh", filepath.Join(root, "usr", "lib", "cloudskin", "firstboot"))
	cmd.Env = append(os.Environ(), "CLOUDSKIN_ROOT="+root)
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("firstboot: %v\n%s", err, out)
	} else if len(out) > 0 {
		t.Logf("firstboot: %s", strings.TrimSpace(string(out)))
	}
}

// packagedConfig is the package's /etc/cloudskin/agent.yaml with its paths
// under root, as the node would read it.
func packagedConfig(t testing.TB, root string) string {
	t.Helper()
	raw, err := os.ReadFile(filepath.Join(root, "etc", "cloudskin", "agent.yaml"))
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Contains(raw, []byte("data: /var/lib/cloudskin\n")) || !bytes.Contains(raw, []byte("token_file: /var/lib/cloudskin/enroll-token\n")) {
		t.Fatalf("the packaged config no longer keeps data and token_file in /var/lib/cloudskin (the unit's ReadWritePaths):\n%s", raw)
	}
	path := filepath.Join(t.TempDir(), "agent.yaml")
	writeText(t, path, strings.ReplaceAll(string(raw), "/var/lib/cloudskin", filepath.Join(root, "var", "lib", "cloudskin")))
	return path
}

// readEnvFile reads KEY=value lines as systemd's EnvironmentFile= does
// for the simple lines first boot writes.
func readEnvFile(t testing.TB, path string) []string {
	t.Helper()
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	var env []string
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		if line := strings.TrimSpace(sc.Text()); line != "" && !strings.HasPrefix(line, "#") {
			env = append(env, line)
		}
	}
	return env
}

// qemuArm64 is the command line that runs an arm64 binary here: itself on
// arm64, under qemu-user elsewhere (as arm64Command, for a binary that
// does not come from make agent-arm64).
func qemuArm64(t testing.TB, bin string, args ...string) (string, []string) {
	t.Helper()
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

// run runs a command that must succeed and returns its output.
func runCmd(t testing.TB, name string, args ...string) string {
	t.Helper()
	out, err := exec.Command(name, args...).CombinedOutput()
	if err != nil {
		t.Fatalf("%s %s: %v\n%s", name, strings.Join(args, " "), err, out)
	}
	return string(out)
}

func writeText(t testing.TB, path, content string) {
	t.Helper()
	if err := os.WriteFile(path, []byte(content), 0o644); err != nil {
		t.Fatal(err)
	}
}

func tailLines(s string, n int) string {
	lines := strings.Split(strings.TrimRight(s, "\n"), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, "\n")
}

// BenchmarkFootprint measures what the packaged amd64 agent costs at idle,
// as it ships (the .deb's binary and configuration: telemetry and heartbeat
// every 5 s): one agent with no cells and one with 10 idle minimal cells,
// side by side in one window with peers for scale (an idle Mosquitto broker,
// an idle mosquitto_sub holding a QoS 1 session, and the console). One
// measurement takes minutes, so it is a benchmark, run once:
//
//	go test ./e2e -run '^$' -bench BenchmarkFootprint -benchtime 1x -v -timeout 30m
//
// CLOUDSKIN_FOOTPRINT_WINDOW (default 60s) and CLOUDSKIN_FOOTPRINT_SETTLE
// (10s) set the sampling window and the wait before it;
// CLOUDSKIN_FOOTPRINT_AGENT=path measures another agent build instead of the
// packaged one (same configuration), to compare a change. The tables it logs
// are the ones in docs/benchmarks.md. Targets: idle RSS ≤ 40 MiB with 0
// cells, idle CPU ≤ 1 % of one core.
func BenchmarkFootprint(b *testing.B) {
	var t testing.TB = b
	window := envDuration(t, "CLOUDSKIN_FOOTPRINT_WINDOW", time.Minute)
	settle := envDuration(t, "CLOUDSKIN_FOOTPRINT_SETTLE", 10*time.Second)
	imgs := builtImages(t)
	for _, arch := range []string{"amd64", "arm64"} {
		bin, err1 := os.Stat(filepath.Join(imgs.dir, "linux-"+arch, "cloudskin-agent"))
		deb, err2 := os.Stat(imgs.deb(arch))
		if err1 != nil || err2 != nil {
			t.Fatal(err1, err2)
		}
		t.Logf("size %s: agent binary %s, .deb %s", arch, mibStr(bin.Size()), mibStr(deb.Size()))
	}
	root := t.TempDir()
	runCmd(t, "dpkg-deb", "-x", imgs.deb("amd64"), root)
	agentBin := filepath.Join(root, "usr", "bin", "cloudskin-agent")
	if other := os.Getenv("CLOUDSKIN_FOOTPRINT_AGENT"); other != "" {
		agentBin = other // another build, to compare, with the packaged configuration
	}
	conf := packagedConfig(t, root)

	c := newConsole(t, backends[0])
	jwt := c.login()
	startAgent := func(name string) (*testenv.Process, string) {
		sensors := fmt.Sprintf("127.0.0.1:%d", testenv.FreePort(t))
		env := []string{"CLOUDSKIN_NAME=" + name, "CLOUDSKIN_CONSOLE=" + c.url, "CLOUDSKIN_TOKEN=" + c.token(jwt),
			"CLOUDSKIN_DATA=" + t.TempDir(), fmt.Sprintf("CLOUDSKIN_HTTP=127.0.0.1:%d", testenv.FreePort(t)), "CLOUDSKIN_SENSORS=" + sensors}
		p := testenv.Start(t, "agent "+name, env, agentBin, "run", "--config", conf)
		waitStatus(t, c, jwt, name, "online", 30*time.Second)
		return p, sensors
	}
	idle0, _ := startAgent("idle-0")
	idle10, _ := startAgent("idle-10")
	mod := uploadModule(t, c, jwt, "minimal", watModule(t, "../cells/minimal.wat"))
	for i := range 10 {
		id := fmt.Sprintf("idle-cell-%d", i)
		c.do("POST", "/api/v1/cells", jwt, map[string]any{"id": id, "node": "idle-10", "module": mod,
			"inputs": []map[string]any{{"name": "in", "topics": []string{fmt.Sprintf("sensors/%d/#", i)}}}, "outputs": []string{"count"}}, 201, nil)
	}
	for i := range 10 {
		c.waitCellOn(t, jwt, fmt.Sprintf("idle-cell-%d", i), "idle-10", 30*time.Second)
	}

	// Peers, as deploy/bench/idle.sh runs them.
	peerDir := t.TempDir()
	peerPort := testenv.FreePort(t)
	writeText(t, filepath.Join(peerDir, "mosquitto.conf"), fmt.Sprintf("listener %d 127.0.0.1\nallow_anonymous true\npersistence false\nuser root\n", peerPort))
	broker := testenv.Start(t, "mosquitto (peer)", nil, testenv.MosquittoBinary(t), "-c", filepath.Join(peerDir, "mosquitto.conf"))
	subBin, err := exec.LookPath("mosquitto_sub")
	if err != nil {
		t.Fatal("mosquitto_sub not found: apt-get install mosquitto-clients (.ci/run does)")
	}
	var sub *testenv.Process
	waitFor(t, 10*time.Second, "mosquitto_sub connected", func() error {
		if sub == nil || sub.Exited() {
			sub = testenv.Start(t, "mosquitto_sub (peer)", nil, subBin, "-h", "127.0.0.1", "-p", fmt.Sprint(peerPort), "-t", "x/#", "-q", "1", "-c", "-i", "peer")
			return errors.New("starting")
		}
		return nil
	})

	time.Sleep(settle)
	procs := []struct {
		name string
		p    *testenv.Process
	}{{"agent, 0 cells", idle0}, {"agent, 10 cells", idle10}, {"mosquitto_sub (peer)", sub}, {"mosquitto (peer)", broker}, {"console", c.proc}}
	type acc struct {
		rss, anon, file, hwm int64
		t0, t1               int64
		samples              int64
	}
	accs := make([]acc, len(procs))
	for i, p := range procs {
		accs[i].t0 = procTicks(t, p.p.Cmd.Process.Pid)
	}
	begin := time.Now()
	for s := 1; time.Since(begin) < window; s++ {
		time.Sleep(time.Until(begin.Add(time.Duration(s) * time.Second)))
		for i, p := range procs {
			st := procStatus(t, p.p.Cmd.Process.Pid)
			accs[i].rss += st["VmRSS"]
			accs[i].anon += st["RssAnon"]
			accs[i].file += st["RssFile"]
			accs[i].hwm = st["VmHWM"]
			accs[i].samples++
		}
		if s%10 == 0 {
			t.Logf("%d/%.0f s: RSS of the agent with 0 cells %.1f MiB, with 10 cells %.1f MiB", s, window.Seconds(),
				float64(procStatus(t, idle0.Cmd.Process.Pid)["VmRSS"])/1024, float64(procStatus(t, idle10.Cmd.Process.Pid)["VmRSS"])/1024)
		}
	}
	wall := time.Since(begin)
	for i, p := range procs {
		accs[i].t1 = procTicks(t, p.p.Cmd.Process.Pid)
	}

	model := "unknown"
	if b, err := os.ReadFile("/proc/cpuinfo"); err == nil {
		for _, l := range strings.Split(string(b), "\n") {
			if v, ok := strings.CutPrefix(l, "model name"); ok {
				model = strings.TrimSpace(strings.TrimPrefix(strings.TrimSpace(v), ":"))
				break
			}
		}
	}
	kernel, _ := os.ReadFile("/proc/sys/kernel/osrelease")
	var tbl strings.Builder
	fmt.Fprintf(&tbl, "machine: nproc=%d, cpu=%s, kernel=%s, %s; settle %s, window %.1f s, %d samples\n\n",
		runtime.NumCPU(), model, strings.TrimSpace(string(kernel)), runtime.Version(), settle, wall.Seconds(), accs[0].samples)
	tbl.WriteString("| process | mean RSS (MiB) | anonymous (MiB) | file-backed (MiB) | peak RSS, VmHWM (MiB) | CPU (% of one core) | CPU ticks |\n")
	tbl.WriteString("|---|---:|---:|---:|---:|---:|---:|\n")
	cpu := make([]float64, len(procs))
	meanRSS := make([]float64, len(procs))
	for i, p := range procs {
		a := accs[i]
		ticks := a.t1 - a.t0
		// /proc/PID/stat counts in USER_HZ, 100 on Linux whatever the kernel's HZ.
		cpu[i] = 100 * float64(ticks) / 100 / wall.Seconds()
		meanRSS[i] = float64(a.rss) / float64(a.samples) / 1024
		fmt.Fprintf(&tbl, "| %s | %.1f | %.1f | %.1f | %.1f | %.3f | %d |\n", p.name, meanRSS[i],
			float64(a.anon)/float64(a.samples)/1024, float64(a.file)/float64(a.samples)/1024, float64(a.hwm)/1024, cpu[i], ticks)
	}
	t.Logf("idle footprint of %s, configured as packaged in %s:\n%s", agentBin, imgs.deb("amd64"), tbl.String())
	b.ReportMetric(meanRSS[0], "rss-MiB-0cells")
	b.ReportMetric(meanRSS[1], "rss-MiB-10cells")
	b.ReportMetric(cpu[0], "cpu%-0cells")
	b.ReportMetric(cpu[1], "cpu%-10cells")
	if meanRSS[0] > 40 {
		t.Errorf("idle RSS with 0 cells %.1f MiB, over the 40 MiB target", meanRSS[0])
	}
	for i := range 2 {
		if cpu[i] > 1 {
			t.Errorf("%s: idle CPU %.2f %% of one core, over the 1 %% target", procs[i].name, cpu[i])
		}
	}
	for _, p := range procs[:2] {
		if p.p.Exited() {
			t.Errorf("%s exited during the window", p.name)
		}
		p.p.Kill(syscall.SIGTERM)
	}
}

func envDuration(t testing.TB, name string, def time.Duration) time.Duration {
	t.Helper()
	v := os.Getenv(name)
	if v == "" {
		return def
	}
	d, err := time.ParseDuration(v)
	if err != nil || d <= 0 {
		t.Fatalf("%s=%q is not a positive duration such as 60s", name, v)
	}
	return d
}

// procStatus reads the kB fields of /proc/PID/status.
func procStatus(t testing.TB, pid int) map[string]int64 {
	t.Helper()
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		t.Fatalf("process %d: %v", pid, err)
	}
	out := map[string]int64{}
	for _, line := range strings.Split(string(b), "\n") {
		f := strings.Fields(line)
		if len(f) == 3 && f[2] == "kB" {
			var v int64
			fmt.Sscan(f[1], &v)
			out[strings.TrimSuffix(f[0], ":")] = v
		}
	}
	return out
}

// procTicks is utime+stime of a process, all threads (fields 14 and 15 of
// proc(5), after the command name, which may hold spaces).
func procTicks(t testing.TB, pid int) int64 {
	t.Helper()
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		t.Fatalf("process %d: %v", pid, err)
	}
	s := string(b)
	f := strings.Fields(s[strings.LastIndexByte(s, ')')+1:])
	var u, st int64
	fmt.Sscan(f[11], &u)
	fmt.Sscan(f[12], &st)
	return u + st
}

func mibStr(n int64) string { return fmt.Sprintf("%.1f MiB", float64(n)/(1<<20)) }
