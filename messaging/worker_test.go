package messaging

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"slices"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/jmoiron/sqlx"
	"github.com/lib/pq"

	"github.com/campaignd/dispatch/messaging/provider"
	"github.com/campaignd/dispatch/messaging/queue"
	"github.com/campaignd/dispatch/platform/postgres/pgtest"
)

// memQueue is an in-memory jobQueue with the same settle semantics as
// RedisQueue, for worker tests that need no Redis.
type memQueue struct {
	mu         sync.Mutex
	ready      []int64 // front is index 0
	processing map[int64]int
	delayed    map[int64]time.Time
	dead       []int64
	acked      []int64
	notify     chan struct{}
}

func newMemQueue(ids ...int64) *memQueue {
	return &memQueue{ready: ids, processing: map[int64]int{}, delayed: map[int64]time.Time{}, notify: make(chan struct{}, 1)}
}

func (q *memQueue) Fetch(ctx context.Context, _ string, max int, wait time.Duration) ([]int64, error) {
	deadline := time.NewTimer(wait)
	defer deadline.Stop()
	for {
		q.mu.Lock()
		// Promote due retries, as the maintenance loop does for Redis.
		now := time.Now()
		for id, at := range q.delayed {
			if !at.After(now) {
				q.ready = append(q.ready, id)
				delete(q.delayed, id)
			}
		}
		n := min(max, len(q.ready))
		out := slices.Clone(q.ready[:n])
		q.ready = q.ready[n:]
		for _, id := range out {
			q.processing[id]++
		}
		q.mu.Unlock()
		if len(out) > 0 {
			return out, nil
		}
		select {
		case <-ctx.Done():
			return nil, nil
		case <-deadline.C:
			return nil, nil
		case <-time.After(5 * time.Millisecond):
		}
	}
}

func (q *memQueue) unhold(id int64) {
	if q.processing[id] > 1 {
		q.processing[id]--
	} else {
		delete(q.processing, id)
	}
}

func (q *memQueue) Settle(_ context.Context, _ string, s queue.Settlement) error {
	q.mu.Lock()
	defer q.mu.Unlock()
	for _, id := range s.Done {
		q.acked = append(q.acked, id)
		q.unhold(id)
	}
	for id, at := range s.Delay {
		q.delayed[id] = at
		q.unhold(id)
	}
	for _, id := range s.Dead {
		q.dead = append(q.dead, id)
		q.unhold(id)
	}
	for _, id := range s.Requeue {
		q.ready = append([]int64{id}, q.ready...)
		q.unhold(id)
	}
	return nil
}

func (q *memQueue) Heartbeat(context.Context, string, time.Time) error { return nil }

func (q *memQueue) Release(context.Context, string) (int, error) {
	q.mu.Lock()
	defer q.mu.Unlock()
	n := 0
	for id, c := range q.processing {
		for range c {
			q.ready = append([]int64{id}, q.ready...)
			n++
		}
		delete(q.processing, id)
	}
	return n, nil
}

func (q *memQueue) snapshot() (ready, dead []int64, processing, delayed int) {
	q.mu.Lock()
	defer q.mu.Unlock()
	return slices.Clone(q.ready), slices.Clone(q.dead), len(q.processing), len(q.delayed)
}

// fakeSender answers from a script: fail[id] lists the errors of the first
// attempts of a message; later attempts succeed. It counts calls per id.
type fakeSender struct {
	mu     sync.Mutex
	fail   map[int64][]error
	calls  map[int64]int
	bodies map[int64]string
	block  chan struct{} // when set, Send waits for it or ctx
}

func newFakeSender() *fakeSender {
	return &fakeSender{fail: map[int64][]error{}, calls: map[int64]int{}, bodies: map[int64]string{}}
}

func (s *fakeSender) Send(ctx context.Context, m provider.Message) (provider.Accepted, error) {
	if s.block != nil {
		select {
		case <-s.block:
		case <-ctx.Done():
			return provider.Accepted{}, ctx.Err()
		}
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	n := s.calls[m.ID]
	s.calls[m.ID]++
	if script := s.fail[m.ID]; n < len(script) {
		return provider.Accepted{}, script[n]
	}
	s.bodies[m.ID] = m.Body
	return provider.Accepted{MessageID: fmt.Sprintf("fake-%d", m.ID), Status: "accepted"}, nil
}

// permanent is a provider's permanent rejection, as adapters report one.
func permanent(msg string) error {
	return &provider.Error{Provider: "fake", Class: provider.Permanent, Code: "21211", Message: msg}
}

func (s *fakeSender) callsFor(id int64) int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.calls[id]
}

