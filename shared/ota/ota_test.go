package ota

import (
	"bytes"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

func testBundle(t *testing.T, version, arch string) (b []byte, dir string) {
	t.Helper()
	dir = t.TempDir()
	pub, err := CreateKeys(filepath.Join(dir, "keys"))
	if err != nil || len(pub) == 0 {
		t.Fatal(err)
	}
	bin := filepath.Join(dir, Product)
	if err := os.WriteFile(bin, []byte("#!/bin/sh\necho agent "+version+"\n"), 0o755); err != nil {
		t.Fatal(err)
	}
	priv, err := LoadPrivateKey(filepath.Join(dir, "keys", PrivateKeyFile))
	if err != nil {
		t.Fatal(err)
	}
	var buf bytes.Buffer
	if _, err := Build(&buf, version, arch, map[string]string{Product: bin}, priv); err != nil {
		t.Fatal(err)
	}
	return buf.Bytes(), dir
}

func key(t *testing.T, dir string) Check {
	t.Helper()
	pub, err := LoadPublicKey(filepath.Join(dir, "keys", PublicKeyFile))
	if err != nil {
		t.Fatal(err)
	}
	return Check{Key: pub, Arch: "arm64", Running: "1.0.0"}
}

// TestVerify: a good bundle extracts; unsigned, tampered, wrong-arch and
// older ones are refused with their reason and leave nothing behind.
func TestVerify(t *testing.T) {
	good, dir := testBundle(t, "1.1.0", "arm64")
	c := key(t, dir)
	out := filepath.Join(t.TempDir(), "slot")
	m, err := Verify(bytes.NewReader(good), c, out)
	if err != nil || m.Version != "1.1.0" {
		t.Fatalf("good bundle: %+v %v", m, err)
	}
	if b, err := os.ReadFile(filepath.Join(out, Product)); err != nil || !strings.Contains(string(b), "1.1.0") {
		t.Fatalf("extracted %q %v", b, err)
	}
	if st, _ := os.Stat(filepath.Join(out, Product)); st.Mode().Perm()&0o100 == 0 {
		t.Fatal("the agent binary is not executable")
	}

	// Unsigned: the signature entry removed.
	unsigned := rewrite(t, good, func(name string, body []byte) ([]byte, bool) { return body, name != SignatureName })
	// Tampered: one byte of the binary changed.
	tampered := rewrite(t, good, func(name string, body []byte) ([]byte, bool) {
		if name == Product {
			body = append([]byte(nil), body...)
			body[0] ^= 1
		}
		return body, true
	})
	// A manifest changed after signing.
	resigned := rewrite(t, good, func(name string, body []byte) ([]byte, bool) {
		if name == ManifestName {
			body = bytes.Replace(body, []byte(`"arm64"`), []byte(`"amd64"`), 1)
		}
		return body, true
	})
	other, _ := testBundle(t, "1.1.0", "arm64")
	amd, amdDir := testBundle(t, "1.1.0", "amd64")
	old, oldDir := testBundle(t, "0.9.0", "arm64")
	same, sameDir := testBundle(t, "1.0.0", "arm64")
	for _, tc := range []struct {
		name string
		b    []byte
		c    Check
		want error
	}{
		{"unsigned", unsigned, c, ErrUnsigned},
		{"tampered binary", tampered, c, ErrTampered},
		{"manifest changed after signing", resigned, c, ErrTampered},
		{"signed by another key", other, c, ErrTampered},
		{"wrong arch", amd, key(t, amdDir), ErrWrongArch},
		{"older", old, key(t, oldDir), ErrDowngrade},
		{"same version", same, key(t, sameDir), ErrDowngrade},
		{"not a tar", []byte("hello"), c, ErrMalformed},
		{"empty", nil, c, ErrMalformed},
		{"truncated", good[:len(good)/2], c, ErrRefused},
	} {
		out := filepath.Join(t.TempDir(), "slot")
		_, err := Verify(bytes.NewReader(tc.b), tc.c, out)
		if !errors.Is(err, tc.want) || !errors.Is(err, ErrRefused) {
			t.Errorf("%s: %v, want %v", tc.name, err, tc.want)
		}
		if _, serr := os.Stat(out); !os.IsNotExist(serr) {
			t.Errorf("%s: refused bundle left %s behind", tc.name, out)
		}
	}
}

// rewrite is Rewrite for a test.
func rewrite(t *testing.T, b []byte, f func(name string, body []byte) ([]byte, bool)) []byte {
	t.Helper()
	out, err := Rewrite(b, f)
	if err != nil {
		t.Fatal(err)
	}
	return out
}

func TestVersions(t *testing.T) {
	for _, tc := range []struct {
		a, b string
		want int
	}{{"1.2.3", "1.2.4", -1}, {"v2.0.0", "1.99.99", 1}, {"1.2.3-rc1", "1.2.3", 0}, {"0.10.0", "0.9.0", 1}} {
		a, err1 := ParseVersion(tc.a)
		b, err2 := ParseVersion(tc.b)
		if err1 != nil || err2 != nil || a.Compare(b) != tc.want {
			t.Errorf("%s vs %s: %d (%v %v)", tc.a, tc.b, a.Compare(b), err1, err2)
		}
	}
	for _, bad := range []string{"", "1.2", "1.2.3.4", "dev", "1.2.x", "-1.0.0"} {
		if _, err := ParseVersion(bad); err == nil {
			t.Errorf("%q accepted", bad)
		}
	}
}

func TestKeys(t *testing.T) {
	dir := t.TempDir()
	pub, err := CreateKeys(dir)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := CreateKeys(dir); err == nil {
		t.Fatal("an existing key pair was overwritten")
	}
	if st, _ := os.Stat(filepath.Join(dir, PrivateKeyFile)); st.Mode().Perm() != 0o600 {
		t.Fatalf("private key mode %v", st.Mode().Perm())
	}
	got, err := LoadPublicKey(FormatPublicKey(pub))
	if err != nil || !got.Equal(pub) {
		t.Fatalf("public key from text: %v", err)
	}
	for _, bad := range []string{"", "cloudskin-release-ed25519:abc", "ssh-ed25519 AAAA"} {
		if _, err := ParsePublicKey(bad); err == nil {
			t.Errorf("%q accepted as a key", bad)
		}
	}
	// Either half taken for the other is refused: a public key read as a
	// seed would sign with a key anyone could derive.
	if _, err := LoadPrivateKey(filepath.Join(dir, PublicKeyFile)); err == nil {
		t.Fatal("the public key was accepted as the signing key")
	}
	if _, err := LoadPublicKey(filepath.Join(dir, PrivateKeyFile)); err == nil {
		t.Fatal("the private key was accepted as the public key")
	}
}

// FuzzVerify: any bytes are refused or accepted, never a panic, and a
// refusal leaves nothing behind.
func FuzzVerify(f *testing.F) {
	dir := f.TempDir()
	pub, err := CreateKeys(dir)
	if err != nil {
		f.Fatal(err)
	}
	priv, _ := LoadPrivateKey(filepath.Join(dir, PrivateKeyFile))
	bin := filepath.Join(dir, Product)
	os.WriteFile(bin, []byte("agent"), 0o755)
	var buf bytes.Buffer
	Build(&buf, "1.1.0", "amd64", map[string]string{Product: bin}, priv)
	f.Add(buf.Bytes())
	f.Add([]byte{})
	f.Fuzz(func(t *testing.T, b []byte) {
		out := filepath.Join(t.TempDir(), "x")
		if _, err := Verify(bytes.NewReader(b), Check{Key: pub, Arch: "amd64", Running: "1.0.0"}, out); err != nil {
			if _, serr := os.Stat(out); !os.IsNotExist(serr) {
				t.Fatal("refused bundle left files")
			}
		}
	})
}
