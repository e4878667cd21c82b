package queue

import (
	"context"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"

	"github.com/campaignd/dispatch/platform/redisx"
	"github.com/campaignd/dispatch/platform/redisx/redistest"
)

// TestQueueOnSentinel runs the queue through a client opened the way the
// service opens one for REDIS_SENTINEL_ADDRS and REDIS_SENTINEL_MASTER: the
// Sentinel names the primary, and push, fetch, settle, promote and release
// work there. (Behind the Sentinel the primary is one node: the single-node
// backend covers the rest of the queue's behaviour.)
func TestQueueOnSentinel(t *testing.T) {
	t.Parallel()
	s := redistest.NewSentinel(t)
	ctx := context.Background()
	rdb, err := redisx.OpenWith(ctx, redisx.Target{SentinelAddrs: s.Addrs, SentinelMaster: s.Master}, redisx.Options{PoolSize: 4})
	if err != nil {
		t.Fatalf("open through the Sentinel: %v", err)
	}
	t.Cleanup(func() { rdb.Close() })
	qt := &queueTest{q: New(rdb, redistest.NewPrefix(), "jobs"), rdb: rdb}

	qt.push(t, 1, 2, 3)
	if diff := cmp.Diff([]int64{1, 2, 3}, qt.fetch(t, "c", 10)); diff != "" {
		t.Fatalf("fetched (-want +got):\n%s", diff)
	}
	qt.settle(t, "c", Settlement{Done: []int64{1}, Delay: map[int64]time.Time{2: time.Now().Add(-time.Second)}})
	if n, err := qt.q.PromoteDue(ctx, time.Now()); err != nil || n != 1 {
		t.Fatalf("PromoteDue = %d, %v; want 1", n, err)
	}
	if n, err := qt.q.Release(ctx, "c"); err != nil || n != 1 {
		t.Fatalf("Release = %d, %v; want 1 (id 3)", n, err)
	}
	if diff := cmp.Diff([]int64{3, 2}, qt.readyInFetchOrder(t)); diff != "" {
		t.Errorf("ready (-want +got):\n%s", diff)
	}
	if lost, err := qt.q.EnsureEpoch(ctx); err != nil || !lost {
		t.Errorf("EnsureEpoch on a fresh primary = %v, %v; want true", lost, err)
	}
}
