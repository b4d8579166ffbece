package agent

import (
	"context"
	"encoding/json"
	"flag"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/cloudskin/cloudskin/edge-agent/internal/journal"
	"github.com/cloudskin/cloudskin/shared/config"
)

var quiet = slog.New(slog.NewTextHandler(io.Discard, nil))

func validConfig(t *testing.T) Config {
	c := DefaultConfig()
	c.Name = "edge-1"
	c.Data = t.TempDir()
	return c
}

func TestConfigValidate(t *testing.T) {
	tests := []struct {
		name   string
		change func(*Config)
		want   string // "" = valid
	}{
		{"defaults with a name", func(*Config) {}, ""},
		{"labels folded", func(c *Config) { c.Lat, c.Lon, c.PowerClass = "41.5", "1.6", "green" }, ""},
		{"no name", func(c *Config) { c.Name = "" }, "name:"},
		{"bad name", func(c *Config) { c.Name = "Edge_1" }, "name:"},
		{"console not a URL", func(c *Config) { c.Console = "localhost:8080" }, "console:"},
		{"lat not a number", func(c *Config) { c.Lat = "north" }, "lat:"},
		{"power class", func(c *Config) { c.PowerClass = "diesel" }, "power-class:"},
		{"interval too short", func(c *Config) { c.TelemetryInterval = time.Millisecond }, "telemetry-interval:"},
		{"heartbeat too long", func(c *Config) { c.Heartbeat = 2 * time.Hour }, "heartbeat:"},
		{"http not host:port", func(c *Config) { c.HTTP = "9180" }, "http:"},
		{"tiny outbox", func(c *Config) { c.OutboxMaxBytes = 1000 }, "outbox-max-bytes:"},
		{"power model", func(c *Config) { c.PowerIdleW, c.PowerMaxW = 50, 10 }, "power-idle-w"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			c := validConfig(t)
			tc.change(&c)
			err := c.Validate()
			if tc.want == "" {
				if err != nil {
					t.Fatal(err)
				}
				return
			}
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("error %v, want it to name %q", err, tc.want)
			}
		})
	}
	c := validConfig(t)
	c.Lat, c.PowerClass = "41.5", "grid"
	if err := c.Validate(); err != nil || c.Labels["lat"] != "41.5" || c.Labels["power"] != "grid" {
		t.Fatalf("labels %v (%v)", c.Labels, err)
	}
}

// fakeConsole answers enrollment with a scripted sequence of status codes.
func fakeConsole(t *testing.T, codes ...int) (*httptest.Server, *atomic.Int32) {
	t.Helper()
	var calls atomic.Int32
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		i := int(calls.Add(1)) - 1
		code := codes[min(i, len(codes)-1)]
		w.Header().Set("Content-Type", "application/json")
		w.WriteHeader(code)
		if code == http.StatusCreated {
			var req map[string]any
			json.NewDecoder(r.Body).Decode(&req)
			json.NewEncoder(w).Encode(map[string]string{"node": req["name"].(string), "credential": "csnc_secret",
				"broker_url": "tcp://127.0.0.1:1883", "topic_prefix": "cloudskin/v1"})
			return
		}
		json.NewEncoder(w).Encode(map[string]string{"error": "enrollment token was already used"})
	}))
	t.Cleanup(srv.Close)
	return srv, &calls
}

func TestEnrollOnceAndReuse(t *testing.T) {
	srv, calls := fakeConsole(t, http.StatusServiceUnavailable, http.StatusCreated)
	cfg := validConfig(t)
	cfg.Console = srv.URL
	cfg.TokenFile = filepath.Join(t.TempDir(), "token")
	os.WriteFile(cfg.TokenFile, []byte("cset_x\n"), 0o600)

	c, err := loadOrEnroll(context.Background(), &cfg, "test", quiet)
	if err != nil {
		t.Fatal(err)
	}
	if calls.Load() != 2 || c.Secret != "csnc_secret" {
		t.Fatalf("calls %d, credential %+v: want a retry after 503, then the credential", calls.Load(), c)
	}
	info, err := os.Stat(filepath.Join(cfg.Data, CredentialFile))
	if err != nil || info.Mode().Perm() != 0o600 {
		t.Fatalf("credential file %v %v, want mode 0600", info, err)
	}
	if _, err := os.Stat(cfg.TokenFile); !os.IsNotExist(err) {
		t.Fatal("spent token file left on disk")
	}
	// Restart: the stored credential is used, the console is not asked.
	if _, err := loadOrEnroll(context.Background(), &cfg, "test", quiet); err != nil || calls.Load() != 2 {
		t.Fatalf("restart enrolled again (calls %d, err %v)", calls.Load(), err)
	}
	other := cfg
	other.Name = "edge-2"
	if _, err := loadOrEnroll(context.Background(), &other, "test", quiet); err == nil || !strings.Contains(err.Error(), `enrolled as node "edge-1"`) {
		t.Fatalf("another name on the same data dir: %v", err)
	}
}

