package queue

import (
	"context"
	"errors"
	"fmt"
	"maps"
	"os"
	"slices"
	"strconv"
	"sync"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"github.com/redis/go-redis/v9"

	"github.com/campaignd/dispatch/platform/errs"
	"github.com/campaignd/dispatch/platform/redisx"
	"github.com/campaignd/dispatch/platform/redisx/redistest"
)

// errUnavailableProbe matches every UNAVAILABLE errs.Error (errors.Is
// compares codes).
var errUnavailableProbe = errs.New(errs.KindUnavailable, errs.CodeUnavailable, "unavailable")

func TestMain(m *testing.M) {
	code := m.Run()
	redistest.StopSharedCluster()
	os.Exit(code)
}

// backend is a Redis the queue's behaviour is checked on: the one node, and
// a local three-master cluster, where every Lua script, MULTI and BLMOVE
// must find its keys in one slot.
type backend struct {
	name string
	// open returns a client and a fresh key prefix, both cleaned up
	// when t ends.
	open func(t testing.TB) (redis.UniversalClient, string)
	// dial returns a client of its own, which the caller closes.
	dial func(t *testing.T) redis.UniversalClient
}

var backends = []backend{
	{
		name: "single",
		open: func(t testing.TB) (redis.UniversalClient, string) { return redistest.New(t) },
		dial: func(t *testing.T) redis.UniversalClient {
			c, err := redisx.Open(context.Background(), redistest.URL())
			if err != nil {
				t.Fatal(err)
			}
			return c
		},
	},
	{
		name: "cluster",
		open: func(t testing.TB) (redis.UniversalClient, string) { return redistest.SharedCluster(t).Client(t) },
		dial: func(t *testing.T) redis.UniversalClient {
			c, err := redisx.OpenWith(context.Background(), redisx.Target{ClusterAddrs: redistest.SharedCluster(t).Addrs}, redisx.Options{})
			if err != nil {
				t.Fatal(err)
			}
			return c
		},
	},
}

// forBackends runs test on each backend, in parallel subtests.
func forBackends(t *testing.T, test func(*testing.T, backend)) {
	for _, b := range backends {
		t.Run(b.name, func(t *testing.T) {
			t.Parallel()
			test(t, b)
		})
	}
}

// queueTest is a Queue under a fresh key prefix on a backend.
type queueTest struct {
	q   *Queue
	rdb redis.UniversalClient
}

func (b backend) newQueueTest(t *testing.T) *queueTest {
	t.Helper()
	rdb, prefix := b.open(t)
	return &queueTest{q: New(rdb, prefix, "jobs"), rdb: rdb}
}

func (qt *queueTest) push(t *testing.T, ids ...int64) {
	t.Helper()
	if err := qt.q.Push(context.Background(), ids); err != nil {
		t.Fatalf("Push: %v", err)
	}
}

func (qt *queueTest) fetch(t *testing.T, consumer string, n int) []int64 {
	t.Helper()
	ids, err := qt.q.Fetch(context.Background(), consumer, n, time.Second)
	if err != nil {
		t.Fatalf("Fetch: %v", err)
	}
	return ids
}

func (qt *queueTest) settle(t *testing.T, consumer string, s Settlement) {
	t.Helper()
	if err := qt.q.Settle(context.Background(), consumer, s); err != nil {
		t.Fatalf("Settle: %v", err)
	}
}

// list returns a Redis list's ids from left to right.
func (qt *queueTest) list(t *testing.T, key string) []int64 {
	t.Helper()
	vals, err := qt.rdb.LRange(context.Background(), key, 0, -1).Result()
	if err != nil {
		t.Fatalf("LRANGE %s: %v", key, err)
	}
	return parseIDs(t, vals)
}

func parseIDs(t *testing.T, vals []string) []int64 {
	t.Helper()
	ids := make([]int64, 0, len(vals))
	for _, v := range vals {
		id, err := strconv.ParseInt(v, 10, 64)
		if err != nil {
			t.Fatalf("%q is not an id", v)
		}
		ids = append(ids, id)
	}
	return ids
}

// readyInFetchOrder returns the ready list in the order consumers take it
// (from the right).
func (qt *queueTest) readyInFetchOrder(t *testing.T) []int64 {
	t.Helper()
	ids := qt.list(t, qt.q.keys.Ready)
	slices.Reverse(ids)
	return ids
}

