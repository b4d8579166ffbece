package protocol

import (
	"errors"
	"strings"
	"testing"
	"time"
)

func TestTopics(t *testing.T) {
	tp := NewTopics("")
	if got := tp.Node("edge-1", LeafTelemetry); got != "cloudskin/v1/nodes/edge-1/telemetry" {
		t.Fatalf("Node = %s", got)
	}
	if got := NewTopics("/fleet/x/").AllNodes(LeafStatus); got != "fleet/x/nodes/+/status" {
		t.Fatalf("AllNodes = %s", got)
	}
	for topic, want := range map[string][2]string{
		"cloudskin/v1/nodes/edge-1/telemetry": {"edge-1", "telemetry"},
		"cloudskin/v1/nodes/edge-1/a/b":       {"", ""},
		"cloudskin/v1/nodes//telemetry":       {"", ""},
		"cloudskin/v1/nodes/edge-1/":          {"", ""},
		"cloudskin/v1/nodes/edge-1":           {"", ""},
		"cloudskin/v2/nodes/edge-1/status":    {"", ""},
		"other/cloudskin/v1/nodes/e/status":   {"", ""},
	} {
		node, leaf, ok := tp.ParseNode(topic)
		if ok != (want[0] != "") || node != want[0] || leaf != want[1] {
			t.Errorf("ParseNode(%q) = %q %q %v, want %q %q", topic, node, leaf, ok, want[0], want[1])
		}
	}
}

func TestValidateNodeName(t *testing.T) {
	for _, ok := range []string{"edge-1", "a", "0", "se350-rack3-" + strings.Repeat("x", 51)} {
		if err := ValidateNodeName(ok); err != nil {
			t.Errorf("%q refused: %v", ok, err)
		}
	}
	for _, bad := range []string{"", "Edge-1", "edge_1", "-edge", "edge-", "a/b", "a+b", "a#", "é", "a b", strings.Repeat("x", 64), "edge\n1"} {
		if err := ValidateNodeName(bad); !errors.Is(err, ErrInvalidNodeName) {
			t.Errorf("%q accepted", bad)
		}
	}
}

func TestTelemetryValidate(t *testing.T) {
	now := time.Date(2026, 11, 29, 12, 0, 0, 0, time.UTC)
	pct := func(v float64) *float64 { return &v }
	valid := func() Telemetry {
		return Telemetry{Node: "edge-1", Time: now, CPU: CPU{Percent: 12}, Memory: Memory{Percent: 40},
			Disk: Disk{Percent: 70}, Energy: Energy{Source: EnergyModel, PowerW: 22}}
	}
	tests := []struct {
		name   string
		change func(*Telemetry)
		want   string
	}{
		{"valid", func(*Telemetry) {}, ""},
		{"battery", func(s *Telemetry) { s.Energy.Source, s.Energy.BatteryPct = EnergyBattery, pct(55) }, ""},
		{"other node", func(s *Telemetry) { s.Node = "edge-2" }, "published by"},
		{"no time", func(s *Telemetry) { s.Time = time.Time{} }, "no time"},
		{"future", func(s *Telemetry) { s.Time = now.Add(time.Hour) }, "ahead"},
		{"ancient", func(s *Telemetry) { s.Time = time.Date(1970, 1, 2, 0, 0, 0, 0, time.UTC) }, "before 2000"},
		{"cpu 500", func(s *Telemetry) { s.CPU.Percent = 500 }, "cpu.percent"},
		{"negative memory", func(s *Telemetry) { s.Memory.Percent = -1 }, "memory.percent"},
		{"source", func(s *Telemetry) { s.Energy.Source = "guess" }, "energy.source"},
		{"watts", func(s *Telemetry) { s.Energy.PowerW = -3 }, "power_w"},
		{"battery 120", func(s *Telemetry) { s.Energy.BatteryPct = pct(120) }, "battery_pct"},
		{"solar at night", func(s *Telemetry) { s.Energy.SolarW = pct(0) }, ""},
		{"solar negative", func(s *Telemetry) { s.Energy.SolarW = pct(-5) }, "solar_w"},
		{"sensors", func(s *Telemetry) { s.Temperatures = make([]Temperature, 300) }, "temperature sensors"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			s := valid()
			tc.change(&s)
			err := s.Validate("edge-1", now)
			if tc.want == "" {
				if err != nil {
					t.Fatal(err)
				}
				return
			}
			if !errors.Is(err, ErrInvalid) || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("error %v, want ErrInvalid mentioning %q", err, tc.want)
			}
		})
	}
}

