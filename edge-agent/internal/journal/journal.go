package journal

import (
	"errors"
	"fmt"
	"log/slog"
	"os"
	"slices"
	"sync"
	"sync/atomic"

	"github.com/tidwall/wal"
)

// DefaultSegmentSize is the segment size when Options.SegmentSize is 0.
const DefaultSegmentSize = 4 << 20

var (
	// ErrFull means an append was refused, and nothing of it written, because
	// it would exceed Options.MaxBytes or leave less than Options.MinFreeBytes
	// free on the file system. The caller decides: reject the new data or
	// TruncateFront the oldest and try again.
	ErrFull = errors.New("journal: full")
	// ErrClosed is returned by every method after Close.
	ErrClosed = errors.New("journal: closed")
	// ErrNotFound means the index is outside FirstIndex..LastIndex.
	ErrNotFound = errors.New("journal: index not found")
	// ErrCorrupt means a record (or the segment holding it) fails its check.
	// The rest of the log stays readable.
	ErrCorrupt = errors.New("journal: corrupt record")
	// ErrFailed is returned by writes after an earlier write failed: the
	// library's state may then disagree with the disk, so the journal takes
	// no more writes until it is closed and opened again, which repairs it.
	ErrFailed = errors.New("journal: unusable after a failed write; reopen to recover")
	// ErrLocked means another Journal (in this or another process) has the
	// directory open.
	ErrLocked = errors.New("journal: directory is in use")
)

// Options configure a Journal. The zero value is the production setting.
type Options struct {
	// SegmentSize is the size in bytes at which a new segment file starts;
	// 0 means DefaultSegmentSize. The last segment is held in memory.
	SegmentSize int
	// MaxBytes is a hard quota on the bytes of all segment files; 0 means no
	// quota. An append that would exceed it fails with ErrFull.
	MaxBytes int64
	// MinFreeBytes is the free space an append must leave on the file
	// system; 0 means 2×SegmentSize (TruncateFront needs up to one segment
	// of room), a negative value turns the check off.
	MinFreeBytes int64
	// NoSync skips fsync. For tests and benchmarks only: nothing is durable.
	NoSync bool
	// Logger receives what recovery cut and write failures; nil means
	// slog.Default().
	Logger *slog.Logger
}

func (o Options) withDefaults() (Options, error) {
	if o.SegmentSize < 0 {
		return o, fmt.Errorf("journal: Options.SegmentSize must not be negative (0 means %d), got %d", DefaultSegmentSize, o.SegmentSize)
	}
	if o.MaxBytes < 0 {
		return o, fmt.Errorf("journal: Options.MaxBytes must not be negative (0 means no quota), got %d", o.MaxBytes)
	}
	if o.SegmentSize == 0 {
		o.SegmentSize = DefaultSegmentSize
	}
	if o.MinFreeBytes == 0 {
		o.MinFreeBytes = 2 * int64(o.SegmentSize)
	}
	if o.Logger == nil {
		o.Logger = slog.Default()
	}
	return o, nil
}

func (o Options) wal() *wal.Options {
	return &wal.Options{
		NoSync:           o.NoSync,
		SegmentSize:      o.SegmentSize,
		LogFormat:        wal.Binary,
		SegmentCacheSize: 2,
		NoCopy:           true, // Read checks the frame and copies the payload itself
		AllowEmpty:       true, // TruncateFront may remove every record
		DirPerms:         0o750,
		FilePerms:        0o640,
	}
}

// Journal is a durable, append-only log of records. Its methods are safe
// for concurrent use. FirstIndex, LastIndex, NextIndex, Len and SizeBytes
// never block; Read takes the library's lock, which it holds through each
// write and fsync, so a Read may wait for one write in progress.
type Journal struct {
	dir       string
	opts      Options
	log       *slog.Logger
	wal       *wal.Log
	lock      *os.File
	recovered RecoveryReport

	closed atomic.Bool
	first  atomic.Uint64 // index of the first record; == next when empty
	next   atomic.Uint64 // index the next record gets
	size   atomic.Int64  // bytes in segment files

	batches, records, bytes, rejected atomic.Uint64

	mu     sync.Mutex // serializes writes; guards the fields below
	tail   int64      // bytes in the last segment file
	failed error      // first write error; no writes after it
	batch  wal.Batch
	frame  []byte
	sizes  []int64

	qmu     sync.Mutex // guards the group-commit queue
	queue   []*request
	leading bool
}

