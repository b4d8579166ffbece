package model

import (
	"cmp"
	"math"
	"slices"
	"strings"
	"time"
)

// Sample is one observation of a cell running on a node: the facts the
// performance model reads and the figures it predicts.
type Sample struct {
	Time       time.Time
	Module     string  // digest of the cell's module
	Arch       string  // "amd64" | "arm64"
	Power      string  // "green" | "grid"
	Cores      int     // node CPUs
	MemBytes   uint64  // node memory
	Load       float64 // node CPU utilisation 0..1 while the cell ran there
	InputRate  float64 // records/s into the cell
	CellCPU    float64 // cores requested by the cell
	DistanceKm float64 // to the cell's target/affinity point; 0 when none
	LatencyMs  float64 // target 1 (p99)
	Throughput float64 // target 2 (records/s handled)
}

// MaxModules caps the one-hot module columns: the rest share the baseline.
const MaxModules = 32

// queueCap keeps the queueing feature finite on a saturated node.
const queueCap = 0.95

// Encoder turns Samples into feature rows. The module columns are fixed at
// training time so that a stored model and its encoder agree.
type Encoder struct {
	Modules []string `json:"modules"` // one-hot columns, sorted
}

// baseNames are the features every row has, in order, before the modules.
var baseNames = [...]string{
	"node.load", "node.queue", "node.cores", "node.mem_gb", "node.arm64", "node.green",
	"cell.input_rate", "cell.cpu", "hour.sin", "hour.cos", "net.distance_km",
}

// NewEncoder keeps the MaxModules most frequent modules of samples (ties by
// digest) as one-hot columns.
func NewEncoder(samples []Sample) *Encoder {
	counts := map[string]int{}
	for _, s := range samples {
		if s.Module != "" {
			counts[s.Module]++
		}
	}
	mods := make([]string, 0, len(counts))
	for m := range counts {
		mods = append(mods, m)
	}
	slices.SortFunc(mods, func(a, b string) int {
		return cmp.Or(cmp.Compare(counts[b], counts[a]), strings.Compare(a, b))
	})
	mods = mods[:min(len(mods), MaxModules)]
	slices.Sort(mods)
	return &Encoder{Modules: mods}
}

// Names are the feature names of Row, in order: stable for a given
// Encoder. node.queue is 1/(1-min(load, 0.95)), the M/M/1 waiting factor,
// which lets a linear model see latency climb as a node fills up; node.mem_gb
// is in GiB; hour.* place the sample's UTC time of day on a circle.
func (e *Encoder) Names() []string {
	names := make([]string, 0, len(baseNames)+len(e.Modules))
	names = append(names, baseNames[:]...)
	for _, m := range e.Modules {
		names = append(names, "module="+shortDigest(m))
	}
	return names
}

// shortDigest is the first 12 hex digits of a digest, without its
// algorithm prefix.
func shortDigest(d string) string {
	if i := strings.LastIndexByte(d, ':'); i >= 0 {
		d = d[i+1:]
	}
	return d[:min(len(d), 12)]
}

// Row is s as features, in the order of Names. A module not among the
// encoder's has all module columns 0.
func (e *Encoder) Row(s Sample) []float64 {
	row := make([]float64, len(baseNames)+len(e.Modules))
	e.fill(row, s)
	return row
}

func (e *Encoder) fill(row []float64, s Sample) {
	load := s.Load
	if load < 0 {
		load = 0
	}
	u := s.Time.UTC()
	h := float64(u.Hour()) + float64(u.Minute())/60 + float64(u.Second())/3600
	sin, cos := math.Sincos(2 * math.Pi * h / 24)
	row[0] = load
	row[1] = 1 / (1 - min(load, queueCap))
	row[2] = float64(s.Cores)
	row[3] = float64(s.MemBytes) / (1 << 30)
	row[4] = b2f(s.Arch == "arm64")
	row[5] = b2f(s.Power == "green")
	row[6] = s.InputRate
	row[7] = s.CellCPU
	row[8] = sin
	row[9] = cos
	row[10] = s.DistanceKm
	for i, m := range e.Modules {
		row[len(baseNames)+i] = b2f(m == s.Module)
	}
}

func b2f(b bool) float64 {
	if b {
		return 1
	}
	return 0
}

// Table is a regression data set, rows in time order.
type Table struct {
	Features []string
	X        [][]float64
	Y        []float64
}

// Table encodes samples, sorted by time, with y as the target (for
// example func(s Sample) float64 { return s.LatencyMs }).
func (e *Encoder) Table(samples []Sample, y func(Sample) float64) Table {
	sorted := slices.Clone(samples)
	slices.SortStableFunc(sorted, func(a, b Sample) int { return a.Time.Compare(b.Time) })
	t := Table{Features: e.Names(), X: make([][]float64, len(sorted)), Y: make([]float64, len(sorted))}
	for i, s := range sorted {
		t.X[i] = e.Row(s)
		t.Y[i] = y(s)
	}
	return t
}
