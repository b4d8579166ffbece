package benchpeer

import (
	"bufio"
	"bytes"
	"context"
	"fmt"
	"io"
	"os"
	"os/exec"
	"runtime"
	"runtime/debug"
	"strconv"
	"strings"
	"testing"

	"github.com/cloudskin/cloudskin/edge-agent/internal/cells"
)

// idleCells is how many idle cells each RSS measurement holds at once.
var idleCells = map[string]int{"minimal": 1000, "go": 50}

// BenchmarkIdleRSS starts N idle cells in this process and reports the growth of VmRSS
// per cell (after GC and returning freed pages to the OS, before and after) and how many
// such cells fit in 1 GiB. The process peer starts N/10 held oneshot processes and reports
// their mean VmRSS and Pss. It measures once whatever b.N is: run it with -benchtime 1x.
func BenchmarkIdleRSS(b *testing.B) {
	f := getFixtures(b)
	ctx := context.Background()
	for _, name := range cellNames {
		wasm, path, outputs := f.module(name)
		n := idleCells[name]
		spec := cells.Spec{ID: "idle", Limits: benchLimits, Outputs: outputs}

		b.Run(name+"/cells", func(b *testing.B) {
			rt := newCells(b, f.cacheDir)
			m, err := rt.Load(wasm, digest(wasm))
			if err != nil {
				b.Fatal(err)
			}
			defer m.Close()
			// One cell first, so that what is paid once per runtime and module is not
			// counted per cell.
			first, err := rt.Start(ctx, m, spec, discard)
			if err != nil {
				b.Fatal(err)
			}
			defer first.Close()
			before := settledRSS(b)
			cs := make([]*cells.Cell, 0, n)
			for range n {
				c, err := rt.Start(ctx, m, spec, discard)
				if err != nil {
					b.Fatal(err)
				}
				cs = append(cs, c)
			}
			reportRSS(b, settledRSS(b)-before, n)
			for _, c := range cs {
				c.Close()
			}
		})

		b.Run(name+"/wazero", func(b *testing.B) {
			w := newWz(b, "")
			compiled, err := w.rt.CompileModule(ctx, wasm)
			if err != nil {
				b.Fatal(err)
			}
			first, err := w.start(compiled, discard)
			if err != nil {
				b.Fatal(err)
			}
			defer first.Close()
			before := settledRSS(b)
			cs := make([]*wzCell, 0, n)
			for range n {
				c, err := w.start(compiled, discard)
				if err != nil {
					b.Fatal(err)
				}
				cs = append(cs, c)
			}
			reportRSS(b, settledRSS(b)-before, n)
			for _, c := range cs {
				c.Close()
			}
		})

		b.Run(name+"/process", func(b *testing.B) {
			procs := n / 10
			var rss, pss int64
			var held []*exec.Cmd
			var stdins []io.Closer
			defer func() {
				for i, c := range held {
					stdins[i].Close()
					c.Wait()
				}
			}()
			for range procs {
				cmd := exec.Command(f.oneshot, "-hold", "-module", path, "-digest", f.digestOf(path), "-cache", f.cacheDir)
				in, err := cmd.StdinPipe()
				if err != nil {
					b.Fatal(err)
				}
				out, err := cmd.StdoutPipe()
				if err != nil {
					b.Fatal(err)
				}
				cmd.Stderr = os.Stderr
				if err := cmd.Start(); err != nil {
					b.Fatal(err)
				}
				held, stdins = append(held, cmd), append(stdins, in)
				if line, err := bufio.NewReader(out).ReadString('\n'); err != nil || line != "ready\n" {
					b.Fatalf("oneshot -hold: %q %v", line, err)
				}
			}
			for _, c := range held {
				pid := c.Process.Pid
				rss += procKB(b, fmt.Sprintf("/proc/%d/status", pid), "VmRSS:") << 10
				pss += procKB(b, fmt.Sprintf("/proc/%d/smaps_rollup", pid), "Pss:") << 10
			}
			reportRSS(b, rss, procs)
			b.ReportMetric(float64(pss)/float64(procs)/1024, "Pss-KiB/cell")
			b.ReportMetric(float64(1<<30)/(float64(pss)/float64(procs)), "cells/GiB-Pss")
		})
	}
}

// settledRSS is this process's VmRSS after a GC that returns freed pages to the OS.
func settledRSS(tb testing.TB) int64 {
	runtime.GC()
	debug.FreeOSMemory()
	return procKB(tb, "/proc/self/status", "VmRSS:") << 10
}

func reportRSS(b *testing.B, delta int64, n int) {
	per := float64(delta) / float64(n)
	b.ReportMetric(per/1024, "KiB/cell")
	b.ReportMetric(float64(1<<30)/per, "cells/GiB")
}

// procKB reads one "Key: N kB" line of a /proc file.
func procKB(tb testing.TB, path, key string) int64 {
	tb.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		tb.Fatal(err)
	}
	for line := range bytes.Lines(b) {
		if s, ok := strings.CutPrefix(string(line), key); ok {
			v, err := strconv.ParseInt(strings.TrimSuffix(strings.TrimSpace(s), " kB"), 10, 64)
			if err != nil {
				tb.Fatal(err)
			}
			return v
		}
	}
	tb.Fatalf("%s: no %s", path, key)
	return 0
}