// fixture inserts a campaign with one message per customer and returns the
// message ids in customer order.
func fixture(t *testing.T, db *sqlx.DB, template string, customers ...[2]string) (campaignID int64, ids []int64) {
	t.Helper()
	ctx := context.Background()
	if err := db.GetContext(ctx, &campaignID, `
INSERT INTO campaigns (name, channel, status, base_template) VALUES ('t', 'sms', 'sending', $1) RETURNING id`, template); err != nil {
		t.Fatal(err)
	}
	for i, c := range customers {
		var cid, mid int64
		if err := db.GetContext(ctx, &cid, `
INSERT INTO customers (phone, first_name, location) VALUES ($1, $2, $3) RETURNING id`,
			"+1415555"+string(rune('0'+i/100%10))+string(rune('0'+i/10%10))+string(rune('0'+i%10))+"0"+string(rune('0'+int(campaignID%10))),
			c[0], c[1]); err != nil {
			t.Fatal(err)
		}
		if err := db.GetContext(ctx, &mid, `
INSERT INTO outbound_messages (campaign_id, customer_id) VALUES ($1, $2) RETURNING id`, campaignID, cid); err != nil {
			t.Fatal(err)
		}
		ids = append(ids, mid)
	}
	return campaignID, ids
}

// storedMessage is an outbound_messages row as the tests read it (the
// API's shape is MessageView).
type storedMessage struct {
	ID              int64      `db:"id" json:"id"`
	CampaignID      int64      `db:"campaign_id" json:"campaign_id"`
	CustomerID      int64      `db:"customer_id" json:"customer_id"`
	Status          Status     `db:"status" json:"status"`
	RenderedContent *string    `db:"rendered_content" json:"rendered_content"`
	LastError       *string    `db:"last_error" json:"last_error"`
	RetryCount      int        `db:"retry_count" json:"retry_count"`
	NextAttemptAt   *time.Time `db:"next_attempt_at" json:"next_attempt_at"`
	CreatedAt       time.Time  `db:"created_at" json:"created_at"`
	UpdatedAt       time.Time  `db:"updated_at" json:"updated_at"`
}

func messages(t *testing.T, db *sqlx.DB, ids []int64) map[int64]storedMessage {
	t.Helper()
	var ms []storedMessage
	if err := db.SelectContext(context.Background(), &ms, `
SELECT id, campaign_id, customer_id, status, rendered_content, last_error, retry_count, next_attempt_at, created_at, updated_at
FROM outbound_messages WHERE id = ANY($1)`, pq.Array(ids)); err != nil {
		t.Fatal(err)
	}
	out := map[int64]storedMessage{}
	for _, m := range ms {
		out[m.ID] = m
	}
	return out
}

// waitFor polls cond until it holds or the deadline passes.
func waitFor(t *testing.T, what string, timeout time.Duration, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out after %v waiting for %s", timeout, what)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

func allFinal(t *testing.T, db *sqlx.DB, ids []int64) func() bool {
	return func() bool {
		for _, m := range messages(t, db, ids) {
			if !m.Status.Final() {
				return false
			}
		}
		return true
	}
}

var quiet = slog.New(slog.NewTextHandler(io.Discard, nil))

func startPool(t *testing.T, q jobQueue, db *sqlx.DB, s provider.Sender, attempts int) (stop func()) {
	t.Helper()
	p := NewPool(PoolOptions{Consumer: "test", Concurrency: 4, BatchSize: 3, PollWait: 50 * time.Millisecond,
		Lease: time.Minute, SendTimeout: 2 * time.Second, DrainTimeout: 2 * time.Second},
		q, NewRepo(db), s, RetryPolicy{MaxAttempts: attempts, Base: 10 * time.Millisecond, Max: 50 * time.Millisecond}, quiet)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- p.Run(ctx) }()
	var once sync.Once
	stop = func() {
		once.Do(func() {
			cancel()
			if err := <-done; err != nil {
				t.Errorf("pool.Run: %v", err)
			}
		})
	}
	t.Cleanup(stop)
	return stop
}

func TestPoolOutcomes(t *testing.T) {
	t.Parallel()
	db := pgtest.New(t)
	_, ids := fixture(t, db.DB, "Hi {first_name} in {location}!",
		[2]string{"Alice", "Nairobi"}, // succeeds at once
		[2]string{"Bob", "Mombasa"},   // fails once, then succeeds
		[2]string{"Cleo", ""},         // fails every attempt
		[2]string{"Dan", "Kisumu"},    // permanent error
	)
	s := newFakeSender()
	netErr := errors.New("network down")
	s.fail[ids[1]] = []error{netErr}
	s.fail[ids[2]] = []error{netErr, netErr, netErr, netErr}
	s.fail[ids[3]] = []error{permanent("invalid number")}

	q := newMemQueue(ids...)
	startPool(t, q, db.DB, s, 3)
	waitFor(t, "all messages final", 10*time.Second, allFinal(t, db.DB, ids))

	got := messages(t, db.DB, ids)
	type want struct {
		status  Status
		retries int
		content string
		errSet  bool
		calls   int
	}
	wants := []want{
		{StatusSent, 0, "Hi Alice in Nairobi!", false, 1},
		{StatusSent, 1, "Hi Bob in Mombasa!", true, 2},
		{StatusFailed, 3, "", true, 3},
		{StatusFailed, 1, "", true, 1},
	}
	for i, w := range wants {
		m := got[ids[i]]
		content := ""
		if m.RenderedContent != nil {
			content = *m.RenderedContent
		}
		if m.Status != w.status || m.RetryCount != w.retries || content != w.content ||
			(m.LastError != nil) != w.errSet || s.callsFor(ids[i]) != w.calls {
			t.Errorf("message %d: status=%s retries=%d content=%q last_error=%v calls=%d; want %+v",
				i, m.Status, m.RetryCount, content, m.LastError, s.callsFor(ids[i]), w)
		}
	}
	_, dead, _, _ := q.snapshot()
	slices.Sort(dead)
	if !slices.Equal(dead, []int64{ids[2], ids[3]}) {
		t.Errorf("dead letters = %v, want %v", dead, []int64{ids[2], ids[3]})
	}
	waitFor(t, "every job settled", 5*time.Second, func() bool {
		ready, _, p, d := q.snapshot()
		return len(ready) == 0 && p == 0 && d == 0
	})
}

