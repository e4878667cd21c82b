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

	"github.com/campaignd/dispatch/messaging/queue"
	"github.com/campaignd/dispatch/platform/postgres/pgtest"
	"github.com/campaignd/dispatch/platform/redisx/redistest"
)

// sweepEnv is a messaging Service over a fresh schema and key prefix whose
// maintenance loops are not running: tests call Sweep themselves.
type sweepEnv struct {
	db    *sqlx.DB
	rdb   *redis.Client
	queue *queue.Queue
	svc   *Service
}

func newSweepEnv(t *testing.T, opts MaintenanceOptions) *sweepEnv {
	t.Helper()
	db := pgtest.New(t)
	rdb, prefix := redistest.New(t)
	queue := queue.New(rdb, prefix, "jobs")
	return &sweepEnv{db: db.DB, rdb: rdb, queue: queue, svc: NewService(NewRepo(db.DB), queue, opts, quiet)}
}

// ready returns the ids in the ready list, sorted (duplicates kept).
func (se *sweepEnv) ready(t *testing.T) []int64 {
	t.Helper()
	vals, err := se.rdb.LRange(context.Background(), se.queue.Keys().Ready, 0, -1).Result()
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

// feedAll runs feeder rounds until one feeds nothing, and returns the
// ready list (sorted).
func (se *sweepEnv) feedAll(t *testing.T) []int64 {
	t.Helper()
	f := newFeeder(se.svc)
	for range 100 {
		before, _ := se.rdb.LLen(context.Background(), se.queue.Keys().Ready).Result()
		if _, _, err := f.round(context.Background()); err != nil {
			t.Fatal(err)
		}
		after, _ := se.rdb.LLen(context.Background(), se.queue.Keys().Ready).Result()
		if after == before {
			break
		}
	}
	return se.ready(t)
}

// queued marks messages as fed (their ids in Redis).
func (se *sweepEnv) queued(t *testing.T, ids ...int64) {
	t.Helper()
	se.exec(t, `UPDATE outbound_messages SET queued_at = now() WHERE id = ANY($1)`, pq.Array(ids))
}

var fourCustomers = [][2]string{{"A", ""}, {"B", ""}, {"C", ""}, {"D", ""}}

// TestSweepRebuildsLostQueue: when Redis lost the queue, pending messages are
// marked unqueued (the feeder queues them) and messages being delivered are
// pushed; a second sweep adds nothing; a flush rebuilds again.
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
	se.queued(t, ids[0], ids[1], other[0]) // in Redis before it was lost
	active := sortedIDs(ids[0], ids[1], other[0])

	if n, _ := se.rdb.Exists(ctx, se.queue.Keys().Epoch).Result(); n != 0 {
		t.Fatal("epoch key exists before the first sweep")
	}
	se.svc.Sweep(ctx)
	if diff := cmp.Diff([]int64{ids[1]}, se.ready(t)); diff != "" {
		t.Errorf("after the first sweep, ready (-the message being delivered +got):\n%s", diff)
	}
	if diff := cmp.Diff(active, se.feedAll(t)); diff != "" {
		t.Errorf("after feeding, ready (-pending and sending +got):\n%s", diff)
	}
	if n, _ := se.rdb.Exists(ctx, se.queue.Keys().Epoch).Result(); n != 1 {
		t.Error("the sweep did not set the epoch key")
	}

	se.svc.Sweep(ctx)
	if diff := cmp.Diff(active, se.feedAll(t)); diff != "" {
		t.Errorf("the second sweep and feed pushed again (-want +got):\n%s", diff)
	}

	// Redis is flushed: the next sweep rebuilds the queue again.
	if err := se.rdb.Del(ctx, se.queue.Keys().Epoch, se.queue.Keys().Ready).Err(); err != nil {
		t.Fatal(err)
	}
	se.svc.Sweep(ctx)
	if diff := cmp.Diff(active, se.feedAll(t)); diff != "" {
		t.Errorf("after a flush, ready (-want +got):\n%s", diff)
	}
}

