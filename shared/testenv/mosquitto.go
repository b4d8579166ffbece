package testenv

import (
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// MosquittoBinary finds the Mosquitto broker; its absence fails the test
// (CI installs it, and a skip would hide that).
func MosquittoBinary(t testing.TB) string {
	t.Helper()
	for _, p := range []string{"/usr/sbin/mosquitto", "/usr/local/sbin/mosquitto"} {
		if _, err := os.Stat(p); err == nil {
			return p
		}
	}
	p, err := exec.LookPath("mosquitto")
	if err != nil {
		t.Fatal("mosquitto is not installed: run the tests through .ci/run (apt-get install mosquitto)")
	}
	return p
}

// Mosquitto is a real broker for one test, enforcing the passwd and acl
// files in Dir (written by package mosquitto, or by a console).
type Mosquitto struct {
	Dir     string
	Port    int
	PidFile string
	Conf    string
	Proc    *Process
}

// NewMosquitto writes a configuration for a broker on a free port that reads
// Dir/passwd and Dir/acl, plus any extra configuration lines; Start runs it.
func NewMosquitto(t testing.TB, dir string, extra ...string) *Mosquitto {
	t.Helper()
	m := &Mosquitto{Dir: dir, Port: FreePort(t), PidFile: filepath.Join(dir, "mosquitto.pid"), Conf: filepath.Join(dir, "mosquitto.conf")}
	// "user root": started as root, Mosquitto would switch to its own user
	// before reading files in a test directory only root can read; in
	// production it runs as its own user (deploy/mosquitto).
	conf := fmt.Sprintf(`user root
listener %d 127.0.0.1
allow_anonymous false
password_file %s
acl_file %s
pid_file %s
persistence false
max_packet_size 262144
log_dest stderr
log_type error
log_type warning
log_type notice
log_type information
`, m.Port, filepath.Join(dir, "passwd"), filepath.Join(dir, "acl"), m.PidFile) + strings.Join(extra, "\n") + "\n"
	if err := os.WriteFile(m.Conf, []byte(conf), 0o600); err != nil {
		t.Fatal(err)
	}
	return m
}

// URL is the broker's address for MQTT clients.
func (m *Mosquitto) URL() string { return fmt.Sprintf("tcp://127.0.0.1:%d", m.Port) }

// Start runs the broker (once its files exist) and waits until it accepts
// connections and has written its pid file.
func (m *Mosquitto) Start(t testing.TB) {
	t.Helper()
	if m.Proc != nil && !m.Proc.Exited() {
		return
	}
	deadline := time.Now().Add(15 * time.Second)
	for _, f := range []string{"passwd", "acl"} {
		for {
			if _, err := os.Stat(filepath.Join(m.Dir, f)); err == nil {
				break
			}
			if time.Now().After(deadline) {
				t.Fatalf("mosquitto: %s/%s was never written", m.Dir, f)
			}
			time.Sleep(50 * time.Millisecond)
		}
	}
	m.Proc = Start(t, "mosquitto", nil, MosquittoBinary(t), "-c", m.Conf)
	for {
		if m.Proc.Exited() {
			t.Fatalf("mosquitto exited:\n%s", m.Proc.Out.String())
		}
		if c, err := net.DialTimeout("tcp", fmt.Sprintf("127.0.0.1:%d", m.Port), time.Second); err == nil {
			c.Close()
			if _, err := os.Stat(m.PidFile); err == nil {
				return
			}
		}
		if time.Now().After(deadline) {
			t.Fatalf("mosquitto not ready on port %d:\n%s", m.Port, m.Proc.Out.String())
		}
		time.Sleep(50 * time.Millisecond)
	}
}
