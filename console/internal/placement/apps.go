package placement

import (
	"bytes"
	"encoding/json"
	"fmt"
	"regexp"
	"strings"
	"time"

	"github.com/cloudskin/cloudskin/console/internal/planner"
	"github.com/cloudskin/cloudskin/shared/protocol"
)

// AppSpec is what an operator declares: cells the Planner places and keeps
// placed, and where they may and should run.
type AppSpec struct {
	Name  string    `json:"name"`
	Cells []AppCell `json:"cells"`
	// Replicas of each cell (default 1). Each replica is a cell of its own,
	// "{app}-{cell}-{i}"; with one replica the cell is "{app}-{cell}".
	Replicas int `json:"replicas,omitempty"`
	// Constraints are where the cells may run and should run (node labels,
	// arch only if it must, free memory, site, a fixed point or a moving
	// target, power preference, or a pinned node).
	Constraints planner.Constraints `json:"constraints"`
	// Priority is the cells' priority on their node: "low" cells are the
	// ones a green node cut off from the console may pause on its own to
	// save energy (docs/architecture.md, Edge autonomy); "" is normal.
	Priority string `json:"priority,omitempty"`
	// CPU is each cell's CPU request in cores (scoring only).
	CPU float64 `json:"cpu,omitempty"`
	// LatencySLOms is the p99 latency the cells should keep; above it a
	// cell moves to a node with more headroom.
	LatencySLOms float64 `json:"latency_slo_ms,omitempty"`
	// CheckpointSeconds is the period of the cells' checkpoints (default
	// 60; a node lost restarts its cells elsewhere from the newest).
	CheckpointSeconds *int `json:"checkpoint_seconds,omitempty"`
	// Scale makes the app bursty: its replicas share its stream input, and
	// their number follows the backlog between Min and Max (Replicas is
	// then the current count, kept by the autoscaler).
	Scale *Scale `json:"scale,omitempty"`
}

// Scale is a bursty app's replica range and signal.
type Scale struct {
	Min int `json:"min"`
	Max int `json:"max"`
	// BacklogPerReplica is how many unread records of the stream one
	// replica may have before another is added (default 1000).
	BacklogPerReplica uint64 `json:"backlog_per_replica,omitempty"`
	// IdleSeconds without backlog take one replica away (default 30).
	IdleSeconds int `json:"idle_seconds,omitempty"`
	// From is where the current partitioning started, and Since when
	// (both kept by the console: replicas' reports older than Since speak
	// of the previous partitioning).
	From  uint64    `json:"from,omitempty"`
	Since time.Time `json:"since,omitzero"`
}

// AppCell is one cell of an app.
type AppCell struct {
	Name    string              `json:"name"`
	Module  string              `json:"module"`
	Config  json.RawMessage     `json:"config,omitempty"`
	Inputs  []protocol.Input    `json:"inputs"`
	Outputs []string            `json:"outputs,omitempty"`
	Limits  protocol.CellLimits `json:"limits"`
}

// Apps' bounds.
const (
	MaxAppCells    = 32
	MaxReplicas    = 64
	defaultCkptSec = 60
)

var appNameRE = regexp.MustCompile(`^[a-z0-9]([a-z0-9-]{0,30}[a-z0-9])?$`)