// request is one caller's batch.
type request struct {
	data        [][]byte
	first, last uint64
	err         error
	done        chan struct{} // Commit: closed when err/first/last are set or the caller must lead
	lead        bool
}

// Open opens the journal in dir, creating it if needed. If the last segment
// ends in a torn or invalid tail it is cut back to its last valid record
// first; Recovered says what was cut.
func Open(dir string, opts Options) (*Journal, error) {
	opts, err := opts.withDefaults()
	if err != nil {
		return nil, err
	}
	if err := os.MkdirAll(dir, 0o750); err != nil {
		return nil, fmt.Errorf("journal: %w", err)
	}
	lock, err := lockDir(dir)
	if err != nil {
		return nil, err
	}
	j := &Journal{dir: dir, opts: opts, log: opts.Logger, lock: lock}
	if err := j.open(); err != nil {
		lock.Close()
		return nil, err
	}
	return j, nil
}

func (j *Journal) open() error {
	rep := &j.recovered
	stale, err := removeStaleTemp(j.dir)
	rep.StaleFiles = stale
	if err != nil {
		return fmt.Errorf("journal: open %s: remove stale files: %w", j.dir, err)
	}
	if len(stale) > 0 {
		j.log.Warn("journal: removed leftovers of an interrupted truncation", "dir", j.dir, "files", stale)
	}
	w, err := wal.Open(j.dir, j.opts.wal())
	if errors.Is(err, wal.ErrCorrupt) {
		// The library cannot parse the last segment and does not repair it
		// (tidwall/wal#21): cut it back to the last valid record and retry.
		cut, rerr := repairTail(j.dir)
		if rerr != nil {
			return fmt.Errorf("journal: open %s: repair: %w", j.dir, rerr)
		}
		if !cut.Cut() {
			return fmt.Errorf("journal: open %s: %w: %w", j.dir, ErrCorrupt, err)
		}
		j.reportCut(cut)
		w, err = wal.Open(j.dir, j.opts.wal())
	}
	if err != nil {
		if errors.Is(err, wal.ErrCorrupt) {
			err = fmt.Errorf("%w: %w", ErrCorrupt, err)
		}
		return fmt.Errorf("journal: open %s: %w", j.dir, err)
	}
	// The library checks lengths only; entries at the end whose checksum
	// fails are what is left of a write torn by a crash.
	cut, err := repairTail(j.dir)
	if err != nil {
		w.Close()
		return fmt.Errorf("journal: open %s: repair: %w", j.dir, err)
	}
	if cut.Cut() {
		j.reportCut(cut)
		if err := w.Close(); err != nil {
			return fmt.Errorf("journal: open %s: %w", j.dir, err)
		}
		if w, err = wal.Open(j.dir, j.opts.wal()); err != nil {
			return fmt.Errorf("journal: open %s after repair: %w", j.dir, err)
		}
	}
	rep.Corrupt, rep.CorruptCount = cut.Corrupt, cut.CorruptCount
	if rep.CorruptCount > 0 {
		j.log.Error("journal: records fail their checksum and cannot be read", "dir", j.dir,
			"count", rep.CorruptCount, "indices", rep.Corrupt)
	}
	j.wal = w

	first, err := w.FirstIndex()
	if err == nil {
		var last uint64
		last, err = w.LastIndex()
		j.first.Store(first)
		j.next.Store(last + 1)
	}
	var total int64
	if err == nil {
		total, j.tail, err = diskUsage(j.dir)
		j.size.Store(total)
	}
	if err == nil && !j.opts.NoSync {
		err = syncDir(j.dir) // a new log's first segment, a repaired one
	}
	if err != nil {
		w.Close()
		return fmt.Errorf("journal: open %s: %w", j.dir, err)
	}
	return nil
}

