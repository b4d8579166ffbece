package e2e

import (
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"testing"
	"time"
)

// mosquitto is a real Mosquitto broker for one test, reading the passwd
// and acl files the console writes into dir.
type mosquitto struct {
	dir     string
	port    int
	pidFile string
	conf    string
	proc    *proc
}

func mosquittoBinary(t *testing.T) string {
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

func newMosquitto(t *testing.T, port int) *mosquitto {
	t.Helper()
	m := &mosquitto{dir: t.TempDir(), port: port}
	m.pidFile = filepath.Join(m.dir, "mosquitto.pid")
	m.conf = filepath.Join(m.dir, "mosquitto.conf")
	// user root: the test runs as root and the files live in a private temp
	// dir; in production Mosquitto runs as its own user (deploy/mosquitto).
	conf := fmt.Sprintf(`user root
listener %d 127.0.0.1
allow_anonymous false
use_username_as_clientid true
password_file %s
acl_file %s
pid_file %s
persistence false
max_packet_size 262144
log_dest stderr
log_type error
log_type warning
log_type notice
`, port, filepath.Join(m.dir, "passwd"), filepath.Join(m.dir, "acl"), m.pidFile)
	if err := os.WriteFile(m.conf, []byte(conf), 0o600); err != nil {
		t.Fatal(err)
	}
	return m
}

func (m *mosquitto) url() string { return fmt.Sprintf("tcp://127.0.0.1:%d", m.port) }

// ensureRunning starts Mosquitto once the console has written its files.
func (m *mosquitto) ensureRunning(t *testing.T) {
	t.Helper()
	if m.proc != nil && !m.proc.exited() {
		return
	}
	waitFor(t, 15*time.Second, "console to write mosquitto files", func() error {
		for _, f := range []string{"passwd", "acl"} {
			if _, err := os.Stat(filepath.Join(m.dir, f)); err != nil {
				return err
			}
		}
		return nil
	})
	m.proc = start(t, "mosquitto", nil, mosquittoBinary(t), "-c", m.conf)
	waitFor(t, 10*time.Second, "mosquitto listening", func() error {
		if m.proc.exited() {
			t.Fatalf("mosquitto exited:\n%s", m.proc.out.String())
		}
		c, err := net.Dial("tcp", fmt.Sprintf("127.0.0.1:%d", m.port))
		if err != nil {
			return err
		}
		c.Close()
		return nil
	})
}
