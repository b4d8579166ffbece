// Package server wires the console together: database, MQTT bus, fleet
// service and HTTP API, started and stopped as one.
package server

import (
	"errors"
	"flag"
	"fmt"
	"net"
	"strings"
	"time"

	"github.com/cloudskin/cloudskin/console/internal/learning"
	otabundle "github.com/cloudskin/cloudskin/shared/ota"
	"github.com/cloudskin/cloudskin/shared/protocol"
)

// Config is the console's configuration (flags, CLOUDSKIN_* env, YAML).
type Config struct {
	Data         string        `yaml:"data"`
	HTTP         string        `yaml:"http"`
	MQTT         string        `yaml:"mqtt"`
	DB           string        `yaml:"db"`
	Broker       string        `yaml:"broker"`
	BrokerPublic string        `yaml:"broker_public"`
	TopicPrefix  string        `yaml:"topic_prefix"`
	JWTTTL       time.Duration `yaml:"jwt_ttl"`
	Retention    time.Duration `yaml:"telemetry_retention"`
	// NodeRequestTimeout bounds how long the console waits for a node to
	// answer (reading a stream's local records).
	NodeRequestTimeout time.Duration `yaml:"node_request_timeout"`
	// S3 holds the streams' spilled segments when S3Endpoint is set; else
	// they go to the console's own object store (files in the data dir).
	S3Endpoint  string `yaml:"s3_endpoint"`
	S3Bucket    string `yaml:"s3_bucket"`
	S3AccessKey string `yaml:"s3_access_key"`
	S3SecretKey string `yaml:"s3_secret_key"`
	S3Region    string `yaml:"s3_region"`
	S3TLS       bool   `yaml:"s3_tls"`
	// Placement: how often the Planner runs its move rules, how long a node
	// may be offline before its cells restart elsewhere, how long a cell
	// stays where it was bound before an optional move, and how long the
	// two halves of a migration may take before it rolls back.
	PlanInterval     time.Duration `yaml:"plan_interval"`
	OfflineGrace     time.Duration `yaml:"offline_grace"`
	MinResidence     time.Duration `yaml:"min_residence"`
	EnergyHorizon    time.Duration `yaml:"energy_horizon"`
	HoldTimeout      time.Duration `yaml:"hold_timeout"`
	RestoreTimeout   time.Duration `yaml:"restore_timeout"`
	DefaultHeartbeat time.Duration `yaml:"default_heartbeat"`
	MissedHeartbeats int           `yaml:"missed_heartbeats"`
	// Learning plane: how often models train, how much history they read,
	// the forecasts' grid, and the battery charge a green node keeps back.
	LearningInterval time.Duration `yaml:"learning_interval"`
	LearningWindow   time.Duration `yaml:"learning_window"`
	LearningStep     time.Duration `yaml:"learning_step"`
	BatteryReserve   float64       `yaml:"battery_reserve_pct"`
	// ReleaseKey is the public release key (a file, or the key's text)
	// uploaded OTA bundles must be signed with; empty refuses uploads.
	ReleaseKey       string `yaml:"release_key"`
	MosquittoDir     string `yaml:"mosquitto_dir"`
	MosquittoPidfile string `yaml:"mosquitto_pidfile"`
	LogLevel         string `yaml:"log_level"`
}

// DefaultConfig is what `cloudskin-console serve` uses with no flags.
func DefaultConfig() Config {
	return Config{
		Data:               "./data/console",
		HTTP:               ":8080",
		MQTT:               ":1883",
		TopicPrefix:        protocol.DefaultPrefix,
		JWTTTL:             12 * time.Hour,
		NodeRequestTimeout: 10 * time.Second,
		PlanInterval:       5 * time.Second,
		OfflineGrace:       2 * time.Minute,
		MinResidence:       2 * time.Minute,
		EnergyHorizon:      2 * time.Hour,
		HoldTimeout:        2 * time.Minute,
		RestoreTimeout:     3 * time.Minute,
		Retention:          7 * 24 * time.Hour,
		DefaultHeartbeat:   5 * time.Second,
		MissedHeartbeats:   3,
		LearningInterval:   learning.DefaultConfig().Interval,
		LearningWindow:     learning.DefaultConfig().Window,
		LearningStep:       learning.DefaultConfig().Step,
		BatteryReserve:     learning.DefaultConfig().ReservePct,
		LogLevel:           "info",
	}
}

