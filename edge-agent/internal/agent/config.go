// Package agent wires the edge agent: enrollment, the MQTT session with the
// console, heartbeats and telemetry buffered on disk until the console has it.
package agent

import (
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"net"
	"net/url"
	"strconv"
	"strings"
	"time"

	"github.com/cloudskin/cloudskin/edge-agent/internal/autonomy"
	"github.com/cloudskin/cloudskin/shared/config"
	"github.com/cloudskin/cloudskin/shared/protocol"
)

// Config is the agent's configuration (flags, CLOUDSKIN_* env, YAML).
type Config struct {
	Console           string            `yaml:"console"`
	Name              string            `yaml:"name"`
	Data              string            `yaml:"data"`
	Token             string            `yaml:"token"`
	TokenFile         string            `yaml:"token_file"`
	Broker            string            `yaml:"broker"`
	Labels            map[string]string `yaml:"labels"`
	Lat               string            `yaml:"lat"`
	Lon               string            `yaml:"lon"`
	PowerClass        string            `yaml:"power_class"`
	TelemetryInterval time.Duration     `yaml:"telemetry_interval"`
	Heartbeat         time.Duration     `yaml:"heartbeat"`
	HTTP              string            `yaml:"http"`
	Sensors           string            `yaml:"sensors"`
	OutboxMaxBytes    int64             `yaml:"outbox_max_bytes"`
	PowerIdleW        float64           `yaml:"power_idle_w"`
	PowerMaxW         float64           `yaml:"power_max_w"`
	LogLevel          string            `yaml:"log_level"`
	// IngestBroker is an existing local MQTT broker (e.g. Mosquitto) the agent
	// subscribes to for stream topics instead of running its own on Sensors.
	IngestBroker   string `yaml:"ingest_broker"`
	IngestClientID string `yaml:"ingest_client_id"`
	// Streams declared locally, so a node ingests before it ever reaches the
	// console; they win over desired streams of the same name.
	Streams             []protocol.StreamSpec `yaml:"streams"`
	SpillBandwidth      int64                 `yaml:"spill_bandwidth"`
	RehydrateCacheBytes int64                 `yaml:"rehydrate_cache_bytes"`
	// TargetTopics are sensor-broker filters carrying moving targets' GPS
	// as JSON {"lat":…,"lon":…} (optionally "target"); the agent forwards
	// the positions to the console so cells can follow their target.
	TargetTopics []string `yaml:"target_topics"`
	// Autonomy lets a green node that cannot reach the console pause its
	// low-priority cells when its energy forecast falls short (edge
	// autonomy, docs/architecture.md).
	Autonomy bool `yaml:"autonomy"`
	// AutonomyGrace is how long the console must be unreachable before the
	// node decides alone (a short blip is not an outage).
	AutonomyGrace time.Duration `yaml:"autonomy_grace"`
	// AutonomyHorizon is how long the battery must last for the node to
	// keep its low-priority cells running; they resume above 1.5× it. The
	// default is the console's --energy-horizon.
	AutonomyHorizon time.Duration `yaml:"autonomy_horizon"`
	// AutonomyReservePct is the charge the forecast runs the battery down to.
	AutonomyReservePct float64 `yaml:"autonomy_reserve_pct"`
	// AutonomyBatteryWh is the battery's usable capacity; 0 learns it.
	AutonomyBatteryWh float64 `yaml:"autonomy_battery_wh"`
	// ReleaseKey is the public key (file path or key text) update bundles
	// must be signed with; main sets the one built in. Empty refuses every
	// update (docs/ota.md).
	ReleaseKey string `yaml:"release_key"`
}

// DefaultConfig is what `cloudskin-agent run` uses with no flags.
func DefaultConfig() Config {
	return Config{
		Console:             "http://127.0.0.1:8080",
		Data:                "./data/agent",
		TelemetryInterval:   5 * time.Second,
		Heartbeat:           5 * time.Second,
		HTTP:                "127.0.0.1:9180",
		Sensors:             "127.0.0.1:1884",
		OutboxMaxBytes:      64 << 20,
		PowerIdleW:          20,
		PowerMaxW:           60,
		LogLevel:            "info",
		RehydrateCacheBytes: 64 << 20,
		Autonomy:            true,
		AutonomyGrace:       30 * time.Second,
		AutonomyHorizon:     2 * time.Hour,
		AutonomyReservePct:  10,
	}
}

