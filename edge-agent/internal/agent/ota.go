package agent

import (
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"path/filepath"
	"runtime"
	"strings"
	"time"

	"github.com/cloudskin/cloudskin/edge-agent/internal/ota"
	"github.com/cloudskin/cloudskin/shared/protocol"
)

// The agent's side of over-the-air updates (edge-agent/internal/ota,
// docs/ota.md): the updater downloads bundles from the console with the
// node's credentials, reports through the event outbox and the actual
// state, and judges a new release by this file's health check.

// otaClient has no overall timeout (a bundle may take minutes); the
// updater cuts a stalled download itself and resumes it.
var otaClient = &http.Client{Transport: func() http.RoundTripper {
	t := http.DefaultTransport.(*http.Transport).Clone()
	t.ResponseHeaderTimeout = 30 * time.Second
	return t
}()}

func (a *Agent) newUpdater(restart func()) (*ota.Updater, error) {
	key, err := ota.LoadKey(a.cfg.ReleaseKey)
	problem := ""
	if err != nil {
		problem = err.Error()
		if a.cfg.ReleaseKey == "" {
			a.log.Info("over-the-air updates will be refused", "reason", problem)
		} else {
			a.log.Error("over-the-air updates will be refused", "reason", problem)
		}
	}
	return ota.New(ota.Config{
		Dir: filepath.Join(a.cfg.Data, "ota"), Version: a.version, Arch: runtime.GOARCH, Key: key, KeyProblem: problem,
		Get: a.consoleGet, Event: a.otaEvent, Healthy: a.otaHealthy, Restart: restart, Changed: a.publishActualSoon,
		Registry: a.m.registry, Log: a.log,
	})
}

// consoleGet fetches a path on the console as this node.
func (a *Agent) consoleGet(ctx context.Context, path string, h http.Header) (*http.Response, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, strings.TrimRight(a.cfg.Console, "/")+path, nil)
	if err != nil {
		return nil, err
	}
	for k, v := range h {
		req.Header[k] = v
	}
	req.SetBasicAuth(a.cred.Node, a.cred.Secret)
	return otaClient.Do(req)
}

func (a *Agent) otaEvent(kind, msg string, d ota.Detail) error {
	raw, err := json.Marshal(d)
	if err != nil {
		return err
	}
	return a.events.add(protocol.NodeEvent{Kind: kind, Message: msg, Detail: raw})
}

// otaHealthy is the health check of a release being tried: connected to
// the console, its desired state received since the start, and every
// desired cell running (or held for a migration).
func (a *Agent) otaHealthy() (bool, string) {
	if a.client == nil || !a.client.IsConnectionOpen() {
		return false, "not connected to the console's MQTT broker " + a.brokerURL()
	}
	if !a.desiredSeen.Load() {
		return false, "no desired state received from the console since the start"
	}
	if why := a.cells.notRunning(); why != "" {
		return false, why
	}
	return true, ""
}

// notRunning says which desired cell does not run, if any.
func (m *cellManager) notRunning() string {
	m.mu.Lock()
	defer m.mu.Unlock()
	for _, s := range m.desired.Cells {
		rc := m.cells[s.ID]
		switch {
		case rc == nil:
			return fmt.Sprintf("cell %s not started yet", s.ID)
		case rc.state == protocol.CellRunning || rc.state == protocol.CellHeld:
		case rc.message != "":
			return fmt.Sprintf("cell %s is %s: %s", s.ID, rc.state, rc.message)
		default:
			return fmt.Sprintf("cell %s is %s", s.ID, rc.state)
		}
	}
	return ""
}

// desiredUpdate is the update spec of the current desired state.
func (m *cellManager) desiredUpdate() *protocol.UpdateSpec {
	m.mu.Lock()
	defer m.mu.Unlock()
	return m.desired.Update
}

// actualState is the actual state the node reports: its cells and its
// update.
func (a *Agent) actualState() protocol.Actual {
	act := a.cells.actual()
	act.Update = a.updater.Status()
	return act
}

// publishActualWait reports the actual state now and waits (briefly) for
// the broker, before the agent restarts for an update.
func (a *Agent) publishActualWait() {
	if a.client == nil || !a.client.IsConnectionOpen() {
		return
	}
	b, err := json.Marshal(a.actualState())
	if err != nil {
		return
	}
	a.client.Publish(a.topics.Node(a.cfg.Name, protocol.LeafActual), 1, false, b).WaitTimeout(2 * time.Second)
}
