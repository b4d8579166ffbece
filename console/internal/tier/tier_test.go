package tier_test

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/minio/minio-go/v7"

	"github.com/cloudskin/cloudskin/console/internal/tier"
)

// TestSpillAndReadBack runs the agent's side of the protocol — request,
// PUT, commit — for three segments, then reads them back: listed, as bytes,
// as records by offset and by time.
func TestSpillAndReadBack(t *testing.T) {
	eachBackend(t, func(t *testing.T, e *env) {
		ctx := context.Background()
		segs := []seg{
			makeSegment(t, "edge-1", "temps", 0, 99, 64),
			// Over the API's 1 MiB body limit: the blob route is exempt.
			makeSegment(t, "edge-1", "temps", 100, 199, 20_000),
			makeSegment(t, "edge-1", "temps", 200, 299, 64),
		}
		var ids []string
		for _, s := range segs {
			ids = append(ids, e.spill("edge-1", "temps", s))
		}
		if segs[1].req.Bytes <= 1<<20 {
			t.Fatalf("segment 2 is only %d bytes", segs[1].req.Bytes)
		}

		// Asking again for a committed segment: same id, nothing to upload.
		tk := e.mustRequest("edge-1", "temps", segs[0])
		if tk.ID != ids[0] || !tk.Committed || tk.Upload != nil {
			t.Fatalf("re-request after commit: %+v, want id %s committed", tk, ids[0])
		}
		// Committing again is fine too.
		if r := e.commit("edge-1", "temps", ids[0]); r.code != http.StatusOK {
			t.Fatalf("second commit: %s", r)
		}

		// Listing, by the node and by an operator.
		for _, who := range []string{"node:edge-1", "jwt:" + e.opJWT} {
			var list struct{ Segments []tier.Segment }
			r := e.do(http.MethodGet, segPath("edge-1", "temps")+"?from=150", who, nil, nil)
			r.decode(t, &list)
			if r.code != http.StatusOK || len(list.Segments) != 2 || list.Segments[0].ID != ids[1] || list.Segments[1].ID != ids[2] {
				t.Fatalf("list from 150 as %s: %s", who, r)
			}
			got := list.Segments[0]
			if got.First != 100 || got.Last != 199 || got.Count != 100 || got.Bytes != segs[1].req.Bytes || got.SHA256 != segs[1].req.SHA256 ||
				!got.Committed || got.CommittedAt == nil || !got.MinTime.Equal(segs[1].req.MinTime) || !got.MaxTime.Equal(segs[1].req.MaxTime) {
				t.Fatalf("listed segment %+v", got)
			}
		}
		r := e.do(http.MethodGet, segPath("edge-1", "temps")+"?limit=1", "node:edge-1", nil, nil)
		var list struct{ Segments []tier.Segment }
		r.decode(t, &list)
		if len(list.Segments) != 1 || list.Segments[0].ID != ids[0] {
			t.Fatalf("list limit 1: %s", r)
		}

		// The bytes, through the console.
		for i, id := range ids {
			r := e.do(http.MethodGet, segPath("edge-1", "temps")+"/"+id+"/blob", "jwt:"+e.opJWT, nil, nil)
			if r.code != http.StatusOK || !bytes.Equal(r.body, segs[i].blob) || r.hdr.Get("ETag") != `"`+segs[i].req.SHA256+`"` {
				t.Fatalf("blob %d: %d, %d bytes, etag %s", i, r.code, len(r.body), r.hdr.Get("ETag"))
			}
		}

		// Records by offset, across segment boundaries.
		for _, tc := range []struct {
			from       uint64
			limit      int
			first, n   int
			wantNext   uint64
			sharedRead bool
		}{
			{from: 0, limit: 50, first: 0, n: 50, wantNext: 50},
			{from: 150, limit: 100, first: 150, n: 100, wantNext: 250},
			{from: 250, limit: 1000, first: 250, n: 50, wantNext: 300},
			{from: 300, limit: 10, n: 0, wantNext: 300},
		} {
			recs, next, err := e.tier.ReadRecords(ctx, "edge-1", "temps", tc.from, tc.limit)
			if err != nil || len(recs) != tc.n || next != tc.wantNext {
				t.Fatalf("read from %d limit %d: %d records, next %d, %v", tc.from, tc.limit, len(recs), next, err)
			}
			for i, r := range recs {
				off := uint64(tc.first + i)
				want := segs[off/100].recs[off%100]
				if r.Offset != off || !r.Time.Equal(want.Time) || r.Topic != want.Topic || !bytes.Equal(r.Payload, want.Payload) || r.Headers["n"] != want.Headers["n"] {
					t.Fatalf("record %d: %+v", off, r)
				}
			}
		}

		// Records by time: record i is at epoch + i s.
		for _, tc := range []struct {
			at   time.Time
			want uint64
			ok   bool
		}{
			{epoch.Add(-time.Hour), 0, true},
			{epoch.Add(123 * time.Second), 123, true},
			{epoch.Add(123*time.Second + time.Millisecond), 124, true},
			{epoch.Add(299 * time.Second), 299, true},
			{epoch.Add(300 * time.Second), 0, false},
		} {
			off, ok, err := e.tier.OffsetAt(ctx, "edge-1", "temps", tc.at)
			if err != nil || ok != tc.ok || off != tc.want {
				t.Errorf("offset at %s: %d %v %v, want %d %v", tc.at, off, ok, err, tc.want, tc.ok)
			}
		}

		first, next, spilled, ok, err := e.tier.Range(ctx, "edge-1", "temps")
		total := segs[0].req.Bytes + segs[1].req.Bytes + segs[2].req.Bytes
		if err != nil || !ok || first != 0 || next != 300 || spilled != total {
			t.Fatalf("range %d %d %d %v %v", first, next, spilled, ok, err)
		}
		if _, _, _, ok, err := e.tier.Range(ctx, "edge-2", "temps"); ok || err != nil {
			t.Fatalf("range of an empty stream: %v %v", ok, err)
		}
		if got := e.metric("cloudskin_console_tier_segments_committed_total", nil); got != 3 {
			t.Fatalf("segments committed metric %v, want 3", got)
		}
		if got := e.metric("cloudskin_console_tier_committed_bytes_total", nil); got != float64(total) {
			t.Fatalf("committed bytes metric %v, want %d", got, total)
		}
	})
}

