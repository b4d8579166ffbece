package benchpeer

import (
	"crypto/sha256"
	"encoding/binary"
	"encoding/hex"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/bytecodealliance/wasmtime-go/v39"
	"github.com/cloudskin/cloudskin/edge-agent/internal/cells"
)

// benchLimits lifts the output rate limit, which would otherwise be what is measured.
var benchLimits = cells.Limits{MaxOutputPerSec: 1e12}

// fixtures are built once per test binary, on first use, so that `go test ./...` (which
// runs no benchmark) pays nothing for them.
type fixtures struct {
	dir                         string
	minimal                     []byte // cells/minimal.wat assembled
	aggregator                  []byte // cells/aggregator built for wasip1
	minimalPath, aggregatorPath string
	oneshot                     string // benchpeer/cmd/oneshot binary
	cacheDir                    string // cells compiled-code cache, warm
}

var (
	fixOnce sync.Once
	fix     fixtures
	fixErr  error
)

func TestMain(m *testing.M) {
	code := m.Run()
	if fix.dir != "" {
		os.RemoveAll(fix.dir)
	}
	os.Exit(code)
}

// repoRoot is the module root, four levels above this package.
const repoRoot = "../../../.."

func getFixtures(tb testing.TB) *fixtures {
	tb.Helper()
	fixOnce.Do(func() { fixErr = fix.build() })
	if fixErr != nil {
		tb.Fatal(fixErr)
	}
	return &fix
}

func (f *fixtures) build() error {
	dir, err := os.MkdirTemp("", "cloudskin-benchpeer-")
	if err != nil {
		return err
	}
	f.dir = dir
	wat, err := os.ReadFile(filepath.Join(repoRoot, "cells/minimal.wat"))
	if err != nil {
		return err
	}
	if f.minimal, err = wasmtime.Wat2Wasm(string(wat)); err != nil {
		return fmt.Errorf("assemble minimal.wat: %w", err)
	}
	f.minimalPath = filepath.Join(dir, "minimal.wasm")
	if err := os.WriteFile(f.minimalPath, f.minimal, 0o600); err != nil {
		return err
	}

	f.aggregatorPath = filepath.Join(dir, "aggregator.wasm")
	build := exec.Command("go", "build", "-buildmode=c-shared", "-trimpath", "-ldflags=-s -w", "-o", f.aggregatorPath, "./cells/aggregator")
	build.Dir = repoRoot
	build.Env = append(os.Environ(), "GOOS=wasip1", "GOARCH=wasm")
	if out, err := build.CombinedOutput(); err != nil {
		return fmt.Errorf("build aggregator: %v\n%s", err, out)
	}
	if f.aggregator, err = os.ReadFile(f.aggregatorPath); err != nil {
		return err
	}

	f.oneshot = filepath.Join(dir, "oneshot")
	build = exec.Command("go", "build", "-trimpath", "-o", f.oneshot, "./edge-agent/internal/cells/benchpeer/cmd/oneshot")
	build.Dir = repoRoot
	if out, err := build.CombinedOutput(); err != nil {
		return fmt.Errorf("build oneshot: %v\n%s", err, out)
	}

	// Warm the compiled-code cache: every cold start below is a cache hit.
	f.cacheDir = filepath.Join(dir, "cache")
	rt, err := cells.NewRuntime(f.cacheDir, nil)
	if err != nil {
		return err
	}
	defer rt.Close()
	for _, wasm := range [][]byte{f.minimal, f.aggregator} {
		m, err := rt.Load(wasm, digest(wasm))
		if err != nil {
			return err
		}
		m.Close()
	}
	return nil
}

func digest(b []byte) string {
	sum := sha256.Sum256(b)
	return hex.EncodeToString(sum[:])
}

// module returns the bytes, path and declared outputs of a cell by name.
func (f *fixtures) module(name string) (wasm []byte, path string, outputs []string) {
	switch name {
	case "minimal":
		return f.minimal, f.minimalPath, []string{"count"}
	case "go":
		return f.aggregator, f.aggregatorPath, []string{"aggregates"}
	}
	panic("unknown cell " + name)
}

// readings are n JSON readings spread over 10 sensors, the aggregator's input.
func readings(n int) []cells.Record {
	now := time.Now().UnixNano()
	rs := make([]cells.Record, n)
	for i := range rs {
		rs[i] = cells.Record{
			Offset:  uint64(i),
			TimeNS:  now,
			Topic:   "sensors/t1",
			Payload: fmt.Appendf(nil, `{"sensor":"t%d","value":%d.5}`, i%10, 15+i%20),
		}
	}
	return rs
}

// appendBatch encodes records as the ABI's batch (docs/cell-abi.md), for the peers.
func appendBatch(dst []byte, input string, recs []cells.Record) []byte {
	dst = append(dst, "CSB1"...)
	dst = binary.LittleEndian.AppendUint16(dst, uint16(len(input)))
	dst = append(dst, input...)
	dst = binary.LittleEndian.AppendUint32(dst, uint32(len(recs)))
	for _, r := range recs {
		dst = binary.LittleEndian.AppendUint64(dst, r.Offset)
		dst = binary.LittleEndian.AppendUint64(dst, uint64(r.TimeNS))
		dst = binary.LittleEndian.AppendUint16(dst, uint16(len(r.Topic)))
		dst = append(dst, r.Topic...)
		dst = binary.LittleEndian.AppendUint32(dst, uint32(len(r.Payload)))
		dst = append(dst, r.Payload...)
	}
	return dst
}

// latencies collects per-operation durations and reports their p50 and p99.
type latencies []time.Duration

func (l latencies) report(b *testing.B) {
	if len(l) == 0 {
		return
	}
	s := slices.Clone(l)
	slices.Sort(s)
	p := func(q float64) float64 {
		return float64(s[min(len(s)-1, int(q*float64(len(s))))].Nanoseconds()) / 1e3
	}
	b.ReportMetric(p(0.50), "p50-us")
	b.ReportMetric(p(0.99), "p99-us")
}

// perEvent reports the time per event and the events per second of the whole run.
func perEvent(b *testing.B, events int) {
	ns := float64(b.Elapsed().Nanoseconds()) / float64(events)
	b.ReportMetric(ns, "ns/event")
	b.ReportMetric(1e9/ns, "events/s")
}

// digestOf names the module at path (one of the fixtures) by its digest.
func (f *fixtures) digestOf(path string) string {
	if path == f.aggregatorPath {
		return digest(f.aggregator)
	}
	return digest(f.minimal)
}
