package streams

import (
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"github.com/cloudskin/cloudskin/edge-agent/internal/journal"
	"github.com/cloudskin/cloudskin/shared/protocol"
)

// Defaults for the zero fields of a protocol.StreamSpec and of Options.
const (
	DefaultSegmentBytes   = 4 << 20
	DefaultQuotaBytes     = 256 << 20
	DefaultSealSeconds    = 60
	DefaultMaxRecordBytes = 1 << 20
	// DefaultReadRecords is Read's maxRecords when it is 0 or less.
	DefaultReadRecords = 1000
	// DefaultMaintainEvery is how often retention and the quota are applied.
	DefaultMaintainEvery = 5 * time.Second

	// A group commit writes at most this many records or bytes at once.
	maxGroupRecords = 4096
	maxGroupBytes   = 8 << 20

	minSegmentBytes = 4 << 10
	walDirName      = "wal"
)

var (
	// ErrFull means a record was refused because the stream's quota (or the
	// disk) is full and its policy is reject-new: back-pressure for the
	// publisher. Errors wrapping it also wrap journal.ErrFull.
	ErrFull = errors.New("streams: stream full")
	// ErrTooLarge means a record's encoding exceeds Options.MaxRecordBytes.
	ErrTooLarge = errors.New("streams: record too large")
	// ErrClosed is returned after Close.
	ErrClosed = errors.New("streams: stream closed")
	// ErrNotLocal means the offset is below the first one on the node's disk:
	// the caller reads the object store (or, if Status().FirstOffset is
	// above it, the record no longer exists anywhere).
	ErrNotLocal = errors.New("streams: offset not on the local disk")
	// ErrCursor is wrapped by errors of cursor operations that are refused:
	// an empty name, a commit that goes backwards or past NextOffset.
	ErrCursor = errors.New("streams: cursor")
	// ErrUnavailable means the stream's log failed a write and could not be
	// reopened yet; the stream keeps retrying with backoff.
	ErrUnavailable = errors.New("streams: stream unavailable after a write error")
)

// Options configure how a stream runs on this node (the StreamSpec says
// what the stream is). The zero value is the production setting.
type Options struct {
	Logger *slog.Logger
	// NoSync skips every fsync. Benchmarks and tests only: nothing is durable.
	NoSync bool
	// Now is the clock for retention, sealing and zero record times; nil
	// means time.Now.
	Now func() time.Time
	// MaxRecordBytes bounds a record's encoding (payload, topic, headers and
	// a few bytes); 0 means DefaultMaxRecordBytes. Larger records fail with
	// ErrTooLarge.
	MaxRecordBytes int
	// MaintainEvery is how often the committer applies retention and the
	// quota in the background; 0 means DefaultMaintainEvery.
	MaintainEvery time.Duration
	// MinFreeBytes is passed to the journal: the free space every write must
	// leave on the file system (0: two segments; negative: no check).
	MinFreeBytes int64
}

// policy is a spec with its defaults filled in.
type policy struct {
	segment        int64
	quota          int64
	onFull         string
	seal           time.Duration
	retention      time.Duration
	retentionBytes int64
	spill          bool
}

func policyOf(spec protocol.StreamSpec) policy {
	p := policy{
		segment:        spec.SegmentBytes,
		quota:          spec.QuotaBytes,
		onFull:         spec.OnFull,
		seal:           time.Duration(spec.SealSeconds) * time.Second,
		retention:      time.Duration(spec.RetentionSeconds) * time.Second,
		retentionBytes: spec.RetentionBytes,
		spill:          spec.Spill,
	}
	if p.quota == 0 {
		p.quota = DefaultQuotaBytes
	}
	if p.segment == 0 {
		// A default segment must leave room for at least 4 in the quota,
		// or dropping the oldest segment would free too much at once.
		p.segment = min(DefaultSegmentBytes, max(p.quota/4, minSegmentBytes))
	}
	if p.onFull == "" {
		p.onFull = protocol.OnFullReject
	}
	if p.seal == 0 {
		p.seal = DefaultSealSeconds * time.Second
	}
	return p
}

