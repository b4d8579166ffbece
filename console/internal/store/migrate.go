package store

import (
	"context"
	"fmt"
	"log/slog"
	"time"

	"gorm.io/gorm"
)

// migrations are applied in order, each in its own transaction, and
// recorded in schema_migrations. Append new steps; never edit an applied one.
var migrations = []struct {
	name string
	up   func(tx *gorm.DB) error
}{
	{"foundation: users, settings, enrollment tokens, nodes, telemetry", func(tx *gorm.DB) error {
		return tx.AutoMigrate(&User{}, &Setting{}, &EnrollmentToken{}, &Node{}, &Sample{})
	}},
	{"modules: uploaded cell modules (wasm), by digest", func(tx *gorm.DB) error {
		return tx.AutoMigrate(&Module{})
	}},
	{"cells: desired cells per node, their latest status, desired generations", func(tx *gorm.DB) error {
		return tx.AutoMigrate(&Cell{}, &NodeDesired{})
	}},
	{"streams: declared streams, reported stream figures per node, spilled segments in the object store", func(tx *gorm.DB) error {
		return tx.AutoMigrate(&StreamDecl{}, &NodeStream{}, &StreamSegment{})
	}},
	{"placement: apps, cell app/holder/binding columns, checkpoints, moves, planner decisions", func(tx *gorm.DB) error {
		return tx.AutoMigrate(&Cell{}, &App{}, &Checkpoint{}, &Move{}, &Decision{})
	}},
	{"nodes: modules compiled and ready (migrations prefetch them)", func(tx *gorm.DB) error {
		return tx.AutoMigrate(&Node{})
	}},
	{"users: dataspace roles, profile, approval; password resets", func(tx *gorm.DB) error {
		return tx.AutoMigrate(&User{}, &PasswordReset{})
	}},
	{"dataspace: datasets and their datareads", func(tx *gorm.DB) error {
		return tx.AutoMigrate(&Dataset{}, &Dataread{})
	}},
	{"dataspace: policies, contracts, the access audit log", func(tx *gorm.DB) error {
		return tx.AutoMigrate(&Dataset{}, &Contract{}, &AuditEntry{})
	}},
	{"datareads: an index by place (longitude, latitude, time) for bounding-box queries", func(tx *gorm.DB) error {
		return tx.AutoMigrate(&Dataread{})
	}},
	{"learning: per-cell samples, the model registry, events nodes report, solar input per sample", func(tx *gorm.DB) error {
		return tx.AutoMigrate(&CellSample{}, &LearningModel{}, &NodeEvent{}, &Sample{})
	}},
	{"ota: bundles, rollouts and their nodes, the update status each node reported", func(tx *gorm.DB) error {
		return tx.AutoMigrate(&Bundle{}, &Rollout{}, &RolloutNode{}, &NodeUpdate{})
	}},
}

// SchemaVersion is the number of migrations this build knows.
func SchemaVersion() int { return len(migrations) }

func (s *Store) migrate(ctx context.Context, log *slog.Logger) error {
	db := s.db.WithContext(ctx)
	if err := db.AutoMigrate(&Migration{}); err != nil {
		return fmt.Errorf("migrations table: %w", err)
	}
	var applied []Migration
	if err := db.Order("version").Find(&applied).Error; err != nil {
		return fmt.Errorf("read migrations: %w", err)
	}
	if len(applied) > len(migrations) {
		return fmt.Errorf("database schema is at version %d but this console knows only %d: run a newer console", len(applied), len(migrations))
	}
	for v := len(applied) + 1; v <= len(migrations); v++ {
		m := migrations[v-1]
		err := db.Transaction(func(tx *gorm.DB) error {
			if err := m.up(tx); err != nil {
				return err
			}
			return tx.Create(&Migration{Version: v, Name: m.name, AppliedAt: time.Now().UTC()}).Error
		})
		if err != nil {
			return fmt.Errorf("migration %d (%s): %w", v, m.name, err)
		}
		log.Info("applied schema migration", "version", v, "name", m.name, "db", s.dialect)
	}
	return nil
}