// TestRequestIdempotentAndConflicts: asking twice is safe; asking for
// something else at the same offsets is a conflict that names what exists.
func TestRequestIdempotentAndConflicts(t *testing.T) {
	eachBackend(t, func(t *testing.T, e *env) {
		a := makeSegment(t, "edge-1", "temps", 10, 19, 32)
		t1 := e.mustRequest("edge-1", "temps", a)
		t2 := e.mustRequest("edge-1", "temps", a)
		if t1.ID != t2.ID || t2.Committed || t2.Upload == nil {
			t.Fatalf("the same request twice: %+v then %+v", t1, t2)
		}
		// Other content from the same offset, overlapping ranges: 409.
		other := makeSegment(t, "edge-1", "temps", 10, 19, 33)
		for name, s := range map[string]seg{
			"same first, other sha256": other,
			"same first, longer":       makeSegment(t, "edge-1", "temps", 10, 25, 32),
			"overlapping from below":   makeSegment(t, "edge-1", "temps", 5, 10, 32),
			"overlapping inside":       makeSegment(t, "edge-1", "temps", 12, 14, 32),
			"overlapping from above":   makeSegment(t, "edge-1", "temps", 19, 30, 32),
		} {
			r := e.request("edge-1", "temps", s.req)
			var body struct {
				Error  string
				Detail tier.Segment
			}
			r.decode(t, &body)
			if r.code != http.StatusConflict || body.Detail.ID != t1.ID || body.Detail.First != 10 || body.Detail.Last != 19 {
				t.Errorf("%s: %s, want 409 naming segment %s", name, r, t1.ID)
			}
		}
		// Adjacent ranges, another stream, another node: no conflict.
		e.mustRequest("edge-1", "temps", makeSegment(t, "edge-1", "temps", 20, 29, 32))
		e.mustRequest("edge-1", "temps", makeSegment(t, "edge-1", "temps", 0, 9, 32))
		e.mustRequest("edge-1", "hums", makeSegment(t, "edge-1", "hums", 10, 19, 32))
		e.mustRequest("edge-2", "temps", makeSegment(t, "edge-2", "temps", 10, 19, 32))

		// After the commit, the same request answers committed, a
		// different one still conflicts.
		if r := e.upload(t2.Upload, a.blob); r.code != http.StatusOK {
			t.Fatalf("upload: %s", r)
		}
		if r := e.commit("edge-1", "temps", t1.ID); r.code != http.StatusOK {
			t.Fatalf("commit: %s", r)
		}
		if tk := e.mustRequest("edge-1", "temps", a); tk.ID != t1.ID || !tk.Committed || tk.Upload != nil {
			t.Fatalf("after commit: %+v", tk)
		}
		if r := e.request("edge-1", "temps", other.req); r.code != http.StatusConflict {
			t.Fatalf("other content after commit: %s", r)
		}
		if got := e.metric("cloudskin_console_tier_upload_requests_total", map[string]string{"result": "conflict"}); got != 6 {
			t.Fatalf("conflicts counted %v, want 6", got)
		}
	})
}

