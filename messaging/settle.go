package messaging

import (
	"context"
	"log/slog"
	"sync"
	"time"

	"github.com/campaignd/dispatch/messaging/queue"
	"github.com/campaignd/dispatch/platform/loop"
)

// The settler's bounds.
const (
	// settleBacklog bounds the ids waiting to be settled in Redis (a few
	// MB at most). A pool whose fetches fail as well (Redis down) adds at
	// most its claimed jobs, Concurrency+Prefetch, so only a Redis that
	// takes fetches but refuses settlements for long can reach it.
	settleBacklog = 50_000
	// settleChunk bounds the ids of one Settle call (one MULTI).
	settleChunk = 1000
	// settleAttemptTimeout bounds one Settle call, so a Redis that hangs
	// (rather than refusing) is retried, and shutdown is not held up.
	settleAttemptTimeout = 5 * time.Second
)

// settler applies settlements in Redis in the background, so that storing
// outcomes in PostgreSQL never waits for Redis: while Redis is down the
// flushers keep recording outcomes as they come, and the settlements wait
// here, retried with backoff (loop.Retry), until Redis answers.
//
// What waits here is safe to lose, which is why it is only bounded, not
// persisted: a job that is never settled stays in the processing list,
// from which Release (at shutdown) or the reaper (after a crash) returns it
// to the queue, and its redelivery is settled then (its claim finds the
// message final and acknowledges it, or not yet due and delays it). A job
// settled late, or twice, is harmless for the same reason. Past
// settleBacklog ids the oldest settlements are dropped with a warning.
type settler struct {
	queue    jobQueue
	consumer string
	log      *slog.Logger
	limit    int // settleBacklog; tests lower it

	mu      sync.Mutex
	pending []queue.Settlement // oldest first
	ids     int                // ids in pending
	dropped int                // ids dropped and not yet reported
	wake    chan struct{}
}

func newSettler(q jobQueue, consumer string, log *slog.Logger) *settler {
	return &settler{queue: q, consumer: consumer, log: log, limit: settleBacklog, wake: make(chan struct{}, 1)}
}

// add queues x to be settled; it never blocks.
func (s *settler) add(x queue.Settlement) {
	if x.Empty() {
		return
	}
	s.mu.Lock()
	s.pending = append(s.pending, x)
	s.ids += x.Size()
	for s.ids > s.limit && len(s.pending) > 1 {
		n := s.pending[0].Size()
		s.pending[0] = queue.Settlement{}
		s.pending = s.pending[1:]
		s.ids -= n
		s.dropped += n
	}
	s.mu.Unlock()
	select {
	case s.wake <- struct{}{}:
	default:
	}
}

// backlog returns how many ids wait to be settled.
func (s *settler) backlog() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.ids
}

// take removes the oldest waiting settlements, whole, up to settleChunk ids
// (at least one), merged into one. false: nothing waits.
func (s *settler) take() (queue.Settlement, int, bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	dropped := s.dropped
	s.dropped = 0
	if len(s.pending) == 0 {
		return queue.Settlement{}, dropped, false
	}
	out := s.pending[0]
	n := out.Size()
	i := 1
	for ; i < len(s.pending) && n+s.pending[i].Size() <= settleChunk; i++ {
		out = out.Merge(s.pending[i])
		n += s.pending[i].Size()
	}
	clear(s.pending[:i])
	s.pending = s.pending[i:]
	s.ids -= n
	return out, dropped, true
}

// run settles what add queues, oldest first, retrying each chunk until Redis
// takes it. It exits once closing is closed and nothing is left to settle,
// or when ctx ends (shutdown with Redis down); what is left then stays in
// the processing list, which Release or the reaper returns to the queue.
func (s *settler) run(ctx context.Context, closing <-chan struct{}) {
	for {
		batch, dropped, ok := s.take()
		if dropped > 0 {
			s.log.Warn("too many jobs waiting to be settled in redis; dropped the oldest: they stay in the processing list until it is returned to the queue",
				"jobs", dropped, "limit", s.limit)
		}
		if !ok {
			select {
			case <-s.wake:
			case <-closing:
				if s.backlog() == 0 {
					return
				}
			case <-ctx.Done():
				return
			}
			continue
		}
		err := loop.Retry(ctx, "settling jobs in redis", s.log, func(ctx context.Context) error {
			actx, cancel := context.WithTimeout(ctx, settleAttemptTimeout)
			defer cancel()
			return s.queue.Settle(actx, s.consumer, batch)
		})
		if err != nil {
			s.log.Warn("gave up settling jobs in redis at shutdown; they stay in the processing list and return to the queue",
				"jobs", batch.Size()+s.backlog(), "err", err)
			return
		}
	}
}
