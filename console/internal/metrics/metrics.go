// Package metrics defines the console's Prometheus metrics on a registry of
// its own, so several consoles can live in one test process.
package metrics

import (
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
)

// Rejection reasons, the label values of cloudskin_console_rejected_total.
const (
	RejectTelemetryMalformed = "telemetry_malformed"
	RejectTelemetryOversized = "telemetry_oversized"
	RejectTelemetryInvalid   = "telemetry_invalid"
	RejectStatusInvalid      = "status_invalid"
	RejectActualInvalid      = "actual_invalid"
	RejectReplyInvalid       = "reply_invalid"
	RejectUnknownNode        = "unknown_node"
	RejectUnknownTopic       = "unknown_topic"
	RejectTopicDenied        = "topic_denied"
	RejectBrokerAuth         = "broker_auth_failed"
	RejectPacketOversized    = "packet_oversized"
	RejectEnrollToken        = "enroll_token_invalid"
	RejectEnrollTokenReused  = "enroll_token_reused"
	RejectEnrollTokenExpired = "enroll_token_expired"
	RejectJWT                = "jwt_invalid"
	RejectLogin              = "login_failed"
	RejectNodeCredential     = "node_credential_invalid"
	RejectForbidden          = "forbidden"
	RejectBadRequest         = "bad_request"
)

// Metrics are the console's counters and gauges.
type Metrics struct {
	Registry         *prometheus.Registry
	Rejected         *prometheus.CounterVec
	MQTTMessages     *prometheus.CounterVec
	SamplesStored    prometheus.Counter
	SamplesDuplicate prometheus.Counter
	NodeTransitions  *prometheus.CounterVec
	NodesByStatus    *prometheus.GaugeVec
	HTTPRequests     *prometheus.CounterVec
	HTTPDuration     *prometheus.HistogramVec
	Enrollments      prometheus.Counter
	RetentionDeleted prometheus.Counter
	// ActualUnknownCells counts cell statuses a node reported for cells the
	// console does not have on that node (deleted, or never placed there).
	ActualUnknownCells prometheus.Counter
}

// New registers every console metric, plus Go and process collectors.
func New() *Metrics {
	r := prometheus.NewRegistry()
	m := &Metrics{
		Registry: r,
		Rejected: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "cloudskin_console_rejected_total",
			Help: "Inputs refused by the console, by reason (bad MQTT payloads, denied topics, bad credentials, bad requests).",
		}, []string{"reason"}),
		MQTTMessages: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "cloudskin_console_mqtt_messages_total",
			Help: "MQTT messages received from nodes, by topic leaf.",
		}, []string{"leaf"}),
		SamplesStored: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "cloudskin_console_telemetry_samples_stored_total",
			Help: "Telemetry samples written to the database.",
		}),
		SamplesDuplicate: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "cloudskin_console_telemetry_samples_duplicate_total",
			Help: "Telemetry samples received again (back-fill retries) and not stored twice.",
		}),
		NodeTransitions: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "cloudskin_console_node_transitions_total",
			Help: "Node status changes, by new status and reason.",
		}, []string{"status", "reason"}),
		NodesByStatus: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Name: "cloudskin_console_nodes",
			Help: "Enrolled nodes by status.",
		}, []string{"status"}),
		HTTPRequests: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "cloudskin_console_http_requests_total",
			Help: "HTTP requests by route and status code.",
		}, []string{"method", "route", "code"}),
		HTTPDuration: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name:    "cloudskin_console_http_request_seconds",
			Help:    "HTTP request latency by route.",
			Buckets: prometheus.ExponentialBuckets(0.0005, 2, 14),
		}, []string{"method", "route"}),
		Enrollments: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "cloudskin_console_enrollments_total",
			Help: "Nodes enrolled.",
		}),
		RetentionDeleted: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "cloudskin_console_telemetry_retention_deleted_total",
			Help: "Telemetry samples deleted by retention.",
		}),
		ActualUnknownCells: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "cloudskin_console_actual_unknown_cells_total",
			Help: "Cell statuses in a node's actual state for cells the console does not have on that node; ignored.",
		}),
	}
	r.MustRegister(m.Rejected, m.MQTTMessages, m.SamplesStored, m.SamplesDuplicate, m.NodeTransitions,
		m.NodesByStatus, m.HTTPRequests, m.HTTPDuration, m.Enrollments, m.RetentionDeleted, m.ActualUnknownCells,
		collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	return m
}

// Reject counts one refused input.
func (m *Metrics) Reject(reason string) { m.Rejected.WithLabelValues(reason).Inc() }