// Define binds the serve flags to c.
func (c *Config) Define(fs *flag.FlagSet) {
	fs.StringVar(&c.Data, "data", c.Data, "data directory (SQLite database, secrets)")
	fs.StringVar(&c.HTTP, "http", c.HTTP, "HTTP listen address")
	fs.StringVar(&c.MQTT, "mqtt", c.MQTT, "embedded MQTT broker listen address (unused with --broker)")
	fs.StringVar(&c.DB, "db", c.DB, "database: empty for SQLite in --data, or postgres://user:pass@host/db")
	fs.StringVar(&c.Broker, "broker", c.Broker, "external MQTT broker tcp://host:port; empty runs the embedded broker")
	fs.StringVar(&c.BrokerPublic, "broker-public", c.BrokerPublic, "broker URL agents are told at enrollment (default: derived from --mqtt or --broker)")
	fs.StringVar(&c.TopicPrefix, "topic-prefix", c.TopicPrefix, "MQTT topic prefix")
	fs.DurationVar(&c.JWTTTL, "jwt-ttl", c.JWTTTL, "lifetime of an API login token")
	fs.StringVar(&c.S3Endpoint, "s3-endpoint", c.S3Endpoint, "S3-compatible store (host:port) for streams' spilled segments; empty: the console's data dir")
	fs.StringVar(&c.S3Bucket, "s3-bucket", c.S3Bucket, "S3 bucket")
	fs.StringVar(&c.S3AccessKey, "s3-access-key", c.S3AccessKey, "S3 access key")
	fs.StringVar(&c.S3SecretKey, "s3-secret-key", c.S3SecretKey, "S3 secret key (prefer CLOUDSKIN_S3_SECRET_KEY)")
	fs.StringVar(&c.S3Region, "s3-region", c.S3Region, "S3 region (default us-east-1)")
	fs.BoolVar(&c.S3TLS, "s3-tls", c.S3TLS, "use https to reach S3")
	fs.DurationVar(&c.PlanInterval, "plan-interval", c.PlanInterval, "how often the Planner applies its move rules")
	fs.DurationVar(&c.OfflineGrace, "offline-grace", c.OfflineGrace, "how long a node may be offline before its cells restart elsewhere from their newest checkpoint")
	fs.DurationVar(&c.MinResidence, "min-residence", c.MinResidence, "how long a cell stays on a node before an optional move (energy, target, overload) may take it away")
	fs.DurationVar(&c.EnergyHorizon, "energy-horizon", c.EnergyHorizon, "how long a green node's energy must last for it to keep and take cells")
	fs.DurationVar(&c.HoldTimeout, "hold-timeout", c.HoldTimeout, "how long a migration's source may take to checkpoint the cell before the move aborts")
	fs.DurationVar(&c.RestoreTimeout, "restore-timeout", c.RestoreTimeout, "how long a migration's target may take to run the restored cell before the move rolls back")
	fs.DurationVar(&c.NodeRequestTimeout, "node-request-timeout", c.NodeRequestTimeout, "how long to wait for a node to answer a request (stream records it holds)")
	fs.DurationVar(&c.Retention, "telemetry-retention", c.Retention, "how long telemetry is kept")
	fs.DurationVar(&c.DefaultHeartbeat, "default-heartbeat", c.DefaultHeartbeat, "heartbeat assumed for nodes that do not state theirs")
	fs.IntVar(&c.MissedHeartbeats, "missed-heartbeats", c.MissedHeartbeats, "missed heartbeats before a node is offline")
	fs.StringVar(&c.MosquittoDir, "mosquitto-dir", c.MosquittoDir, "with --broker: directory where the console writes Mosquitto's passwd and acl files")
	fs.StringVar(&c.MosquittoPidfile, "mosquitto-pidfile", c.MosquittoPidfile, "with --broker: Mosquitto's pid file, signalled (HUP) to reload credentials")
	fs.DurationVar(&c.LearningInterval, "learning-interval", c.LearningInterval, "how often the learning plane retrains its models (0: only on demand, POST /api/v1/learning/train)")
	fs.DurationVar(&c.LearningWindow, "learning-window", c.LearningWindow, "how much telemetry history a training reads (at least 72h)")
	fs.DurationVar(&c.LearningStep, "learning-step", c.LearningStep, "the grid the forecasts work on; must divide a day")
	fs.Float64Var(&c.BatteryReserve, "battery-reserve", c.BatteryReserve, "battery percent a green node keeps back: its energy forecast ends there")
	fs.StringVar(&c.ReleaseKey, "release-key", c.ReleaseKey, "public release key (release.pub from `cloudskin-console keys create`, or its text) OTA bundle uploads must be signed with; empty refuses uploads")
	fs.StringVar(&c.LogLevel, "log-level", c.LogLevel, "debug, info, warn or error")
}

