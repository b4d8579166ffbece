package protocol

import (
	"fmt"
	"regexp"
	"slices"
	"time"
)

// Desired is retained on nodes/{node}/desired: every cell the node should
// run. The console bumps Generation on each change; the agent reconciles to
// the newest generation it has seen and reports it in Actual.
type Desired struct {
	Node       string     `json:"node"`
	Generation int64      `json:"generation"`
	Cells      []CellSpec `json:"cells"`
	// Streams are the node's durable streams (in addition to those of its
	// local config, which win on a name clash).
	Streams []StreamSpec `json:"streams,omitempty"`
	// Prefetch lists modules (digests) the node should download and
	// compile ahead: a cell is about to migrate here, and compiling after
	// the source stopped it would stretch the migration's downtime.
	Prefetch []string `json:"prefetch,omitempty"`
	// Update asks the node to run another release of the agent (OTA).
	Update *UpdateSpec `json:"update,omitempty"`
}

// CellSpec is one cell as the console wants it run.
type CellSpec struct {
	ID      string     `json:"id"`
	Module  string     `json:"module"` // sha256 hex digest of the .wasm
	Config  []byte     `json:"config,omitempty"`
	Inputs  []Input    `json:"inputs"`
	Outputs []string   `json:"outputs,omitempty"`
	Limits  CellLimits `json:"limits"`
	// App is the app the cell belongs to ("" for a cell placed by hand).
	App string `json:"app,omitempty"`
	// CheckpointSeconds asks the node to checkpoint the cell this often
	// and upload it to the console (0: no periodic checkpoints). A node
	// that goes offline restarts its cells elsewhere from the newest one.
	CheckpointSeconds int `json:"checkpoint_seconds,omitempty"`
	// Hold (a checkpoint id) asks the node to stop feeding the cell at the
	// next quiescent point, checkpoint it under that id, upload it and keep
	// the cell held, undelivered input kept in the checkpoint, until the
	// spec changes. It is the first half of a migration.
	Hold string `json:"hold,omitempty"`
	// Datasets forwards outputs into the dataspace: output name → dataset
	// id. Each record the cell emits on such an output is an engine blob
	// the agent sends to the console for that dataset.
	Datasets map[string]string `json:"datasets,omitempty"`
	// Restore (a checkpoint id) starts the cell from that checkpoint
	// instead of fresh: its memory, globals, cursors and undelivered inbox.
	// It is the second half of a migration, and a failover.
	Restore string `json:"restore,omitempty"`
	// Priority says what the node may do with the cell on its own when it
	// cannot reach the console and its energy runs short: a "low" cell may
	// be paused (edge autonomy, docs/architecture.md); "" (normal) and
	// "high" cells are only ever moved or stopped by the console.
	Priority string `json:"priority,omitempty"`
}

// Cell priorities (CellSpec.Priority).
const (
	PriorityNormal = ""
	PriorityLow    = "low"
	PriorityHigh   = "high"
)

// Input feeds a cell batches named Name: either from a durable stream on the
// node (Stream; read through the cursor "cell.{id}.{name}", committed after
// the cell handled each batch: at-least-once), or straight from the sensor
// broker (Topics, MQTT filters; in memory, lost on a restart).
type Input struct {
	Name   string   `json:"name"`
	Topics []string `json:"topics,omitempty"`
	Stream string   `json:"stream,omitempty"`
	// Node holds Stream when it is not the node the cell runs on: a cell
	// that migrated keeps reading its old node's stream from where it
	// stopped, through the console (the node while it is online, the cloud
	// tier for what it spilled). Set by the console when it moves a cell.
	Node string `json:"node,omitempty"`
	// Partition of Partitions: replicas of an app share a stream, each
	// reading the records whose offset modulo Partitions is its Partition
	// (Partitions 0 or 1: all), from From on (when the partitioning changes
	// every replica starts again from the lowest offset any had not read:
	// nothing is skipped, a few records may be handled twice).
	Partition  int    `json:"partition,omitempty"`
	Partitions int    `json:"partitions,omitempty"`
	From       uint64 `json:"from,omitempty"`
}

// InPartition reports whether the input takes the record at offset.
func (in *Input) InPartition(offset uint64) bool {
	return in.Partitions <= 1 || offset%uint64(in.Partitions) == uint64(in.Partition)
}

// CellLimits bound one cell; zero values take the agent's defaults.
type CellLimits struct {
	MemoryBytes     int64   `json:"memory_bytes,omitempty"`
	FuelPerCall     uint64  `json:"fuel_per_call,omitempty"`
	MaxInputBytes   int     `json:"max_input_bytes,omitempty"`
	MaxOutputPerSec float64 `json:"max_output_per_sec,omitempty"`
	CallTimeoutMS   int64   `json:"call_timeout_ms,omitempty"`
}

