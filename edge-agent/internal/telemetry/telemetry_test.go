package telemetry

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"math"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/shirou/gopsutil/v3/common"

	"github.com/cloudskin/cloudskin/shared/protocol"
)

func TestParseCPU(t *testing.T) {
	tests := []struct {
		name      string
		stat      string
		want      cpuTimes
		wantCores int
		wantErr   bool
	}{
		{
			name: "linux 6",
			stat: "cpu  100 5 50 800 40 3 2 10 7 0\ncpu0 50 2 25 400 20 1 1 5 3 0\ncpu1 50 3 25 400 20 2 1 5 4 0\nintr 1 2 3\n",
			// guest (7) is inside user already; idle+iowait = 840 are not busy.
			want: cpuTimes{busy: 100 + 5 + 50 + 3 + 2 + 10, total: 1010}, wantCores: 2,
		},
		{
			name: "old kernel with four fields",
			stat: "cpu 10 0 10 80\ncpu0 10 0 10 80\n",
			want: cpuTimes{busy: 20, total: 100}, wantCores: 1,
		},
		{name: "no aggregate line", stat: "intr 1\n", wantErr: true},
		{name: "garbage", stat: "cpu 1 x 3 4\n", wantErr: true},
		{name: "too short", stat: "cpu 1 2\n", wantErr: true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, cores, err := parseCPU(bufio.NewScanner(strings.NewReader(tt.stat)))
			if (err != nil) != tt.wantErr {
				t.Fatalf("err = %v, want error %v", err, tt.wantErr)
			}
			if !tt.wantErr && (got != tt.want || cores != tt.wantCores) {
				t.Errorf("got %+v with %d cores, want %+v with %d", got, cores, tt.want, tt.wantCores)
			}
		})
	}
}

func TestCPUPercent(t *testing.T) {
	tests := []struct {
		a, b   cpuTimes
		want   float64
		wantOK bool
	}{
		{cpuTimes{100, 1000}, cpuTimes{150, 1100}, 50, true},
		{cpuTimes{100, 1000}, cpuTimes{100, 1200}, 0, true},
		{cpuTimes{100, 1000}, cpuTimes{300, 1200}, 100, true},
		{cpuTimes{100, 1000}, cpuTimes{100, 1000}, 0, false},  // no tick passed
		{cpuTimes{100, 1000}, cpuTimes{90, 900}, 0, false},    // went back
		{cpuTimes{100, 1000}, cpuTimes{220, 1100}, 100, true}, // iowait went back: clamped
	}
	for _, tt := range tests {
		got, ok := cpuPercent(tt.a, tt.b)
		if ok != tt.wantOK || math.Abs(got-tt.want) > 1e-9 {
			t.Errorf("cpuPercent(%+v, %+v) = %v, %v; want %v, %v", tt.a, tt.b, got, ok, tt.want, tt.wantOK)
		}
	}
}

func TestIsLoopback(t *testing.T) {
	for name, want := range map[string]bool{"lo": true, "lo0": true, "eth0": false, "lowpan0": false, "wlo1": false, "l": false} {
		if got := isLoopback(name); got != want {
			t.Errorf("isLoopback(%q) = %v, want %v", name, got, want)
		}
	}
}

