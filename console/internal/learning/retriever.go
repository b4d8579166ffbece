package learning

import (
	"context"
	"encoding/json"
	"math"
	"strconv"
	"time"

	"github.com/cloudskin/cloudskin/console/internal/learning/model"
	"github.com/cloudskin/cloudskin/console/internal/planner"
	"github.com/cloudskin/cloudskin/console/internal/store"
	"github.com/cloudskin/cloudskin/shared/protocol"
)

// nodeFacts is what the retriever knows about a node from enrollment and
// its newest telemetry.
type nodeFacts struct {
	ID       uint
	Name     string
	Arch     string
	Power    string // planner.PowerGreen | planner.PowerGrid
	Cores    int
	MemBytes uint64
	Online   bool
	Position *planner.Point
	// From the newest sample; Battery and Solar are NaN when absent.
	Load, PowerW, Battery, Solar float64
	SampleAt                     time.Time
}

// nodes reads every node's facts.
func (s *Service) nodes(ctx context.Context) ([]nodeFacts, error) {
	rows, err := s.store.ListNodes(ctx)
	if err != nil {
		return nil, err
	}
	out := make([]nodeFacts, 0, len(rows))
	for i := range rows {
		r := &rows[i]
		f := nodeFacts{ID: r.ID, Name: r.Name, Arch: r.Arch, Power: planner.PowerGrid, Online: r.Status == protocol.StateOnline,
			Battery: math.NaN(), Solar: math.NaN()}
		var labels map[string]string
		if r.Labels != "" && json.Unmarshal([]byte(r.Labels), &labels) == nil {
			if labels["power"] == planner.PowerGreen {
				f.Power = planner.PowerGreen
			}
			lat, e1 := strconv.ParseFloat(labels["lat"], 64)
			lon, e2 := strconv.ParseFloat(labels["lon"], 64)
			if e1 == nil && e2 == nil {
				f.Position = &planner.Point{Lat: lat, Lon: lon}
			}
		}
		var t protocol.Telemetry
		if r.LastTelemetry != "" && json.Unmarshal([]byte(r.LastTelemetry), &t) == nil {
			f.Cores, f.MemBytes = t.CPU.Cores, t.Memory.TotalBytes
			f.Load, f.PowerW = t.CPU.Percent/100, t.Energy.PowerW
			if t.Energy.BatteryPct != nil {
				f.Battery = *t.Energy.BatteryPct
			}
			if t.Energy.SolarW != nil {
				f.Solar = *t.Energy.SolarW
			}
			f.SampleAt = t.Time
		}
		out = append(out, f)
	}
	return out, nil
}

// nodeSeries are one node's telemetry on a regular grid; NaN marks a step
// without a sample.
type nodeSeries struct {
	Start                       time.Time
	Step                        time.Duration
	Load, Power, Battery, Solar []float64
	samples                     int64
}

// seriesByNode averages every node's telemetry in [from, to) over step.
func (s *Service) seriesByNode(ctx context.Context, from, to time.Time, step time.Duration) (map[uint]*nodeSeries, error) {
	stepUS := step.Microseconds()
	first := from.UnixMicro() / stepUS
	n := int(to.UnixMicro()/stepUS - first)
	if n <= 0 {
		return nil, nil
	}
	bs, err := s.store.FleetBuckets(ctx, first*stepUS, to.UnixMicro(), stepUS)
	if err != nil {
		return nil, err
	}
	out := map[uint]*nodeSeries{}
	for _, b := range bs {
		ns := out[b.NodeID]
		if ns == nil {
			ns = &nodeSeries{Start: time.UnixMicro(first * stepUS).UTC(), Step: step,
				Load: nans(n), Power: nans(n), Battery: nans(n), Solar: nans(n)}
			out[b.NodeID] = ns
		}
		i := int(b.Bucket - first)
		if i < 0 || i >= n {
			continue
		}
		ns.samples += b.Samples
		ns.Load[i] = b.CPUPercent / 100
		ns.Power[i] = b.PowerW
		if b.BatteryPct != nil {
			ns.Battery[i] = *b.BatteryPct
		}
		if b.SolarW != nil {
			ns.Solar[i] = *b.SolarW
		}
	}
	return out, nil
}

func nans(n int) []float64 {
	v := make([]float64, n)
	for i := range v {
		v[i] = math.NaN()
	}
	return v
}

