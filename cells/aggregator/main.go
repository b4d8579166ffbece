// Aggregator keeps a running count, min, max and mean per sensor. Each input record is
// either JSON {"sensor":"t1","value":21.5} or a plain JSON number, in which case the
// sensor is the last level of the record's topic. For every batch it emits to output
// "aggregates" one JSON record per sensor the batch touched, in first-seen order:
// {"sensor":"t1","count":N,"min":…,"max":…,"mean":…}. Records it cannot read are
// logged and skipped: one bad reading should not stop the aggregate.
package main

import (
	"bytes"
	"encoding/json"
	"fmt"
	"math"
	"strings"

	"github.com/cloudskin/cloudskin/shared/cellsdk"
)

const output = "aggregates"

type stats struct {
	Sensor string  `json:"sensor"`
	Count  uint64  `json:"count"`
	Min    float64 `json:"min"`
	Max    float64 `json:"max"`
	Mean   float64 `json:"mean"`
}

func (s *stats) add(v float64) {
	if s.Count == 0 || v < s.Min {
		s.Min = v
	}
	if s.Count == 0 || v > s.Max {
		s.Max = v
	}
	s.Count++
	s.Mean += (v - s.Mean) / float64(s.Count) // Welford: no running sum to overflow
}

var state = map[string]*stats{}

func init() { cellsdk.Handle(handle) }

func main() {}

func handle(b cellsdk.Batch) error {
	var touched []string // first-seen order, so output order follows the input
	seen := map[string]bool{}
	for _, r := range b.Records {
		sensor, v, err := reading(r)
		if err != nil {
			cellsdk.Warnf("skipping record %d on %q: %v", r.Offset, r.Topic, err)
			continue
		}
		s, ok := state[sensor]
		if !ok {
			s = &stats{Sensor: sensor}
			state[sensor] = s
		}
		if !seen[sensor] {
			seen[sensor] = true
			touched = append(touched, sensor)
		}
		s.add(v)
	}
	for _, sensor := range touched {
		out, err := json.Marshal(state[sensor])
		if err != nil {
			return err
		}
		if err := cellsdk.Emit(output, out); err != nil {
			return fmt.Errorf("emit %s for %s: %w", output, sensor, err)
		}
	}
	return nil
}

// reading extracts the sensor and value of one record.
func reading(r cellsdk.Record) (string, float64, error) {
	p := bytes.TrimSpace(r.Payload)
	var msg struct {
		Sensor string   `json:"sensor"`
		Value  *float64 `json:"value"`
	}
	var v float64
	sensor := ""
	if len(p) > 0 && p[0] == '{' {
		if err := json.Unmarshal(p, &msg); err != nil {
			return "", 0, err
		}
		if msg.Value == nil {
			return "", 0, fmt.Errorf("no \"value\" field")
		}
		sensor, v = msg.Sensor, *msg.Value
	} else if err := json.Unmarshal(p, &v); err != nil {
		return "", 0, fmt.Errorf("payload is neither a JSON object nor a number: %w", err)
	}
	if sensor == "" {
		sensor = lastLevel(r.Topic)
	}
	if sensor == "" {
		return "", 0, fmt.Errorf("no sensor name in the payload or the topic")
	}
	if math.IsNaN(v) || math.IsInf(v, 0) {
		return "", 0, fmt.Errorf("value %v is not finite", v)
	}
	return sensor, v, nil
}

func lastLevel(topic string) string {
	return topic[strings.LastIndexByte(topic, '/')+1:]
}
