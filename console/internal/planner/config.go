package planner

import (
	"errors"
	"fmt"
	"math"
	"time"
)

// Weights are the points each score component is worth. Every component
// scores a node between 0 and 1 and is multiplied by its weight, so with the
// defaults (which add up to 100) a node's total is out of 100 when every
// component applies to the cell. A weight of 0 turns the component off.
type Weights struct {
	// Capacity rewards free memory and idle CPU cores left after placing the
	// cell, each half, saturating (MemScale free counts 0.5 of its half).
	Capacity float64 `yaml:"capacity" json:"capacity"`
	// Load rewards low CPU utilisation after placing the cell (1 − load).
	Load float64 `yaml:"load" json:"load"`
	// Locality rewards holding the cell's input streams (the share held).
	// Only for cells with input streams.
	Locality float64 `yaml:"locality" json:"locality"`
	// Distance rewards being close to the cell's moving target or affinity
	// point: 1 inside the node's coverage radius, then halving every
	// DistanceScale metres beyond it. Only for cells with such an affinity.
	Distance float64 `yaml:"distance" json:"distance"`
	// Energy rewards a long energy outlook: 1 on grid power, on green power
	// the forecast hours (Predictor, else battery and trend) against
	// EnergyFullHours, blended with the battery level; a node of the power
	// kind the cell does not prefer keeps PowerMismatch of it.
	Energy float64 `yaml:"energy" json:"energy"`
	// Latency rewards a predicted p99 latency well inside the cell's SLO:
	// 1 at half the SLO or less, 0.5 at the SLO, 0 at 1.5× the SLO; 0.5 when
	// unknown. Only for cells with an SLO when a Predictor is set or the
	// cell's latency is observed.
	Latency float64 `yaml:"latency" json:"latency"`
}

// Config tunes the Planner. Start from DefaultConfig; Validate says which
// field is wrong and why.
type Config struct {
	Weights Weights `yaml:"weights" json:"weights"`
	// EnergyHorizon is how long a green node's energy must last for it to
	// take new cells; below it, its cells move away (reason "energy").
	EnergyHorizon time.Duration `yaml:"energy_horizon" json:"energy_horizon"`
	// OfflineGrace is how long a node may be offline before its cells are
	// restarted elsewhere (reason "node-offline"); a reboot should not
	// trigger a migration.
	OfflineGrace time.Duration `yaml:"offline_grace" json:"offline_grace"`
	// MinResidence is how long a cell stays where it was bound before an
	// optional move (energy, follow-target, slo, overload) may take it away.
	MinResidence time.Duration `yaml:"min_residence" json:"min_residence"`
	// MoveMargin is how many points a destination's total must beat the
	// current node's total by for an optional move.
	MoveMargin float64 `yaml:"move_margin" json:"move_margin"`
	// OverloadLoad is the CPU utilisation above which a node sheds cells
	// (reason "overload"), one by one until it is projected back under it.
	OverloadLoad float64 `yaml:"overload_load" json:"overload_load"`
	// OverloadTarget is the highest projected utilisation a destination may
	// reach when it takes a cell moved for overload or SLO; the gap to
	// OverloadLoad keeps two busy nodes from trading a cell.
	OverloadTarget float64 `yaml:"overload_target" json:"overload_target"`
	// CoverageSlack widens the current node's coverage, as a fraction of its
	// radius, before a cell following a moving target leaves it; jitter at
	// the edge of a coverage area does not move the cell.
	CoverageSlack float64 `yaml:"coverage_slack" json:"coverage_slack"`
	// TopN is how many feasible candidates a decision records with their
	// full scores.
	TopN int `yaml:"top_n" json:"top_n"`
	// MemScale (bytes) and CPUScale (cores) are the free memory and idle
	// cores at which a node earns half of the capacity component's halves.
	MemScale uint64  `yaml:"mem_scale" json:"mem_scale"`
	CPUScale float64 `yaml:"cpu_scale" json:"cpu_scale"`
	// DistanceScale (metres) is the distance beyond a node's coverage radius
	// at which the distance component has halved.
	DistanceScale float64 `yaml:"distance_scale_m" json:"distance_scale_m"`
	// EnergyFullHours is the energy outlook that earns a green node the full
	// energy component.
	EnergyFullHours float64 `yaml:"energy_full_hours" json:"energy_full_hours"`
	// PowerMismatch is the share of the energy component a node keeps when
	// the cell prefers the other kind of power.
	PowerMismatch float64 `yaml:"power_mismatch" json:"power_mismatch"`
}

