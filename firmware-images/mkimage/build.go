package main

import (
	"context"
	"crypto/ed25519"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"io"
	"os"
	"os/signal"
	"path/filepath"
	"strings"
	"syscall"
	"text/tabwriter"

	"github.com/cloudskin/cloudskin/shared/ota"
)

// debTarget is the bound on a package's size.
const debTarget = 30 << 20

// artifact is a file a run wrote, for the summary and SHA256SUMS.
type artifact struct {
	path, arch, kind string
	size             int64
	sha256           string
}

// build runs every step: the key, then per arch the agent, its .deb and its
// signed bundle; then the checksums and a summary.
func build(o options) error {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	version := imageVersion(o.rawVersion)
	if err := os.MkdirAll(o.out, 0o755); err != nil {
		return err
	}
	out := os.Stdout
	fmt.Fprintf(out, "mkimage: cloudskin-agent %s for %s into %s\n", version, strings.Join(o.arches, ", "), o.out)
	if strings.TrimPrefix(strings.TrimSpace(o.rawVersion), "v") != version {
		fmt.Fprintf(out, "mkimage: %q is not major.minor.patch[-suffix]: built as %s (make images VERSION=1.2.3 for a release)\n", o.rawVersion, version)
	}
	p := newProgress(out, 1+3*len(o.arches))

	var (
		priv    ed25519.PrivateKey
		keyPath string
		dev     bool
	)
	err := p.step("release key", func() (string, error) {
		var err error
		priv, keyPath, dev, err = releaseKey(o)
		if err != nil {
			return "", err
		}
		if dev {
			return "DEVELOPMENT key " + keyPath, nil
		}
		return keyPath, nil
	})
	if err != nil {
		return err
	}
	pub := priv.Public().(ed25519.PublicKey)
	pubText := ota.FormatPublicKey(pub)
	if dev {
		devWarning(out, keyPath)
	}
	pubPath := filepath.Join(o.out, ota.PublicKeyFile)
	if err := os.WriteFile(pubPath, []byte(pubText+"\n"), 0o644); err != nil {
		return err
	}

	var arts []artifact
	keyEmbedded := map[string]bool{}
	for _, arch := range o.arches {
		bin := filepath.Join(o.out, "linux-"+arch, "cloudskin-agent")
		var facts binaryFacts
		err := p.step(fmt.Sprintf("building %s agent (cgo, CC=%s)", arch, o.cc[arch]), func() (string, error) {
			if err := buildAgent(ctx, o, arch, version, pubText, bin); err != nil {
				return "", err
			}
			var err error
			if facts, err = inspect(bin, arch, pubText); err != nil {
				return "", err
			}
			a, err := describe(bin, arch, "agent binary")
			arts = append(arts, a)
			return mib(a.size) + ", needs " + strings.Join(facts.depends, ", "), err
		})
		if err != nil {
			return err
		}
		keyEmbedded[arch] = facts.keyEmbedded

		err = p.step(fmt.Sprintf("packaging %s .deb (%s)", arch, o.debCompr), func() (string, error) {
			deb, err := writeDeb(o, arch, version, bin, o.out, facts.depends)
			if err != nil {
				return "", err
			}
			a, err := describe(deb, arch, ".deb")
			arts = append(arts, a)
			return fmt.Sprintf("%s %s", filepath.Base(deb), mib(a.size)), err
		})
		if err != nil {
			return err
		}

		err = p.step(fmt.Sprintf("signing %s OTA bundle", arch), func() (string, error) {
			path := filepath.Join(o.out, fmt.Sprintf("cloudskin-agent_%s_%s.ota.tar.gz", version, arch))
			if err := writeBundle(path, version, arch, bin, priv); err != nil {
				return "", err
			}
			a, err := describe(path, arch, "OTA bundle")
			arts = append(arts, a)
			return fmt.Sprintf("%s %s, signature verified", filepath.Base(path), mib(a.size)), err
		})
		if err != nil {
			return err
		}
	}
	if err := writeSums(filepath.Join(o.out, "SHA256SUMS"), o.out, arts); err != nil {
		return err
	}
	summary(out, o, version, arts, pubPath, keyEmbedded, dev, keyPath)
	return nil
}