// observed counts the non-NaN values.
func observed(v []float64) int {
	n := 0
	for _, x := range v {
		if !math.IsNaN(x) {
			n++
		}
	}
	return n
}

// loadStep is the grid on which a cell sample finds its node's load.
const loadStep = time.Minute

// perfSamples joins the cell samples in [from, to) with their node's facts
// and load at the time: the performance model's table. Samples of cells
// that handled nothing are left out (no latency to learn from).
func (s *Service) perfSamples(ctx context.Context, from, to time.Time, nodes []nodeFacts) ([]model.Sample, error) {
	rows, err := s.store.CellSamples(ctx, from.UnixMicro(), to.UnixMicro(), s.cfg.MaxRows)
	if err != nil {
		return nil, err
	}
	if len(rows) == 0 {
		return nil, nil
	}
	loads, err := s.seriesByNode(ctx, from, to, loadStep)
	if err != nil {
		return nil, err
	}
	byName := make(map[string]*nodeFacts, len(nodes))
	for i := range nodes {
		byName[nodes[i].Name] = &nodes[i]
	}
	out := make([]model.Sample, 0, len(rows))
	for _, r := range rows {
		n := byName[r.Node]
		if n == nil || r.RatePerS <= 0 || r.LatencyP99US <= 0 {
			continue
		}
		t := time.UnixMicro(r.TimeUS).UTC()
		load := n.Load
		if ns := loads[n.ID]; ns != nil {
			i := int(t.Sub(ns.Start) / loadStep)
			if i >= 0 && i < len(ns.Load) && !math.IsNaN(ns.Load[i]) {
				load = ns.Load[i]
			}
		}
		out = append(out, model.Sample{
			Time: t, Module: r.Module, Arch: n.Arch, Power: n.Power, Cores: n.Cores, MemBytes: n.MemBytes,
			Load: load, InputRate: r.RatePerS, CellCPU: r.CPU,
			LatencyMs: r.LatencyP99US / 1000, Throughput: r.RatePerS,
		})
	}
	return out, nil
}

// cellSampleEvery is the least time between two samples of one cell.
const cellSampleEvery = 10 * time.Second

// lastSample is the previous sample of a cell on a node, for its rate.
type lastSample struct {
	node    string
	records uint64
	at      int64 // the status's time, Unix µs
}

// collect turns cells' newest statuses into cell samples: one per cell per
// cellSampleEvery at most, with the records per second since the previous.
func (s *Service) collect(ctx context.Context) error {
	cells, err := s.store.ListCells(ctx, "")
	if err != nil {
		return err
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	var rows []store.CellSample
	seen := make(map[string]bool, len(cells))
	for i := range cells {
		c := &cells[i]
		seen[c.ID] = true
		if c.StatusJSON == "" || c.StatusUS == 0 {
			continue
		}
		prev, had := s.last[c.ID]
		if had && prev.node == c.Node && c.StatusUS-prev.at < cellSampleEvery.Microseconds() {
			continue
		}
		var st protocol.CellStatus
		if json.Unmarshal([]byte(c.StatusJSON), &st) != nil || st.State != protocol.CellRunning {
			continue
		}
		cur := lastSample{node: c.Node, records: st.Records, at: c.StatusUS}
		s.last[c.ID] = cur
		if !had || prev.node != c.Node || st.Records < prev.records || c.StatusUS <= prev.at {
			continue // the first look, a move or a restart: no rate yet
		}
		rate := float64(st.Records-prev.records) / (float64(c.StatusUS-prev.at) / 1e6)
		s.rates[c.ID] = rate
		rows = append(rows, store.CellSample{
			Cell: c.ID, App: c.App, Module: c.Module, Node: c.Node, TimeUS: c.StatusUS,
			Records: st.Records, RatePerS: rate, LatencyP99US: st.LatencyP99US, LatencyP50US: st.LatencyP50US,
			MemoryBytes: st.MemoryBytes, CPU: s.cellCPU(c.App),
		})
	}
	for id := range s.last {
		if !seen[id] {
			delete(s.last, id)
			delete(s.rates, id)
		}
	}
	if len(rows) == 0 {
		return nil
	}
	s.m.cellSamples.Add(float64(len(rows)))
	return s.store.InsertCellSamples(ctx, rows)
}

// cellCPU is the CPU request of an app's cells (0 for hand-placed cells or
// an app that does not say).
func (s *Service) cellCPU(app string) float64 {
	if app == "" || s.appCPU == nil {
		return 0
	}
	return s.appCPU(app)
}
