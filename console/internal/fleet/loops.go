package fleet

import (
	"context"
	"time"

	"github.com/cloudskin/cloudskin/shared/protocol"
)

// Run sweeps silent nodes offline every second and applies telemetry
// retention every ten minutes, until ctx ends.
func (s *Service) Run(ctx context.Context) error {
	sweep := time.NewTicker(time.Second)
	defer sweep.Stop()
	retention := time.NewTicker(10 * time.Minute)
	defer retention.Stop()
	s.applyRetention(ctx)
	for {
		select {
		case <-ctx.Done():
			return nil
		case <-sweep.C:
			s.sweep(ctx)
		case <-retention.C:
			s.applyRetention(ctx)
		}
	}
}

func (s *Service) sweep(ctx context.Context) {
	names, err := s.store.SweepOffline(ctx, s.now().UnixMicro(), int64(s.cfg.MissedHeartbeats), s.cfg.DefaultHeartbeat.Microseconds())
	if err != nil {
		if ctx.Err() == nil {
			s.log.Error("offline sweep failed", "err", err)
		}
		return
	}
	for _, n := range names {
		s.m.NodeTransitions.WithLabelValues(protocol.StateOffline, "missed heartbeats").Inc()
		s.log.Info("node offline", "node", n, "reason", "missed heartbeats", "misses", s.cfg.MissedHeartbeats)
	}
	counts, err := s.store.CountNodesByStatus(ctx)
	if err != nil {
		return
	}
	for _, st := range []string{protocol.StateOnline, protocol.StateOffline} {
		s.m.NodesByStatus.WithLabelValues(st).Set(float64(counts[st]))
	}
}

func (s *Service) applyRetention(ctx context.Context) {
	// The planner's statistics follow the data (datareads arrive in bulk).
	if err := s.store.Optimize(ctx); err != nil && ctx.Err() == nil {
		s.log.Warn("database statistics not refreshed", "err", err)
	}
	if s.cfg.Retention <= 0 {
		return
	}
	n, err := s.store.DeleteSamplesBefore(ctx, s.now().Add(-s.cfg.Retention).UnixMicro())
	if err != nil {
		if ctx.Err() == nil {
			s.log.Error("telemetry retention failed", "err", err)
		}
		return
	}
	if n > 0 {
		s.m.RetentionDeleted.Add(float64(n))
		s.log.Info("telemetry retention applied", "deleted", n, "retention", s.cfg.Retention)
	}
}
