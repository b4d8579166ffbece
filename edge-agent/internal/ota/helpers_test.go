package ota

import (
	"bytes"
	"context"
	"crypto/ed25519"
	"crypto/sha256"
	"encoding/base64"
	"encoding/hex"
	"errors"
	"io"
	"log/slog"
	"math/rand/v2"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"runtime"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	bundle "github.com/cloudskin/cloudskin/shared/ota"
	"github.com/cloudskin/cloudskin/shared/protocol"
)

// keys makes a release key pair.
func keys(t *testing.T) (ed25519.PublicKey, ed25519.PrivateKey) {
	t.Helper()
	dir := t.TempDir()
	pub, err := bundle.CreateKeys(dir)
	if err != nil {
		t.Fatal(err)
	}
	priv, err := bundle.LoadPrivateKey(filepath.Join(dir, bundle.PrivateKeyFile))
	if err != nil {
		t.Fatal(err)
	}
	return pub, priv
}

// binaryFor is the fake agent binary of a release: a shell script, so a
// complete slot is recognisable by its content, padded with 512 KiB of
// incompressible comment so that the (gzip) bundle is large enough to cut
// a download in the middle of.
func binaryFor(version string) []byte {
	pad := make([]byte, 384<<10)
	rand.NewChaCha8([32]byte{byte(len(version))}).Read(pad)
	return []byte("#!/bin/sh\n# cloudskin-agent " + version + "\n# " + base64.StdEncoding.EncodeToString(pad) + "\n")
}

// makeBundle builds a signed bundle of the fake binary of version.
func makeBundle(t *testing.T, version, arch string, priv ed25519.PrivateKey) []byte {
	t.Helper()
	dir := t.TempDir()
	bin := filepath.Join(dir, BinaryName)
	if err := os.WriteFile(bin, binaryFor(version), 0o755); err != nil {
		t.Fatal(err)
	}
	notes := filepath.Join(dir, "NOTES")
	os.WriteFile(notes, []byte("release "+version+"\n"), 0o644)
	var buf bytes.Buffer
	if _, err := bundle.Build(&buf, version, arch, map[string]string{BinaryName: bin, "NOTES": notes}, priv); err != nil {
		t.Fatal(err)
	}
	return buf.Bytes()
}

func specFor(rollout string, b []byte, version string) *protocol.UpdateSpec {
	sum := sha256.Sum256(b)
	id := hex.EncodeToString(sum[:])
	return &protocol.UpdateSpec{Rollout: rollout, Bundle: id, Version: version, URL: "/api/v1/bundles/" + id + "/blob",
		SHA256: id, Size: int64(len(b)), HealthSeconds: 60}
}

// console serves bundles by URL path with Range support; drop makes the
// first n requests of a bundle die after that many bytes.
type console struct {
	srv *httptest.Server

	mu       sync.Mutex
	blobs    map[string][]byte
	drops    []int64 // per request, in order: cut the body after this many bytes
	hangs    []int64 // per request, in order: stop sending after this many bytes, without closing
	ranges   []string
	requests int
	noRange  bool
}

func newConsole(t *testing.T) *console {
	c := &console{blobs: map[string][]byte{}}
	c.srv = httptest.NewServer(http.HandlerFunc(c.serve))
	t.Cleanup(c.srv.Close)
	return c
}

func (c *console) add(spec *protocol.UpdateSpec, b []byte) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.blobs[spec.URL] = b
}

func (c *console) serve(w http.ResponseWriter, r *http.Request) {
	c.mu.Lock()
	b, ok := c.blobs[r.URL.Path]
	c.requests++
	c.ranges = append(c.ranges, r.Header.Get("Range"))
	var drop, hang int64 = -1, -1
	if len(c.drops) > 0 {
		drop, c.drops = c.drops[0], c.drops[1:]
	}
	if len(c.hangs) > 0 {
		hang, c.hangs = c.hangs[0], c.hangs[1:]
	}
	noRange := c.noRange
	c.mu.Unlock()
	if u, p, ok := r.BasicAuth(); !ok || u != "edge-1" || p != "secret" {
		http.Error(w, "unauthorized", http.StatusUnauthorized)
		return
	}
	if !ok {
		http.Error(w, `{"error":"no such bundle"}`, http.StatusNotFound)
		return
	}
	if noRange {
		r.Header.Del("Range")
	}
	var rs io.ReadSeeker = bytes.NewReader(b)
	if drop >= 0 {
		rs = &dropper{ReadSeeker: rs, left: drop}
	}
	if hang >= 0 {
		rs = &dropper{ReadSeeker: rs, left: hang, hang: r.Context().Done(), w: w}
	}
	http.ServeContent(w, r, "bundle.tar", time.Time{}, rs)
}

func (c *console) stats() (int, []string) {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.requests, append([]string(nil), c.ranges...)
}

// dropper fails reads after left bytes: the response is cut mid-way. With
// hang, it first sends what it has and waits until the client goes away.
type dropper struct {
	io.ReadSeeker
	left int64
	hang <-chan struct{}
	w    http.ResponseWriter
}

