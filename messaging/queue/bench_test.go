package queue

import (
	"context"
	"testing"
	"time"

	"github.com/campaignd/dispatch/platform/redisx"
	"github.com/campaignd/dispatch/platform/redisx/redistest"
)

// BenchmarkQueueCycle is the queue alone, a private node against a local
// three-master cluster (the same redis-server binary) in the same run: each op pushes a batch of 100 ids,
// fetches them into a processing list (Lua) and settles them (MULTI), the
// Redis side of delivering 100 messages. It reports ids/s on each and
// cluster/single.
//
//	go test -run='^$' -bench=QueueCycle ./messaging/queue/
func BenchmarkQueueCycle(b *testing.B) {
	const batch = 100
	ids := seq(1, batch)
	var elapsed [2]time.Duration
	// A private node, not the shared one: that one carries every other
	// test's load, which would flatter the cluster.
	single, err := redisx.Open(context.Background(), redistest.NewServer(b))
	if err != nil {
		b.Fatal(err)
	}
	defer single.Close()
	cl, prefix := redistest.NewCluster(b).Client(b)
	qts := []*queueTest{
		{q: New(single, prefix, "jobs"), rdb: single},
		{q: New(cl, prefix, "jobs"), rdb: cl},
	}
	ctx := context.Background()
	cycle := func(qt *queueTest) {
		if err := qt.q.Push(ctx, ids); err != nil {
			b.Fatal(err)
		}
		got, err := qt.q.Fetch(ctx, "c", batch, 0)
		if err != nil || len(got) != batch {
			b.Fatalf("Fetch = %d ids, %v", len(got), err)
		}
		if err := qt.q.Settle(ctx, "c", Settlement{Done: got}); err != nil {
			b.Fatal(err)
		}
	}
	n := 0
	for ; b.Loop(); n++ {
		// Alternate, so drift in the host's load hits both alike.
		for i, qt := range qts {
			start := time.Now()
			cycle(qt)
			elapsed[i] += time.Since(start)
		}
	}
	onNode, onCluster := float64(n*batch)/elapsed[0].Seconds(), float64(n*batch)/elapsed[1].Seconds()
	b.ReportMetric(onNode, "single_ids/s")
	b.ReportMetric(onCluster, "cluster_ids/s")
	b.ReportMetric(onCluster/onNode, "cluster/single")
}
