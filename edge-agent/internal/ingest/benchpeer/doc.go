// Package benchpeer measures durable sensor ingestion side by side with its
// peers, in one run, with the same MQTT publishers: MQTT 3.1.1, QoS 1,
// payloads of 100 B and 1 KiB, 1, 8 and 64 connections publishing at the
// same time, each keeping a window of unacknowledged messages in flight
// (256 by default; -window, up to 512). Each row reports msgs/s, MB/s of
// payload, and the publish→PUBACK latency p50/p99; ours also reports how
// many records a commit held (recs/commit).
//
// Every row runs with two clients:
//
//   - lean: a minimal publisher on a raw TCP connection, encoding packets
//     with the broker library's codec and writing all its window allows in
//     one write. It costs little CPU, so the broker is what is measured.
//   - paho: the paho client, one Publish and one token per message. On a
//     small machine its own cost caps every peer near the same rate.
//
// The peers:
//
//   - ours-durable: the agent's embedded broker (ingest.StartEmbedded) in
//     its production configuration, with the agent's sink on a real stream
//     (package streams, opened with the agent's options): group commit,
//     fsync before the PUBACK. After the row, the broker's and the stream's
//     counters must both equal the messages acknowledged.
//   - ours-nosync: the same with the stream's fsync off (streams.Options
//     NoSync): what durability costs.
//   - mosquitto: Mosquitto 2 without persistence: a plain broker's PUBACK,
//     nothing on disk.
//   - nats-sync: nats-server 2 with its MQTT listener; QoS 1 messages are
//     stored in JetStream (file storage) before the PUBACK, with
//     sync_interval: always (fsync before the ack, like ours).
//   - nats-default: the same with JetStream's default sync (every 2
//     minutes): acknowledged before it is on disk.
//
// The window is the same for every peer: none of them bounds a
// connection's QoS 1 messages in flight below 1024 (see startOurs,
// startMosquitto, startNATS), so the publishers' window is what is in
// flight. The peers are the innermost loop, so rows compared with each
// other run back to back.
//
// BenchmarkWAL is the disk's ceiling without MQTT: tidwall/wal WriteBatch
// of the same records, 256 a batch, each batch fsync'd.
//
// Run (nats-server is installed by `make bench`, or by
// `go install github.com/nats-io/nats-server/v2@v2.15.2`; Mosquitto by
// .ci/run):
//
//	go test -run '^$' -bench . -benchtime 20000x ./edge-agent/internal/ingest/benchpeer/
//	go test -run '^$' -bench 'Ingest/client=lean' -benchtime 20000x ./edge-agent/internal/ingest/benchpeer/ -args -window 64
//
// b.N is the number of messages of one row, shared among its publishers.
// TestPublishers checks both clients against ours without -bench.
package benchpeer
