package main

import (
	"fmt"
	"io"
	"os"
	"sync"
	"time"
)

// progress prints numbered steps. On a terminal the running step's line
// counts the seconds; in a log (CI) a line every 15 s says it is still going,
// so a slow cross build never looks hung.
type progress struct {
	w     io.Writer
	tty   bool
	n, of int
	every time.Duration
}

func newProgress(f *os.File, steps int) *progress {
	tty := false
	if st, err := f.Stat(); err == nil && st.Mode()&os.ModeCharDevice != 0 && os.Getenv("TERM") != "dumb" {
		tty = true
	}
	return &progress{w: f, tty: tty, of: steps, every: 15 * time.Second}
}

// step runs fn as the next step; fn's result describes what it made.
func (p *progress) step(title string, fn func() (string, error)) error {
	p.n++
	head := fmt.Sprintf("[%d/%d] %s", p.n, p.of, title)
	start := time.Now()
	if p.tty {
		fmt.Fprintf(p.w, "%s …", head)
	} else {
		fmt.Fprintf(p.w, "%s …\n", head)
	}
	done := make(chan struct{})
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		interval := p.every
		if p.tty {
			interval = time.Second
		}
		t := time.NewTicker(interval)
		defer t.Stop()
		for {
			select {
			case <-done:
				return
			case <-t.C:
				if p.tty {
					fmt.Fprintf(p.w, "\r\033[K%s … %s", head, seconds(time.Since(start)))
				} else {
					fmt.Fprintf(p.w, "      … %s: %s so far\n", title, seconds(time.Since(start)))
				}
			}
		}
	}()
	res, err := fn()
	close(done)
	wg.Wait()
	if p.tty {
		fmt.Fprint(p.w, "\r\033[K")
	}
	if err != nil {
		fmt.Fprintf(p.w, "%s: failed after %s\n", head, seconds(time.Since(start)))
		return err
	}
	fmt.Fprintf(p.w, "%s: %s (%s)\n", head, res, seconds(time.Since(start)))
	return nil
}

func seconds(d time.Duration) string { return fmt.Sprintf("%.1f s", d.Seconds()) }