func (qt *queueTest) processing(t *testing.T, consumer string) []int64 {
	t.Helper()
	ids := qt.list(t, qt.q.keys.ProcessingPrefix+consumer)
	slices.Sort(ids)
	return ids
}

// delayed returns the delayed set as id → due time in unix milliseconds.
func (qt *queueTest) delayed(t *testing.T) map[int64]int64 {
	t.Helper()
	zs, err := qt.rdb.ZRangeWithScores(context.Background(), qt.q.keys.Delayed, 0, -1).Result()
	if err != nil {
		t.Fatalf("ZRANGE delayed: %v", err)
	}
	out := map[int64]int64{}
	for _, z := range zs {
		id, err := strconv.ParseInt(z.Member.(string), 10, 64)
		if err != nil {
			t.Fatalf("delayed member %v", z.Member)
		}
		out[id] = int64(z.Score)
	}
	return out
}

func (qt *queueTest) consumers(t *testing.T) []string {
	t.Helper()
	cs, err := qt.rdb.ZRange(context.Background(), qt.q.keys.Consumers, 0, -1).Result()
	if err != nil {
		t.Fatalf("ZRANGE consumers: %v", err)
	}
	slices.Sort(cs)
	return cs
}

func seq(from, to int64) []int64 {
	var ids []int64
	for i := from; i <= to; i++ {
		ids = append(ids, i)
	}
	return ids
}

func TestQueueFIFO(t *testing.T) {
	t.Parallel()
	forBackends(t, testQueueFIFO)
}

func testQueueFIFO(t *testing.T, b backend) {
	qt := b.newQueueTest(t)
	// More than one LPUSH chunk, in two pushes.
	first, second := seq(1, 2500), seq(2501, 2600)
	qt.push(t, first...)
	qt.push(t, second...)

	got := qt.fetch(t, "c1", 700)
	if diff := cmp.Diff(seq(1, 700), got); diff != "" {
		t.Fatalf("first fetch (-want +got):\n%s", diff)
	}
	// Fetched ids sit in the consumer's processing list until settled.
	if diff := cmp.Diff(seq(1, 700), qt.processing(t, "c1")); diff != "" {
		t.Errorf("processing list (-want +got):\n%s", diff)
	}
	if n, _ := qt.rdb.LLen(context.Background(), qt.q.keys.Ready).Result(); n != 1900 {
		t.Errorf("ready list holds %d, want 1900", n)
	}
	for len(got) < 2600 {
		ids := qt.fetch(t, "c1", 1000)
		if len(ids) == 0 {
			t.Fatalf("queue ran dry after %d ids", len(got))
		}
		got = append(got, ids...)
	}
	if diff := cmp.Diff(append(first, second...), got); diff != "" {
		t.Errorf("ids in fetch order (-pushed +fetched):\n%s", diff)
	}
	if n := len(qt.processing(t, "c1")); n != 2600 {
		t.Errorf("processing list holds %d, want 2600", n)
	}
	if err := qt.q.Push(context.Background(), nil); err != nil {
		t.Errorf("Push of nothing: %v", err)
	}

	t.Run("consumers have separate processing lists", func(t *testing.T) {
		qt := b.newQueueTest(t)
		qt.push(t, 1, 2, 3)
		a, b := qt.fetch(t, "a", 2), qt.fetch(t, "b", 5)
		if diff := cmp.Diff([][]int64{{1, 2}, {3}}, [][]int64{a, b}); diff != "" {
			t.Errorf("fetched (-want +got):\n%s", diff)
		}
		if diff := cmp.Diff([][]int64{{1, 2}, {3}}, [][]int64{qt.processing(t, "a"), qt.processing(t, "b")}); diff != "" {
			t.Errorf("processing lists (-want +got):\n%s", diff)
		}
	})

	t.Run("entries that are not ids are dropped", func(t *testing.T) {
		qt := b.newQueueTest(t)
		if err := qt.rdb.LPush(context.Background(), qt.q.keys.Ready, "junk").Err(); err != nil {
			t.Fatal(err)
		}
		qt.push(t, 7)
		if diff := cmp.Diff([]int64{7}, qt.fetch(t, "c", 10)); diff != "" {
			t.Errorf("fetched (-want +got):\n%s", diff)
		}
		if diff := cmp.Diff([]int64{7}, qt.processing(t, "c")); diff != "" {
			t.Errorf("processing (-want +got):\n%s", diff)
		}
	})
}

