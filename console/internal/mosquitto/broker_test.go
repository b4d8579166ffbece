package mosquitto

import (
	"bytes"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	mqtt "github.com/eclipse/paho.mqtt.golang"
	"github.com/eclipse/paho.mqtt.golang/packets"

	"github.com/cloudskin/cloudskin/shared/testenv"
)

const (
	prefix      = "cloudskin/v1"
	consolePass = "console-secret"
	waitTimeout = 10 * time.Second
)

// TestBrokerEnforcesNodeTopics runs the real Mosquitto on the files Write
// produces and checks, as a node and the console would see it, that each
// node is confined to its own topics.
func TestBrokerEnforcesNodeTopics(t *testing.T) {
	dir := t.TempDir()
	files := Files{Dir: dir}
	creds := []Credential{
		{Username: DefaultConsoleUser, Password: consolePass},
		{Username: "edge-1", Password: "edge-1-secret"},
		{Username: "edge-2", Password: "edge-2-secret"},
	}
	if err := files.Write(creds); err != nil {
		t.Fatal(err)
	}
	b := startBroker(t, dir)

	t.Run("logins", func(t *testing.T) {
		for _, tt := range []struct {
			user, pass string
			ok         bool
		}{
			{DefaultConsoleUser, consolePass, true},
			{"edge-1", "edge-1-secret", true},
			{"edge-1", "wrong", false},
			{"edge-1", "edge-2-secret", false},
			{"edge-1", consolePass, false},
			{"edge-9", "edge-1-secret", false},
			{"", "", false}, // anonymous
		} {
			c, err := b.connect(tt.user, tt.pass)
			switch {
			case tt.ok && err != nil:
				t.Errorf("%q/%q refused: %v", tt.user, tt.pass, err)
			case !tt.ok && err == nil:
				c.Disconnect(0)
				t.Errorf("%q/%q accepted, want refused", tt.user, tt.pass)
			case !tt.ok && !errors.Is(err, packets.ErrorRefusedNotAuthorised):
				t.Errorf("%q/%q: %v, want %v", tt.user, tt.pass, err, packets.ErrorRefusedNotAuthorised)
			case err == nil:
				c.Disconnect(0)
			}
		}
	})

	t.Run("console reads and writes anywhere under the prefix", func(t *testing.T) {
		console := b.mustConnect(t, DefaultConsoleUser, consolePass)
		in := subscribe(t, console, prefix+"/#")
		for _, topic := range []string{
			prefix + "/nodes/edge-1/desired",
			prefix + "/nodes/edge-2/telemetry",
			prefix + "/anything/deeper/still",
		} {
			publish(t, console, topic, "from console", false)
			in.waitFor(t, topic, "from console")
		}
	})

	t.Run("node publishes only under its own subtree", func(t *testing.T) {
		console := b.mustConnect(t, DefaultConsoleUser, consolePass)
		in := subscribe(t, console, prefix+"/#")
		edge1 := b.mustConnect(t, "edge-1", "edge-1-secret")

		denied := []string{
			prefix + "/nodes/edge-2/telemetry",
			prefix + "/nodes/edge-2/desired",
			prefix + "/nodes/edge-10/status",
			prefix + "/console",
			prefix + "/nodes/edge-1/desired",     // only the console writes a node's desired state
			prefix + "/nodes/edge-1/events/deep", // nor anything but the node leaves
		}
		for _, topic := range denied {
			// MQTT 3.1.1 has no way to refuse a publish: Mosquitto acks and drops it.
			publish(t, edge1, topic, "forged", false)
		}
		own := prefix + "/nodes/edge-1/telemetry"
		publish(t, edge1, own, "real", false)

		// One publisher, one subscriber, one QoS: the broker keeps order,
		// so a denied message that got through would arrive before this one.
		for _, m := range in.waitFor(t, own, "real") {
			if m.Topic() != own {
				t.Errorf("console received %q on %s, which edge-1 may not publish to", m.Payload(), m.Topic())
			}
		}
		publish(t, edge1, prefix+"/nodes/edge-1/events", "also mine", false)
		in.waitFor(t, prefix+"/nodes/edge-1/events", "also mine")
	})

	t.Run("node reads only its own desired state", func(t *testing.T) {
		console := b.mustConnect(t, DefaultConsoleUser, consolePass)
		publish(t, console, prefix+"/nodes/edge-2/desired", "retained for edge-2", true)
		publish(t, console, prefix+"/nodes/edge-1/desired", "retained for edge-1", true)

		edge1 := b.mustConnect(t, "edge-1", "edge-1-secret")
		own := prefix + "/nodes/edge-1/desired"
		in := subscribe(t, edge1,
			prefix+"/nodes/edge-2/desired",
			prefix+"/nodes/+/desired",
			prefix+"/#",
			"#",
			own,
		)
		publish(t, console, prefix+"/nodes/edge-2/desired", "live for edge-2", false)
		publish(t, console, prefix+"/nodes/edge-2/telemetry", "edge-2 telemetry", false)
		publish(t, console, prefix+"/nodes/edge-1/telemetry", "edge-1 telemetry", false)
		publish(t, console, own, "live for edge-1", false)

		// Retained messages come before the SUBACK, live ones in publish order.
		got := in.waitFor(t, own, "live for edge-1")
		sawRetained := false
		for _, m := range got {
			if m.Topic() != own {
				t.Errorf("edge-1 received %q on %s, which it may not read", m.Payload(), m.Topic())
			}
			sawRetained = sawRetained || string(m.Payload()) == "retained for edge-1"
		}
		if !sawRetained {
			t.Errorf("edge-1 did not receive its own retained desired state")
		}
	})

	t.Run("enrolling a node takes effect on Reload", func(t *testing.T) {
		if _, err := b.connect("edge-3", "edge-3-secret"); err == nil {
			t.Fatal("edge-3 connected before it was enrolled")
		}
		aclBefore, err := os.ReadFile(filepath.Join(dir, ACLFile))
		if err != nil {
			t.Fatal(err)
		}
		creds = append(creds, Credential{Username: "edge-3", Password: "edge-3-secret"})
		if err := files.Write(creds); err != nil {
			t.Fatal(err)
		}
		if aclAfter, _ := os.ReadFile(filepath.Join(dir, ACLFile)); !bytes.Equal(aclBefore, aclAfter) {
			t.Errorf("enrolling a node changed the ACL:\n%s\nto:\n%s", aclBefore, aclAfter)
		}
		if err := Reload(b.pidFile); err != nil {
			t.Fatal(err)
		}
		// Mosquitto reloads from its main loop, a moment after the signal.
		edge3 := eventually(t, "edge-3 connects after Reload", func() (mqtt.Client, error) {
			return b.connect("edge-3", "edge-3-secret")
		})
		t.Cleanup(func() { edge3.Disconnect(0) })

		// The pattern rules cover the new node without an ACL change.
		console := b.mustConnect(t, DefaultConsoleUser, consolePass)
		in := subscribe(t, console, prefix+"/nodes/+/telemetry")
		publish(t, edge3, prefix+"/nodes/edge-1/telemetry", "forged", false)
		publish(t, edge3, prefix+"/nodes/edge-3/telemetry", "hello", false)
		for _, m := range in.waitFor(t, prefix+"/nodes/edge-3/telemetry", "hello") {
			if m.Topic() != prefix+"/nodes/edge-3/telemetry" {
				t.Errorf("console received %q on %s from edge-3", m.Payload(), m.Topic())
			}
		}
	})

	t.Run("removing a node refuses it after Reload", func(t *testing.T) {
		connected := b.mustConnect(t, "edge-2", "edge-2-secret")
		var kept []Credential
		for _, c := range creds {
			if c.Username != "edge-2" {
				kept = append(kept, c)
			}
		}
		if err := files.Write(kept); err != nil {
			t.Fatal(err)
		}
		if err := Reload(b.pidFile); err != nil {
			t.Fatal(err)
		}
		eventually(t, "edge-2 refused after Reload", func() (struct{}, error) {
			c, err := b.connect("edge-2", "edge-2-secret")
			if err == nil {
				c.Disconnect(0)
				return struct{}{}, errors.New("still accepted")
			}
			if !errors.Is(err, packets.ErrorRefusedNotAuthorised) {
				return struct{}{}, err
			}
			return struct{}{}, nil
		})
		// Revocation also ends the session edge-2 opened before: on reload
		// Mosquitto re-checks connected clients against the new files.
		eventually(t, "edge-2's open connection dropped after Reload", func() (struct{}, error) {
			if connected.IsConnectionOpen() {
				return struct{}{}, errors.New("still connected")
			}
			return struct{}{}, nil
		})
	})
}