// Validate checks an app's shape; modules and nodes are checked against the
// store by the service.
func (a *AppSpec) Validate() error {
	if !appNameRE.MatchString(a.Name) {
		return fmt.Errorf("%w: app name %q: use 1-32 lowercase letters, digits or '-'", ErrInvalid, a.Name)
	}
	switch a.Priority {
	case protocol.PriorityNormal, protocol.PriorityLow, protocol.PriorityHigh:
	default:
		return fmt.Errorf("%w: app %s: priority %q is not \"\" (normal), \"low\" or \"high\"", ErrInvalid, a.Name, a.Priority)
	}
	if len(a.Cells) == 0 || len(a.Cells) > MaxAppCells {
		return fmt.Errorf("%w: app %s: 1 to %d cells", ErrInvalid, a.Name, MaxAppCells)
	}
	if a.Replicas < 0 || a.Replicas > MaxReplicas {
		return fmt.Errorf("%w: app %s: replicas must be 1 to %d", ErrInvalid, a.Name, MaxReplicas)
	}
	if a.CPU < 0 || a.LatencySLOms < 0 {
		return fmt.Errorf("%w: app %s: cpu and latency_slo_ms must not be negative", ErrInvalid, a.Name)
	}
	if c := a.CheckpointSeconds; c != nil && (*c < 0 || *c > 7*24*3600) {
		return fmt.Errorf("%w: app %s: checkpoint_seconds must be 0 (off) to one week", ErrInvalid, a.Name)
	}
	switch a.Constraints.Arch {
	case "", "amd64", "arm64":
	default:
		return fmt.Errorf("%w: app %s: arch %q: use amd64 or arm64", ErrInvalid, a.Name, a.Constraints.Arch)
	}
	switch a.Constraints.Power {
	case "", planner.PowerGreen, planner.PowerGrid:
	default:
		return fmt.Errorf("%w: app %s: power %q: use green or grid", ErrInvalid, a.Name, a.Constraints.Power)
	}
	if p := a.Constraints.Pinned; p != "" {
		if err := protocol.ValidateNodeName(p); err != nil {
			return fmt.Errorf("%w: app %s: pinned: %v", ErrInvalid, a.Name, err)
		}
	}
	if pt := a.Constraints.Point; pt != nil && (pt.Lat < -90 || pt.Lat > 90 || pt.Lon < -180 || pt.Lon > 180) {
		return fmt.Errorf("%w: app %s: point (%g, %g) is not a position", ErrInvalid, a.Name, pt.Lat, pt.Lon)
	}
	if sc := a.Scale; sc != nil {
		if sc.Min < 1 || sc.Max < sc.Min || sc.Max > MaxReplicas || sc.IdleSeconds < 0 {
			return fmt.Errorf("%w: app %s: scale needs 1 <= min <= max <= %d and idle_seconds >= 0", ErrInvalid, a.Name, MaxReplicas)
		}
		if len(a.Cells) != 1 || len(a.Cells[0].Inputs) != 1 || a.Cells[0].Inputs[0].Stream == "" || a.Cells[0].Inputs[0].Node == "" {
			return fmt.Errorf("%w: app %s: a scaled app has one cell with one stream input naming its node (the replicas share it)", ErrInvalid, a.Name)
		}
	}
	seen := map[string]bool{}
	for _, c := range a.Cells {
		if seen[c.Name] {
			return fmt.Errorf("%w: app %s: cell %q listed twice", ErrInvalid, a.Name, c.Name)
		}
		seen[c.Name] = true
	}
	specs, err := a.cellSpecs()
	if err != nil {
		return err
	}
	for _, s := range specs {
		if err := s.Validate(); err != nil {
			return fmt.Errorf("%w: app %s: %v", ErrInvalid, a.Name, err)
		}
	}
	return nil
}

func (a *AppSpec) replicas() int { return max(a.Replicas, 1) }

// cellSpecs are the cells the app wants, by id.
func (a *AppSpec) cellSpecs() ([]protocol.CellSpec, error) {
	ckpt := defaultCkptSec
	if a.CheckpointSeconds != nil {
		ckpt = *a.CheckpointSeconds
	}
	var out []protocol.CellSpec
	for _, c := range a.Cells {
		cfg := []byte(nil)
		if len(c.Config) > 0 {
			var buf bytes.Buffer
			if err := json.Compact(&buf, c.Config); err != nil {
				return nil, fmt.Errorf("%w: app %s cell %s: config is not JSON: %v", ErrInvalid, a.Name, c.Name, err)
			}
			if buf.String() != "null" {
				cfg = buf.Bytes()
			}
		}
		inputs := c.Inputs
		if inputs == nil {
			inputs = []protocol.Input{}
		}
		n := a.replicas()
		for i := range n {
			id := a.Name + "-" + c.Name
			ins := inputs
			if a.Scale != nil {
				// Replicas share the stream, one partition each.
				ins = make([]protocol.Input, len(inputs))
				for k, in := range inputs {
					in.Partition, in.Partitions, in.From = i, n, a.Scale.From
					if n == 1 {
						in.Partition, in.Partitions = 0, 0
					}
					ins[k] = in
				}
			}
			if n > 1 || a.Scale != nil {
				id = fmt.Sprintf("%s-%d", id, i)
			}
			out = append(out, protocol.CellSpec{
				ID: id, Module: strings.TrimPrefix(c.Module, "sha256:"), Config: cfg, Inputs: ins, Outputs: c.Outputs,
				Limits: c.Limits, App: a.Name, CheckpointSeconds: ckpt, Priority: a.Priority,
			})
		}
	}
	return out, nil
}

// AppView is an app as the API shows it: its spec and where its cells run.
type AppView struct {
	AppSpec
	CreatedBy string         `json:"created_by,omitempty"`
	CreatedAt time.Time      `json:"created_at"`
	UpdatedAt time.Time      `json:"updated_at"`
	Placement []AppPlacement `json:"placement"`
}

// AppPlacement is where one of an app's cells runs.
type AppPlacement struct {
	Cell   string `json:"cell"`
	Node   string `json:"node"`
	State  string `json:"state,omitempty"`
	HeldOn string `json:"held_on,omitempty"`
}
