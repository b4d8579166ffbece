package server

import (
	"context"
	"log/slog"

	"github.com/cloudskin/cloudskin/console/internal/fleet"
	"github.com/cloudskin/cloudskin/console/internal/store"
)

// configureExternalBroker keeps an external Mosquitto's credentials in step
// with the enrolled nodes.
func configureExternalBroker(ctx context.Context, fcfg *fleet.Config, cfg Config, st *store.Store, consolePassword string, log *slog.Logger) error {
	return nil
}