// CPU percent and network rates cover the interval since the previous sample; a
// sample that follows too soon repeats them; a clock that goes back restarts the
// interval.
func TestRates(t *testing.T) {
	f := newFixture(t)
	s := f.sampler(t, Config{})
	ctx := context.Background()
	f.stat(t, 1000, 9000)
	f.netDev(t, map[string][2]uint64{"lo": {1 << 30, 1 << 30}, "eth0": {5000, 7000}, "wlan0": {100, 200}})
	if _, err := s.Sample(ctx, t0); err != nil {
		t.Fatal(err)
	}

	type want struct {
		cpu, rxPerS, txPerS float64
		rx, tx              uint64
		cores               int
	}
	steps := []struct {
		name string
		at   time.Duration
		busy uint64
		idle uint64
		ifs  map[string][2]uint64
		want want
	}{
		{
			name: "10 s at 40%, loopback left out", at: 10 * time.Second, busy: 1000 + 400, idle: 9000 + 600,
			ifs:  map[string][2]uint64{"lo": {1 << 31, 1 << 31}, "eth0": {5000 + 20000, 7000 + 1000}, "wlan0": {100 + 5000, 200}},
			want: want{cpu: 40, rxPerS: 2500, txPerS: 100, rx: 25000 + 5100, tx: 8000 + 200, cores: 2},
		},
		{
			name: "50 ms later: previous rates, current counters", at: 10*time.Second + 50*time.Millisecond, busy: 1500, idle: 9600,
			ifs:  map[string][2]uint64{"eth0": {30000, 9000}, "wlan0": {5100, 200}},
			want: want{cpu: 40, rxPerS: 2500, txPerS: 100, rx: 35100, tx: 9200, cores: 2},
		},
		{
			// The interval spans the skipped sample; wlan0 was reset, usb0 is new:
			// neither adds to the rates.
			name: "5 s after the last rate", at: 15 * time.Second, busy: 1400 + 100, idle: 9600 + 900,
			ifs:  map[string][2]uint64{"eth0": {25000 + 10000, 8000 + 500}, "wlan0": {10, 10}, "usb0": {1 << 20, 1 << 20}},
			want: want{cpu: 10, rxPerS: 2000, txPerS: 100, rx: 35000 + 10 + 1<<20, tx: 8500 + 10 + 1<<20, cores: 2},
		},
		{
			name: "clock went back: previous rates", at: 2 * time.Second, busy: 1600, idle: 10500,
			ifs:  map[string][2]uint64{"eth0": {90000, 90000}},
			want: want{cpu: 10, rxPerS: 2000, txPerS: 100, rx: 90000, tx: 90000, cores: 2},
		},
		{
			name: "then counted from the step back", at: 4 * time.Second, busy: 1600 + 200, idle: 10500 + 200,
			ifs:  map[string][2]uint64{"eth0": {90000 + 4000, 90000}},
			want: want{cpu: 50, rxPerS: 2000, txPerS: 0, rx: 94000, tx: 90000, cores: 2},
		},
	}
	for _, st := range steps {
		f.stat(t, st.busy, st.idle)
		f.netDev(t, st.ifs)
		got, err := s.Sample(ctx, t0.Add(st.at))
		if err != nil {
			t.Fatalf("%s: %v", st.name, err)
		}
		n := got.Network
		if math.Abs(got.CPU.Percent-st.want.cpu) > 1e-9 || got.CPU.Cores != st.want.cores ||
			math.Abs(n.RxBytesPerS-st.want.rxPerS) > 1e-9 || math.Abs(n.TxBytesPerS-st.want.txPerS) > 1e-9 ||
			n.RxBytes != st.want.rx || n.TxBytes != st.want.tx {
			t.Errorf("%s: cpu %v%% of %d cores, rx %d (%v/s), tx %d (%v/s); want %+v",
				st.name, got.CPU.Percent, got.CPU.Cores, n.RxBytes, n.RxBytesPerS, n.TxBytes, n.TxBytesPerS, st.want)
		}
	}
}

