// Command cloudskin-agent is the CloudSkin edge agent: it enrolls with the
// console, keeps an MQTT session with it and reports telemetry and energy,
// buffered on disk while the uplink is down.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"log/slog"
	"os"
	"os/signal"
	"syscall"

	"github.com/cloudskin/cloudskin/edge-agent/internal/agent"
	"github.com/cloudskin/cloudskin/edge-agent/internal/ota"
	"github.com/cloudskin/cloudskin/shared/config"
)

// Set at link time (-ldflags -X main.name=value).
var (
	version = "dev"
	// releaseKey is the release public key (its text form, as in
	// release.pub) update bundles must be signed with; --release-key
	// overrides it. Image builds set it; without any key, updates are
	// refused.
	releaseKey = ""
	// testBreakHealth, when not empty, builds a deliberately broken
	// release for the over-the-air update tests: it points the agent at a
	// broker address nobody listens on, so the release cannot reach the
	// console and fails its health check honestly. Real builds never set
	// it (docs/ota.md).
	testBreakHealth = ""
)

// deadBroker is where a testBreakHealth build connects: nothing listens
// on port 1 of the loopback.
const deadBroker = "tcp://127.0.0.1:1"

const usage = `usage: cloudskin-agent <command> [flags]

commands:
  run       run the agent (enrolls on first start with --token)
  version   print the version

Every flag can also come from CLOUDSKIN_<FLAG> in the environment or a YAML
file (--config). Run "cloudskin-agent run -h" for the flags.
`

func main() {
	if err := run(os.Args[1:]); err != nil {
		fmt.Fprintln(os.Stderr, "cloudskin-agent:", err)
		os.Exit(1)
	}
}

func run(args []string) error {
	if len(args) == 0 {
		fmt.Fprint(os.Stderr, usage)
		return fmt.Errorf("no command")
	}
	switch args[0] {
	case "run":
		cfg := agent.DefaultConfig()
		cfg.ReleaseKey = releaseKey
		fs := flag.NewFlagSet("run", flag.ContinueOnError)
		if err := config.Load(fs, args[1:], &cfg, cfg.Define); err != nil {
			return err
		}
		var level slog.Level
		if err := level.UnmarshalText([]byte(cfg.LogLevel)); err != nil {
			return fmt.Errorf("log-level: %w", err)
		}
		log := slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: level}))
		// Before anything else: this may exec the release an update
		// installed, or roll back one that keeps crashing.
		ota.Boot(cfg.Data, version, log)
		if testBreakHealth != "" {
			log.Warn("test build with a broken health check: the broker is unreachable on purpose", "broker", deadBroker)
			cfg.Broker = deadBroker
		}
		ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
		err := agent.Run(ctx, cfg, version, log)
		stop()
		if errors.Is(err, ota.ErrRestart) {
			return ota.Reexec(cfg.Data)
		}
		return err
	case "version":
		fmt.Println(version)
		return nil
	case "-h", "--help", "help":
		fmt.Print(usage)
		return nil
	default:
		fmt.Fprint(os.Stderr, usage)
		return fmt.Errorf("unknown command %q", args[0])
	}
}
