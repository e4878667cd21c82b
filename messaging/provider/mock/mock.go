// Package mock is the zero-configuration provider: it waits a random
// latency, fails at configured rates, and delivers each message id at most
// once through its Ledger, like a provider that honours idempotency keys.
// The ledger lets tests count deliveries per message across crashes.
package mock

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"sync"
	"time"

	"github.com/campaignd/dispatch/messaging/provider"
)

// Name is the mock's provider name in metrics, logs and stored messages.
const Name = "mock"

// ErrSimulatedNetwork is the mock's transient failure.
var ErrSimulatedNetwork = errors.New("simulated network error")

// Ledger remembers which idempotency keys a provider has delivered.
type Ledger interface {
	// Seen reports whether key was delivered before, counting the call.
	Seen(ctx context.Context, key int64) (bool, error)
	// Deliver records key as delivered with content and reports whether this
	// call delivered it (false: it had been delivered before).
	Deliver(ctx context.Context, key int64, content string) (bool, error)
}

// Options configure the mock.
type Options struct {
	SuccessRate          float64       // probability an attempt succeeds (SENDER_SUCCESS_RATE)
	PermanentFailureRate float64       // share of failures that are permanent
	MinLatency           time.Duration // each attempt waits uniformly in [MinLatency, MaxLatency]
	MaxLatency           time.Duration
	Seed                 uint64 // 0: random; otherwise runs are repeatable
}

// Mock is a provider stand-in: it waits a random latency, fails at the
// configured rate, and delivers each message id at most once through its
// Ledger, like a provider that honours idempotency keys.
type Mock struct {
	opts   Options
	ledger Ledger

	mu  sync.Mutex
	rng *rand.Rand
}

// New returns a mock recording deliveries in ledger.
func New(opts Options, ledger Ledger) *Mock {
	seed := opts.Seed
	if seed == 0 {
		seed = rand.Uint64()
	}
	return &Mock{opts: opts, ledger: ledger, rng: rand.New(rand.NewPCG(seed, seed^0x9e3779b97f4a7c15))}
}

// Name is the provider's name in metrics and logs.
func (m *Mock) Name() string { return Name }

// Send implements provider.Sender. Errors from its ledger (this service's
// own PostgreSQL) are passed on wrapped, so the pool sees them as
// infrastructure failures, not attempts.
func (m *Mock) Send(ctx context.Context, out provider.Message) (provider.Accepted, error) {
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
			return provider.Accepted{}, &provider.Error{Provider: Name, Class: provider.Transient, Code: "timeout",
				Message: ctx.Err().Error(), Uncertain: true, Err: ctx.Err()}
		case <-t.C:
		}
	}
	// A provider that honours idempotency keys answers a repeat of a key it
	// accepted with the original success, whatever its weather now;
	// otherwise a message delivered just before a crash could end failed.
	accepted := provider.Accepted{MessageID: fmt.Sprintf("mock-%d", out.ID), Status: "accepted"}
	if ok {
		// Deliver alone answers both questions: it delivers a new key and
		// counts a repeat, which succeeds either way. One ledger write per
		// successful send instead of a Seen and a Deliver: with the
		// PostgreSQL ledger (the default) that second write paced the pool.
		if _, err := m.ledger.Deliver(ctx, out.ID, out.Body); err != nil {
			return provider.Accepted{}, fmt.Errorf("mock provider: %w", err)
		}
		return accepted, nil
	}
	done, err := m.ledger.Seen(ctx, out.ID)
	if err != nil {
		return provider.Accepted{}, fmt.Errorf("mock provider: %w", err)
	}
	if done {
		return accepted, nil
	}
	if permanent {
		return provider.Accepted{}, &provider.Error{Provider: Name, Class: provider.Permanent, Code: "invalid_destination",
			Message: "simulated invalid destination"}
	}
	return provider.Accepted{}, &provider.Error{Provider: Name, Class: provider.Transient, Code: "network",
		Message: ErrSimulatedNetwork.Error(), Err: ErrSimulatedNetwork}
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
