//go:build linux || darwin

package main

import (
	"context"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/campaignd/dispatch/messaging/queue"
	"github.com/campaignd/dispatch/platform/redisx/redistest"
)

// The crash rig on a Redis Cluster: the binary runs against a local
// three-master cluster (REDIS_CLUSTER_ADDRS) started by the test, so every
// Lua script, MULTI and BLMOVE of the queue runs where a slot boundary
// would refuse it (CROSSSLOT) unless the queue's keys share a hash tag.

// newClusterCrashEnv is newCrashEnv with the processes pointed at c.
func newClusterCrashEnv(t *testing.T, c *redistest.Cluster, overrides map[string]string) *crashEnv {
	t.Helper()
	e := newCrashEnv(t, "", overrides)
	e.vars["REDIS_CLUSTER_ADDRS"] = c.AddrList()
	return e
}

// requireQueueOnCluster checks that the process really keeps its queue on
// the cluster: the queue's epoch marker is there, under its hash tag.
func (e *crashEnv) requireQueueOnCluster(c *redistest.Cluster) {
	t := e.t
	t.Helper()
	rdb, _ := c.Client(t)
	key := queue.New(rdb, e.vars["REDIS_KEY_PREFIX"], "campaign_sends").Keys().Epoch
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	deadline := time.Now().Add(10 * time.Second)
	for {
		n, err := rdb.Exists(ctx, key).Result()
		if err == nil && n == 1 {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("no %s on the cluster 10s after start (%v): the process is not using it", key, err)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// TestCrashClusterCampaign delivers a 3,000-message campaign through a
// three-master Redis Cluster, SIGKILLs the process mid-run and starts
// another: every message ends final and none is delivered twice, as on one
// node (TestCrashSIGKILLMidRun).
func TestCrashClusterCampaign(t *testing.T) {
	t.Parallel()
	requireBinary(t)
	c := redistest.NewCluster(t)
	e := newClusterCrashEnv(t, c, nil)
	p := e.start("first")
	e.requireQueueOnCluster(c)
	e.setupCampaign(p, crashMessages)

	before := e.waitSentAbove(p, 0.10)
	p.kill(t)
	after := e.counts()
	e.event("SIGKILL on the cluster with %v (just before the kill: %v)", after, before)
	if after.active() == 0 {
		t.Fatalf("nothing pending or sending right after the kill, so the kill was not mid-run: %v", after)
	}

	p2 := e.start("after-sigkill")
	final := e.waitAllFinal(p2)
	e.verifyExactlyOnce(final)
	for _, proc := range []*dispatchProc{p, p2} {
		if out := proc.out.String(); strings.Contains(out, "CROSSSLOT") {
			t.Errorf("process %s met CROSSSLOT: %s", proc.name, tail(out, 4000))
		}
	}
}

// TestCrashClusterFlushMidRun is TestCrashRedisFlushMidRun on a cluster:
// FLUSHALL on every master mid-run loses the queue wherever its slot lives.
// The sweeper must see the epoch gone and rebuild the queue from
// PostgreSQL, with no restart; every message ends final, none twice.
func TestCrashClusterFlushMidRun(t *testing.T) {
	t.Parallel()
	requireBinary(t)
	c := redistest.NewCluster(t)
	e := newClusterCrashEnv(t, c, nil)
	p := e.start("first")
	e.requireQueueOnCluster(c)
	e.setupCampaign(p, crashMessages)

	const rebuilt = "queue (re)built from postgres"
	before := e.waitSentAbove(p, 0.10)
	rebuildsBefore := strings.Count(p.out.String(), rebuilt)
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if err := c.FlushAll(ctx); err != nil {
		t.Fatal(err)
	}
	e.event("FLUSHALL on every master with %v", before)

	deadline := time.Now().Add(30 * time.Second)
	for strings.Count(p.out.String(), rebuilt) <= rebuildsBefore {
		if p.exited() {
			t.Fatalf("process exited after FLUSHALL: %v", p.state)
		}
		if time.Now().After(deadline) {
			t.Fatalf("no %q logged within 30s of FLUSHALL", rebuilt)
		}
		time.Sleep(20 * time.Millisecond)
	}
	lines := regexp.MustCompile(`"msg":"queue \(re\)built from postgres[^}]*"pending_to_feed":(\d+),"sending_pushed":(\d+)`).FindAllStringSubmatch(p.out.String(), -1)
	if len(lines) == 0 {
		t.Fatalf("the rebuild line does not say what it did: %s", tail(p.out.String(), 2000))
	}
	last := lines[len(lines)-1]
	e.event("sweeper rebuilt the queue from PostgreSQL after the flush: %s pending messages marked for the feeder, %s being delivered pushed again", last[1], last[2])

	final := e.waitAllFinal(p)
	e.verifyExactlyOnce(final)
}
