package broker

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"sync/atomic"

	mqtt "github.com/mochi-mqtt/server/v2"
	"github.com/mochi-mqtt/server/v2/listeners"
	"github.com/mochi-mqtt/server/v2/packets"

	"github.com/cloudskin/cloudskin/console/internal/metrics"
	"github.com/cloudskin/cloudskin/shared/protocol"
)

// MaxPacketBytes is the largest MQTT packet the embedded broker accepts;
// a larger one disconnects the client before its payload is read.
const MaxPacketBytes = 256 << 10

// EmbeddedConfig configures the in-process broker.
type EmbeddedConfig struct {
	Addr   string // TCP listen address, e.g. ":1883"
	Topics protocol.Topics
	// Authenticate checks a node's MQTT username (its name) and password
	// (its credential).
	Authenticate func(ctx context.Context, node, secret string) bool
	// Refused is told of every refused connection or topic, by reason.
	Refused func(reason string)
	Sink    Sink
	Log     *slog.Logger
}

// Embedded is a mochi-mqtt broker that enforces per-node topics and hands
// node messages to the sink before acknowledging them.
type Embedded struct {
	cfg    EmbeddedConfig
	server *mqtt.Server
	ctx    context.Context
	up     atomic.Bool
}

// NewEmbedded returns a broker that listens once started.
func NewEmbedded(cfg EmbeddedConfig) *Embedded {
	return &Embedded{cfg: cfg}
}

// Start listens on cfg.Addr.
func (e *Embedded) Start(ctx context.Context) error {
	e.ctx = ctx
	caps := mqtt.NewDefaultServerCapabilities()
	caps.MaximumPacketSize = MaxPacketBytes
	// Retained status and desired messages must survive a client's session
	// but sessions of vanished nodes must not grow without end.
	caps.MaximumSessionExpiryInterval = 7 * 24 * 3600
	srv := mqtt.New(&mqtt.Options{
		InlineClient: true,
		Capabilities: caps,
		Logger:       e.cfg.Log.With("component", "mqtt-broker"),
	})
	if err := srv.AddHook(&hook{e: e}, nil); err != nil {
		return err
	}
	if err := srv.AddListener(listeners.NewTCP(listeners.Config{ID: "tcp", Address: e.cfg.Addr})); err != nil {
		return fmt.Errorf("mqtt listener %s: %w", e.cfg.Addr, err)
	}
	if err := srv.Serve(); err != nil {
		return fmt.Errorf("embedded mqtt broker: %w", err)
	}
	e.server = srv
	e.up.Store(true)
	e.cfg.Log.Info("embedded MQTT broker listening", "addr", e.cfg.Addr)
	return nil
}

// Publish sends from the console's inline client.
func (e *Embedded) Publish(topic string, payload []byte, retain bool) error {
	if e.server == nil {
		return errors.New("embedded broker not started")
	}
	return e.server.Publish(topic, payload, retain, 1)
}

// Ready reports whether the broker is serving.
func (e *Embedded) Ready() error {
	if !e.up.Load() {
		return errors.New("embedded MQTT broker is not running")
	}
	return nil
}

// Close stops listening and disconnects every client.
func (e *Embedded) Close() error {
	if e.server == nil {
		return nil
	}
	e.up.Store(false)
	return e.server.Close()
}

// hook enforces authentication and per-node ACLs and feeds the sink.
type hook struct {
	mqtt.HookBase
	e *Embedded
}

func (h *hook) ID() string { return "cloudskin" }

func (h *hook) Provides(b byte) bool {
	return bytes.Contains([]byte{mqtt.OnConnectAuthenticate, mqtt.OnACLCheck, mqtt.OnPublish, mqtt.OnWillSent, mqtt.OnDisconnect}, []byte{b})
}

func (h *hook) OnConnectAuthenticate(cl *mqtt.Client, pk packets.Packet) bool {
	user := string(cl.Properties.Username)
	if protocol.ValidateNodeName(user) != nil || !h.e.cfg.Authenticate(h.e.ctx, user, string(pk.Connect.Password)) {
		h.e.cfg.Refused(metrics.RejectBrokerAuth)
		h.e.cfg.Log.Warn("MQTT connection refused: bad node credential", "username", user, "client_id", cl.ID, "remote", cl.Net.Remote)
		return false
	}
	if cl.ID != protocol.ClientID(user) {
		h.e.cfg.Refused(metrics.RejectBrokerAuth)
		h.e.cfg.Log.Warn("MQTT connection refused: client id is not the node's", "username", user, "client_id", cl.ID, "want", protocol.ClientID(user), "remote", cl.Net.Remote)
		return false
	}
	return true
}

// OnACLCheck lets a node write only its own writable leaves and read only
// its own desired state and requests.
func (h *hook) OnACLCheck(cl *mqtt.Client, topic string, write bool) bool {
	node := string(cl.Properties.Username)
	t := h.e.cfg.Topics
	var ok bool
	if write {
		ok = t.NodeMayWrite(node, topic)
	} else {
		ok = t.NodeMayRead(node, topic)
	}
	if !ok {
		h.e.cfg.Refused(metrics.RejectTopicDenied)
		h.e.cfg.Log.Warn("MQTT topic refused", "node", node, "topic", topic, "write", write, "remote", cl.Net.Remote)
	}
	return ok
}

// OnPublish hands a node's message to the sink before the broker
// acknowledges it, so a PUBACK means "stored".
func (h *hook) OnPublish(cl *mqtt.Client, pk packets.Packet) (packets.Packet, error) {
	if cl.Net.Inline || h.e.cfg.Topics.IsTissue(pk.TopicName) {
		// Tissue traffic is between nodes; the console does not store it.
		return pk, nil
	}
	err := h.e.cfg.Sink(h.e.ctx, pk.TopicName, pk.Payload)
	switch {
	case err == nil:
		return pk, nil
	case errors.Is(err, ErrRetry):
		// No PUBACK: the node keeps the message and sends it again.
		return pk, packets.ErrRejectPacket
	default:
		// Refused for good: acknowledge so the node does not resend a bad
		// message forever, but do not pass it on.
		return pk, packets.CodeSuccessIgnore
	}
}

// OnDisconnect counts and explains the disconnections a client caused by
// breaking the rules (the broker itself logs them without a message).
func (h *hook) OnDisconnect(cl *mqtt.Client, err error, expire bool) {
	switch {
	case errors.Is(err, packets.ErrPacketTooLarge):
		h.e.cfg.Refused(metrics.RejectPacketOversized)
		h.e.cfg.Log.Warn("MQTT client disconnected: packet larger than the broker accepts", "username", string(cl.Properties.Username), "limit_bytes", MaxPacketBytes, "remote", cl.Net.Remote)
	case errors.Is(err, packets.ErrNotAuthorized):
		h.e.cfg.Log.Warn("MQTT client disconnected: not authorized", "username", string(cl.Properties.Username), "remote", cl.Net.Remote)
	}
}

// OnWillSent feeds a node's last will (its "offline" status) to the sink.
func (h *hook) OnWillSent(cl *mqtt.Client, pk packets.Packet) {
	if err := h.e.cfg.Sink(h.e.ctx, pk.TopicName, pk.Payload); err != nil {
		h.e.cfg.Log.Warn("last will not applied", "client_id", cl.ID, "topic", pk.TopicName, "err", err)
	}
}