// Cell states reported in Actual.
const (
	CellStarting = "starting"
	CellRunning  = "running"
	CellBackoff  = "backoff" // crashed; restarting after a delay
	CellFailed   = "failed"  // cannot start (bad module, refused config)
	CellHeld     = "held"    // checkpointed for a migration; takes no input
	// CellPaused: a low-priority cell the node paused on its own while it
	// could not reach the console and its energy ran short. It takes no
	// input; Message says whether its input waits (deferred) or is lost (shed).
	CellPaused = "paused"
)

// Actual is published on nodes/{node}/actual: what the agent runs.
type Actual struct {
	Node       string         `json:"node"`
	Generation int64          `json:"generation"`
	Time       time.Time      `json:"time"`
	Cells      []CellStatus   `json:"cells"`
	Streams    []StreamStatus `json:"streams,omitempty"`
	// Modules are the modules compiled and ready on the node (digests).
	Modules []string `json:"modules,omitempty"`
	// Update is where the node's newest update stands.
	Update *UpdateStatus `json:"update,omitempty"`
}

// CellStatus is one cell's state, counters and recent events on a node.
type CellStatus struct {
	ID            string      `json:"id"`
	Module        string      `json:"module"`
	State         string      `json:"state"`
	Message       string      `json:"message,omitempty"`
	Restarts      int         `json:"restarts"`
	Invocations   uint64      `json:"invocations"`
	Records       uint64      `json:"records"`
	Errors        uint64      `json:"errors"`
	Traps         uint64      `json:"traps"`
	Emitted       uint64      `json:"emitted"`
	RateLimited   uint64      `json:"rate_limited"`
	FuelConsumed  uint64      `json:"fuel_consumed"`
	MemoryBytes   int64       `json:"memory_bytes"`
	LatencyP50US  float64     `json:"latency_p50_us"`
	LatencyP99US  float64     `json:"latency_p99_us"`
	Events        []CellEvent `json:"events,omitempty"`
	RecentOutputs []Output    `json:"recent_outputs,omitempty"`
	// Checkpoint is the newest checkpoint the node uploaded for the cell.
	Checkpoint *CheckpointInfo `json:"checkpoint,omitempty"`
	// RestoredFrom is the checkpoint the running cell was restored from.
	RestoredFrom string `json:"restored_from,omitempty"`
	// Cursors are the next offsets of the cell's stream inputs, by input.
	Cursors map[string]uint64 `json:"cursors,omitempty"`
}

// CheckpointInfo describes an uploaded checkpoint.
type CheckpointInfo struct {
	ID     string    `json:"id"`
	Seq    uint64    `json:"seq"` // grows along the cell's lineage, across nodes
	Time   time.Time `json:"time"`
	Bytes  int64     `json:"bytes"`
	Reason string    `json:"reason"` // "periodic" | "hold"
}

// CellEvent is a notable moment in a cell's life (started, trap, fuel…).
type CellEvent struct {
	Time    time.Time `json:"time"`
	Kind    string    `json:"kind"`
	Message string    `json:"message,omitempty"`
}

// Output is a record a cell emitted, as kept for the operator to read.
type Output struct {
	Time    time.Time `json:"time"`
	Stream  string    `json:"stream"`
	Payload []byte    `json:"payload"`
}

var cellIDRE = regexp.MustCompile(`^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$`)
var digestRE = regexp.MustCompile(`^[0-9a-f]{64}$`)
var checkpointIDRE = regexp.MustCompile(`^[A-Za-z0-9][A-Za-z0-9._-]{0,79}$`)

// ValidCheckpointID reports whether id may name a checkpoint (it is used in
// object keys and URLs).
func ValidCheckpointID(id string) bool { return checkpointIDRE.MatchString(id) }

