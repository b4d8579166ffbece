// Package ota is the over-the-air update bundle: a gzip-compressed tar
// holding a signed manifest and the files it names. The console's release key (ed25519)
// signs the manifest; an agent trusts the public key it was built or
// configured with and refuses a bundle that is unsigned, tampered with,
// for another arch, or older than what it runs.
//
// Layout of a bundle (gzip; a plain tar is read too), in this order:
//
//	manifest.json   the Manifest, exactly the bytes that were signed
//	manifest.sig    base64 of the ed25519 signature of manifest.json
//	<files>         each file the manifest lists, by name
package ota

import (
	"archive/tar"
	"bufio"
	"bytes"
	"compress/gzip"
	"crypto/ed25519"
	"crypto/rand"
	"crypto/sha256"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"time"
)

// Product is the only product a bundle may carry.
const Product = "cloudskin-agent"

// Names inside a bundle.
const (
	ManifestName  = "manifest.json"
	SignatureName = "manifest.sig"
)

// Bounds: a bundle is an agent binary and a few small files.
const (
	MaxFiles        = 16
	MaxFileBytes    = 256 << 20
	MaxManifestSize = 64 << 10
)

// Errors a bundle is refused with; each wraps ErrRefused.
var (
	ErrRefused   = errors.New("bundle refused")
	ErrUnsigned  = fmt.Errorf("%w: unsigned", ErrRefused)
	ErrTampered  = fmt.Errorf("%w: tampered", ErrRefused)
	ErrWrongArch = fmt.Errorf("%w: wrong arch", ErrRefused)
	ErrDowngrade = fmt.Errorf("%w: not newer", ErrRefused)
	ErrMalformed = fmt.Errorf("%w: malformed", ErrRefused)
)

// File is one file of a bundle.
type File struct {
	Name   string `json:"name"`
	SHA256 string `json:"sha256"`
	Size   int64  `json:"size"`
	Mode   uint32 `json:"mode"`
}

// Manifest says what a bundle is.
type Manifest struct {
	Product string    `json:"product"`
	Version string    `json:"version"`
	Arch    string    `json:"arch"` // amd64 | arm64
	Created time.Time `json:"created"`
	Files   []File    `json:"files"`
}

var fileNameRE = regexp.MustCompile(`^[a-zA-Z0-9][a-zA-Z0-9._-]{0,63}$`)

// Validate checks the manifest's shape.
func (m *Manifest) Validate() error {
	switch {
	case m.Product != Product:
		return fmt.Errorf("%w: product %q is not %s", ErrMalformed, m.Product, Product)
	case m.Arch != "amd64" && m.Arch != "arm64":
		return fmt.Errorf("%w: arch %q is not amd64 or arm64", ErrMalformed, m.Arch)
	case len(m.Files) == 0 || len(m.Files) > MaxFiles:
		return fmt.Errorf("%w: %d files (1–%d)", ErrMalformed, len(m.Files), MaxFiles)
	}
	if _, err := ParseVersion(m.Version); err != nil {
		return fmt.Errorf("%w: %v", ErrMalformed, err)
	}
	seen := map[string]bool{}
	hasAgent := false
	for _, f := range m.Files {
		if !fileNameRE.MatchString(f.Name) || f.Name == ManifestName || f.Name == SignatureName || seen[f.Name] {
			return fmt.Errorf("%w: file name %q", ErrMalformed, f.Name)
		}
		seen[f.Name] = true
		if len(f.SHA256) != 64 || f.Size < 0 || f.Size > MaxFileBytes {
			return fmt.Errorf("%w: file %s: sha256 or size", ErrMalformed, f.Name)
		}
		if f.Name == Product {
			hasAgent = true
		}
	}
	if !hasAgent {
		return fmt.Errorf("%w: no %s binary", ErrMalformed, Product)
	}
	return nil
}

// Version is a release version: major.minor.patch, optionally with a
// leading "v" and a "-suffix" that only names a build.
type Version [3]int

var versionRE = regexp.MustCompile(`^v?(\d{1,6})\.(\d{1,6})\.(\d{1,6})(-[0-9A-Za-z.-]{1,64})?$`)

// ParseVersion reads a release version.
func ParseVersion(s string) (Version, error) {
	m := versionRE.FindStringSubmatch(s)
	if m == nil {
		return Version{}, fmt.Errorf("version %q is not major.minor.patch", s)
	}
	var v Version
	for i := range 3 {
		v[i], _ = strconv.Atoi(m[i+1])
	}
	return v, nil
}

