package messaging

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"sync"
	"time"

	"github.com/jmoiron/sqlx"

	"github.com/campaignd/dispatch/platform/errs"
	"github.com/campaignd/dispatch/platform/postgres"
)

// Outgoing is one message handed to a provider.
type Outgoing struct {
	// IdempotencyKey identifies the message (its id). Delivery is
	// at-least-once, so a provider must deliver a key at most once.
	IdempotencyKey int64
	Channel        string
	To             string
	Body           string
}

// Sender delivers messages. Send returns nil once the provider accepted the
// message (including when it had already accepted the same key), an error
// wrapped with Permanent when retrying cannot help, an error for which
// IsInfrastructure holds when this service's own PostgreSQL or Redis failed
// (not counted as an attempt), and any other error for a failure worth
// retrying. Send must honour ctx's deadline.
type Sender interface {
	Send(ctx context.Context, m Outgoing) error
}

type permanentError struct{ err error }

func (e permanentError) Error() string { return e.err.Error() }
func (e permanentError) Unwrap() error { return e.err }

// Permanent marks err as not worth retrying (an invalid number, a rejected
// body).
func Permanent(err error) error { return permanentError{err} }

// IsPermanent reports whether err was marked with Permanent.
func IsPermanent(err error) bool {
	var p permanentError
	return errors.As(err, &p)
}

// IsInfrastructure reports whether err says this service's own PostgreSQL
// or Redis is unreachable or out of capacity (connection refused, too many
// connections, shutting down), as postgres.Classify and redisx.Classify
// mark it (an UNAVAILABLE errs.Error anywhere in the chain), rather than
// that the provider failed. Such a failure is no delivery attempt: the pool
// puts the message back without counting it. A Sender passes these errors
// on wrapped with %w, and never reports a provider's own outage this way.
func IsInfrastructure(err error) bool {
	return err != nil && errs.KindOf(err) == errs.KindUnavailable
}

// ErrSimulatedNetwork is the mock sender's transient failure.
var ErrSimulatedNetwork = errors.New("simulated network error")

// Ledger remembers which idempotency keys a provider has delivered.
type Ledger interface {
	// Seen reports whether key was delivered before, counting the call.
	Seen(ctx context.Context, key int64) (bool, error)
	// Deliver records key as delivered with content and reports whether this
	// call delivered it (false: it had been delivered before).
	Deliver(ctx context.Context, key int64, content string) (bool, error)
}

// MockOptions configure the mock sender.
type MockOptions struct {
	SuccessRate          float64       // probability an attempt succeeds (SENDER_SUCCESS_RATE)
	PermanentFailureRate float64       // share of failures that are permanent
	MinLatency           time.Duration // each attempt waits uniformly in [MinLatency, MaxLatency]
	MaxLatency           time.Duration
	Seed                 uint64 // 0: random; otherwise runs are repeatable
}

// Mock is a provider stand-in: it waits a random latency, fails at the
// configured rate, and delivers each idempotency key at most once through
// its Ledger, like a provider that honours idempotency keys.
type Mock struct {
	opts   MockOptions
	ledger Ledger

	mu  sync.Mutex
	rng *rand.Rand
}

// NewMock returns a mock sender recording deliveries in ledger.
func NewMock(opts MockOptions, ledger Ledger) *Mock {
	seed := opts.Seed
	if seed == 0 {
		seed = rand.Uint64()
	}
	return &Mock{opts: opts, ledger: ledger, rng: rand.New(rand.NewPCG(seed, seed^0x9e3779b97f4a7c15))}
}

// Name is the provider's name in metrics and logs.
func (m *Mock) Name() string { return "mock" }

// Send implements Sender.
func (m *Mock) Send(ctx context.Context, out Outgoing) error {
	m.mu.Lock()
	latency := m.opts.MinLatency
	if span := m.opts.MaxLatency - m.opts.MinLatency; span > 0 {
		latency += time.Duration(m.rng.Int64N(int64(span)))
	}
	ok := m.rng.Float64() < m.opts.SuccessRate
	permanent := !ok && m.rng.Float64() < m.opts.PermanentFailureRate
	m.mu.Unlock()

	if latency > 0 {
		t := time.NewTimer(latency)
		select {
		case <-ctx.Done():
			t.Stop()
			return fmt.Errorf("mock send: %w", ctx.Err())
		case <-t.C:
		}
	}
	// A provider that honours idempotency keys answers a repeat of a key it
	// accepted with the original success, whatever its weather now;
	// otherwise a message delivered just before a crash could end failed.
	done, err := m.ledger.Seen(ctx, out.IdempotencyKey)
	if err != nil {
		return fmt.Errorf("mock provider: %w", err)
	}
	if done {
		return nil
	}
	if permanent {
		return Permanent(errors.New("simulated invalid destination"))
	}
	if !ok {
		return ErrSimulatedNetwork
	}
	if _, err := m.ledger.Deliver(ctx, out.IdempotencyKey, out.Body); err != nil {
		return fmt.Errorf("mock provider: %w", err)
	}
	return nil
}

// MemoryLedger is an in-process ledger, for benchmarks and unit tests; it
// forgets everything when the process exits.
type MemoryLedger struct {
	mu        sync.Mutex
	delivered map[int64]int
}

// NewMemoryLedger returns an empty ledger.
func NewMemoryLedger() *MemoryLedger { return &MemoryLedger{delivered: map[int64]int{}} }

// Deliver implements Ledger.
func (l *MemoryLedger) Deliver(_ context.Context, key int64, _ string) (bool, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.delivered[key]++
	return l.delivered[key] == 1, nil
}

// Seen implements Ledger.
func (l *MemoryLedger) Seen(_ context.Context, key int64) (bool, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.delivered[key] > 0 {
		l.delivered[key]++
		return true, nil
	}
	return false, nil
}

// Calls returns how many times key was handed to the ledger.
func (l *MemoryLedger) Calls(key int64) int {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.delivered[key]
}

// Delivered returns how many distinct keys were delivered.
func (l *MemoryLedger) Delivered() int {
	l.mu.Lock()
	defer l.mu.Unlock()
	return len(l.delivered)
}

// PostgresLedger keeps the mock provider's deliveries in the mock_deliveries
// table, so they survive a restart and crash tests can count deliveries per
// message across process deaths.
type PostgresLedger struct{ db *sqlx.DB }

// NewPostgresLedger returns a ledger over db.
func NewPostgresLedger(db *sqlx.DB) *PostgresLedger { return &PostgresLedger{db: db} }

// Seen implements Ledger.
func (l *PostgresLedger) Seen(ctx context.Context, key int64) (bool, error) {
	res, err := l.db.ExecContext(ctx, `UPDATE mock_deliveries SET calls = calls + 1 WHERE message_id = $1`, key)
	if err != nil {
		return false, postgres.Classify(err, "mock ledger")
	}
	n, err := res.RowsAffected()
	return n == 1, err
}

// Deliver implements Ledger: the first call for a key inserts it; later
// calls only count themselves.
func (l *PostgresLedger) Deliver(ctx context.Context, key int64, content string) (bool, error) {
	var fresh bool
	err := l.db.GetContext(ctx, &fresh, `
INSERT INTO mock_deliveries (message_id, content) VALUES ($1, $2)
ON CONFLICT (message_id) DO UPDATE SET calls = mock_deliveries.calls + 1
RETURNING (xmax = 0)`, key, content)
	return fresh, postgres.Classify(err, "mock ledger")
}