// Define binds the run flags to c.
func (c *Config) Define(fs *flag.FlagSet) {
	fs.StringVar(&c.Console, "console", c.Console, "console URL")
	fs.StringVar(&c.Name, "name", c.Name, "node name (DNS label); fixed at enrollment")
	fs.StringVar(&c.Data, "data", c.Data, "data directory (credential, telemetry outbox)")
	fs.StringVar(&c.Token, "token", c.Token, "one-time enrollment token (first start only)")
	fs.StringVar(&c.TokenFile, "token-file", c.TokenFile, "file holding the enrollment token, read on first start (e.g. dropped on the image)")
	fs.StringVar(&c.Broker, "broker", c.Broker, "MQTT broker URL; default: the one the console gave at enrollment")
	fs.Var((*config.StringMap)(&c.Labels), "label", "node label key=value (repeatable)")
	fs.StringVar(&c.Lat, "lat", c.Lat, "latitude in decimal degrees (label lat)")
	fs.StringVar(&c.Lon, "lon", c.Lon, "longitude in decimal degrees (label lon)")
	fs.StringVar(&c.PowerClass, "power-class", c.PowerClass, "green (solar/battery) or grid (label power)")
	fs.DurationVar(&c.TelemetryInterval, "telemetry-interval", c.TelemetryInterval, "how often telemetry is sampled")
	fs.DurationVar(&c.Heartbeat, "heartbeat", c.Heartbeat, "how often the agent says it is alive")
	fs.StringVar(&c.HTTP, "http", c.HTTP, "listen address for /metrics and /healthz; empty disables")
	fs.StringVar(&c.Sensors, "sensors", c.Sensors, "listen address of the local sensor MQTT broker that feeds cells; empty disables")
	fs.Int64Var(&c.OutboxMaxBytes, "outbox-max-bytes", c.OutboxMaxBytes, "disk quota for telemetry buffered while offline; the oldest is dropped (and counted) beyond it")
	fs.Float64Var(&c.PowerIdleW, "power-idle-w", c.PowerIdleW, "power model: watts at idle (used without RAPL or battery readings)")
	fs.Float64Var(&c.PowerMaxW, "power-max-w", c.PowerMaxW, "power model: watts at full CPU")
	fs.StringVar(&c.LogLevel, "log-level", c.LogLevel, "debug, info, warn or error")
	fs.StringVar(&c.IngestBroker, "ingest-broker", c.IngestBroker, "existing local MQTT broker (tcp://host:port) to subscribe to for stream topics; empty: the agent's own broker on --sensors")
	fs.StringVar(&c.IngestClientID, "ingest-client-id", c.IngestClientID, "client id of the persistent session on --ingest-broker (default cloudskin-ingest-<name>)")
	fs.Var((*listFlag)(&c.TargetTopics), "target-topic", "sensor-broker filter carrying a moving target's GPS as JSON {\"lat\",\"lon\"}; the target is the payload's \"target\" or the level the filter's first + matches (repeatable)")
	fs.Var((*streamFlag)(&c.Streams), "stream", "declare a local stream as JSON, e.g. '{\"name\":\"sensors\",\"topics\":[\"sensors/#\"],\"spill\":true}' (repeatable)")
	fs.Int64Var(&c.SpillBandwidth, "spill-bandwidth", c.SpillBandwidth, "bytes per second the node may use to upload spilled segments; 0: no cap")
	fs.Int64Var(&c.RehydrateCacheBytes, "rehydrate-cache-bytes", c.RehydrateCacheBytes, "disk cache for spilled segments read back from the object store")
	fs.BoolVar(&c.Autonomy, "autonomy", c.Autonomy, "on a green node that cannot reach the console, pause low-priority cells when the battery will not last --autonomy-horizon")
	fs.DurationVar(&c.AutonomyGrace, "autonomy-grace", c.AutonomyGrace, "how long the console must be unreachable before the node decides alone")
	fs.DurationVar(&c.AutonomyHorizon, "autonomy-horizon", c.AutonomyHorizon, "how long the battery must last to keep low-priority cells running (they resume above 1.5x); as the console's --energy-horizon")
	fs.Float64Var(&c.AutonomyReservePct, "autonomy-reserve-pct", c.AutonomyReservePct, "battery charge (%) the energy forecast runs down to")
	fs.StringVar(&c.ReleaseKey, "release-key", c.ReleaseKey, "public key (file or key text) over-the-air update bundles must be signed with; default: the one built in; none refuses updates")
	fs.Float64Var(&c.AutonomyBatteryWh, "autonomy-battery-wh", c.AutonomyBatteryWh, "usable battery capacity in Wh; 0 learns it from how the charge moves")
}

