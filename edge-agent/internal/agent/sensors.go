package agent

import (
	"github.com/cloudskin/cloudskin/edge-agent/internal/ingest"
)

// startIngest starts the node's ingestion broker: the agent's own (embedded,
// on --sensors) or a subscription to an existing local broker
// (--ingest-broker). Either way a message on a stream's topic is
// acknowledged only once it is durable in that stream, every message feeds
// cells' in-memory (topics) inputs, and cell outputs are published on it at
// cells/{cell}/{output}. It returns the function that stops it.
func (a *Agent) startIngest() (func(), error) {
	if a.cfg.IngestBroker != "" {
		x, err := ingest.StartExternal(ingest.ExternalConfig{
			Broker: a.cfg.IngestBroker, ClientID: a.cfg.IngestClientID, Filters: a.streams.filters(),
		}, a.streams, a.log)
		if err != nil {
			return nil, err
		}
		a.streams.onChange(func(f []string) {
			if err := x.SetFilters(f); err != nil {
				a.log.Error("ingest subscriptions not updated", "err", err)
			}
		})
		a.cells.publish = func(t string, p []byte) { _ = x.Publish(t, p) }
		if err := x.Subscribe("#", a.sensorMessage()); err != nil {
			x.Close()
			return nil, err
		}
		return func() { x.Close() }, nil
	}
	if a.cfg.Sensors == "" {
		return func() {}, nil
	}
	e, err := ingest.StartEmbedded(ingest.EmbeddedConfig{Addr: a.cfg.Sensors}, a.streams, a.log)
	if err != nil {
		return nil, err
	}
	if err := e.Subscribe("#", a.sensorMessage()); err != nil {
		e.Close()
		return nil, err
	}
	a.cells.publish = func(t string, p []byte) { _ = e.Publish(t, p) }
	a.log.Info("sensor broker listening", "addr", e.Addr())
	return func() { e.Close() }, nil
}

// sensorMessage is what every sensor message goes to: the cells' topic
// inputs, and the forwarder of moving targets' positions.
func (a *Agent) sensorMessage() func(topic string, payload []byte) {
	if len(a.cfg.TargetTopics) == 0 {
		return a.cells.dispatch
	}
	fw := newTargetForwarder(a)
	return func(topic string, payload []byte) {
		fw.observe(topic, payload)
		a.cells.dispatch(topic, payload)
	}
}