func (d *dropper) Read(p []byte) (int, error) {
	if d.left <= 0 {
		if d.hang != nil {
			http.NewResponseController(d.w).Flush()
			<-d.hang
		}
		return 0, errors.New("connection dropped")
	}
	if int64(len(p)) > d.left {
		p = p[:d.left]
	}
	n, err := d.ReadSeeker.Read(p)
	d.left -= int64(n)
	return n, err
}

// rig is one agent process's updater against a fake console.
type rig struct {
	t        *testing.T
	dataDir  string
	dir      string // DATA/ota
	factory  string // the packaged binary
	con      *console
	pub      ed25519.PublicKey
	priv     ed25519.PrivateKey
	healthy  atomic.Bool
	why      atomic.Value
	restarts atomic.Int32

	mu     sync.Mutex
	events []eventRec
}

type eventRec struct {
	kind, msg string
	d         Detail
}

func newRig(t *testing.T) *rig {
	t.Helper()
	r := &rig{t: t, dataDir: t.TempDir(), con: newConsole(t)}
	r.dir = filepath.Join(r.dataDir, "ota")
	r.pub, r.priv = keys(t)
	r.factory = filepath.Join(t.TempDir(), "usr-bin", BinaryName)
	os.MkdirAll(filepath.Dir(r.factory), 0o755)
	if err := os.WriteFile(r.factory, binaryFor("1.0.0"), 0o755); err != nil {
		t.Fatal(err)
	}
	r.why.Store("not connected to the console's MQTT broker tcp://127.0.0.1:1")
	return r
}

// process starts an updater as a process of version running exe would.
func (r *rig) process(version, exe string, mod ...func(*Config)) *Updater {
	r.t.Helper()
	cfg := Config{
		Dir: r.dir, Version: version, Arch: runtime.GOARCH, Key: r.pub, Executable: exe,
		Get: func(ctx context.Context, path string, h http.Header) (*http.Response, error) {
			req, _ := http.NewRequestWithContext(ctx, http.MethodGet, r.con.srv.URL+path, nil)
			for k, v := range h {
				req.Header[k] = v
			}
			req.SetBasicAuth("edge-1", "secret")
			return r.con.srv.Client().Do(req)
		},
		Event: func(kind, msg string, d Detail) error {
			r.mu.Lock()
			defer r.mu.Unlock()
			r.events = append(r.events, eventRec{kind, msg, d})
			return nil
		},
		Healthy: func() (bool, string) {
			if r.healthy.Load() {
				return true, ""
			}
			return false, r.why.Load().(string)
		},
		Restart:        func() { r.restarts.Add(1) },
		Log:            slog.New(slog.NewTextHandler(io.Discard, nil)),
		HealthInterval: 10 * time.Millisecond,
		StallTimeout:   2 * time.Second,
		MaxBackoff:     20 * time.Millisecond,
	}
	for _, f := range mod {
		f(&cfg)
	}
	u, err := New(cfg)
	if err != nil {
		r.t.Fatal(err)
	}
	return u
}

// run runs u until it returns (a restart) or stop is called.
func (r *rig) run(u *Updater) (stop func(), done <-chan struct{}) {
	ctx, cancel := context.WithCancel(context.Background())
	ch := make(chan struct{})
	go func() {
		defer close(ch)
		u.Run(ctx)
	}()
	r.t.Cleanup(func() { cancel(); <-ch })
	return func() { cancel(); <-ch }, ch
}

// boot runs the boot selection as the service manager's start of the
// packaged binary would, without the exec: it returns the slot to run.
func (r *rig) boot(version string) (State, string) {
	r.t.Helper()
	b := &booter{dir: r.dir, version: version, log: slog.New(slog.NewTextHandler(io.Discard, nil)), exe: r.factory, now: time.Now}
	return b.selectSlot(SlotFactory)
}

func (r *rig) state() State {
	r.t.Helper()
	st, err := loadState(r.dir)
	if err != nil {
		r.t.Fatal(err)
	}
	return st
}

func (r *rig) kinds() []string {
	r.mu.Lock()
	defer r.mu.Unlock()
	var out []string
	for _, e := range r.events {
		out = append(out, e.kind)
	}
	return out
}

func (r *rig) lastEvent() eventRec {
	r.mu.Lock()
	defer r.mu.Unlock()
	if len(r.events) == 0 {
		return eventRec{}
	}
	return r.events[len(r.events)-1]
}

// waitFor polls cond until it holds.
func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

func waitPhase(t *testing.T, u *Updater, phase string) *protocol.UpdateStatus {
	t.Helper()
	var st *protocol.UpdateStatus
	waitFor(t, "phase "+phase, func() bool {
		st = u.Status()
		return st != nil && st.Phase == phase
	})
	return st
}

// binaryIn is the content of slot's binary ("" when missing).
func (r *rig) binaryIn(slot string) string {
	st, _ := loadState(r.dir)
	path := slotBinary(r.dir, slot)
	if slot == SlotFactory {
		path = st.Factory
		if path == "" {
			path = r.factory
		}
	}
	b, err := os.ReadFile(path)
	if err != nil {
		return ""
	}
	return string(b)
}
