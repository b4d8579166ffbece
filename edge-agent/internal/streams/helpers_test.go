package streams

import (
	"bytes"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"sort"
	"sync"
	"testing"
	"time"

	"github.com/cloudskin/cloudskin/shared/protocol"
)

// base is the ingest time of record 1 in most tests; record i is one
// second later than record i-1.
var base = time.Date(2025, 6, 1, 12, 0, 0, 0, time.UTC)

func testLogger(t testing.TB) *slog.Logger {
	return slog.New(slog.NewTextHandler(t.Output(), &slog.HandlerOptions{Level: slog.LevelWarn}))
}

// spec returns a valid spec named "s" for sensors/#, changed by mods.
func spec(mods ...func(*protocol.StreamSpec)) protocol.StreamSpec {
	sp := protocol.StreamSpec{Name: "s", Topics: []string{"sensors/#"}}
	for _, m := range mods {
		m(&sp)
	}
	return sp
}

// small is a spec with 4 KiB segments (the minimum) and a 16 KiB quota.
func small(sp *protocol.StreamSpec) {
	sp.SegmentBytes = 4 << 10
	sp.QuotaBytes = 16 << 10
}

// clock is a settable clock for Options.Now.
type clock struct {
	mu sync.Mutex
	t  time.Time
}

func newClock(t time.Time) *clock { return &clock{t: t} }

func (c *clock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.t
}

func (c *clock) Set(t time.Time) {
	c.mu.Lock()
	c.t = t
	c.mu.Unlock()
}

// openT opens a stream and closes it when the test ends. Background
// maintenance is off (tests call ApplyRetention).
func openT(t testing.TB, dir string, sp protocol.StreamSpec, opts Options) *Stream {
	t.Helper()
	if opts.Logger == nil {
		opts.Logger = testLogger(t)
	}
	if opts.MaintainEvery == 0 {
		opts.MaintainEvery = time.Hour
	}
	s, err := Open(dir, sp, opts)
	if err != nil {
		t.Fatalf("Open(%s): %v", dir, err)
	}
	t.Cleanup(func() {
		if err := s.Close(); err != nil && !errors.Is(err, ErrClosed) {
			t.Errorf("Close: %v", err)
		}
	})
	return s
}

func closeT(t testing.TB, s *Stream) {
	t.Helper()
	if err := s.Close(); err != nil {
		t.Fatalf("Close: %v", err)
	}
}

// rec is record i as most tests write it: about 200 bytes.
func rec(i uint64) Record {
	return Record{
		Time:    base.Add(time.Duration(i) * time.Second),
		Topic:   fmt.Sprintf("sensors/station-%03d/temp", i%7),
		Headers: map[string]string{"unit": "C"},
		Payload: payload(i),
	}
}

func payload(i uint64) []byte {
	b := bytes.Repeat([]byte{byte(i)}, 160)
	copy(b, fmt.Sprintf("reading %d;", i))
	return b
}

// appendN appends records with rec(offset) and checks their offsets.
func appendN(t testing.TB, s *Stream, n int) {
	t.Helper()
	for range n {
		want := s.NextOffset()
		got, err := s.AppendWait(rec(want))
		if err != nil {
			t.Fatalf("AppendWait(%d): %v", want, err)
		}
		if got != want {
			t.Fatalf("AppendWait got offset %d, want %d", got, want)
		}
	}
}

// checkRecords reads first..last and compares each with rec(offset).
func checkRecords(t testing.TB, s *Stream, first, last uint64) {
	t.Helper()
	next := first
	for next <= last {
		recs, err := s.Read(next, 100, 0)
		if err != nil {
			t.Fatalf("Read(%d): %v", next, err)
		}
		if len(recs) == 0 {
			t.Fatalf("Read(%d): no records, want up to %d", next, last)
		}
		for _, r := range recs {
			if r.Offset > last {
				return
			}
			if r.Offset != next {
				t.Fatalf("Read: offset %d, want %d", r.Offset, next)
			}
			checkRecord(t, r, rec(r.Offset))
			next++
		}
	}
}

func checkRecord(t testing.TB, got, want Record) {
	t.Helper()
	if !got.Time.Equal(want.Time.Truncate(time.Microsecond)) || got.Topic != want.Topic ||
		!bytes.Equal(got.Payload, want.Payload) || fmt.Sprint(got.Headers) != fmt.Sprint(want.Headers) {
		t.Fatalf("record %d = {%v %q %v %q}, want {%v %q %v %q}", got.Offset,
			got.Time, got.Topic, got.Headers, got.Payload, want.Time, want.Topic, want.Headers, want.Payload)
	}
}

// lastSegment returns the path of the stream's last segment file.
func lastSegment(t testing.TB, dir string) string {
	t.Helper()
	des, err := os.ReadDir(filepath.Join(dir, walDirName))
	if err != nil {
		t.Fatal(err)
	}
	var names []string
	for _, de := range des {
		if len(de.Name()) == 20 && de.Type().IsRegular() {
			names = append(names, de.Name())
		}
	}
	if len(names) == 0 {
		t.Fatal("no segment files")
	}
	sort.Strings(names)
	return filepath.Join(dir, walDirName, names[len(names)-1])
}

// segmentCount returns how many segment files the stream has.
func segmentCount(t testing.TB, s *Stream) int {
	t.Helper()
	segs, err := s.segments()
	if err != nil {
		t.Fatal(err)
	}
	return len(segs)
}
