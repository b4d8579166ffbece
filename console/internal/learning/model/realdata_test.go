package model

import (
	"bufio"
	"fmt"
	"math"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"
)

// The real series of TestForecastRealData; testdata/SOURCE.txt says where
// each comes from and how it was trimmed.
type realCase struct {
	name     string
	load     func(t *testing.T) Series
	resample time.Duration // 0: as recorded
	train    int           // days of training before each 24 h holdout
	origins  int           // consecutive windows, one day apart
	min, max *float64
	solar    bool
}

var realCases = []realCase{
	{name: "PVGIS TMY Piedmont, GHI W/m², June", load: loadPVGIS, train: 14, origins: 10, min: ptr(0), solar: true},
	{name: "NREL SERF East, PV AC W, July 2016", load: loadSERF, train: 14, origins: 10, min: ptr(0), solar: true},
	{name: "Bitbrains VM, CPU %", load: loadBitbrains, train: 7, origins: 10, min: ptr(0), max: ptr(100)},
	{name: "Bitbrains VM, CPU %, hourly mean", load: loadBitbrains, resample: time.Hour, train: 7, origins: 10, min: ptr(0), max: ptr(100)},
	{name: "Google 2019 cluster, avg CPU", load: loadGoogle, train: 7, origins: 10, min: ptr(0), max: ptr(1)},
	{name: "Google 2019 cluster, avg CPU, hourly mean", load: loadGoogle, resample: time.Hour, train: 7, origins: 10, min: ptr(0), max: ptr(1)},
}

// realScore accumulates one method's holdout errors over the windows.
type realScore struct {
	mae, mape float64
	nMAPE     int
}

func (r *realScore) add(m Metrics) {
	r.mae += m.MAE
	if m.MAPE != nil {
		r.mape += *m.MAPE
		r.nMAPE++
	}
}

func (r realScore) cell(windows int) string {
	s := fmt.Sprintf("%.4g", r.mae/float64(windows))
	if r.nMAPE > 0 {
		s += fmt.Sprintf(" / %.1f%%", r.mape/float64(r.nMAPE))
	}
	return s
}

// TestForecastRealData trains Holt-Winters on rolling windows of real solar
// and CPU series, each followed by a 24 h holdout forecast in one go from
// the end of training, and compares it with the baselines. It logs the
// table published in docs/benchmarks.md:
//
//	go test ./console/internal/learning/model -run TestForecastRealData -v
func TestForecastRealData(t *testing.T) {
	methods := append([]string{MethodHoltWinters}, baselineOrder...)
	var table strings.Builder
	table.WriteString("| series | step | train | windows | MAE / MAPE: holt-winters | seasonal-naive | last-value | mean | HW beats seasonal-naive | ready (beats best baseline) | best on average |\n")
	table.WriteString("|---|---|---|---|---|---|---|---|---|---|---|\n")
	for _, rc := range realCases {
		s := rc.load(t)
		if rc.resample > 0 {
			var err error
			if s, err = s.Resample(rc.resample); err != nil {
				t.Fatal(err)
			}
		}
		day := int(24 * time.Hour / s.Step)
		scores := map[string]*realScore{}
		for _, m := range methods {
			scores[m] = &realScore{}
		}
		beatSN, ready := 0, 0
		for o := range rc.origins {
			lo, hi := o*day, (o+rc.train+1)*day
			if hi > len(s.Values) {
				t.Fatalf("%s: window %d needs %d samples, have %d", rc.name, o, hi, len(s.Values))
			}
			res, err := TrainForecast(s.Slice(lo, hi), ForecastOptions{Period: day, Holdout: day, Min: rc.min, Max: rc.max})
			if err != nil {
				t.Fatalf("%s, window %d: %v", rc.name, o, err)
			}
			best := res.Baselines[res.BestBaseline].MAE
			if res.Ready != (res.Metrics.MAE < best) {
				t.Errorf("%s, window %d: ready=%v with MAE %v against best baseline %v", rc.name, o, res.Ready, res.Metrics.MAE, best)
			}
			if !strings.Contains(res.Reason, num(res.Metrics.MAE)) || !strings.Contains(res.Reason, num(best)) {
				t.Errorf("%s, window %d: reason %q lacks the MAEs", rc.name, o, res.Reason)
			}
			scores[MethodHoltWinters].add(res.Metrics)
			for _, b := range baselineOrder {
				scores[b].add(res.Baselines[b])
			}
			if res.Metrics.MAE < res.Baselines[MethodSeasonalNaive].MAE {
				beatSN++
			}
			if res.Ready {
				ready++
			}
		}
		bestOnAvg := slices.MinFunc(methods, func(a, b string) int {
			return cmpFloat(scores[a].mae, scores[b].mae)
		})
		fmt.Fprintf(&table, "| %s | %v | %d d | %d | %s | %s | %s | %s | %d/%d | %d/%d | %s |\n",
			rc.name, stepText(s.Step), rc.train, rc.origins,
			scores[MethodHoltWinters].cell(rc.origins), scores[MethodSeasonalNaive].cell(rc.origins),
			scores[MethodLastValue].cell(rc.origins), scores[MethodMean].cell(rc.origins),
			beatSN, rc.origins, ready, rc.origins, bestOnAvg)

		hw, sn := scores[MethodHoltWinters].mae, scores[MethodSeasonalNaive].mae
		if rc.solar && !(hw < sn) {
			t.Errorf("%s: Holt-Winters mean MAE %.4g is not below seasonal-naive's %.4g", rc.name, hw/float64(rc.origins), sn/float64(rc.origins))
		}
	}
	t.Log("\n" + table.String())
}