// writeBundle signs a bundle of the agent binary and reads it back as an
// agent of that arch would, before it is left in place.
func writeBundle(path, version, arch, bin string, priv ed25519.PrivateKey) error {
	tmp := path + ".tmp"
	f, err := os.Create(tmp)
	if err != nil {
		return err
	}
	_, err = ota.Build(f, version, arch, map[string]string{ota.Product: bin}, priv)
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err == nil {
		err = verifyBundle(tmp, version, arch, priv.Public().(ed25519.PublicKey))
	}
	if err == nil {
		err = os.Rename(tmp, path)
	}
	if err != nil {
		os.Remove(tmp)
	}
	return err
}

func verifyBundle(path, version, arch string, pub ed25519.PublicKey) error {
	f, err := os.Open(path)
	if err != nil {
		return err
	}
	defer f.Close()
	dir, err := os.MkdirTemp("", "mkimage-verify")
	if err != nil {
		return err
	}
	defer os.RemoveAll(dir)
	m, err := ota.Verify(f, ota.Check{Key: pub, Arch: arch}, filepath.Join(dir, "files"))
	if err != nil {
		return fmt.Errorf("the bundle just signed does not verify: %w", err)
	}
	if m.Version != version {
		return fmt.Errorf("bundle version %s, want %s", m.Version, version)
	}
	return nil
}

func describe(path, arch, kind string) (artifact, error) {
	f, err := os.Open(path)
	if err != nil {
		return artifact{}, err
	}
	defer f.Close()
	h := sha256.New()
	n, err := io.Copy(h, f)
	return artifact{path: path, arch: arch, kind: kind, size: n, sha256: hex.EncodeToString(h.Sum(nil))}, err
}

// writeSums writes sha256sum-format lines, paths relative to dir.
func writeSums(path, dir string, arts []artifact) error {
	var b strings.Builder
	for _, a := range arts {
		rel, err := filepath.Rel(dir, a.path)
		if err != nil {
			return err
		}
		fmt.Fprintf(&b, "%s  %s\n", a.sha256, filepath.ToSlash(rel))
	}
	return os.WriteFile(path, []byte(b.String()), 0o644)
}

func mib(n int64) string { return fmt.Sprintf("%.1f MiB", float64(n)/(1<<20)) }

func devWarning(w io.Writer, keyPath string) {
	line := strings.Repeat("!", 78)
	fmt.Fprintf(w, "%s\n!! DEVELOPMENT RELEASE KEY: %s\n"+
		"!! The agents and OTA bundles of this run trust a key made on this machine.\n"+
		"!! Do not ship them. For a release: RELEASE_SIGNING_KEY=/path/to/release.key make images\n"+
		"!! (the pair: cloudskin-console keys create --dir DIR, kept offline).\n%s\n", line, keyPath, line)
}

func summary(w io.Writer, o options, version string, arts []artifact, pubPath string, keyEmbedded map[string]bool, dev bool, keyPath string) {
	fmt.Fprintf(w, "\ncloudskin-agent %s images in %s:\n\n", version, o.out)
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
	fmt.Fprintln(tw, "artifact\tarch\tsize\tsha256")
	for _, a := range arts {
		note := ""
		if a.kind == ".deb" {
			if a.size <= debTarget {
				note = "  (target ≤ 30 MiB: met)"
			} else {
				note = "  (target ≤ 30 MiB: MISSED)"
			}
		}
		fmt.Fprintf(tw, "%s\t%s\t%s%s\t%s…\n", a.path, a.arch, mib(a.size), note, a.sha256[:16])
	}
	tw.Flush()
	fmt.Fprintf(w, "\nchecksums: %s\n", filepath.Join(o.out, "SHA256SUMS"))
	fmt.Fprintf(w, "release public key (agents and the console trust it): %s\n", pubPath)
	for _, arch := range o.arches {
		if !keyEmbedded[arch] {
			fmt.Fprintf(w, "note: the %s agent does not embed the release key (edge-agent has no main.releaseKey yet)\n", arch)
		}
	}
	if dev {
		fmt.Fprintf(w, "WARNING: signed with the DEVELOPMENT key %s: not for shipping.\n", keyPath)
	}
}
