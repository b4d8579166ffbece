package agent

import (
	"encoding/json"
	"strings"
	"sync"
	"time"

	"github.com/cloudskin/cloudskin/shared/protocol"
)

// positionEvery is how often one target's position is forwarded at most: a
// GPS at 1-10 Hz need not cross the uplink at that rate for placement.
const positionEvery = time.Second

// targetForwarder forwards moving targets' positions seen on the sensor
// broker (--target-topic) to the console, at most one per target per second.
type targetForwarder struct {
	a       *Agent
	filters []string
	mu      sync.Mutex
	last    map[string]time.Time
}

func newTargetForwarder(a *Agent) *targetForwarder {
	return &targetForwarder{a: a, filters: a.cfg.TargetTopics, last: map[string]time.Time{}}
}

// observe takes one sensor message; anything not a position is ignored.
func (f *targetForwarder) observe(topic string, payload []byte) {
	for _, filter := range f.filters {
		if !protocol.MatchFilter(filter, topic) {
			continue
		}
		var p protocol.Position
		if json.Unmarshal(payload, &p) != nil {
			return
		}
		if p.Target == "" {
			p.Target = plusLevel(filter, topic)
		}
		if p.Validate() != nil {
			return
		}
		now := time.Now()
		f.mu.Lock()
		if now.Sub(f.last[p.Target]) < positionEvery {
			f.mu.Unlock()
			return
		}
		f.last[p.Target] = now
		f.mu.Unlock()
		if p.Time.IsZero() {
			p.Time = now.UTC()
		}
		b, _ := json.Marshal(p)
		if f.a.client != nil && f.a.client.IsConnectionOpen() {
			// QoS 0: a position missed now is replaced by the next.
			f.a.client.Publish(f.a.topics.Node(f.a.cfg.Name, protocol.LeafPositions), 0, false, b)
		}
		return
	}
}

// plusLevel is the topic level the filter's first '+' matches ("" if none).
func plusLevel(filter, topic string) string {
	fl, tl := strings.Split(filter, "/"), strings.Split(topic, "/")
	for i, l := range fl {
		if l == "+" && i < len(tl) {
			return tl[i]
		}
	}
	return ""
}
