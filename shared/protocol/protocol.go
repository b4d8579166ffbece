// Package protocol is the wire contract between the console and edge agents:
// MQTT topic layout and the JSON messages published on those topics.
// It imports nothing from either side, so both can depend on it.
package protocol

import (
	"errors"
	"fmt"
	"regexp"
	"strings"
	"time"
)

// DefaultPrefix is the versioned root of every CloudSkin topic.
const DefaultPrefix = "cloudskin/v1"

// Limits every receiver enforces before decoding a message.
const (
	// MaxTelemetryBytes bounds one telemetry message; a real sample is ~1 KiB.
	MaxTelemetryBytes = 64 << 10
	// MaxStatusBytes bounds one status message.
	MaxStatusBytes = 8 << 10
)

// Topic leaves under nodes/{node}/.
const (
	LeafTelemetry = "telemetry"
	LeafStatus    = "status"
	LeafDesired   = "desired"
	LeafActual    = "actual"
	LeafEvents    = "events"
	LeafRequests  = "requests" // console → node: Request (not retained)
	LeafReplies   = "replies"  // node → console: Reply
	// LeafPositions carries moving targets' positions a node sees (a
	// vehicle's GPS on its sensor broker): Position messages.
	LeafPositions = "positions"
)

// NodeWritable are the leaves a node may publish to under its own subtree.
// Everything else, its own desired state above all, is the console's to write.
var NodeWritable = []string{LeafTelemetry, LeafStatus, LeafActual, LeafEvents, LeafReplies, LeafPositions}

// NodeReadable are the leaves a node may subscribe to under its own subtree.
var NodeReadable = []string{LeafDesired, LeafRequests}

// NodeMayRead reports whether node may subscribe to topic (an exact topic,
// no wildcards).
func (t Topics) NodeMayRead(node, topic string) bool {
	if t.IsTissue(topic) {
		return true
	}
	for _, leaf := range NodeReadable {
		if topic == t.Node(node, leaf) {
			return true
		}
	}
	return false
}

// NodeMayWrite reports whether node may publish to topic.
func (t Topics) NodeMayWrite(node, topic string) bool {
	if t.IsTissue(topic) && !strings.ContainsAny(topic, "+#") {
		return true
	}
	for _, leaf := range NodeWritable {
		if topic == t.Node(node, leaf) {
			return true
		}
	}
	return false
}

// Topics builds and parses topic names under a prefix.
type Topics struct {
	Prefix string
}

// NewTopics returns Topics for prefix, or DefaultPrefix when prefix is empty.
func NewTopics(prefix string) Topics {
	prefix = strings.Trim(prefix, "/")
	if prefix == "" {
		prefix = DefaultPrefix
	}
	return Topics{Prefix: prefix}
}

// Node is the topic of one leaf of one node, e.g. cloudskin/v1/nodes/edge-1/telemetry.
func (t Topics) Node(node, leaf string) string {
	return t.Prefix + "/nodes/" + node + "/" + leaf
}

// Tissue is where cells of a tissue send to one of them:
// {prefix}/tissues/{tissue}/{cell}; acknowledgements go back on
// {prefix}/tissues/{tissue}/{sender}/ack. Every node may use tissue topics
// (cells move between nodes); the messages carry no node credentials.
func (t Topics) Tissue(tissue, cell string) string {
	return t.Prefix + "/tissues/" + tissue + "/" + cell
}

// TissueAck is where a cell's messages are acknowledged to it.
func (t Topics) TissueAck(tissue, cell string) string { return t.Tissue(tissue, cell) + "/ack" }

// AllTissues is the filter an agent subscribes to for tissue traffic.
func (t Topics) AllTissues() string { return t.Prefix + "/tissues/#" }

// IsTissue reports whether topic (or filter) is under the tissue tree.
func (t Topics) IsTissue(topic string) bool { return strings.HasPrefix(topic, t.Prefix+"/tissues/") }

// ParseTissue splits a tissue topic: ack is true for an acknowledgement.
func (t Topics) ParseTissue(topic string) (tissue, cell string, ack, ok bool) {
	rest, found := strings.CutPrefix(topic, t.Prefix+"/tissues/")
	if !found {
		return "", "", false, false
	}
	parts := strings.Split(rest, "/")
	switch {
	case len(parts) == 2 && parts[0] != "" && parts[1] != "":
		return parts[0], parts[1], false, true
	case len(parts) == 3 && parts[0] != "" && parts[1] != "" && parts[2] == "ack":
		return parts[0], parts[1], true, true
	}
	return "", "", false, false
}

// TissueMessage is a message from one cell of a tissue to another: Seq
// numbers the sender's messages to that receiver, from 1, so the receiver
// keeps order and drops duplicates.
type TissueMessage struct {
	From string `json:"from"`
	Seq  uint64 `json:"seq"`
	Data []byte `json:"data"`
}

// TissueAck acknowledges every message up to Seq from the receiver From.
type TissueAck struct {
	From string `json:"from"`
	Seq  uint64 `json:"seq"`
}

// AllNodes is a filter matching one leaf of every node: cloudskin/v1/nodes/+/{leaf}.
func (t Topics) AllNodes(leaf string) string { return t.Prefix + "/nodes/+/" + leaf }

// ParseNode splits a node topic into its node name and leaf.
// ok is false for anything not of the form {prefix}/nodes/{node}/{leaf}.
func (t Topics) ParseNode(topic string) (node, leaf string, ok bool) {
	rest, found := strings.CutPrefix(topic, t.Prefix+"/nodes/")
	if !found {
		return "", "", false
	}
	node, leaf, found = strings.Cut(rest, "/")
	if !found || node == "" || leaf == "" || strings.Contains(leaf, "/") {
		return "", "", false
	}
	return node, leaf, true
}

var nodeNameRE = regexp.MustCompile(`^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$`)

// ErrInvalidNodeName is wrapped by ValidateNodeName.
var ErrInvalidNodeName = errors.New("invalid node name")

// ValidateNodeName accepts DNS-label names (lowercase letters, digits, '-',
// at most 63 characters), which keeps names safe as MQTT topic levels,
// file names and usernames in a broker password file.
func ValidateNodeName(name string) error {
	if !nodeNameRE.MatchString(name) {
		return fmt.Errorf("%w %q: use 1-63 lowercase letters, digits or '-', starting and ending with a letter or digit", ErrInvalidNodeName, name)
	}
	return nil
}

// ClientID is the MQTT client id a node must use. Tying it to the username
// stops one node from taking over (disconnecting) another node's session.
func ClientID(node string) string { return "node-" + node }

// Position is where a moving target was seen, published by a node on
// nodes/{node}/positions; the Planner moves cells that follow the target.
type Position struct {
	Target string    `json:"target"`
	Lat    float64   `json:"lat"`
	Lon    float64   `json:"lon"`
	Time   time.Time `json:"time"`
}

var targetIDRE = regexp.MustCompile(`^[A-Za-z0-9][A-Za-z0-9._-]{0,62}$`)

// ValidTargetID reports whether id may name a moving target.
func ValidTargetID(id string) bool { return targetIDRE.MatchString(id) }

// Validate checks a position.
func (p *Position) Validate() error {
	if !ValidTargetID(p.Target) {
		return invalid("position: target %q: use 1-63 letters, digits, '.', '_' or '-'", p.Target)
	}
	if p.Lat < -90 || p.Lat > 90 || p.Lon < -180 || p.Lon > 180 || p.Lat != p.Lat || p.Lon != p.Lon {
		return invalid("position of %s: (%v, %v) is not on Earth", p.Target, p.Lat, p.Lon)
	}
	return nil
}
