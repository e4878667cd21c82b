package mock

import (
	"context"
	"fmt"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/jmoiron/sqlx"

	"github.com/campaignd/dispatch/platform/postgres"
	"github.com/campaignd/dispatch/platform/postgres/pgtest"
)

// rowPerCallLedger is the PostgresLedger before group commit, kept only to
// compare against: one single-row statement, its own transaction, per call.
type rowPerCallLedger struct{ db *sqlx.DB }

func (l rowPerCallLedger) Seen(ctx context.Context, key int64) (bool, error) {
	res, err := l.db.ExecContext(ctx, `UPDATE mock_deliveries SET calls = calls + 1 WHERE message_id = $1`, key)
	if err != nil {
		return false, postgres.Classify(err, "mock ledger")
	}
	n, err := res.RowsAffected()
	return n == 1, err
}

func (l rowPerCallLedger) Deliver(ctx context.Context, key int64, content string) (bool, error) {
	var fresh bool
	err := l.db.GetContext(ctx, &fresh, `
INSERT INTO mock_deliveries (message_id, content) VALUES ($1, $2)
ON CONFLICT (message_id) DO UPDATE SET calls = mock_deliveries.calls + 1
RETURNING (xmax = 0)`, key, content)
	return fresh, postgres.Classify(err, "mock ledger")
}

// ledgerRun has workers goroutines deliver total distinct keys from next
// on, each doing what the mock does for a successful send (Seen, then
// Deliver), and returns deliveries per second.
func ledgerRun(b *testing.B, l Ledger, workers, total int, next *atomic.Int64) float64 {
	ctx := context.Background()
	var left atomic.Int64
	left.Store(int64(total))
	var wg sync.WaitGroup
	start := time.Now()
	for range workers {
		wg.Go(func() {
			for left.Add(-1) >= 0 {
				key := next.Add(1)
				if done, err := l.Seen(ctx, key); err != nil || done {
					b.Errorf("seen %d: %v, %v", key, done, err)
					return
				}
				if fresh, err := l.Deliver(ctx, key, "Hi there, your code is 123456"); err != nil || !fresh {
					b.Errorf("deliver %d: %v, %v", key, fresh, err)
					return
				}
			}
		})
	}
	wg.Wait()
	return float64(total) / time.Since(start).Seconds()
}

// BenchmarkPostgresLedger compares, in one run, the row-per-call ledger
// with the group-committing one: deliveries per second with 50, 200 and
// 1,000 concurrent senders, over a pool the size of the app's default
// (DATABASE_MAX_OPEN_CONNS=40).
func BenchmarkPostgresLedger(b *testing.B) {
	schema := pgtest.New(b)
	db, err := postgres.Open(context.Background(), schema.URL, postgres.Options{MaxOpenConns: 40, MaxIdleConns: 40})
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { db.Close() })
	const total = 20000
	var next atomic.Int64
	for _, workers := range []int{50, 200, 1000} {
		b.Run(fmt.Sprintf("goroutines=%d", workers), func(b *testing.B) {
			var before, after float64
			for b.Loop() {
				before += ledgerRun(b, rowPerCallLedger{db}, workers, total, &next)
				after += ledgerRun(b, NewPostgresLedger(db), workers, total, &next)
			}
			before, after = before/float64(b.N), after/float64(b.N)
			b.ReportMetric(before, "before_deliveries/s")
			b.ReportMetric(after, "after_deliveries/s")
			b.ReportMetric(after/before, "speedup")
			b.ReportMetric(0, "ns/op")
		})
	}
}
