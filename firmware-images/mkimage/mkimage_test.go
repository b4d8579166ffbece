package main

import (
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/cloudskin/cloudskin/shared/ota"
)

func TestImageVersion(t *testing.T) {
	for _, tc := range []struct{ raw, image, deb string }{
		{"0.8.0", "0.8.0", "0.8.0"},
		{"v1.2.3", "1.2.3", "1.2.3"},
		{"v0.8.0-rc.1", "0.8.0-rc.1", "0.8.0~rc.1"},
		{"v0.8.0-3-gabc1234-dirty", "0.8.0-3-gabc1234-dirty", "0.8.0~3.gabc1234.dirty"},
		{"abc1234-dirty", "0.0.0-dev.abc1234-dirty", "0.0.0~dev.abc1234.dirty"},
		{"abc1234", "0.0.0-dev.abc1234", "0.0.0~dev.abc1234"},
		{"dev", "0.0.0-dev", "0.0.0~dev"},
		{"", "0.0.0-dev", "0.0.0~dev"},
		{"1.2.3+meta data", "0.0.0-dev.1.2.3.meta.data", "0.0.0~dev.1.2.3.meta.data"},
	} {
		got := imageVersion(tc.raw)
		if got != tc.image {
			t.Errorf("imageVersion(%q) = %q, want %q", tc.raw, got, tc.image)
		}
		if _, err := ota.ParseVersion(got); err != nil {
			t.Errorf("imageVersion(%q) = %q, which ota refuses: %v", tc.raw, got, err)
		}
		if d := debVersion(got); d != tc.deb {
			t.Errorf("debVersion(%q) = %q, want %q", got, d, tc.deb)
		}
	}
	long := imageVersion(strings.Repeat("x", 200))
	if _, err := ota.ParseVersion(long); err != nil {
		t.Errorf("a long describe gives %q, which ota refuses: %v", long, err)
	}
}