// Compare orders versions: -1, 0 or 1.
func (v Version) Compare(o Version) int {
	for i := range 3 {
		switch {
		case v[i] < o[i]:
			return -1
		case v[i] > o[i]:
			return 1
		}
	}
	return 0
}

// Key files: the private key stays with the operator who signs releases;
// the public key is built into agents or given with --release-key.
const (
	PrivateKeyFile = "release.key"
	PublicKeyFile  = "release.pub"
	keyPrefix      = "cloudskin-release-ed25519:"
	// privPrefix differs from keyPrefix, so a public key can never be
	// taken for a private one (both are 32 bytes: a public key read as a
	// seed would sign with a key anyone can derive from release.pub).
	privPrefix = "cloudskin-release-ed25519-private:"
)

// CreateKeys writes a new key pair into dir (the private key mode 0600); it
// refuses to overwrite an existing one.
func CreateKeys(dir string) (ed25519.PublicKey, error) {
	pub, priv, err := ed25519.GenerateKey(rand.Reader)
	if err != nil {
		return nil, err
	}
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, err
	}
	privPath := filepath.Join(dir, PrivateKeyFile)
	f, err := os.OpenFile(privPath, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o600)
	if err != nil {
		return nil, fmt.Errorf("release key: %w", err)
	}
	if _, err := f.WriteString(privPrefix + base64.StdEncoding.EncodeToString(priv.Seed()) + "\n"); err != nil {
		f.Close()
		return nil, err
	}
	if err := f.Close(); err != nil {
		return nil, err
	}
	if err := os.WriteFile(filepath.Join(dir, PublicKeyFile), []byte(FormatPublicKey(pub)+"\n"), 0o644); err != nil {
		return nil, err
	}
	return pub, nil
}

// FormatPublicKey is the public key's text form.
func FormatPublicKey(pub ed25519.PublicKey) string {
	return keyPrefix + base64.StdEncoding.EncodeToString(pub)
}

// ParsePublicKey reads a public key's text form.
func ParsePublicKey(s string) (ed25519.PublicKey, error) {
	s = strings.TrimSpace(s)
	if strings.HasPrefix(s, privPrefix) {
		return nil, fmt.Errorf("release public key: this is the private key; give release.pub")
	}
	b, err := base64.StdEncoding.DecodeString(strings.TrimPrefix(s, keyPrefix))
	if err != nil || len(b) != ed25519.PublicKeySize || !strings.HasPrefix(s, keyPrefix) {
		return nil, fmt.Errorf("release public key: not a %s key", keyPrefix)
	}
	return ed25519.PublicKey(b), nil
}

// LoadPublicKey reads a public key file or, if s is not a file, the key
// itself.
func LoadPublicKey(s string) (ed25519.PublicKey, error) {
	if b, err := os.ReadFile(s); err == nil {
		return ParsePublicKey(string(b))
	}
	return ParsePublicKey(s)
}

// LoadPrivateKey reads a private key file.
func LoadPrivateKey(path string) (ed25519.PrivateKey, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("release key: %w", err)
	}
	s := strings.TrimSpace(string(b))
	if strings.HasPrefix(s, keyPrefix) {
		return nil, fmt.Errorf("release key %s is the public key: signing needs the private %s", path, PrivateKeyFile)
	}
	seed, err := base64.StdEncoding.DecodeString(strings.TrimPrefix(s, privPrefix))
	if err != nil || len(seed) != ed25519.SeedSize || !strings.HasPrefix(s, privPrefix) {
		return nil, fmt.Errorf("release key %s: not a %s key", path, privPrefix)
	}
	return ed25519.NewKeyFromSeed(seed), nil
}

