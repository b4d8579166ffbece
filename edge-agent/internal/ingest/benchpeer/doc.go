// Package benchpeer measures durable sensor ingestion side by side with its
// peers, in one run, with the same MQTT publishers: paho clients (MQTT
// 3.1.1, QoS 1), each keeping 64 messages in flight, with payloads of
// 100 B and 1 KiB, 1, 8 and 64 at a time. Each row reports msgs/s, MB/s of
// payload, and the publish→PUBACK latency p50/p99.
//
// The peers:
//
//   - ours-durable: the agent's embedded broker (ingest.Embedded) with a
//     sink on the journal (group commit, fsync before the PUBACK). It is
//     built by durableSink, the one place to change when the streams
//     package replaces the journal sink.
//   - ours-nosync: the same with the journal's fsync off: what durability
//     costs.
//   - mosquitto: Mosquitto 2 without persistence: a plain broker's PUBACK,
//     nothing on disk.
//   - nats-sync: nats-server 2 with its MQTT listener; QoS 1 messages are
//     stored in JetStream (file storage) before the PUBACK, with
//     sync_interval: always (fsync before the ack, like ours).
//   - nats-default: the same with JetStream's default sync (every 2
//     minutes): acknowledged before it is on disk.
//
// BenchmarkWAL is the disk's ceiling without MQTT: tidwall/wal WriteBatch
// of the same records, 256 a batch, each batch fsync'd.
//
// Run (nats-server is installed by `make bench`, or by
// `go install github.com/nats-io/nats-server/v2@v2.15.2`; Mosquitto by
// .ci/run):
//
//	go test -run '^$' -bench . -benchtime 20000x ./edge-agent/internal/ingest/benchpeer/
//
// b.N is the number of messages of one row, shared among its publishers.
package benchpeer