func TestTemperatures(t *testing.T) {
	f := newFixture(t)
	hw := func(n int, name string, temps ...string) {
		f.writeSys(t, fmt.Sprintf("class/hwmon/hwmon%d/name", n), name)
		for i, v := range temps {
			f.writeSys(t, fmt.Sprintf("class/hwmon/hwmon%d/temp%d_input", n, i+1), v)
		}
	}
	hw(0, "coretemp", "45000", "47500")
	f.writeSys(t, "class/hwmon/hwmon0/temp1_label", "Package id 0")
	hw(1, "nvme", "38000")
	hw(2, "nvme", "-273000") // unreadable sensor reported as absolute zero
	hw(3, "nvme", "40000")
	many := make([]string, 9)
	for i := range many {
		many[i] = "30000"
	}
	for n := 4; n < 12; n++ { // 72 more sensors
		hw(n, fmt.Sprintf("board%d", n), many...)
	}
	ctx := context.WithValue(context.Background(), common.EnvKey, common.EnvMap{common.HostSysEnvKey: f.sys})

	got := temperatures(ctx)
	if len(got) != maxTemperatures {
		t.Fatalf("%d sensors, want the cap %d", len(got), maxTemperatures)
	}
	byName := map[string]float64{}
	for _, g := range got {
		if _, dup := byName[g.Sensor]; dup {
			t.Errorf("sensor %q reported twice", g.Sensor)
		}
		byName[g.Sensor] = g.Celsius
	}
	for name, want := range map[string]float64{"coretemp_package_id_0": 45, "coretemp": 47.5, "nvme": 38, "nvme_2": 40} {
		if c, ok := byName[name]; !ok || c != want {
			t.Errorf("sensor %q = %v (present %v), want %v °C; got %v", name, c, ok, want, got[:5])
		}
	}
	for _, g := range got {
		if g.Celsius < -60 {
			t.Errorf("implausible sensor kept: %+v", g)
		}
	}
}

// A sample of the machine the tests run on.
func TestSampleThisMachine(t *testing.T) {
	s := NewSampler(Config{DataDir: t.TempDir()})
	ctx := context.Background()

	start := time.Now()
	first, err := s.Sample(ctx, start)
	if err != nil {
		t.Fatal(err)
	}
	if d := time.Since(start); d > 500*time.Millisecond {
		t.Errorf("first sample took %v; it should block about %v", d, window)
	}
	time.Sleep(150 * time.Millisecond)
	second, err := s.Sample(ctx, time.Now())
	if err != nil {
		t.Fatal(err)
	}
	for name, tel := range map[string]*protocol.Telemetry{"first": &first, "second": &second} {
		tel.Node = "this-machine"
		if err := tel.Validate("this-machine", time.Now()); err != nil {
			t.Errorf("%s sample does not validate: %v", name, err)
		}
		if tel.CPU.Cores <= 0 || tel.Memory.TotalBytes == 0 || tel.Disk.TotalBytes == 0 {
			t.Errorf("%s sample: cores %d, memory %d B, disk %d B; want all > 0", name, tel.CPU.Cores, tel.Memory.TotalBytes, tel.Disk.TotalBytes)
		}
		if tel.Memory.UsedBytes > tel.Memory.TotalBytes || tel.Disk.UsedBytes > tel.Disk.TotalBytes {
			t.Errorf("%s sample: more used than total: %+v %+v", name, tel.Memory, tel.Disk)
		}
		if tel.Energy.PowerW <= 0 {
			t.Errorf("%s sample: %v W from %s; a running node draws power", name, tel.Energy.PowerW, tel.Energy.Source)
		}
		if tel.Node != "this-machine" || tel.Seq != 0 {
			t.Errorf("%s sample: node/seq set by the sampler", name)
		}
	}
	if !second.Time.After(first.Time) {
		t.Errorf("times %v then %v", first.Time, second.Time)
	}
}

func TestSampleDataDirNotYetCreated(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "not", "yet")
	s := newFixture(t).sampler(t, Config{DataDir: dir})
	got, err := s.Sample(context.Background(), t0)
	if err != nil {
		t.Fatal(err)
	}
	if got.Disk.Path != dir || got.Disk.TotalBytes == 0 {
		t.Errorf("disk = %+v, want the filesystem that will hold %s", got.Disk, dir)
	}
}

func TestSampleCancelled(t *testing.T) {
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	s := newFixture(t).sampler(t, Config{})
	if _, err := s.Sample(ctx, t0); !errors.Is(err, context.Canceled) {
		t.Errorf("err = %v, want context.Canceled", err)
	}
}

func BenchmarkSample(b *testing.B) {
	s := NewSampler(Config{DataDir: b.TempDir()})
	ctx := context.Background()
	if _, err := s.Sample(ctx, time.Now()); err != nil { // the first one waits for its window
		b.Fatal(err)
	}
	b.ReportAllocs()
	for b.Loop() {
		if _, err := s.Sample(ctx, time.Now()); err != nil {
			b.Fatal(err)
		}
	}
}