// Stream is one durable, append-only stream on this node. Its methods are
// safe for concurrent use.
type Stream struct {
	name   string
	dir    string
	walDir string
	opts   Options
	log    *slog.Logger
	now    func() time.Time

	// Bounds of the local log, mirrored from the journal by the committer
	// after each write, truncation and reopen.
	firstLocal atomic.Uint64
	next       atomic.Uint64

	mu        sync.Mutex // guards the fields below
	spec      protocol.StreamSpec
	pol       policy
	st        state // what state.json holds
	stVer     uint64
	fresh     map[string]uint64 // cursors handed out by Cursor, not yet committed
	notify    chan struct{}
	uploadErr string
	writeErr  error // the write error the committer is recovering from
	recovered journal.RecoveryReport
	corruptAt map[uint64]bool // offsets Read found corrupt (bounded)

	appended, batches, rejected, dropped, expired, freed, corrupt, recoveries atomic.Uint64

	jmu sync.RWMutex     // guards j: readers hold it shared, a reopen exclusively
	j   *journal.Journal // nil after Close, or while a reopen keeps failing

	// tmu is held while the journal's segment files are removed or renamed
	// (truncation, reopen) and while they are listed, so a listing is
	// never half way through a truncation.
	tmu sync.Mutex

	wmu     sync.Mutex // serializes state.json writes
	written uint64     // stVer of the last state written

	qmu     sync.Mutex
	queue   []pending
	qclosed bool

	wake   chan struct{}         // an Append made the queue non-empty
	ctl    chan func(*committer) // work the committer runs between groups
	stop   chan struct{}         // Close
	exited chan struct{}         // the committer has returned
	closed atomic.Bool
	cerr   error // what closing the journal returned
}

// Open opens (creating it if needed) the stream stored in dir, which is
// the stream's own directory: dir/wal holds the journal, dir/state.json the
// cursors and the spill position. A torn or corrupt tail of the log is
// repaired (see journal.Open); Stats().Recovered says what was cut.
//
// The spec must be valid (protocol.StreamSpec.Validate). If SegmentBytes
// is 0 and the quota is below 4 default segments, segments are a quarter
// of the quota (at least 4 KiB).
func Open(dir string, spec protocol.StreamSpec, opts Options) (*Stream, error) {
	if err := spec.Validate(); err != nil {
		return nil, fmt.Errorf("streams: open %s: %w", dir, err)
	}
	if opts.Logger == nil {
		opts.Logger = slog.Default()
	}
	if opts.Now == nil {
		opts.Now = time.Now
	}
	if opts.MaxRecordBytes <= 0 {
		opts.MaxRecordBytes = DefaultMaxRecordBytes
	}
	if opts.MaintainEvery <= 0 {
		opts.MaintainEvery = DefaultMaintainEvery
	}
	if err := os.MkdirAll(dir, 0o750); err != nil {
		return nil, fmt.Errorf("streams: open %s: %w", dir, err)
	}
	s := &Stream{
		name:      spec.Name,
		dir:       dir,
		walDir:    filepath.Join(dir, walDirName),
		opts:      opts,
		log:       opts.Logger,
		now:       opts.Now,
		spec:      cloneSpec(spec),
		pol:       policyOf(spec),
		fresh:     map[string]uint64{},
		notify:    make(chan struct{}),
		corruptAt: map[uint64]bool{},
		wake:      make(chan struct{}, 1),
		ctl:       make(chan func(*committer)),
		stop:      make(chan struct{}),
		exited:    make(chan struct{}),
	}
	j, err := journal.Open(s.walDir, s.journalOptions())
	if err != nil {
		return nil, fmt.Errorf("streams: open %s: %w", spec.Name, err)
	}
	st, err := loadState(dir, s.log)
	if err != nil {
		j.Close()
		return nil, fmt.Errorf("streams: open %s: %w", spec.Name, err)
	}
	s.st = st
	s.j = j
	s.recovered = j.Recovered()
	if err := s.continueNumbering(j); err != nil {
		j.Close()
		return nil, fmt.Errorf("streams: open %s: %w", spec.Name, err)
	}
	s.syncBounds(j)
	go s.run()
	return s, nil
}

func (s *Stream) journalOptions() journal.Options {
	s.mu.Lock()
	p := s.pol
	s.mu.Unlock()
	return journal.Options{
		SegmentSize:  int(p.segment),
		MaxBytes:     p.quota,
		MinFreeBytes: s.opts.MinFreeBytes,
		NoSync:       s.opts.NoSync,
		Logger:       s.log,
	}
}

// continueNumbering makes sure no offset is used twice. A repair on open
// can cut the last records; if a cursor or the spill position had passed
// them (a bit flip in records that were durable and read), new records must
// not take those offsets again, so fillers take them.
func (s *Stream) continueNumbering(j *journal.Journal) error {
	s.mu.Lock()
	floor := s.st.SpilledThrough
	for _, c := range s.st.Cursors {
		floor = max(floor, c)
	}
	s.mu.Unlock()
	next := j.NextIndex()
	if floor <= next {
		return nil
	}
	s.log.Error("streams: the log ends before offsets already read; filling the gap so offsets are not reused",
		"stream", s.name, "next", next, "read_up_to", floor, "fillers", floor-next)
	filler := encodeRecord(nil, &Record{Time: s.now()}, flagFiller)
	batch := make([][]byte, 0, maxGroupRecords)
	for n := j.NextIndex(); n < floor; n = j.NextIndex() {
		batch = batch[:0]
		for range min(floor-n, maxGroupRecords) {
			batch = append(batch, filler)
		}
		if _, _, err := j.Append(batch...); err != nil {
			return fmt.Errorf("write fillers up to offset %d: %w", floor, err)
		}
		s.batches.Add(1)
	}
	return nil
}

