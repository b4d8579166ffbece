package e2e

import (
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	paho "github.com/eclipse/paho.mqtt.golang"

	"github.com/cloudskin/cloudskin/shared/protocol"
)

// setSolar writes (or replaces) a solar charge controller's input power in
// the fake sysfs tree of b, as a driver would show it.
func (b *fakeBattery) setSolar(t *testing.T, watts float64) {
	t.Helper()
	dir := filepath.Join(b.root(), "class", "power_supply", "solar0")
	if err := os.MkdirAll(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	for name, v := range map[string]string{"type": "Mains", "online": "1", "power_now": strconv.Itoa(int(watts * 1e6))} {
		tmp := filepath.Join(dir, "."+name)
		if err := os.WriteFile(tmp, []byte(v+"\n"), 0o644); err != nil {
			t.Fatal(err)
		}
		if err := os.Rename(tmp, filepath.Join(dir, name)); err != nil {
			t.Fatal(err)
		}
	}
}

// agentAutonomy is what the agent's local GET /api/v1/autonomy answers.
type agentAutonomy struct {
	Active   bool                     `json:"active"`
	Forecast *protocol.AutonomyDetail `json:"forecast"`
	Paused   []struct {
		Cell string `json:"cell"`
		Mode string `json:"mode"`
	} `json:"paused"`
}

func (a *agentEnv) autonomy() (agentAutonomy, error) {
	var v agentAutonomy
	resp, err := http.Get(fmt.Sprintf("http://127.0.0.1:%d/api/v1/autonomy", a.httpPort))
	if err != nil {
		return v, err
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	if resp.StatusCode != 200 {
		return v, fmt.Errorf("GET autonomy: %d %s", resp.StatusCode, b)
	}
	return v, json.Unmarshal(b, &v)
}

// cellOutputs counts, by cell, the outputs cells publish on a node's sensor
// broker (cells/{cell}/count of the minimal cell).
type cellOutputs struct {
	mu sync.Mutex
	n  map[string]int
}

func (o *cellOutputs) get(cell string) int {
	o.mu.Lock()
	defer o.mu.Unlock()
	return o.n[cell]
}

func publishN(t *testing.T, c paho.Client, topic string, n int) {
	t.Helper()
	for i := range n {
		if tok := c.Publish(topic, 1, false, fmt.Sprintf(`{"i":%d}`, i)); !tok.WaitTimeout(10*time.Second) || tok.Error() != nil {
			t.Fatalf("publish %s: %v", topic, tok.Error())
		}
	}
}

type nodeEventView struct {
	ID      string                  `json:"id"`
	Time    time.Time               `json:"time"`
	Kind    string                  `json:"kind"`
	Cell    string                  `json:"cell"`
	Message string                  `json:"message"`
	Detail  protocol.AutonomyDetail `json:"detail"`
}

// TestAutonomyShedsWithoutConsole: a green node (battery and solar panel
// under HOST_SYS) runs a low-priority cell reading a durable stream and a
// normal one reading a topic. Its uplink to the console is cut and its
// battery drains with no sun: after the grace period the node, on its own,
// pauses the low cell (its input waits in the stream) and keeps the normal
// one running. When the uplink is back the console shows what the node did
// and why (its forecast), and the low cell resumes and catches up.
func TestAutonomyShedsWithoutConsole(t *testing.T) {
	c := newConsole(t, backends[0])
	jwt := c.login()
	sys := newFakeBattery(t, 90)
	sys.setSolar(t, 25)
	link := newUplink(t, strings.TrimPrefix(c.brokerURL(), "tcp://"))
	a := agentFor(t, c, "solar-1", c.token(jwt), link.url(),
		"--autonomy-grace", "1s", "--autonomy-horizon", "2h",
		"--stream", `{"name":"frames","topics":["cam/#"]}`)
	a.env = []string{"HOST_SYS=" + sys.root()}
	a.start()
	waitStatus(t, c, jwt, "solar-1", "online", 15*time.Second)

	mod := uploadModule(t, c, jwt, "minimal", watModule(t, "../cells/minimal.wat"))
	c.do("POST", "/api/v1/cells", jwt, map[string]any{"id": "thumbs", "node": "solar-1", "module": mod, "priority": "low",
		"inputs": []map[string]any{{"name": "frames", "stream": "frames"}}, "outputs": []string{"count"}}, 201, nil)
	c.do("POST", "/api/v1/cells", jwt, map[string]any{"id": "alarm", "node": "solar-1", "module": mod,
		"inputs": []map[string]any{{"name": "alarm", "topics": []string{"alarm/#"}}}, "outputs": []string{"count"}}, 201, nil)
	c.waitCellOn(t, jwt, "thumbs", "solar-1", 30*time.Second)
	c.waitCellOn(t, jwt, "alarm", "solar-1", 30*time.Second)

	sensors := flagValue(a.args, "--sensors")
	outs := &cellOutputs{n: map[string]int{}}
	sub := sensorClient(t, sensors)
	sub.Subscribe("cells/+/count", 1, func(_ paho.Client, m paho.Message) {
		parts := strings.Split(m.Topic(), "/")
		outs.mu.Lock()
		outs.n[parts[1]]++
		outs.mu.Unlock()
	}).Wait()
	pub := sensorClient(t, sensors)
	publishN(t, pub, "cam/1", 3)
	waitFor(t, 15*time.Second, "the low cell handles its stream", func() error {
		if outs.get("thumbs") == 0 {
			return fmt.Errorf("no output of thumbs yet")
		}
		return nil
	})

	// The uplink goes down. The battery is fine: the node is autonomous
	// but keeps everything running.
	link.Cut()
	waitFor(t, 15*time.Second, "the node decides alone", func() error {
		v, err := a.autonomy()
		if err != nil || !v.Active {
			return fmt.Errorf("autonomy %+v (%v)", v, err)
		}
		if len(v.Paused) != 0 {
			t.Fatalf("paused with a full battery and the sun out: %+v", v)
		}
		return nil
	})

	// Clouds and a drained battery: the forecast falls short of the
	// horizon, the low cell is paused, the normal one runs on.
	sys.setSolar(t, 0)
	sys.set(t, 12)
	var shed agentAutonomy
	waitFor(t, 15*time.Second, "the low cell paused", func() error {
		v, err := a.autonomy()
		if err != nil || len(v.Paused) == 0 {
			return fmt.Errorf("autonomy %+v (%v)", v, err)
		}
		shed = v
		return nil
	})
	if len(shed.Paused) != 1 || shed.Paused[0].Cell != "thumbs" || shed.Paused[0].Mode != "deferred" {
		t.Fatalf("paused %+v, want only the low cell, deferred", shed.Paused)
	}
	if f := shed.Forecast; f == nil || f.HoursLeft >= 2 || f.BatteryPct != 12 || f.SolarW != 0 || f.CapacityWh <= 0 {
		t.Fatalf("forecast %+v, want < 2 h at 12%% without sun", shed.Forecast)
	}
	if got := a.metric("cloudskin_agent_autonomy_cells_paused", ""); got != 1 {
		t.Fatalf("paused gauge %v", got)
	}
	if got := a.metric("cloudskin_agent_autonomy_cells_shed_total", `mode="deferred"`); got != 1 {
		t.Fatalf("shed counter %v", got)
	}
	if got := a.metric("cloudskin_agent_autonomy_hours_left", ""); got >= 2 {
		t.Fatalf("hours-left gauge %v", got)
	}
	thumbs, alarm := outs.get("thumbs"), outs.get("alarm")
	publishN(t, pub, "cam/2", 4)   // waits in the stream
	publishN(t, pub, "alarm/1", 2) // the normal cell's
	waitFor(t, 15*time.Second, "the normal cell runs on", func() error {
		if outs.get("alarm") == alarm {
			return fmt.Errorf("no output of alarm")
		}
		return nil
	})
	time.Sleep(time.Second)
	if got := outs.get("thumbs"); got != thumbs {
		t.Fatalf("the paused cell emitted %d outputs", got-thumbs)
	}

	// The uplink is back: the console's desired state rules again, the
	// low cell resumes and handles what waited in its stream.
	link.Restore()
	waitStatus(t, c, jwt, "solar-1", "online", 30*time.Second)
	waitFor(t, 30*time.Second, "the low cell resumed and caught up", func() error {
		v, err := a.autonomy()
		if err != nil || v.Active || len(v.Paused) != 0 {
			return fmt.Errorf("autonomy %+v (%v)", v, err)
		}
		if outs.get("thumbs") == thumbs {
			return fmt.Errorf("no new output of thumbs")
		}
		return nil
	})
	c.waitCellOn(t, jwt, "thumbs", "solar-1", 15*time.Second)

	// The console shows what the node did while it was cut off, and why.
	var evs struct {
		Events []nodeEventView `json:"events"`
	}
	waitFor(t, 15*time.Second, "the node's events reach the console", func() error {
		c.do("GET", "/api/v1/nodes/solar-1/events?limit=50", jwt, nil, 200, &evs)
		for _, ev := range evs.Events {
			if ev.Kind == protocol.EventAutonomyEnd {
				return nil
			}
		}
		return fmt.Errorf("events %+v", evs.Events)
	})
	byKind := map[string]nodeEventView{}
	for i := len(evs.Events) - 1; i >= 0; i-- { // oldest first: keep the first of each kind
		if _, ok := byKind[evs.Events[i].Kind]; !ok {
			byKind[evs.Events[i].Kind] = evs.Events[i]
		}
	}
	for _, kind := range []string{protocol.EventAutonomyStart, protocol.EventAutonomyForecast, protocol.EventAutonomyShed, protocol.EventAutonomyResume, protocol.EventAutonomyEnd} {
		if _, ok := byKind[kind]; !ok {
			t.Fatalf("no %s event among %+v", kind, evs.Events)
		}
	}
	for _, ev := range evs.Events {
		t.Logf("event %s %s %s: %s %+v", ev.Time.Format(time.RFC3339Nano), ev.Kind, ev.Cell, ev.Message, ev.Detail)
	}
	s := byKind[protocol.EventAutonomyShed]
	if s.Cell != "thumbs" || s.Detail.Mode != "deferred" || s.Detail.HoursLeft >= 2 || s.Detail.BatteryPct != 12 || s.Detail.HorizonHours != 2 ||
		s.Detail.CapacityWh <= 0 || s.Detail.CapacitySource == "" || s.Detail.DrawW <= 0 || !strings.Contains(s.Message, "deferred") {
		t.Fatalf("shed event %+v", s)
	}
	if r := byKind[protocol.EventAutonomyResume]; r.Cell != "thumbs" || r.Detail.Reason != "console" {
		t.Fatalf("resume event %+v", r)
	}
	for i := 1; i < len(evs.Events); i++ {
		if evs.Events[i].Time.After(evs.Events[i-1].Time) {
			t.Fatalf("events not newest first: %+v", evs.Events)
		}
	}
	for _, ev := range evs.Events {
		if ev.Cell == "alarm" {
			t.Fatalf("the node touched a normal-priority cell: %+v", ev)
		}
	}
	if a.proc.Exited() {
		t.Fatal("the agent exited")
	}
}
