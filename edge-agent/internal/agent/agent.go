package agent

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"runtime"
	"sync/atomic"
	"time"

	paho "github.com/eclipse/paho.mqtt.golang"
	"github.com/prometheus/client_golang/prometheus/promhttp"
	"golang.org/x/sync/errgroup"

	"github.com/cloudskin/cloudskin/edge-agent/internal/autonomy"
	"github.com/cloudskin/cloudskin/edge-agent/internal/journal"
	"github.com/cloudskin/cloudskin/edge-agent/internal/ota"
	"github.com/cloudskin/cloudskin/edge-agent/internal/telemetry"
	"github.com/cloudskin/cloudskin/shared/protocol"
)

// Agent is one running edge agent.
type Agent struct {
	cfg     Config
	version string
	log     *slog.Logger
	cred    *Credential
	topics  protocol.Topics
	m       *agentMetrics
	client  paho.Client
	outbox  *journal.Journal
	sampler *telemetry.Sampler
	cells   *cellManager
	streams *streamManager
	// events is the durable outbox of node events (events.go); auto is
	// edge autonomy's policy (autonomy.go).
	events *eventOutbox
	auto   *autonomyPolicy
	// updater runs over-the-air updates (ota.go); desiredSeen says a
	// desired state came from the console since the start (its health
	// check).
	updater     *ota.Updater
	desiredSeen atomic.Bool
	// epoch counts MQTT connections; a publish is trusted only if the
	// connection it was sent on is still the current one when it completes
	// (paho can complete a token with a nil error across a reconnect).
	epoch   atomic.Uint64
	pending chan struct{}
	// actualNow asks for an actual-state report before the next interval
	// (a migration step waits on it).
	actualNow chan struct{}
	// acked is the last outbox index the broker acknowledged; the prefix up
	// to it is removed lazily (maybeTruncate). Only the send loop writes it
	// and truncatedAt.
	acked       atomic.Uint64
	truncatedAt time.Time
}

