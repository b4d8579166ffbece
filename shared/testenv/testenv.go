// Package testenv gives tests the real services they run against: a fresh
// PostgreSQL database per test on the server .ci/run starts. Only tests
// import it.
package testenv

import (
	"database/sql"
	"fmt"
	"os"
	"strings"
	"testing"
	"time"

	_ "github.com/jackc/pgx/v5/stdlib" // database/sql driver "pgx"
)

// PostgresEnv names the server tests use, e.g.
// postgres://cloudskin:cloudskin@127.0.0.1:5432/postgres?sslmode=disable.
const PostgresEnv = "CLOUDSKIN_TEST_POSTGRES_URL"

// PostgresDB creates an empty database for this test, drops it when the
// test ends, and returns its URL. A missing server fails the test: CI always
// has one, and a skip would hide that.
func PostgresDB(t testing.TB) string {
	t.Helper()
	base := os.Getenv(PostgresEnv)
	if base == "" {
		t.Fatalf("%s is not set: run the tests through .ci/run, which starts PostgreSQL, or point it at a server", PostgresEnv)
	}
	db, err := sql.Open("pgx", base)
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	name := fmt.Sprintf("cloudskin_test_%d", time.Now().UnixNano())
	if _, err := db.Exec("CREATE DATABASE " + name); err != nil {
		t.Fatalf("create database on %s: %v", PostgresEnv, err)
	}
	t.Cleanup(func() {
		if db, err := sql.Open("pgx", base); err == nil {
			db.Exec("DROP DATABASE IF EXISTS " + name + " WITH (FORCE)")
			db.Close()
		}
	})
	return withDatabase(base, name)
}

// withDatabase replaces the database name in a postgres URL.
func withDatabase(dsn, name string) string {
	query := ""
	if i := strings.Index(dsn, "?"); i >= 0 {
		dsn, query = dsn[:i], dsn[i:]
	}
	if i := strings.LastIndex(dsn, "/"); i > strings.Index(dsn, "://")+2 {
		dsn = dsn[:i]
	}
	return dsn + "/" + name + query
}
