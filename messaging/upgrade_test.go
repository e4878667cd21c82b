package messaging

import (
	"context"
	"testing"

	"github.com/google/go-cmp/cmp"

	"github.com/campaignd/dispatch/messaging/queue"
	"github.com/campaignd/dispatch/platform/postgres/pgtest"
	"github.com/campaignd/dispatch/platform/redisx/redistest"
)

// TestSweepRebuildsAfterHashTagUpgrade: a Redis that a binary from before
// the hash tags used holds the queue under untagged keys (<prefix>jobs,
// <prefix>jobs:epoch). The new binary's first sweep finds no tagged epoch,
// so it rebuilds the queue from PostgreSQL as after a flush: the message
// being delivered is pushed again and the queued pending one is fed again,
// each once. The old keys are left as they were.
func TestSweepRebuildsAfterHashTagUpgrade(t *testing.T) {
	t.Parallel()
	db := pgtest.New(t)
	rdb, prefix := redistest.New(t)
	q := queue.New(rdb, prefix, "jobs")
	se := &sweepEnv{db: db.DB, rdb: rdb, queue: q, svc: NewService(NewRepo(db.DB), q, MaintenanceOptions{}, quiet)}
	ctx := context.Background()
	_, ids := fixture(t, se.db, "Hi", [2]string{"A", ""}, [2]string{"B", ""})
	se.setStatus(t, ids[1], StatusSending)
	se.queued(t, ids[0], ids[1])

	// What the older binary left: its epoch and its ready list.
	oldReady, oldEpoch := prefix+"jobs", prefix+"jobs:epoch"
	if err := rdb.Set(ctx, oldEpoch, "2026-01-01T00:00:00Z", 0).Err(); err != nil {
		t.Fatal(err)
	}
	if err := rdb.LPush(ctx, oldReady, ids[0]).Err(); err != nil {
		t.Fatal(err)
	}
	if oldReady == q.Keys().Ready || oldEpoch == q.Keys().Epoch {
		t.Fatalf("the queue still uses the untagged keys %s, %s", oldReady, oldEpoch)
	}

	if err := se.svc.Sweep(ctx); err != nil {
		t.Fatal(err)
	}
	if diff := cmp.Diff([]int64{ids[1]}, se.ready(t)); diff != "" {
		t.Errorf("after the first sweep, ready (-the message being delivered +got):\n%s", diff)
	}
	if diff := cmp.Diff(sortedIDs(ids[0], ids[1]), se.feedAll(t)); diff != "" {
		t.Errorf("after feeding, ready (-both messages once +got):\n%s", diff)
	}
	if n, _ := rdb.Exists(ctx, q.Keys().Epoch).Result(); n != 1 {
		t.Error("the sweep did not set the tagged epoch key")
	}
	if n, _ := rdb.LLen(ctx, oldReady).Result(); n != 1 {
		t.Errorf("the old ready list holds %d ids, want the 1 left by the old binary", n)
	}
}
