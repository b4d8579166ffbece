package e2e

import (
	"encoding/json"
	"fmt"
	"os"
	"strconv"
	"strings"
	"testing"
	"time"

	paho "github.com/eclipse/paho.mqtt.golang"
)

type gpsPoint struct{ Lat, Lon float64 }

// munichTrace is the BMW barefoot vehicle trace (testdata/SOURCE.txt).
func munichTrace(t *testing.T) []gpsPoint {
	t.Helper()
	b, err := os.ReadFile("testdata/barefoot_munich_x0001-015.json")
	if err != nil {
		t.Fatal(err)
	}
	var raw []struct {
		Point string `json:"point"`
	}
	if err := json.Unmarshal(b, &raw); err != nil {
		t.Fatal(err)
	}
	var out []gpsPoint
	for _, r := range raw {
		f := strings.Fields(strings.Trim(strings.TrimPrefix(r.Point, "POINT"), "()"))
		lon, err1 := strconv.ParseFloat(f[0], 64)
		lat, err2 := strconv.ParseFloat(f[1], 64)
		if err1 != nil || err2 != nil {
			t.Fatalf("point %q", r.Point)
		}
		out = append(out, gpsPoint{lat, lon})
	}
	return out
}

// TestFollowTarget is the circuit use case: a vehicle drives across Munich;
// two edge nodes cover its start and its end (3 km each). Its GPS reaches
// the nodes' sensor brokers, the agents forward the positions, and the
// analytics cell follows the vehicle from the first node to the second,
// state intact, with the decision explained.
func TestFollowTarget(t *testing.T) {
	trace := munichTrace(t)
	start, end := trace[0], trace[len(trace)-1]
	c := newConsole(t, backends[0], placementFlags...)
	jwt := c.login()
	node := func(name string, at gpsPoint) *agentEnv {
		return newAgent(t, c, name, c.token(jwt), "", "--lat", fmt.Sprint(at.Lat), "--lon", fmt.Sprint(at.Lon),
			"--label", "coverage_m=3000", "--power-class", "grid", "--target-topic", "vehicles/+/gps")
	}
	west, east := node("edge-start", start), node("edge-end", end)
	waitStatus(t, c, jwt, "edge-start", "online", 15*time.Second)
	waitStatus(t, c, jwt, "edge-end", "online", 15*time.Second)
	agg := uploadModule(t, c, jwt, "aggregator", exampleCell(t, "aggregator"))
	c.do("POST", "/api/v1/apps", jwt, aggregatorApp("race", agg, map[string]any{
		"constraints": map[string]any{"target": "car-1"}}), 201, nil)
	const cell = "race-agg"

	pubs := map[string]paho.Client{}
	for _, a := range []*agentEnv{west, east} {
		p := paho.NewClient(paho.NewClientOptions().AddBroker("tcp://" + flagValue(a.args, "--sensors")).SetClientID("e2e-gps-" + a.name))
		if tok := p.Connect(); !tok.WaitTimeout(10*time.Second) || tok.Error() != nil {
			t.Fatal(tok.Error())
		}
		defer p.Disconnect(100)
		pubs[a.name] = p
	}
	// The car's GPS reaches every node's sensor broker (it is in radio
	// range of both for this test; the Planner decides by coverage).
	drive := func(p gpsPoint) {
		for _, pub := range pubs {
			pub.Publish("vehicles/car-1/gps", 0, false, fmt.Sprintf(`{"lat":%v,"lon":%v}`, p.Lat, p.Lon)).Wait()
		}
	}
	drive(start)
	c.waitCellOn(t, jwt, cell, "edge-start", 90*time.Second)
	watch := &aggWatch{last: map[string]aggOut{}}
	watchAggregates(t, flagValue(west.args, "--sensors"), cell, watch)
	watchAggregates(t, flagValue(east.args, "--sensors"), cell, watch)
	laps := []float64{92.1, 93.4, 91.8}
	publishReadings(t, flagValue(west.args, "--sensors"), "lap", laps)
	watch.expect(t, "lap", laps, 30*time.Second)

	for _, p := range trace {
		drive(p)
		time.Sleep(150 * time.Millisecond)
	}
	for range 10 { // parked at the end: positions keep coming
		drive(end)
		time.Sleep(500 * time.Millisecond)
	}
	c.waitCellOn(t, jwt, cell, "edge-end", 90*time.Second)
	more := []float64{90.9}
	publishReadings(t, flagValue(east.args, "--sensors"), "lap", more)
	watch.expect(t, "lap", append(laps, more...), 30*time.Second)

	var targets struct {
		Targets map[string]struct{ Lat, Lon float64 } `json:"targets"`
	}
	c.do("GET", "/api/v1/targets", jwt, nil, 200, &targets)
	if got := targets.Targets["car-1"]; got.Lat != end.Lat || got.Lon != end.Lon {
		t.Fatalf("target car-1 at %+v, want %+v", got, end)
	}
	var ds struct {
		Decisions []struct{ Reason, From, To, Why string } `json:"decisions"`
	}
	c.do("GET", "/api/v1/decisions?cell="+cell, jwt, nil, 200, &ds)
	if len(ds.Decisions) == 0 || ds.Decisions[0].Reason != "follow-target" || ds.Decisions[0].To != "edge-end" || !strings.Contains(ds.Decisions[0].Why, "car-1") {
		t.Fatalf("decisions %+v", ds.Decisions)
	}
}
