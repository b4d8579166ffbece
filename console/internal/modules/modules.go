// Package modules is the console's registry of cell modules: it validates
// an uploaded WebAssembly binary against the cell ABI, keeps its bytes in
// the object store under their SHA-256 and records it in the database.
package modules

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"regexp"
	"strings"
	"time"

	"github.com/cloudskin/cloudskin/console/internal/objects"
	"github.com/cloudskin/cloudskin/console/internal/store"
	"github.com/cloudskin/cloudskin/shared/wasmcheck"
)

// MaxSize bounds an uploaded module.
const MaxSize = 32 << 20

// Errors the API maps to status codes.
var (
	ErrInvalid  = errors.New("invalid module")
	ErrTooLarge = fmt.Errorf("module is larger than %d MiB", MaxSize>>20)
)

// Module is a module as the API shows it.
type Module struct {
	Digest         string             `json:"digest"`
	Name           string             `json:"name,omitempty"`
	Size           int64              `json:"size_bytes"`
	ABIVersion     int                `json:"abi_version,omitempty"`
	MemoryMinPages int64              `json:"memory_min_pages"`
	MemoryMaxPages *int64             `json:"memory_max_pages"`
	Exports        []wasmcheck.Extern `json:"exports"`
	Imports        []wasmcheck.Import `json:"imports"`
	UploadedBy     string             `json:"uploaded_by"`
	UploadedAt     time.Time          `json:"uploaded_at"`
}

// Service is the module registry.
type Service struct {
	store   *store.Store
	objects objects.Store
	log     *slog.Logger
}

// New returns a registry over a database and an object store.
func New(st *store.Store, objs objects.Store, log *slog.Logger) *Service {
	return &Service{store: st, objects: objs, log: log}
}

var nameRE = regexp.MustCompile(`^[a-z0-9]([a-z0-9._-]{0,62})$`)

// ParseDigest accepts a SHA-256 as 64 lowercase hex digits, optionally
// prefixed "sha256:", and returns the bare hex.
func ParseDigest(s string) (string, error) {
	d := strings.TrimPrefix(s, "sha256:")
	if len(d) != 64 || strings.Trim(d, "0123456789abcdef") != "" {
		return "", fmt.Errorf("%w: digest %q: want sha256 as 64 lowercase hex digits, optionally prefixed sha256:", ErrInvalid, s)
	}
	return d, nil
}

func objectKey(digest string) string { return "modules/" + digest + ".wasm" }

// Upload reads a module (at most MaxSize bytes), validates it and stores
// it. Uploading bytes already stored changes nothing and returns the
// existing record with created false.
func (s *Service) Upload(ctx context.Context, r io.Reader, name, by string) (Module, bool, error) {
	if name != "" && !nameRE.MatchString(name) {
		return Module{}, false, fmt.Errorf("%w: name %q: want 1-63 of a-z 0-9 . _ -, starting with a letter or digit", ErrInvalid, name)
	}
	wasm, err := io.ReadAll(io.LimitReader(r, MaxSize+1))
	if err != nil {
		return Module{}, false, fmt.Errorf("read module: %w", err)
	}
	if len(wasm) > MaxSize {
		return Module{}, false, ErrTooLarge
	}
	rep, err := wasmcheck.Check(wasm)
	if err != nil {
		return Module{}, false, fmt.Errorf("%w: %w", ErrInvalid, err)
	}
	sum := sha256.Sum256(wasm)
	digest := hex.EncodeToString(sum[:])
	if m, err := s.store.ModuleByDigest(ctx, digest); err == nil {
		return view(m), false, nil
	} else if !errors.Is(err, store.ErrNotFound) {
		return Module{}, false, err
	}

	// Bytes first, row second: a row always has its object; an object left
	// without a row by a crash is simply reused by the next upload.
	size, stored, err := s.objects.Put(ctx, objectKey(digest), bytes.NewReader(wasm))
	if err != nil {
		return Module{}, false, fmt.Errorf("store module %s: %w", digest, err)
	}
	if stored != digest || size != int64(len(wasm)) {
		return Module{}, false, fmt.Errorf("store module %s: object store wrote %d bytes with sha256 %s", digest, size, stored)
	}
	exports, _ := json.Marshal(orEmpty(rep.Exports))
	imports, _ := json.Marshal(orEmpty(rep.Imports))
	row := &store.Module{
		Digest: digest, Name: name, SizeBytes: size, ABIVersion: int(rep.ABIVersion),
		MemoryMinPages: int64(rep.MemoryMinPages), Exports: string(exports), Imports: string(imports),
		UploadedBy: by, UploadedAt: time.Now().UTC(),
	}
	if rep.MemoryMaxPages != nil {
		v := int64(*rep.MemoryMaxPages)
		row.MemoryMaxPages = &v
	}
	if err := s.store.CreateModule(ctx, row); err != nil {
		if errors.Is(err, store.ErrConflict) { // the same bytes, uploaded concurrently
			m, err := s.store.ModuleByDigest(ctx, digest)
			if err != nil {
				return Module{}, false, err
			}
			return view(m), false, nil
		}
		return Module{}, false, err
	}
	s.log.Info("module uploaded", "digest", digest, "name", name, "bytes", size, "memory_min_pages", rep.MemoryMinPages, "by", by)
	return view(row), true, nil
}

// List returns every module, newest first.
func (s *Service) List(ctx context.Context) ([]Module, error) {
	rows, err := s.store.ListModules(ctx)
	if err != nil {
		return nil, err
	}
	out := make([]Module, len(rows))
	for i := range rows {
		out[i] = view(&rows[i])
	}
	return out, nil
}

// Get returns one module's metadata.
func (s *Service) Get(ctx context.Context, digest string) (Module, error) {
	d, err := ParseDigest(digest)
	if err != nil {
		return Module{}, err
	}
	m, err := s.store.ModuleByDigest(ctx, d)
	if err != nil {
		return Module{}, err
	}
	return view(m), nil
}

// Open returns a module's metadata and its bytes; the caller closes them.
func (s *Service) Open(ctx context.Context, digest string) (Module, io.ReadCloser, error) {
	m, err := s.Get(ctx, digest)
	if err != nil {
		return Module{}, nil, err
	}
	rc, err := s.objects.Get(ctx, objectKey(m.Digest))
	if err != nil {
		// A row without its bytes is damage (a 500), not an unknown module.
		return Module{}, nil, fmt.Errorf("module %s is recorded but its bytes are unreadable: %w", m.Digest, err)
	}
	return m, rc, nil
}

func view(m *store.Module) Module {
	out := Module{
		Digest: m.Digest, Name: m.Name, Size: m.SizeBytes, ABIVersion: m.ABIVersion,
		MemoryMinPages: m.MemoryMinPages, MemoryMaxPages: m.MemoryMaxPages,
		UploadedBy: m.UploadedBy, UploadedAt: m.UploadedAt.UTC(),
		Exports: []wasmcheck.Extern{}, Imports: []wasmcheck.Import{},
	}
	_ = json.Unmarshal([]byte(m.Exports), &out.Exports)
	_ = json.Unmarshal([]byte(m.Imports), &out.Imports)
	return out
}

func orEmpty[T any](s []T) []T {
	if s == nil {
		return []T{}
	}
	return s
}
