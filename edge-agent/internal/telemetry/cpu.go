package telemetry

import (
	"bufio"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
)

// cpuTimes are the aggregate jiffies of /proc/stat's "cpu" line.
type cpuTimes struct {
	busy, total uint64
}

// readCPU reads the aggregate CPU times and the number of online CPUs from
// {procRoot}/stat. It reads /proc/stat itself rather than through gopsutil's cpu
// package: a percentage needs only two lines of it, and the ratio of ticks needs
// no clock-tick constant (which is what pulls in gopsutil's sysconf dependency).
func readCPU(procRoot string) (cpuTimes, int, error) {
	f, err := os.Open(filepath.Join(procRoot, "stat"))
	if err != nil {
		return cpuTimes{}, 0, err
	}
	defer f.Close()
	return parseCPU(bufio.NewScanner(f))
}

func parseCPU(sc *bufio.Scanner) (cpuTimes, int, error) {
	var (
		t     cpuTimes
		found bool
		cores int
	)
	for sc.Scan() {
		line := sc.Text()
		if !strings.HasPrefix(line, "cpu") {
			break // the cpu lines come first; the rest (intr…) can be long
		}
		fields := strings.Fields(line)
		if fields[0] != "cpu" {
			cores++
			continue
		}
		var err error
		if t, err = parseCPULine(fields[1:]); err != nil {
			return cpuTimes{}, 0, err
		}
		found = true
	}
	if err := sc.Err(); err != nil {
		return cpuTimes{}, 0, err
	}
	if !found {
		return cpuTimes{}, 0, errors.New("no aggregate cpu line in stat")
	}
	if cores == 0 {
		cores = runtime.NumCPU()
	}
	return t, cores, nil
}

// parseCPULine sums user nice system idle iowait irq softirq steal. guest and
// guest_nice are already counted in user and nice. Busy is everything but idle and
// iowait, as gopsutil's cpu.Percent counts it.
func parseCPULine(fields []string) (cpuTimes, error) {
	if len(fields) < 4 {
		return cpuTimes{}, fmt.Errorf("cpu line has %d fields, want at least 4", len(fields))
	}
	var t cpuTimes
	for i, f := range fields {
		if i == 8 {
			break
		}
		v, err := strconv.ParseUint(f, 10, 64)
		if err != nil {
			return cpuTimes{}, fmt.Errorf("cpu field %d: %w", i+1, err)
		}
		t.total += v
		if i != 3 && i != 4 { // idle, iowait
			t.busy += v
		}
	}
	return t, nil
}

// cpuPercent is the busy share of the ticks between a and b; false when no tick
// passed (or the counters went back, which only a bogus reading does).
func cpuPercent(a, b cpuTimes) (float64, bool) {
	if b.total <= a.total || b.busy < a.busy {
		return 0, false
	}
	return clampPct(float64(b.busy-a.busy) / float64(b.total-a.total) * 100), true
}
