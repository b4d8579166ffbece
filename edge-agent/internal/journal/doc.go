// Package journal is the edge agent's durable local log: an append-only
// sequence of records, each acknowledged only once it is on disk, on which
// the telemetry outbox and the sensor streams are built. It wraps
// github.com/tidwall/wal and adds what that library leaves out: a checksum
// per record, group commit of concurrent writers, a disk quota checked before
// every write, and repair of a damaged tail when the log is opened.
//
// # Indices
//
// Records are numbered from 1 without gaps. [Journal.TruncateFront] removes
// records from the front; the numbering continues where it was, also after
// removing every record and after a reopen (the library names the empty
// segment after the next index). FirstIndex and LastIndex return 0 when the
// log is empty; NextIndex always returns the index the next record will get.
// Only a repair on Open (see [RecoveryReport]) makes indices be used again:
// the records it cut were never acknowledged as durable, except in the rare
// case of a bit flip in the very last records, which the report then shows.
//
// # On-disk format
//
// A journal is one directory. The records live in segment files, named (as
// tidwall/wal names them) after the index of their first record, zero-padded
// to 20 digits: 00000000000000000001, 00000000000000004097, … A new segment
// starts once the current one reaches Options.SegmentSize. While a
// TruncateFront runs, the library briefly writes NNN.START (and NNN.START.TEMP)
// files; journal.lock holds an advisory lock (flock) while the journal is open.
//
// A segment is a plain concatenation of entries in the library's binary
// format, and each entry's data is one record frame:
//
//	entry  = uvarint(len(frame)) frame
//	frame  = crc[4] version[1] payload
//	crc    = CRC-32C (Castagnoli), little-endian, of
//	         index as 8 bytes little-endian ‖ version ‖ payload
//	version = 1
//
// The index of an entry is not stored; it is the segment's first index plus
// the entry's position in the segment. Putting it under the checksum makes a
// record that turns up at the wrong index (a misnamed or stale segment) fail
// its check just like a flipped bit.
//
// # Damage
//
// A crash in the middle of a write leaves a torn entry at the end of the last
// segment; a torn write that the file system padded with zeros leaves entries
// whose frames fail their checksum. Open cuts the last segment back to just
// after its last valid record and reports what it cut. A record that fails
// its checksum but is followed by valid ones is not a torn tail: it is kept,
// Read returns an error wrapping [ErrCorrupt] for it, and the report lists it.
// Earlier segments are checked only when read.
package journal