// DefaultConfig is what the console runs with unless told otherwise.
func DefaultConfig() Config {
	return Config{
		Weights: Weights{
			Capacity: 20,
			Load:     15,
			Locality: 15,
			Distance: 25,
			Energy:   15,
			Latency:  10,
		},
		EnergyHorizon:   2 * time.Hour,
		OfflineGrace:    2 * time.Minute,
		MinResidence:    2 * time.Minute,
		MoveMargin:      5,
		OverloadLoad:    0.9,
		OverloadTarget:  0.75,
		CoverageSlack:   0.1,
		TopN:            8,
		MemScale:        1 << 30,
		CPUScale:        1,
		DistanceScale:   1000,
		EnergyFullHours: 12,
		PowerMismatch:   0.25,
	}
}

// maxTopN bounds the candidates a decision carries.
const maxTopN = 64

// Validate reports every field that is out of range.
func (c *Config) Validate() error {
	var errs []error
	bad := func(format string, args ...any) { errs = append(errs, fmt.Errorf(format, args...)) }
	w := c.Weights
	sum := 0.0
	for i, v := range [numScores]float64{w.Capacity, w.Load, w.Locality, w.Distance, w.Energy, w.Latency} {
		if v < 0 || math.IsNaN(v) || math.IsInf(v, 0) {
			bad("weights.%s: %v must be a finite number ≥ 0", scoreNames[i], v)
			continue
		}
		sum += v
	}
	if sum == 0 {
		bad("weights: at least one weight must be above 0")
	}
	if c.EnergyHorizon < 0 {
		bad("energy_horizon: %s must not be negative", c.EnergyHorizon)
	}
	if c.OfflineGrace < 0 {
		bad("offline_grace: %s must not be negative", c.OfflineGrace)
	}
	if c.MinResidence < 0 {
		bad("min_residence: %s must not be negative", c.MinResidence)
	}
	if !(c.MoveMargin >= 0) || math.IsInf(c.MoveMargin, 0) {
		bad("move_margin: %v must be a finite number ≥ 0", c.MoveMargin)
	}
	if !(c.OverloadLoad > 0 && c.OverloadLoad <= 1) {
		bad("overload_load: %v must be in (0, 1]", c.OverloadLoad)
	}
	if !(c.OverloadTarget > 0 && c.OverloadTarget <= c.OverloadLoad) {
		bad("overload_target: %v must be above 0 and at most overload_load (%v)", c.OverloadTarget, c.OverloadLoad)
	}
	if !(c.CoverageSlack >= 0 && c.CoverageSlack <= 1) {
		bad("coverage_slack: %v must be in [0, 1]", c.CoverageSlack)
	}
	if c.TopN < 1 || c.TopN > maxTopN {
		bad("top_n: %d must be between 1 and %d", c.TopN, maxTopN)
	}
	if c.MemScale == 0 {
		bad("mem_scale: must be above 0 bytes")
	}
	if !(c.CPUScale > 0) || math.IsInf(c.CPUScale, 0) {
		bad("cpu_scale: %v must be a finite number of cores above 0", c.CPUScale)
	}
	if !(c.DistanceScale > 0) || math.IsInf(c.DistanceScale, 0) {
		bad("distance_scale_m: %v must be a finite number of metres above 0", c.DistanceScale)
	}
	if !(c.EnergyFullHours > 0) || math.IsInf(c.EnergyFullHours, 0) {
		bad("energy_full_hours: %v must be a finite number of hours above 0", c.EnergyFullHours)
	}
	if !(c.PowerMismatch >= 0 && c.PowerMismatch <= 1) {
		bad("power_mismatch: %v must be in [0, 1]", c.PowerMismatch)
	}
	if len(errs) > 0 {
		return fmt.Errorf("planner config: %w", errors.Join(errs...))
	}
	return nil
}
