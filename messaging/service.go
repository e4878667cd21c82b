package messaging

import (
	"context"
	"log/slog"
	"time"
)

// Service is the messaging feature's face to the rest of the service: it
// creates and queues the messages of a send, and runs the loops that keep
// the queue honest (retry promotion, dead-consumer reaping, the sweeper).
type Service struct {
	repo  *Repo
	queue *RedisQueue
	log   *slog.Logger
	opts  MaintenanceOptions
	now   func() time.Time
	wake  chan struct{} // wakes the materialiser
}

// MaintenanceOptions pace the background loops.
type MaintenanceOptions struct {
	PromoteInterval time.Duration // how often due retries move to the ready list
	ReapInterval    time.Duration // how often dead consumers' jobs are returned
	ConsumerTTL     time.Duration // a consumer silent this long is presumed dead
	SweepInterval   time.Duration // how often the sweeper looks for lost work
	UnpushedAfter   time.Duration // a send whose ids are not in Redis after this is re-pushed
	StaleAfter      time.Duration // last resort: an active message untouched this long is re-queued
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
	if o.UnpushedAfter <= 0 {
		o.UnpushedAfter = 10 * time.Second
	}
	if o.StaleAfter <= 0 {
		o.StaleAfter = 10 * time.Minute
	}
}

// NewService wires the messaging feature.
func NewService(repo *Repo, queue *RedisQueue, opts MaintenanceOptions, log *slog.Logger) *Service {
	opts.defaults()
	return &Service{repo: repo, queue: queue, opts: opts, log: log, now: time.Now, wake: make(chan struct{}, 1)}
}

// Repo returns the service's repository (the pool shares it).
func (s *Service) Repo() *Repo { return s.repo }

// QueueDepths reports the queue's sizes for /health.
func (s *Service) QueueDepths(ctx context.Context) (Depths, error) { return s.queue.Depths(ctx) }

// RunMaintenance runs the promoter, the reaper and the sweeper until ctx
// ends. Every replica runs them: each step is atomic in Redis or guarded in
// PostgreSQL, so running them concurrently is safe. It returns when ctx ends.
func (s *Service) RunMaintenance(ctx context.Context) {
	promote := time.NewTicker(s.opts.PromoteInterval)
	reap := time.NewTicker(s.opts.ReapInterval)
	sweep := time.NewTicker(s.opts.SweepInterval)
	defer promote.Stop()
	defer reap.Stop()
	defer sweep.Stop()
	s.Sweep(ctx) // at start: a restart after a Redis loss should not wait
	for {
		select {
		case <-ctx.Done():
			return
		case <-promote.C:
			for {
				n, err := s.queue.PromoteDue(ctx, s.now())
				if err != nil {
					if ctx.Err() == nil {
						s.log.Warn("promoting due retries failed", "err", err)
					}
					break
				}
				if n < 1000 {
					break
				}
			}
		case <-reap.C:
			n, err := s.queue.ReapDead(ctx, s.now().Add(-s.opts.ConsumerTTL))
			if err != nil && ctx.Err() == nil {
				s.log.Warn("reaping dead consumers failed", "err", err)
			}
			if n > 0 {
				s.log.Warn("returned jobs of a dead consumer to the queue", "jobs", n)
			}
		case <-sweep.C:
			s.Sweep(ctx)
		}
	}
}

// Sweep finds work that should be moving but is not, and queues it again:
//   - Redis lost its data (flushed or restarted without persistence): every
//     pending or sending message is pushed again;
//   - a send committed but its ids never reached Redis (process died, or
//     Redis was down at the time): that campaign's active messages are pushed;
//   - last resort: active messages untouched for StaleAfter.
//
// Pushing a message twice is harmless: the claim is a guarded update.
func (s *Service) Sweep(ctx context.Context) {
	lost, err := s.queue.EnsureEpoch(ctx)
	if err != nil {
		if ctx.Err() == nil {
			s.log.Warn("sweeper cannot reach redis", "err", err)
		}
		return
	}
	if lost {
		n, err := s.requeueActive(ctx, 0)
		if err != nil {
			s.log.Error("rebuilding the queue from postgres failed", "err", err)
			return
		}
		s.log.Info("queue (re)built from postgres: redis held no queue state", "messages", n)
	}

	batches, err := s.unpushedBatches(ctx, s.now().Add(-s.opts.UnpushedAfter))
	if err != nil {
		s.log.Warn("sweeper cannot read unpushed sends", "err", err)
		return
	}
	for _, b := range batches {
		n, err := s.requeueActive(ctx, b.CampaignID)
		if err != nil {
			s.log.Warn("re-pushing an unpushed send failed", "campaign_id", b.CampaignID, "err", err)
			return
		}
		if err := s.repo.MarkPushed(ctx, b.ID); err != nil {
			s.log.Warn("marking send pushed failed", "batch_id", b.ID, "err", err)
			return
		}
		s.log.Warn("pushed messages of a send that never reached the queue", "campaign_id", b.CampaignID, "messages", n)
	}

	// The last resort only runs while the queue is short: in a deep backlog
	// an old pending message is most likely just waiting its turn.
	d, err := s.queue.Depths(ctx)
	if err != nil || d.Ready > 10_000 {
		return
	}
	ids, err := s.repo.TouchStale(ctx, s.now().Add(-s.opts.StaleAfter), 10_000)
	if err != nil {
		s.log.Warn("sweeper cannot read stale messages", "err", err)
		return
	}
	if len(ids) > 0 {
		if err := s.queue.Push(ctx, ids); err != nil {
			s.log.Warn("re-queueing stale messages failed", "err", err)
			return
		}
		s.log.Warn("re-queued messages that had not moved", "messages", len(ids), "stale_after", s.opts.StaleAfter)
	}
}

// requeueActive pushes the ids of active messages (of one campaign, or all
// with campaignID 0), paging by id so memory stays bounded at any size.
func (s *Service) requeueActive(ctx context.Context, campaignID int64) (int, error) {
	const page = 5000
	var after int64
	total := 0
	for {
		ids, err := s.repo.ActiveIDs(ctx, campaignID, after, page)
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