// TestCorruptUploadRefused: a body that is not what the agent declared is
// refused at the PUT — by the console's blob endpoint, or by S3 itself
// because Content-MD5 is a signed header — and a commit without a good
// object is refused, so the agent keeps its copy and uploads again.
func TestCorruptUploadRefused(t *testing.T) {
	eachBackend(t, func(t *testing.T, e *env) {
		s := makeSegment(t, "edge-1", "temps", 0, 49, 100)
		tk := e.mustRequest("edge-1", "temps", s)

		if r := e.commit("edge-1", "temps", tk.ID); r.code != http.StatusConflict || !strings.Contains(r.errorText(), "upload it again") {
			t.Fatalf("commit before any upload: %s", r)
		}
		bad := bytes.Clone(s.blob)
		bad[len(bad)/2] ^= 0x01
		if r := e.upload(tk.Upload, bad); r.code != http.StatusBadRequest {
			t.Fatalf("corrupted body: %s, want 400", r)
		}
		if r := e.commit("edge-1", "temps", tk.ID); r.code != http.StatusConflict {
			t.Fatalf("commit after a refused upload: %s", r)
		}
		if got := e.metric("cloudskin_console_tier_commit_failures_total", map[string]string{"reason": "missing"}); got != 2 {
			t.Fatalf("missing-object commit failures %v, want 2", got)
		}
		if r := e.upload(tk.Upload, s.blob); r.code != http.StatusOK {
			t.Fatalf("good body: %s", r)
		}
		if e.backend == "fs" {
			// A bad retry does not replace a good upload.
			if r := e.upload(tk.Upload, bad); r.code != http.StatusBadRequest {
				t.Fatalf("corrupted retry: %s", r)
			}
			if r := e.upload(tk.Upload, s.blob[:len(s.blob)-1]); r.code != http.StatusBadRequest {
				t.Fatalf("short body: %s", r)
			}
			if r := e.upload(tk.Upload, append(bytes.Clone(s.blob), 0)); r.code != http.StatusRequestEntityTooLarge {
				t.Fatalf("long body: %s", r)
			}
			if got := e.metric("cloudskin_console_tier_uploads_refused_total", nil); got != 4 {
				t.Fatalf("uploads refused %v, want 4", got)
			}
		}
		if r := e.commit("edge-1", "temps", tk.ID); r.code != http.StatusOK {
			t.Fatalf("commit after a good upload: %s", r)
		}
		if e.backend == "fs" {
			// A committed object is never replaced.
			if r := e.upload(tk.Upload, s.blob); r.code != http.StatusConflict {
				t.Fatalf("upload after commit: %s", r)
			}
		}
		recs, _, err := e.tier.ReadRecords(context.Background(), "edge-1", "temps", 0, 100)
		if err != nil || len(recs) != 50 {
			t.Fatalf("read back: %d %v", len(recs), err)
		}
	})
}

