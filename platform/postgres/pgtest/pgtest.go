// Package pgtest gives each test its own PostgreSQL schema with the service's
// migrations applied, so storage tests run in parallel against the real
// server and leave nothing behind.
package pgtest

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"net/url"
	"os"
	"testing"
	"time"

	"github.com/jmoiron/sqlx"
	"github.com/lib/pq"

	"github.com/campaignd/dispatch/db/migrations"
	"github.com/campaignd/dispatch/platform/postgres"
)

// BaseURL is the server tests use: TEST_DATABASE_URL, or the local default.
func BaseURL() string {
	if u := os.Getenv("TEST_DATABASE_URL"); u != "" {
		return u
	}
	return "postgres://postgres@127.0.0.1:5432/dispatch_test?sslmode=disable"
}

// DB is a fresh, migrated schema.
type DB struct {
	*sqlx.DB
	// URL connects to the same schema (search_path set), for code under test
	// that opens its own pool, such as the whole app.
	URL    string
	Schema string
}

// New creates a schema named after a random suffix, migrates it, and drops it
// when the test ends.
func New(t testing.TB) *DB {
	t.Helper()
	if testing.Short() {
		t.Skip("needs PostgreSQL; skipped in -short mode")
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()

	base := BaseURL()
	admin, err := postgres.Open(ctx, base, postgres.Options{CreateDatabase: true, MaxOpenConns: 2})
	if err != nil {
		t.Fatalf("PostgreSQL is not reachable at %s: %v\n"+
			"start it (pg_ctlcluster 15 main start, or docker compose up -d postgres) or set TEST_DATABASE_URL",
			postgres.Redact(base), err)
	}
	schema := "t_" + randomHex(6)
	if _, err := admin.ExecContext(ctx, `CREATE SCHEMA `+pq.QuoteIdentifier(schema)); err != nil {
		admin.Close()
		t.Fatalf("create schema: %v", err)
	}
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		if _, err := admin.ExecContext(ctx, `DROP SCHEMA `+pq.QuoteIdentifier(schema)+` CASCADE`); err != nil {
			t.Errorf("drop schema %s: %v", schema, err)
		}
		admin.Close()
	})

	u, err := url.Parse(base)
	if err != nil {
		t.Fatalf("parse %s: %v", base, err)
	}
	q := u.Query()
	q.Set("search_path", schema) // lib/pq sends unknown keys as run-time parameters
	u.RawQuery = q.Encode()

	// Small: packages run in parallel, each with tests in parallel, against
	// one server with max_connections 100.
	db, err := postgres.Open(ctx, u.String(), postgres.Options{MaxOpenConns: 5})
	if err != nil {
		t.Fatalf("open schema %s: %v", schema, err)
	}
	// Registered after the schema drop, so it runs first.
	t.Cleanup(func() { db.Close() })
	if _, err := migrations.Up(ctx, db.DB); err != nil {
		t.Fatalf("migrate schema %s: %v", schema, err)
	}
	return &DB{DB: db, URL: u.String(), Schema: schema}
}

func randomHex(n int) string {
	b := make([]byte, n)
	_, _ = rand.Read(b)
	return hex.EncodeToString(b)
}

// NewDatabase returns the URL of a database that does not exist yet (the
// code under test is expected to create and migrate it, as the app does on
// first start) and drops it, with any connections left, when the test ends.
func NewDatabase(t testing.TB) string {
	t.Helper()
	if testing.Short() {
		t.Skip("needs PostgreSQL; skipped in -short mode")
	}
	base := BaseURL()
	u, err := url.Parse(base)
	if err != nil {
		t.Fatalf("parse %s: %v", base, err)
	}
	name := "dispatch_t_" + randomHex(6)
	u.Path = "/" + name
	// The drop goes through the server's maintenance database: the test
	// database named in TEST_DATABASE_URL may not exist on a fresh machine,
	// and a database cannot be dropped from a connection to itself.
	maintenance := *u
	maintenance.Path = "/postgres"
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		admin, err := postgres.Open(ctx, maintenance.String(), postgres.Options{MaxOpenConns: 1})
		if err != nil {
			t.Errorf("drop database %s: %v", name, err)
			return
		}
		defer admin.Close()
		if _, err := admin.ExecContext(ctx, `DROP DATABASE IF EXISTS `+pq.QuoteIdentifier(name)+` WITH (FORCE)`); err != nil {
			t.Errorf("drop database %s: %v", name, err)
		}
	})
	return u.String()
}
