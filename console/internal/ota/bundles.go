package ota

import (
	"bufio"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"time"

	"github.com/cloudskin/cloudskin/console/internal/store"
	otabundle "github.com/cloudskin/cloudskin/shared/ota"
)

// Bundle is a bundle as the API shows it: its id (the SHA-256 of the
// file), what its verified manifest says, and where nodes download it.
type Bundle struct {
	ID         string           `json:"id"`
	Version    string           `json:"version"`
	Arch       string           `json:"arch"`
	Size       int64            `json:"size_bytes"`
	Created    time.Time        `json:"created"` // when it was built (the manifest's time)
	Files      []otabundle.File `json:"files"`
	URL        string           `json:"url"`
	UploadedBy string           `json:"uploaded_by"`
	UploadedAt time.Time        `json:"uploaded_at"`
}

// BlobURL is where a node downloads bundle id (node credential, Range).
func BlobURL(id string) string { return "/api/v1/bundles/" + id + "/blob" }

func objectKey(id string) string { return "bundles/" + id + ".tar" }

// ParseID checks a bundle id: the SHA-256 of the file as 64 lowercase hex
// digits, "sha256:" prefix accepted.
func ParseID(s string) (string, error) {
	id := s
	if len(id) == 71 && id[:7] == "sha256:" {
		id = id[7:]
	}
	if len(id) != 64 {
		return "", fmt.Errorf("%w: bundle id %q: want the sha256 of the bundle as 64 lowercase hex digits", ErrInvalid, s)
	}
	for _, c := range id {
		if !(c >= '0' && c <= '9' || c >= 'a' && c <= 'f') {
			return "", fmt.Errorf("%w: bundle id %q: want the sha256 of the bundle as 64 lowercase hex digits", ErrInvalid, s)
		}
	}
	return id, nil
}

// Upload reads a bundle (at most MaxBundleBytes) into a temporary file,
// verifies its signature, manifest and every file's sha256 against the
// release key, and keeps it in the object store under its sha256. The same
// bytes again change nothing (created false). A bundle of a release and
// arch that another bundle holds already is refused (store.ErrConflict):
// a release names one set of bytes.
func (s *Service) Upload(ctx context.Context, r io.Reader, by string) (Bundle, bool, error) {
	if err := s.KeyConfigured(); err != nil {
		return Bundle{}, false, err
	}
	tmp, err := os.CreateTemp(s.cfg.TempDir, "upload-*.tar")
	if err != nil {
		return Bundle{}, false, fmt.Errorf("bundle upload: %w", err)
	}
	defer func() {
		tmp.Close()
		os.Remove(tmp.Name())
	}()
	h := sha256.New()
	n, err := io.Copy(io.MultiWriter(tmp, h), io.LimitReader(r, s.maxBytes+1))
	if err != nil {
		return Bundle{}, false, fmt.Errorf("read bundle: %w", err)
	}
	if n > s.maxBytes {
		return Bundle{}, false, ErrTooLarge
	}
	id := hex.EncodeToString(h.Sum(nil))
	if b, err := s.store.BundleByID(ctx, id); err == nil {
		return view(b), false, nil
	} else if !errors.Is(err, store.ErrNotFound) {
		return Bundle{}, false, err
	}
	m, err := s.verify(tmp)
	if err != nil {
		s.log.Warn("bundle refused", "bundle", id, "bytes", n, "by", by, "err", err)
		return Bundle{}, false, err
	}
	v, _ := otabundle.ParseVersion(m.Version) // Verify validated it
	semver := fmt.Sprintf("%d.%d.%d", v[0], v[1], v[2])
	if other, err := s.store.BundleByRelease(ctx, semver, m.Arch); err == nil {
		return Bundle{}, false, fmt.Errorf("release %s for %s is bundle %s (version %s) already: a release names one set of bytes, "+
			"so build this one with a higher version: %w", semver, m.Arch, other.ID, other.Version, store.ErrConflict)
	} else if !errors.Is(err, store.ErrNotFound) {
		return Bundle{}, false, err
	}

	// Bytes first, row second: a row always has its object.
	if _, err := tmp.Seek(0, io.SeekStart); err != nil {
		return Bundle{}, false, err
	}
	size, sum, err := s.objects.Put(ctx, objectKey(id), tmp)
	if err != nil {
		return Bundle{}, false, fmt.Errorf("store bundle %s: %w", id, err)
	}
	if sum != id || size != n {
		return Bundle{}, false, fmt.Errorf("store bundle %s: object store wrote %d bytes with sha256 %s", id, size, sum)
	}
	manifest, _ := json.Marshal(m)
	row := &store.Bundle{ID: id, Version: m.Version, Semver: semver, Arch: m.Arch, SizeBytes: n, Manifest: string(manifest),
		UploadedBy: by, UploadedAt: s.now().UTC()}
	if err := s.store.CreateBundle(ctx, row); err != nil {
		if b, gerr := s.store.BundleByID(ctx, id); gerr == nil { // the same bytes, uploaded concurrently
			return view(b), false, nil
		}
		// Another bundle took the release meanwhile; nothing names this object.
		_ = s.objects.Delete(ctx, objectKey(id))
		return Bundle{}, false, err
	}
	s.log.Info("bundle uploaded", "bundle", id, "version", m.Version, "arch", m.Arch, "bytes", n, "files", len(m.Files), "by", by)
	return view(row), true, nil
}

