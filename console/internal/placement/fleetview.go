package placement

import (
	"context"
	"encoding/json"
	"math"
	"strconv"
	"time"

	"github.com/cloudskin/cloudskin/console/internal/planner"
	"github.com/cloudskin/cloudskin/console/internal/store"
	"github.com/cloudskin/cloudskin/shared/protocol"
)

// defaultCellMem is what a cell without a memory limit is assumed to take
// (the agent's default limit).
const defaultCellMem = 64 << 20

// batteryWindow is how far back the battery trend is fitted.
const batteryWindow = 30 * time.Minute

// fleetView is the fleet as the Planner sees it, built from the store:
// enrollment (arch, labels), the newest telemetry (memory, CPU, energy), the
// battery trend over the last half hour, streams held, and the memory of
// cells bound to a node but not yet reported running there.
func (s *Service) fleetView(ctx context.Context, cells []store.Cell) ([]planner.Node, error) {
	rows, err := s.store.ListNodes(ctx)
	if err != nil {
		return nil, err
	}
	pending := map[string]uint64{}
	for i := range cells {
		c := &cells[i]
		if st, ok := cellStatus(c, time.Time{}); ok && st.State == protocol.CellRunning {
			continue // already in the node's figures
		}
		pending[c.Node] += cellMem(c)
	}
	now := s.now()
	out := make([]planner.Node, 0, len(rows))
	for i := range rows {
		r := &rows[i]
		n := planner.Node{Name: r.Name, Arch: r.Arch, Online: r.Status == "online", Power: planner.PowerGrid}
		if r.Labels != "" {
			_ = json.Unmarshal([]byte(r.Labels), &n.Labels)
		}
		if !n.Online && r.StatusUS > 0 {
			n.OfflineSince = time.UnixMicro(r.StatusUS) // zero: never seen, offline past any grace
		}
		if n.Labels["power"] == planner.PowerGreen {
			n.Power = planner.PowerGreen
		}
		lat, e1 := strconv.ParseFloat(n.Labels["lat"], 64)
		lon, e2 := strconv.ParseFloat(n.Labels["lon"], 64)
		if e1 == nil && e2 == nil {
			n.Position = &planner.Point{Lat: lat, Lon: lon}
		}
		var t protocol.Telemetry
		if r.LastTelemetry != "" && json.Unmarshal([]byte(r.LastTelemetry), &t) == nil {
			n.MemTotal, n.CPUs, n.Load = t.Memory.TotalBytes, t.CPU.Cores, t.CPU.Percent/100
			n.MemFree = t.Memory.AvailableBytes
			if p := t.Energy.BatteryPct; p != nil {
				n.Battery = &planner.Battery{Percent: *p, TrendPctPerHour: s.batteryTrend(ctx, r.ID, now)}
			}
		}
		if p := pending[r.Name]; p >= n.MemFree {
			n.MemFree = 0
		} else {
			n.MemFree -= p
		}
		if streams, err := s.store.NodeStreams(ctx, r.Name); err == nil {
			for _, st := range streams {
				n.Streams = append(n.Streams, st.Name)
			}
		}
		out = append(out, n)
	}
	return out, nil
}

// batteryTrend fits a least-squares line through the node's battery
// readings of the last half hour: percent per hour, 0 without two readings.
func (s *Service) batteryTrend(ctx context.Context, nodeID uint, now time.Time) float64 {
	smps, err := s.store.Samples(ctx, nodeID, now.Add(-batteryWindow).UnixMicro(), now.UnixMicro(), 2000)
	if err != nil {
		return 0
	}
	var n, sx, sy, sxx, sxy float64
	for _, smp := range smps {
		if smp.BatteryPct == nil {
			continue
		}
		x := float64(smp.TimeUS-now.UnixMicro()) / float64(time.Hour/time.Microsecond)
		y := *smp.BatteryPct
		n++
		sx, sy, sxx, sxy = sx+x, sy+y, sxx+x*x, sxy+x*y
	}
	den := n*sxx - sx*sx
	if n < 2 || math.Abs(den) < 1e-12 {
		return 0
	}
	return (n*sxy - sx*sy) / den
}

func cellMem(c *store.Cell) uint64 {
	spec, err := readSpec(c.Spec)
	if err != nil || spec.Limits.MemoryBytes <= 0 {
		return defaultCellMem
	}
	return uint64(spec.Limits.MemoryBytes)
}

// plannerCell is a stored cell as the Planner sees it: its request, its
// app's constraints, where it is bound and since when, and its latency.
func (s *Service) plannerCell(c *store.Cell, apps map[string]*AppSpec) planner.Cell {
	pc := planner.Cell{ID: c.ID, App: c.App, Module: c.Module, MemBytes: cellMem(c), Node: c.Node}
	if c.BoundUS > 0 {
		pc.Since = time.UnixMicro(c.BoundUS)
	}
	spec, _ := readSpec(c.Spec)
	for _, in := range spec.Inputs {
		if in.Stream != "" {
			pc.InputStreams = append(pc.InputStreams, in.Stream)
		}
	}
	if a := apps[c.App]; a != nil {
		pc.Constraints = a.Constraints
		pc.CPU = a.CPU
		pc.LatencySLOms = a.LatencySLOms
	} else if c.App == "" {
		// A cell placed by hand stays where the operator put it.
		pc.Constraints.Pinned = c.Node
	}
	if st, ok := cellStatus(c, time.Time{}); ok && st.State == protocol.CellRunning {
		pc.Observed = &planner.Observed{LatencyP99ms: st.LatencyP99US / 1000}
	}
	return pc
}