// Validate checks a cell spec's shape (the agent checks the module itself).
func (c *CellSpec) Validate() error {
	if !cellIDRE.MatchString(c.ID) {
		return invalid("cell id %q: use 1-63 lowercase letters, digits or '-'", c.ID)
	}
	if !digestRE.MatchString(c.Module) {
		return invalid("cell %s: module %q is not a sha256 hex digest", c.ID, c.Module)
	}
	if len(c.Config) > 64<<10 {
		return invalid("cell %s: config of %d bytes exceeds 64 KiB", c.ID, len(c.Config))
	}
	if len(c.Inputs) > 16 || len(c.Outputs) > 16 {
		return invalid("cell %s: at most 16 inputs and 16 outputs", c.ID)
	}
	for _, in := range c.Inputs {
		switch {
		case in.Name == "":
			return invalid("cell %s: an input needs a name", c.ID)
		case in.Stream != "" && len(in.Topics) > 0:
			return invalid("cell %s: input %q names a stream and topics; use one", c.ID, in.Name)
		case in.Partitions < 0 || in.Partitions > 64 || in.Partition < 0 || (in.Partitions > 1 && in.Partition >= in.Partitions):
			return invalid("cell %s: input %q: partition %d of %d", c.ID, in.Name, in.Partition, in.Partitions)
		case (in.Partitions > 1 || in.From > 0) && in.Stream == "":
			return invalid("cell %s: input %q: partitions need a stream", c.ID, in.Name)
		case in.Node != "" && in.Stream == "":
			return invalid("cell %s: input %q names a node but no stream", c.ID, in.Name)
		case in.Stream != "":
			if err := ValidateStreamName(in.Stream); err != nil {
				return invalid("cell %s: input %q: %v", c.ID, in.Name, err)
			}
			if in.Node != "" {
				if err := ValidateNodeName(in.Node); err != nil {
					return invalid("cell %s: input %q: %v", c.ID, in.Name, err)
				}
			}
		case len(in.Topics) == 0 || len(in.Topics) > 16:
			return invalid("cell %s: input %q needs a stream or 1-16 topic filters", c.ID, in.Name)
		}
	}
	for _, o := range c.Outputs {
		if o == "" || len(o) > 128 {
			return invalid("cell %s: output name %q must be 1-128 characters", c.ID, o)
		}
	}
	if len(c.Datasets) > 16 {
		return invalid("cell %s: at most 16 dataset outputs", c.ID)
	}
	for out, ds := range c.Datasets {
		if !slices.Contains(c.Outputs, out) {
			return invalid("cell %s: dataset output %q is not one of its outputs", c.ID, out)
		}
		if !cellIDRE.MatchString(ds) {
			return invalid("cell %s: dataset %q: use 1-63 lowercase letters, digits or '-'", c.ID, ds)
		}
	}
	if c.App != "" && !cellIDRE.MatchString(c.App) {
		return invalid("cell %s: app %q: use 1-63 lowercase letters, digits or '-'", c.ID, c.App)
	}
	switch c.Priority {
	case PriorityNormal, PriorityLow, PriorityHigh:
	default:
		return invalid("cell %s: priority %q is not \"\" (normal), \"low\" or \"high\"", c.ID, c.Priority)
	}
	if c.CheckpointSeconds < 0 || c.CheckpointSeconds > 7*24*3600 {
		return invalid("cell %s: checkpoint_seconds must be 0 (off) to one week", c.ID)
	}
	for _, id := range []string{c.Hold, c.Restore} {
		if id != "" && !checkpointIDRE.MatchString(id) {
			return invalid("cell %s: checkpoint id %q: use 1-80 letters, digits, '.', '_' or '-'", c.ID, id)
		}
	}
	if l := c.Limits; l.MemoryBytes < 0 || l.MaxInputBytes < 0 || l.MaxOutputPerSec < 0 || l.CallTimeoutMS < 0 {
		return invalid("cell %s: limits must not be negative", c.ID)
	}
	return nil
}

// Validate checks a desired state for node.
func (d *Desired) Validate(node string) error {
	if d.Node != node {
		return invalid("desired state names node %q, not %q", d.Node, node)
	}
	if d.Update != nil {
		if err := d.Update.Validate(); err != nil {
			return err
		}
	}
	seen := map[string]bool{}
	for i := range d.Cells {
		if err := d.Cells[i].Validate(); err != nil {
			return err
		}
		if seen[d.Cells[i].ID] {
			return fmt.Errorf("%w: cell %s listed twice", ErrInvalid, d.Cells[i].ID)
		}
		seen[d.Cells[i].ID] = true
	}
	if len(d.Prefetch) > 64 {
		return invalid("desired state prefetches %d modules, at most 64", len(d.Prefetch))
	}
	for _, m := range d.Prefetch {
		if !digestRE.MatchString(m) {
			return invalid("prefetch %q is not a sha256 hex digest", m)
		}
	}
	names := map[string]bool{}
	for i := range d.Streams {
		if err := d.Streams[i].Validate(); err != nil {
			return err
		}
		if names[d.Streams[i].Name] {
			return fmt.Errorf("%w: stream %s listed twice", ErrInvalid, d.Streams[i].Name)
		}
		names[d.Streams[i].Name] = true
	}
	return nil
}