// TestCommitChecksObject: an object replaced behind the console's back
// (size or content) is not committed.
func TestCommitChecksObject(t *testing.T) {
	eachBackend(t, func(t *testing.T, e *env) {
		s := makeSegment(t, "edge-1", "temps", 0, 9, 10)
		tk := e.mustRequest("edge-1", "temps", s)
		if r := e.upload(tk.Upload, s.blob); r.code != http.StatusOK {
			t.Fatal(r)
		}
		bad := bytes.Clone(s.blob)
		bad[20] ^= 1
		e.overwrite(tk.ID, bad)
		if r := e.commit("edge-1", "temps", tk.ID); r.code != http.StatusConflict || !strings.Contains(r.errorText(), "checksum") {
			t.Fatalf("commit of a changed object: %s", r)
		}
		e.overwrite(tk.ID, s.blob[:30])
		if r := e.commit("edge-1", "temps", tk.ID); r.code != http.StatusConflict || !strings.Contains(r.errorText(), "size") {
			t.Fatalf("commit of a truncated object: %s", r)
		}
		if got := e.metric("cloudskin_console_tier_commit_failures_total", nil); got != 2 {
			t.Fatalf("commit failures %v", got)
		}
	})
}

// TestCorruptStoredSegment: a committed segment whose object changed later
// fails verification on read (500) instead of returning wrong records.
func TestCorruptStoredSegment(t *testing.T) {
	eachBackend(t, func(t *testing.T, e *env) {
		s := makeSegment(t, "edge-1", "temps", 0, 9, 10)
		id := e.spill("edge-1", "temps", s)
		bad := bytes.Clone(s.blob)
		bad[40] ^= 1
		e.overwrite(id, bad)
		_, _, err := e.tier.ReadRecords(context.Background(), "edge-1", "temps", 0, 10)
		if !errors.Is(err, tier.ErrCorrupt) {
			t.Fatalf("read of a damaged segment: %v", err)
		}
		if got := e.metric("cloudskin_console_tier_corrupt_segments_total", nil); got != 1 {
			t.Fatalf("corrupt segments metric %v", got)
		}
	})
}

// overwrite replaces a segment's stored object directly in the backend.
func (e *env) overwrite(id string, b []byte) {
	e.t.Helper()
	var key string
	filepath.WalkDir(e.objDir, func(path string, d os.DirEntry, err error) error {
		if err == nil && strings.Contains(d.Name(), id) {
			key, _ = filepath.Rel(e.objDir, path)
		}
		return nil
	})
	if e.backend == "fs" {
		if key == "" {
			e.t.Fatalf("no object for %s", id)
		}
		if err := os.WriteFile(filepath.Join(e.objDir, key), b, 0o600); err != nil {
			e.t.Fatal(err)
		}
		return
	}
	c := e.s3.Client()
	ctx := context.Background()
	for obj := range c.ListObjects(ctx, e.s3.Bucket, minio.ListObjectsOptions{Recursive: true}) {
		if obj.Err != nil {
			e.t.Fatal(obj.Err)
		}
		if strings.Contains(obj.Key, id) {
			if _, err := c.PutObject(ctx, e.s3.Bucket, obj.Key, bytes.NewReader(b), int64(len(b)), minio.PutObjectOptions{}); err != nil {
				e.t.Fatal(err)
			}
			return
		}
	}
	e.t.Fatalf("no S3 object for %s", id)
}

// TestUploadURLs: the console's upload URL is signed and expires; S3's
// presigned URL expires too.
func TestUploadURLs(t *testing.T) {
	eachBackendWith(t, options{uploadTTL: time.Second}, func(t *testing.T, e *env) {
		s := makeSegment(t, "edge-1", "temps", 0, 9, 10)
		tk := e.mustRequest("edge-1", "temps", s)
		if e.backend == "fs" {
			if !strings.HasPrefix(tk.Upload.URL, tier.BlobRoute+tk.ID+"?") {
				t.Fatalf("upload url %s", tk.Upload.URL)
			}
			forge := func(from, to string) *tier.Upload {
				up := *tk.Upload
				up.URL = strings.Replace(up.URL, from, to, 1)
				if up.URL == tk.Upload.URL {
					t.Fatalf("%q not in %s", from, up.URL)
				}
				return &up
			}
			other := e.mustRequest("edge-1", "temps", makeSegment(t, "edge-1", "temps", 10, 19, 10))
			for name, up := range map[string]*tier.Upload{
				"forged signature": forge("sig=", "sig=00"),
				"later expiry":     forge("exp=", "exp=9"),
				"no signature":     {Method: http.MethodPut, URL: tier.BlobRoute + tk.ID, Headers: tk.Upload.Headers},
				"another segment":  forge(tk.ID, other.ID),
			} {
				if r := e.upload(up, s.blob); r.code != http.StatusForbidden {
					t.Errorf("%s: %s, want 403", name, r)
				}
			}
			if got := e.metric("cloudskin_console_tier_uploads_refused_total", map[string]string{"reason": "bad_signature"}); got != 4 {
				t.Fatalf("bad signatures counted %v", got)
			}
		} else if !strings.HasPrefix(tk.Upload.URL, e.s3.URL()+"/") || !strings.Contains(strings.ToLower(tk.Upload.URL), "content-md5") {
			t.Fatalf("presigned url %s", tk.Upload.URL)
		}
		if tk.Upload.Headers["Content-MD5"] == "" || !tk.Upload.ExpiresAt.After(time.Now().Add(-time.Second)) {
			t.Fatalf("upload %+v", tk.Upload)
		}
		time.Sleep(time.Until(tk.Upload.ExpiresAt) + 1100*time.Millisecond)
		if r := e.upload(tk.Upload, s.blob); r.code != http.StatusForbidden {
			t.Fatalf("expired URL: %s, want 403", r)
		}
		// Asking again hands out a fresh URL for the same segment.
		again := e.mustRequest("edge-1", "temps", s)
		if again.ID != tk.ID {
			t.Fatalf("re-request: %+v", again)
		}
		if r := e.upload(again.Upload, s.blob); r.code != http.StatusOK {
			t.Fatalf("fresh URL: %s", r)
		}
	})
}

