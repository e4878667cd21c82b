package messaging

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"strings"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/lib/pq"

	"github.com/campaignd/dispatch/messaging/provider/mock"
	"github.com/campaignd/dispatch/messaging/queue"
	"github.com/campaignd/dispatch/platform/logging/logtest"
	"github.com/campaignd/dispatch/platform/postgres"
	"github.com/campaignd/dispatch/platform/postgres/pgtest"
	"github.com/campaignd/dispatch/platform/redisx"
)

// errRedisDown is what the queue returns while its Redis is down, as
// RedisQueue would: connection refused, classified UNAVAILABLE.
var errRedisDown = redisx.Classify(&net0Error{syscall.ECONNREFUSED}, "redis")

// net0Error is a dial error without a real socket.
type net0Error struct{ err error }

func (e *net0Error) Error() string   { return "dial tcp 127.0.0.1:6379: " + e.err.Error() }
func (e *net0Error) Unwrap() error   { return e.err }
func (e *net0Error) Timeout() bool   { return false }
func (e *net0Error) Temporary() bool { return false }

// outageQueue is a memQueue whose Redis can be taken down: while down,
// every call fails as a refused connection would, and changes nothing.
type outageQueue struct {
	*memQueue
	down           atomic.Bool
	failedSettles  atomic.Int64
	failedFetches  atomic.Int64
	heartbeatFails atomic.Int64
}

func (q *outageQueue) Fetch(ctx context.Context, c string, max int, wait time.Duration) ([]int64, error) {
	if q.down.Load() {
		q.failedFetches.Add(1)
		return nil, errRedisDown
	}
	return q.memQueue.Fetch(ctx, c, max, wait)
}

func (q *outageQueue) Settle(ctx context.Context, c string, s queue.Settlement) error {
	if q.down.Load() {
		q.failedSettles.Add(1)
		return errRedisDown
	}
	return q.memQueue.Settle(ctx, c, s)
}

func (q *outageQueue) Heartbeat(ctx context.Context, c string, now time.Time) error {
	if q.down.Load() {
		q.heartbeatFails.Add(1)
		return errRedisDown
	}
	return q.memQueue.Heartbeat(ctx, c, now)
}

func (q *outageQueue) Release(ctx context.Context, c string) (int, error) {
	if q.down.Load() {
		return 0, errRedisDown
	}
	return q.memQueue.Release(ctx, c)
}

func statuses(t *testing.T, ms map[int64]storedMessage) string {
	t.Helper()
	n := map[Status]int{}
	for _, m := range ms {
		n[m.Status]++
	}
	return fmt.Sprint(n)
}

