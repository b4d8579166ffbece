package ingest

import "errors"

// Sink routes a message to the streams whose filters match its topic and
// appends it. It returns false if no stream matches (the message is then not
// durable: plain broker behaviour). Otherwise done is called exactly once,
// possibly from another goroutine and possibly before Append returns, after
// the message is durable in every matching stream, or with an error:
// errors.Is(err, ErrFull) when a stream under the reject-new policy is full
// (back-pressure), any other error for a write failure. Append must not
// block on the disk; payload and headers are not modified afterwards, and
// the sink may keep them.
type Sink interface {
	Append(topic string, payload []byte, headers map[string]string, done func(err error)) bool
}

// ErrFull is what a Sink wraps when a stream refuses new messages because it
// is full: the publisher is told to back off (MQTT 5: reason code 0x97, quota
// exceeded) and the message is not acknowledged.
var ErrFull = errors.New("ingest: stream full")