// A .deb of a stand-in binary: the files, modes, conffile and scripts the
// node needs, read back with dpkg-deb. (e2e/images_test.go checks the real
// one that make images builds.)
func TestDeb(t *testing.T) {
	if _, err := exec.LookPath("dpkg-deb"); err != nil {
		t.Fatal("dpkg-deb not found: it comes with Debian's dpkg package, which every supported build machine has")
	}
	root, err := filepath.Abs("../..")
	if err != nil {
		t.Fatal(err)
	}
	bin := filepath.Join(t.TempDir(), "cloudskin-agent")
	if err := os.WriteFile(bin, []byte("#!/bin/sh\necho stand-in\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	o := options{root: root, debCompr: "gzip", maintainer: "Test <test@example.invalid>"}
	out := t.TempDir()
	deb, err := writeDeb(o, "arm64", "1.2.3-rc.1", bin, out, []string{"libc6 (>= 2.34)", "libgcc-s1"})
	if err != nil {
		t.Fatal(err)
	}
	if filepath.Base(deb) != "cloudskin-agent_1.2.3~rc.1_arm64.deb" {
		t.Errorf("file name %s", filepath.Base(deb))
	}
	dpkg := func(args ...string) string {
		t.Helper()
		b, err := exec.Command("dpkg-deb", args...).CombinedOutput()
		if err != nil {
			t.Fatalf("dpkg-deb %v: %v\n%s", args, err, b)
		}
		return string(b)
	}
	for field, want := range map[string]string{
		"Package": "cloudskin-agent", "Version": "1.2.3~rc.1", "Architecture": "arm64",
		"Depends": "libc6 (>= 2.34), libgcc-s1", "Maintainer": "Test <test@example.invalid>",
	} {
		if got := strings.TrimSpace(dpkg("-f", deb, field)); got != want {
			t.Errorf("%s: %q, want %q", field, got, want)
		}
	}
	if got := strings.TrimSpace(dpkg("-I", deb, "conffiles")); got != configPath {
		t.Errorf("conffiles %q", got)
	}
	listing := dpkg("-c", deb)
	for _, want := range []string{
		"-rwxr-xr-x root/root .* ./usr/bin/cloudskin-agent",
		"-rw-r--r-- root/root .* ./lib/systemd/system/cloudskin-agent.service",
		"-rw-r--r-- root/root .* ./etc/cloudskin/agent.yaml",
		"-rwxr-xr-x root/root .* ./usr/lib/cloudskin/firstboot",
		"-rw-r--r-- root/root .* ./usr/share/doc/cloudskin-agent/operator-guide.md",
	} {
		pre, path, _ := strings.Cut(want, " .* ")
		found := false
		for _, line := range strings.Split(listing, "\n") {
			if strings.HasPrefix(line, pre) && strings.HasSuffix(line, path) {
				found = true
			}
		}
		if !found {
			t.Errorf("no %q in\n%s", want, listing)
		}
	}
	control := t.TempDir()
	dpkg("-e", deb, control)
	for _, s := range []string{"postinst", "prerm", "postrm"} {
		if b, err := exec.Command("sh", "-n", filepath.Join(control, s)).CombinedOutput(); err != nil {
			t.Errorf("%s: %v\n%s", s, err, b)
		}
	}
}

func TestInspect(t *testing.T) {
	self, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	// The test binary is a Go program for this machine: the wrong arch is
	// refused by name.
	other := map[string]string{"amd64": "arm64", "arm64": "amd64"}[runtime.GOARCH]
	if other == "" {
		t.Fatalf("the agent is built on amd64 or arm64 machines only, not %s", runtime.GOARCH)
	}
	if _, err := inspect(self, other, "k"); err == nil || !strings.Contains(err.Error(), "not "+other) {
		t.Fatalf("inspect as %s: %v", other, err)
	}
	// Made at run time, so the binary cannot hold it as a literal.
	absent := strings.Repeat("absent-key/", 3) + strconv.FormatInt(time.Now().UnixNano(), 36)
	facts, err := inspect(self, runtime.GOARCH, absent)
	if err != nil {
		t.Fatal(err)
	}
	if facts.keyEmbedded {
		t.Error("found a key that is not there")
	}
	for _, d := range facts.depends {
		if !strings.HasPrefix(d, "libc6") && d != "libgcc-s1" {
			t.Errorf("unexpected dependency %q", d)
		}
	}
}

func TestReleaseKey(t *testing.T) {
	keys := t.TempDir()
	pub, err := ota.CreateKeys(keys)
	if err != nil {
		t.Fatal(err)
	}
	priv := filepath.Join(keys, ota.PrivateKeyFile)
	pubFile := filepath.Join(keys, ota.PublicKeyFile)

	got, _, dev, err := releaseKey(options{releaseKey: priv})
	if err != nil || dev || !pub.Equal(got.Public()) {
		t.Fatalf("release.key: %v (dev %v)", err, dev)
	}

	// release.pub parses as a seed: it must be refused by name, and a copy
	// under another name by its mode.
	if _, _, _, err := releaseKey(options{releaseKey: pubFile}); err == nil || !strings.Contains(err.Error(), "public release key") {
		t.Fatalf("release.pub as the signing key: %v", err)
	}
	copied := filepath.Join(t.TempDir(), "signing.key")
	raw, _ := os.ReadFile(pubFile)
	if err := os.WriteFile(copied, raw, 0o644); err != nil {
		t.Fatal(err)
	}
	if _, _, _, err := releaseKey(options{releaseKey: copied}); err == nil || !strings.Contains(err.Error(), "readable by others") {
		t.Fatalf("a world-readable key file: %v", err)
	}

	// A private key beside someone else's release.pub.
	other := t.TempDir()
	if _, err := ota.CreateKeys(other); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(other, ota.PublicKeyFile), raw, 0o644); err != nil {
		t.Fatal(err)
	}
	if _, _, _, err := releaseKey(options{releaseKey: filepath.Join(other, ota.PrivateKeyFile)}); err == nil || !strings.Contains(err.Error(), "not the private half") {
		t.Fatalf("mismatched pair: %v", err)
	}

	// No key: a development pair, made once and then reused.
	out := t.TempDir()
	first, path, dev, err := releaseKey(options{out: out})
	if err != nil || !dev || path != filepath.Join(out, "dev-keys", ota.PrivateKeyFile) {
		t.Fatalf("dev key: %v %s %v", err, path, dev)
	}
	again, _, _, err := releaseKey(options{out: out})
	if err != nil || !first.Equal(again) {
		t.Fatalf("dev key not reused: %v", err)
	}
}
