package planner

import "time"

// Decision kinds.
const (
	KindPlace       = "place"       // an unplaced cell was bound to a node
	KindMove        = "move"        // a placed cell goes to another node
	KindUnplaceable = "unplaceable" // no node passes the filters
)

// Decision reasons. A place has ReasonNew; a move or an unplaceable cell
// has the rule that asked for the move (or ReasonNew for a new cell).
const (
	ReasonNew          = "new"
	ReasonManual       = "manual"        // Place on a placed cell: an operator's migrate
	ReasonNodeOffline  = "node-offline"  // its node is offline past the grace, or gone
	ReasonPinned       = "pinned"        // pinned to another node than the one it runs on
	ReasonConstraints  = "constraints"   // its node no longer matches its arch, labels or site
	ReasonEnergy       = "energy"        // its green node's energy will not last the horizon
	ReasonFollowTarget = "follow-target" // its moving target left its node's coverage
	ReasonSLO          = "slo"           // observed p99 latency above its SLO
	ReasonOverload     = "overload"      // its node's load is above the overload threshold
)

// Filter names, in the order they are applied: a rejected node is counted
// under the first filter that rejects it.
const (
	FilterPinned   = "pinned"   // the cell is pinned to another node
	FilterSite     = "site"     // the node's site label differs
	FilterArch     = "arch"     // the node's arch differs from the one required
	FilterCurrent  = "current"  // the node the cell is moving away from
	FilterOnline   = "online"   // the node is offline
	FilterLabels   = "labels"   // a required label is missing or differs
	FilterMemory   = "memory"   // not enough free memory once this plan's bindings count
	FilterEnergy   = "energy"   // green node whose energy will not last the horizon
	FilterHeadroom = "headroom" // overload/slo moves: load would pass the overload target
	FilterCoverage = "coverage" // target cells: another feasible node's coverage contains the target
	FilterGrid     = "grid"     // energy moves: a feasible grid node exists
)

// Score component names, the keys of Candidate.Scores.
const (
	ScoreCapacity = "capacity"
	ScoreLoad     = "load"
	ScoreLocality = "locality"
	ScoreDistance = "distance"
	ScoreEnergy   = "energy"
	ScoreLatency  = "latency"
)

// Decision records one placement decision and why it was taken.
type Decision struct {
	Time   time.Time `json:"time"`
	Cell   string    `json:"cell"`
	App    string    `json:"app"`
	Kind   string    `json:"kind"`
	Reason string    `json:"reason"`
	From   string    `json:"from,omitempty"`
	To     string    `json:"to,omitempty"`
	// Candidates are the best feasible nodes (at most Config.TopN, best
	// first, with full scores), then for a move the node the cell leaves
	// (Current, scored as if it stayed), then one rejected node per filter
	// that rejected any (Filtered says why).
	Candidates []Candidate `json:"candidates"`
	// Rejected counts the nodes each filter rejected, in filter order.
	Rejected []Rejection `json:"rejected,omitempty"`
	// Feasible is how many nodes passed every filter.
	Feasible int    `json:"feasible"`
	Why      string `json:"why"`
}

// Candidate is one node as the Planner saw it for one decision.
type Candidate struct {
	Node string `json:"node"`
	// Filtered is why the node was rejected ("filter: reason"); "" if it
	// was feasible.
	Filtered string `json:"filtered,omitempty"`
	// Current marks the node the cell runs on.
	Current bool `json:"current,omitempty"`
	// Scores holds each applicable component's weighted score.
	Scores map[string]float64 `json:"scores,omitempty"`
	Total  float64            `json:"total"`
	// Predicted holds what the learning plane predicted for this node and
	// the Planner used in the scores; nil when it predicted nothing.
	Predicted *Predicted `json:"predicted,omitempty"`
}

// Predicted are the learning plane's figures a candidate was scored with.
type Predicted struct {
	// EnergyHours is the forecast of how long the green node's energy
	// lasts (the horizon filter and the energy component read it).
	EnergyHours *float64 `json:"energy_hours,omitempty"`
	// LatencyMs is the cell's predicted p99 latency on the node (the
	// latency component reads it; a cell's own node uses the observed one).
	LatencyMs *float64 `json:"latency_ms,omitempty"`
}

// Rejection counts the nodes one filter rejected, with one example.
type Rejection struct {
	Filter  string `json:"filter"`
	Count   int    `json:"count"`
	Example string `json:"example"` // the first such node by name
	Reason  string `json:"reason"`  // why the example was rejected
}