func (j *Journal) reportCut(cut RecoveryReport) {
	r := &j.recovered
	r.Segment, r.Offset, r.BytesDropped = cut.Segment, cut.Offset, r.BytesDropped+cut.BytesDropped
	r.RecordsDropped += cut.RecordsDropped
	r.Torn = r.Torn || cut.Torn
	if r.FirstDropped == 0 || cut.FirstDropped < r.FirstDropped {
		r.FirstDropped = cut.FirstDropped
	}
	if r.Reason == "" {
		r.Reason = cut.Reason
	} else {
		r.Reason += "; " + cut.Reason
	}
	j.log.Warn("journal: cut damaged tail", "dir", j.dir, "segment", cut.Segment, "offset", cut.Offset,
		"bytes_dropped", cut.BytesDropped, "records_dropped", cut.RecordsDropped, "torn", cut.Torn,
		"first_dropped_index", cut.FirstDropped, "reason", cut.Reason)
}

// Recovered reports what Open had to repair.
func (j *Journal) Recovered() RecoveryReport {
	r := j.recovered
	r.Corrupt = slices.Clone(r.Corrupt)
	r.StaleFiles = slices.Clone(r.StaleFiles)
	return r
}

// Dir returns the journal's directory.
func (j *Journal) Dir() string { return j.dir }

// Append writes data as consecutive records with one write and one fsync
// and returns the indices of the first and the last. It returns once they
// are durable. The quota is checked for the whole batch: on ErrFull nothing
// is written. A batch is not atomic across a crash: a prefix may survive.
// Appending nothing returns 0, 0, nil.
func (j *Journal) Append(data ...[]byte) (first, last uint64, err error) {
	if len(data) == 0 {
		return 0, 0, nil
	}
	r := request{data: data}
	reqs := [1]*request{&r}
	j.mu.Lock()
	j.appendLocked(reqs[:])
	j.mu.Unlock()
	return r.first, r.last, r.err
}

// appendLocked writes the requests that fit the quota with one WriteBatch
// and sets each request's result. j.mu must be held.
func (j *Journal) appendLocked(reqs []*request) {
	fail := func(err error) {
		for _, r := range reqs {
			r.err = err
		}
	}
	switch {
	case j.closed.Load():
		fail(ErrClosed)
		return
	case j.failed != nil:
		fail(fmt.Errorf("%w: %s: %w", ErrFailed, j.dir, j.failed))
		return
	}
	free := int64(-1)
	if j.opts.MinFreeBytes > 0 {
		var err error
		if free, err = freeBytes(j.dir); err != nil {
			fail(fmt.Errorf("journal: %s: check free space: %w", j.dir, err))
			return
		}
	}

	next := j.next.Load()
	size := j.size.Load()
	var added int64
	var admitted int
	j.batch.Clear()
	j.sizes = j.sizes[:0]
	for _, r := range reqs {
		var need int64
		for _, d := range r.data {
			need += entrySize(len(d))
		}
		if quota := j.opts.MaxBytes; quota > 0 && size+added+need > quota {
			r.err = fmt.Errorf("%w: %s holds %d bytes; %d more would exceed the quota of %d",
				ErrFull, j.dir, size+added, need, quota)
			j.rejected.Add(uint64(len(r.data)))
			continue
		}
		if free >= 0 && free-added-need < j.opts.MinFreeBytes {
			r.err = fmt.Errorf("%w: %d bytes free on the file system of %s; %d more would leave less than the reserve of %d",
				ErrFull, free-added, j.dir, need, j.opts.MinFreeBytes)
			j.rejected.Add(uint64(len(r.data)))
			continue
		}
		r.first = next
		for _, d := range r.data {
			j.frame = appendFrame(j.frame[:0], next, d)
			j.batch.Write(next, j.frame)
			j.sizes = append(j.sizes, entrySize(len(d)))
			next++
		}
		r.last = next - 1
		added += need
		admitted++
	}
	if admitted == 0 {
		return
	}

	rolled, tail := j.predictRoll(j.sizes)
	err := j.wal.WriteBatch(&j.batch)
	if err == nil && rolled && !j.opts.NoSync {
		// The library created a segment file; make its name durable too.
		err = syncDir(j.dir)
	}
	if err != nil {
		// The library may now believe it wrote what is not on disk (a full
		// disk does this), so the next write could make the log unopenable.
		j.failed = err
		j.log.Error("journal: write failed; no more appends until reopened", "dir", j.dir, "err", err)
		for _, r := range reqs {
			if r.err == nil {
				r.err = fmt.Errorf("journal: %s: append: %w", j.dir, err)
				r.first, r.last = 0, 0
			}
		}
		return
	}
	j.tail = tail
	j.size.Add(added)
	j.next.Store(next)
	j.batches.Add(1)
	j.records.Add(uint64(len(j.sizes)))
	j.bytes.Add(uint64(added))
}

