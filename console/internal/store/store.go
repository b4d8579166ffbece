// Package store is the console's database: gorm models, versioned
// migrations and the queries the services need. It runs on SQLite (a file in
// the data directory, pure Go) by default and on PostgreSQL at scale; the
// rest of the console does not know which.
package store

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/glebarez/sqlite"
	"gorm.io/driver/postgres"
	"gorm.io/gorm"
	"gorm.io/gorm/logger"
)

// Errors the services map to API status codes.
var (
	ErrNotFound = errors.New("not found")
	ErrConflict = errors.New("already exists")
)

// Store wraps the database handle.
type Store struct {
	db      *gorm.DB
	dialect string
}

// Open connects to dsn — empty for SQLite at dataDir/console.db, a
// "postgres://" URL for PostgreSQL, or "sqlite://PATH" — and applies
// every pending migration.
func Open(ctx context.Context, dsn, dataDir string, log *slog.Logger) (*Store, error) {
	var dialector gorm.Dialector
	dialect := "sqlite"
	switch {
	case dsn == "" || strings.HasPrefix(dsn, "sqlite://"):
		path := strings.TrimPrefix(dsn, "sqlite://")
		if path == "" {
			if err := os.MkdirAll(dataDir, 0o700); err != nil {
				return nil, fmt.Errorf("data dir: %w", err)
			}
			path = filepath.Join(dataDir, "console.db")
		}
		// WAL lets the CLI (token create) and the server share the file;
		// busy_timeout makes a writer wait instead of failing at once.
		dialector = sqlite.Open(path + "?_pragma=busy_timeout(10000)&_pragma=journal_mode(WAL)&_pragma=foreign_keys(1)&_pragma=synchronous(FULL)")
	case strings.HasPrefix(dsn, "postgres://") || strings.HasPrefix(dsn, "postgresql://"):
		dialect = "postgres"
		dialector = postgres.Open(dsn)
	default:
		return nil, fmt.Errorf("--db %q: want empty (SQLite in the data dir), sqlite://PATH or postgres://…", redact(dsn))
	}
	db, err := gorm.Open(dialector, &gorm.Config{
		Logger:  logger.Discard,
		NowFunc: func() time.Time { return time.Now().UTC() },
	})
	if err != nil {
		return nil, fmt.Errorf("open %s database: %w", dialect, err)
	}
	sqlDB, err := db.DB()
	if err != nil {
		return nil, err
	}
	if dialect == "sqlite" {
		// One writer at a time is SQLite's model; a single connection
		// avoids SQLITE_BUSY between our own goroutines.
		sqlDB.SetMaxOpenConns(1)
	} else {
		sqlDB.SetMaxOpenConns(20)
	}
	pingCtx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	if err := sqlDB.PingContext(pingCtx); err != nil {
		return nil, fmt.Errorf("connect to %s database: %w", dialect, err)
	}
	s := &Store{db: db, dialect: dialect}
	if err := s.migrate(ctx, log); err != nil {
		sqlDB.Close()
		return nil, err
	}
	return s, nil
}

// Dialect is "sqlite" or "postgres".
func (s *Store) Dialect() string { return s.dialect }

// Ping checks the database answers; /readyz uses it.
func (s *Store) Ping(ctx context.Context) error {
	sqlDB, err := s.db.DB()
	if err != nil {
		return err
	}
	return sqlDB.PingContext(ctx)
}

// Close releases the connection pool.
func (s *Store) Close() error {
	sqlDB, err := s.db.DB()
	if err != nil {
		return err
	}
	return sqlDB.Close()
}

// redact hides a password in a database URL for error messages.
func redact(dsn string) string {
	if at := strings.LastIndex(dsn, "@"); at > 0 {
		if scheme := strings.Index(dsn, "://"); scheme > 0 && scheme < at {
			return dsn[:scheme+3] + "…@" + dsn[at+1:]
		}
	}
	return dsn
}

func notFound(err error, what string) error {
	if errors.Is(err, gorm.ErrRecordNotFound) {
		return fmt.Errorf("%s: %w", what, ErrNotFound)
	}
	return err
}

// isUnique reports a unique-constraint violation on either database.
func isUnique(err error) bool {
	if err == nil {
		return false
	}
	if errors.Is(err, gorm.ErrDuplicatedKey) {
		return true
	}
	msg := err.Error()
	return strings.Contains(msg, "UNIQUE constraint failed") || strings.Contains(msg, "duplicate key value") || strings.Contains(msg, "SQLSTATE 23505")
}

// Optimize refreshes the query planner's statistics (SQLite's ANALYZE;
// PostgreSQL's autovacuum does this by itself), so that after a bulk load
// queries pick the right index. The console runs it with its retention
// sweep.
func (s *Store) Optimize(ctx context.Context) error {
	if s.dialect != "sqlite" {
		return nil
	}
	return s.db.WithContext(ctx).Exec("ANALYZE").Error
}