func TestQueueFetchEmptyWaits(t *testing.T) {
	t.Parallel()
	forBackends(t, testQueueFetchEmptyWaits)
}

func testQueueFetchEmptyWaits(t *testing.T, b backend) {
	// 0 and sub-millisecond waits mean "do not block". BLMOVE reads a
	// timeout of 0 as "block forever", and go-redis ignores context
	// deadlines (ContextTimeoutEnabled is off), so each Fetch runs on its own
	// client, which is closed to unblock it if it overstays.
	waits := []time.Duration{0, 100 * time.Microsecond, 100 * time.Millisecond, 300 * time.Millisecond, 1500 * time.Millisecond}
	for _, wait := range waits {
		t.Run(wait.String(), func(t *testing.T) {
			t.Parallel()
			qt := b.newQueueTest(t)
			own := b.dial(t)
			q := &Queue{rdb: own, keys: qt.q.keys}
			type fetched struct {
				ids []int64
				err error
			}
			done := make(chan fetched, 1)
			start := time.Now()
			go func() { // exits when Fetch returns, at the latest when own is closed
				ids, err := q.Fetch(context.Background(), "c", 10, wait)
				done <- fetched{ids, err}
			}()
			limit := wait + 400*time.Millisecond // "blocks for at most wait", plus scheduling slack
			select {
			case got := <-done:
				own.Close()
				if got.err != nil || len(got.ids) != 0 {
					t.Fatalf("Fetch on an empty queue = %v, %v; want nothing", got.ids, got.err)
				}
				if elapsed := time.Since(start); elapsed > limit {
					t.Errorf("Fetch(wait=%v) on an empty queue blocked for %v", wait, elapsed)
				}
			case <-time.After(limit + 2*time.Second):
				own.Close()
				<-done
				t.Errorf("Fetch(wait=%v) on an empty queue was still blocked after %v", wait, time.Since(start))
			}
			if n := len(qt.processing(t, "c")); n != 0 {
				t.Errorf("processing holds %d after an empty fetch", n)
			}
		})
	}

	t.Run("wakes up for a job pushed while waiting", func(t *testing.T) {
		t.Parallel()
		qt := b.newQueueTest(t)
		pushed := make(chan error, 1)
		time.AfterFunc(200*time.Millisecond, func() { pushed <- qt.q.Push(context.Background(), []int64{42}) })
		start := time.Now()
		ids, err := qt.q.Fetch(context.Background(), "c", 10, 5*time.Second)
		if err != nil {
			t.Fatal(err)
		}
		if perr := <-pushed; perr != nil {
			t.Fatal(perr)
		}
		if diff := cmp.Diff([]int64{42}, ids); diff != "" {
			t.Errorf("fetched (-want +got):\n%s", diff)
		}
		if d := time.Since(start); d > 3*time.Second {
			t.Errorf("Fetch returned after %v, want soon after the push", d)
		}
		if diff := cmp.Diff([]int64{42}, qt.processing(t, "c")); diff != "" {
			t.Errorf("processing (-want +got):\n%s", diff)
		}
	})
}

// queueState is the observable contents of a queue for one consumer.
type queueState struct {
	Ready      []int64 // in fetch order
	Processing []int64 // sorted
	Delayed    map[int64]int64
	Dead       []int64 // newest first
}

func (qt *queueTest) state(t *testing.T, consumer string) queueState {
	t.Helper()
	return queueState{
		Ready:      qt.readyInFetchOrder(t),
		Processing: qt.processing(t, consumer),
		Delayed:    qt.delayed(t),
		Dead:       qt.list(t, qt.q.keys.Dead),
	}
}

func TestQueueSettle(t *testing.T) {
	t.Parallel()
	forBackends(t, testQueueSettle)
}

