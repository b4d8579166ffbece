package config

import (
	"flag"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

type testConfig struct {
	Data     string            `yaml:"data"`
	HTTP     string            `yaml:"http"`
	Interval time.Duration     `yaml:"interval"`
	Labels   map[string]string `yaml:"labels"`
}

func load(t *testing.T, args []string, yamlText string) (testConfig, error) {
	t.Helper()
	cfg := testConfig{Data: "default-data", HTTP: ":8080", Interval: 5 * time.Second}
	if yamlText != "" {
		p := filepath.Join(t.TempDir(), "c.yaml")
		if err := os.WriteFile(p, []byte(yamlText), 0o600); err != nil {
			t.Fatal(err)
		}
		args = append([]string{"--config", p}, args...)
	}
	fs := flag.NewFlagSet("t", flag.ContinueOnError)
	fs.SetOutput(new(strings.Builder))
	err := Load(fs, args, &cfg, func(fs *flag.FlagSet) {
		fs.StringVar(&cfg.Data, "data", cfg.Data, "")
		fs.StringVar(&cfg.HTTP, "http", cfg.HTTP, "")
		fs.DurationVar(&cfg.Interval, "interval", cfg.Interval, "")
		fs.Var((*StringMap)(&cfg.Labels), "label", "")
	})
	return cfg, err
}

func TestPrecedence(t *testing.T) {
	tests := []struct {
		name             string
		args             []string
		env              map[string]string
		yaml             string
		wantData, wantHT string
		wantInterval     time.Duration
	}{
		{name: "defaults", wantData: "default-data", wantHT: ":8080", wantInterval: 5 * time.Second},
		{name: "yaml over defaults", yaml: "data: y\ninterval: 2s\n", wantData: "y", wantHT: ":8080", wantInterval: 2 * time.Second},
		{name: "env over yaml", yaml: "data: y\n", env: map[string]string{"CLOUDSKIN_DATA": "e"}, wantData: "e", wantHT: ":8080", wantInterval: 5 * time.Second},
		{name: "flag over env", args: []string{"--data", "f"}, env: map[string]string{"CLOUDSKIN_DATA": "e", "CLOUDSKIN_HTTP": ":9"}, wantData: "f", wantHT: ":9", wantInterval: 5 * time.Second},
		{name: "empty yaml file", yaml: "\n", wantData: "default-data", wantHT: ":8080", wantInterval: 5 * time.Second},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			for k, v := range tc.env {
				t.Setenv(k, v)
			}
			cfg, err := load(t, tc.args, tc.yaml)
			if err != nil {
				t.Fatal(err)
			}
			if cfg.Data != tc.wantData || cfg.HTTP != tc.wantHT || cfg.Interval != tc.wantInterval {
				t.Fatalf("got %+v, want data=%s http=%s interval=%s", cfg, tc.wantData, tc.wantHT, tc.wantInterval)
			}
		})
	}
}

func TestBadInput(t *testing.T) {
	tests := []struct {
		name, yaml, want string
		args             []string
		env              map[string]string
	}{
		{name: "unknown yaml field", yaml: "dta: x\n", want: "field dta not found"},
		{name: "yaml type", yaml: "interval: [1]\n", want: "config file"},
		{name: "bad env duration", env: map[string]string{"CLOUDSKIN_INTERVAL": "soon"}, want: "CLOUDSKIN_INTERVAL"},
		{name: "bad label", args: []string{"--label", "nokey"}, want: "not key=value"},
		{name: "missing file", args: []string{"--config", "/nonexistent/c.yaml"}, want: "no such file"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			for k, v := range tc.env {
				t.Setenv(k, v)
			}
			_, err := load(t, tc.args, tc.yaml)
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("error %v, want it to mention %q", err, tc.want)
			}
		})
	}
}

func TestLabels(t *testing.T) {
	cfg, err := load(t, []string{"--label", "site=a,power=green", "--label", "rack=3"}, "labels:\n  zone: z\n")
	if err != nil {
		t.Fatal(err)
	}
	want := map[string]string{"zone": "z", "site": "a", "power": "green", "rack": "3"}
	if len(cfg.Labels) != len(want) {
		t.Fatalf("labels %v, want %v", cfg.Labels, want)
	}
	for k, v := range want {
		if cfg.Labels[k] != v {
			t.Fatalf("labels %v, want %v", cfg.Labels, want)
		}
	}
}
