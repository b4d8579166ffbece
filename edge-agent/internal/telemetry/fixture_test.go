package telemetry

import (
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// fixture is a fake /sys and /proc a sampler reads instead of the machine's.
type fixture struct {
	sys, proc string
}

func newFixture(t *testing.T) *fixture {
	t.Helper()
	root := t.TempDir()
	f := &fixture{sys: filepath.Join(root, "sys"), proc: filepath.Join(root, "proc")}
	for _, d := range []string{f.sys, f.proc} {
		if err := os.MkdirAll(d, 0o755); err != nil {
			t.Fatal(err)
		}
	}
	return f
}

// sampler returns a sampler over the fixture whose first sample measures over a
// 1 ms window instead of 100 ms.
func (f *fixture) sampler(t *testing.T, cfg Config) *Sampler {
	t.Helper()
	cfg.SysRoot = f.sys
	if cfg.DataDir == "" {
		cfg.DataDir = t.TempDir()
	}
	s := newSampler(cfg, f.proc)
	s.window = time.Millisecond
	return s
}

// writeSys writes content to the file rel under the fake /sys, creating directories.
func (f *fixture) writeSys(t *testing.T, rel, content string) {
	t.Helper()
	writeFile(t, filepath.Join(f.sys, rel), content)
}

func writeFile(t *testing.T, path, content string) {
	t.Helper()
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(path, []byte(content+"\n"), 0o644); err != nil {
		t.Fatal(err)
	}
}

// rapl writes a RAPL zone such as "intel-rapl:0" or "intel-rapl:0:0".
func (f *fixture) rapl(t *testing.T, zone, name string, energyUJ, maxRangeUJ uint64) {
	t.Helper()
	dir := filepath.Join("class/powercap", zone)
	f.writeSys(t, filepath.Join(dir, "name"), name)
	f.writeSys(t, filepath.Join(dir, "energy_uj"), fmt.Sprint(energyUJ))
	f.writeSys(t, filepath.Join(dir, "max_energy_range_uj"), fmt.Sprint(maxRangeUJ))
}

// battery writes a power_supply entry with the given attribute files.
func (f *fixture) battery(t *testing.T, name string, attrs map[string]string) {
	t.Helper()
	for k, v := range attrs {
		f.writeSys(t, filepath.Join("class/power_supply", name, k), v)
	}
}

// makeUnreadable makes path fail to read even for root, who ignores permission
// bits: first as the kernel does for a non-root agent (mode 0400 root), then, if
// that still reads, by putting a directory in its place.
func makeUnreadable(t *testing.T, path string) {
	t.Helper()
	if err := os.Chmod(path, 0); err != nil {
		t.Fatal(err)
	}
	if _, err := os.ReadFile(path); err == nil {
		if err := os.Remove(path); err != nil {
			t.Fatal(err)
		}
		if err := os.Mkdir(path, 0o755); err != nil {
			t.Fatal(err)
		}
	}
}

// stat writes /proc/stat with two CPUs whose aggregate has busy and idle jiffies.
func (f *fixture) stat(t *testing.T, busy, idle uint64) {
	t.Helper()
	// busy is split over user, system and irq; idle over idle and iowait.
	u, sy, irq := busy/2, busy/4, busy-busy/2-busy/4
	id, io := idle-idle/10, idle/10
	line := func(name string, div uint64) string {
		return fmt.Sprintf("%s %d 0 %d %d %d %d 0 0 0 0", name, u/div, sy/div, id/div, io/div, irq/div)
	}
	writeFile(t, filepath.Join(f.proc, "stat"), strings.Join([]string{
		line("cpu ", 1), line("cpu0", 2), line("cpu1", 2),
		"intr 12345 0 0", "ctxt 999", "btime 1700000000",
	}, "\n"))
}

// netDev writes /proc/net/dev with the given rx/tx byte counters per interface.
func (f *fixture) netDev(t *testing.T, ifs map[string][2]uint64) {
	t.Helper()
	var b strings.Builder
	b.WriteString("Inter-|   Receive                                                |  Transmit\n")
	b.WriteString(" face |bytes    packets errs drop fifo frame compressed multicast|bytes    packets errs drop fifo colls carrier compressed\n")
	for name, c := range ifs {
		fmt.Fprintf(&b, "%6s: %d 10 0 0 0 0 0 0 %d 10 0 0 0 0 0 0\n", name, c[0], c[1])
	}
	writeFile(t, filepath.Join(f.proc, "net/dev"), strings.TrimSuffix(b.String(), "\n"))
}