func TestPoolRedeliveredAndFinalJobs(t *testing.T) {
	t.Parallel()
	db := pgtest.New(t)
	_, ids := fixture(t, db.DB, "Hello {first_name}", [2]string{"Ann", ""}, [2]string{"Ben", ""})
	// ids[1] is already final: its job must be acknowledged untouched.
	if _, err := db.Exec(`UPDATE outbound_messages SET status = 'sent', rendered_content = 'earlier' WHERE id = $1`, ids[1]); err != nil {
		t.Fatal(err)
	}
	s := newFakeSender()
	// ids[0] is queued three times, as after a redelivery: one delivery only.
	q := newMemQueue(ids[0], ids[0], ids[1], ids[0])
	startPool(t, q, db.DB, s, 3)
	waitFor(t, "all messages final", 10*time.Second, allFinal(t, db.DB, ids))
	// A copy fetched while the first is being delivered is deferred until
	// the lease would expire, when it is found final; nothing stays held.
	waitFor(t, "every job settled", 5*time.Second, func() bool {
		ready, _, p, d := q.snapshot()
		return len(ready) == 0 && p == 0 && d <= 1
	})
	if c := s.callsFor(ids[0]); c != 1 {
		t.Errorf("redelivered message sent %d times, want 1", c)
	}
	if c := s.callsFor(ids[1]); c != 0 {
		t.Errorf("already-final message sent %d times, want 0", c)
	}
	got := messages(t, db.DB, ids)
	if *got[ids[1]].RenderedContent != "earlier" {
		t.Errorf("final message was rewritten: %q", *got[ids[1]].RenderedContent)
	}
}

func TestPoolShutdownRequeuesUnfinished(t *testing.T) {
	t.Parallel()
	db := pgtest.New(t)
	_, ids := fixture(t, db.DB, "Hi {first_name}", [2]string{"A", ""}, [2]string{"B", ""})
	s := newFakeSender()
	s.block = make(chan struct{}) // never released: deliveries hang until the drain timeout
	q := newMemQueue(ids...)
	p := NewPool(PoolOptions{Consumer: "test", Concurrency: 2, BatchSize: 2, PollWait: 20 * time.Millisecond,
		DrainTimeout: 100 * time.Millisecond}, q, NewRepo(db.DB), s, RetryPolicy{MaxAttempts: 3, Base: time.Second}, quiet)
	ctx, cancel := context.WithCancel(context.Background())
	var ran atomic.Bool
	done := make(chan error, 1)
	go func() { done <- p.Run(ctx); ran.Store(true) }()
	waitFor(t, "both messages claimed", 5*time.Second, func() bool {
		for _, m := range messages(t, db.DB, ids) {
			if m.Status != StatusSending {
				return false
			}
		}
		return true
	})
	cancel()
	select {
	case err := <-done:
		if err != nil {
			t.Fatal(err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("pool did not stop")
	}
	for id, m := range messages(t, db.DB, ids) {
		if m.Status != StatusPending || m.RetryCount != 0 {
			t.Errorf("message %d after shutdown: status=%s retries=%d, want pending with 0 retries", id, m.Status, m.RetryCount)
		}
	}
	ready, _, processing, _ := q.snapshot()
	slices.Sort(ready)
	if !slices.Equal(ready, ids) || processing != 0 {
		t.Errorf("after shutdown ready=%v processing=%d, want both ids back in the queue", ready, processing)
	}
}

func TestPoolDefersRetryNotYetDue(t *testing.T) {
	t.Parallel()
	db := pgtest.New(t)
	_, ids := fixture(t, db.DB, "Hi", [2]string{"A", ""})
	if _, err := db.Exec(`UPDATE outbound_messages SET next_attempt_at = now() + interval '1 hour', retry_count = 1 WHERE id = $1`, ids[0]); err != nil {
		t.Fatal(err)
	}
	s := newFakeSender()
	q := newMemQueue(ids...)
	startPool(t, q, db.DB, s, 3)
	waitFor(t, "job deferred", 5*time.Second, func() bool { _, _, _, d := q.snapshot(); return d == 1 })
	if c := s.callsFor(ids[0]); c != 0 {
		t.Errorf("early job was sent %d times", c)
	}
	q.mu.Lock()
	at := q.delayed[ids[0]]
	q.mu.Unlock()
	if until := time.Until(at); until < 50*time.Minute {
		t.Errorf("deferred until %v from now, want about an hour", until)
	}
}
