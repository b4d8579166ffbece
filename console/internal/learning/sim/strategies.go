package sim

import (
	"cmp"
	"slices"
	"time"

	"github.com/cloudskin/cloudskin/console/internal/planner"
)

// PlannerStrategy is the real Planner, fed the fleet view the console
// builds from telemetry. With a Predictor it is the Planner the console
// runs with the learning plane; without one, its heuristics alone.
type PlannerStrategy struct {
	Label string
	P     *planner.Planner
	// Before runs before each plan, e.g. to give the Predictor the latest
	// telemetry; may be nil.
	Before func(s *State)
}

// Name implements Strategy.
func (ps *PlannerStrategy) Name() string { return ps.Label }

// Plan implements Strategy.
func (ps *PlannerStrategy) Plan(s *State) map[string]string {
	if ps.Before != nil {
		ps.Before(s)
	}
	assign, decisions := ps.P.Plan(s.PlannerNodes(), s.PlannerCells(), s.Targets(), s.Now)
	if !s.Now.Before(s.TallyFrom) {
		if s.Tally.Reasons == nil {
			s.Tally.Reasons = map[string]int{}
		}
		for _, d := range decisions {
			s.Tally.Reasons[d.Kind+"/"+d.Reason]++
		}
	}
	return assign
}

// baseline holds what round robin and least loaded share: when a cell must
// be (re)placed, and which nodes can take it.
type baseline struct {
	residence time.Duration
	slack     float64
}

// The baselines re-place a cell when it is unplaced, when its node is
// offline or out of memory, and — the vehicle cell only — when the vehicle
// is outside its node's coverage (widened by the Planner's CoverageSlack)
// and the cell has run there the Planner's MinResidence: the same patience
// the Planner has, so that the baselines do not chase the car every minute.
// A cell on a node without coverage (the grid site) counts as outside it.
func newBaseline() baseline {
	c := planner.DefaultConfig()
	return baseline{residence: c.MinResidence, slack: c.CoverageSlack}
}

// plan runs pick for every cell that must move, in cell order, each seeing
// the memory and CPU of the ones placed before it.
func (b baseline) plan(s *State, pick func(c int, free []int64, busy []float64) int) map[string]string {
	w := s.W
	assign := make(map[string]string, len(s.Cells))
	free := make([]int64, len(w.Nodes))
	busy := make([]float64, len(w.Nodes))
	for i := range w.Nodes {
		free[i] = s.memFree(i)
		busy[i] = w.Nodes[i].BaseCores
	}
	for i, c := range s.Cells {
		if n, ok := w.NodeIndex(c.Node); ok {
			busy[n] += w.Cells[i].CPU
		}
	}
	vehicle := w.VehicleAt(s.Now)
	for i := range s.Cells {
		c, spec := &s.Cells[i], &w.Cells[i]
		n, ok := w.NodeIndex(c.Node)
		move := !ok || !s.Nodes[n].Online || free[n] < 0
		if !move && spec.Target != "" && s.Now.Sub(c.Since) >= b.residence {
			node := &w.Nodes[n]
			move = node.CoverM == 0 || planner.Distance(vehicle, node.Pos) > node.CoverM*(1+b.slack)
		}
		if !move {
			assign[spec.ID] = c.Node
			continue
		}
		if ok {
			free[n] += int64(spec.Mem)
			busy[n] -= spec.CPU
		}
		to := pick(i, free, busy)
		if to < 0 {
			continue // nothing can take it: it stays unplaced
		}
		free[to] -= int64(spec.Mem)
		busy[to] += spec.CPU
		assign[spec.ID] = w.Nodes[to].Name
	}
	return assign
}

// fits says whether node n can take cell c.
func fits(s *State, n, c int, free []int64) bool {
	spec, node := &s.W.Cells[c], &s.W.Nodes[n]
	return s.Nodes[n].Online && free[n] >= int64(spec.Mem) && (spec.Arch == "" || spec.Arch == node.Arch)
}

// RoundRobin gives each cell that must move the next node in turn (by
// name) that is online, has the memory and the arch.
type RoundRobin struct {
	baseline
	next int
}

// NewRoundRobin returns the round-robin baseline.
func NewRoundRobin() *RoundRobin { return &RoundRobin{baseline: newBaseline()} }

// Name implements Strategy.
func (*RoundRobin) Name() string { return "round-robin" }

// Plan implements Strategy.
func (rr *RoundRobin) Plan(s *State) map[string]string {
	order := nodeOrder(s.W)
	return rr.plan(s, func(c int, free []int64, _ []float64) int {
		for k := range order {
			n := order[(rr.next+k)%len(order)]
			if fits(s, n, c, free) {
				rr.next = (rr.next + k + 1) % len(order)
				return n
			}
		}
		return -1
	})
}

// LeastLoaded gives each cell that must move the feasible node with the
// lowest CPU utilisation once the cell is on it (ties by name).
type LeastLoaded struct{ baseline }

// NewLeastLoaded returns the least-loaded baseline.
func NewLeastLoaded() *LeastLoaded { return &LeastLoaded{baseline: newBaseline()} }

// Name implements Strategy.
func (*LeastLoaded) Name() string { return "least-loaded" }

// Plan implements Strategy.
func (ll *LeastLoaded) Plan(s *State) map[string]string {
	order := nodeOrder(s.W)
	return ll.plan(s, func(c int, free []int64, busy []float64) int {
		best, bestU := -1, 0.0
		for _, n := range order {
			if !fits(s, n, c, free) {
				continue
			}
			u := (busy[n] + s.W.Cells[c].CPU) / float64(s.W.Nodes[n].CPUs)
			if best < 0 || u < bestU {
				best, bestU = n, u
			}
		}
		return best
	})
}

func nodeOrder(w *World) []int {
	order := make([]int, len(w.Nodes))
	for i := range order {
		order[i] = i
	}
	slices.SortFunc(order, func(a, b int) int { return cmp.Compare(w.Nodes[a].Name, w.Nodes[b].Name) })
	return order
}

// Explorer is the warm-up week's operator: the heuristic Planner runs the
// circuit, and every Every minutes one cell (chosen by the seed) is moved to
// a random node that can take it — the A/B placements that let the latency
// model see each kind of cell on several nodes. Only the warm-up explores;
// its history is what the learning plane trains on.
type Explorer struct {
	Inner Strategy
	Every int
}

// Name implements Strategy.
func (e *Explorer) Name() string { return "warm-up(" + e.Inner.Name() + ")" }

// Plan implements Strategy.
func (e *Explorer) Plan(s *State) map[string]string {
	assign := e.Inner.Plan(s)
	m := minuteOf(s.Now)
	if e.Every <= 0 || m%uint64(e.Every) != 0 {
		return assign
	}
	w := s.W
	c := int(w.uniform(0xe4, m, 0) * float64(len(w.Cells)))
	free := make([]int64, len(w.Nodes))
	for i := range w.Nodes {
		free[i] = s.memFree(i)
	}
	var ok []int
	for n := range w.Nodes {
		if w.Nodes[n].Name != assign[w.Cells[c].ID] && fits(s, n, c, free) {
			ok = append(ok, n)
		}
	}
	if len(ok) > 0 {
		assign[w.Cells[c].ID] = w.Nodes[ok[int(w.uniform(0xe5, m, 0)*float64(len(ok)))]].Name
	}
	return assign
}
