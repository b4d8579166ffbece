// Package broker connects the console to MQTT: an embedded broker in the
// console process (mochi-mqtt) by default, or an external broker such as
// Mosquitto. Either way the console sees one Bus: node messages arrive at a
// Sink, and the console publishes (desired state, later) through Publish.
package broker

import (
	"context"
	"errors"
)

// Sink receives every message a node publishes under its own subtree. A nil
// error means the message is handled (stored, or refused for good as
// invalid); ErrRetry means it was not stored and must not be acknowledged,
// so the node sends it again.
type Sink func(ctx context.Context, topic string, payload []byte) error

// ErrRetry marks a transient failure (the database is unavailable).
var ErrRetry = errors.New("message not stored, retry later")

// Bus is the console's view of MQTT.
type Bus interface {
	// Start connects or starts listening; messages flow to the sink after it.
	Start(ctx context.Context) error
	// Publish sends a message (QoS 1) to a topic.
	Publish(topic string, payload []byte, retain bool) error
	// Ready is nil while the bus can carry messages.
	Ready() error
	// Close disconnects or stops the broker.
	Close() error
}