// TestAuthorization: nodes act only on their own streams; operators read.
func TestAuthorization(t *testing.T) {
	eachBackend(t, func(t *testing.T, e *env) {
		s := makeSegment(t, "edge-1", "temps", 0, 9, 10)
		id := e.spill("edge-1", "temps", s)
		body := func() *bytes.Reader {
			b, _ := json.Marshal(s.req)
			return bytes.NewReader(b)
		}
		js := map[string]string{"Content-Type": "application/json"}
		p := segPath("edge-1", "temps")
		for _, tc := range []struct {
			name, method, path, auth string
			body                     bool
			want                     int
		}{
			{"another node requests", http.MethodPost, p, "node:edge-2", true, http.StatusForbidden},
			{"another node commits", http.MethodPost, p + "/" + id + "/commit", "node:edge-2", false, http.StatusForbidden},
			{"another node lists", http.MethodGet, p, "node:edge-2", false, http.StatusForbidden},
			{"another node reads", http.MethodGet, p + "/" + id + "/blob", "node:edge-2", false, http.StatusForbidden},
			{"commit via own path, other's id", http.MethodPost, segPath("edge-2", "temps") + "/" + id + "/commit", "node:edge-2", false, http.StatusNotFound},
			{"read via own path, other's id", http.MethodGet, segPath("edge-2", "temps") + "/" + id + "/blob", "node:edge-2", false, http.StatusNotFound},
			{"wrong credential", http.MethodPost, p, "node:edge-1:csnc_wrong", true, http.StatusUnauthorized},
			{"no credential", http.MethodPost, p, "", true, http.StatusUnauthorized},
			{"operator requests", http.MethodPost, p, "jwt:" + e.opJWT, true, http.StatusUnauthorized},
			{"viewer lists", http.MethodGet, p, "jwt:" + e.viewJWT, false, http.StatusForbidden},
			{"viewer reads", http.MethodGet, p + "/" + id + "/blob", "jwt:" + e.viewJWT, false, http.StatusForbidden},
			{"anonymous lists", http.MethodGet, p, "", false, http.StatusUnauthorized},
			{"bad token", http.MethodGet, p, "jwt:nope", false, http.StatusUnauthorized},
			{"unknown segment", http.MethodGet, p + "/seg_00000000000000000000000000000000/blob", "node:edge-1", false, http.StatusNotFound},
			{"malformed id", http.MethodPost, p + "/..%2f..%2fx/commit", "node:edge-1", false, http.StatusNotFound},
			{"operator reads", http.MethodGet, p + "/" + id + "/blob", "jwt:" + e.opJWT, false, http.StatusOK},
		} {
			var r reply
			if tc.body {
				r = e.do(tc.method, tc.path, tc.auth, body(), js)
			} else {
				r = e.do(tc.method, tc.path, tc.auth, nil, nil)
			}
			if r.code != tc.want {
				t.Errorf("%s: %s, want %d", tc.name, r, tc.want)
			}
		}
	})
}

