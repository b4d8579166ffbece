// Package telemetry samples what an edge node reports about itself — CPU, memory,
// disk, network, load, temperatures and power draw — as one protocol.Telemetry per
// call, cheaply enough to run every few seconds on a small ARM board.
package telemetry

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"math"
	"os"
	"path/filepath"
	"strconv"
	"sync"
	"time"

	"github.com/shirou/gopsutil/v3/common"
	"github.com/shirou/gopsutil/v3/disk"
	"github.com/shirou/gopsutil/v3/host"
	"github.com/shirou/gopsutil/v3/load"
	"github.com/shirou/gopsutil/v3/mem"
	"github.com/shirou/gopsutil/v3/net"

	"github.com/cloudskin/cloudskin/shared/protocol"
)

// Defaults of the linear power model: a rough envelope for the reference hardware,
// a Lenovo SE350-class edge server (one Xeon D SoC, a few SSDs), about 20 W idle and
// 60 W with every core busy. A board or a bigger box should set its own
// (docs/telemetry.md).
const (
	DefaultPowerIdleW = 20.0
	DefaultPowerMaxW  = 60.0
)

const (
	// window is how long the first Sample measures CPU, network and RAPL, since it
	// has no earlier reading to difference against.
	window = 100 * time.Millisecond
	// minInterval is the shortest interval a rate is computed over; a Sample that
	// follows the previous one sooner repeats the previous rates, so a burst of
	// calls neither blocks nor reports noise.
	minInterval = 100 * time.Millisecond
	// maxTemperatures caps the sensors reported per sample.
	maxTemperatures = 64
)

// Config says what to sample and how to model power when nothing measures it.
type Config struct {
	DataDir    string  // disk usage is reported for the filesystem holding this path; default "/"
	SysRoot    string  // sysfs root; default $HOST_SYS or "/sys"; tests point it at a fixture tree
	PowerIdleW float64 // model: watts at 0% CPU; default DefaultPowerIdleW
	PowerMaxW  float64 // model: watts at 100% CPU; default DefaultPowerMaxW
}

// Validate reports a configuration that cannot describe a real node. Zero values
// are valid: they mean the defaults.
func (c Config) Validate() error {
	for name, v := range map[string]float64{"PowerIdleW": c.PowerIdleW, "PowerMaxW": c.PowerMaxW} {
		if math.IsNaN(v) || math.IsInf(v, 0) || v < 0 || v > 1e5 {
			return fmt.Errorf("telemetry: %s = %v: want watts between 0 and 100000 (0 means the default)", name, v)
		}
	}
	c = c.withDefaults()
	if c.PowerMaxW < c.PowerIdleW {
		return fmt.Errorf("telemetry: PowerMaxW = %v is below PowerIdleW = %v: a busy node cannot draw less than an idle one", c.PowerMaxW, c.PowerIdleW)
	}
	return nil
}

func (c Config) withDefaults() Config {
	if c.DataDir == "" {
		c.DataDir = "/"
	}
	if c.SysRoot == "" {
		c.SysRoot = envOr("HOST_SYS", "/sys")
	}
	if !(c.PowerIdleW > 0) {
		c.PowerIdleW = DefaultPowerIdleW
	}
	if !(c.PowerMaxW > 0) {
		c.PowerMaxW = DefaultPowerMaxW
	}
	return c
}

func envOr(key, def string) string {
	if v := os.Getenv(key); v != "" {
		return v
	}
	return def
}

// Sampler produces telemetry samples. Rates (CPU percent, network bytes per second,
// RAPL watts) cover the interval since the previous Sample. It is safe for
// concurrent use, though one owner calling it on a ticker is the expected use.
type Sampler struct {
	cfg      Config
	procRoot string
	env      common.EnvMap // makes gopsutil read the same /proc and /sys as we do
	window   time.Duration
	pause    func(context.Context, time.Duration) error // sleep; tests change the fixture in it

	mu     sync.Mutex
	energy *sources
	prev   *counters // baseline of the next rates; nil before the first Sample
	rates  rates     // last computed rates, repeated when a Sample comes too soon
}

// NewSampler returns a sampler for cfg, with zero fields set to their defaults and
// the energy sources probed once. A PowerMaxW below PowerIdleW is raised to it
// (Config.Validate reports it instead).
func NewSampler(cfg Config) *Sampler {
	return newSampler(cfg, envOr("HOST_PROC", "/proc"))
}

