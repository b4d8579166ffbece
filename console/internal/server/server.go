package server

import (
	"context"
	"crypto/ed25519"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"time"

	"golang.org/x/sync/errgroup"

	"github.com/cloudskin/cloudskin/console/internal/api"
	"github.com/cloudskin/cloudskin/console/internal/auth"
	"github.com/cloudskin/cloudskin/console/internal/broker"
	"github.com/cloudskin/cloudskin/console/internal/cells"
	"github.com/cloudskin/cloudskin/console/internal/fleet"
	"github.com/cloudskin/cloudskin/console/internal/learning"
	"github.com/cloudskin/cloudskin/console/internal/metrics"
	"github.com/cloudskin/cloudskin/console/internal/modules"
	"github.com/cloudskin/cloudskin/console/internal/objects"
	"github.com/cloudskin/cloudskin/console/internal/ota"
	"github.com/cloudskin/cloudskin/console/internal/placement"
	"github.com/cloudskin/cloudskin/console/internal/planner"
	"github.com/cloudskin/cloudskin/console/internal/rpc"
	"github.com/cloudskin/cloudskin/console/internal/store"
	"github.com/cloudskin/cloudskin/console/internal/tier"
	"github.com/cloudskin/cloudskin/console/internal/ui"
	otabundle "github.com/cloudskin/cloudskin/shared/ota"
	"github.com/cloudskin/cloudskin/shared/protocol"
)

// Settings keys.
const (
	settingJWTSecret      = "jwt_secret"
	settingBrokerPassword = "mqtt_console_password"
	settingBlobSecret     = "tier_blob_secret"
	// InitialPasswordFile holds a generated admin password, readable only
	// by the console's user, until the operator deletes it.
	InitialPasswordFile = "initial-admin-password"
	// ConsoleBrokerUser is the console's username on an external broker.
	ConsoleBrokerUser = fleet.ReservedBrokerUser
)

