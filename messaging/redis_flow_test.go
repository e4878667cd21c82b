package messaging

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"github.com/google/go-cmp/cmp/cmpopts"
	"github.com/jmoiron/sqlx"
	"github.com/redis/go-redis/v9"

	"github.com/campaignd/dispatch/messaging/provider"
	"github.com/campaignd/dispatch/messaging/provider/mock"
	"github.com/campaignd/dispatch/messaging/queue"
	"github.com/campaignd/dispatch/platform/postgres/pgtest"
	"github.com/campaignd/dispatch/platform/redisx/redistest"
)

// flowEnv is the worker pool over the real RedisQueue and PostgreSQL, with
// the maintenance loops (promoter, reaper, sweeper) running as in the app.
type flowEnv struct {
	db       *sqlx.DB
	rdb      *redis.Client
	queue    *queue.Queue
	svc      *Service
	consumer string
}

const flowConsumer = "flow-test"

// newFlowEnv starts a pool delivering through the sender newSender builds
// over the env's database.
func newFlowEnv(t *testing.T, newSender func(*sqlx.DB) provider.Sender, policy RetryPolicy) *flowEnv {
	t.Helper()
	db := pgtest.New(t)
	rdb, prefix := redistest.New(t)
	queue := queue.New(rdb, prefix, "jobs")
	svc := NewService(NewRepo(db.DB), queue, MaintenanceOptions{
		PromoteInterval: 10 * time.Millisecond,
		ReapInterval:    100 * time.Millisecond,
		ConsumerTTL:     5 * time.Second,
		SweepInterval:   200 * time.Millisecond,
		StaleAfter:      10 * time.Minute,
	}, quiet)
	pool := NewPool(PoolOptions{
		Consumer: flowConsumer, Concurrency: 4, BatchSize: 10,
		SendTimeout: time.Second, Lease: 2 * time.Second, PollWait: 100 * time.Millisecond,
		HeartbeatInterval: 100 * time.Millisecond, DrainTimeout: 2 * time.Second,
	}, queue, svc.Repo(), newSender(db.DB), policy, quiet)

	ctx, cancel := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	wg.Go(func() { svc.RunMaintenance(ctx) }) // returns when ctx ends
	poolErr := make(chan error, 1)
	wg.Go(func() { poolErr <- pool.Run(ctx) }) // returns after draining, once ctx ends
	// Registered after pgtest and redistest, so it runs before their
	// cleanups drop the schema and the keys.
	t.Cleanup(func() {
		cancel()
		wg.Wait()
		if err := <-poolErr; err != nil {
			t.Errorf("pool.Run: %v", err)
		}
	})
	return &flowEnv{db: db.DB, rdb: rdb, queue: queue, svc: svc, consumer: flowConsumer}
}

func (fe *flowEnv) push(t *testing.T, ids ...int64) {
	t.Helper()
	if err := fe.queue.Push(context.Background(), ids); err != nil {
		t.Fatalf("push: %v", err)
	}
}

func (fe *flowEnv) llen(t *testing.T, key string) int64 {
	t.Helper()
	n, err := fe.rdb.LLen(context.Background(), key).Result()
	if err != nil {
		t.Fatalf("LLEN %s: %v", key, err)
	}
	return n
}

// waitSettled waits until no job is ready, held or delayed: every copy of
// every pushed id has been acknowledged or dead-lettered.
func (fe *flowEnv) waitSettled(t *testing.T) {
	t.Helper()
	waitFor(t, "every job settled", 15*time.Second, func() bool {
		d, err := fe.queue.Depths(context.Background())
		if err != nil {
			t.Fatalf("depths: %v", err)
		}
		return d.Ready == 0 && d.Delayed == 0 && fe.llen(t, fe.queue.Keys().ProcessingPrefix+fe.consumer) == 0
	})
}

func (fe *flowEnv) deadLetters(t *testing.T) []int64 {
	t.Helper()
	ids, err := fe.queue.DeadLetters(context.Background(), 100)
	if err != nil {
		t.Fatal(err)
	}
	return ids
}

// countingSender returns err (nil: success) for every message and counts
// its calls per message.
type countingSender struct {
	err   error
	mu    sync.Mutex
	calls map[int64]int
}

func (s *countingSender) Send(_ context.Context, m provider.Message) (provider.Accepted, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.calls == nil {
		s.calls = map[int64]int{}
	}
	s.calls[m.ID]++
	if s.err != nil {
		return provider.Accepted{}, s.err
	}
	return provider.Accepted{MessageID: fmt.Sprintf("count-%d", m.ID)}, nil
}

