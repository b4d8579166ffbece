// Command cloudskin-console is the CloudSkin cloud console: fleet registry,
// enrollment, telemetry store and HTTP API, with an embedded MQTT broker.
package main

import (
	"context"
	"flag"
	"fmt"
	"log/slog"
	"os"
	"os/signal"
	"path/filepath"
	"syscall"
	"time"

	"github.com/cloudskin/cloudskin/console/internal/fleet"
	"github.com/cloudskin/cloudskin/console/internal/metrics"
	"github.com/cloudskin/cloudskin/console/internal/server"
	"github.com/cloudskin/cloudskin/console/internal/store"
	"github.com/cloudskin/cloudskin/shared/config"
	"github.com/cloudskin/cloudskin/shared/ota"
)

const usage = `usage: cloudskin-console <command> [flags]

commands:
  serve          run the console (HTTP API, MQTT, fleet)
  token create   make a one-time enrollment token for a node
  keys create    make the ed25519 release key pair that signs OTA bundles
  version        print the version

Run "cloudskin-console <command> -h" for a command's flags. Every flag can
also come from CLOUDSKIN_<FLAG> in the environment or a YAML file (--config).
`

var version = "dev"

func main() {
	if err := run(os.Args[1:]); err != nil {
		fmt.Fprintln(os.Stderr, "cloudskin-console:", err)
		os.Exit(1)
	}
}

func run(args []string) error {
	if len(args) == 0 {
		fmt.Fprint(os.Stderr, usage)
		return fmt.Errorf("no command")
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	switch args[0] {
	case "serve":
		cfg := server.DefaultConfig()
		fs := flag.NewFlagSet("serve", flag.ContinueOnError)
		if err := config.Load(fs, args[1:], &cfg, cfg.Define); err != nil {
			return err
		}
		return server.Run(ctx, cfg, logger(cfg.LogLevel))
	case "token":
		if len(args) < 2 || args[1] != "create" {
			return fmt.Errorf("usage: cloudskin-console token create --data DIR [--db URL] [--ttl 24h] [--description TEXT]")
		}
		return tokenCreate(ctx, args[2:])
	case "keys":
		if len(args) < 2 || args[1] != "create" {
			return fmt.Errorf("usage: cloudskin-console keys create [--dir DIR]")
		}
		return keysCreate(args[2:])
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

func tokenCreate(ctx context.Context, args []string) error {
	cfg := struct {
		Data        string        `yaml:"data"`
		DB          string        `yaml:"db"`
		TTL         time.Duration `yaml:"ttl"`
		Description string        `yaml:"description"`
	}{Data: "./data/console", TTL: 24 * time.Hour}
	fs := flag.NewFlagSet("token create", flag.ContinueOnError)
	err := config.Load(fs, args, &cfg, func(fs *flag.FlagSet) {
		fs.StringVar(&cfg.Data, "data", cfg.Data, "console data directory")
		fs.StringVar(&cfg.DB, "db", cfg.DB, "database URL (default: SQLite in --data)")
		fs.DurationVar(&cfg.TTL, "ttl", cfg.TTL, "how long the token stays valid")
		fs.StringVar(&cfg.Description, "description", cfg.Description, "what the token is for")
	})
	if err != nil {
		return err
	}
	log := logger("warn")
	st, err := store.Open(ctx, cfg.DB, cfg.Data, log)
	if err != nil {
		return err
	}
	defer st.Close()
	fl := fleet.New(fleet.Config{}, st, metrics.New(), log)
	tok, exp, err := fl.CreateToken(ctx, cfg.TTL, cfg.Description, "cli")
	if err != nil {
		return err
	}
	fmt.Println(tok)
	fmt.Fprintf(os.Stderr, "enrollment token valid until %s, usable once\n", exp.Format(time.RFC3339))
	return nil
}

// keysCreate writes a new release key pair and says where each half goes.
func keysCreate(args []string) error {
	dir := "./release-keys"
	fs := flag.NewFlagSet("keys create", flag.ContinueOnError)
	fs.StringVar(&dir, "dir", dir, "directory for release.key (private, mode 0600) and release.pub")
	if err := fs.Parse(args); err != nil {
		return err
	}
	if fs.NArg() > 0 {
		return fmt.Errorf("keys create: unexpected argument %q", fs.Arg(0))
	}
	for _, name := range []string{ota.PrivateKeyFile, ota.PublicKeyFile} {
		if _, err := os.Stat(filepath.Join(dir, name)); err == nil {
			return fmt.Errorf("keys create: %s exists already: refusing to overwrite a release key (agents trust its public half)", filepath.Join(dir, name))
		}
	}
	pub, err := ota.CreateKeys(dir)
	if err != nil {
		return fmt.Errorf("keys create: %w", err)
	}
	priv, pubPath := filepath.Join(dir, ota.PrivateKeyFile), filepath.Join(dir, ota.PublicKeyFile)
	fmt.Println(ota.FormatPublicKey(pub))
	fmt.Fprintf(os.Stderr, `release key pair created:
  %s  private (mode 0600): signs OTA bundles. Keep it off the console and
      the nodes, with whoever builds releases, and back it up: a lost key
      means re-flashing every node with a new public key.
  %s  public (printed above): verifies bundles.
use it:
  console:  cloudskin-console serve --release-key %s   (uploads must be signed with it)
  agents:   cloudskin-agent run --release-key %s   (a path or the key text; packaged images build it in)
  images:   RELEASE_SIGNING_KEY=%s make images   (signs the OTA bundle; the
            agent's build gets the public key, so images trust it from the start)
`, priv, pubPath, pubPath, pubPath, priv)
	return nil
}

func logger(level string) *slog.Logger {
	var l slog.Level
	_ = l.UnmarshalText([]byte(level))
	return slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: l}))
}
