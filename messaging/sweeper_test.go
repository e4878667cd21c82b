package messaging

import (
	"context"
	"slices"
	"strconv"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"github.com/jmoiron/sqlx"
	"github.com/lib/pq"
	"github.com/redis/go-redis/v9"

	"github.com/campaignd/dispatch/platform/postgres/pgtest"
	"github.com/campaignd/dispatch/platform/redisx/redistest"
)

// sweepEnv is a messaging Service over a fresh schema and key prefix whose
// maintenance loops are not running: tests call Sweep themselves.
type sweepEnv struct {
	db    *sqlx.DB
	rdb   *redis.Client
	queue *RedisQueue
	svc   *Service
}

func newSweepEnv(t *testing.T, opts MaintenanceOptions) *sweepEnv {
	t.Helper()
	db := pgtest.New(t)
	rdb, prefix := redistest.New(t)
	queue := NewRedisQueue(rdb, prefix, "jobs")
	return &sweepEnv{db: db.DB, rdb: rdb, queue: queue, svc: NewService(NewRepo(db.DB), queue, opts, quiet)}
}

// ready returns the ids in the ready list, sorted (duplicates kept).
func (se *sweepEnv) ready(t *testing.T) []int64 {
	t.Helper()
	vals, err := se.rdb.LRange(context.Background(), se.queue.keys.ready, 0, -1).Result()
	if err != nil {
		t.Fatal(err)
	}
	ids := make([]int64, 0, len(vals))
	for _, v := range vals {
		id, err := strconv.ParseInt(v, 10, 64)
		if err != nil {
			t.Fatalf("ready list holds %q", v)
		}
		ids = append(ids, id)
	}
	slices.Sort(ids)
	return ids
}

func (se *sweepEnv) exec(t *testing.T, query string, args ...any) {
	t.Helper()
	if _, err := se.db.ExecContext(context.Background(), query, args...); err != nil {
		t.Fatalf("%s: %v", query, err)
	}
}

func (se *sweepEnv) setStatus(t *testing.T, id int64, st Status) {
	t.Helper()
	se.exec(t, `UPDATE outbound_messages SET status = $2 WHERE id = $1`, id, st)
}

// markEpoch records that Redis holds the queue, so Sweep does not rebuild
// it from the database.
func (se *sweepEnv) markEpoch(t *testing.T) {
	t.Helper()
	if _, err := se.queue.EnsureEpoch(context.Background()); err != nil {
		t.Fatal(err)
	}
}

func sortedIDs(ids ...int64) []int64 {
	out := slices.Clone(ids)
	slices.Sort(out)
	return out
}

var fourCustomers = [][2]string{{"A", ""}, {"B", ""}, {"C", ""}, {"D", ""}}

func TestSweepRebuildsLostQueue(t *testing.T) {
	t.Parallel()
	se := newSweepEnv(t, MaintenanceOptions{})
	ctx := context.Background()
	_, ids := fixture(t, se.db, "Hi", fourCustomers...)
	_, other := fixture(t, se.db, "Hi", [2]string{"E", ""}, [2]string{"F", ""})
	se.setStatus(t, ids[1], StatusSending)
	se.setStatus(t, ids[2], StatusSent)
	se.setStatus(t, ids[3], StatusFailed)
	se.setStatus(t, other[1], StatusSent)
	active := sortedIDs(ids[0], ids[1], other[0])

	if n, _ := se.rdb.Exists(ctx, se.queue.keys.epoch).Result(); n != 0 {
		t.Fatal("epoch key exists before the first sweep")
	}
	se.svc.Sweep(ctx)
	if diff := cmp.Diff(active, se.ready(t)); diff != "" {
		t.Errorf("after the first sweep, ready (-pending and sending +got):\n%s", diff)
	}
	if n, _ := se.rdb.Exists(ctx, se.queue.keys.epoch).Result(); n != 1 {
		t.Error("the sweep did not set the epoch key")
	}

	se.svc.Sweep(ctx)
	if diff := cmp.Diff(active, se.ready(t)); diff != "" {
		t.Errorf("the second sweep pushed again (-want +got):\n%s", diff)
	}

	// Redis is flushed: the next sweep rebuilds the queue again.
	if err := se.rdb.Del(ctx, se.queue.keys.epoch, se.queue.keys.ready).Err(); err != nil {
		t.Fatal(err)
	}
	se.svc.Sweep(ctx)
	if diff := cmp.Diff(active, se.ready(t)); diff != "" {
		t.Errorf("after a flush, ready (-want +got):\n%s", diff)
	}
}