// TestPoolRecordsWhileRedisDown: Redis goes down while deliveries are in
// flight. Their outcomes must still reach PostgreSQL (no row stays in
// sending while Redis is away), the jobs stay held in the processing list
// meanwhile, and once Redis is back every job is settled and every message
// was sent exactly once. Before the settler, a flusher retried its Redis
// acknowledgement before recording the next batch, so everything behind
// the first batch stayed in sending until Redis returned.
func TestPoolRecordsWhileRedisDown(t *testing.T) {
	t.Parallel()
	db := pgtest.New(t)
	var customers [][2]string
	for i := range 8 {
		customers = append(customers, [2]string{fmt.Sprintf("C%d", i), ""})
	}
	_, ids := fixture(t, db.DB, "Hi {first_name}", customers...)
	s := newFakeSender()
	s.block = make(chan struct{})
	// Every message fails its first attempt, so the outage also holds
	// retries (delayed settlements), not only acknowledgements.
	for _, id := range ids[:2] {
		s.fail[id] = []error{errors.New("network down")}
	}
	q := &outageQueue{memQueue: newMemQueue(ids...)}
	p := NewPool(PoolOptions{Consumer: "test", Concurrency: 8, BatchSize: 2, PollWait: 20 * time.Millisecond,
		Lease: time.Minute, SendTimeout: 2 * time.Second, DrainTimeout: 2 * time.Second},
		q, NewRepo(db.DB), s, RetryPolicy{MaxAttempts: 3, Base: 50 * time.Millisecond, Max: 100 * time.Millisecond}, quiet)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- p.Run(ctx) }()
	t.Cleanup(func() {
		q.down.Store(false)
		cancel()
		if err := <-done; err != nil {
			t.Errorf("pool.Run: %v", err)
		}
	})

	waitFor(t, "every message claimed", 5*time.Second, func() bool {
		for _, m := range messages(t, db.DB, ids) {
			if m.Status != StatusSending {
				return false
			}
		}
		return true
	})
	q.down.Store(true)
	close(s.block) // the provider answers while Redis is down

	waitFor(t, "every outcome recorded while redis is down", 5*time.Second, func() bool {
		for _, m := range messages(t, db.DB, ids) {
			if m.Status == StatusSending {
				return false
			}
		}
		return true
	})
	if !q.down.Load() {
		t.Fatal("redis came back during the test")
	}
	got := messages(t, db.DB, ids)
	for _, id := range ids[:2] {
		if m := got[id]; m.Status != StatusPending || m.RetryCount != 1 {
			t.Errorf("message %d failed once: status=%s retries=%d, want pending with 1 retry", id, m.Status, m.RetryCount)
		}
	}
	for _, id := range ids[2:] {
		if m := got[id]; m.Status != StatusSent {
			t.Errorf("message %d: %s, want sent", id, m.Status)
		}
	}
	waitFor(t, "a settlement tried while redis is down", 5*time.Second, func() bool { return q.failedSettles.Load() > 0 })
	if _, _, held, _ := q.snapshot(); held != len(ids) {
		t.Errorf("%d jobs held in the processing list while redis is down, want all %d (nothing settled)", held, len(ids))
	}

	q.down.Store(false)
	waitFor(t, "all messages final after redis returned", 10*time.Second, allFinal(t, db.DB, ids))
	waitFor(t, "every job settled", 10*time.Second, func() bool {
		ready, _, held, delayed := q.snapshot()
		return len(ready) == 0 && held == 0 && delayed == 0
	})
	got = messages(t, db.DB, ids)
	for _, id := range ids {
		if got[id].Status != StatusSent {
			t.Errorf("message %d ended %s, want sent (%s)", id, got[id].Status, statuses(t, got))
		}
	}
	for i, id := range ids {
		want := 1
		if i < 2 {
			want = 2 // one failed attempt, one success
		}
		if c := s.callsFor(id); c != want {
			t.Errorf("message %d handed to the provider %d times, want %d", id, c, want)
		}
	}
}

// unavailableLedger is the mock provider's ledger in a PostgreSQL that
// refuses connections (max_connections reached) while down is set.
type unavailableLedger struct {
	*mock.MemoryLedger
	down  atomic.Bool
	calls atomic.Int64 // refused calls
}

var errTooManyClients = postgres.Classify(&pq.Error{Code: "53300", Message: "sorry, too many clients already"}, "mock ledger")

func (l *unavailableLedger) Seen(ctx context.Context, key int64) (bool, error) {
	if l.down.Load() {
		l.calls.Add(1)
		return false, errTooManyClients
	}
	return l.MemoryLedger.Seen(ctx, key)
}

func (l *unavailableLedger) Deliver(ctx context.Context, key int64, content string) (bool, error) {
	if l.down.Load() {
		l.calls.Add(1)
		return false, errTooManyClients
	}
	return l.MemoryLedger.Deliver(ctx, key, content)
}

// TestIsInfrastructure: the class of errors that are not delivery attempts.
func TestIsInfrastructure(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		name string
		err  error
		want bool
	}{
		{"postgres out of connections", errTooManyClients, true},
		{"wrapped by the sender", fmt.Errorf("mock provider: %w", errTooManyClients), true},
		{"redis refused", errRedisDown, true},
		{"provider network error", mock.ErrSimulatedNetwork, false},
		{"permanent", permanent("invalid number"), false},
		{"query error", postgres.Classify(&pq.Error{Code: "42P01", Message: "relation does not exist"}, "mock ledger"), false},
		{"nil", nil, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if got := IsInfrastructure(tc.err); got != tc.want {
				t.Errorf("IsInfrastructure(%v) = %v, want %v", tc.err, got, tc.want)
			}
		})
	}
}