func TestEnrollRefusedIsFinal(t *testing.T) {
	srv, calls := fakeConsole(t, http.StatusUnauthorized)
	cfg := validConfig(t)
	cfg.Console, cfg.Token = srv.URL, "cset_used"
	_, err := loadOrEnroll(context.Background(), &cfg, "test", quiet)
	if err == nil || !strings.Contains(err.Error(), "already used") || calls.Load() != 1 {
		t.Fatalf("err %v after %d calls: want the console's reason, no retry", err, calls.Load())
	}
	cfg.Token = ""
	if _, err := loadOrEnroll(context.Background(), &cfg, "test", quiet); err == nil || !strings.Contains(err.Error(), "--token") {
		t.Fatalf("no token: %v", err)
	}
	os.WriteFile(filepath.Join(cfg.Data, CredentialFile), []byte("{not json"), 0o600)
	if _, err := loadOrEnroll(context.Background(), &cfg, "test", quiet); err == nil || !strings.Contains(err.Error(), "damaged") {
		t.Fatalf("damaged credential: %v", err)
	}
}

func TestOutboxQuotaDropsOldestVisibly(t *testing.T) {
	dir := t.TempDir()
	j, err := journal.Open(dir, journal.Options{MaxBytes: 1 << 20, SegmentSize: 64 << 10, MinFreeBytes: -1, NoSync: true, Logger: quiet})
	if err != nil {
		t.Fatal(err)
	}
	defer j.Close()
	a := &Agent{cfg: Config{OutboxMaxBytes: 1 << 20}, log: quiet, m: newMetrics(), outbox: j}
	rec := []byte(strings.Repeat("x", 8<<10))
	for i := 0; i < 300; i++ { // 2.4 MB into a 1 MiB quota
		if err := a.appendWithQuota(rec); err != nil {
			t.Fatalf("append %d: %v", i, err)
		}
	}
	dropped := testutil.ToFloat64(a.m.dropped.WithLabelValues("outbox_full"))
	if dropped == 0 || j.SizeBytes() > 1<<20 {
		t.Fatalf("dropped %v, size %d: want drops counted and the quota kept", dropped, j.SizeBytes())
	}
	if got := float64(j.Len()) + dropped; got != 300 {
		t.Fatalf("kept %d + dropped %v != 300 appended: a loss was not counted", j.Len(), dropped)
	}
	if j.LastIndex() != j.NextIndex()-1 || j.Len() == 0 {
		t.Fatal("the newest sample must be kept")
	}
}

// TestExampleConfig keeps deploy/config/agent.yaml loadable and valid.
func TestExampleConfig(t *testing.T) {
	cfg := DefaultConfig()
	fs := flag.NewFlagSet("run", flag.ContinueOnError)
	if err := config.Load(fs, []string{"--config", "../../../deploy/config/agent.yaml"}, &cfg, cfg.Define); err != nil {
		t.Fatal(err)
	}
	if err := cfg.Validate(); err != nil {
		t.Fatal(err)
	}
	if cfg.Name != "castelloli-green-1" || cfg.Labels["power"] != "green" || cfg.Labels["site"] != "castelloli" || cfg.PowerMaxW != 35 {
		t.Fatalf("example not applied: %+v", cfg)
	}
}

func TestOutboxQuotaFreesAcknowledgedFirst(t *testing.T) {
	j, err := journal.Open(t.TempDir(), journal.Options{MaxBytes: 1 << 20, SegmentSize: 64 << 10, MinFreeBytes: -1, NoSync: true, Logger: quiet})
	if err != nil {
		t.Fatal(err)
	}
	defer j.Close()
	a := &Agent{cfg: Config{OutboxMaxBytes: 1 << 20}, log: quiet, m: newMetrics(), outbox: j}
	rec := []byte(strings.Repeat("x", 8<<10))
	for i := 0; i < 100; i++ {
		if err := a.appendWithQuota(rec); err != nil {
			t.Fatal(err)
		}
	}
	a.acked.Store(j.LastIndex()) // the broker has all of it
	if a.unsent() != 0 {
		t.Fatalf("unsent %d after everything was acknowledged", a.unsent())
	}
	for i := 0; i < 100; i++ { // more than the quota holds beside the acknowledged 100
		if err := a.appendWithQuota(rec); err != nil {
			t.Fatal(err)
		}
	}
	if dropped := testutil.ToFloat64(a.m.dropped.WithLabelValues("outbox_full")); dropped != 0 {
		t.Fatalf("dropped %v unsent samples while acknowledged ones could be freed", dropped)
	}
	if a.unsent() != 100 {
		t.Fatalf("unsent %d, want the 100 new samples", a.unsent())
	}
}