// Run enrolls if needed, then runs until ctx is cancelled. It returns
// ota.ErrRestart when an update asks for a restart (the caller calls
// ota.Reexec once everything here is closed).
func Run(ctx context.Context, cfg Config, version string, log *slog.Logger) error {
	if err := cfg.Validate(); err != nil {
		return fmt.Errorf("invalid configuration:\n%w", err)
	}
	if err := os.MkdirAll(cfg.Data, 0o700); err != nil {
		return fmt.Errorf("data dir: %w", err)
	}
	a := &Agent{cfg: cfg, version: version, log: log.With("node", cfg.Name), m: newMetrics(), pending: make(chan struct{}, 1), actualNow: make(chan struct{}, 1)}

	var ln net.Listener
	if cfg.HTTP != "" {
		var err error
		if ln, err = net.Listen("tcp", cfg.HTTP); err != nil {
			return fmt.Errorf("http listen %s: %w", cfg.HTTP, err)
		}
	}
	cred, err := loadOrEnroll(ctx, &a.cfg, version, a.log)
	if err != nil {
		if ln != nil {
			ln.Close()
		}
		return err
	}
	a.cred = cred
	a.topics = protocol.NewTopics(cred.TopicPrefix)
	if err := checkCredential(ctx, &a.cfg, cred); err != nil {
		if errors.Is(err, errPermanent) {
			return err
		}
		// Starting offline is normal for an edge node.
		a.log.Warn("console not reachable at start; working offline", "err", err)
	}

	a.outbox, err = journal.Open(filepath.Join(cfg.Data, "outbox"), journal.Options{MaxBytes: cfg.OutboxMaxBytes, SegmentSize: outboxSegmentBytes, Logger: a.log})
	if err != nil {
		return fmt.Errorf("telemetry outbox: %w", err)
	}
	defer a.outbox.Close()
	a.updateOutboxGauges()
	a.sampler = telemetry.NewSampler(telemetry.Config{DataDir: cfg.Data, PowerIdleW: cfg.PowerIdleW, PowerMaxW: cfg.PowerMaxW})

	if a.streams, err = newStreamManager(a, cfg.Streams); err != nil {
		return err
	}
	defer a.streams.close()
	a.m.registry.MustRegister(streamCollector{a.streams})
	if a.cells, err = newCellManager(a, nil); err != nil {
		return err
	}
	a.cells.streams = a.streams
	a.cells.forward = newDatasetForwarder(a)
	if a.events, err = openEventOutbox(a); err != nil {
		return err
	}
	defer a.events.close()
	ctx, restart := context.WithCancelCause(ctx)
	defer restart(nil)
	if a.updater, err = a.newUpdater(func() { a.publishActualWait(); restart(ota.ErrRestart) }); err != nil {
		// The node keeps running its cells; it just cannot be updated.
		a.log.Error("over-the-air updates unavailable", "err", err)
	}
	a.updater.Set(a.cells.desiredUpdate())
	a.auto = newAutonomyPolicy(a.cfg, loadAutonomyState(a.cfg.Data, a.log), a.cells, a.events.add, a.saveAutonomy, a.m.registry, a.log, time.Now())
	defer func() { a.auto.persist(time.Now()) }()
	// The streams of the desired state the node had when it stopped.
	if err := a.streams.apply(a.cells.desiredStreams()); err != nil {
		a.log.Error("streams not all open", "err", err)
	}
	stopIngest, err := a.startIngest()
	if err != nil {
		return err
	}
	defer stopIngest()

	a.connect()
	defer a.disconnect()

	g, gctx := errgroup.WithContext(ctx)
	g.Go(func() error { return a.heartbeats(gctx) })
	g.Go(func() error { return a.sampleLoop(gctx) })
	g.Go(func() error { return a.sendLoop(gctx) })
	g.Go(func() error { return a.cells.run(gctx) })
	g.Go(func() error { return a.cells.forward.run(gctx) })
	g.Go(func() error { return a.actualLoop(gctx) })
	g.Go(func() error { return a.events.run(gctx) })
	if a.updater != nil {
		g.Go(func() error { return a.updater.Run(gctx) })
	}
	if ln != nil {
		srv := &http.Server{Handler: a.httpHandler(), ReadHeaderTimeout: 5 * time.Second}
		g.Go(func() error {
			a.log.Info("agent metrics listening", "addr", ln.Addr().String())
			if err := srv.Serve(ln); err != nil && !errors.Is(err, http.ErrServerClosed) {
				return err
			}
			return nil
		})
		g.Go(func() error {
			<-gctx.Done()
			sctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
			defer cancel()
			return srv.Shutdown(sctx)
		})
	}
	a.log.Info("agent running", "version", version, "arch", runtime.GOARCH, "broker", a.brokerURL(), "telemetry_interval", cfg.TelemetryInterval)
	err = g.Wait()
	if errors.Is(context.Cause(ctx), ota.ErrRestart) {
		a.log.Info("agent restarting for an update")
		return ota.ErrRestart
	}
	a.log.Info("agent stopping")
	return err
}

func (a *Agent) httpHandler() http.Handler {
	mux := http.NewServeMux()
	mux.Handle("/metrics", promhttp.HandlerFor(a.m.registry, promhttp.HandlerOpts{}))
	a.registerStreamAPI(mux)
	a.registerAutonomyAPI(mux)
	mux.HandleFunc("/healthz", func(w http.ResponseWriter, _ *http.Request) {
		w.Header().Set("Content-Type", "application/json")
		json.NewEncoder(w).Encode(map[string]any{
			"status": "ok", "node": a.cfg.Name, "mqtt_connected": a.client.IsConnectionOpen(),
			"outbox_records": a.unsent(),
		})
	})
	return mux
}

// saveAutonomy persists the energy forecast's state, so that a restart
// during an outage does not forget what the node learned.
func (a *Agent) saveAutonomy(st autonomy.State) error {
	return writeFileAtomic(filepath.Join(a.cfg.Data, autonomyFile), st, 0o600)
}

func (a *Agent) brokerURL() string {
	if a.cfg.Broker != "" {
		return a.cfg.Broker
	}
	return a.cred.BrokerURL
}

func (a *Agent) status(state string) []byte {
	b, _ := json.Marshal(protocol.Status{
		Node: a.cfg.Name, State: state, Time: time.Now().UTC(), Version: a.version,
		Arch: runtime.GOARCH, OS: runtime.GOOS, HeartbeatSeconds: a.cfg.Heartbeat.Seconds(), Labels: a.cfg.Labels,
	})
	return b
}