// broker is a Mosquitto subprocess listening on a random local port.
type broker struct {
	url     string
	pidFile string
	ids     atomic.Int64
}

// startBroker runs Mosquitto on the password and ACL files in dir until the
// test ends.
func startBroker(t *testing.T, dir string) *broker {
	t.Helper()
	m := testenv.NewMosquitto(t, dir)
	m.Start(t)
	return &broker{url: m.URL(), pidFile: m.PidFile}
}

// connect logs in over MQTT 3.1.1, the version the agents speak.
func (b *broker) connect(user, pass string) (mqtt.Client, error) {
	opts := mqtt.NewClientOptions().
		AddBroker(b.url).
		SetClientID(fmt.Sprintf("test-%s-%d", user, b.ids.Add(1))).
		SetUsername(user).
		SetPassword(pass).
		SetProtocolVersion(4).
		SetCleanSession(true).
		SetAutoReconnect(false).
		SetConnectRetry(false).
		SetConnectTimeout(5 * time.Second)
	c := mqtt.NewClient(opts)
	tok := c.Connect()
	if !tok.WaitTimeout(waitTimeout) {
		return nil, fmt.Errorf("connect as %q: no answer in %v", user, waitTimeout)
	}
	if err := tok.Error(); err != nil {
		return nil, fmt.Errorf("connect as %q: %w", user, err)
	}
	return c, nil
}

