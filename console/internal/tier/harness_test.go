package tier_test

import (
	"bytes"
	"context"
	"crypto/md5"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"net/url"
	"path/filepath"
	"strings"
	"testing"
	"time"

	dto "github.com/prometheus/client_model/go"

	"github.com/cloudskin/cloudskin/console/internal/api"
	"github.com/cloudskin/cloudskin/console/internal/auth"
	"github.com/cloudskin/cloudskin/console/internal/fleet"
	"github.com/cloudskin/cloudskin/console/internal/metrics"
	"github.com/cloudskin/cloudskin/console/internal/objects"
	"github.com/cloudskin/cloudskin/console/internal/store"
	"github.com/cloudskin/cloudskin/console/internal/tier"
	"github.com/cloudskin/cloudskin/shared/protocol"
	"github.com/cloudskin/cloudskin/shared/segment"
	"github.com/cloudskin/cloudskin/shared/testenv"
)

var quiet = slog.New(slog.NewTextHandler(io.Discard, nil))

// env is a console API with a cloud tier on one backend and one database,
// served over HTTP, with two enrolled nodes and two users' tokens.
type env struct {
	t       *testing.T
	backend string // "fs" or "s3"
	st      *store.Store
	tier    *tier.Service
	m       *metrics.Metrics
	srv     *httptest.Server
	s3      *testenv.S3 // nil on fs
	objDir  string
	creds   map[string]string // node → credential
	opJWT   string            // role operator
	viewJWT string            // a role without access to segments
}

type options struct {
	uploadTTL time.Duration
}

// eachBackend runs f against the console's own object store and a real S3
// server (versitygw), each on SQLite and on PostgreSQL.
func eachBackend(t *testing.T, f func(t *testing.T, e *env)) {
	eachBackendWith(t, options{}, f)
}

func eachBackendWith(t *testing.T, o options, f func(t *testing.T, e *env)) {
	for _, backend := range []string{"fs", "s3"} {
		for _, db := range []string{"sqlite", "postgres"} {
			t.Run(backend+"-"+db, func(t *testing.T) {
				f(t, newEnv(t, backend, db, o))
			})
		}
	}
}

func newEnv(t *testing.T, backend, db string, o options) *env {
	t.Helper()
	ctx := context.Background()
	dir := t.TempDir()
	dsn := ""
	if db == "postgres" {
		dsn = testenv.PostgresDB(t)
	}
	st, err := store.Open(ctx, dsn, dir, quiet)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { st.Close() })
	e := &env{t: t, backend: backend, st: st, m: metrics.New(), objDir: filepath.Join(dir, "objects"), creds: map[string]string{}}
	objs, err := objects.NewFS(e.objDir)
	if err != nil {
		t.Fatal(err)
	}
	cfg := tier.Config{BlobSecret: []byte("0123456789abcdef-test-secret"), UploadTTL: o.uploadTTL}
	if backend == "s3" {
		e.s3 = testenv.NewS3(t)
		cfg.S3Endpoint, cfg.S3Bucket, cfg.S3AccessKey, cfg.S3SecretKey, cfg.S3Region =
			e.s3.Endpoint, e.s3.Bucket, e.s3.AccessKey, e.s3.SecretKey, e.s3.Region
	}
	e.tier, err = tier.New(cfg, st, objs, e.m.Registry, quiet)
	if err != nil {
		t.Fatal(err)
	}
	fl := fleet.New(fleet.Config{Topics: protocol.NewTopics("cloudskin/v1")}, st, e.m, quiet)
	for _, node := range []string{"edge-1", "edge-2"} {
		tok, _, err := fl.CreateToken(ctx, time.Hour, "", "admin")
		if err != nil {
			t.Fatal(err)
		}
		resp, err := fl.Enroll(ctx, fleet.EnrollRequest{Token: tok, Name: node, Arch: "amd64", OS: "linux"})
		if err != nil {
			t.Fatal(err)
		}
		e.creds[node] = resp.Credential
	}
	// The users behind the tokens exist: the API checks the account on
	// every request.
	for name, role := range map[string]string{"ops": store.RoleOperator, "guest": "viewer"} {
		if err := st.CreateUser(ctx, &store.User{Username: name, PasswordHash: "x", Role: role, Status: store.UserActive}); err != nil {
			t.Fatal(err)
		}
	}
	tokens := auth.NewTokens([]byte("jwt-secret-for-tests-0123456789"), time.Hour)
	e.opJWT, _, _ = tokens.Issue("ops", store.RoleOperator)
	e.viewJWT, _, _ = tokens.Issue("guest", "viewer")
	a := &api.Server{Store: st, Fleet: fl, Tokens: tokens, Metrics: e.m, Log: quiet, Tier: e.tier,
		Ready: func(context.Context) error { return nil }}
	e.srv = httptest.NewServer(a.Handler())
	t.Cleanup(e.srv.Close)
	return e
}

// seg is one encoded segment and the request that declares it.
type seg struct {
	recs []segment.Record
	blob []byte
	req  tier.UploadRequest
}

var epoch = time.Date(2026, 11, 29, 8, 0, 0, 0, time.UTC)

