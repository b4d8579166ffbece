package agent

import (
	"fmt"
	"log/slog"

	mqtt "github.com/mochi-mqtt/server/v2"
	"github.com/mochi-mqtt/server/v2/hooks/auth"
	"github.com/mochi-mqtt/server/v2/listeners"
	"github.com/mochi-mqtt/server/v2/packets"
)

// sensorBroker is the node's local MQTT broker for sensors: they publish
// to it, matching messages feed cells, and cells' outputs appear on
// cells/{cell}/{stream}. It listens on loopback by default; the streams
// issue makes ingestion durable (WAL-backed) behind it.
type sensorBroker struct {
	srv *mqtt.Server
}

func startSensorBroker(addr string, log *slog.Logger, deliver func(topic string, payload []byte)) (*sensorBroker, error) {
	caps := mqtt.NewDefaultServerCapabilities()
	caps.MaximumPacketSize = 1 << 20
	srv := mqtt.New(&mqtt.Options{InlineClient: true, Capabilities: caps, Logger: log.With("component", "sensor-broker")})
	// Sensors on the node's own network segment are trusted; bind to
	// loopback (the default) or a sensor-only interface.
	if err := srv.AddHook(new(auth.AllowHook), nil); err != nil {
		return nil, err
	}
	if err := srv.AddListener(listeners.NewTCP(listeners.Config{ID: "sensors", Address: addr})); err != nil {
		return nil, fmt.Errorf("sensor broker listener %s: %w", addr, err)
	}
	if err := srv.Serve(); err != nil {
		return nil, fmt.Errorf("sensor broker: %w", err)
	}
	err := srv.Subscribe("#", 1, func(_ *mqtt.Client, _ packets.Subscription, pk packets.Packet) {
		deliver(pk.TopicName, pk.Payload)
	})
	if err != nil {
		srv.Close()
		return nil, err
	}
	log.Info("sensor broker listening", "addr", addr)
	return &sensorBroker{srv: srv}, nil
}

func (b *sensorBroker) publish(topic string, payload []byte) {
	_ = b.srv.Publish(topic, payload, false, 0)
}

func (b *sensorBroker) close() { b.srv.Close() }