func TestSweepRebuildsLargeQueue(t *testing.T) {
	t.Parallel()
	se := newSweepEnv(t, MaintenanceOptions{})
	ctx := context.Background()
	campaignID, _ := fixture(t, se.db, "Hi", [2]string{"A", ""})
	// More messages than one page of the rebuild (5,000).
	se.exec(t, `
WITH c AS (
    INSERT INTO customers (phone) SELECT '+1999' || lpad(g::text, 8, '0') FROM generate_series(1, 12001) AS g RETURNING id)
INSERT INTO outbound_messages (campaign_id, customer_id) SELECT $1, id FROM c`, campaignID)
	var want []int64
	if err := se.db.SelectContext(ctx, &want, `SELECT id FROM outbound_messages ORDER BY id`); err != nil {
		t.Fatal(err)
	}
	se.svc.Sweep(ctx)
	if diff := cmp.Diff(want, se.ready(t)); diff != "" {
		t.Errorf("ready after rebuilding 12,002 messages (-want +got):\n%s", diff)
	}
}

func TestSweepPushesUnpushedSends(t *testing.T) {
	t.Parallel()
	se := newSweepEnv(t, MaintenanceOptions{UnpushedAfter: time.Minute})
	ctx := context.Background()
	se.markEpoch(t)

	old, oldIDs := fixture(t, se.db, "Hi", [2]string{"A", ""}, [2]string{"B", ""}, [2]string{"C", ""})
	young, _ := fixture(t, se.db, "Hi", [2]string{"D", ""})
	done, _ := fixture(t, se.db, "Hi", [2]string{"E", ""})
	se.setStatus(t, oldIDs[2], StatusSent) // a final message is not pushed again

	var oldBatch, youngBatch, doneBatch int64
	for _, b := range []struct {
		dst        *int64
		campaignID int64
		createdAt  string
		pushed     bool
	}{
		{&oldBatch, old, "1 hour", false},
		{&youngBatch, young, "1 second", false},
		{&doneBatch, done, "1 hour", true},
	} {
		if err := se.db.GetContext(ctx, b.dst, `
INSERT INTO dispatch_batches (campaign_id, messages, created_at, pushed_at)
VALUES ($1, 1, now() - $2::interval, CASE WHEN $3 THEN now() - $2::interval END) RETURNING id`,
			b.campaignID, b.createdAt, b.pushed); err != nil {
			t.Fatal(err)
		}
	}
	pushedAt := func(id int64) *time.Time {
		t.Helper()
		var at *time.Time
		if err := se.db.GetContext(ctx, &at, `SELECT pushed_at FROM dispatch_batches WHERE id = $1`, id); err != nil {
			t.Fatal(err)
		}
		return at
	}
	doneAt := pushedAt(doneBatch)

	se.svc.Sweep(ctx)
	if diff := cmp.Diff(sortedIDs(oldIDs[0], oldIDs[1]), se.ready(t)); diff != "" {
		t.Errorf("ready (-the old send's pending ids +got):\n%s", diff)
	}
	if pushedAt(oldBatch) == nil {
		t.Error("the old batch is still unpushed after the sweep")
	}
	if pushedAt(youngBatch) != nil {
		t.Error("a batch younger than UnpushedAfter was pushed")
	}
	if at := pushedAt(doneBatch); at == nil || !at.Equal(*doneAt) {
		t.Errorf("an already pushed batch changed: pushed_at %v, was %v", at, doneAt)
	}

	se.svc.Sweep(ctx)
	if diff := cmp.Diff(sortedIDs(oldIDs[0], oldIDs[1]), se.ready(t)); diff != "" {
		t.Errorf("the second sweep pushed again (-want +got):\n%s", diff)
	}
}

