package agent

import (
	"encoding/json"
	"slices"
	"strings"
	"time"

	"github.com/cloudskin/cloudskin/edge-agent/internal/cells"
	"github.com/cloudskin/cloudskin/shared/protocol"
)

// Tissues: the cells of one app send to each other by cell name wherever
// they run (ABI import cloudskin.send). A message is numbered per (sender,
// receiver) from 1 and kept by the sender until the receiver acknowledges
// it; the receiver takes only the next number in order, drops duplicates,
// and acknowledges what it has taken. So delivery is ordered per sender and
// at least once, and each message reaches the cell once. The receiver gets
// it as a record of the input "tissue" whose topic is the sender's name.
//
// Both ends live in the cell's checkpoint (the sender's unacknowledged
// messages, the receiver's last numbers), so a migrating cell neither loses
// nor repeats messages: while it is held nothing is taken or acknowledged,
// the senders keep retrying, and the restored cell takes over.
//
// Fast path: a receiver running on the same node gets the message straight
// into its inbox. Otherwise it goes over MQTT, {prefix}/tissues/{app}/{cell},
// QoS 1; every agent subscribes to the tissue tree and keeps what is for its
// cells.

// TissueInput is the input name tissue messages arrive on.
const TissueInput = "tissue"

const (
	tissueMaxUnacked = 1024 // per receiver; send answers "rate limited" above it
	tissueRetry      = time.Second
)

// tissueOut is what a sender cell has sent one receiver and not yet seen
// acknowledged.
type tissueOut struct {
	Next    uint64                   `json:"next"` // the number the next message gets
	Unacked []protocol.TissueMessage `json:"unacked,omitempty"`
	sentAt  time.Time
}

// tissueName is a cell's name in its tissue: its id without the app prefix.
func tissueName(spec protocol.CellSpec) string {
	return strings.TrimPrefix(spec.ID, spec.App+"-")
}

// send is the host's side of cloudskin.send for rc.
func (m *cellManager) send(rc *runningCell, to string, data []byte) int32 {
	m.mu.Lock()
	app := rc.spec.App
	if app == "" {
		m.mu.Unlock()
		return cells.CodeUnsupported // a cell placed by hand has no tissue
	}
	if !validTissueName(to) {
		m.mu.Unlock()
		return cells.CodeUnknownStream
	}
	if rc.tissueOut == nil {
		rc.tissueOut = map[string]*tissueOut{}
	}
	out := rc.tissueOut[to]
	if out == nil {
		out = &tissueOut{Next: 1}
		rc.tissueOut[to] = out
	}
	if len(out.Unacked) >= tissueMaxUnacked {
		m.mu.Unlock()
		return cells.CodeRateLimited
	}
	msg := protocol.TissueMessage{From: tissueName(rc.spec), Seq: out.Next, Data: data}
	out.Next++
	out.Unacked = append(out.Unacked, msg)
	out.sentAt = time.Now()
	local := m.cells[app+"-"+to]
	delivered := local != nil && m.takeTissueLocked(local, msg)
	if delivered {
		out.Unacked = out.Unacked[:len(out.Unacked)-1]
	}
	m.mu.Unlock()
	if !delivered {
		m.publishTissue(app, to, msg)
	}
	return cells.CodeOK
}

func validTissueName(s string) bool {
	return s != "" && len(s) <= 63 && !strings.ContainsAny(s, "/+#")
}

func (m *cellManager) publishTissue(app, to string, msg protocol.TissueMessage) {
	if m.a == nil || m.a.client == nil {
		return
	}
	b, _ := json.Marshal(msg)
	m.a.client.Publish(m.a.topics.Tissue(app, to), 1, false, b)
}