func (b *broker) mustConnect(t *testing.T, user, pass string) mqtt.Client {
	t.Helper()
	c, err := b.connect(user, pass)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Disconnect(0) })
	return c
}

// eventually retries try until it succeeds or waitTimeout passes.
func eventually[T any](t *testing.T, what string, try func() (T, error)) T {
	t.Helper()
	deadline := time.Now().Add(waitTimeout)
	for {
		v, err := try()
		if err == nil {
			return v
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s: not within %v: %v", what, waitTimeout, err)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

func publish(t *testing.T, c mqtt.Client, topic, payload string, retained bool) {
	t.Helper()
	tok := c.Publish(topic, 1, retained, payload)
	if !tok.WaitTimeout(waitTimeout) {
		t.Fatalf("publish to %s: no PUBACK in %v", topic, waitTimeout)
	}
	if err := tok.Error(); err != nil {
		t.Fatalf("publish to %s: %v", topic, err)
	}
}

// inbox collects the messages of one client's subscriptions.
type inbox chan mqtt.Message

func subscribe(t *testing.T, c mqtt.Client, filters ...string) inbox {
	t.Helper()
	in := make(inbox, 256)
	qos := map[string]byte{}
	for _, f := range filters {
		qos[f] = 1
	}
	tok := c.SubscribeMultiple(qos, func(_ mqtt.Client, m mqtt.Message) { in <- m })
	if !tok.WaitTimeout(waitTimeout) {
		t.Fatalf("subscribe to %v: no SUBACK in %v", filters, waitTimeout)
	}
	if err := tok.Error(); err != nil {
		t.Fatalf("subscribe to %v: %v", filters, err)
	}
	return in
}

// waitFor reads messages until one with topic and payload arrives and returns
// all it read, that one last.
func (in inbox) waitFor(t *testing.T, topic, payload string) []mqtt.Message {
	t.Helper()
	var got []mqtt.Message
	timeout := time.After(waitTimeout)
	for {
		select {
		case m := <-in:
			got = append(got, m)
			if m.Topic() == topic && string(m.Payload()) == payload {
				return got
			}
		case <-timeout:
			var seen []string
			for _, m := range got {
				seen = append(seen, fmt.Sprintf("%s %q", m.Topic(), m.Payload()))
			}
			t.Fatalf("no %q on %s within %v; received: [%s]", payload, topic, waitTimeout, strings.Join(seen, ", "))
			return nil
		}
	}
}
