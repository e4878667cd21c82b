package postgres_test

import (
	"context"
	"errors"
	"fmt"
	"sync/atomic"
	"testing"
	"time"

	"github.com/jmoiron/sqlx"
	"github.com/lib/pq"

	"github.com/campaignd/dispatch/platform/postgres"
	"github.com/campaignd/dispatch/platform/postgres/pgtest"
)

func TestIsConflict(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name string
		err  error
		want bool
	}{
		{"deadlock", &pq.Error{Code: "40P01"}, true},
		{"serialization failure", &pq.Error{Code: "40001"}, true},
		{"deadlock, wrapped by Classify", postgres.Classify(&pq.Error{Code: "40P01"}, "cancel pending messages"), true},
		{"stale read, wrapped", fmt.Errorf("insert messages: %w", postgres.ErrStaleRead), true},
		{"unique violation", &pq.Error{Code: "23505"}, false},
		{"not from PostgreSQL", errors.New("40P01"), false},
		{"nil", nil, false},
	}
	for _, tt := range tests {
		if got := postgres.IsConflict(tt.err); got != tt.want {
			t.Errorf("%s: IsConflict(%v) = %v, want %v", tt.name, tt.err, got, tt.want)
		}
	}
}

// TestInTxRetryingDeadlock makes PostgreSQL break a real deadlock by
// aborting the retrying transaction: another transaction holds row 1 and
// waits for row 2, which the retrying one holds; the retrying one then asks
// for row 1. It detects the deadlock (its deadlock_timeout is the shorter),
// runs again once the other committed, and succeeds; InTx alone returns
// the deadlock.
func TestInTxRetryingDeadlock(t *testing.T) {
	t.Parallel()
	schema := pgtest.New(t)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	db, err := postgres.Open(ctx, schema.URL, postgres.Options{MaxOpenConns: 4})
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	if _, err := db.ExecContext(ctx, `CREATE TABLE locks (id int PRIMARY KEY, n int NOT NULL DEFAULT 0);
INSERT INTO locks (id) VALUES (1), (2)`); err != nil {
		t.Fatal(err)
	}

	for _, retrying := range []bool{false, true} {
		t.Run(fmt.Sprintf("retrying=%v", retrying), func(t *testing.T) {
			holding, haveTwo := make(chan struct{}), make(chan struct{})
			other := make(chan error, 1)
			go func() {
				other <- postgres.InTx(ctx, db, func(tx *sqlx.Tx) error {
					if _, err := tx.ExecContext(ctx, `SET LOCAL deadlock_timeout = '10s'`); err != nil {
						return err
					}
					if _, err := tx.ExecContext(ctx, `UPDATE locks SET n = n + 1 WHERE id = 1`); err != nil {
						return err
					}
					close(holding)
					<-haveTwo
					_, err := tx.ExecContext(ctx, `UPDATE locks SET n = n + 1 WHERE id = 2`)
					return err
				})
			}()
			<-holding
			var runs atomic.Int32
			fn := func(tx *sqlx.Tx) error {
				runs.Add(1)
				if _, err := tx.ExecContext(ctx, `SET LOCAL deadlock_timeout = '50ms'`); err != nil {
					return err
				}
				if _, err := tx.ExecContext(ctx, `UPDATE locks SET n = n + 1 WHERE id = 2`); err != nil {
					return err
				}
				if runs.Load() == 1 {
					close(haveTwo)
					// Let the other transaction queue for row 2 first.
					time.Sleep(200 * time.Millisecond)
				}
				_, err := tx.ExecContext(ctx, `UPDATE locks SET n = n + 1 WHERE id = 1`)
				return err
			}
			if retrying {
				err = postgres.InTxRetrying(ctx, db, fn)
			} else {
				err = postgres.InTx(ctx, db, fn)
			}
			if oerr := <-other; oerr != nil {
				t.Fatalf("the other transaction: %v", oerr)
			}
			switch {
			case retrying && err != nil:
				t.Fatalf("InTxRetrying: %v (after %d runs)", err, runs.Load())
			case retrying && runs.Load() != 2:
				t.Errorf("InTxRetrying ran fn %d times, want 2 (the deadlock, then success)", runs.Load())
			case !retrying && !postgres.IsConflict(err):
				t.Fatalf("InTx: %v, want the deadlock", err)
			}
		})
	}
}