func TestStatusValidate(t *testing.T) {
	good := Status{Node: "edge-1", State: StateOnline, HeartbeatSeconds: 5}
	if err := good.Validate("edge-1"); err != nil {
		t.Fatal(err)
	}
	for _, bad := range []Status{
		{Node: "edge-2", State: StateOnline},
		{Node: "edge-1", State: "sleepy"},
		{Node: "edge-1", State: StateOnline, HeartbeatSeconds: -1},
		{Node: "edge-1", State: StateOnline, HeartbeatSeconds: 7200},
	} {
		if err := bad.Validate("edge-1"); !errors.Is(err, ErrInvalid) {
			t.Errorf("%+v accepted", bad)
		}
	}
}

func FuzzParseNode(f *testing.F) {
	tp := NewTopics("")
	for _, s := range []string{"cloudskin/v1/nodes/edge-1/telemetry", "cloudskin/v1/nodes//x", "#", "cloudskin/v1/nodes/a/b/c"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, topic string) {
		node, leaf, ok := tp.ParseNode(topic)
		if !ok {
			return
		}
		if tp.Node(node, leaf) != topic || strings.Contains(node, "/") || strings.Contains(leaf, "/") {
			t.Fatalf("ParseNode(%q) = %q %q does not round-trip", topic, node, leaf)
		}
	})
}

func TestDesiredValidate(t *testing.T) {
	digest := strings.Repeat("ab", 32)
	good := Desired{Node: "edge-1", Generation: 3, Cells: []CellSpec{{ID: "agg", Module: digest,
		Inputs: []Input{{Name: "sensors", Topics: []string{"sensors/#"}}}, Outputs: []string{"aggregates"}}}}
	if err := good.Validate("edge-1"); err != nil {
		t.Fatal(err)
	}
	for _, p := range []string{PriorityNormal, PriorityLow, PriorityHigh} {
		d := good
		d.Cells = []CellSpec{good.Cells[0]}
		d.Cells[0].Priority = p
		if err := d.Validate("edge-1"); err != nil {
			t.Errorf("priority %q refused: %v", p, err)
		}
	}
	for name, change := range map[string]func(d *Desired){
		"other node":    func(d *Desired) { d.Node = "edge-2" },
		"bad id":        func(d *Desired) { d.Cells[0].ID = "Agg_1" },
		"bad digest":    func(d *Desired) { d.Cells[0].Module = "sha1:abc" },
		"twice":         func(d *Desired) { d.Cells = append(d.Cells, d.Cells[0]) },
		"input topics":  func(d *Desired) { d.Cells[0].Inputs[0].Topics = nil },
		"negative":      func(d *Desired) { d.Cells[0].Limits.MemoryBytes = -1 },
		"huge config":   func(d *Desired) { d.Cells[0].Config = make([]byte, 65<<10) },
		"empty output":  func(d *Desired) { d.Cells[0].Outputs = []string{""} },
		"priority":      func(d *Desired) { d.Cells[0].Priority = "urgent" },
		"priority case": func(d *Desired) { d.Cells[0].Priority = "Low" },
	} {
		d := good
		d.Cells = append([]CellSpec(nil), good.Cells...)
		d.Cells[0].Inputs = append([]Input(nil), good.Cells[0].Inputs...)
		change(&d)
		if err := d.Validate("edge-1"); !errors.Is(err, ErrInvalid) {
			t.Errorf("%s: accepted (%v)", name, err)
		}
	}
}
