package journal

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"testing"
)

// testLogger sends the journal's log lines to the test's output.
func testLogger(t testing.TB) *slog.Logger {
	return slog.New(slog.NewTextHandler(t.Output(), nil))
}

// openT opens a journal and closes it when the test ends.
func openT(t testing.TB, dir string, opts Options) *Journal {
	t.Helper()
	if opts.Logger == nil {
		opts.Logger = testLogger(t)
	}
	j, err := Open(dir, opts)
	if err != nil {
		t.Fatalf("Open(%s): %v", dir, err)
	}
	t.Cleanup(func() {
		if err := j.Close(); err != nil && !errors.Is(err, ErrClosed) {
			t.Errorf("Close: %v", err)
		}
	})
	return j
}

func closeT(t testing.TB, j *Journal) {
	t.Helper()
	if err := j.Close(); err != nil {
		t.Fatalf("Close: %v", err)
	}
}

// payloadFor is the content the tests store at index i: recognisable and
// of varying length, so entries have one- and two-byte length prefixes.
func payloadFor(i uint64) []byte {
	b := make([]byte, 20+int(i*7919%400))
	for k := range b {
		b[k] = byte(i + uint64(k))
	}
	copy(b, fmt.Sprintf("record %d:", i))
	return b
}

// appendN appends n records one by one, each with payloadFor its index.
func appendN(t testing.TB, j *Journal, n int) {
	t.Helper()
	for range n {
		want := j.NextIndex()
		first, last, err := j.Append(payloadFor(want))
		if err != nil {
			t.Fatalf("Append(%d): %v", want, err)
		}
		if first != want || last != want {
			t.Fatalf("Append got indices %d..%d, want %d", first, last, want)
		}
	}
}

// checkRecords reads first..last and compares with payloadFor.
func checkRecords(t testing.TB, j *Journal, first, last uint64) {
	t.Helper()
	for i := first; i <= last; i++ {
		got, err := j.Read(i)
		if err != nil {
			t.Fatalf("Read(%d): %v", i, err)
		}
		if !bytes.Equal(got, payloadFor(i)) {
			t.Fatalf("Read(%d) = %q…, want %q…", i, trim(got), trim(payloadFor(i)))
		}
	}
}

func trim(b []byte) []byte { return b[:min(len(b), 16)] }

// segmentFiles returns the segment files of dir in index order.
func segmentFiles(t testing.TB, dir string) []segment {
	t.Helper()
	segs, err := listSegments(dir)
	if err != nil {
		t.Fatal(err)
	}
	return segs
}

// rawEntry is one entry of a segment file as the test reads it, parsed
// independently of the package's own scanner.
type rawEntry struct {
	index      uint64
	start, end int64 // byte range of the whole entry
	payload    int64 // offset of the payload (after length and frame header)
}

func rawEntries(t testing.TB, s segment) []rawEntry {
	t.Helper()
	b, err := os.ReadFile(s.path)
	if err != nil {
		t.Fatal(err)
	}
	var out []rawEntry
	for off, idx := 0, s.index; off < len(b); idx++ {
		size, n := binary.Uvarint(b[off:])
		if n <= 0 {
			t.Fatalf("%s: bad length at %d", s.path, off)
		}
		out = append(out, rawEntry{idx, int64(off), int64(off + n + int(size)), int64(off + n + headerSize)})
		off += n + int(size)
	}
	return out
}

func flipByte(t testing.TB, path string, off int64) {
	t.Helper()
	f, err := os.OpenFile(path, os.O_RDWR, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	var b [1]byte
	if _, err := f.ReadAt(b[:], off); err != nil {
		t.Fatal(err)
	}
	b[0] ^= 0x10
	if _, err := f.WriteAt(b[:], off); err != nil {
		t.Fatal(err)
	}
}

func appendFile(t testing.TB, path string, data []byte) {
	t.Helper()
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_APPEND, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if _, err := f.Write(data); err != nil {
		t.Fatal(err)
	}
}

func fileSize(t testing.TB, path string) int64 {
	t.Helper()
	fi, err := os.Stat(path)
	if err != nil {
		t.Fatal(err)
	}
	return fi.Size()
}

func tempJournalDir(t testing.TB) string {
	return filepath.Join(t.TempDir(), "journal")
}