// syncBounds mirrors the journal's bounds.
func (s *Stream) syncBounds(j *journal.Journal) {
	next := j.NextIndex()
	first := j.FirstIndex()
	if first == 0 {
		first = next
	}
	s.firstLocal.Store(first)
	s.next.Store(next)
}

// Spec returns the spec as given to Open or Update (zero fields are not
// filled in with defaults).
func (s *Stream) Spec() protocol.StreamSpec {
	s.mu.Lock()
	defer s.mu.Unlock()
	return cloneSpec(s.spec)
}

func (s *Stream) policy() policy {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.pol
}

func cloneSpec(spec protocol.StreamSpec) protocol.StreamSpec {
	spec.Topics = slices.Clone(spec.Topics)
	return spec
}

// Update changes the stream's spec while it runs: topics, quota, segment
// size, retention, on-full policy, spilling and sealing. A changed quota or
// segment size reopens the journal (between two group commits; appends
// wait meanwhile); a new segment size applies to segments started after
// it. A quota below what the stream holds is enforced like a full stream:
// spilled records are freed, then drop-oldest drops, reject-new refuses
// appends until retention or spilling makes room. The name cannot change.
func (s *Stream) Update(spec protocol.StreamSpec) error {
	if err := spec.Validate(); err != nil {
		return fmt.Errorf("streams: update: %w", err)
	}
	if spec.Name != s.name {
		return fmt.Errorf("streams: update %s: the name cannot change (got %q)", s.name, spec.Name)
	}
	return s.do(func(c *committer) error {
		s.mu.Lock()
		old := s.pol
		s.spec = cloneSpec(spec)
		s.pol = policyOf(spec)
		p := s.pol
		s.mu.Unlock()
		if c.broken == nil && (old.segment != p.segment || old.quota != p.quota) {
			if err := s.reopen("spec changed"); err != nil {
				s.fail(c, err) // retried with backoff like a write error
				return fmt.Errorf("streams: update %s: reopen the log: %w", s.name, err)
			}
		}
		s.maintainIfHealthy(c)
		return nil
	})
}

// FirstLocal returns the first offset on the node's disk; NextOffset when
// the local log is empty.
func (s *Stream) FirstLocal() uint64 { return s.firstLocal.Load() }

// NextOffset returns the offset the next record gets.
func (s *Stream) NextOffset() uint64 { return s.next.Load() }

// FirstOffset returns the oldest offset that can be read at all, locally
// or from the object store.
func (s *Stream) FirstOffset() uint64 {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.firstOffsetLocked()
}

func (s *Stream) firstOffsetLocked() uint64 {
	first := s.firstLocal.Load()
	if f := s.st.SpilledFrom; f > 0 && f < first {
		return f
	}
	return first
}

// Notify returns a channel that is closed when new records become durable
// (or the stream closes). Take it before reading, so nothing is missed:
//
//	ch := s.Notify()
//	recs, err := s.Read(next, 100, 1<<20)
//	if len(recs) == 0 { <-ch }
func (s *Stream) Notify() <-chan struct{} {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.notify
}

// wakeReaders closes the notify channel and starts a new one.
func (s *Stream) wakeReaders() {
	s.mu.Lock()
	close(s.notify)
	if s.closed.Load() {
		s.notify = closedChan
	} else {
		s.notify = make(chan struct{})
	}
	s.mu.Unlock()
}

var closedChan = func() chan struct{} { c := make(chan struct{}); close(c); return c }()

// Close writes what is queued, stops the committer and closes the log.
// Appends after Close fail with ErrClosed.
func (s *Stream) Close() error {
	s.qmu.Lock()
	if s.qclosed {
		s.qmu.Unlock()
		return ErrClosed
	}
	s.qclosed = true
	s.qmu.Unlock()
	close(s.stop)
	<-s.exited
	return s.cerr
}

// do runs f on the committer goroutine, between two group commits.
func (s *Stream) do(f func(*committer) error) error {
	res := make(chan error, 1)
	select {
	case s.ctl <- func(c *committer) { res <- f(c) }:
		return <-res
	case <-s.exited:
		return ErrClosed
	}
}

// acquire returns the open journal with jmu held shared; release calls
// RUnlock. It fails after Close and while the journal is being recovered.
func (s *Stream) acquire() (*journal.Journal, error) {
	s.jmu.RLock()
	if s.j == nil {
		s.jmu.RUnlock()
		if s.closed.Load() {
			return nil, ErrClosed
		}
		s.mu.Lock()
		werr := s.writeErr
		s.mu.Unlock()
		return nil, fmt.Errorf("%w: %s: %v", ErrUnavailable, s.name, werr)
	}
	return s.j, nil
}

func (s *Stream) release() { s.jmu.RUnlock() }
