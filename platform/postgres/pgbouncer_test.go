package postgres_test

import (
	"context"
	"testing"
	"time"

	"github.com/lib/pq"

	"github.com/campaignd/dispatch/platform/postgres"
	"github.com/campaignd/dispatch/platform/postgres/pgtest"
)

func TestWithBinaryParameters(t *testing.T) {
	for _, tc := range []struct{ in, want string }{
		{"postgres://u@h:5432/db?sslmode=disable", "postgres://u@h:5432/db?binary_parameters=yes&sslmode=disable"},
		{"postgres://u@h/db?binary_parameters=no", "postgres://u@h/db?binary_parameters=yes"},
		{"host=h dbname=db", "host=h dbname=db binary_parameters=yes"},
		{"host=h binary_parameters=no", "host=h binary_parameters=no"},
	} {
		if got := postgres.WithBinaryParameters(tc.in); got != tc.want {
			t.Errorf("WithBinaryParameters(%q) = %q, want %q", tc.in, got, tc.want)
		}
	}
}

// TestPgBouncerModePreparesNothing checks, on the real server, that a pool
// opened in PgBouncer mode leaves no prepared statement on its session
// (pg_prepared_statements stays empty) while Prepare, statements with
// arguments and COPY in a transaction all work.
func TestPgBouncerModePreparesNothing(t *testing.T) {
	t.Parallel()
	schema := pgtest.New(t)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	db, err := postgres.Open(ctx, schema.URL, postgres.Options{MaxOpenConns: 1, PgBouncer: true})
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()

	if _, err := db.ExecContext(ctx, `CREATE TABLE pgb (id bigint PRIMARY KEY, doc jsonb, raw bytea)`); err != nil {
		t.Fatal(err)
	}
	st, err := db.PreparexContext(ctx, `INSERT INTO pgb (id, doc, raw) VALUES ($1, $2, $3)`)
	if err != nil {
		t.Fatal(err)
	}
	defer st.Close()
	for i := range 3 {
		if _, err := st.ExecContext(ctx, i, `{"a":1}`, []byte{0, 1, 2}); err != nil {
			t.Fatalf("prepared insert %d: %v", i, err)
		}
	}
	tx, err := db.BeginTxx(ctx, nil)
	if err != nil {
		t.Fatal(err)
	}
	cp, err := tx.PrepareContext(ctx, pq.CopyIn("pgb", "id"))
	if err != nil {
		t.Fatal(err)
	}
	for _, id := range []int64{10, 11} {
		if _, err := cp.ExecContext(ctx, id); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := cp.ExecContext(ctx); err != nil {
		t.Fatal(err)
	}
	cp.Close()
	if err := tx.Commit(); err != nil {
		t.Fatal(err)
	}

	var n, prepared, rawLen int
	if err := db.QueryRowxContext(ctx, `SELECT count(*), (SELECT count(*) FROM pg_prepared_statements),
		(SELECT length(raw) FROM pgb WHERE id = $1) FROM pgb`, 1).Scan(&n, &prepared, &rawLen); err != nil {
		t.Fatal(err)
	}
	if n != 5 || prepared != 0 || rawLen != 3 {
		t.Errorf("rows %d (want 5), prepared statements on the session %d (want 0), bytea length %d (want 3)", n, prepared, rawLen)
	}
}
