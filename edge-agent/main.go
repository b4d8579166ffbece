// Command cloudskin-agent is the CloudSkin edge agent: it enrolls with the
// console, keeps an MQTT session with it and reports telemetry and energy,
// buffered on disk while the uplink is down.
package main

import (
	"context"
	"flag"
	"fmt"
	"log/slog"
	"os"
	"os/signal"
	"syscall"

	"github.com/cloudskin/cloudskin/edge-agent/internal/agent"
	"github.com/cloudskin/cloudskin/shared/config"
)

var version = "dev"

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
		fs := flag.NewFlagSet("run", flag.ContinueOnError)
		if err := config.Load(fs, args[1:], &cfg, cfg.Define); err != nil {
			return err
		}
		var level slog.Level
		if err := level.UnmarshalText([]byte(cfg.LogLevel)); err != nil {
			return fmt.Errorf("log-level: %w", err)
		}
		log := slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: level}))
		ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
		defer stop()
		return agent.Run(ctx, cfg, version, log)
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
