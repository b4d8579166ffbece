package e2e

import (
	"encoding/json"
	"fmt"
	"net/url"
	"syscall"
	"testing"
	"time"
)

type nodeView struct {
	Name          string            `json:"name"`
	Status        string            `json:"status"`
	StatusReason  string            `json:"status_reason"`
	Arch          string            `json:"arch"`
	Labels        map[string]string `json:"labels"`
	LastTelemetry *struct {
		Time   time.Time `json:"time"`
		Energy struct {
			Source string  `json:"source"`
			PowerW float64 `json:"power_w"`
		} `json:"energy"`
		Memory struct {
			TotalBytes uint64 `json:"total_bytes"`
		} `json:"memory"`
	} `json:"last_telemetry"`
}

type sample struct {
	Node string    `json:"node"`
	Seq  uint64    `json:"seq"`
	Time time.Time `json:"time"`
}

func (c *consoleEnv) node(jwt, name string) nodeView {
	c.t.Helper()
	var n nodeView
	c.do("GET", "/api/v1/nodes/"+name, jwt, nil, 200, &n)
	return n
}

// tryNode is node for polling: not-yet-enrolled is an error, not a failure.
func (c *consoleEnv) tryNode(jwt, name string) (nodeView, error) {
	c.t.Helper()
	var n nodeView
	code, raw := c.request("GET", "/api/v1/nodes/"+name, jwt, nil)
	if code != 200 {
		return n, fmt.Errorf("GET node %s: %d %s", name, code, raw)
	}
	return n, json.Unmarshal(raw, &n)
}

func (c *consoleEnv) samples(jwt, name string, since time.Time) []sample {
	c.t.Helper()
	var out struct {
		Samples []sample `json:"samples"`
	}
	c.do("GET", "/api/v1/nodes/"+name+"/telemetry?limit=10000&since="+url.QueryEscape(since.Format(time.RFC3339Nano)), jwt, nil, 200, &out)
	return out.Samples
}

func waitStatus(t testing.TB, c *consoleEnv, jwt, name, status string, timeout time.Duration) time.Duration {
	t.Helper()
	start := time.Now()
	waitFor(t, timeout, name+" "+status, func() error {
		n, err := c.tryNode(jwt, name)
		if err != nil {
			return err
		}
		if n.Status != status {
			return fmt.Errorf("status %s (%s)", n.Status, n.StatusReason)
		}
		return nil
	})
	return time.Since(start)
}

// checkSeries asserts samples are strictly increasing in time (no
// duplicates) and no gap is longer than maxGap.
func checkSeries(t *testing.T, s []sample, maxGap time.Duration) {
	t.Helper()
	if err := seriesErr(s, maxGap); err != nil {
		t.Fatal(err)
	}
}

func seriesErr(s []sample, maxGap time.Duration) error {
	for i := 1; i < len(s); i++ {
		if !s[i].Time.After(s[i-1].Time) {
			return fmt.Errorf("sample %d at %s does not follow %s: duplicate or out of order", i, s[i].Time, s[i-1].Time)
		}
		if gap := s[i].Time.Sub(s[i-1].Time); gap > maxGap {
			return fmt.Errorf("gap of %s between samples %d and %d (%s → %s)", gap, i-1, i, s[i-1].Time, s[i].Time)
		}
	}
	return nil
}

// TestFleet is the foundation's end-to-end path on every backend: enroll,
// online with telemetry, cut-off and back-fill, kill -9 → offline, console
// restart keeps everything.
func TestFleet(t *testing.T) {
	for _, be := range backends {
		t.Run(be.name, func(t *testing.T) {
			testFleet(t, be)
		})
	}
}