func testQueueSettle(t *testing.T, b backend) {
	at := time.Date(2030, 1, 2, 3, 4, 5, 678_000_000, time.UTC)
	ms := at.UnixMilli()
	tests := []struct {
		name string
		s    Settlement
		want queueState
	}{
		{
			name: "nothing",
			want: queueState{Ready: []int64{7, 8}, Processing: []int64{1, 2, 3, 4, 5}, Delayed: map[int64]int64{}, Dead: []int64{}},
		},
		{
			name: "done acknowledges",
			s:    Settlement{Done: []int64{1, 3}},
			want: queueState{Ready: []int64{7, 8}, Processing: []int64{2, 4, 5}, Delayed: map[int64]int64{}, Dead: []int64{}},
		},
		{
			name: "delay moves to the delayed set at the due time",
			s:    Settlement{Delay: map[int64]time.Time{2: at, 4: at.Add(time.Hour)}},
			want: queueState{Ready: []int64{7, 8}, Processing: []int64{1, 3, 5},
				Delayed: map[int64]int64{2: ms, 4: ms + time.Hour.Milliseconds()}, Dead: []int64{}},
		},
		{
			name: "dead goes to the dead-letter list",
			s:    Settlement{Dead: []int64{5, 1}},
			want: queueState{Ready: []int64{7, 8}, Processing: []int64{2, 3, 4}, Delayed: map[int64]int64{}, Dead: []int64{1, 5}},
		},
		{
			name: "requeue goes to the front",
			s:    Settlement{Requeue: []int64{3, 1}},
			want: queueState{Ready: []int64{1, 3, 7, 8}, Processing: []int64{2, 4, 5}, Delayed: map[int64]int64{}, Dead: []int64{}},
		},
		{
			name: "all at once",
			s:    Settlement{Done: []int64{1}, Delay: map[int64]time.Time{2: at}, Dead: []int64{3}, Requeue: []int64{4, 5}},
			want: queueState{Ready: []int64{5, 4, 7, 8}, Processing: []int64{}, Delayed: map[int64]int64{2: ms}, Dead: []int64{3}},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			qt := b.newQueueTest(t)
			qt.push(t, 1, 2, 3, 4, 5)
			if got := qt.fetch(t, "c", 5); len(got) != 5 {
				t.Fatalf("fetched %v", got)
			}
			qt.push(t, 7, 8)
			qt.settle(t, "c", tt.s)
			if diff := cmp.Diff(tt.want, qt.state(t, "c")); diff != "" {
				t.Errorf("queue after Settle (-want +got):\n%s", diff)
			}
			// The next fetch takes what the ready list has at its front.
			if len(tt.want.Ready) > 0 {
				if diff := cmp.Diff(tt.want.Ready[:1], qt.fetch(t, "other", 1)); diff != "" {
					t.Errorf("next fetch (-want +got):\n%s", diff)
				}
			}
		})
	}

	t.Run("one copy per settlement", func(t *testing.T) {
		t.Parallel()
		qt := b.newQueueTest(t)
		qt.push(t, 9, 9, 9)
		qt.fetch(t, "c", 3)
		qt.settle(t, "c", Settlement{Done: []int64{9}})
		if diff := cmp.Diff([]int64{9, 9}, qt.processing(t, "c")); diff != "" {
			t.Errorf("processing (-want +got):\n%s", diff)
		}
	})

	t.Run("dead letters newest first", func(t *testing.T) {
		t.Parallel()
		qt := b.newQueueTest(t)
		qt.push(t, 1, 2, 3)
		qt.fetch(t, "c", 3)
		for _, id := range []int64{2, 1, 3} {
			qt.settle(t, "c", Settlement{Dead: []int64{id}})
		}
		got, err := qt.q.DeadLetters(context.Background(), 2)
		if err != nil {
			t.Fatal(err)
		}
		if diff := cmp.Diff([]int64{3, 1}, got); diff != "" {
			t.Errorf("DeadLetters(2) (-want +got):\n%s", diff)
		}
	})
}

func TestQueuePromoteDue(t *testing.T) {
	t.Parallel()
	forBackends(t, testQueuePromoteDue)
}

