// Package ingest is where sensor messages enter the agent: an MQTT broker
// (embedded, or an existing local Mosquitto) whose messages for durable
// streams are acknowledged to their publisher only once a [Sink] has them
// on disk.
//
// # Durable acknowledgement
//
// A message whose topic a stream's filters match is handed to the Sink. For
// QoS 1 the PUBACK (for QoS 2 the PUBREC) is sent only after the Sink calls
// done, that is after the message is fsync'd in every matching stream's
// write-ahead log, so a publisher never sees an acknowledgement for
// something a kill -9 can lose. Messages that no stream matches get plain
// broker behaviour.
//
// The embedded broker ([StartEmbedded]) takes the acknowledgement away from
// the broker library instead of blocking its read loop on the fsync: each
// client's messages wait in an in-order queue and the acknowledgements are
// written, in the order the PUBLISHes arrived, as their commits finish. One
// publisher can therefore keep many messages in flight and have them share
// group commits. A client with MaxPending messages outstanding is not read
// until some are acknowledged: back-pressure instead of unbounded memory.
//
// The external mode ([StartExternal]) subscribes to an existing broker with
// a persistent session and acknowledges each delivery after the Sink stored
// it; what it cannot store stays unacknowledged and the broker redelivers it
// after a reconnect.
//
// Delivery is at least once: a publisher that resends after a lost
// acknowledgement, or a redelivery after a reconnect, stores a message
// twice. QoS 0 is fire and forget: it is appended but can be lost in a crash
// before the fsync.
package ingest
