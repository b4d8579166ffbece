package agent

import (
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
)

type agentMetrics struct {
	registry        *prometheus.Registry
	samples         prometheus.Counter
	sampleErrors    prometheus.Counter
	published       prometheus.Counter
	publishFailures prometheus.Counter
	dropped         *prometheus.CounterVec
	outboxRecords   prometheus.Gauge
	outboxBytes     prometheus.Gauge
	connected       prometheus.Gauge
	connects        prometheus.Counter
	checkpoints     *prometheus.CounterVec
	restores        prometheus.Counter
}

func newMetrics() *agentMetrics {
	r := prometheus.NewRegistry()
	m := &agentMetrics{
		registry:        r,
		samples:         prometheus.NewCounter(prometheus.CounterOpts{Name: "cloudskin_agent_telemetry_samples_total", Help: "Telemetry samples taken and written to the outbox."}),
		sampleErrors:    prometheus.NewCounter(prometheus.CounterOpts{Name: "cloudskin_agent_telemetry_sample_errors_total", Help: "Telemetry samples that could not be taken or stored."}),
		published:       prometheus.NewCounter(prometheus.CounterOpts{Name: "cloudskin_agent_telemetry_published_total", Help: "Telemetry samples acknowledged by the broker."}),
		publishFailures: prometheus.NewCounter(prometheus.CounterOpts{Name: "cloudskin_agent_telemetry_publish_failures_total", Help: "Outbox send attempts that failed and will be retried."}),
		dropped:         prometheus.NewCounterVec(prometheus.CounterOpts{Name: "cloudskin_agent_telemetry_dropped_total", Help: "Telemetry samples lost, by reason (outbox quota, corrupt record)."}, []string{"reason"}),
		outboxRecords:   prometheus.NewGauge(prometheus.GaugeOpts{Name: "cloudskin_agent_outbox_records", Help: "Telemetry samples waiting in the on-disk outbox."}),
		outboxBytes:     prometheus.NewGauge(prometheus.GaugeOpts{Name: "cloudskin_agent_outbox_bytes", Help: "Size of the on-disk telemetry outbox."}),
		connected:       prometheus.NewGauge(prometheus.GaugeOpts{Name: "cloudskin_agent_mqtt_connected", Help: "1 while connected to the MQTT broker."}),
		connects:        prometheus.NewCounter(prometheus.CounterOpts{Name: "cloudskin_agent_mqtt_connects_total", Help: "Successful MQTT (re)connections."}),
		checkpoints:     prometheus.NewCounterVec(prometheus.CounterOpts{Name: "cloudskin_agent_cell_checkpoints_total", Help: "Cell checkpoints taken, by reason (periodic, hold)."}, []string{"reason"}),
		restores:        prometheus.NewCounter(prometheus.CounterOpts{Name: "cloudskin_agent_cell_restores_total", Help: "Cells started from a checkpoint."}),
	}
	r.MustRegister(m.samples, m.sampleErrors, m.published, m.publishFailures, m.dropped, m.outboxRecords,
		m.outboxBytes, m.connected, m.connects, m.checkpoints, m.restores, collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	return m
}