func testQueuePromoteDue(t *testing.T, b backend) {
	now := time.Now()
	ctx := context.Background()

	t.Run("only due ids", func(t *testing.T) {
		t.Parallel()
		qt := b.newQueueTest(t)
		qt.push(t, seq(1, 10)...)
		qt.fetch(t, "c", 10)
		delay := map[int64]time.Time{}
		for _, id := range seq(1, 6) {
			delay[id] = now.Add(-time.Duration(id) * time.Second)
		}
		delay[7] = now // due exactly now
		for _, id := range seq(8, 10) {
			delay[id] = now.Add(time.Hour)
		}
		qt.settle(t, "c", Settlement{Delay: delay})
		n, err := qt.q.PromoteDue(ctx, now)
		if err != nil || n != 7 {
			t.Fatalf("PromoteDue = %d, %v; want 7", n, err)
		}
		ready := qt.readyInFetchOrder(t)
		slices.Sort(ready)
		if diff := cmp.Diff(seq(1, 7), ready); diff != "" {
			t.Errorf("ready after promotion (-want +got):\n%s", diff)
		}
		left := qt.delayed(t)
		if diff := cmp.Diff([]int64{8, 9, 10}, slices.Sorted(maps.Keys(left))); diff != "" {
			t.Errorf("still delayed (-want +got):\n%s", diff)
		}
		if n, err := qt.q.PromoteDue(ctx, now); err != nil || n != 0 {
			t.Errorf("second PromoteDue = %d, %v; want 0", n, err)
		}
	})

	t.Run("at most 1000 a call", func(t *testing.T) {
		t.Parallel()
		qt := b.newQueueTest(t)
		addDelayed(t, qt, seq(1, 1200), now.Add(-time.Minute))
		var got []int
		for {
			n, err := qt.q.PromoteDue(ctx, now)
			if err != nil {
				t.Fatal(err)
			}
			if n == 0 {
				break
			}
			got = append(got, n)
		}
		if diff := cmp.Diff([]int{1000, 200}, got); diff != "" {
			t.Errorf("promoted per call (-want +got):\n%s", diff)
		}
	})

	t.Run("concurrent promoters never push an id twice", func(t *testing.T) {
		t.Parallel()
		qt := b.newQueueTest(t)
		due := seq(1, 5000)
		addDelayed(t, qt, due, now.Add(-time.Minute))
		addDelayed(t, qt, seq(100_001, 100_050), now.Add(time.Hour))
		const promoters = 8
		moved := make([]int, promoters)
		errs := make([]error, promoters)
		start := make(chan struct{})
		var wg sync.WaitGroup
		for g := range promoters {
			wg.Go(func() {
				<-start
				for {
					n, err := qt.q.PromoteDue(ctx, now)
					if err != nil {
						errs[g] = err
						return
					}
					if n == 0 {
						return
					}
					moved[g] += n
				}
			})
		}
		close(start)
		wg.Wait()
		total := 0
		for g := range promoters {
			if errs[g] != nil {
				t.Errorf("promoter %d: %v", g, errs[g])
			}
			total += moved[g]
		}
		if total != len(due) {
			t.Errorf("promoters moved %d in all, want %d", total, len(due))
		}
		ready := qt.readyInFetchOrder(t)
		slices.Sort(ready)
		if diff := cmp.Diff(due, ready); diff != "" {
			t.Errorf("ready list (-due ids once each +got):\n%s", diff)
		}
		if n := len(qt.delayed(t)); n != 50 {
			t.Errorf("%d ids still delayed, want the 50 not yet due", n)
		}
	})
}

// addDelayed puts ids straight into the delayed set, due at at.
func addDelayed(t *testing.T, qt *queueTest, ids []int64, at time.Time) {
	t.Helper()
	zs := make([]redis.Z, len(ids))
	for i, id := range ids {
		zs[i] = redis.Z{Score: float64(at.UnixMilli()), Member: id}
	}
	if err := qt.rdb.ZAdd(context.Background(), qt.q.keys.Delayed, zs...).Err(); err != nil {
		t.Fatal(err)
	}
}

func TestQueueReapDead(t *testing.T) {
	t.Parallel()
	forBackends(t, testQueueReapDead)
}

