// Threshold raises an alert when a sensor's reading crosses a limit. Config:
//
//	{"field":"value","above":30,"below":null}
//
// field names the JSON field holding the reading (default "value"); above and below are
// limits, at least one of them set. A record is JSON with that field (and optionally
// "sensor"), or a plain JSON number; without a "sensor" field the sensor is the last
// level of the topic. An alert is emitted to output "alerts" when a sensor's reading
// goes past a limit, once per crossing: it re-arms when the reading comes back:
//
//	{"sensor":"t1","value":31.2,"threshold":30,"direction":"above"}
package main

import (
	"bytes"
	"encoding/json"
	"fmt"
	"math"
	"strings"

	"github.com/cloudskin/cloudskin/shared/cellsdk"
)

const output = "alerts"

type config struct {
	Field string   `json:"field"`
	Above *float64 `json:"above"`
	Below *float64 `json:"below"`
}

type alert struct {
	Sensor    string  `json:"sensor"`
	Value     float64 `json:"value"`
	Threshold float64 `json:"threshold"`
	Direction string  `json:"direction"`
}

var (
	cfg config
	// zone is where each sensor's last reading was: "above", "below" or "" (normal).
	zone = map[string]string{}
)

func init() {
	cellsdk.Init(configure)
	cellsdk.Handle(handle)
}

func main() {}

func configure(raw []byte) error {
	c, err := parseConfig(raw)
	if err != nil {
		return err
	}
	cfg = c
	return nil
}

func parseConfig(raw []byte) (config, error) {
	c := config{Field: "value"}
	if len(bytes.TrimSpace(raw)) == 0 {
		return c, fmt.Errorf("config: empty; want {\"field\":…,\"above\":…,\"below\":…}")
	}
	dec := json.NewDecoder(bytes.NewReader(raw))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&c); err != nil {
		return c, fmt.Errorf("config: %w", err)
	}
	switch {
	case c.Field == "":
		return c, fmt.Errorf("config: field: empty")
	case c.Above == nil && c.Below == nil:
		return c, fmt.Errorf("config: set above, below or both")
	case c.Above != nil && c.Below != nil && *c.Below >= *c.Above:
		return c, fmt.Errorf("config: below (%v) must be less than above (%v)", *c.Below, *c.Above)
	}
	return c, nil
}

func handle(b cellsdk.Batch) error {
	for _, r := range b.Records {
		sensor, v, err := reading(r)
		if err != nil {
			cellsdk.Warnf("skipping record %d on %q: %v", r.Offset, r.Topic, err)
			continue
		}
		a, now := check(v)
		was := zone[sensor]
		zone[sensor] = now
		if now == "" || now == was {
			continue
		}
		a.Sensor = sensor
		out, err := json.Marshal(a)
		if err != nil {
			return err
		}
		if err := cellsdk.Emit(output, out); err != nil {
			return fmt.Errorf("emit %s for %s: %w", output, sensor, err)
		}
	}
	return nil
}

// check returns the alert for v and the zone v is in ("" when within the limits).
func check(v float64) (alert, string) {
	if cfg.Above != nil && v > *cfg.Above {
		return alert{Value: v, Threshold: *cfg.Above, Direction: "above"}, "above"
	}
	if cfg.Below != nil && v < *cfg.Below {
		return alert{Value: v, Threshold: *cfg.Below, Direction: "below"}, "below"
	}
	return alert{}, ""
}

func reading(r cellsdk.Record) (string, float64, error) {
	p := bytes.TrimSpace(r.Payload)
	var v float64
	sensor := ""
	if len(p) > 0 && p[0] == '{' {
		var obj map[string]json.RawMessage
		if err := json.Unmarshal(p, &obj); err != nil {
			return "", 0, err
		}
		raw, ok := obj[cfg.Field]
		if !ok {
			return "", 0, fmt.Errorf("no %q field", cfg.Field)
		}
		if err := json.Unmarshal(raw, &v); err != nil {
			return "", 0, fmt.Errorf("field %q: %w", cfg.Field, err)
		}
		if s, ok := obj["sensor"]; ok {
			if err := json.Unmarshal(s, &sensor); err != nil {
				return "", 0, fmt.Errorf("field \"sensor\": %w", err)
			}
		}
	} else if err := json.Unmarshal(p, &v); err != nil {
		return "", 0, fmt.Errorf("payload is neither a JSON object nor a number: %w", err)
	}
	if sensor == "" {
		sensor = r.Topic[strings.LastIndexByte(r.Topic, '/')+1:]
	}
	if math.IsNaN(v) {
		return "", 0, fmt.Errorf("value is NaN")
	}
	return sensor, v, nil
}
