package protocol

import (
	"bytes"
	"encoding/json"
	"regexp"
	"time"
	"unicode/utf8"
)

// Limits of a node event, enforced by the console before it stores one.
const (
	// MaxEventBytes bounds one message on nodes/{node}/events; a real
	// autonomy event is ≈ 600 bytes.
	MaxEventBytes = 8 << 10
	// MaxEventDetailBytes bounds an event's Detail object.
	MaxEventDetailBytes = 4 << 10
	// MaxEventMessageBytes bounds an event's Message.
	MaxEventMessageBytes = 1 << 10
)

// Event kinds of edge autonomy: what a green node that lost the console
// decided about its own cells (docs/architecture.md, "Edge autonomy"). Each
// carries an AutonomyDetail.
const (
	// EventAutonomyStart: the console has been unreachable for longer than
	// the grace period; the node now manages its low-priority cells itself.
	EventAutonomyStart = "autonomy.start"
	// EventAutonomyForecast: the node's energy forecast, at the start of
	// autonomy and every hour while it lasts.
	EventAutonomyForecast = "autonomy.forecast"
	// EventAutonomyShed: a low-priority cell was paused because the battery
	// would not last the horizon. Detail.Mode says whether its input waits
	// in a durable stream (deferred) or is lost while paused (shed).
	EventAutonomyShed = "autonomy.shed"
	// EventAutonomyResume: a paused cell runs again, because the forecast
	// recovered (Detail.Reason "energy") or the console is back ("console").
	EventAutonomyResume = "autonomy.resume"
	// EventAutonomyEnd: the console is reachable again; its desired state
	// rules the node's cells again.
	EventAutonomyEnd = "autonomy.end"
)

// NodeEvent is something a node did on its own, published on
// nodes/{node}/events (QoS 1) from the node's durable event outbox, so an
// event taken while the console was unreachable arrives after the
// reconnect. The node names each event (ID); the console stores an event
// once per (node, ID), so a redelivery is harmless.
type NodeEvent struct {
	Node    string    `json:"node"`
	ID      string    `json:"id"`
	Time    time.Time `json:"time"`
	Kind    string    `json:"kind"`
	Cell    string    `json:"cell,omitempty"`
	Message string    `json:"message,omitempty"`
	// Detail is a JSON object whose shape depends on Kind (autonomy.*:
	// AutonomyDetail).
	Detail json.RawMessage `json:"detail,omitempty"`
}

// AutonomyDetail is the Detail of the autonomy.* events: the forecast the
// node acted on, so an operator can check the decision afterwards.
type AutonomyDetail struct {
	// HoursLeft is how long the battery lasts above its reserve, per the
	// node's forecast, capped at the forecast's 24 h window; LastsWindow is
	// true when it lasts the whole window.
	HoursLeft   float64 `json:"hours_left"`
	LastsWindow bool    `json:"lasts_window,omitempty"`
	BatteryPct  float64 `json:"battery_pct"`
	SolarW      float64 `json:"solar_w"`
	DrawW       float64 `json:"draw_w"`
	CapacityWh  float64 `json:"capacity_wh"`
	// CapacitySource is "learned" (from how the battery moved), "configured"
	// (--autonomy-battery-wh) or "default" (not learned yet: a guess).
	CapacitySource string  `json:"capacity_source"`
	ReservePct     float64 `json:"reserve_pct"`
	HorizonHours   float64 `json:"horizon_hours"`
	// Mode (autonomy.shed): "deferred" or "shed".
	Mode string `json:"mode,omitempty"`
	// Reason (autonomy.resume): "energy" or "console".
	Reason string `json:"reason,omitempty"`
	// OfflineSeconds is how long the console has been unreachable.
	OfflineSeconds float64 `json:"offline_seconds,omitempty"`
	// Paused lists the cells paused at the time of the event.
	Paused []string `json:"paused,omitempty"`
}

var (
	eventIDRE   = regexp.MustCompile(`^[A-Za-z0-9][A-Za-z0-9._:-]{0,79}$`)
	eventKindRE = regexp.MustCompile(`^[a-z][a-z0-9_-]*(\.[a-z][a-z0-9_-]*)*$`)
)

// Validate checks an event received from node at now. Kinds the console
// does not know are accepted (a newer agent may report more); their shape
// is checked all the same.
func (e *NodeEvent) Validate(node string, now time.Time) error {
	if e.Node != node {
		return invalid("event names node %q but was published by %q", e.Node, node)
	}
	if !eventIDRE.MatchString(e.ID) {
		return invalid("event id %q: use 1-80 letters, digits, '.', '_', ':' or '-'", e.ID)
	}
	if len(e.Kind) > 48 || !eventKindRE.MatchString(e.Kind) {
		return invalid("event kind %q: use dot-separated lowercase words, at most 48 characters", e.Kind)
	}
	if e.Time.IsZero() || e.Time.Year() < 2000 {
		return invalid("event %s has no time, or one before 2000", e.ID)
	}
	if e.Time.After(now.Add(maxClockSkew)) {
		return invalid("event time %s is more than %s ahead of the console", e.Time.Format(time.RFC3339), maxClockSkew)
	}
	if e.Cell != "" && !cellIDRE.MatchString(e.Cell) {
		return invalid("event %s: cell %q: use 1-63 lowercase letters, digits or '-'", e.ID, e.Cell)
	}
	if len(e.Message) > MaxEventMessageBytes || !utf8.ValidString(e.Message) {
		return invalid("event %s: message must be UTF-8 of at most %d bytes", e.ID, MaxEventMessageBytes)
	}
	if len(e.Detail) > 0 && string(bytes.TrimSpace(e.Detail)) != "null" {
		if len(e.Detail) > MaxEventDetailBytes {
			return invalid("event %s: detail of %d bytes exceeds %d", e.ID, len(e.Detail), MaxEventDetailBytes)
		}
		if d := bytes.TrimSpace(e.Detail); !json.Valid(d) || len(d) == 0 || d[0] != '{' {
			return invalid("event %s: detail must be a JSON object", e.ID)
		}
	}
	return nil
}