func testFleet(t *testing.T, be backend) {
	c := newConsole(t, be)
	jwt := c.login()
	link := newUplink(t, brokerHostPort(c))
	a := newAgent(t, c, "edge-1", c.token(jwt), link.url())

	// Online with telemetry within 10 s.
	waitFor(t, 10*time.Second, "edge-1 online with telemetry", func() error {
		n, err := c.tryNode(jwt, "edge-1")
		if err != nil {
			return err
		}
		if n.Status != "online" || n.LastTelemetry == nil {
			return fmt.Errorf("status %s, telemetry %v", n.Status, n.LastTelemetry != nil)
		}
		return nil
	})
	n := c.node(jwt, "edge-1")
	if n.Labels["site"] != "e2e" || n.Labels["power"] != "green" || n.Labels["lat"] != "41.56" || n.Arch == "" {
		t.Fatalf("node metadata not recorded: %+v", n)
	}
	if n.LastTelemetry.Memory.TotalBytes == 0 || n.LastTelemetry.Energy.Source == "" {
		t.Fatalf("telemetry incomplete: %+v", n.LastTelemetry)
	}
	began := time.Now().Add(-time.Minute)

	// Cut the uplink; the node goes offline (last will), keeps sampling, and
	// back-fills the outage in order with no gaps and no duplicates.
	outage := 6 * time.Second
	if be.name == "sqlite+embedded" && !testing.Short() {
		outage = time.Minute // the acceptance case: one real minute
	}
	before := len(c.samples(jwt, "edge-1", began))
	link.Cut()
	waitStatus(t, c, jwt, "edge-1", "offline", 5*time.Second)
	time.Sleep(outage)
	if got := a.metric("cloudskin_agent_outbox_records", ""); got < float64(outage/(250*time.Millisecond))/2 {
		t.Fatalf("agent buffered %v samples during a %s outage", got, outage)
	}
	during := len(c.samples(jwt, "edge-1", began))
	link.Restore()
	waitStatus(t, c, jwt, "edge-1", "online", 20*time.Second)
	waitFor(t, 30*time.Second, "outbox drained", func() error {
		if got := a.metric("cloudskin_agent_outbox_records", ""); got > 2 {
			return fmt.Errorf("%v samples still buffered", got)
		}
		return nil
	})
	// The outbox drains on the broker's PUBACK. With the embedded broker that
	// means stored; Mosquitto acknowledges on receipt and hands the console
	// the messages a moment later, so wait for the console's series to be
	// complete: no gap, no duplicate, the whole outage.
	wantMin := during + int(outage/(250*time.Millisecond))*8/10
	waitFor(t, 15*time.Second, "the console to hold the back-filled outage", func() error {
		series := c.samples(jwt, "edge-1", began)
		if len(series) < wantMin {
			return fmt.Errorf("%d samples, want at least %d (before cut %d, during %d)", len(series), wantMin, before, during)
		}
		return seriesErr(series, time.Second)
	})
	if dropped := a.metric("cloudskin_agent_telemetry_dropped_total", `reason="outbox_full"`); dropped != 0 {
		t.Fatalf("agent dropped %v samples", dropped)
	}

	// kill -9: offline within 3 heartbeats (agent heartbeat 500ms).
	a.proc.Kill(syscall.SIGKILL)
	took := waitStatus(t, c, jwt, "edge-1", "offline", 3*500*time.Millisecond+time.Second)
	t.Logf("%s: offline %s after kill -9", be.name, took)

	// Console restart keeps users, nodes and telemetry.
	kept := len(c.samples(jwt, "edge-1", began))
	c.stop()
	c.start()
	jwt = c.login()
	// With Mosquitto, samples the broker acknowledged before the kill may
	// still reach the console after this count: never fewer, maybe more.
	if got := len(c.samples(jwt, "edge-1", began)); got < kept {
		t.Fatalf("after console restart %d samples, had %d", got, kept)
	}
	if n := c.node(jwt, "edge-1"); n.Status != "offline" {
		t.Fatalf("after restart edge-1 is %s", n.Status)
	}

	// The agent comes back with its stored credential (no token) and
	// carries on.
	a.args = removeFlag(a.args, "--token")
	restarted := time.Now()
	a.start()
	waitStatus(t, c, jwt, "edge-1", "online", 15*time.Second)
	waitFor(t, 10*time.Second, "telemetry after agent restart", func() error {
		if got := c.samples(jwt, "edge-1", restarted); len(got) == 0 {
			return fmt.Errorf("no sample since %s", restarted)
		}
		return nil
	})
	checkSeries(t, c.samples(jwt, "edge-1", began), 2*time.Minute)
}

func brokerHostPort(c *consoleEnv) string {
	u, _ := url.Parse(c.brokerURL())
	return u.Host
}

func removeFlag(args []string, flag string) []string {
	var out []string
	for i := 0; i < len(args); i++ {
		if args[i] == flag {
			i++
			continue
		}
		out = append(out, args[i])
	}
	return out
}

// TestMissedHeartbeats freezes an agent (its TCP connection stays open, so
// no last will fires) and expects the console to mark it offline after
// three missed heartbeats, then online again when it resumes.
func TestMissedHeartbeats(t *testing.T) {
	c := newConsole(t, backends[0])
	jwt := c.login()
	a := newAgent(t, c, "edge-hb", c.token(jwt), "")
	waitStatus(t, c, jwt, "edge-hb", "online", 10*time.Second)

	if err := a.proc.Cmd.Process.Signal(syscall.SIGSTOP); err != nil {
		t.Fatal(err)
	}
	defer a.proc.Cmd.Process.Signal(syscall.SIGCONT)
	// Heartbeat 500ms: three misses is 1.5s; allow the 1s sweep period.
	took := waitStatus(t, c, jwt, "edge-hb", "offline", 4*time.Second)
	if took < time.Second {
		t.Fatalf("offline after %s: sooner than three missed heartbeats", took)
	}
	if n := c.node(jwt, "edge-hb"); n.StatusReason != "missed heartbeats" {
		t.Fatalf("offline reason %q, want missed heartbeats", n.StatusReason)
	}
	t.Logf("offline %s after the agent froze", took)
	if got := c.metric("cloudskin_console_node_transitions_total", `reason="missed heartbeats",status="offline"`); got < 1 {
		t.Fatalf("transition not counted: %v", got)
	}

	a.proc.Cmd.Process.Signal(syscall.SIGCONT)
	waitStatus(t, c, jwt, "edge-hb", "online", 10*time.Second)
}