// Build writes a signed bundle of files (name → path on disk) to w.
func Build(w io.Writer, version, arch string, files map[string]string, priv ed25519.PrivateKey) (*Manifest, error) {
	m := Manifest{Product: Product, Version: version, Arch: arch, Created: time.Now().UTC().Truncate(time.Second)}
	names := make([]string, 0, len(files))
	for name := range files {
		names = append(names, name)
	}
	slices.Sort(names)
	for _, name := range names {
		b, err := os.ReadFile(files[name])
		if err != nil {
			return nil, err
		}
		st, err := os.Stat(files[name])
		if err != nil {
			return nil, err
		}
		sum := sha256.Sum256(b)
		m.Files = append(m.Files, File{Name: name, SHA256: hex.EncodeToString(sum[:]), Size: int64(len(b)), Mode: uint32(st.Mode().Perm())})
	}
	if err := m.Validate(); err != nil {
		return nil, err
	}
	mb, err := json.MarshalIndent(&m, "", "  ")
	if err != nil {
		return nil, err
	}
	sig := base64.StdEncoding.EncodeToString(ed25519.Sign(priv, mb))
	gz, _ := gzip.NewWriterLevel(w, gzip.BestCompression) // a bundle is built once, downloaded by every node
	tw := tar.NewWriter(gz)
	add := func(name string, mode int64, r io.Reader, size int64) error {
		if err := tw.WriteHeader(&tar.Header{Name: name, Mode: mode, Size: size, ModTime: m.Created, Format: tar.FormatPAX}); err != nil {
			return err
		}
		_, err := io.Copy(tw, r)
		return err
	}
	if err := add(ManifestName, 0o644, bytes.NewReader(mb), int64(len(mb))); err != nil {
		return nil, err
	}
	if err := add(SignatureName, 0o644, strings.NewReader(sig), int64(len(sig))); err != nil {
		return nil, err
	}
	for _, f := range m.Files {
		fh, err := os.Open(files[f.Name])
		if err != nil {
			return nil, err
		}
		err = add(f.Name, int64(f.Mode), fh, f.Size)
		fh.Close()
		if err != nil {
			return nil, err
		}
	}
	if err := tw.Close(); err != nil {
		return nil, err
	}
	return &m, gz.Close()
}

// open reads a bundle's tar stream: gzip-compressed, or a plain tar.
func open(r io.Reader) (*tar.Reader, error) {
	br := bufio.NewReader(r)
	if magic, err := br.Peek(2); err == nil && magic[0] == 0x1f && magic[1] == 0x8b {
		gz, err := gzip.NewReader(br)
		if err != nil {
			return nil, fmt.Errorf("%w: gzip: %v", ErrMalformed, err)
		}
		return tar.NewReader(gz), nil
	}
	return tar.NewReader(br), nil
}

// Check is what the receiver expects of a bundle.
type Check struct {
	Key  ed25519.PublicKey
	Arch string // the receiver's arch; "" accepts any (the console)
	// Running is the version running now; a bundle must be newer. ""
	// skips the check (the console).
	Running string
}

// Verify reads a bundle, checks its signature, manifest and every file's
// sha256, and extracts the files into dir (which it creates). Nothing is
// left in dir when it fails. Errors wrap ErrRefused with the reason.
func Verify(r io.Reader, c Check, dir string) (*Manifest, error) {
	m, err := verify(r, c, dir)
	if err != nil {
		os.RemoveAll(dir)
	}
	return m, err
}

