package protocol

import (
	"errors"
	"fmt"
	"math"
	"time"
)

// Node states carried by Status.
const (
	StateOnline  = "online"
	StateOffline = "offline"
)

// Energy sources a telemetry sample names, so an operator knows how much to trust it.
const (
	EnergyRAPL    = "rapl"    // Intel/AMD RAPL counters in /sys/class/powercap
	EnergyBattery = "battery" // a battery or UPS in /sys/class/power_supply
	EnergyModel   = "model"   // linear power model from CPU utilisation (docs/telemetry.md)
)

// Status is retained on nodes/{node}/status. The agent republishes it every
// heartbeat; its MQTT last will is the same message with State offline.
type Status struct {
	Node             string            `json:"node"`
	State            string            `json:"state"`
	Time             time.Time         `json:"time"`
	Version          string            `json:"version,omitempty"`
	Arch             string            `json:"arch,omitempty"`
	OS               string            `json:"os,omitempty"`
	HeartbeatSeconds float64           `json:"heartbeat_seconds,omitempty"`
	Labels           map[string]string `json:"labels,omitempty"`
}

// Telemetry is one sample published on nodes/{node}/telemetry (QoS 1).
// Time is strictly increasing per node; the console stores a sample once per
// (node, time), so a back-filled sample that arrives twice is kept once.
type Telemetry struct {
	Node         string        `json:"node"`
	Seq          uint64        `json:"seq"`
	Time         time.Time     `json:"time"`
	CPU          CPU           `json:"cpu"`
	Memory       Memory        `json:"memory"`
	Disk         Disk          `json:"disk"`
	Network      Network       `json:"network"`
	Load         Load          `json:"load"`
	Temperatures []Temperature `json:"temperatures,omitempty"`
	Energy       Energy        `json:"energy"`
}

// CPU is utilisation over the last sampling interval.
type CPU struct {
	Percent float64 `json:"percent"`
	Cores   int     `json:"cores"`
}

// Memory is physical memory.
type Memory struct {
	TotalBytes     uint64  `json:"total_bytes"`
	UsedBytes      uint64  `json:"used_bytes"`
	AvailableBytes uint64  `json:"available_bytes"`
	Percent        float64 `json:"percent"`
}

// Disk is the filesystem holding the agent's data directory.
type Disk struct {
	Path       string  `json:"path"`
	TotalBytes uint64  `json:"total_bytes"`
	UsedBytes  uint64  `json:"used_bytes"`
	FreeBytes  uint64  `json:"free_bytes"`
	Percent    float64 `json:"percent"`
}

// Network is the sum over non-loopback interfaces: cumulative counters and
// rates over the last interval.
type Network struct {
	RxBytes     uint64  `json:"rx_bytes"`
	TxBytes     uint64  `json:"tx_bytes"`
	RxBytesPerS float64 `json:"rx_bytes_per_s"`
	TxBytesPerS float64 `json:"tx_bytes_per_s"`
}

// Load is the Unix load average.
type Load struct {
	Load1  float64 `json:"load1"`
	Load5  float64 `json:"load5"`
	Load15 float64 `json:"load15"`
}

// Temperature is one readable sensor.
type Temperature struct {
	Sensor  string  `json:"sensor"`
	Celsius float64 `json:"celsius"`
}

// Energy is the node's power draw and, where present, its battery and solar input.
type Energy struct {
	Source     string   `json:"source"`
	PowerW     float64  `json:"power_w"`
	BatteryPct *float64 `json:"battery_pct,omitempty"`
	Charging   *bool    `json:"charging,omitempty"`
	SolarW     *float64 `json:"solar_w,omitempty"`
}

// ErrInvalid is wrapped by every Validate error.
var ErrInvalid = errors.New("invalid message")

func invalid(format string, args ...any) error {
	return fmt.Errorf("%w: %s", ErrInvalid, fmt.Sprintf(format, args...))
}

// maxClockSkew is how far in the future a sample may claim to be.
const maxClockSkew = 10 * time.Minute

// Validate checks a sample received from node at now.
func (t *Telemetry) Validate(node string, now time.Time) error {
	if t.Node != node {
		return invalid("telemetry names node %q but was published by %q", t.Node, node)
	}
	if t.Time.IsZero() {
		return invalid("telemetry has no time")
	}
	if t.Time.After(now.Add(maxClockSkew)) {
		return invalid("telemetry time %s is more than %s ahead of the console", t.Time.Format(time.RFC3339), maxClockSkew)
	}
	if t.Time.Year() < 2000 {
		return invalid("telemetry time %s is before 2000", t.Time.Format(time.RFC3339))
	}
	for name, v := range map[string]float64{"cpu.percent": t.CPU.Percent, "memory.percent": t.Memory.Percent, "disk.percent": t.Disk.Percent} {
		if math.IsNaN(v) || v < 0 || v > 100.0001 {
			return invalid("%s = %v is outside 0..100", name, v)
		}
	}
	if t.Energy.Source != EnergyRAPL && t.Energy.Source != EnergyBattery && t.Energy.Source != EnergyModel {
		return invalid("energy.source %q is not one of rapl, battery, model", t.Energy.Source)
	}
	if math.IsNaN(t.Energy.PowerW) || t.Energy.PowerW < 0 || t.Energy.PowerW > 1e6 {
		return invalid("energy.power_w = %v is outside 0..1e6", t.Energy.PowerW)
	}
	if b := t.Energy.BatteryPct; b != nil && (*b < 0 || *b > 100.0001) {
		return invalid("energy.battery_pct = %v is outside 0..100", *b)
	}
	if w := t.Energy.SolarW; w != nil && (math.IsNaN(*w) || *w < 0 || *w > 1e6) {
		return invalid("energy.solar_w = %v is outside 0..1e6", *w)
	}
	if len(t.Temperatures) > 256 {
		return invalid("%d temperature sensors, at most 256", len(t.Temperatures))
	}
	return nil
}

// Validate checks a status received from node.
func (s *Status) Validate(node string) error {
	if s.Node != node {
		return invalid("status names node %q but was published by %q", s.Node, node)
	}
	if s.State != StateOnline && s.State != StateOffline {
		return invalid("status state %q is not online or offline", s.State)
	}
	if s.HeartbeatSeconds < 0 || s.HeartbeatSeconds > 3600 {
		return invalid("heartbeat_seconds = %v is outside 0..3600", s.HeartbeatSeconds)
	}
	return nil
}
