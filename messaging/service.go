package messaging

import (
	"context"
	"fmt"
	"log/slog"
	"sync"
	"sync/atomic"
	"time"

	"github.com/campaignd/dispatch/messaging/queue"
	"github.com/campaignd/dispatch/platform/loop"
)

// Service is the messaging feature's face to the rest of the service: it
// creates and queues the messages of a send, and runs the loops that keep
// the queue honest (retry promotion, dead-consumer reaping, the sweeper).
type Service struct {
	repo  *Repo
	queue *queue.Queue
	log   *slog.Logger
	opts  MaintenanceOptions
	now   func() time.Time
	wake  chan struct{} // wakes the materialiser
	feed  chan struct{} // wakes the feeder
	// rescan tells this process's feeder to look from every campaign's
	// first message at its next round: the sweeper unqueued messages that
	// may lie behind its marks (see feedMark).
	rescan atomic.Bool
	// materialized is the batch the materialiser worked last: batches
	// take turns after it.
	materialized atomic.Int64
	// throughput counts outcomes per minute for GET /queue, once
	// CountThroughput made it the pool's observer.
	throughput atomic.Pointer[throughputObserver]
}

// MaintenanceOptions pace the background loops.
type MaintenanceOptions struct {
	PromoteInterval time.Duration // how often due retries move to the ready list
	ReapInterval    time.Duration // how often dead consumers' jobs are returned
	ConsumerTTL     time.Duration // a consumer silent this long is presumed dead
	SweepInterval   time.Duration // how often the sweeper looks for lost work
	StaleAfter      time.Duration // last resort: an active message untouched this long is re-queued
	// FeedFloor is the shortest ready list the feeder aims for whatever the
	// measured drain rate: about two rounds of this replica's pool
	// (2 × worker concurrency + batch), so a pool is never starved while
	// the rate estimate ramps up. At 8 deliveries/s per worker that is a
	// quarter of a second of work, at any concurrency.
	FeedFloor int
}

func (o *MaintenanceOptions) defaults() {
	if o.PromoteInterval <= 0 {
		o.PromoteInterval = 250 * time.Millisecond
	}
	if o.ReapInterval <= 0 {
		o.ReapInterval = 5 * time.Second
	}
	if o.ConsumerTTL <= 0 {
		o.ConsumerTTL = 15 * time.Second
	}
	if o.SweepInterval <= 0 {
		o.SweepInterval = 5 * time.Second
	}
	if o.StaleAfter <= 0 {
		o.StaleAfter = 10 * time.Minute
	}
}

// NewService wires the messaging feature.
func NewService(repo *Repo, q *queue.Queue, opts MaintenanceOptions, log *slog.Logger) *Service {
	opts.defaults()
	return &Service{repo: repo, queue: q, opts: opts, log: log, now: time.Now,
		wake: make(chan struct{}, 1), feed: make(chan struct{}, 1)}
}

// Repo returns the service's repository (the pool shares it).
func (s *Service) Repo() *Repo { return s.repo }

// QueueDepths reports the queue's sizes for /health.
func (s *Service) QueueDepths(ctx context.Context) (queue.Depths, error) { return s.queue.Depths(ctx) }

// RunMaintenance runs the promoter, the reaper and the sweeper, each in its
// own loop (loop.Every: at once, then every interval, backing off while
// Redis or PostgreSQL is down), until ctx ends. Every replica runs them:
// each step is atomic in Redis or guarded in PostgreSQL, so running them
// concurrently is safe. It returns when ctx ends and all three have
// returned.
func (s *Service) RunMaintenance(ctx context.Context) {
	var wg sync.WaitGroup
	wg.Go(func() { loop.Every(ctx, s.opts.PromoteInterval, "retry promoter", s.log, s.promote) })
	wg.Go(func() { loop.Every(ctx, s.opts.ReapInterval, "reaper", s.log, s.reap) })
	// The first sweep runs at once: a restart after a Redis loss should not wait.
	wg.Go(func() { loop.Every(ctx, s.opts.SweepInterval, "sweeper", s.log, s.Sweep) })
	wg.Go(func() { loop.Every(ctx, time.Second, "throughput counters", s.log, s.flushThroughput) })
	wg.Wait()
}

// promote moves every due retry to the ready list, 1,000 a call.
func (s *Service) promote(ctx context.Context) error {
	for {
		n, err := s.queue.PromoteDue(ctx, s.now())
		if err != nil || n < 1000 {
			return err
		}
	}
}

// reap returns the jobs of consumers whose heartbeat stopped to the queue.
func (s *Service) reap(ctx context.Context) error {
	n, err := s.queue.ReapDead(ctx, s.now().Add(-s.opts.ConsumerTTL))
	if n > 0 {
		s.log.Warn("returned jobs of a dead consumer to the queue", "jobs", n)
	}
	return err
}

// Sweep finds work that should be moving but is not:
//   - Redis lost its data (flushed or restarted without persistence): every
//     pending message is marked unqueued, so the feeder queues it again, and
//     every message being delivered is pushed again (its worker may be gone);
//   - last resort: a queued or sending message untouched for StaleAfter is
//     marked unqueued (a sending one goes back to pending) for the feeder.
//
// A send whose ids never reached Redis needs nothing: its messages are
// pending and unqueued, which is what the feeder looks for. Pushing a
// message twice is harmless (the claim is a guarded update), but the sweeper
// never does it while the message is queued.
//
// It returns the error that stopped it (Redis or PostgreSQL unreachable);
// the next sweep starts over, so nothing is lost by stopping half-way.
func (s *Service) Sweep(ctx context.Context) error {
	lost, err := s.queue.EnsureEpoch(ctx)
	if err != nil {
		return err
	}
	if lost {
		unqueued, err := s.repo.UnqueuePending(ctx)
		if err != nil {
			return fmt.Errorf("rebuild the queue from postgres: %w", err)
		}
		n, err := s.requeueSending(ctx)
		if err != nil {
			return fmt.Errorf("rebuild the queue from postgres: %w", err)
		}
		s.rescan.Store(true)
		s.WakeFeeder()
		s.log.Info("queue (re)built from postgres: redis held no queue state",
			"pending_to_feed", unqueued, "sending_pushed", n)
	}

	n, err := s.repo.UnqueueStale(ctx, s.now().Add(-s.opts.StaleAfter), 10_000)
	if err != nil {
		return err
	}
	if n > 0 {
		s.rescan.Store(true)
		s.WakeFeeder()
		s.log.Warn("queued messages had not moved; the feeder queues them again", "messages", n, "stale_after", s.opts.StaleAfter)
	}
	return nil
}

// requeueSending pushes the ids of messages being delivered, paging by id.
// After Redis lost its data these are in no list; a live worker records
// them anyway, and a dead one's are claimed again once their lease ends.
func (s *Service) requeueSending(ctx context.Context) (int, error) {
	const page = 5000
	var after int64
	total := 0
	for {
		ids, err := s.repo.SendingIDs(ctx, after, page)
		if err != nil {
			return total, err
		}
		if len(ids) == 0 {
			return total, nil
		}
		if err := s.queue.Push(ctx, ids); err != nil {
			return total, err
		}
		total += len(ids)
		after = ids[len(ids)-1]
	}
}
