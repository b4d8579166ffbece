package journal

import (
	"bytes"
	"errors"
	"fmt"
	"sync"
	"testing"
	"time"
)

// commitPayload is what goroutine g commits as its seq-th record.
func commitPayload(g, seq int) []byte {
	return fmt.Appendf(nil, "goroutine %d record %d %s", g, seq, bytes.Repeat([]byte{'c'}, (g*31+seq*7)%200))
}

func TestCommitGroupsConcurrentAppends(t *testing.T) {
	const goroutines, each = 64, 40
	dir := tempJournalDir(t)
	j := openT(t, dir, Options{SegmentSize: 64 << 10}) // real fsync: the groups form while it runs

	type ack struct {
		g, seq      int
		first, last uint64
	}
	acks := make(chan ack, goroutines*each)
	// A reader follows the tail while the groups are written: the payload
	// Read returns must never change under it.
	stop := make(chan struct{})
	var rg sync.WaitGroup
	rg.Go(func() {
		for {
			select {
			case <-stop:
				return
			default:
			}
			if i := j.LastIndex(); i > 0 {
				if b, err := j.Read(i); err != nil || !bytes.HasPrefix(b, []byte("goroutine ")) {
					t.Errorf("Read(%d) while committing = %q, %v", i, b, err)
					return
				}
			}
		}
	})
	var wg sync.WaitGroup
	for g := range goroutines {
		wg.Go(func() {
			for seq := 0; seq < each; seq++ {
				var data [][]byte
				if seq%10 == 8 { // a few callers commit two records at once
					data = [][]byte{commitPayload(g, seq), commitPayload(g, seq+1)}
				} else {
					data = [][]byte{commitPayload(g, seq)}
				}
				first, last, err := j.Commit(data...)
				if err != nil {
					t.Errorf("goroutine %d: Commit: %v", g, err)
					return
				}
				if last-first+1 != uint64(len(data)) {
					t.Errorf("goroutine %d: Commit of %d records returned %d..%d", g, len(data), first, last)
				}
				acks <- ack{g, seq, first, last}
				seq += len(data) - 1
			}
		})
	}
	wg.Wait()
	close(stop)
	rg.Wait()
	close(acks)

	seen := make(map[uint64]bool)
	for a := range acks {
		for i := a.first; i <= a.last; i++ {
			if seen[i] {
				t.Fatalf("index %d acknowledged twice", i)
			}
			seen[i] = true
			got, err := j.Read(i)
			if err != nil || !bytes.Equal(got, commitPayload(a.g, a.seq+int(i-a.first))) {
				t.Fatalf("Read(%d) = %q, %v; want goroutine %d's record %d", i, got, err, a.g, a.seq)
			}
		}
	}
	records := uint64(goroutines * each)
	if uint64(len(seen)) != records || j.FirstIndex() != 1 || j.LastIndex() != records {
		t.Fatalf("%d records acknowledged, journal holds %d..%d; want 1..%d", len(seen), j.FirstIndex(), j.LastIndex(), records)
	}
	st := j.Stats()
	t.Logf("%d records in %d batches (%.1f records per fsync)", st.Records, st.Batches, float64(st.Records)/float64(st.Batches))
	if st.Records != records || st.Batches >= records/2 {
		t.Errorf("Stats = %+v; want %d records in far fewer batches", st, records)
	}
	total, _, _ := diskUsage(dir)
	if j.SizeBytes() != total {
		t.Errorf("SizeBytes = %d, files hold %d", j.SizeBytes(), total)
	}
}

// Within a group the quota is checked per caller: some get ErrFull, the
// rest are written, and the journal never exceeds the quota.
func TestCommitQuotaPerCaller(t *testing.T) {
	const maxBytes = 20 << 10
	dir := tempJournalDir(t)
	j := openT(t, dir, Options{MaxBytes: maxBytes})
	rec := bytes.Repeat([]byte("r"), 300)
	var (
		mu    sync.Mutex
		acked []uint64
		full  int
		wg    sync.WaitGroup
	)
	for range 32 {
		wg.Go(func() {
			for range 10 {
				first, _, err := j.Commit(rec)
				mu.Lock()
				switch {
				case errors.Is(err, ErrFull):
					full++
				case err != nil:
					t.Errorf("Commit: %v", err)
				default:
					acked = append(acked, first)
				}
				mu.Unlock()
			}
		})
	}
	wg.Wait()
	if full == 0 || len(acked) == 0 {
		t.Fatalf("%d written, %d refused; want both", len(acked), full)
	}
	if j.SizeBytes() > maxBytes || uint64(len(acked)) != j.Len() || j.Stats().Rejected != uint64(full) {
		t.Fatalf("size %d (quota %d), len %d, %d acknowledged, stats %+v", j.SizeBytes(), maxBytes, j.Len(), len(acked), j.Stats())
	}
	for _, i := range acked {
		if got, err := j.Read(i); err != nil || !bytes.Equal(got, rec) {
			t.Fatalf("Read(%d): %v", i, err)
		}
	}
}

func TestCommitAfterClose(t *testing.T) {
	j := openT(t, tempJournalDir(t), Options{NoSync: true})
	closeT(t, j)
	if _, _, err := j.Commit([]byte("late")); !errors.Is(err, ErrClosed) {
		t.Fatalf("Commit after Close: %v, want ErrClosed", err)
	}
}

// Close while committers are queued: every caller returns, none hangs.
func TestCloseWhileCommitting(t *testing.T) {
	j := openT(t, tempJournalDir(t), Options{})
	var wg sync.WaitGroup
	for range 16 {
		wg.Go(func() {
			for {
				if _, _, err := j.Commit([]byte("x")); err != nil {
					if !errors.Is(err, ErrClosed) {
						t.Errorf("Commit: %v, want success or ErrClosed", err)
					}
					return
				}
			}
		})
	}
	for deadline := time.Now().Add(10 * time.Second); j.Stats().Batches < 5; {
		if time.Now().After(deadline) {
			t.Fatal("committers wrote nothing")
		}
		time.Sleep(time.Millisecond) // let the committers get going
	}
	closeT(t, j)
	wg.Wait()
}