func verify(r io.Reader, c Check, dir string) (*Manifest, error) {
	tr, err := open(r)
	if err != nil {
		return nil, err
	}
	next := func(want string, limit int64) ([]byte, error) {
		h, err := tr.Next()
		if err != nil {
			if want == SignatureName && errors.Is(err, io.EOF) {
				return nil, ErrUnsigned
			}
			return nil, fmt.Errorf("%w: %s: %v", ErrMalformed, want, err)
		}
		if h.Name != want {
			if want == SignatureName {
				return nil, fmt.Errorf("%w: %s comes first, not %s", ErrUnsigned, SignatureName, h.Name)
			}
			return nil, fmt.Errorf("%w: %s expected, found %s", ErrMalformed, want, h.Name)
		}
		if h.Size > limit {
			return nil, fmt.Errorf("%w: %s of %d bytes", ErrMalformed, want, h.Size)
		}
		b, err := io.ReadAll(io.LimitReader(tr, limit))
		if err != nil {
			return nil, fmt.Errorf("%w: %s: %v", ErrMalformed, want, err)
		}
		return b, nil
	}
	mb, err := next(ManifestName, MaxManifestSize)
	if err != nil {
		return nil, err
	}
	sigText, err := next(SignatureName, 256)
	if err != nil {
		return nil, err
	}
	sig, err := base64.StdEncoding.DecodeString(strings.TrimSpace(string(sigText)))
	if err != nil || len(sig) != ed25519.SignatureSize {
		return nil, fmt.Errorf("%w: signature is not an ed25519 signature", ErrUnsigned)
	}
	if len(c.Key) != ed25519.PublicKeySize || !ed25519.Verify(c.Key, mb, sig) {
		return nil, fmt.Errorf("%w: the manifest's signature does not match the release key", ErrTampered)
	}
	var m Manifest
	dec := json.NewDecoder(bytes.NewReader(mb))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&m); err != nil {
		return nil, fmt.Errorf("%w: manifest: %v", ErrMalformed, err)
	}
	if err := m.Validate(); err != nil {
		return nil, err
	}
	if c.Arch != "" && m.Arch != c.Arch {
		return nil, fmt.Errorf("%w: bundle is for %s, this node is %s", ErrWrongArch, m.Arch, c.Arch)
	}
	if c.Running != "" {
		run, err := ParseVersion(c.Running)
		if err == nil {
			v, _ := ParseVersion(m.Version)
			if v.Compare(run) <= 0 {
				return nil, fmt.Errorf("%w: bundle %s, running %s", ErrDowngrade, m.Version, c.Running)
			}
		}
	}
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return nil, err
	}
	for _, f := range m.Files {
		h, err := tr.Next()
		if err != nil || h.Name != f.Name || h.Size != f.Size {
			return nil, fmt.Errorf("%w: file %s missing or not in manifest order", ErrTampered, f.Name)
		}
		if err := extract(tr, f, filepath.Join(dir, f.Name)); err != nil {
			return nil, err
		}
	}
	if _, err := tr.Next(); !errors.Is(err, io.EOF) {
		return nil, fmt.Errorf("%w: data after the manifest's files, or a broken stream (%v)", ErrTampered, err)
	}
	return &m, nil
}

func extract(r io.Reader, f File, path string) error {
	out, err := os.OpenFile(path, os.O_WRONLY|os.O_CREATE|os.O_TRUNC, os.FileMode(f.Mode&0o755))
	if err != nil {
		return err
	}
	h := sha256.New()
	n, rerr := io.Copy(io.MultiWriter(out, h), io.LimitReader(r, f.Size+1))
	err = out.Sync()
	if cerr := out.Close(); err == nil {
		err = cerr
	}
	if rerr != nil {
		// The bundle's stream broke (a corrupt gzip block, a truncation):
		// what it carries is not what was signed.
		return fmt.Errorf("%w: file %s: %v", ErrTampered, f.Name, rerr)
	}
	if err != nil {
		return err
	}
	if n != f.Size || hex.EncodeToString(h.Sum(nil)) != f.SHA256 {
		return fmt.Errorf("%w: file %s does not match its sha256 in the manifest", ErrTampered, f.Name)
	}
	return nil
}

// ReadManifest reads a bundle's manifest without checking anything: for
// listing what was uploaded before it is verified.
func ReadManifest(r io.Reader) (*Manifest, error) {
	tr, err := open(r)
	if err != nil {
		return nil, err
	}
	h, err := tr.Next()
	if err != nil || h.Name != ManifestName || h.Size > MaxManifestSize {
		return nil, fmt.Errorf("%w: no manifest first", ErrMalformed)
	}
	var m Manifest
	if err := json.NewDecoder(io.LimitReader(tr, MaxManifestSize)).Decode(&m); err != nil {
		return nil, fmt.Errorf("%w: manifest: %v", ErrMalformed, err)
	}
	return &m, nil
}

// Rewrite re-packs a bundle's entries through f (false drops an entry),
// without signing anything again: for tests and tools that need a bundle
// tampered with in one precise way.
func Rewrite(b []byte, f func(name string, body []byte) ([]byte, bool)) ([]byte, error) {
	tr, err := open(bytes.NewReader(b))
	if err != nil {
		return nil, err
	}
	var out bytes.Buffer
	gz := gzip.NewWriter(&out)
	tw := tar.NewWriter(gz)
	for {
		h, err := tr.Next()
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			return nil, err
		}
		body, err := io.ReadAll(tr)
		if err != nil {
			return nil, err
		}
		body, keep := f(h.Name, body)
		if !keep {
			continue
		}
		h.Size = int64(len(body))
		if err := tw.WriteHeader(h); err != nil {
			return nil, err
		}
		if _, err := tw.Write(body); err != nil {
			return nil, err
		}
	}
	if err := tw.Close(); err != nil {
		return nil, err
	}
	if err := gz.Close(); err != nil {
		return nil, err
	}
	return out.Bytes(), nil
}
