package server

import (
	"flag"
	"io"
	"path/filepath"
	"strings"
	"testing"

	"github.com/cloudskin/cloudskin/shared/config"
)

func loadFile(path string) (Config, error) {
	cfg := DefaultConfig()
	fs := flag.NewFlagSet("serve", flag.ContinueOnError)
	fs.SetOutput(io.Discard)
	if err := config.Load(fs, []string{"--config", path}, &cfg, cfg.Define); err != nil {
		return cfg, err
	}
	return cfg, cfg.Validate()
}

func TestConfigFiles(t *testing.T) {
	expectedErrors := map[string]string{
		"unknown-field.bad.yml":            "field htpp not found",
		"broker-scheme.bad.yml":            "broker:",
		"mosquitto-without-broker.bad.yml": "only meaningful with --broker",
		"http.bad.yml":                     "http:",
		"jwt-ttl.bad.yml":                  "jwt-ttl:",
		"prefix.bad.yml":                   "topic-prefix:",
		"log-level.bad.yml":                "log-level:",
		"release-key.bad.yml":              "release-key:",
	}
	files, _ := filepath.Glob("testdata/*.yml")
	if len(files) < len(expectedErrors)+2 {
		t.Fatalf("found %d fixtures", len(files))
	}
	for _, f := range files {
		name := filepath.Base(f)
		t.Run(name, func(t *testing.T) {
			_, err := loadFile(f)
			if strings.HasSuffix(name, ".good.yml") {
				if err != nil {
					t.Fatal(err)
				}
				return
			}
			want, ok := expectedErrors[name]
			if !ok {
				t.Fatalf("no expected error for %s", name)
			}
			if err == nil || !strings.Contains(err.Error(), want) {
				t.Fatalf("error %v, want it to contain %q", err, want)
			}
		})
	}
}

func TestBrokerPublic(t *testing.T) {
	for _, tc := range []struct {
		cfg  Config
		want string
	}{
		{Config{MQTT: ":1883"}, "tcp://127.0.0.1:1883"},
		{Config{MQTT: "10.0.0.5:1884"}, "tcp://10.0.0.5:1884"},
		{Config{Broker: "tcp://mq:1883"}, "tcp://mq:1883"},
		{Config{Broker: "tcp://mq:1883", BrokerPublic: "ssl://mq.example:8883"}, "ssl://mq.example:8883"},
	} {
		if got := tc.cfg.brokerPublic(); got != tc.want {
			t.Errorf("%+v: %s, want %s", tc.cfg, got, tc.want)
		}
	}
}

// TestExampleConfig keeps deploy/config/console.yaml loadable and valid.
func TestExampleConfig(t *testing.T) {
	cfg, err := loadFile("../../../deploy/config/console.yaml")
	if err != nil {
		t.Fatal(err)
	}
	if cfg.Data != "/var/lib/cloudskin/console" || cfg.MissedHeartbeats != 3 {
		t.Fatalf("example not applied: %+v", cfg)
	}
}
