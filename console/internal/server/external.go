package server

import (
	"context"
	"fmt"
	"log/slog"
	"sync"

	"github.com/cloudskin/cloudskin/console/internal/fleet"
	"github.com/cloudskin/cloudskin/console/internal/mosquitto"
	"github.com/cloudskin/cloudskin/console/internal/store"
)

// configureExternalBroker keeps an external Mosquitto's password file in
// step with the enrolled nodes: written at start and after each enrollment,
// then the broker is told to reload. Without --mosquitto-dir the operator
// manages the broker's credentials (another broker, or dynamic security).
func configureExternalBroker(ctx context.Context, fcfg *fleet.Config, cfg Config, st *store.Store, consolePassword string, log *slog.Logger) error {
	fcfg.HashBrokerPassword = mosquitto.HashPassword
	if cfg.MosquittoDir == "" {
		log.Warn("external broker without --mosquitto-dir: the broker must be given node credentials by other means")
		return nil
	}
	files := mosquitto.Files{Dir: cfg.MosquittoDir, Prefix: cfg.TopicPrefix, ConsoleUser: ConsoleBrokerUser}
	var mu sync.Mutex
	write := func(ctx context.Context) error {
		mu.Lock()
		defer mu.Unlock()
		nodes, err := st.ListNodes(ctx)
		if err != nil {
			return err
		}
		creds := []mosquitto.Credential{{Username: ConsoleBrokerUser, Password: consolePassword}}
		for _, n := range nodes {
			if n.BrokerHash == "" {
				log.Warn("node has no broker credential (enrolled while the broker was embedded): re-enroll it", "node", n.Name)
				continue
			}
			creds = append(creds, mosquitto.Credential{Username: n.Name, Hash: n.BrokerHash})
		}
		if err := files.Write(creds); err != nil {
			return fmt.Errorf("write mosquitto files in %s: %w", cfg.MosquittoDir, err)
		}
		if cfg.MosquittoPidfile != "" {
			if err := mosquitto.Reload(cfg.MosquittoPidfile); err != nil {
				// Not fatal: a Mosquitto that is not running reads the
				// fresh files when it starts.
				log.Warn("mosquitto not reloaded", "pidfile", cfg.MosquittoPidfile, "err", err)
			}
		}
		log.Info("mosquitto credentials written", "dir", cfg.MosquittoDir, "nodes", len(creds)-1)
		return nil
	}
	fcfg.CredentialsChanged = write
	return write(ctx)
}