// takeTissueLocked puts msg in rc's inbox if it is the next from its sender
// and rc takes input; it reports whether the sender may forget it (taken
// now or before). MQTT handlers run concurrently, so messages can arrive out
// of order: one ahead of its turn waits in a bounded buffer (not
// acknowledged, not checkpointed: the sender still has it) until the gap
// before it is filled.
func (m *cellManager) takeTissueLocked(rc *runningCell, msg protocol.TissueMessage) bool {
	if rc.cell == nil || rc.holding != "" || rc.spec.App == "" {
		return false
	}
	if rc.tissueSeen == nil {
		rc.tissueSeen = map[string]uint64{}
	}
	seen := rc.tissueSeen[msg.From]
	switch {
	case msg.Seq <= seen:
		return true // a duplicate: taken before
	case msg.Seq > seen+1:
		if rc.tissueAhead == nil {
			rc.tissueAhead = map[string]map[uint64]protocol.TissueMessage{}
		}
		ahead := rc.tissueAhead[msg.From]
		if ahead == nil {
			ahead = map[uint64]protocol.TissueMessage{}
			rc.tissueAhead[msg.From] = ahead
		}
		if len(ahead) < tissueMaxUnacked {
			ahead[msg.Seq] = msg
		}
		return false
	}
	for {
		if len(rc.inbox) >= cellQueue {
			return msg.Seq <= rc.tissueSeen[msg.From]
		}
		rc.tissueSeen[msg.From] = msg.Seq
		rc.inbox = append(rc.inbox, inputRecord{input: TissueInput, rec: cells.Record{
			Offset: msg.Seq, TimeNS: time.Now().UnixNano(), Topic: msg.From, Payload: msg.Data}})
		next, ok := rc.tissueAhead[msg.From][msg.Seq+1]
		if !ok {
			break
		}
		delete(rc.tissueAhead[msg.From], msg.Seq+1)
		msg = next
	}
	rc.wakeLocked()
	return true
}

// tissueMessage handles a message or an acknowledgement from the tissue tree.
func (m *cellManager) tissueMessage(topic string, payload []byte) {
	app, cell, ack, ok := m.a.topics.ParseTissue(topic)
	if !ok || len(payload) > cells.MaxRecordBytes+4096 {
		return
	}
	if ack {
		var a protocol.TissueAck
		if json.Unmarshal(payload, &a) != nil {
			return
		}
		m.mu.Lock()
		if rc := m.cells[app+"-"+cell]; rc != nil && rc.tissueOut != nil {
			if out := rc.tissueOut[a.From]; out != nil {
				out.Unacked = slices.DeleteFunc(out.Unacked, func(msg protocol.TissueMessage) bool { return msg.Seq <= a.Seq })
			}
		}
		m.mu.Unlock()
		return
	}
	var msg protocol.TissueMessage
	if json.Unmarshal(payload, &msg) != nil || !validTissueName(msg.From) || msg.Seq == 0 {
		return
	}
	m.mu.Lock()
	rc := m.cells[app+"-"+cell]
	if rc == nil || rc.spec.App != app {
		m.mu.Unlock()
		return // not ours (every agent hears every tissue)
	}
	taken := m.takeTissueLocked(rc, msg)
	seen := rc.tissueSeen[msg.From]
	m.mu.Unlock()
	if taken && m.a.client != nil {
		b, _ := json.Marshal(protocol.TissueAck{From: cell, Seq: seen})
		m.a.client.Publish(m.a.topics.TissueAck(app, msg.From), 1, false, b)
	}
}

// retryTissuesLocked resends every running sender's unacknowledged
// messages, in order, once they have waited tissueRetry.
func (m *cellManager) retryTissuesLocked(now time.Time) []func() {
	var sends []func()
	for _, rc := range m.cells {
		if rc.cell == nil || rc.holding != "" {
			continue
		}
		for to, out := range rc.tissueOut {
			if len(out.Unacked) == 0 || now.Sub(out.sentAt) < tissueRetry {
				continue
			}
			out.sentAt = now
			app := rc.spec.App
			local := m.cells[app+"-"+to]
			for len(out.Unacked) > 0 && local != nil && m.takeTissueLocked(local, out.Unacked[0]) {
				out.Unacked = out.Unacked[1:]
			}
			msgs := slices.Clone(out.Unacked)
			sends = append(sends, func() {
				for _, msg := range msgs {
					m.publishTissue(app, to, msg)
				}
			})
		}
	}
	return sends
}
