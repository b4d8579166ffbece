// Command mkimage builds the CloudSkin edge images: for each arch, the agent
// cross-compiled with cgo (wasmtime), a .deb that installs it as a hardened
// systemd service, and an OTA bundle signed with the release key. `make
// images` runs it; see firmware-images/README.md.
//
//	go run ./firmware-images/mkimage --version 0.8.0 --out bin/images
//
// The release key pair comes from `cloudskin-console keys create`.
package main

import (
	"crypto/ed25519"
	"errors"
	"flag"
	"fmt"
	"os"
	"path/filepath"
	"runtime"
	"strings"

	"github.com/cloudskin/cloudskin/shared/ota"
)

func main() {
	if err := run(os.Args[1:]); err != nil {
		fmt.Fprintln(os.Stderr, "mkimage:", err)
		os.Exit(1)
	}
}

// options is what one run builds, from the flags.
type options struct {
	root       string // the repository (holds go.mod)
	out        string
	rawVersion string
	arches     []string
	cc         map[string]string
	goTool     string
	releaseKey string // path to release.key; "" makes or reuses a development key
	debCompr   string
	maintainer string
}

func run(args []string) error {
	o := options{cc: map[string]string{}}
	fs := flag.NewFlagSet("mkimage", flag.ContinueOnError)
	fs.StringVar(&o.rawVersion, "version", "", "release version, major.minor.patch[-suffix]; anything else (git describe of an untagged tree) becomes 0.0.0-dev.<it>")
	fs.StringVar(&o.out, "out", "bin/images", "output directory")
	arches := fs.String("arch", "amd64,arm64", "comma-separated architectures: amd64, arm64")
	ccAMD64 := fs.String("cc-amd64", defaultCC("amd64"), "C compiler for the amd64 agent (cgo)")
	ccARM64 := fs.String("cc-arm64", defaultCC("arm64"), "C compiler for the arm64 agent (cgo); Debian: apt-get install gcc-aarch64-linux-gnu libc6-dev-arm64-cross")
	fs.StringVar(&o.goTool, "go", "go", "the go command")
	fs.StringVar(&o.releaseKey, "release-key", os.Getenv("RELEASE_SIGNING_KEY"), "private release key (release.key) that signs the bundles and whose public half the agents trust (env RELEASE_SIGNING_KEY); empty: a development key under OUT/dev-keys")
	fs.StringVar(&o.debCompr, "deb-compression", "gzip", "compression of the .deb payload: gzip (fast), xz (smaller, much slower) or zstd")
	fs.StringVar(&o.maintainer, "maintainer", "CloudSkin maintainers <maintainers@cloudskin.invalid>", "Maintainer field of the .deb")
	fs.StringVar(&o.root, "root", "", "repository root (default: the directory holding go.mod, from the working directory up)")
	if err := fs.Parse(args); err != nil {
		return err
	}
	if fs.NArg() > 0 {
		return fmt.Errorf("unexpected argument %q", fs.Arg(0))
	}
	o.cc["amd64"], o.cc["arm64"] = *ccAMD64, *ccARM64
	for _, a := range strings.Split(*arches, ",") {
		a = strings.TrimSpace(a)
		if _, ok := o.cc[a]; !ok {
			return fmt.Errorf("arch %q: only amd64 and arm64 are built", a)
		}
		o.arches = append(o.arches, a)
	}
	if o.root == "" {
		var err error
		if o.root, err = findRoot(); err != nil {
			return err
		}
	}
	switch o.debCompr {
	case "gzip", "xz", "zstd":
	default:
		return fmt.Errorf("deb-compression %q: gzip, xz or zstd", o.debCompr)
	}
	return build(o)
}

// defaultCC is the C compiler for arch: the host's own for the host arch,
// Debian's cross compiler for the other.
func defaultCC(arch string) string {
	if arch == runtime.GOARCH {
		if cc := os.Getenv("CC"); cc != "" {
			return cc
		}
		return "gcc"
	}
	return map[string]string{"amd64": "x86_64-linux-gnu-gcc", "arm64": "aarch64-linux-gnu-gcc"}[arch]
}

func findRoot() (string, error) {
	dir, err := os.Getwd()
	if err != nil {
		return "", err
	}
	for {
		if _, err := os.Stat(filepath.Join(dir, "go.mod")); err == nil {
			return dir, nil
		}
		parent := filepath.Dir(dir)
		if parent == dir {
			return "", errors.New("no go.mod in the working directory or above it: run from the repository or pass --root")
		}
		dir = parent
	}
}

// checkKeyFile refuses a signing key that does not look private: the
// public half by name (ota.LoadPrivateKey refuses its text form too), or a
// key file others may read, as ssh demands.
func checkKeyFile(path string) error {
	st, err := os.Stat(path)
	if err != nil {
		return fmt.Errorf("release key: %w", err)
	}
	if filepath.Base(path) == ota.PublicKeyFile {
		return fmt.Errorf("%s is the public release key: signing needs the private %s (RELEASE_SIGNING_KEY or --release-key)", path, ota.PrivateKeyFile)
	}
	if st.Mode().Perm()&0o077 != 0 {
		return fmt.Errorf("release key %s is readable by others (mode %04o): a private key must be mode 0600 (chmod 600 it); the public %s is not a signing key", path, st.Mode().Perm(), ota.PublicKeyFile)
	}
	return nil
}

// matchesPublic checks priv against a release.pub kept beside its file.
func matchesPublic(path string, priv ed25519.PrivateKey) error {
	raw, err := os.ReadFile(filepath.Join(filepath.Dir(path), ota.PublicKeyFile))
	if errors.Is(err, os.ErrNotExist) {
		return nil
	}
	if err != nil {
		return err
	}
	pub, err := ota.ParsePublicKey(string(raw))
	if err != nil {
		return err
	}
	if !pub.Equal(priv.Public()) {
		return fmt.Errorf("%s is not the private half of the %s beside it", path, ota.PublicKeyFile)
	}
	return nil
}

// releaseKey loads the signing key, or makes (once) and loads the
// development key under out/dev-keys.
func releaseKey(o options) (priv ed25519.PrivateKey, path string, dev bool, err error) {
	if o.releaseKey != "" {
		if err := checkKeyFile(o.releaseKey); err != nil {
			return nil, "", false, err
		}
		priv, err = ota.LoadPrivateKey(o.releaseKey)
		if err != nil {
			return nil, "", false, err
		}
		return priv, o.releaseKey, false, matchesPublic(o.releaseKey, priv)
	}
	dir := filepath.Join(o.out, "dev-keys")
	path = filepath.Join(dir, ota.PrivateKeyFile)
	if _, statErr := os.Stat(path); errors.Is(statErr, os.ErrNotExist) {
		if _, err := ota.CreateKeys(dir); err != nil {
			return nil, "", true, err
		}
	}
	if priv, err = ota.LoadPrivateKey(path); err != nil {
		return nil, "", true, err
	}
	return priv, path, true, matchesPublic(path, priv)
}
