package agent

import (
	"testing"

	"github.com/cloudskin/cloudskin/shared/protocol"
)

func TestPlusLevel(t *testing.T) {
	for _, tc := range []struct{ filter, topic, want string }{
		{"vehicles/+/gps", "vehicles/car-1/gps", "car-1"},
		{"fleet/+/+/gps", "fleet/north/bus-7/gps", "north"},
		{"vehicles/#", "vehicles/car-1/gps", ""},
		{"gps", "gps", ""},
	} {
		if got := plusLevel(tc.filter, tc.topic); got != tc.want {
			t.Errorf("plusLevel(%q, %q) = %q, want %q", tc.filter, tc.topic, got, tc.want)
		}
	}
}

func TestPositionValidate(t *testing.T) {
	good := protocol.Position{Target: "car-1", Lat: 48.16, Lon: 11.56}
	if err := good.Validate(); err != nil {
		t.Fatal(err)
	}
	nan := 0.0
	nan = nan / nan
	for name, p := range map[string]protocol.Position{
		"no target":     {Lat: 1, Lon: 1},
		"slash":         {Target: "a/b", Lat: 1, Lon: 1},
		"wildcard":      {Target: "car+", Lat: 1, Lon: 1},
		"lat out":       {Target: "x", Lat: 91, Lon: 1},
		"lon out":       {Target: "x", Lat: 1, Lon: -181},
		"not a number":  {Target: "x", Lat: nan, Lon: 1},
		"64 characters": {Target: string(make([]byte, 64)), Lat: 1, Lon: 1},
	} {
		if err := p.Validate(); err == nil {
			t.Errorf("%s: %+v accepted", name, p)
		}
	}
}
