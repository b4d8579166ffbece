package modules

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"io"
	"log/slog"
	"path/filepath"
	"strings"
	"testing"

	"github.com/cloudskin/cloudskin/console/internal/objects"
	"github.com/cloudskin/cloudskin/console/internal/store"
	"github.com/cloudskin/cloudskin/shared/wasmcheck"
	wt "github.com/cloudskin/cloudskin/shared/wasmcheck/wasmtest"
)

func newService(t *testing.T) *Service {
	t.Helper()
	log := slog.New(slog.NewTextHandler(io.Discard, nil))
	dir := t.TempDir()
	st, err := store.Open(context.Background(), "", dir, log)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { st.Close() })
	objs, err := objects.NewFS(filepath.Join(dir, "objects"))
	if err != nil {
		t.Fatal(err)
	}
	return New(st, objs, log)
}

func TestModuleUploadIdempotent(t *testing.T) {
	s := newService(t)
	ctx := context.Background()
	wasm := wt.Cell(wt.Options{Init: true, Imports: true}).Bytes()
	sum := sha256.Sum256(wasm)
	digest := hex.EncodeToString(sum[:])

	m, created, err := s.Upload(ctx, bytes.NewReader(wasm), "aggregator", "admin")
	if err != nil || !created {
		t.Fatalf("upload: created=%v %v", created, err)
	}
	if m.Digest != digest || m.Size != int64(len(wasm)) || m.Name != "aggregator" || m.UploadedBy != "admin" ||
		m.ABIVersion != 1 || m.MemoryMinPages != 1 || m.MemoryMaxPages == nil || *m.MemoryMaxPages != 16 || len(m.Exports) != 7 || len(m.Imports) != 2 {
		t.Fatalf("module %+v", m)
	}
	again, created, err := s.Upload(ctx, bytes.NewReader(wasm), "other-name", "ops")
	if err != nil || created || again.Name != "aggregator" || again.UploadedBy != "admin" {
		t.Fatalf("second upload: created=%v %+v %v, want the first record", created, again, err)
	}
	got, rc, err := s.Open(ctx, "sha256:"+digest)
	if err != nil {
		t.Fatal(err)
	}
	defer rc.Close()
	if b, _ := io.ReadAll(rc); !bytes.Equal(b, wasm) || got.Digest != digest {
		t.Fatal("read back different bytes")
	}
	list, err := s.List(ctx)
	if err != nil || len(list) != 1 {
		t.Fatalf("list %v %v", list, err)
	}
}

func TestModuleUploadRefused(t *testing.T) {
	s := newService(t)
	ctx := context.Background()
	valid := wt.Cell(wt.Options{}).Bytes()
	tests := []struct {
		name, modName string
		body          io.Reader
		want          error
	}{
		{"not wasm", "", strings.NewReader("hello"), wasmcheck.ErrNotWasm},
		{"missing export", "", bytes.NewReader(wt.Cell(wt.Options{Skip: map[string]bool{"cloudskin_handle": true}}).Bytes()), wasmcheck.ErrABI},
		{"bad name", "Bad Name", bytes.NewReader(valid), ErrInvalid},
		{"too large", "", io.MultiReader(bytes.NewReader(valid), bytes.NewReader(make([]byte, MaxSize))), ErrTooLarge},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if _, _, err := s.Upload(ctx, tt.body, tt.modName, "admin"); !errors.Is(err, tt.want) {
				t.Fatalf("got %v, want %v", err, tt.want)
			}
		})
	}
	if list, _ := s.List(ctx); len(list) != 0 {
		t.Fatalf("refused uploads were recorded: %v", list)
	}
	for _, d := range []string{"", "abc", strings.Repeat("A", 64), "sha512:" + strings.Repeat("a", 64), "../" + strings.Repeat("a", 61)} {
		if _, err := s.Get(ctx, d); !errors.Is(err, ErrInvalid) {
			t.Errorf("digest %q: %v, want ErrInvalid", d, err)
		}
	}
	if _, err := s.Get(ctx, strings.Repeat("a", 64)); !errors.Is(err, store.ErrNotFound) {
		t.Fatalf("unknown digest: %v", err)
	}
}
