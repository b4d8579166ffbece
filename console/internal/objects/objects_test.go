package objects

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"io"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

func newFS(t *testing.T) (*FS, string) {
	t.Helper()
	root := filepath.Join(t.TempDir(), "objects")
	s, err := NewFS(root)
	if err != nil {
		t.Fatal(err)
	}
	return s, root
}

func TestObjectRoundTrip(t *testing.T) {
	s, root := newFS(t)
	ctx := context.Background()
	data := bytes.Repeat([]byte("cell"), 100_000)
	n, sum, err := s.Put(ctx, "modules/abc.wasm", bytes.NewReader(data))
	want := sha256.Sum256(data)
	if err != nil || n != int64(len(data)) || sum != hex.EncodeToString(want[:]) {
		t.Fatalf("put: %d %s %v", n, sum, err)
	}
	rc, err := s.Get(ctx, "modules/abc.wasm")
	if err != nil {
		t.Fatal(err)
	}
	got, _ := io.ReadAll(rc)
	rc.Close()
	if !bytes.Equal(got, data) {
		t.Fatal("read back different bytes")
	}
	if _, ok := rc.(io.ReadSeeker); !ok {
		t.Fatal("a filesystem object is not seekable")
	}
	info, err := s.Stat(ctx, "modules/abc.wasm")
	if err != nil || info.Size != int64(len(data)) || info.Key != "modules/abc.wasm" {
		t.Fatalf("stat %+v %v", info, err)
	}
	// A second Put replaces the object whole.
	if _, _, err := s.Put(ctx, "modules/abc.wasm", strings.NewReader("v2")); err != nil {
		t.Fatal(err)
	}
	if info, _ := s.Stat(ctx, "modules/abc.wasm"); info.Size != 2 {
		t.Fatalf("size after replace %d", info.Size)
	}
	if err := s.Delete(ctx, "modules/abc.wasm"); err != nil {
		t.Fatal(err)
	}
	if err := s.Delete(ctx, "modules/abc.wasm"); err != nil {
		t.Fatalf("deleting a missing object: %v", err)
	}
	if _, err := s.Get(ctx, "modules/abc.wasm"); !errors.Is(err, ErrNotFound) {
		t.Fatalf("get after delete: %v", err)
	}
	assertNoTemp(t, root)
}

func TestObjectNotFound(t *testing.T) {
	s, _ := newFS(t)
	ctx := context.Background()
	if _, _, err := s.Put(ctx, "a", strings.NewReader("x")); err != nil {
		t.Fatal(err)
	}
	if _, _, err := s.Put(ctx, "dir/b", strings.NewReader("x")); err != nil {
		t.Fatal(err)
	}
	for _, key := range []string{"missing", "a/b", "dir"} {
		if _, err := s.Get(ctx, key); !errors.Is(err, ErrNotFound) {
			t.Errorf("get %q: %v, want ErrNotFound", key, err)
		}
		if _, err := s.Stat(ctx, key); !errors.Is(err, ErrNotFound) {
			t.Errorf("stat %q: %v, want ErrNotFound", key, err)
		}
	}
}

func TestObjectKeys(t *testing.T) {
	s, root := newFS(t)
	ctx := context.Background()
	outside := filepath.Join(filepath.Dir(root), "escaped")
	bad := []string{"", "/etc/passwd", "../escaped", "a/../../escaped", "a//b", "a/", ".tmp-1", "a/.hidden", ".", "..",
		`a\b`, "a b", "é", "a\x00b", strings.Repeat("k", MaxKeyLen+1)}
	for _, key := range bad {
		if _, _, err := s.Put(ctx, key, strings.NewReader("x")); !errors.Is(err, ErrInvalidKey) {
			t.Errorf("put %q: %v, want ErrInvalidKey", key, err)
		}
		if _, err := s.Get(ctx, key); !errors.Is(err, ErrInvalidKey) {
			t.Errorf("get %q: %v, want ErrInvalidKey", key, err)
		}
		if _, err := s.Stat(ctx, key); !errors.Is(err, ErrInvalidKey) {
			t.Errorf("stat %q: %v, want ErrInvalidKey", key, err)
		}
		if err := s.Delete(ctx, key); !errors.Is(err, ErrInvalidKey) {
			t.Errorf("delete %q: %v, want ErrInvalidKey", key, err)
		}
	}
	if _, err := os.Stat(outside); err == nil {
		t.Fatal("a key escaped the store")
	}
	for _, key := range []string{"a", "modules/0123abcdef.wasm", "A-b_c.d/e", strings.Repeat("k", MaxKeyLen)} {
		if err := ValidKey(key); err != nil {
			t.Errorf("valid key %q refused: %v", key, err)
		}
	}
}

type failing struct{ n int }

func (f *failing) Read(p []byte) (int, error) {
	if f.n == 0 {
		return 0, errors.New("disk on fire")
	}
	f.n--
	return copy(p, "data"), nil
}

func TestObjectPutFailureLeavesNothing(t *testing.T) {
	s, root := newFS(t)
	ctx := context.Background()
	if _, _, err := s.Put(ctx, "keep", strings.NewReader("old")); err != nil {
		t.Fatal(err)
	}
	if _, _, err := s.Put(ctx, "keep", &failing{n: 3}); err == nil || !strings.Contains(err.Error(), "disk on fire") {
		t.Fatalf("put from a failing reader: %v", err)
	}
	cancelled, cancel := context.WithCancel(ctx)
	cancel()
	if _, _, err := s.Put(cancelled, "new", strings.NewReader("x")); !errors.Is(err, context.Canceled) {
		t.Fatalf("put with a cancelled context: %v", err)
	}
	rc, err := s.Get(ctx, "keep")
	if err != nil {
		t.Fatal(err)
	}
	defer rc.Close()
	if got, _ := io.ReadAll(rc); string(got) != "old" {
		t.Fatalf("a failed put changed the object to %q", got)
	}
	if _, err := s.Stat(ctx, "new"); !errors.Is(err, ErrNotFound) {
		t.Fatalf("a cancelled put left an object: %v", err)
	}
	assertNoTemp(t, root)
}

func assertNoTemp(t *testing.T, root string) {
	t.Helper()
	filepath.WalkDir(root, func(path string, d os.DirEntry, err error) error {
		if err == nil && strings.HasPrefix(d.Name(), ".tmp-") {
			t.Errorf("temporary file left behind: %s", path)
		}
		return nil
	})
}