// Validate says which field is wrong and why.
func (c *Config) Validate() error {
	var errs []error
	if c.Data == "" {
		errs = append(errs, errors.New("data: must name a directory"))
	}
	if _, _, err := net.SplitHostPort(c.HTTP); err != nil {
		errs = append(errs, fmt.Errorf("http: %q is not host:port: %v", c.HTTP, err))
	}
	if c.Broker == "" {
		if _, _, err := net.SplitHostPort(c.MQTT); err != nil {
			errs = append(errs, fmt.Errorf("mqtt: %q is not host:port: %v", c.MQTT, err))
		}
	} else if !strings.HasPrefix(c.Broker, "tcp://") && !strings.HasPrefix(c.Broker, "ssl://") {
		errs = append(errs, fmt.Errorf("broker: %q must start with tcp:// or ssl://", c.Broker))
	}
	if c.Broker == "" && (c.MosquittoDir != "" || c.MosquittoPidfile != "") {
		errs = append(errs, errors.New("mosquitto-dir/mosquitto-pidfile: only meaningful with --broker"))
	}
	if c.NodeRequestTimeout < 100*time.Millisecond || c.NodeRequestTimeout > 5*time.Minute {
		errs = append(errs, fmt.Errorf("node-request-timeout: %s must be between 100ms and 5m", c.NodeRequestTimeout))
	}
	for name, d := range map[string]time.Duration{"plan-interval": c.PlanInterval, "hold-timeout": c.HoldTimeout, "restore-timeout": c.RestoreTimeout} {
		if d < 100*time.Millisecond || d > time.Hour {
			errs = append(errs, fmt.Errorf("%s: %s must be between 100ms and 1h", name, d))
		}
	}
	for name, d := range map[string]time.Duration{"offline-grace": c.OfflineGrace, "min-residence": c.MinResidence, "energy-horizon": c.EnergyHorizon} {
		if d < 0 || d > 7*24*time.Hour {
			errs = append(errs, fmt.Errorf("%s: %s must be between 0 and 168h", name, d))
		}
	}
	lc := c.learning()
	if err := lc.Validate(); err != nil {
		errs = append(errs, err)
	}
	if c.LearningWindow > c.Retention {
		errs = append(errs, fmt.Errorf("learning-window: %s reaches past the telemetry kept (telemetry-retention %s)", c.LearningWindow, c.Retention))
	}
	if c.JWTTTL < time.Minute || c.JWTTTL > 30*24*time.Hour {
		errs = append(errs, fmt.Errorf("jwt-ttl: %s must be between 1m and 720h", c.JWTTTL))
	}
	if c.MissedHeartbeats < 1 {
		errs = append(errs, errors.New("missed-heartbeats: must be at least 1"))
	}
	if c.DefaultHeartbeat < 100*time.Millisecond {
		errs = append(errs, errors.New("default-heartbeat: must be at least 100ms"))
	}
	if strings.ContainsAny(c.TopicPrefix, "+#") || strings.Trim(c.TopicPrefix, "/") == "" {
		errs = append(errs, fmt.Errorf("topic-prefix: %q must be a plain topic path", c.TopicPrefix))
	}
	if c.ReleaseKey != "" {
		if _, err := otabundle.LoadPublicKey(c.ReleaseKey); err != nil {
			errs = append(errs, fmt.Errorf("release-key: %v", err))
		}
	}
	switch c.LogLevel {
	case "debug", "info", "warn", "error":
	default:
		errs = append(errs, fmt.Errorf("log-level: %q is not debug, info, warn or error", c.LogLevel))
	}
	return errors.Join(errs...)
}

// brokerPublic is the URL agents get at enrollment.
func (c *Config) brokerPublic() string {
	if c.BrokerPublic != "" {
		return c.BrokerPublic
	}
	if c.Broker != "" {
		return c.Broker
	}
	host, port, _ := net.SplitHostPort(c.MQTT)
	if host == "" || host == "0.0.0.0" || host == "::" {
		host = "127.0.0.1"
	}
	return "tcp://" + net.JoinHostPort(host, port)
}

// learning is the learning plane's configuration.
func (c *Config) learning() learning.Config {
	lc := learning.DefaultConfig()
	lc.Interval, lc.Window, lc.Step, lc.ReservePct = c.LearningInterval, c.LearningWindow, c.LearningStep, c.BatteryReserve
	return lc
}