// makeSegment encodes records first..last of node's stream; record i is at
// epoch + i seconds and carries payloadSize bytes.
func makeSegment(t testing.TB, node, stream string, first, last uint64, payloadSize int) seg {
	t.Helper()
	var recs []segment.Record
	for off := first; off <= last; off++ {
		p := bytes.Repeat([]byte{byte(off)}, payloadSize)
		copy(p, fmt.Sprintf(`{"offset":%d}`, off))
		recs = append(recs, segment.Record{
			Offset: off, Time: epoch.Add(time.Duration(off) * time.Second), Topic: "sensors/" + stream,
			Headers: map[string]string{"n": fmt.Sprint(off)}, Payload: p,
		})
	}
	hdr := segment.NewHeader(node, stream, recs)
	b, err := segment.Encode(hdr, recs)
	if err != nil {
		t.Fatal(err)
	}
	sha, m := sha256.Sum256(b), md5.Sum(b)
	return seg{recs: recs, blob: b, req: tier.UploadRequest{
		First: first, Last: last, Count: last - first + 1, MinTime: hdr.MinTime, MaxTime: hdr.MaxTime,
		Bytes: int64(len(b)), SHA256: hex.EncodeToString(sha[:]), MD5: hex.EncodeToString(m[:]),
	}}
}

// reply is an HTTP answer.
type reply struct {
	code int
	body []byte
	hdr  http.Header
}

func (r reply) String() string {
	return fmt.Sprintf("%d %s", r.code, testenv.Tail(string(r.body), 500))
}

// decode parses a JSON answer into v.
func (r reply) decode(t testing.TB, v any) {
	t.Helper()
	if err := json.Unmarshal(r.body, v); err != nil {
		t.Fatalf("answer %s: %v", r, err)
	}
}

// errorText is an error answer's message.
func (r reply) errorText() string {
	var e struct{ Error string }
	json.Unmarshal(r.body, &e)
	return e.Error
}

// do sends a request; auth is "node:NAME", "node:NAME:WRONG", "jwt:TOKEN" or "".
func (e *env) do(method, path, auth string, body io.Reader, hdr map[string]string) reply {
	e.t.Helper()
	u := path
	if !strings.HasPrefix(path, "http") {
		u = e.srv.URL + path
	}
	req, err := http.NewRequest(method, u, body)
	if err != nil {
		e.t.Fatal(err)
	}
	if b, ok := body.(*bytes.Reader); ok {
		req.ContentLength = int64(b.Len())
	}
	for k, v := range hdr {
		req.Header.Set(k, v)
	}
	switch kind, rest, _ := strings.Cut(auth, ":"); kind {
	case "node":
		name, wrong, _ := strings.Cut(rest, ":")
		secret := e.creds[name]
		if wrong != "" {
			secret = wrong
		}
		req.SetBasicAuth(name, secret)
	case "jwt":
		req.Header.Set("Authorization", "Bearer "+rest)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		e.t.Fatalf("%s %s: %v", method, path, err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return reply{code: resp.StatusCode, body: b, hdr: resp.Header}
}

func segPath(node, stream string) string {
	return "/api/v1/nodes/" + node + "/streams/" + stream + "/segments"
}

// request asks where to upload, as node.
func (e *env) request(node, stream string, req any) reply {
	e.t.Helper()
	b, _ := json.Marshal(req)
	return e.do(http.MethodPost, segPath(node, stream), "node:"+node, bytes.NewReader(b), map[string]string{"Content-Type": "application/json"})
}

// mustRequest asks and expects a ticket.
func (e *env) mustRequest(node, stream string, s seg) tier.Ticket {
	e.t.Helper()
	r := e.request(node, stream, s.req)
	if r.code != http.StatusOK {
		e.t.Fatalf("request %s/%s %d..%d: %s", node, stream, s.req.First, s.req.Last, r)
	}
	var tk tier.Ticket
	r.decode(e.t, &tk)
	return tk
}

// upload PUTs body where the ticket says, as an agent does: the URL is
// resolved against the console's base URL, the headers sent as given.
func (e *env) upload(up *tier.Upload, body []byte) reply {
	e.t.Helper()
	if up == nil {
		e.t.Fatal("no upload target in the ticket")
	}
	base, _ := url.Parse(e.srv.URL + "/")
	ref, err := url.Parse(up.URL)
	if err != nil {
		e.t.Fatalf("upload url %q: %v", up.URL, err)
	}
	return e.do(up.Method, base.ResolveReference(ref).String(), "", bytes.NewReader(body), up.Headers)
}

func (e *env) commit(node, stream, id string) reply {
	e.t.Helper()
	return e.do(http.MethodPost, segPath(node, stream)+"/"+id+"/commit", "node:"+node, nil, nil)
}

// spill runs the whole protocol for one segment and returns its id.
func (e *env) spill(node, stream string, s seg) string {
	e.t.Helper()
	tk := e.mustRequest(node, stream, s)
	if tk.Committed || tk.Upload == nil || tk.Upload.Method != http.MethodPut {
		e.t.Fatalf("new segment's ticket: %+v", tk)
	}
	if r := e.upload(tk.Upload, s.blob); r.code != http.StatusOK {
		e.t.Fatalf("upload: %s", r)
	}
	r := e.commit(node, stream, tk.ID)
	var got tier.Ticket
	r.decode(e.t, &got)
	if r.code != http.StatusOK || got.ID != tk.ID || !got.Committed {
		e.t.Fatalf("commit: %s", r)
	}
	return tk.ID
}

// metric is the value of a counter on the console's registry, summed over
// series whose labels include want.
func (e *env) metric(name string, want map[string]string) float64 {
	e.t.Helper()
	mfs, err := e.m.Registry.Gather()
	if err != nil {
		e.t.Fatal(err)
	}
	sum := 0.0
	for _, mf := range mfs {
		if mf.GetName() != name {
			continue
		}
	series:
		for _, m := range mf.GetMetric() {
			for k, v := range want {
				if !hasLabel(m, k, v) {
					continue series
				}
			}
			sum += m.GetCounter().GetValue()
		}
	}
	return sum
}

func hasLabel(m *dto.Metric, k, v string) bool {
	for _, l := range m.GetLabel() {
		if l.GetName() == k && l.GetValue() == v {
			return true
		}
	}
	return false
}