func testQueueReapDead(t *testing.T, b backend) {
	ctx := context.Background()
	now := time.Now()
	qt := b.newQueueTest(t)
	qt.push(t, seq(1, 6)...)
	if err := qt.q.Heartbeat(ctx, "dead", now.Add(-time.Minute)); err != nil {
		t.Fatal(err)
	}
	if err := qt.q.Heartbeat(ctx, "live", now); err != nil {
		t.Fatal(err)
	}
	if diff := cmp.Diff([]int64{1, 2, 3}, qt.fetch(t, "dead", 3)); diff != "" {
		t.Fatalf("dead consumer fetched (-want +got):\n%s", diff)
	}
	if diff := cmp.Diff([]int64{4, 5}, qt.fetch(t, "live", 2)); diff != "" {
		t.Fatalf("live consumer fetched (-want +got):\n%s", diff)
	}

	n, err := qt.q.ReapDead(ctx, now.Add(-30*time.Second))
	if err != nil || n != 3 {
		t.Fatalf("ReapDead = %d, %v; want 3", n, err)
	}
	// The dead consumer's jobs were taken first, so they come back first,
	// in their original order, ahead of the job never fetched.
	if diff := cmp.Diff([]int64{1, 2, 3, 6}, qt.readyInFetchOrder(t)); diff != "" {
		t.Errorf("ready list (-want +got):\n%s", diff)
	}
	if n := len(qt.processing(t, "dead")); n != 0 {
		t.Errorf("dead consumer still holds %d jobs", n)
	}
	if diff := cmp.Diff([]int64{4, 5}, qt.processing(t, "live")); diff != "" {
		t.Errorf("live consumer's jobs were touched (-want +got):\n%s", diff)
	}
	if diff := cmp.Diff([]string{"live"}, qt.consumers(t)); diff != "" {
		t.Errorf("consumers (-want +got):\n%s", diff)
	}
	if n, err := qt.q.ReapDead(ctx, now.Add(-30*time.Second)); err != nil || n != 0 {
		t.Errorf("second ReapDead = %d, %v; want 0", n, err)
	}

	// Once the live consumer falls silent too, its jobs come back.
	if n, err := qt.q.ReapDead(ctx, now.Add(time.Second)); err != nil || n != 2 {
		t.Errorf("ReapDead after the live consumer's TTL = %d, %v; want 2", n, err)
	}
	if diff := cmp.Diff([]int64{4, 5, 1, 2, 3, 6}, qt.readyInFetchOrder(t)); diff != "" {
		t.Errorf("ready list (-want +got):\n%s", diff)
	}
}

func TestQueueRelease(t *testing.T) {
	t.Parallel()
	forBackends(t, testQueueRelease)
}

func testQueueRelease(t *testing.T, b backend) {
	ctx := context.Background()
	qt := b.newQueueTest(t)
	qt.push(t, 1, 2, 3)
	if err := qt.q.Heartbeat(ctx, "c", time.Now()); err != nil {
		t.Fatal(err)
	}
	qt.fetch(t, "c", 2)
	n, err := qt.q.Release(ctx, "c")
	if err != nil || n != 2 {
		t.Fatalf("Release = %d, %v; want 2", n, err)
	}
	if diff := cmp.Diff([]int64{1, 2, 3}, qt.readyInFetchOrder(t)); diff != "" {
		t.Errorf("ready list (-want +got):\n%s", diff)
	}
	if n := len(qt.processing(t, "c")); n != 0 {
		t.Errorf("processing holds %d after Release", n)
	}
	if cs := qt.consumers(t); len(cs) != 0 {
		t.Errorf("consumers after Release = %v, want none", cs)
	}
	if n, err := qt.q.Release(ctx, "c"); err != nil || n != 0 {
		t.Errorf("second Release = %d, %v; want 0", n, err)
	}
	if n, err := qt.q.Release(ctx, "never-seen"); err != nil || n != 0 {
		t.Errorf("Release of an unknown consumer = %d, %v; want 0", n, err)
	}
}

func TestQueueEnsureEpoch(t *testing.T) {
	t.Parallel()
	forBackends(t, testQueueEnsureEpoch)
}

func testQueueEnsureEpoch(t *testing.T, b backend) {
	ctx := context.Background()
	qt := b.newQueueTest(t)
	for i, want := range []bool{true, false, false} {
		got, err := qt.q.EnsureEpoch(ctx)
		if err != nil || got != want {
			t.Fatalf("EnsureEpoch call %d = %v, %v; want %v", i+1, got, err, want)
		}
	}
	// Redis loses the queue's data (flushed, or restarted without
	// persistence): the next call reports it, once.
	qt.push(t, 1)
	if err := qt.rdb.Del(ctx, qt.q.keys.Epoch, qt.q.keys.Ready).Err(); err != nil {
		t.Fatal(err)
	}
	for i, want := range []bool{true, false} {
		got, err := qt.q.EnsureEpoch(ctx)
		if err != nil || got != want {
			t.Errorf("after the loss, EnsureEpoch call %d = %v, %v; want %v", i+1, got, err, want)
		}
	}
}