// TestBadRequests: malformed, oversized or invalid input is a 400 (413 for
// a body over the limit) and changes nothing.
func TestBadRequests(t *testing.T) {
	eachBackend(t, func(t *testing.T, e *env) {
		good := makeSegment(t, "edge-1", "temps", 0, 9, 10).req
		mod := func(f func(r *tier.UploadRequest)) tier.UploadRequest { r := good; f(&r); return r }
		for name, req := range map[string]any{
			"first after last": mod(func(r *tier.UploadRequest) { r.First, r.Last = 10, 9 }),
			"count mismatch":   mod(func(r *tier.UploadRequest) { r.Count = 11 }),
			"huge offsets":     mod(func(r *tier.UploadRequest) { r.First, r.Last, r.Count = 1<<63, 1<<63+9, 10 }),
			"over 1 GiB":       mod(func(r *tier.UploadRequest) { r.Bytes = 1<<30 + 1 }),
			"zero bytes":       mod(func(r *tier.UploadRequest) { r.Bytes = 0 }),
			"negative bytes":   mod(func(r *tier.UploadRequest) { r.Bytes = -5 }),
			"short sha256":     mod(func(r *tier.UploadRequest) { r.SHA256 = r.SHA256[:63] }),
			"sha256 not hex":   mod(func(r *tier.UploadRequest) { r.SHA256 = strings.Repeat("g", 64) }),
			"md5 too long":     mod(func(r *tier.UploadRequest) { r.MD5 += "00" }),
			"no times":         mod(func(r *tier.UploadRequest) { r.MinTime, r.MaxTime = time.Time{}, time.Time{} }),
			"min after max":    mod(func(r *tier.UploadRequest) { r.MinTime = r.MaxTime.Add(time.Second) }),
			"unknown field":    map[string]any{"first": 0, "last": 9, "count": 10, "surprise": true},
			"negative first":   map[string]any{"first": -1, "last": 9, "count": 10},
		} {
			if r := e.request("edge-1", "temps", req); r.code != http.StatusBadRequest {
				t.Errorf("%s: %s, want 400", name, r)
			}
		}
		raw := func(stream, body string, hdr map[string]string) reply {
			return e.do(http.MethodPost, segPath("edge-1", stream), "node:edge-1", strings.NewReader(body), hdr)
		}
		js := map[string]string{"Content-Type": "application/json"}
		b, _ := json.Marshal(good)
		for name, tc := range map[string]struct {
			r    reply
			want int
		}{
			"not JSON":            {raw("temps", "{first:", js), http.StatusBadRequest},
			"two values":          {raw("temps", string(b)+string(b), js), http.StatusBadRequest},
			"empty body":          {raw("temps", "", js), http.StatusBadRequest},
			"stream name invalid": {raw("Temps!", string(b), js), http.StatusBadRequest},
			"stream name long":    {raw(strings.Repeat("s", 64), string(b), js), http.StatusBadRequest},
			"wrong content type":  {raw("temps", string(b), map[string]string{"Content-Type": "text/plain"}), http.StatusUnsupportedMediaType},
			"body over 1 MiB":     {raw("temps", `{"sha256":"`+strings.Repeat("a", 2<<20)+`"}`, js), http.StatusRequestEntityTooLarge},
			"list: bad from":      {e.do(http.MethodGet, segPath("edge-1", "temps")+"?from=-1", "node:edge-1", nil, nil), http.StatusBadRequest},
			"list: bad limit":     {e.do(http.MethodGet, segPath("edge-1", "temps")+"?limit=100000", "node:edge-1", nil, nil), http.StatusBadRequest},
			"list: bad stream":    {e.do(http.MethodGet, segPath("edge-1", "a%2Fb"), "node:edge-1", nil, nil), http.StatusBadRequest},
		} {
			if tc.r.code != tc.want {
				t.Errorf("%s: %s, want %d", name, tc.r, tc.want)
			}
		}
		var list struct{ Segments []tier.Segment }
		e.do(http.MethodGet, segPath("edge-1", "temps"), "node:edge-1", nil, nil).decode(t, &list)
		if len(list.Segments) != 0 {
			t.Fatalf("bad requests left segments: %+v", list.Segments)
		}
		// The service refuses bad reads too.
		ctx := context.Background()
		if _, _, err := e.tier.ReadRecords(ctx, "edge-1", "temps", 0, 0); !errors.Is(err, tier.ErrInvalid) {
			t.Fatalf("read limit 0: %v", err)
		}
		if _, _, err := e.tier.ReadRecords(ctx, "edge-1", "no/such", 0, 10); !errors.Is(err, tier.ErrInvalid) {
			t.Fatalf("read bad stream: %v", err)
		}
		if _, _, err := e.tier.OffsetAt(ctx, "EDGE", "temps", time.Now()); !errors.Is(err, tier.ErrInvalid) {
			t.Fatalf("offset at, bad node: %v", err)
		}
	})
}

