//go:build linux || darwin

package main

import (
	"context"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/lib/pq"
	"github.com/redis/go-redis/v9"

	"github.com/campaignd/dispatch/messaging/queue"
)

// TestReplicasKillOneOfThree runs three replicas of the binary on one
// PostgreSQL database and one Redis prefix, SIGKILLs one of them while a
// campaign is being delivered, and checks that the two others take over its
// work in time and finish the campaign: every message final, none delivered
// twice, campaign sent. "In time" is what the configuration promises: the
// dead replica's processing list is reclaimed once its heartbeat is older
// than WORKER_CONSUMER_TTL (plus a reaper tick), and the messages it held
// are final within WORKER_CONSUMER_TTL + WORKER_LEASE (the lease guards the
// ones it had claimed), plus a margin for this slow, shared machine.
func TestReplicasKillOneOfThree(t *testing.T) {
	t.Parallel()
	const messages = 4000
	e := newCrashEnv(t, defaultRedisURL(), map[string]string{
		// Every attempt succeeds, so the dead replica's messages end after
		// one delivery, not after retries' backoff.
		"SENDER_SUCCESS_RATE": "1",
		"SENDER_MIN_LATENCY":  "40ms",
		"SENDER_MAX_LATENCY":  "80ms",
	})
	heartbeat, err := time.ParseDuration(e.vars["WORKER_HEARTBEAT_INTERVAL"])
	if err != nil {
		t.Fatal(err)
	}
	a := e.start("replica-a")
	e.setupCampaign(a, messages)
	b := e.startReplica("replica-b", nil)
	c := e.startReplica("replica-c", nil)
	victim := consumerOf(t, b)

	rdb := redisClient(t, e.redisURL)
	// The processes use the default queue.name.
	processing := queue.New(rdb, e.vars["REDIS_KEY_PREFIX"], "campaign_sends").Keys().ProcessingPrefix + victim

	before := e.waitSentAbove(a, 0.20)
	b.kill(t)
	killedAt := time.Now()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	held, err := rdb.LRange(ctx, processing, 0, -1).Result()
	if err != nil {
		t.Fatalf("read the dead replica's processing list: %v", err)
	}
	after := e.counts()
	e.event("SIGKILL replica-b (consumer %s) holding %d jobs, with %v (just before: %v)", victim, len(held), after, before)
	if len(held) == 0 {
		t.Fatalf("the killed replica held no job: the kill proves nothing (%v)", after)
	}
	if after.active() == 0 {
		t.Fatalf("nothing pending or sending right after the kill: %v", after)
	}
	ids := make([]int64, 0, len(held))
	for _, s := range held {
		id, err := strconv.ParseInt(s, 10, 64)
		if err != nil {
			t.Fatalf("processing list holds %q, not a message id", s)
		}
		ids = append(ids, id)
	}

	// The reaper of replica a or c returns the list to the ready queue.
	reapBound := crashConsumerTTL + 2*heartbeat + 2*time.Second
	var reapedAfter time.Duration
	for {
		n, err := rdb.Exists(ctx, processing).Result()
		if err != nil {
			t.Fatalf("check the dead replica's processing list: %v", err)
		}
		if n == 0 {
			reapedAfter = time.Since(killedAt)
			break
		}
		if time.Since(killedAt) > reapBound {
			t.Fatalf("the dead replica's processing list still exists %v after the kill (consumer TTL %v)", reapBound, crashConsumerTTL)
		}
		time.Sleep(20 * time.Millisecond)
	}

	// Every message it held ends final, delivered by a survivor.
	finishBound := crashConsumerTTL + crashLease + 3*time.Second
	var finishedAfter time.Duration
	for {
		var active int
		if err := e.db.GetContext(ctx, &active, `
SELECT count(*) FROM outbound_messages WHERE id = ANY($1) AND status IN ('pending', 'sending')`, pq.Array(ids)); err != nil {
			t.Fatalf("count the dead replica's unfinished messages: %v", err)
		}
		if active == 0 {
			finishedAfter = time.Since(killedAt)
			break
		}
		if time.Since(killedAt) > finishBound {
			t.Fatalf("%d of the %d messages the dead replica held are not final %v after the kill "+
				"(consumer TTL %v + lease %v + 3s)", active, len(ids), finishBound, crashConsumerTTL, crashLease)
		}
		if a.exited() || c.exited() {
			t.Fatalf("a surviving replica exited: a %v, c %v", a.state, c.state)
		}
		time.Sleep(50 * time.Millisecond)
	}
	e.event("dead replica's %d jobs reclaimed %v after the kill, all final %v after it (bounds %v and %v)",
		len(ids), reapedAfter.Round(time.Millisecond), finishedAfter.Round(time.Millisecond), reapBound, finishBound)

	final := e.waitAllFinal(c)
	if a.exited() {
		t.Fatalf("replica a exited: %v", a.state)
	}
	e.verifyExactlyOnce(final)
}

// consumerOf reads p's worker consumer id (its processing list's name) from
// the pool's start-up log line.
func consumerOf(t testing.TB, p *dispatchProc) string {
	t.Helper()
	re := regexp.MustCompile(`"consumer":"([^"]+)"`)
	for line := range strings.Lines(p.out.String()) {
		if strings.Contains(line, `"worker pool starting"`) {
			if m := re.FindStringSubmatch(line); m != nil {
				return m[1]
			}
		}
	}
	t.Fatalf("process %s logged no \"worker pool starting\" line with its consumer", p.name)
	return ""
}

// redisClient is a client of url, closed when the test ends.
func redisClient(t testing.TB, url string) *redis.Client {
	t.Helper()
	opts, err := redis.ParseURL(url)
	if err != nil {
		t.Fatal(err)
	}
	c := redis.NewClient(opts)
	t.Cleanup(func() { c.Close() })
	return c
}
