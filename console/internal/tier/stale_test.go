package tier

import (
	"bytes"
	"context"
	"crypto/md5"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"io"
	"log/slog"
	"net/url"
	"path/filepath"
	"testing"
	"time"

	"github.com/cloudskin/cloudskin/console/internal/objects"
	"github.com/cloudskin/cloudskin/console/internal/store"
	"github.com/cloudskin/cloudskin/shared/segment"
)

func encoded(t *testing.T, first, last uint64, payload string) ([]byte, UploadRequest) {
	t.Helper()
	var recs []segment.Record
	for off := first; off <= last; off++ {
		recs = append(recs, segment.Record{Offset: off, Time: time.Unix(int64(off), 0), Payload: []byte(payload)})
	}
	hdr := segment.NewHeader("edge-1", "temps", recs)
	b, err := segment.Encode(hdr, recs)
	if err != nil {
		t.Fatal(err)
	}
	sha, m := sha256.Sum256(b), md5.Sum(b)
	return b, UploadRequest{First: first, Last: last, Count: last - first + 1, MinTime: hdr.MinTime, MaxTime: hdr.MaxTime,
		Bytes: int64(len(b)), SHA256: hex.EncodeToString(sha[:]), MD5: hex.EncodeToString(m[:])}
}

// TestAbandonedUploadGivesWay: an uncommitted segment blocks its offsets
// only while its upload could still happen; after that an agent that
// re-sealed those offsets differently (a crash before the commit) gets
// through, and the abandoned object is removed.
func TestAbandonedUploadGivesWay(t *testing.T) {
	ctx := context.Background()
	quiet := slog.New(slog.NewTextHandler(io.Discard, nil))
	dir := t.TempDir()
	st, err := store.Open(ctx, "", dir, quiet)
	if err != nil {
		t.Fatal(err)
	}
	defer st.Close()
	objs, _ := objects.NewFS(filepath.Join(dir, "objects"))
	s, err := New(Config{BlobSecret: bytes.Repeat([]byte("k"), 16)}, st, objs, nil, quiet)
	if err != nil {
		t.Fatal(err)
	}
	clock := time.Now()
	s.now = func() time.Time { return clock }

	oldBlob, oldReq := encoded(t, 0, 9, "old")
	old, err := s.Request(ctx, "edge-1", "temps", oldReq)
	if err != nil {
		t.Fatal(err)
	}
	u, err := url.Parse(old.Upload.URL)
	if err != nil {
		t.Fatal(err)
	}
	q := u.Query()
	if _, err := s.PutBlob(ctx, BlobUpload{ID: old.ID, Exp: q.Get("exp"), Sig: q.Get("sig"), ContentLength: -1, Body: bytes.NewReader(oldBlob)}); err != nil {
		t.Fatal(err)
	}
	_, newReq := encoded(t, 0, 14, "new")
	if _, err := s.Request(ctx, "edge-1", "temps", newReq); !errors.Is(err, ErrConflict) {
		t.Fatalf("over a fresh upload: %v", err)
	}
	clock = clock.Add(s.cfg.UploadTTL + staleGrace + time.Second)
	fresh, err := s.Request(ctx, "edge-1", "temps", newReq)
	if err != nil || fresh.ID == old.ID {
		t.Fatalf("over an abandoned upload: %+v %v", fresh, err)
	}
	if _, err := objs.Stat(ctx, objectKey("edge-1", "temps", 0, old.ID)); !errors.Is(err, objects.ErrNotFound) {
		t.Fatalf("abandoned object kept: %v", err)
	}
	if _, err := s.Commit(ctx, "edge-1", "temps", old.ID); !errors.Is(err, ErrNotFound) {
		t.Fatalf("commit of the abandoned segment: %v", err)
	}
}
