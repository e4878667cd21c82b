// Package seed loads the demo customers and campaigns.
package seed

import (
	"context"
	_ "embed"
	"fmt"

	"github.com/jmoiron/sqlx"
)

//go:embed seed.sql
var script string

// lockKey serialises seeding across replicas that start together.
const lockKey = 7_401_001

// Apply runs the seed script. It is idempotent: rows it already inserted are
// not inserted again. It reports whether anything was inserted.
func Apply(ctx context.Context, db *sqlx.DB) (bool, error) {
	return run(ctx, db, false)
}

// ApplyIfEmpty runs the seed script only when the database has neither
// customers nor campaigns, so demo data appears on a first start and never
// comes back after users delete it.
func ApplyIfEmpty(ctx context.Context, db *sqlx.DB) (bool, error) {
	return run(ctx, db, true)
}

func run(ctx context.Context, db *sqlx.DB, onlyIfEmpty bool) (bool, error) {
	tx, err := db.BeginTxx(ctx, nil)
	if err != nil {
		return false, fmt.Errorf("seed: begin: %w", err)
	}
	defer tx.Rollback() //nolint:errcheck // a no-op after commit
	if _, err := tx.ExecContext(ctx, `SELECT pg_advisory_xact_lock($1)`, lockKey); err != nil {
		return false, fmt.Errorf("seed: lock: %w", err)
	}
	if onlyIfEmpty {
		var used bool
		if err := tx.GetContext(ctx, &used,
			`SELECT EXISTS (SELECT 1 FROM customers) OR EXISTS (SELECT 1 FROM campaigns)`); err != nil {
			return false, fmt.Errorf("seed: check empty: %w", err)
		}
		if used {
			return false, nil
		}
	}
	if _, err := tx.ExecContext(ctx, script); err != nil {
		return false, fmt.Errorf("seed: %w", err)
	}
	if err := tx.Commit(); err != nil {
		return false, fmt.Errorf("seed: commit: %w", err)
	}
	return true, nil
}