// verify checks the bundle in f against the release key; the files it
// extracts to do so are removed again.
func (s *Service) verify(f *os.File) (*otabundle.Manifest, error) {
	if _, err := f.Seek(0, io.SeekStart); err != nil {
		return nil, err
	}
	dir, err := os.MkdirTemp(s.cfg.TempDir, "verify-*")
	if err != nil {
		return nil, fmt.Errorf("bundle upload: %w", err)
	}
	defer os.RemoveAll(dir)
	return otabundle.Verify(bufio.NewReaderSize(f, 1<<20), otabundle.Check{Key: s.cfg.ReleaseKey}, filepath.Join(dir, "files"))
}

// Bundles returns every bundle, newest first.
func (s *Service) Bundles(ctx context.Context) ([]Bundle, error) {
	rows, err := s.store.ListBundles(ctx)
	if err != nil {
		return nil, err
	}
	out := make([]Bundle, len(rows))
	for i := range rows {
		out[i] = view(&rows[i])
	}
	return out, nil
}

// Bundle returns one bundle.
func (s *Service) Bundle(ctx context.Context, id string) (Bundle, error) {
	id, err := ParseID(id)
	if err != nil {
		return Bundle{}, err
	}
	b, err := s.store.BundleByID(ctx, id)
	if err != nil {
		return Bundle{}, err
	}
	return view(b), nil
}

// OpenBundle returns a bundle and its bytes; the caller closes them. On the
// filesystem store the reader is also an io.ReadSeeker (HTTP ranges).
func (s *Service) OpenBundle(ctx context.Context, id string) (Bundle, io.ReadCloser, error) {
	b, err := s.Bundle(ctx, id)
	if err != nil {
		return Bundle{}, nil, err
	}
	rc, err := s.objects.Get(ctx, objectKey(b.ID))
	if err != nil {
		// A row without its bytes is damage (a 500), not an unknown bundle.
		return Bundle{}, nil, fmt.Errorf("bundle %s is recorded but its bytes are unreadable: %w", b.ID, err)
	}
	return b, rc, nil
}

// DeleteBundle removes a bundle no unfinished rollout uses (else
// store.ErrConflict).
func (s *Service) DeleteBundle(ctx context.Context, id, by string) error {
	id, err := ParseID(id)
	if err != nil {
		return err
	}
	if err := s.store.DeleteBundle(ctx, id); err != nil {
		return err
	}
	if err := s.objects.Delete(ctx, objectKey(id)); err != nil {
		s.log.Error("bundle deleted, but not its bytes", "bundle", id, "err", err)
	}
	s.log.Info("bundle deleted", "bundle", id, "by", by)
	return nil
}

func view(b *store.Bundle) Bundle {
	out := Bundle{ID: b.ID, Version: b.Version, Arch: b.Arch, Size: b.SizeBytes, URL: BlobURL(b.ID),
		UploadedBy: b.UploadedBy, UploadedAt: b.UploadedAt.UTC(), Files: []otabundle.File{}}
	var m otabundle.Manifest
	if json.Unmarshal([]byte(b.Manifest), &m) == nil {
		out.Created = m.Created.UTC()
		if m.Files != nil {
			out.Files = m.Files
		}
	}
	return out
}