// predictRoll tells whether writing entries of the given sizes makes the
// library start a new segment file, and how big the last segment is after.
// It mirrors the rule of (*wal.Log).writeBatch in v1.2.1: start a new
// segment before the batch when the last one is over SegmentSize, and after
// any entry that brings it to SegmentSize.
func (j *Journal) predictRoll(sizes []int64) (rolled bool, tail int64) {
	seg := int64(j.opts.SegmentSize)
	tail = j.tail
	if tail > seg {
		rolled, tail = true, 0
	}
	for _, s := range sizes {
		if tail += s; tail >= seg {
			rolled, tail = true, 0
		}
	}
	return rolled, tail
}

// Read returns a copy of the record at index. A record that fails its
// checksum returns an error wrapping ErrCorrupt; one outside
// FirstIndex..LastIndex returns an error wrapping ErrNotFound.
func (j *Journal) Read(index uint64) ([]byte, error) {
	if j.closed.Load() {
		return nil, ErrClosed
	}
	first, next := j.first.Load(), j.next.Load()
	if index < first || index >= next {
		return nil, fmt.Errorf("%w: %d (journal holds %d..%d)", ErrNotFound, index, first, next-1)
	}
	frame, err := j.wal.Read(index)
	switch {
	case errors.Is(err, wal.ErrNotFound):
		return nil, fmt.Errorf("%w: %d", ErrNotFound, index) // truncated meanwhile
	case errors.Is(err, wal.ErrClosed):
		return nil, ErrClosed
	case errors.Is(err, wal.ErrCorrupt):
		return nil, fmt.Errorf("%w: %s: record %d: its segment cannot be parsed", ErrCorrupt, j.dir, index)
	case err != nil:
		return nil, fmt.Errorf("journal: %s: read %d: %w", j.dir, index, err)
	}
	payload, err := openFrame(index, frame)
	if err != nil {
		return nil, fmt.Errorf("%w: %s: record %d: %w", ErrCorrupt, j.dir, index, err)
	}
	// frame aliases the library's segment buffer (NoCopy), which it never
	// overwrites; copy so the caller owns the result.
	out := make([]byte, len(payload))
	copy(out, payload)
	return out, nil
}

// FirstIndex returns the index of the first record, or 0 when the journal
// is empty.
func (j *Journal) FirstIndex() uint64 {
	first, next := j.first.Load(), j.next.Load()
	if first >= next {
		return 0
	}
	return first
}

// LastIndex returns the index of the last record, or 0 when the journal is
// empty. Use NextIndex to learn where numbering continues.
func (j *Journal) LastIndex() uint64 {
	first, next := j.first.Load(), j.next.Load()
	if first >= next {
		return 0
	}
	return next - 1
}

// NextIndex returns the index the next appended record will get. It never
// decreases, except when Open cuts a damaged tail.
func (j *Journal) NextIndex() uint64 { return j.next.Load() }