// Validate says which field is wrong and why, and folds lat/lon/power-class
// into the labels.
func (c *Config) Validate() error {
	var errs []error
	if u, err := url.Parse(c.Console); err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
		errs = append(errs, fmt.Errorf("console: %q is not an http(s) URL", c.Console))
	}
	if err := protocol.ValidateNodeName(c.Name); err != nil {
		errs = append(errs, fmt.Errorf("name: %w", err))
	}
	if c.Data == "" {
		errs = append(errs, errors.New("data: must name a directory"))
	}
	if c.Labels == nil {
		c.Labels = map[string]string{}
	}
	for key, v := range map[string]string{"lat": c.Lat, "lon": c.Lon} {
		if v == "" {
			continue
		}
		if _, err := strconv.ParseFloat(v, 64); err != nil {
			errs = append(errs, fmt.Errorf("%s: %q is not a number", key, v))
		}
		c.Labels[key] = v
	}
	switch c.PowerClass {
	case "":
	case "green", "grid":
		c.Labels["power"] = c.PowerClass
	default:
		errs = append(errs, fmt.Errorf("power-class: %q is not green or grid", c.PowerClass))
	}
	if c.TelemetryInterval < 100*time.Millisecond {
		errs = append(errs, errors.New("telemetry-interval: must be at least 100ms"))
	}
	if c.Heartbeat < 100*time.Millisecond || c.Heartbeat > time.Hour {
		errs = append(errs, errors.New("heartbeat: must be between 100ms and 1h"))
	}
	if c.HTTP != "" {
		if _, _, err := net.SplitHostPort(c.HTTP); err != nil {
			errs = append(errs, fmt.Errorf("http: %q is not host:port", c.HTTP))
		}
	}
	if c.Sensors != "" {
		if _, _, err := net.SplitHostPort(c.Sensors); err != nil {
			errs = append(errs, fmt.Errorf("sensors: %q is not host:port", c.Sensors))
		}
	}
	if c.OutboxMaxBytes < 1<<20 {
		errs = append(errs, errors.New("outbox-max-bytes: must be at least 1 MiB"))
	}
	if c.IngestBroker != "" {
		if u, err := url.Parse(c.IngestBroker); err != nil || (u.Scheme != "tcp" && u.Scheme != "mqtt") || u.Host == "" {
			errs = append(errs, fmt.Errorf("ingest-broker: %q is not a tcp://host:port URL", c.IngestBroker))
		}
	}
	if c.IngestClientID == "" && c.Name != "" {
		c.IngestClientID = "cloudskin-ingest-" + c.Name
	}
	names := map[string]bool{}
	for i := range c.Streams {
		if err := c.Streams[i].Validate(); err != nil {
			errs = append(errs, fmt.Errorf("streams: %w", err))
		} else if names[c.Streams[i].Name] {
			errs = append(errs, fmt.Errorf("streams: %s declared twice", c.Streams[i].Name))
		}
		names[c.Streams[i].Name] = true
	}
	for _, f := range c.TargetTopics {
		if err := protocol.ValidateFilter(f); err != nil {
			errs = append(errs, fmt.Errorf("target-topic %q: %w", f, err))
		}
	}
	if c.SpillBandwidth < 0 || c.RehydrateCacheBytes < 0 {
		errs = append(errs, errors.New("spill-bandwidth/rehydrate-cache-bytes: must not be negative"))
	}
	if c.AutonomyGrace < 0 || c.AutonomyGrace > 24*time.Hour {
		errs = append(errs, errors.New("autonomy-grace: must be between 0 and 24h"))
	}
	if c.AutonomyHorizon < time.Minute || c.AutonomyHorizon > autonomy.Window/2 {
		errs = append(errs, fmt.Errorf("autonomy-horizon: must be between 1m and %s (1.5x it must fit the forecast's %s window)", autonomy.Window/2, autonomy.Window))
	}
	if !(c.AutonomyReservePct > 0 && c.AutonomyReservePct <= 90) {
		errs = append(errs, errors.New("autonomy-reserve-pct: must be above 0 and at most 90"))
	}
	if !(c.AutonomyBatteryWh == 0 || (c.AutonomyBatteryWh >= autonomy.MinCapacityWh && c.AutonomyBatteryWh <= autonomy.MaxCapacityWh)) {
		errs = append(errs, fmt.Errorf("autonomy-battery-wh: must be 0 (learn it) or between %d and %d", autonomy.MinCapacityWh, autonomy.MaxCapacityWh))
	}
	if c.PowerIdleW < 0 || c.PowerMaxW < c.PowerIdleW {
		errs = append(errs, errors.New("power-idle-w/power-max-w: need 0 <= idle <= max"))
	}
	return errors.Join(errs...)
}

// streamFlag parses --stream JSON values.
type streamFlag []protocol.StreamSpec

func (f *streamFlag) String() string {
	if f == nil || len(*f) == 0 {
		return ""
	}
	b, _ := json.Marshal(*f)
	return string(b)
}

func (f *streamFlag) Set(v string) error {
	var s protocol.StreamSpec
	dec := json.NewDecoder(strings.NewReader(v))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&s); err != nil {
		return fmt.Errorf("stream %q: %w", v, err)
	}
	*f = append(*f, s)
	return nil
}

// listFlag collects a repeatable string flag.
type listFlag []string

func (f *listFlag) String() string { return strings.Join(*f, ",") }

func (f *listFlag) Set(v string) error {
	*f = append(*f, v)
	return nil
}