func TestSweepTouchStale(t *testing.T) {
	t.Parallel()
	se := newSweepEnv(t, MaintenanceOptions{StaleAfter: 10 * time.Minute, UnpushedAfter: time.Minute})
	ctx := context.Background()
	se.markEpoch(t)
	_, ids := fixture(t, se.db, "Hi", [2]string{"A", ""}, [2]string{"B", ""}, [2]string{"C", ""},
		[2]string{"D", ""}, [2]string{"E", ""}, [2]string{"F", ""})
	stalePending, staleSending, fresh, waitingRetry, oldSent, oldFailed := ids[0], ids[1], ids[2], ids[3], ids[4], ids[5]
	se.exec(t, `UPDATE outbound_messages SET updated_at = now() - interval '1 hour' WHERE id = ANY($1)`,
		pq.Array([]int64{stalePending, staleSending, waitingRetry, oldSent, oldFailed}))
	se.exec(t, `UPDATE outbound_messages SET status = 'sending' WHERE id = $1`, staleSending)
	se.exec(t, `UPDATE outbound_messages SET status = 'sent' WHERE id = $1`, oldSent)
	se.exec(t, `UPDATE outbound_messages SET status = 'failed' WHERE id = $1`, oldFailed)
	// A retry that is not due yet is waiting, not stale.
	se.exec(t, `UPDATE outbound_messages SET retry_count = 1, next_attempt_at = now() + interval '1 hour' WHERE id = $1`, waitingRetry)

	se.svc.Sweep(ctx)
	want := sortedIDs(stalePending, staleSending)
	if diff := cmp.Diff(want, se.ready(t)); diff != "" {
		t.Errorf("ready after the sweep (-stale ids +got):\n%s", diff)
	}
	got := messages(t, se.db, ids)
	if st := got[staleSending].Status; st != StatusPending {
		t.Errorf("stale sending message is %s, want pending", st)
	}
	if st := got[stalePending].Status; st != StatusPending {
		t.Errorf("stale pending message is %s, want pending", st)
	}
	for _, id := range want {
		if age := time.Since(got[id].UpdatedAt); age > time.Minute {
			t.Errorf("message %d was not touched: updated %v ago", id, age)
		}
	}
	for id, st := range map[int64]Status{fresh: StatusPending, waitingRetry: StatusPending, oldSent: StatusSent, oldFailed: StatusFailed} {
		if got[id].Status != st {
			t.Errorf("message %d is %s, want %s untouched", id, got[id].Status, st)
		}
	}

	// Touched, the messages are not stale any more: nothing is pushed again.
	se.svc.Sweep(ctx)
	if diff := cmp.Diff(want, se.ready(t)); diff != "" {
		t.Errorf("the second sweep pushed again (-want +got):\n%s", diff)
	}
}

// TestSweepStaleSkippedInBacklog: in a deep backlog an old pending message
// is most likely waiting its turn, so the last-resort sweep leaves it.
func TestSweepStaleSkippedInBacklog(t *testing.T) {
	t.Parallel()
	se := newSweepEnv(t, MaintenanceOptions{StaleAfter: 10 * time.Minute})
	ctx := context.Background()
	se.markEpoch(t)
	_, ids := fixture(t, se.db, "Hi", [2]string{"A", ""})
	se.exec(t, `UPDATE outbound_messages SET updated_at = now() - interval '1 hour' WHERE id = $1`, ids[0])
	backlog := make([]int64, 10_001)
	for i := range backlog {
		backlog[i] = 1_000_000 + int64(i)
	}
	if err := se.queue.Push(ctx, backlog); err != nil {
		t.Fatal(err)
	}
	se.svc.Sweep(ctx)
	if n, _ := se.rdb.LLen(ctx, se.queue.keys.ready).Result(); n != int64(len(backlog)) {
		t.Errorf("ready holds %d, want only the backlog (%d)", n, len(backlog))
	}
	if m := messages(t, se.db, ids)[ids[0]]; time.Since(m.UpdatedAt) < 30*time.Minute {
		t.Errorf("stale message was touched during a backlog (updated %v ago)", time.Since(m.UpdatedAt))
	}
}
