package broker

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"time"

	paho "github.com/eclipse/paho.mqtt.golang"

	"github.com/cloudskin/cloudskin/shared/protocol"
)

// ExternalConfig configures the console's client of an external broker.
type ExternalConfig struct {
	URL      string // tcp://host:1883
	ClientID string
	Username string
	Password string
	Topics   protocol.Topics
	Sink     Sink
	Log      *slog.Logger
}

// External is the console as a client of an external broker (Mosquitto).
// The broker enforces per-node topics from the password and ACL files the
// console writes (package mosquitto).
type External struct {
	cfg    ExternalConfig
	client paho.Client
}

// NewExternal returns a client that connects once started.
func NewExternal(cfg ExternalConfig) *External { return &External{cfg: cfg} }

// subscribedLeaves are the node topics the console consumes.
var subscribedLeaves = []string{protocol.LeafTelemetry, protocol.LeafStatus, protocol.LeafActual, protocol.LeafEvents}

// Start connects, retrying in the background until the broker answers; it
// returns once the first connection attempt has been made.
func (x *External) Start(ctx context.Context) error {
	log := x.cfg.Log.With("component", "mqtt-client", "broker", x.cfg.URL)
	opts := paho.NewClientOptions().
		AddBroker(x.cfg.URL).
		SetClientID(x.cfg.ClientID).
		SetUsername(x.cfg.Username).
		SetPassword(x.cfg.Password).
		// A persistent session keeps QoS 1 node messages for the console
		// while it restarts; manual acks mean "acknowledged = stored".
		SetCleanSession(false).
		SetOrderMatters(false).
		SetAutoAckDisabled(true).
		SetAutoReconnect(true).
		SetConnectRetry(true).
		SetConnectRetryInterval(time.Second).
		SetMaxReconnectInterval(10 * time.Second).
		SetKeepAlive(15 * time.Second)
	opts.SetOnConnectHandler(func(c paho.Client) {
		log.Info("connected to MQTT broker")
		filters := map[string]byte{}
		for _, leaf := range subscribedLeaves {
			filters[x.cfg.Topics.AllNodes(leaf)] = 1
		}
		tok := c.SubscribeMultiple(filters, func(_ paho.Client, m paho.Message) {
			err := x.cfg.Sink(ctx, m.Topic(), m.Payload())
			if errors.Is(err, ErrRetry) {
				// Unacknowledged: the broker redelivers after reconnect.
				log.Warn("message not stored; left unacknowledged", "topic", m.Topic(), "err", err)
				return
			}
			m.Ack()
		})
		go func() {
			if tok.WaitTimeout(10*time.Second) && tok.Error() != nil {
				log.Error("subscribe failed", "err", tok.Error())
			}
		}()
	})
	opts.SetConnectionLostHandler(func(_ paho.Client, err error) {
		log.Warn("lost MQTT broker connection", "err", err)
	})
	x.client = paho.NewClient(opts)
	tok := x.client.Connect()
	// With ConnectRetry the token completes only on success; do not block
	// start-up on a broker that is still coming up.
	if tok.WaitTimeout(5*time.Second) && tok.Error() != nil {
		return fmt.Errorf("connect to MQTT broker %s: %w", x.cfg.URL, tok.Error())
	}
	return nil
}

// Publish sends with QoS 1 and waits for the broker's acknowledgement.
func (x *External) Publish(topic string, payload []byte, retain bool) error {
	tok := x.client.Publish(topic, 1, retain, payload)
	if !tok.WaitTimeout(10 * time.Second) {
		return fmt.Errorf("publish %s: timed out", topic)
	}
	return tok.Error()
}

// Ready is nil while connected.
func (x *External) Ready() error {
	if x.client == nil || !x.client.IsConnectionOpen() {
		return fmt.Errorf("not connected to MQTT broker %s", x.cfg.URL)
	}
	return nil
}

// Close disconnects, letting in-flight work finish for up to a second.
func (x *External) Close() error {
	if x.client != nil {
		x.client.Disconnect(1000)
	}
	return nil
}