// TestS3Outage: with S3 down, requests and commits answer 503 (nothing is
// recorded, nothing committed) and work again once it is back.
func TestS3Outage(t *testing.T) {
	for _, db := range []string{"sqlite", "postgres"} {
		t.Run(db, func(t *testing.T) {
			e := newEnv(t, "s3", db, options{})
			uploaded := makeSegment(t, "edge-1", "temps", 0, 9, 10)
			tk := e.mustRequest("edge-1", "temps", uploaded)
			if r := e.upload(tk.Upload, uploaded.blob); r.code != http.StatusOK {
				t.Fatal(r)
			}
			committed := makeSegment(t, "edge-1", "temps", 10, 19, 10)
			committedID := e.spill("edge-1", "temps", committed)
			fresh := makeSegment(t, "edge-1", "temps", 20, 29, 10)

			e.s3.Stop()
			if r := e.request("edge-1", "temps", fresh.req); r.code != http.StatusServiceUnavailable || !strings.Contains(r.errorText(), "unavailable") {
				t.Fatalf("request during the outage: %s, want 503", r)
			}
			if r := e.request("edge-1", "temps", uploaded.req); r.code != http.StatusServiceUnavailable {
				t.Fatalf("re-request of a pending segment during the outage: %s, want 503", r)
			}
			if r := e.commit("edge-1", "temps", tk.ID); r.code != http.StatusServiceUnavailable {
				t.Fatalf("commit during the outage: %s, want 503", r)
			}
			// What is committed is known without S3.
			if got := e.mustRequest("edge-1", "temps", committed); !got.Committed || got.ID != committedID {
				t.Fatalf("re-request of a committed segment during the outage: %+v", got)
			}
			if r := e.do(http.MethodGet, segPath("edge-1", "temps")+"/"+committedID+"/blob", "node:edge-1", nil, nil); r.code != http.StatusServiceUnavailable {
				t.Fatalf("blob during the outage: %s", r)
			}
			if _, _, err := e.tier.ReadRecords(context.Background(), "edge-1", "temps", 10, 10); !errors.Is(err, tier.ErrUnavail) {
				t.Fatalf("read during the outage: %v", err)
			}
			if got := e.metric("cloudskin_console_tier_commit_failures_total", map[string]string{"reason": "unavailable"}); got != 1 {
				t.Fatalf("unavailable commits counted %v", got)
			}

			e.s3.Start()
			if r := e.commit("edge-1", "temps", tk.ID); r.code != http.StatusOK {
				t.Fatalf("commit after the outage: %s", r)
			}
			e.spill("edge-1", "temps", fresh)
			recs, next, err := e.tier.ReadRecords(context.Background(), "edge-1", "temps", 0, 100)
			if err != nil || len(recs) != 30 || next != 30 {
				t.Fatalf("read after the outage: %d records, next %d, %v", len(recs), next, err)
			}
		})
	}
}

// TestBlobEndpointOnS3: a console running on S3 has no blob endpoint
// for uploads.
func TestBlobEndpointOnS3(t *testing.T) {
	e := newEnv(t, "s3", "sqlite", options{})
	s := makeSegment(t, "edge-1", "temps", 0, 9, 10)
	tk := e.mustRequest("edge-1", "temps", s)
	r := e.do(http.MethodPut, tier.BlobRoute+tk.ID+"?exp=9999999999&sig=00", "", bytes.NewReader(s.blob), nil)
	if r.code != http.StatusNotFound {
		t.Fatalf("blob PUT on an S3 console: %s", r)
	}
}

