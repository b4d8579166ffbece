// Package streams keeps the node's durable streams: named, append-only logs
// of sensor messages on the local disk, read by cells through named
// cursors and spilled, segment by segment, to cloud object storage. Each
// stream is a journal (package journal: tidwall/wal with a CRC per record,
// a hard quota and repair of a torn tail) plus a small state file.
//
// # Durability contract
//
// Append hands a record to the stream's committer goroutine, which writes
// every record queued so far with one journal write and one fsync (group
// commit: while one fsync runs, the next group accumulates). The done
// callback runs only after that fsync, so a message acknowledged to its
// publisher from done survives kill -9 and power loss. A crash between the
// fsync and the acknowledgement reaching the publisher makes the publisher
// resend: the record is then stored twice (at-least-once, never lost).
//
// Readers get at-least-once delivery through cursors: a reader commits a
// cursor only after it handled the records below it, so a crash in between
// delivers them again. Records carry their offsets, which never repeat, so
// a reader that must not apply a record twice remembers the highest offset
// it applied.
//
// # When the disk fills
//
// The quota (StreamSpec.QuotaBytes) is the journal's hard limit. When a
// write would exceed it (or leave too little free space on the disk), the
// stream first removes local copies of records that are already in the
// object store. If that is not enough, the spec's policy decides: reject-new
// refuses the records (ErrFull, counted in Rejected; the publisher is not
// acknowledged and feels back-pressure), drop-oldest removes the oldest
// local records, spilled or not, counting each in Dropped and logging it.
// Nothing is ever lost silently, and a full disk never stops the process.
//
// # Write errors
//
// A journal write that fails (other than for the quota) leaves the journal
// unusable until it is reopened (journal.ErrFailed). The stream fails the
// group's records with the error, refuses appends with ErrUnavailable and
// reopens the journal, which repairs its tail, with backoff from 100 ms to
// 30 s, until it succeeds. Stats().WriteError shows the error meanwhile.
//
// # Offsets
//
// Offsets are the journal's indices: from 1, one per record, never reused.
// Removing records from the front (retention, quota) keeps the numbering,
// also across a restart. If a repair on open cuts records that a cursor or
// the spill position had already passed (only a bit flip in durable records
// does that), filler records take their offsets, so new records never get
// an offset a reader has already seen.
//
// # Layout on disk
//
//	<dir>/wal/            the journal: segment files named after their first offset
//	<dir>/state.json      cursors and spill position, replaced atomically
//
// The record encoding is documented in record.go.
package streams
