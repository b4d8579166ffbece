package journal

import (
	"bytes"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"os/exec"
	"os/signal"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// The crash tests re-run this test binary as a child process that writes to
// a journal and prints every acknowledged index; helperEnv says which child.
const (
	helperEnv = "JOURNAL_TEST_HELPER"
	dirEnv    = "JOURNAL_TEST_DIR"
)

func TestMain(m *testing.M) {
	switch os.Getenv(helperEnv) {
	case "":
		os.Exit(m.Run())
	case "append":
		crashChild(false)
	case "commit":
		crashChild(true)
	case "write-failure":
		writeFailureChild()
	default:
		fmt.Fprintf(os.Stderr, "unknown %s=%q\n", helperEnv, os.Getenv(helperEnv))
		os.Exit(2)
	}
}

var childLog = slog.New(slog.NewTextHandler(os.Stderr, nil))

func childFatal(format string, args ...any) {
	fmt.Fprintf(os.Stderr, format+"\n", args...)
	os.Exit(3)
}

// crashChild appends synced records until it is killed. Each line it
// prints is a promise: "index" (append mode, content payloadFor(index)) or
// "index goroutine seq" (commit mode, content commitPayload).
func crashChild(commit bool) {
	j, err := Open(os.Getenv(dirEnv), Options{SegmentSize: 32 << 10, Logger: childLog})
	if err != nil {
		childFatal("open: %v", err)
	}
	if !commit {
		for {
			want := j.NextIndex()
			first, _, err := j.Append(payloadFor(want))
			if err != nil || first != want {
				childFatal("append %d: got %d, %v", want, first, err)
			}
			fmt.Fprintf(os.Stdout, "%d\n", first) // one write(2): a line is whole or absent
		}
	}
	for g := range 8 {
		go func() {
			for seq := 0; ; seq++ {
				first, _, err := j.Commit(commitPayload(g, seq))
				if err != nil {
					childFatal("commit: %v", err)
				}
				fmt.Fprintf(os.Stdout, "%d %d %d\n", first, g, seq)
			}
		}()
	}
	select {}
}

// TestCrashKeepsAcknowledged kills a writing process with SIGKILL and checks
// that every record it acknowledged is there, intact, after reopening.
func TestCrashKeepsAcknowledged(t *testing.T) {
	for _, mode := range []string{"append", "commit"} {
		t.Run(mode, func(t *testing.T) {
			dir := tempJournalDir(t)
			lines := runUntilKilled(t, mode, dir, 300*time.Millisecond)
			if len(lines) == 0 {
				t.Fatal("the child acknowledged nothing")
			}

			j := openT(t, dir, Options{SegmentSize: 32 << 10})
			t.Logf("child acknowledged %d records; journal holds %d..%d; recovery: %+v",
				len(lines), j.FirstIndex(), j.LastIndex(), j.Recovered())
			for _, line := range lines {
				var idx uint64
				var want []byte
				f := strings.Fields(line)
				switch {
				case mode == "append" && len(f) == 1:
					idx = mustUint(t, f[0])
					want = payloadFor(idx)
				case mode == "commit" && len(f) == 3:
					idx = mustUint(t, f[0])
					want = commitPayload(int(mustUint(t, f[1])), int(mustUint(t, f[2])))
				default:
					t.Fatalf("bad line from child: %q", line)
				}
				got, err := j.Read(idx)
				if err != nil || !bytes.Equal(got, want) {
					t.Fatalf("acknowledged record %d: Read = %q…, %v; want %q…", idx, trim(got), err, trim(want))
				}
			}
			// Whatever else survived is whole: no record fails its check.
			for i := j.FirstIndex(); i <= j.LastIndex(); i++ {
				if _, err := j.Read(i); err != nil {
					t.Fatalf("Read(%d) after crash: %v", i, err)
				}
			}
			next := j.NextIndex()
			if first, _, err := j.Append([]byte("after the crash")); err != nil || first != next {
				t.Fatalf("Append after crash = %d, %v; want %d", first, err, next)
			}
		})
	}
}

// runUntilKilled starts the helper child, lets it write for d after its
// first acknowledgement, kills it with SIGKILL and returns the complete
// lines it printed.
func runUntilKilled(t *testing.T, mode, dir string, d time.Duration) []string {
	t.Helper()
	cmd := exec.Command(os.Args[0], "-test.run=^$")
	cmd.Env = append(os.Environ(), helperEnv+"="+mode, dirEnv+"="+dir)
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	out, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	first := make(chan struct{})
	all := make(chan []byte)
	go func() {
		var buf bytes.Buffer
		b := make([]byte, 32<<10)
		signalled := false
		for {
			n, err := out.Read(b)
			buf.Write(b[:n])
			if !signalled && bytes.IndexByte(buf.Bytes(), '\n') >= 0 {
				close(first)
				signalled = true
			}
			if err != nil {
				all <- buf.Bytes()
				return
			}
		}
	}()
	select {
	case <-first:
		time.Sleep(d)
	case <-time.After(20 * time.Second):
		t.Error("child acknowledged nothing in 20s")
	}
	if err := cmd.Process.Signal(syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	printed := <-all
	err = cmd.Wait()
	var exit *exec.ExitError
	if !errors.As(err, &exit) || exit.Sys().(syscall.WaitStatus).Signal() != syscall.SIGKILL {
		t.Fatalf("child did not die of SIGKILL: %v\n%s", err, stderr.Bytes())
	}
	// Everything after the last newline may be a line cut short.
	printed = printed[:bytes.LastIndexByte(printed, '\n')+1]
	if len(printed) == 0 {
		return nil
	}
	return strings.Split(strings.TrimSuffix(string(printed), "\n"), "\n")
}

func mustUint(t *testing.T, s string) uint64 {
	t.Helper()
	n, err := strconv.ParseUint(s, 10, 64)
	if err != nil {
		t.Fatal(err)
	}
	return n
}

// writeFailureChild appends until a write fails because the file-size
// limit (RLIMIT_FSIZE) stops it, the way a full disk stops a write half
// way, then checks that the journal refuses to go on. It prints "ack N" for
// each acknowledged record and one "after" line with what happened next.
func writeFailureChild() {
	signal.Ignore(syscall.SIGXFSZ) // get EFBIG instead of dying
	var lim unix.Rlimit
	if err := unix.Getrlimit(unix.RLIMIT_FSIZE, &lim); err != nil {
		childFatal("getrlimit: %v", err)
	}
	lim.Cur = 64 << 10
	if err := unix.Setrlimit(unix.RLIMIT_FSIZE, &lim); err != nil {
		childFatal("setrlimit: %v", err)
	}
	j, err := Open(os.Getenv(dirEnv), Options{SegmentSize: 1 << 20, MinFreeBytes: -1, NoSync: true, Logger: childLog})
	if err != nil {
		childFatal("open: %v", err)
	}
	for {
		want := j.NextIndex()
		if _, _, err := j.Append(payloadFor(want)); err != nil {
			fmt.Printf("failed %v\n", err)
			break
		}
		fmt.Printf("ack %d\n", want)
	}
	_, _, err = j.Append([]byte("small enough to fit"))
	terr := j.TruncateFront(2)
	fmt.Printf("after %t %t %t\n", errors.Is(err, ErrFailed), errors.Is(err, syscall.EFBIG), errors.Is(terr, ErrFailed))
	j.Close()
	os.Exit(0)
}

// TestWriteFailureStopsJournal: after a write error the journal refuses
// further writes (the library would accept them and leave an unopenable
// log), and reopening repairs the half-written tail and keeps every
// acknowledged record.
func TestWriteFailureStopsJournal(t *testing.T) {
	dir := tempJournalDir(t)
	cmd := exec.Command(os.Args[0], "-test.run=^$")
	cmd.Env = append(os.Environ(), helperEnv+"=write-failure", dirEnv+"="+dir)
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("child: %v\n%s", err, stderr.Bytes())
	}
	var acked uint64
	var after string
	for _, line := range strings.Split(strings.TrimSpace(string(out)), "\n") {
		switch {
		case strings.HasPrefix(line, "ack "):
			acked = mustUint(t, strings.TrimPrefix(line, "ack "))
		case strings.HasPrefix(line, "failed "):
			t.Logf("first write error: %s", strings.TrimPrefix(line, "failed "))
		case strings.HasPrefix(line, "after "):
			after = strings.TrimPrefix(line, "after ")
		}
	}
	if acked == 0 {
		t.Fatalf("child acknowledged nothing:\n%s\n%s", out, stderr.Bytes())
	}
	if after != "true true true" {
		t.Fatalf("after the failed write: %q; want appends and truncation refused with ErrFailed wrapping EFBIG", after)
	}

	j := openT(t, dir, Options{SegmentSize: 1 << 20})
	rep := j.Recovered()
	if !rep.Cut() || !rep.Torn || rep.FirstDropped != acked+1 {
		t.Errorf("Recovered = %+v; want the half-written record %d cut", rep, acked+1)
	}
	if j.LastIndex() != acked {
		t.Fatalf("LastIndex = %d, want %d (the last acknowledged)", j.LastIndex(), acked)
	}
	checkRecords(t, j, 1, acked)
	appendN(t, j, 3)
	checkRecords(t, j, 1, acked+3)
}