// TestFeederBoundsReadyList: a 12,002-message backlog is fed in rounds that
// keep the ready list at its target, each message exactly once.
func TestFeederBoundsReadyList(t *testing.T) {
	t.Parallel()
	se := newSweepEnv(t, MaintenanceOptions{})
	ctx := context.Background()
	campaignID, _ := fixture(t, se.db, "Hi", [2]string{"A", ""})
	se.exec(t, `
WITH c AS (
    INSERT INTO customers (phone) SELECT '+1999' || lpad(g::text, 8, '0') FROM generate_series(1, 12001) AS g RETURNING id)
INSERT INTO outbound_messages (campaign_id, customer_id) SELECT $1, id FROM c`, campaignID)
	var want []int64
	if err := se.db.SelectContext(ctx, &want, `SELECT id FROM outbound_messages ORDER BY id`); err != nil {
		t.Fatal(err)
	}
	f := newFeeder(se.svc)
	var fed []int64
	for rounds := 0; len(fed) < len(want); rounds++ {
		if rounds > 1000 {
			t.Fatalf("fed %d of %d after 1,000 rounds", len(fed), len(want))
		}
		if _, _, err := f.round(ctx); err != nil {
			t.Fatal(err)
		}
		got := se.ready(t)
		if int64(len(got)) > f.target() {
			t.Fatalf("ready holds %d, above the target %d", len(got), f.target())
		}
		fed = append(fed, got...)
		// The workers take everything (the messages stay pending, queued).
		if err := se.rdb.Del(ctx, se.queue.Keys().Ready).Err(); err != nil {
			t.Fatal(err)
		}
	}
	slices.Sort(fed)
	if diff := cmp.Diff(want, fed); diff != "" {
		t.Errorf("fed (-every message once +got):\n%s", diff)
	}
}

// TestFeederTakesTurns: a 3-message campaign started behind a 5,000-message
// one is fed in the first round, and only sending campaigns are fed.
func TestFeederTakesTurns(t *testing.T) {
	t.Parallel()
	se := newSweepEnv(t, MaintenanceOptions{})
	ctx := context.Background()
	big, _ := fixture(t, se.db, "Hi", [2]string{"A", ""})
	se.exec(t, `
WITH c AS (
    INSERT INTO customers (phone) SELECT '+1888' || lpad(g::text, 8, '0') FROM generate_series(1, 4999) AS g RETURNING id)
INSERT INTO outbound_messages (campaign_id, customer_id) SELECT $1, id FROM c`, big)
	_, small := fixture(t, se.db, "Hi", [2]string{"B", ""}, [2]string{"C", ""}, [2]string{"D", ""})
	paused, pausedIDs := fixture(t, se.db, "Hi", [2]string{"E", ""})
	se.exec(t, `UPDATE campaigns SET status = 'paused' WHERE id = $1`, paused)

	f := newFeeder(se.svc)
	if _, _, err := f.round(ctx); err != nil {
		t.Fatal(err)
	}
	got := se.ready(t)
	for _, id := range small {
		if !slices.Contains(got, id) {
			t.Errorf("the small campaign's message %d was not fed in the first round (ready holds %d)", id, len(got))
		}
	}
	if slices.Contains(got, pausedIDs[0]) {
		t.Error("a paused campaign's message was fed")
	}
	if int64(len(got)) > f.target() {
		t.Errorf("ready holds %d, above the target %d", len(got), f.target())
	}
}

// TestFeederMark: a feed starts after the last message it fed, so a
// message unqueued behind that (the stale sweep, a Redis loss) waits for
// the next rescan, feedRescanInterval later, and is fed then; a campaign
// that stops sending and sends again (pause, resume) is fed from its first
// message at once.
func TestFeederMark(t *testing.T) {
	t.Parallel()
	se := newSweepEnv(t, MaintenanceOptions{})
	ctx := context.Background()
	now := time.Date(2026, 11, 30, 12, 0, 0, 0, time.UTC)
	se.svc.now = func() time.Time { return now }
	campaignID, ids := fixture(t, se.db, "Hi", fourCustomers...)
	f := newFeeder(se.svc)
	drain := func() []int64 {
		t.Helper()
		got := se.ready(t)
		if err := se.rdb.Del(ctx, se.queue.Keys().Ready).Err(); err != nil {
			t.Fatal(err)
		}
		return got
	}
	round := func() {
		t.Helper()
		if _, _, err := f.round(ctx); err != nil {
			t.Fatal(err)
		}
	}
	round()
	if diff := cmp.Diff(sortedIDs(ids...), drain()); diff != "" {
		t.Fatalf("first round (-want +got):\n%s", diff)
	}
	if m := f.marks[campaignID]; m.after != slices.Max(ids) {
		t.Fatalf("mark after %d, want the last id fed, %d", m.after, slices.Max(ids))
	}

	unqueue := func() { se.exec(t, `UPDATE outbound_messages SET queued_at = NULL WHERE id = $1`, ids[0]) }
	unqueue()
	now = now.Add(feedRescanInterval - time.Second)
	round()
	if got := drain(); len(got) != 0 {
		t.Errorf("before the rescan, fed %v; want nothing (the message is behind the mark)", got)
	}
	now = now.Add(time.Second)
	round()
	if diff := cmp.Diff([]int64{ids[0]}, drain()); diff != "" {
		t.Errorf("at the rescan (-want +got):\n%s", diff)
	}

	// This process's sweeper asks for a rescan at once.
	unqueue()
	se.svc.rescan.Store(true)
	round()
	if diff := cmp.Diff([]int64{ids[0]}, drain()); diff != "" {
		t.Errorf("after the sweeper asked for a rescan (-want +got):\n%s", diff)
	}

	// Paused, its message unqueued as a worker drops it, then resumed.
	se.exec(t, `UPDATE campaigns SET status = 'paused' WHERE id = $1`, campaignID)
	unqueue()
	round()
	se.exec(t, `UPDATE campaigns SET status = 'sending' WHERE id = $1`, campaignID)
	round()
	if diff := cmp.Diff([]int64{ids[0]}, drain()); diff != "" {
		t.Errorf("after resume, before any rescan is due (-want +got):\n%s", diff)
	}
}