func newSampler(cfg Config, procRoot string) *Sampler {
	cfg = cfg.withDefaults()
	if cfg.PowerMaxW < cfg.PowerIdleW {
		cfg.PowerMaxW = cfg.PowerIdleW
	}
	s := &Sampler{
		cfg:      cfg,
		procRoot: procRoot,
		env:      common.EnvMap{common.HostProcEnvKey: procRoot, common.HostSysEnvKey: cfg.SysRoot},
		window:   window,
		pause:    sleep,
		energy:   &sources{sysRoot: cfg.SysRoot},
	}
	s.energy.probe()
	return s
}

// counters are the cumulative readings rates are computed from.
type counters struct {
	at      time.Time
	cpu     cpuTimes
	cores   int
	cpuErr  error
	net     map[string]netCount
	netErr  error
	rapl    []uint64 // µJ per RAPL package; nil when not read
	raplGen int      // which set of RAPL zones rapl belongs to
}

type netCount struct{ rx, tx uint64 }

// rates are what the sample reports over an interval.
type rates struct {
	cpuPct         float64
	rxPerS, txPerS float64
	raplW          float64
	raplOK         bool
}

// Sample reads the node once and returns a sample stamped now, with Node and Seq
// left for the caller. Pass time.Now(): rates are computed over now minus the
// previous now, and its monotonic reading keeps them right when the wall clock
// steps (NTP on a board without a real-time clock). The first call measures
// rates over a 100 ms window, so it blocks that long; later calls do not block.
// A piece that cannot be read is left zero; only when CPU, memory, disk, network
// and load all fail, or ctx ends, is an error returned.
func (s *Sampler) Sample(ctx context.Context, now time.Time) (protocol.Telemetry, error) {
	if err := ctx.Err(); err != nil {
		return protocol.Telemetry{}, fmt.Errorf("telemetry: sample: %w", err)
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	s.energy.maybeReprobe()
	gctx := context.WithValue(ctx, common.EnvKey, s.env)

	cur := s.readCounters(gctx, now)
	switch {
	case s.prev == nil:
		// No earlier reading: measure over a short window now, and keep the
		// reading taken at now as the baseline for the next call.
		start := time.Now()
		if err := s.pause(ctx, s.window); err != nil {
			return protocol.Telemetry{}, fmt.Errorf("telemetry: first sample: %w", err)
		}
		end := s.readCounters(gctx, now)
		s.rates = s.diff(cur, end, time.Since(start))
		s.prev = cur
		cur = end
	case now.Sub(s.prev.at) < 0:
		// The caller's clock went backwards: restart the interval from here.
		s.prev = cur
	case now.Sub(s.prev.at) >= minInterval:
		s.rates = s.diff(s.prev, cur, now.Sub(s.prev.at))
		s.prev = cur
	}

	t := protocol.Telemetry{Time: now}
	t.CPU = protocol.CPU{Percent: s.rates.cpuPct, Cores: cur.cores}

	var memErr, diskErr, loadErr error
	if v, err := mem.VirtualMemoryWithContext(gctx); err != nil {
		memErr = fmt.Errorf("memory: %w", err)
	} else {
		t.Memory = protocol.Memory{TotalBytes: v.Total, UsedBytes: v.Used, AvailableBytes: v.Available, Percent: clampPct(v.UsedPercent)}
	}
	if u, err := diskUsage(gctx, s.cfg.DataDir); err != nil {
		diskErr = fmt.Errorf("disk %s: %w", s.cfg.DataDir, err)
	} else {
		t.Disk = protocol.Disk{Path: s.cfg.DataDir, TotalBytes: u.Total, UsedBytes: u.Used, FreeBytes: u.Free, Percent: clampPct(u.UsedPercent)}
	}
	if cur.netErr == nil {
		for _, c := range cur.net {
			t.Network.RxBytes += c.rx
			t.Network.TxBytes += c.tx
		}
		t.Network.RxBytesPerS, t.Network.TxBytesPerS = s.rates.rxPerS, s.rates.txPerS
	}
	if a, err := load.AvgWithContext(gctx); err != nil {
		loadErr = fmt.Errorf("load: %w", err)
	} else {
		t.Load = protocol.Load{Load1: a.Load1, Load5: a.Load5, Load15: a.Load15}
	}
	t.Temperatures = temperatures(gctx)
	t.Energy = s.energyFor(s.rates)

	if cur.cpuErr != nil && memErr != nil && diskErr != nil && cur.netErr != nil && loadErr != nil {
		return protocol.Telemetry{}, fmt.Errorf("telemetry: nothing readable: %w", errors.Join(cur.cpuErr, memErr, diskErr, cur.netErr, loadErr))
	}
	return t, nil
}

func sleep(ctx context.Context, d time.Duration) error {
	if d <= 0 {
		return nil
	}
	timer := time.NewTimer(d)
	defer timer.Stop()
	select {
	case <-ctx.Done():
		return ctx.Err()
	case <-timer.C:
		return nil
	}
}

// readCounters takes the cumulative readings, stamped at.
func (s *Sampler) readCounters(ctx context.Context, at time.Time) *counters {
	c := &counters{at: at}
	c.cpu, c.cores, c.cpuErr = readCPU(s.procRoot)
	if c.cpuErr != nil {
		c.cpuErr = fmt.Errorf("cpu: %w", c.cpuErr)
	}
	if ifs, err := net.IOCountersWithContext(ctx, true); err != nil {
		c.netErr = fmt.Errorf("network: %w", err)
	} else {
		c.net = make(map[string]netCount, len(ifs))
		for _, i := range ifs {
			if !isLoopback(i.Name) {
				c.net[i.Name] = netCount{rx: i.BytesRecv, tx: i.BytesSent}
			}
		}
	}
	c.rapl, c.raplGen = s.energy.readRAPL()
	return c
}

// diff computes rates between two readings dt apart. A rate that cannot be
// computed keeps its previous value (CPU, network) or is marked absent (RAPL).
func (s *Sampler) diff(a, b *counters, dt time.Duration) rates {
	r := s.rates
	if a.cpuErr == nil && b.cpuErr == nil {
		if pct, ok := cpuPercent(a.cpu, b.cpu); ok {
			r.cpuPct = pct
		}
	}
	secs := dt.Seconds()
	if a.netErr == nil && b.netErr == nil && secs > 0 {
		var rx, tx uint64
		for name, cb := range b.net {
			// An interface that appeared, or whose counters went back (driver
			// reload), adds nothing: its counter is not traffic of this interval.
			if ca, ok := a.net[name]; ok {
				if cb.rx >= ca.rx {
					rx += cb.rx - ca.rx
				}
				if cb.tx >= ca.tx {
					tx += cb.tx - ca.tx
				}
			}
		}
		r.rxPerS, r.txPerS = float64(rx)/secs, float64(tx)/secs
	}
	r.raplW, r.raplOK = s.energy.raplWatts(a.rapl, a.raplGen, b.rapl, b.raplGen, dt)
	return r
}

// isLoopback tells loopback interfaces by name ("lo" on Linux, "lo0" elsewhere),
// which avoids a netlink dump every sample.
func isLoopback(name string) bool {
	if len(name) < 2 || name[:2] != "lo" {
		return false
	}
	_, err := strconv.Atoi(name[2:])
	return name == "lo" || err == nil
}

// diskUsage is usage of the filesystem holding path, or of its nearest existing
// ancestor while the agent has not created its data directory yet.
func diskUsage(ctx context.Context, path string) (*disk.UsageStat, error) {
	u, err := disk.UsageWithContext(ctx, path)
	for err != nil && errors.Is(err, fs.ErrNotExist) {
		parent := filepath.Dir(path)
		if parent == path {
			break
		}
		path = parent
		u, err = disk.UsageWithContext(ctx, path)
	}
	return u, err
}

// temperatures returns the readable sensors, at most maxTemperatures. gopsutil
// returns the readings it got along with a warnings error for the ones it could
// not read; the error is ignored on purpose.
func temperatures(ctx context.Context) []protocol.Temperature {
	stats, _ := host.SensorsTemperaturesWithContext(ctx)
	var out []protocol.Temperature
	seen := make(map[string]int, len(stats))
	for _, st := range stats {
		c := st.Temperature
		// Drivers report unreadable sensors as nonsense (-273, 0xffff/1000…).
		if math.IsNaN(c) || c < -60 || c > 200 {
			continue
		}
		name := st.SensorKey
		// Two NVMe drives both call themselves nvme_composite: keep both, apart.
		if n := seen[name]; n > 0 {
			seen[name] = n + 1
			name = name + "_" + strconv.Itoa(n+1)
		} else {
			seen[name] = 1
		}
		out = append(out, protocol.Temperature{Sensor: name, Celsius: c})
		if len(out) == maxTemperatures {
			break
		}
	}
	return out
}

func clampPct(p float64) float64 {
	switch {
	case math.IsNaN(p) || p < 0:
		return 0
	case p > 100:
		return 100
	}
	return p
}