// TestPoolInfrastructureErrorIsNotAnAttempt: while the mock provider's
// ledger (our PostgreSQL) refuses connections, deliveries fail, but not
// because of the provider: no message may fail, none may use up a retry,
// and once the database takes connections again each is sent exactly once.
// Before, each refusal counted as a failed attempt, and three of them
// failed the message for good.
func TestPoolInfrastructureErrorIsNotAnAttempt(t *testing.T) {
	t.Parallel()
	db := pgtest.New(t)
	_, ids := fixture(t, db.DB, "Hi {first_name}", [2]string{"A", ""}, [2]string{"B", ""}, [2]string{"C", ""})
	ledger := &unavailableLedger{MemoryLedger: mock.NewMemoryLedger()}
	ledger.down.Store(true)
	sender := mock.New(mock.Options{SuccessRate: 1}, ledger)
	q := newMemQueue(ids...)
	logs := &logtest.Buffer{}
	p := NewPool(PoolOptions{Consumer: "test", Concurrency: 4, BatchSize: 3, PollWait: 20 * time.Millisecond,
		Lease: time.Minute, SendTimeout: 2 * time.Second, DrainTimeout: 2 * time.Second},
		q, NewRepo(db.DB), sender, RetryPolicy{MaxAttempts: 3, Base: 10 * time.Millisecond, Max: 50 * time.Millisecond},
		slog.New(slog.NewJSONHandler(logs, nil)))
	p.infraDelay = 20 * time.Millisecond
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- p.Run(ctx) }()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("pool.Run: %v", err)
		}
	})

	// Well past MaxAttempts per message (or, wrongly, a message final).
	waitFor(t, "many refused ledger calls", 10*time.Second, func() bool {
		if ledger.calls.Load() >= int64(4*len(ids)) {
			return true
		}
		for _, m := range messages(t, db.DB, ids) {
			if m.Status.Final() {
				return true
			}
		}
		return false
	})
	for id, m := range messages(t, db.DB, ids) {
		if m.Status == StatusFailed || m.Status == StatusSent || m.RetryCount != 0 {
			t.Errorf("message %d while our database refused the ledger: status=%s retries=%d, want not final and 0 retries",
				id, m.Status, m.RetryCount)
		}
	}

	ledger.down.Store(false)
	waitFor(t, "all messages final once the database works", 10*time.Second, allFinal(t, db.DB, ids))
	for id, m := range messages(t, db.DB, ids) {
		if m.Status != StatusSent || m.RetryCount != 0 {
			t.Errorf("message %d: status=%s retries=%d, want sent with 0 retries", id, m.Status, m.RetryCount)
		}
		if c := ledger.Calls(id); c != 1 {
			t.Errorf("message %d delivered %d times, want once", id, c)
		}
	}
	if strings.Contains(logs.String(), "failed for good") {
		t.Errorf("a message failed for good:\n%s", logs.String())
	}
}

// TestSettlerBacklogBounded: while Redis refuses settlements the settler
// keeps at most its limit of ids, dropping the oldest with a warning, and
// once Redis is back it settles what it kept.
func TestSettlerBacklogBounded(t *testing.T) {
	t.Parallel()
	q := &outageQueue{memQueue: newMemQueue()}
	q.down.Store(true)
	logs := &logtest.Buffer{}
	s := newSettler(q, "test", slog.New(slog.NewJSONHandler(logs, nil)))
	s.limit = 10
	for i := range int64(6) { // 6 settlements of 3 ids: 18 > 10
		s.add(queue.Settlement{Done: []int64{3*i + 1, 3*i + 2, 3*i + 3}})
	}
	if n := s.backlog(); n > s.limit {
		t.Fatalf("backlog %d ids, want at most %d", n, s.limit)
	}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	closing := make(chan struct{})
	done := make(chan struct{})
	go func() { s.run(ctx, closing); close(done) }()
	waitFor(t, "a failed settle", 5*time.Second, func() bool { return q.failedSettles.Load() > 0 })
	q.down.Store(false)
	close(closing)
	select {
	case <-done:
	case <-time.After(10 * time.Second):
		t.Fatal("settler did not finish after redis returned")
	}
	q.mu.Lock()
	acked := q.acked
	q.mu.Unlock()
	// The newest three settlements (ids 10-18) were kept.
	want := []int64{10, 11, 12, 13, 14, 15, 16, 17, 18}
	if fmt.Sprint(acked) != fmt.Sprint(want) {
		t.Errorf("acknowledged %v, want the newest %v", acked, want)
	}
	if !strings.Contains(logs.String(), "dropped the oldest") {
		t.Errorf("no warning about dropped settlements:\n%s", logs.String())
	}
}
