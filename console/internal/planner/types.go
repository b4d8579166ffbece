package planner

import "time"

// Point is a position in degrees (WGS 84).
type Point struct {
	Lat float64 `json:"lat"`
	Lon float64 `json:"lon"`
}

// Battery is a node's battery as its telemetry reports it.
type Battery struct {
	Percent float64 `json:"percent"`
	// TrendPctPerHour is the change of Percent per hour; negative while
	// draining.
	TrendPctPerHour float64 `json:"trend_pct_per_hour"`
}

// Power kinds of a node. Anything but PowerGreen counts as grid power.
const (
	PowerGreen = "green"
	PowerGrid  = "grid"
)

// Labels the Planner reads from Node.Labels.
const (
	// LabelSite names the node's site; Constraints.Site matches it.
	LabelSite = "site"
	// LabelCoverage is the node's coverage radius in metres around its
	// Position, e.g. "500". Missing or unparsable means no coverage.
	LabelCoverage = "coverage_m"
)

// Node is what the Planner knows about an edge node: its identity from
// enrollment and its latest telemetry.
type Node struct {
	Name   string            `json:"name"`
	Arch   string            `json:"arch"` // "amd64" | "arm64"
	Labels map[string]string `json:"labels,omitempty"`
	Online bool              `json:"online"`
	// OfflineSince is when the node went offline; zero while online. An
	// offline node with a zero OfflineSince counts as offline past any grace.
	OfflineSince time.Time `json:"offline_since,omitzero"`
	// MemFree should already exclude cells bound to the node but not yet
	// running there, or the next plan will count that memory twice.
	MemTotal uint64   `json:"mem_total"`
	MemFree  uint64   `json:"mem_free"`
	CPUs     int      `json:"cpus"`
	Load     float64  `json:"load"` // CPU utilisation, 0..1
	Position *Point   `json:"position,omitempty"`
	Power    string   `json:"power,omitempty"` // PowerGreen | PowerGrid
	Battery  *Battery `json:"battery,omitempty"`
	// Streams names the durable streams this node holds (data locality).
	Streams []string `json:"streams,omitempty"`
}

// Constraints restrict and steer where a cell runs. NodeLabels, Arch,
// MinFreeMem, Site and Pinned are hard (filters); Point, Target and Power
// are preferences (scores), except that a cell with a Target needs a node
// whose coverage contains the target whenever some feasible node's does.
type Constraints struct {
	NodeLabels map[string]string `json:"node_labels,omitempty"` // all must match
	Arch       string            `json:"arch,omitempty"`        // required arch, only if it must
	// MinFreeMem is the free memory (bytes) a node must have, before the
	// cell is placed, to be considered.
	MinFreeMem uint64 `json:"min_free_mem,omitempty"`
	Site       string `json:"site,omitempty"`  // the node's LabelSite must equal it
	Point      *Point `json:"point,omitempty"` // affinity to a fixed point
	// Target is a moving target's id; its position comes from the targets
	// map given to Plan or Place. While the target's position is known it
	// takes the place of Point.
	Target string `json:"target,omitempty"`
	Pinned string `json:"pinned,omitempty"` // must run on this node
	Power  string `json:"power,omitempty"`  // preference: PowerGreen | PowerGrid | ""
}

// Observed are a running cell's live figures.
type Observed struct {
	LatencyP99ms float64 `json:"latency_p99_ms"`
	// Backlog is the number of records waiting for the cell. Informational:
	// the move rules do not read it yet.
	Backlog int64 `json:"backlog"`
}

// Cell is a workload to place: what it asks for and where it runs now.
type Cell struct {
	ID  string `json:"id"`
	App string `json:"app"`
	// Module is the digest of the cell's module; the learning plane's
	// performance model reads it.
	Module string `json:"module,omitempty"`
	// InputRate is the records per second the cell handles (observed, or
	// declared by its app); the learning plane's performance model reads it.
	InputRate float64 `json:"input_rate,omitempty"`
	// MemBytes and CPU (cores) are the cell's requests.
	MemBytes    uint64      `json:"mem_bytes"`
	CPU         float64     `json:"cpu"`
	Constraints Constraints `json:"constraints"`
	// InputStreams names the streams the cell reads; a node holding them
	// scores for locality.
	InputStreams []string `json:"input_streams,omitempty"`
	// Node is where the cell runs now; "" while unplaced.
	Node string `json:"node,omitempty"`
	// Since is when the cell was bound to Node (minimum residence). Zero
	// means long enough ago.
	Since        time.Time `json:"since,omitzero"`
	LatencySLOms float64   `json:"latency_slo_ms,omitempty"` // 0 = none
	Observed     *Observed `json:"observed,omitempty"`
}

// Predictor is how the learning plane feeds the Planner. The Planner calls
// it while planning, from the goroutine that called Plan or Place; an
// implementation shared by concurrent plans must be safe for concurrent use.
type Predictor interface {
	// EnergyHours forecasts how many hours node can keep running its
	// current load on its own energy (ok=false: no forecast). Asked only
	// for green nodes; it takes precedence over the battery figures.
	EnergyHours(node string) (hours float64, ok bool)
	// LatencyMs predicts a cell's p99 latency on a node (ok=false: unknown).
	// Asked only for cells with a latency SLO, once per feasible node. For
	// a cell following a moving target whose position is known, the cell's
	// Constraints.Point is that position.
	LatencyMs(cell Cell, node Node) (ms float64, ok bool)
}