func stepText(d time.Duration) string {
	if d >= time.Hour {
		return fmt.Sprintf("%g h", d.Hours())
	}
	return fmt.Sprintf("%g min", d.Minutes())
}

func cmpFloat(a, b float64) int {
	switch {
	case a < b:
		return -1
	case a > b:
		return 1
	}
	return 0
}

func ptr(v float64) *float64 { return &v }

// readLines returns the lines of a testdata file.
func readLines(t *testing.T, name string) []string {
	t.Helper()
	f, err := os.Open(filepath.Join("testdata", name))
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	var lines []string
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		lines = append(lines, strings.TrimRight(sc.Text(), "\r"))
	}
	if err := sc.Err(); err != nil {
		t.Fatal(err)
	}
	return lines
}

// onGrid places timestamped values on a regular grid from the first time:
// each value goes to the nearest slot (absorbing a second or two of
// jitter), a later value in the same slot wins, and empty slots are NaN.
func onGrid(t *testing.T, times []time.Time, vals []float64, step time.Duration) Series {
	t.Helper()
	if len(times) == 0 {
		t.Fatal("no rows")
	}
	n := int((times[len(times)-1].Sub(times[0])+step/2)/step) + 1
	s := Series{Start: times[0], Step: step, Values: make([]float64, n)}
	for i := range s.Values {
		s.Values[i] = math.NaN()
	}
	for i, tm := range times {
		k := int((tm.Sub(times[0]) + step/2) / step)
		if k < 0 || k >= n {
			t.Fatalf("row %d at %v is out of order", i, tm)
		}
		s.Values[k] = vals[i]
	}
	return s
}

// column finds a header's column.
func column(t *testing.T, header []string, name string) int {
	t.Helper()
	for i, h := range header {
		if strings.TrimSpace(h) == name {
			return i
		}
	}
	t.Fatalf("no column %q in %q", name, header)
	return -1
}

// loadPVGIS reads a PVGIS TMY file: metadata lines, a header starting
// "time(UTC)", hourly rows "20060601:0000,…" and legend lines after them.
func loadPVGIS(t *testing.T) Series {
	lines := readLines(t, "pvgis_tmy_italy_45.000_8.000_june2006.csv")
	h := slices.IndexFunc(lines, func(l string) bool { return strings.HasPrefix(l, "time(UTC),") })
	if h < 0 {
		t.Fatal("pvgis: no header")
	}
	ghi := column(t, strings.Split(lines[h], ","), "G(h)")
	var times []time.Time
	var vals []float64
	for _, l := range lines[h+1:] {
		f := strings.Split(l, ",")
		tm, err := time.Parse("20060102:1504", f[0])
		if err != nil || len(f) <= ghi {
			break // the legend after the rows
		}
		v, err := strconv.ParseFloat(f[ghi], 64)
		if err != nil {
			t.Fatalf("pvgis: %q: %v", l, err)
		}
		times, vals = append(times, tm), append(vals, v)
	}
	return onGrid(t, times, vals, time.Hour)
}

// loadSERF reads measured PV AC power: "measured_on,ac_power", local time
// with offset, blank lines at the end.
func loadSERF(t *testing.T) Series {
	lines := readLines(t, "nrel_serf_east_15min_ac_power_jul2016.csv")
	col := column(t, strings.Split(lines[0], ","), "ac_power")
	var times []time.Time
	var vals []float64
	for _, l := range lines[1:] {
		if strings.TrimSpace(l) == "" {
			continue
		}
		f := strings.Split(l, ",")
		tm, err := time.Parse("2006-01-02 15:04:05-07:00", f[0])
		if err != nil {
			t.Fatalf("serf: %q: %v", l, err)
		}
		v, err := strconv.ParseFloat(f[col], 64)
		if err != nil {
			v = math.NaN()
		}
		times, vals = append(times, tm), append(vals, v)
	}
	return onGrid(t, times, vals, 15*time.Minute)
}

// loadBitbrains reads a Bitbrains VM trace: ";<TAB>"-separated, epoch
// seconds (the header says ms) jittering around 5 minutes.
func loadBitbrains(t *testing.T) Series {
	lines := readLines(t, "bitbrains_vm_trace_cpu.csv")
	split := func(l string) []string { return strings.Split(l, ";") }
	header := split(lines[0])
	ts, col := column(t, header, "Timestamp [ms]"), column(t, header, "CPU usage [%]")
	var times []time.Time
	var vals []float64
	for _, l := range lines[1:] {
		if strings.TrimSpace(l) == "" {
			continue
		}
		f := split(l)
		sec, err := strconv.ParseInt(strings.TrimSpace(f[ts]), 10, 64)
		if err != nil {
			t.Fatalf("bitbrains: %q: %v", l, err)
		}
		v, err := strconv.ParseFloat(strings.TrimSpace(f[col]), 64)
		if err != nil {
			v = math.NaN()
		}
		times, vals = append(times, time.Unix(sec, 0).UTC()), append(vals, v)
	}
	return onGrid(t, times, vals, 5*time.Minute)
}

// loadGoogle reads the Google 2019 cluster averages: no time column, row i
// is i·300 s after 2019-05-01 00:00 UTC.
func loadGoogle(t *testing.T) Series {
	lines := readLines(t, "google2019_cluster_avg_cpu_300s.csv")
	col := column(t, strings.Split(lines[0], ","), "avg_cpu")
	s := Series{Start: time.Date(2019, 5, 1, 0, 0, 0, 0, time.UTC), Step: 5 * time.Minute}
	for _, l := range lines[1:] {
		if strings.TrimSpace(l) == "" {
			continue
		}
		v, err := strconv.ParseFloat(strings.Split(l, ",")[col], 64)
		if err != nil {
			v = math.NaN()
		}
		s.Values = append(s.Values, v)
	}
	return s
}
