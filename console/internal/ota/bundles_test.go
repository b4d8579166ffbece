package ota

import (
	"bytes"
	"crypto/ed25519"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"io"
	"os"
	"path/filepath"
	"testing"

	"github.com/cloudskin/cloudskin/console/internal/store"
	otabundle "github.com/cloudskin/cloudskin/shared/ota"
)

// release is a release key pair made by otabundle.CreateKeys.
type release struct {
	pub  ed25519.PublicKey
	priv ed25519.PrivateKey
}

func newRelease(t *testing.T) release {
	t.Helper()
	dir := filepath.Join(t.TempDir(), "keys")
	pub, err := otabundle.CreateKeys(dir)
	if err != nil {
		t.Fatal(err)
	}
	priv, err := otabundle.LoadPrivateKey(filepath.Join(dir, otabundle.PrivateKeyFile))
	if err != nil {
		t.Fatal(err)
	}
	return release{pub, priv}
}

// build makes a signed bundle whose agent binary is content.
func (k release) build(t *testing.T, version, arch, content string) []byte {
	t.Helper()
	bin := filepath.Join(t.TempDir(), otabundle.Product)
	if err := os.WriteFile(bin, []byte(content), 0o755); err != nil {
		t.Fatal(err)
	}
	var buf bytes.Buffer
	if _, err := otabundle.Build(&buf, version, arch, map[string]string{otabundle.Product: bin}, k.priv); err != nil {
		t.Fatal(err)
	}
	return buf.Bytes()
}

// unsigned is good with its signature left out.
func unsigned(t *testing.T, good []byte) []byte {
	t.Helper()
	out, err := otabundle.Rewrite(good, func(name string, body []byte) ([]byte, bool) {
		return body, name != otabundle.SignatureName
	})
	if err != nil {
		t.Fatal(err)
	}
	return out
}

func sha(b []byte) string {
	s := sha256.Sum256(b)
	return hex.EncodeToString(s[:])
}

// TestUpload: a signed bundle is verified and kept under its sha256; the
// same bytes again change nothing; unsigned, tampered, foreign-key,
// malformed, oversized bundles and a second bundle of a release are
// refused with the reason; nothing is left in the temporary directory.
func TestUpload(t *testing.T) {
	f := newFixture(t)
	key := newRelease(t)
	f.svc.cfg.ReleaseKey = key.pub
	good := key.build(t, "1.2.0", "arm64", "#!/bin/sh\necho agent 1.2.0\n")

	b, created, err := f.svc.Upload(f.ctx, bytes.NewReader(good), "ops")
	if err != nil || !created {
		t.Fatalf("good bundle: %v %v", created, err)
	}
	if b.ID != sha(good) || b.Version != "1.2.0" || b.Arch != "arm64" || b.Size != int64(len(good)) || b.UploadedBy != "ops" ||
		len(b.Files) != 1 || b.Files[0].Name != otabundle.Product || b.URL != "/api/v1/bundles/"+b.ID+"/blob" || b.Created.IsZero() {
		t.Fatalf("uploaded %+v", b)
	}
	if again, created, err := f.svc.Upload(f.ctx, bytes.NewReader(good), "someone"); err != nil || created || again.ID != b.ID || again.UploadedBy != "ops" {
		t.Fatalf("same bytes again: %+v %v %v", again, created, err)
	}
	got, rc, err := f.svc.OpenBundle(f.ctx, "sha256:"+b.ID)
	if err != nil {
		t.Fatal(err)
	}
	if _, ok := rc.(io.ReadSeeker); !ok {
		t.Fatal("the blob cannot seek: no HTTP ranges")
	}
	stored, _ := io.ReadAll(rc)
	rc.Close()
	if got.ID != b.ID || !bytes.Equal(stored, good) {
		t.Fatal("stored bytes differ")
	}

	tampered, err := otabundle.Rewrite(good, func(name string, body []byte) ([]byte, bool) {
		if name == otabundle.Product {
			body = bytes.Replace(body, []byte("echo agent 1.2.0"), []byte("Echo agent 1.2.0"), 1)
		}
		return body, true
	})
	if err != nil {
		t.Fatal(err)
	}
	other := newRelease(t)
	big := key.build(t, "1.3.0", "arm64", string(bytes.Repeat([]byte("x"), 4096)))
	for name, tc := range map[string]struct {
		body []byte
		want error
	}{
		"unsigned":          {unsigned(t, good), otabundle.ErrUnsigned},
		"tampered file":     {tampered, otabundle.ErrTampered},
		"another key":       {other.build(t, "1.2.1", "arm64", "x"), otabundle.ErrTampered},
		"not a tar":         {[]byte("MZ\x90\x00 definitely not a bundle"), otabundle.ErrMalformed},
		"empty":             {nil, otabundle.ErrMalformed},
		"release taken":     {key.build(t, "1.2.0", "arm64", "rebuilt"), store.ErrConflict},
		"same release, rc":  {key.build(t, "v1.2.0-rc1", "arm64", "rc"), store.ErrConflict},
		"oversized (limit)": {big, ErrTooLarge},
	} {
		f.svc.maxBytes = MaxBundleBytes
		if name == "oversized (limit)" {
			f.svc.maxBytes = int64(len(big)) - 1
		}
		if _, _, err := f.svc.Upload(f.ctx, bytes.NewReader(tc.body), "ops"); !errors.Is(err, tc.want) {
			t.Errorf("%s: %v, want %v", name, err, tc.want)
		}
	}
	f.svc.maxBytes = MaxBundleBytes
	// Another arch of the same release is another bundle.
	if _, created, err := f.svc.Upload(f.ctx, bytes.NewReader(key.build(t, "1.2.0", "amd64", "amd64 build")), "ops"); err != nil || !created {
		t.Fatalf("amd64 of 1.2.0: %v", err)
	}
	list, err := f.svc.Bundles(f.ctx)
	if err != nil || len(list) != 2 {
		t.Fatalf("bundles %+v %v", list, err)
	}
	if left, _ := os.ReadDir(f.svc.cfg.TempDir); len(left) != 0 {
		t.Fatalf("left in the temporary directory: %v", left)
	}

	if err := f.svc.DeleteBundle(f.ctx, b.ID, "ops"); err != nil {
		t.Fatal(err)
	}
	if _, _, err := f.svc.OpenBundle(f.ctx, b.ID); !errors.Is(err, store.ErrNotFound) {
		t.Fatalf("deleted bundle: %v", err)
	}
	if _, err := f.svc.Bundle(f.ctx, "nope"); !errors.Is(err, ErrInvalid) {
		t.Fatalf("bad id: %v", err)
	}
}

// TestUploadWithoutKey: a console without a release key takes no bundle.
func TestUploadWithoutKey(t *testing.T) {
	f := newFixture(t)
	good := newRelease(t).build(t, "1.2.0", "amd64", "agent")
	if _, _, err := f.svc.Upload(f.ctx, bytes.NewReader(good), "ops"); !errors.Is(err, ErrNoKey) {
		t.Fatalf("%v, want ErrNoKey", err)
	}
	if list, _ := f.svc.Bundles(f.ctx); len(list) != 0 {
		t.Fatalf("stored %+v", list)
	}
}