// TestEnqueueStormQueuesNothingTwice: resume and retry-failed call Enqueue;
// a thousand calls push nothing that is already queued.
func TestEnqueueStormQueuesNothingTwice(t *testing.T) {
	t.Parallel()
	se := newSweepEnv(t, MaintenanceOptions{})
	ctx := context.Background()
	campaignID, ids := fixture(t, se.db, "Hi", fourCustomers...)
	want := se.feedAll(t)
	for range 1000 {
		if err := se.svc.Enqueue(ctx, campaignID, 0, nil, nil); err != nil {
			t.Fatal(err)
		}
	}
	if diff := cmp.Diff(sortedIDs(ids...), se.feedAll(t)); diff != "" || len(want) != len(ids) {
		t.Errorf("after 1,000 enqueues, ready (-each message once +got):\n%s", diff)
	}
}

// TestSweepUnqueuesStale: a queued or sending message that has not moved for
// StaleAfter is marked unqueued (a sending one back to pending) and touched,
// so the feeder queues it again once; a message never queued is waiting its
// turn, not stale.
func TestSweepUnqueuesStale(t *testing.T) {
	t.Parallel()
	se := newSweepEnv(t, MaintenanceOptions{StaleAfter: 10 * time.Minute})
	ctx := context.Background()
	se.markEpoch(t)
	_, ids := fixture(t, se.db, "Hi", [2]string{"A", ""}, [2]string{"B", ""}, [2]string{"C", ""},
		[2]string{"D", ""}, [2]string{"E", ""}, [2]string{"F", ""}, [2]string{"G", ""})
	stalePending, staleSending, fresh, waitingRetry, oldSent, oldFailed, neverQueued :=
		ids[0], ids[1], ids[2], ids[3], ids[4], ids[5], ids[6]
	se.queued(t, stalePending, staleSending, fresh, waitingRetry)
	se.exec(t, `UPDATE outbound_messages SET updated_at = now() - interval '1 hour',
    queued_at = queued_at - interval '1 hour' WHERE id = ANY($1)`,
		pq.Array([]int64{stalePending, staleSending, waitingRetry, oldSent, oldFailed, neverQueued}))
	se.exec(t, `UPDATE outbound_messages SET status = 'sending' WHERE id = $1`, staleSending)
	se.exec(t, `UPDATE outbound_messages SET status = 'sent' WHERE id = $1`, oldSent)
	se.exec(t, `UPDATE outbound_messages SET status = 'failed' WHERE id = $1`, oldFailed)
	// A retry that is not due yet is waiting, not stale.
	se.exec(t, `UPDATE outbound_messages SET retry_count = 1, next_attempt_at = now() + interval '1 hour' WHERE id = $1`, waitingRetry)

	se.svc.Sweep(ctx)
	got := messages(t, se.db, ids)
	for _, id := range []int64{stalePending, staleSending} {
		if got[id].Status != StatusPending || time.Since(got[id].UpdatedAt) > time.Minute {
			t.Errorf("stale message %d: %s, updated %v ago; want pending and touched", id, got[id].Status, time.Since(got[id].UpdatedAt))
		}
	}
	for id, st := range map[int64]Status{fresh: StatusPending, waitingRetry: StatusPending, oldSent: StatusSent, oldFailed: StatusFailed} {
		if got[id].Status != st {
			t.Errorf("message %d is %s, want %s untouched", id, got[id].Status, st)
		}
	}
	if age := time.Since(got[neverQueued].UpdatedAt); age < 30*time.Minute {
		t.Errorf("a message never queued was touched as stale (updated %v ago)", age)
	}
	// Fed: the stale ones again, and the one never queued; not the fresh
	// queued one nor the waiting retry.
	want := sortedIDs(stalePending, staleSending, neverQueued)
	if diff := cmp.Diff(want, se.feedAll(t)); diff != "" {
		t.Errorf("ready after the sweep and a feed (-want +got):\n%s", diff)
	}
	// Touched, the messages are not stale any more: nothing is queued again.
	se.svc.Sweep(ctx)
	if diff := cmp.Diff(want, se.feedAll(t)); diff != "" {
		t.Errorf("the second sweep queued again (-want +got):\n%s", diff)
	}
}