func TestQueueDepths(t *testing.T) {
	t.Parallel()
	forBackends(t, testQueueDepths)
}

func testQueueDepths(t *testing.T, b backend) {
	ctx := context.Background()
	qt := b.newQueueTest(t)
	d, err := qt.q.Depths(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if diff := cmp.Diff(Depths{}, d); diff != "" {
		t.Errorf("empty queue depths (-want +got):\n%s", diff)
	}

	qt.push(t, seq(1, 8)...)
	for _, c := range []string{"a", "b"} {
		if err := qt.q.Heartbeat(ctx, c, time.Now()); err != nil {
			t.Fatal(err)
		}
	}
	qt.fetch(t, "a", 4) // 1..4
	qt.fetch(t, "b", 1) // 5
	qt.settle(t, "a", Settlement{Done: []int64{1}, Delay: map[int64]time.Time{2: time.Now().Add(time.Hour)}, Dead: []int64{3}})
	d, err = qt.q.Depths(ctx)
	if err != nil {
		t.Fatal(err)
	}
	want := Depths{Ready: 3, Processing: 2, Delayed: 1, Dead: 1, Consumers: 2}
	if diff := cmp.Diff(want, d); diff != "" {
		t.Errorf("depths (-want +got):\n%s", diff)
	}
}

// TestQueueUnavailable checks that a Redis that cannot be reached is
// reported as UNAVAILABLE by every operation.
func TestQueueUnavailable(t *testing.T) {
	t.Parallel()
	rdb := redis.NewClient(&redis.Options{Addr: "127.0.0.1:1", MaxRetries: -1, DialTimeout: time.Second})
	t.Cleanup(func() { rdb.Close() })
	q := New(rdb, "down:", "jobs")
	ctx := context.Background()
	calls := map[string]func() error{
		"push":      func() error { return q.Push(ctx, []int64{1}) },
		"fetch":     func() error { _, err := q.Fetch(ctx, "c", 1, time.Second); return err },
		"settle":    func() error { return q.Settle(ctx, "c", Settlement{Done: []int64{1}}) },
		"promote":   func() error { _, err := q.PromoteDue(ctx, time.Now()); return err },
		"heartbeat": func() error { return q.Heartbeat(ctx, "c", time.Now()) },
		"reap":      func() error { _, err := q.ReapDead(ctx, time.Now()); return err },
		"release":   func() error { _, err := q.Release(ctx, "c"); return err },
		"epoch":     func() error { _, err := q.EnsureEpoch(ctx); return err },
		"depths":    func() error { _, err := q.Depths(ctx); return err },
	}
	for name, call := range calls {
		t.Run(name, func(t *testing.T) {
			t.Parallel()
			err := call()
			if err == nil || !errors.Is(err, errUnavailableProbe) {
				t.Errorf("error = %v, want UNAVAILABLE", err)
			}
		})
	}
}

// TestQueueKeysShareASlot checks on the cluster that every key of a queue
// hashes to one slot (the scripts need it), and that queues under other
// prefixes hash elsewhere, so tests and deployments spread over the masters.
func TestQueueKeysShareASlot(t *testing.T) {
	t.Parallel()
	rdb, prefix := redistest.SharedCluster(t).Client(t)
	ctx := context.Background()
	slotsOf := func(q *Queue) map[int64][]string {
		k := q.Keys()
		slots := map[int64][]string{}
		for _, key := range []string{k.Ready, k.Consumers, k.Delayed, k.Dead, k.Epoch, k.ProcessingPrefix + "host-1a2b3c4d"} {
			slot, err := rdb.ClusterKeySlot(ctx, key).Result()
			if err != nil {
				t.Fatal(err)
			}
			slots[slot] = append(slots[slot], key)
		}
		return slots
	}
	if a := slotsOf(New(rdb, prefix, "jobs")); len(a) != 1 {
		t.Fatalf("one queue's keys are in %d slots: %v", len(a), a)
	}
	spread := map[int64]bool{}
	for i := range 8 {
		for slot := range slotsOf(New(rdb, fmt.Sprintf("%s%d:", prefix, i), "jobs")) {
			spread[slot] = true
		}
	}
	if len(spread) < 2 {
		t.Errorf("queues under 8 prefixes all hash to slots %v: the prefix is not inside the tag", spread)
	}
}