// Run serves until ctx is cancelled, then shuts down cleanly.
func Run(ctx context.Context, cfg Config, log *slog.Logger) error {
	if err := cfg.Validate(); err != nil {
		return fmt.Errorf("invalid configuration:\n%w", err)
	}
	if err := os.MkdirAll(cfg.Data, 0o700); err != nil {
		return fmt.Errorf("data dir: %w", err)
	}
	st, err := store.Open(ctx, cfg.DB, cfg.Data, log)
	if err != nil {
		return err
	}
	defer st.Close()
	if err := Bootstrap(ctx, st, cfg.Data, log); err != nil {
		return err
	}
	secret, err := st.Setting(ctx, settingJWTSecret, func() (string, error) { return auth.NewSecret(32), nil })
	if err != nil {
		return fmt.Errorf("jwt secret: %w", err)
	}
	m := metrics.New()
	topics := protocol.NewTopics(cfg.TopicPrefix)
	fcfg := fleet.Config{
		Topics: topics, BrokerURL: cfg.brokerPublic(), DefaultHeartbeat: cfg.DefaultHeartbeat,
		MissedHeartbeats: cfg.MissedHeartbeats, Retention: cfg.Retention,
	}
	var fl *fleet.Service
	var caller *rpc.Caller
	fcfg.Replies = func(node string, payload []byte) { caller.Deliver(node, payload) }
	sink := func(ctx context.Context, topic string, payload []byte) error { return fl.Sink(ctx, topic, payload) }
	var bus broker.Bus
	if cfg.Broker == "" {
		bus = broker.NewEmbedded(broker.EmbeddedConfig{
			Addr: cfg.MQTT, Topics: topics, Sink: sink, Log: log,
			Authenticate: func(ctx context.Context, node, secret string) bool { return fl.AuthenticateNode(ctx, node, secret) },
			Refused:      m.Reject,
		})
	} else {
		pw, err := st.Setting(ctx, settingBrokerPassword, func() (string, error) { return auth.NewSecret(24), nil })
		if err != nil {
			return fmt.Errorf("broker password: %w", err)
		}
		if err := configureExternalBroker(ctx, &fcfg, cfg, st, pw, log); err != nil {
			return err
		}
		bus = broker.NewExternal(broker.ExternalConfig{
			URL: cfg.Broker, ClientID: "cloudskin-console", Username: ConsoleBrokerUser, Password: pw,
			Topics: topics, Sink: sink, Log: log,
		})
	}
	fl = fleet.New(fcfg, st, m, log)
	caller = rpc.New(bus.Publish, topics, cfg.NodeRequestTimeout, log)
	objs, err := objects.NewFS(filepath.Join(cfg.Data, "objects"))
	if err != nil {
		return err
	}
	mods := modules.New(st, objs, log)
	blobSecret, err := st.Setting(ctx, settingBlobSecret, func() (string, error) { return auth.NewSecret(32), nil })
	if err != nil {
		return fmt.Errorf("blob secret: %w", err)
	}
	tr, err := tier.New(tier.Config{
		S3Endpoint: cfg.S3Endpoint, S3Bucket: cfg.S3Bucket, S3AccessKey: cfg.S3AccessKey, S3SecretKey: cfg.S3SecretKey,
		S3Region: cfg.S3Region, S3UseTLS: cfg.S3TLS, BlobSecret: []byte(blobSecret),
	}, st, objs, m.Registry, log)
	if err != nil {
		return fmt.Errorf("streams' cloud tier: %w", err)
	}
	cs := cells.New(topics, st, bus, log)
	pcfg := planner.DefaultConfig()
	pcfg.OfflineGrace, pcfg.MinResidence, pcfg.EnergyHorizon = cfg.OfflineGrace, cfg.MinResidence, cfg.EnergyHorizon
	var pl *placement.Service
	lp, err := learning.New(cfg.learning(), st, m.Registry, func(app string) float64 { return pl.AppCPU(app) }, log)
	if err != nil {
		return err
	}
	pl, err = placement.New(placement.Config{
		Planner: pcfg, Interval: cfg.PlanInterval,
		Moves: placement.MoveConfig{HoldTimeout: cfg.HoldTimeout, RestoreTimeout: cfg.RestoreTimeout},
	}, st, cs, objs, lp, log)
	if err != nil {
		return fmt.Errorf("planner: %w", err)
	}
	var releaseKey ed25519.PublicKey
	if cfg.ReleaseKey != "" {
		if releaseKey, err = otabundle.LoadPublicKey(cfg.ReleaseKey); err != nil {
			return fmt.Errorf("release-key: %w", err)
		}
	} else {
		log.Warn("no release key (--release-key): OTA bundle uploads are refused")
	}
	updates, err := ota.New(ota.Config{ReleaseKey: releaseKey, TempDir: filepath.Join(cfg.Data, "tmp", "ota")}, st, objs, cs, log)
	if err != nil {
		return err
	}
	fl.OnActual(func(string) { pl.Kick(); updates.Kick() })
	fl.OnPosition(func(p protocol.Position) { pl.SetTarget(p.Target, planner.Point{Lat: p.Lat, Lon: p.Lon}) })

	ln, err := net.Listen("tcp", cfg.HTTP)
	if err != nil {
		return fmt.Errorf("http listen %s: %w", cfg.HTTP, err)
	}
	// The bus outlives the serving context so that messages in flight at
	// shutdown (a node's last will) are still stored; it stops after HTTP.
	busCtx, stopBus := context.WithCancel(context.WithoutCancel(ctx))
	defer stopBus()
	if err := bus.Start(busCtx); err != nil {
		ln.Close()
		return err
	}
	defer bus.Close()
	// An embedded broker keeps retained messages in memory only: restore
	// every node's desired state. A failure is not fatal; the next change
	// to a node's cells publishes its state again.
	if err := cs.RepublishAll(ctx); err != nil {
		log.Error("desired states not all restored", "err", err)
	}

	a := &api.Server{
		Store: st, Fleet: fl, Modules: mods, Cells: cs, RPC: caller, Tier: tr, Placement: pl, Learning: lp, OTA: updates, EnergyHorizon: cfg.EnergyHorizon, Objects: objs, Tokens: auth.NewTokens([]byte(secret), cfg.JWTTTL), Metrics: m, Log: log,
		Ready: func(ctx context.Context) error {
			if err := st.Ping(ctx); err != nil {
				return fmt.Errorf("database: %w", err)
			}
			return bus.Ready()
		},
	}
	// The web UI is a client of the API in the same process, under /ui/.
	apiHandler := a.Handler()
	web, err := ui.New(ui.Config{API: apiHandler, Log: log})
	if err != nil {
		return err
	}
	httpSrv := &http.Server{Handler: web.Wrap(apiHandler), ReadHeaderTimeout: 10 * time.Second, ReadTimeout: time.Minute, IdleTimeout: 2 * time.Minute}
	httpSrv.RegisterOnShutdown(web.Close) // live streams end, so shutdown need not wait on them

	g, gctx := errgroup.WithContext(ctx)
	g.Go(func() error { return fl.Run(gctx) })
	g.Go(func() error { return pl.Run(gctx) })
	g.Go(func() error { return lp.Run(gctx) })
	g.Go(func() error { return updates.Run(gctx) })
	g.Go(func() error {
		log.Info("console HTTP listening", "addr", ln.Addr().String(), "db", st.Dialect(), "broker", brokerName(cfg))
		if err := httpSrv.Serve(ln); err != nil && !errors.Is(err, http.ErrServerClosed) {
			return err
		}
		return nil
	})
	g.Go(func() error {
		<-gctx.Done()
		log.Info("console shutting down")
		sctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		return httpSrv.Shutdown(sctx)
	})
	return g.Wait()
}

func brokerName(cfg Config) string {
	if cfg.Broker == "" {
		return "embedded " + cfg.MQTT
	}
	return cfg.Broker
}

// Bootstrap creates the admin user on first start. The password comes
// from CLOUDSKIN_ADMIN_PASSWORD or is generated, printed once, and kept in
// DATA/initial-admin-password (mode 0600).
func Bootstrap(ctx context.Context, st *store.Store, dataDir string, log *slog.Logger) error {
	n, err := st.CountUsers(ctx)
	if err != nil {
		return err
	}
	if n > 0 {
		return nil
	}
	pw := os.Getenv("CLOUDSKIN_ADMIN_PASSWORD")
	generated := pw == ""
	if generated {
		pw = auth.NewSecret(15)
	}
	hash, err := auth.HashPassword(pw)
	if err != nil {
		return fmt.Errorf("CLOUDSKIN_ADMIN_PASSWORD: %w", err)
	}
	if err := st.CreateUser(ctx, &store.User{Username: "admin", PasswordHash: hash, Role: store.RoleAdmin}); err != nil {
		if errors.Is(err, store.ErrConflict) {
			return nil // another console replica won the race
		}
		return err
	}
	if generated {
		path := filepath.Join(dataDir, InitialPasswordFile)
		if err := os.WriteFile(path, []byte(pw+"\n"), 0o600); err != nil {
			return fmt.Errorf("write %s: %w", path, err)
		}
		fmt.Fprintf(os.Stderr, "\n  CloudSkin console: created user admin with password %s\n  (also in %s; delete that file once noted)\n\n", pw, path)
	}
	log.Info("created admin user", "password_source", map[bool]string{true: "generated", false: "CLOUDSKIN_ADMIN_PASSWORD"}[generated])
	return nil
}
