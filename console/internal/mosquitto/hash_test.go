package mosquitto

import (
	"encoding/base64"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
)

var hashRE = regexp.MustCompile(`^\$7\$101\$[A-Za-z0-9+/]{16}\$[A-Za-z0-9+/]{86}==$`)

func TestHashPasswordFormat(t *testing.T) {
	a, err := HashPassword("s3cret")
	if err != nil {
		t.Fatal(err)
	}
	b, err := HashPassword("s3cret")
	if err != nil {
		t.Fatal(err)
	}
	for _, h := range []string{a, b} {
		if !hashRE.MatchString(h) {
			t.Errorf("HashPassword = %q, want $7$101$<16 base64 salt>$<88 base64 hash>", h)
		}
	}
	if a == b {
		t.Errorf("two hashes of one password are equal (%q): the salt is not random", a)
	}
	if !verifyHash(t, a, "s3cret") {
		t.Errorf("hash %q does not verify against its own password", a)
	}
	if verifyHash(t, a, "s3cret ") {
		t.Errorf("hash %q verifies against a different password", a)
	}
}

// TestHashMatchesMosquittoPasswd recomputes, with the salt mosquitto_passwd
// chose, the hash mosquitto_passwd wrote: same format, same derivation.
func TestHashMatchesMosquittoPasswd(t *testing.T) {
	bin := requireBinary(t, "mosquitto_passwd", "/usr/bin/mosquitto_passwd")
	file := filepath.Join(t.TempDir(), "passwd")
	for _, pw := range []string{"s3cret", "pä$$:w0rd with spaces", strings.Repeat("x", 200)} {
		out, err := exec.Command(bin, "-c", "-b", file, "edge-1", pw).CombinedOutput()
		if err != nil {
			t.Fatalf("mosquitto_passwd: %v: %s", err, out)
		}
		raw, err := os.ReadFile(file)
		if err != nil {
			t.Fatal(err)
		}
		theirs, ok := strings.CutPrefix(strings.TrimSpace(string(raw)), "edge-1:")
		if !ok || !hashRE.MatchString(theirs) {
			t.Fatalf("mosquitto_passwd wrote %q, not the format we produce", raw)
		}
		salt, err := base64.StdEncoding.DecodeString(strings.Split(theirs, "$")[3])
		if err != nil {
			t.Fatal(err)
		}
		ours, err := hashWithSalt(pw, salt)
		if err != nil {
			t.Fatal(err)
		}
		if ours != theirs {
			t.Errorf("password %q with mosquitto_passwd's salt:\n ours   %s\n theirs %s", pw, ours, theirs)
		}
	}
}

// verifyHash reports whether hash, as HashPassword writes it, is of password.
func verifyHash(t *testing.T, hash, password string) bool {
	t.Helper()
	parts := strings.Split(hash, "$")
	if len(parts) != 5 {
		t.Fatalf("hash %q does not have 5 $-separated parts", hash)
	}
	salt, err := base64.StdEncoding.DecodeString(parts[3])
	if err != nil {
		t.Fatalf("hash %q salt: %v", hash, err)
	}
	again, err := hashWithSalt(password, salt)
	if err != nil {
		t.Fatal(err)
	}
	return again == hash
}

// requireBinary finds a Mosquitto program at one of paths or in PATH, and
// fails the test (never skips it) when it is missing: these tests are what
// shows the files we write work with the real broker.
func requireBinary(t *testing.T, name string, paths ...string) string {
	t.Helper()
	for _, p := range paths {
		if _, err := os.Stat(p); err == nil {
			return p
		}
	}
	if p, err := exec.LookPath(name); err == nil {
		return p
	}
	t.Fatalf("%s not found at %s or in PATH: install Mosquitto (apt-get install -y mosquitto mosquitto-clients); "+
		"these tests check the generated files against the real broker", name, strings.Join(paths, ", "))
	return ""
}