// connect starts the MQTT session; paho keeps reconnecting on its own.
func (a *Agent) connect() {
	statusTopic := a.topics.Node(a.cfg.Name, protocol.LeafStatus)
	opts := paho.NewClientOptions().
		AddBroker(a.brokerURL()).
		SetClientID("node-"+a.cfg.Name).
		SetUsername(a.cfg.Name).
		SetPassword(a.cred.Secret).
		SetCleanSession(false).
		SetOrderMatters(false).
		SetAutoReconnect(true).
		SetConnectRetry(true).
		SetConnectRetryInterval(2*time.Second).
		SetMaxReconnectInterval(15*time.Second).
		SetKeepAlive(max(2*a.cfg.Heartbeat, 10*time.Second)).
		SetWriteTimeout(10*time.Second).
		SetBinaryWill(statusTopic, a.status(protocol.StateOffline), 1, true)
	opts.SetOnConnectHandler(func(c paho.Client) {
		a.epoch.Add(1)
		a.m.connected.Set(1)
		a.m.connects.Inc()
		a.log.Info("connected to MQTT broker", "broker", a.brokerURL())
		c.Publish(statusTopic, 1, true, a.status(protocol.StateOnline))
		c.Subscribe(a.topics.Node(a.cfg.Name, protocol.LeafDesired), 1, func(_ paho.Client, m paho.Message) {
			a.cells.setDesired(m.Payload())
			a.desiredSeen.Store(true)
		})
		c.Subscribe(a.topics.Node(a.cfg.Name, protocol.LeafRequests), 1, func(_ paho.Client, m paho.Message) {
			go a.serveRequest(m.Payload())
		})
		c.Subscribe(a.topics.AllTissues(), 1, func(_ paho.Client, m paho.Message) {
			a.cells.tissueMessage(m.Topic(), m.Payload())
		})
		// The console is back: cells paused on the node's own authority
		// resume, and what the node did meanwhile goes out.
		a.auto.connected(time.Now())
		a.events.kick()
		a.wake()
	})
	opts.SetConnectionLostHandler(func(_ paho.Client, err error) {
		a.m.connected.Set(0)
		a.auto.disconnected(time.Now())
		a.log.Warn("lost MQTT connection; buffering telemetry on disk", "err", err)
	})
	a.client = paho.NewClient(opts)
	a.client.Connect() // with ConnectRetry this never fails; it keeps trying
}

// disconnect says goodbye: a clean shutdown publishes offline itself,
// since a DISCONNECT suppresses the last will.
func (a *Agent) disconnect() {
	if a.client.IsConnectionOpen() {
		tok := a.client.Publish(a.topics.Node(a.cfg.Name, protocol.LeafStatus), 1, true, a.status(protocol.StateOffline))
		tok.WaitTimeout(2 * time.Second)
	}
	a.client.Disconnect(500)
	a.m.connected.Set(0)
}

func (a *Agent) heartbeats(ctx context.Context) error {
	t := time.NewTicker(a.cfg.Heartbeat)
	defer t.Stop()
	topic := a.topics.Node(a.cfg.Name, protocol.LeafStatus)
	for {
		select {
		case <-ctx.Done():
			return nil
		case <-t.C:
			if a.client.IsConnectionOpen() {
				// QoS 0: a heartbeat that cannot be delivered now is
				// worthless later.
				a.client.Publish(topic, 0, true, a.status(protocol.StateOnline))
			}
		}
	}
}

// actualLoop reports the cells' state with every telemetry interval.
func (a *Agent) actualLoop(ctx context.Context) error {
	t := time.NewTicker(a.cfg.TelemetryInterval)
	defer t.Stop()
	topic := a.topics.Node(a.cfg.Name, protocol.LeafActual)
	for {
		select {
		case <-ctx.Done():
			return nil
		case <-t.C:
		case <-a.actualNow:
		}
		if !a.client.IsConnectionOpen() {
			continue
		}
		b, err := json.Marshal(a.actualState())
		if err != nil {
			continue
		}
		// QoS 0: a missed report is replaced by the next one.
		a.client.Publish(topic, 0, false, b)
	}
}

// publishActualSoon reports the cells' state now rather than at the next
// telemetry interval.
func (a *Agent) publishActualSoon() {
	if a == nil || a.actualNow == nil {
		return
	}
	select {
	case a.actualNow <- struct{}{}:
	default:
	}
}

func (a *Agent) wake() {
	select {
	case a.pending <- struct{}{}:
	default:
	}
}