func (s *countingSender) callsFor(id int64) int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.calls[id]
}

func TestRedisFlowOutcomes(t *testing.T) {
	t.Parallel()
	policy := RetryPolicy{MaxAttempts: 3, Base: 10 * time.Millisecond}
	tests := []struct {
		name        string
		sendErr     error
		wantStatus  Status
		wantCalls   int
		wantRetries int
		wantContent *string
		wantError   *string
		wantDead    bool
	}{
		{
			name:        "sent",
			wantStatus:  StatusSent,
			wantCalls:   1,
			wantContent: ptrTo("Hi Ann from Lisbon!"),
		},
		{
			name:        "always failing",
			sendErr:     errors.New("provider unreachable"),
			wantStatus:  StatusFailed,
			wantCalls:   3,
			wantRetries: 3,
			wantError:   ptrTo("provider unreachable"),
			wantDead:    true,
		},
		{
			name:        "permanent error",
			sendErr:     permanent("invalid number"),
			wantStatus:  StatusFailed,
			wantCalls:   1,
			wantRetries: 1,
			wantError:   ptrTo("fake: permanent 21211: invalid number"),
			wantDead:    true,
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			s := &countingSender{err: tt.sendErr}
			fe := newFlowEnv(t, func(*sqlx.DB) provider.Sender { return s }, policy)
			_, ids := fixture(t, fe.db, "Hi {first_name} from {location}!", [2]string{"Ann", "Lisbon"})
			fe.push(t, ids...)

			waitFor(t, "message final", 15*time.Second, allFinal(t, fe.db, ids))
			fe.waitSettled(t)

			m := messages(t, fe.db, ids)[ids[0]]
			type result struct {
				Status  Status
				Retries int
				Content *string
				Error   *string
				Calls   int
			}
			want := result{tt.wantStatus, tt.wantRetries, tt.wantContent, tt.wantError, tt.wantCalls}
			got := result{m.Status, m.RetryCount, m.RenderedContent, m.LastError, s.callsFor(ids[0])}
			if diff := cmp.Diff(want, got); diff != "" {
				t.Errorf("message (-want +got):\n%s", diff)
			}
			var wantDead []int64
			if tt.wantDead {
				wantDead = ids
			}
			if diff := cmp.Diff(wantDead, fe.deadLetters(t), cmpopts.EquateEmpty()); diff != "" {
				t.Errorf("dead letters (-want +got):\n%s", diff)
			}
			if n := fe.llen(t, fe.queue.Keys().ProcessingPrefix+fe.consumer); n != 0 {
				t.Errorf("processing list holds %d jobs after the outcome", n)
			}
		})
	}
}

func ptrTo[T any](v T) *T { return &v }

// TestRedisFlowDuplicatesDeliveredOnce pushes every id three times, as
// after a redelivery and a sweep: the mock provider delivers each message
// once and is asked once.
func TestRedisFlowDuplicatesDeliveredOnce(t *testing.T) {
	t.Parallel()
	fe := newFlowEnv(t, func(db *sqlx.DB) provider.Sender {
		return mock.New(mock.Options{SuccessRate: 1}, mock.NewPostgresLedger(db))
	}, RetryPolicy{MaxAttempts: 3, Base: 10 * time.Millisecond})

	_, ids := fixture(t, fe.db, "Hello {first_name}",
		[2]string{"Ann", ""}, [2]string{"Ben", ""}, [2]string{"Cy", ""})
	for range 3 {
		fe.push(t, ids...)
	}
	waitFor(t, "messages final", 15*time.Second, allFinal(t, fe.db, ids))
	fe.waitSettled(t)

	for id, m := range messages(t, fe.db, ids) {
		if m.Status != StatusSent {
			t.Errorf("message %d is %s, want sent", id, m.Status)
		}
	}
	type delivery struct {
		MessageID int64  `db:"message_id"`
		Calls     int    `db:"calls"`
		Content   string `db:"content"`
	}
	var deliveries []delivery
	if err := fe.db.Select(&deliveries, `SELECT message_id, calls, content FROM mock_deliveries ORDER BY message_id`); err != nil {
		t.Fatal(err)
	}
	want := []delivery{{ids[0], 1, "Hello Ann"}, {ids[1], 1, "Hello Ben"}, {ids[2], 1, "Hello Cy"}}
	if diff := cmp.Diff(want, deliveries); diff != "" {
		t.Errorf("mock deliveries (-want +got):\n%s", diff)
	}
	if dead := fe.deadLetters(t); len(dead) != 0 {
		t.Errorf("dead letters = %v, want none", dead)
	}
}