// Len returns the number of records.
func (j *Journal) Len() uint64 {
	first := j.first.Load()
	return j.next.Load() - first
}

// SizeBytes returns the bytes the segment files take, what MaxBytes limits.
func (j *Journal) SizeBytes() int64 { return j.size.Load() }

// TruncateFront removes every record before index. An index at or before
// FirstIndex does nothing; NextIndex removes every record, and numbering
// continues at NextIndex. The library rewrites the segment that holds index,
// so truncate in large steps rather than record by record. If that segment
// cannot be parsed at all (Read returns ErrCorrupt for each of its records),
// the whole of it is removed: truncation goes on to the next segment.
func (j *Journal) TruncateFront(index uint64) error {
	j.mu.Lock()
	defer j.mu.Unlock()
	switch {
	case j.closed.Load():
		return ErrClosed
	case j.failed != nil:
		return fmt.Errorf("%w: %s: %w", ErrFailed, j.dir, j.failed)
	}
	first, next := j.first.Load(), j.next.Load()
	if index <= first {
		return nil
	}
	if index > next {
		return fmt.Errorf("%w: truncate front to %d, past the next index %d", ErrNotFound, index, next)
	}
	err := j.wal.TruncateFront(index)
	if errors.Is(err, wal.ErrCorrupt) {
		if to, ok := j.nextSegmentStart(index); ok {
			// The library cannot parse the segment holding index, so none
			// of its records is readable (each Read says ErrCorrupt), and it
			// cannot cut inside it. Cut at its end instead, or the caller
			// could never get past it.
			j.log.Warn("journal: truncating past an unreadable segment", "dir", j.dir,
				"requested", index, "truncated_to", to)
			index = to
			err = j.wal.TruncateFront(index)
		}
	}
	if err != nil {
		if _, cerr := j.wal.FirstIndex(); cerr != nil {
			// The library marked itself corrupt: files and memory disagree.
			j.failed = err
			j.log.Error("journal: truncate failed; no more writes until reopened", "dir", j.dir, "err", err)
		}
		return fmt.Errorf("journal: %s: truncate front to %d: %w", j.dir, index, err)
	}
	j.first.Store(index)
	total, tail, err := diskUsage(j.dir)
	if err != nil {
		return fmt.Errorf("journal: %s: size after truncate: %w", j.dir, err)
	}
	j.size.Store(total)
	j.tail = tail
	if !j.opts.NoSync {
		if err := syncDir(j.dir); err != nil {
			return fmt.Errorf("journal: %s: sync after truncate: %w", j.dir, err)
		}
	}
	return nil
}

// nextSegmentStart returns the first index of the segment after the one
// holding index, if that is not the last segment.
func (j *Journal) nextSegmentStart(index uint64) (uint64, bool) {
	segs, err := listSegments(j.dir)
	if err != nil {
		return 0, false
	}
	for k := 0; k+1 < len(segs); k++ {
		if segs[k].index <= index && index < segs[k+1].index {
			return segs[k+1].index, true
		}
	}
	return 0, false
}

// Stats counts what this Journal has written since Open.
type Stats struct {
	Batches  uint64 // WriteBatch calls: one fsync each (more if it fills a segment)
	Records  uint64 // records written
	Bytes    uint64 // bytes written to segment files
	Rejected uint64 // records refused with ErrFull
}

// Stats returns the counters since Open.
func (j *Journal) Stats() Stats {
	return Stats{
		Batches:  j.batches.Load(),
		Records:  j.records.Load(),
		Bytes:    j.bytes.Load(),
		Rejected: j.rejected.Load(),
	}
}

// Close syncs and closes the journal and releases its directory. Appends
// waiting in Commit get ErrClosed.
func (j *Journal) Close() error {
	j.mu.Lock()
	defer j.mu.Unlock()
	if j.closed.Swap(true) {
		return ErrClosed
	}
	err := j.wal.Close()
	if err != nil {
		err = fmt.Errorf("journal: %s: close: %w", j.dir, err)
	}
	return errors.Join(err, j.lock.Close())
}