func TestConfig(t *testing.T) {
	for name, cfg := range map[string]tier.Config{
		"no secret":            {},
		"short secret":         {BlobSecret: []byte("short")},
		"s3 without bucket":    {S3Endpoint: "s3:9000", S3AccessKey: "a", S3SecretKey: "b"},
		"s3 without keys":      {S3Endpoint: "s3:9000", S3Bucket: "b"},
		"s3 endpoint with url": {S3Endpoint: "http://s3:9000", S3Bucket: "b", S3AccessKey: "a", S3SecretKey: "b"},
		"negative ttl":         {BlobSecret: make([]byte, 16), UploadTTL: -1},
	} {
		if _, err := tier.New(cfg, nil, nil, nil, nil); err == nil {
			t.Errorf("%s: accepted", name)
		}
	}
	if _, err := tier.New(tier.Config{BlobSecret: make([]byte, 16)}, nil, nil, nil, nil); err == nil {
		t.Error("no object store without S3: accepted")
	}
}

// TestReadAcrossGapsAndDelete: offsets no committed segment holds are
// skipped; a deleted segment is gone from reads, lists and the store.
func TestReadAcrossGapsAndDelete(t *testing.T) {
	e := newEnv(t, "fs", "sqlite", options{})
	ctx := context.Background()
	a := e.spill("edge-1", "temps", makeSegment(t, "edge-1", "temps", 0, 9, 10))
	e.spill("edge-1", "temps", makeSegment(t, "edge-1", "temps", 20, 29, 10))
	// Uploaded but never committed: not readable.
	pending := makeSegment(t, "edge-1", "temps", 30, 39, 10)
	tk := e.mustRequest("edge-1", "temps", pending)
	e.upload(tk.Upload, pending.blob)

	offsets := func(from uint64, limit int) (string, uint64) {
		recs, next, err := e.tier.ReadRecords(ctx, "edge-1", "temps", from, limit)
		if err != nil {
			t.Fatal(err)
		}
		var out []uint64
		for _, r := range recs {
			out = append(out, r.Offset)
		}
		if len(out) > 0 {
			return fmt.Sprint(out[0], "..", out[len(out)-1], " (", len(out), ")"), next
		}
		return "none", next
	}
	for _, tc := range []struct {
		from     uint64
		limit    int
		want     string
		wantNext uint64
	}{
		{5, 100, "5..29 (15)", 30},
		{12, 100, "20..29 (10)", 30},
		{5, 5, "5..9 (5)", 10},
		{10, 3, "20..22 (3)", 23},
		{30, 100, "none", 30},
	} {
		if got, next := offsets(tc.from, tc.limit); got != tc.want || next != tc.wantNext {
			t.Errorf("from %d limit %d: %s next %d, want %s next %d", tc.from, tc.limit, got, next, tc.want, tc.wantNext)
		}
	}
	if off, ok, _ := e.tier.OffsetAt(ctx, "edge-1", "temps", epoch.Add(15*time.Second)); !ok || off != 20 {
		t.Errorf("offset in the gap's time: %d %v, want 20", off, ok)
	}

	if err := e.tier.Delete(ctx, "edge-1", "temps", a); err != nil {
		t.Fatal(err)
	}
	if got, _ := offsets(0, 100); got != "20..29 (10)" {
		t.Fatalf("after delete: %s", got)
	}
	if err := e.tier.Delete(ctx, "edge-1", "temps", a); !errors.Is(err, tier.ErrNotFound) {
		t.Fatalf("delete twice: %v", err)
	}
	if r := e.do(http.MethodGet, segPath("edge-1", "temps")+"/"+a+"/blob", "node:edge-1", nil, nil); r.code != http.StatusNotFound {
		t.Fatalf("blob of a deleted segment: %s", r)
	}
	if r := e.do(http.MethodGet, segPath("edge-1", "temps")+"/"+tk.ID+"/blob", "node:edge-1", nil, nil); r.code != http.StatusNotFound {
		t.Fatalf("blob of an uncommitted segment: %s", r)
	}
	var files []string
	filepath.WalkDir(e.objDir, func(path string, d os.DirEntry, err error) error {
		if err == nil && !d.IsDir() {
			files = append(files, d.Name())
		}
		return nil
	})
	if len(files) != 2 || strings.Contains(strings.Join(files, " "), a) {
		t.Fatalf("objects after delete: %v", files)
	}
}
