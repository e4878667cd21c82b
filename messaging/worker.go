package messaging

import (
	"context"
	"fmt"
	"log/slog"
	"sync"
	"sync/atomic"
	"time"
)

// jobQueue is what the pool needs from the queue; RedisQueue implements it,
// and tests use an in-memory one.
type jobQueue interface {
	Fetch(ctx context.Context, consumer string, max int, wait time.Duration) ([]int64, error)
	Settle(ctx context.Context, consumer string, s Settlement) error
	Heartbeat(ctx context.Context, consumer string, now time.Time) error
	Release(ctx context.Context, consumer string) (int, error)
}

// PoolOptions size and pace the worker pool.
type PoolOptions struct {
	Consumer          string        // names this pool's processing list; unique per process
	Concurrency       int           // delivery goroutines (WORKER_CONCURRENCY)
	BatchSize         int           // most jobs fetched, claimed and recorded per round trip
	SendTimeout       time.Duration // deadline of one delivery attempt
	Lease             time.Duration // a message in sending longer than this is presumed abandoned
	PollWait          time.Duration // longest blocking wait on an empty queue
	HeartbeatInterval time.Duration
	DrainTimeout      time.Duration // on shutdown, how long in-flight deliveries may take
	FlushInterval     time.Duration // longest an outcome waits to be recorded with others
}

func (o *PoolOptions) defaults() {
	if o.BatchSize <= 0 {
		o.BatchSize = 100
	}
	if o.SendTimeout <= 0 {
		o.SendTimeout = 10 * time.Second
	}
	if o.Lease <= 0 {
		o.Lease = 3 * o.SendTimeout
	}
	if o.PollWait <= 0 {
		o.PollWait = time.Second
	}
	if o.HeartbeatInterval <= 0 {
		o.HeartbeatInterval = 2 * time.Second
	}
	if o.DrainTimeout <= 0 {
		o.DrainTimeout = 20 * time.Second
	}
	if o.FlushInterval <= 0 {
		o.FlushInterval = 10 * time.Millisecond
	}
}

// Pool delivers queued messages with a fixed number of goroutines.
//
// One fetcher takes batches of ids from the queue into this pool's
// processing list and claims them in PostgreSQL with one statement; the
// delivery goroutines render and send; one recorder stores outcomes in
// batches and only then acknowledges the jobs in Redis. A job is therefore
// acknowledged only after the database holds its outcome, and a crash at any
// point leaves it in the processing list, from which a reaper returns it.
type Pool struct {
	opts   PoolOptions
	queue  jobQueue
	repo   *Repo
	sender Sender
	policy RetryPolicy
	log    *slog.Logger
	jitter func() float64
	now    func() time.Time

	sent, failed, retried, requeued atomic.Int64
}

// NewPool builds a pool; Run starts it.
func NewPool(opts PoolOptions, queue jobQueue, repo *Repo, sender Sender, policy RetryPolicy, log *slog.Logger) *Pool {
	opts.defaults()
	return &Pool{
		opts: opts, queue: queue, repo: repo, sender: sender, policy: policy,
		log: log.With("consumer", opts.Consumer), jitter: randomJitter, now: time.Now,
	}
}

// PoolStats counts outcomes since the pool started.
type PoolStats struct {
	Sent     int64 `json:"sent"`
	Failed   int64 `json:"failed"`
	Retried  int64 `json:"retried"`
	Requeued int64 `json:"requeued"`
}

// Stats returns the pool's counters.
func (p *Pool) Stats() PoolStats {
	return PoolStats{Sent: p.sent.Load(), Failed: p.failed.Load(), Retried: p.retried.Load(), Requeued: p.requeued.Load()}
}

type result struct {
	job     Job
	outcome Outcome
	dead    bool
}

// Run delivers messages until ctx is cancelled, then shuts down in order:
//  1. the fetcher stops taking jobs (within PollWait);
//  2. deliveries already claimed finish, for at most DrainTimeout, after
//     which the rest are cancelled and recorded as not attempted;
//  3. the recorder stores every outcome and settles the jobs in Redis;
//  4. anything still in the processing list goes back to the queue and the
//     heartbeat stops.
//
// Run returns when all of its goroutines have exited.
func (p *Pool) Run(ctx context.Context) error {
	p.log.Info("worker pool starting", "concurrency", p.opts.Concurrency, "batch_size", p.opts.BatchSize)

	// sendCtx outlives ctx by DrainTimeout, so in-flight deliveries can
	// finish after shutdown begins.
	// recordCtx gives the recorder a few more seconds to store what the
	// cancelled deliveries returned; past it, unrecorded jobs stay in the
	// processing list and are redelivered after restart.
	sendCtx, cancelSends := context.WithCancel(context.WithoutCancel(ctx))
	defer cancelSends()
	recordCtx, cancelRecord := context.WithCancel(context.WithoutCancel(ctx))
	defer cancelRecord()
	stopDrainTimer := context.AfterFunc(ctx, func() {
		t := time.NewTimer(p.opts.DrainTimeout)
		defer t.Stop()
		select {
		case <-t.C:
			p.log.Warn("drain timeout reached; cancelling in-flight deliveries", "timeout", p.opts.DrainTimeout)
			cancelSends()
		case <-recordCtx.Done():
			return
		}
		t.Reset(5 * time.Second)
		select {
		case <-t.C:
			cancelRecord()
		case <-recordCtx.Done():
		}
	})
	defer stopDrainTimer()

	hbCtx, stopHeartbeat := context.WithCancel(context.WithoutCancel(ctx))
	var hbDone sync.WaitGroup
	hbDone.Go(func() { p.heartbeat(hbCtx) }) // exits when stopHeartbeat is called, after the pool has drained

	tokens := make(chan struct{}, p.opts.Concurrency)
	jobs := make(chan Job)
	results := make(chan result, p.opts.Concurrency)

	var fetcherDone sync.WaitGroup
	fetcherDone.Go(func() { p.fetch(ctx, tokens, jobs) }) // exits once ctx is cancelled; closes jobs

	var workers sync.WaitGroup
	for range p.opts.Concurrency {
		workers.Go(func() { // exits when jobs is closed and drained
			for j := range jobs {
				results <- p.deliver(sendCtx, j)
				<-tokens
			}
		})
	}
	var recorderDone sync.WaitGroup
	recorderDone.Go(func() { p.record(recordCtx, results) }) // exits when results is closed and flushed

	fetcherDone.Wait()
	workers.Wait()
	close(results)
	recorderDone.Wait()
	cancelRecord()

	relCtx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 5*time.Second)
	defer cancel()
	n, err := p.queue.Release(relCtx, p.opts.Consumer)
	stopHeartbeat()
	hbDone.Wait()
	s := p.Stats()
	p.log.Info("worker pool stopped", "returned_to_queue", n, "sent", s.Sent, "failed", s.Failed,
		"retried", s.Retried, "requeued", s.Requeued)
	if err != nil {
		return fmt.Errorf("release jobs at shutdown: %w", err)
	}
	return nil
}

func (p *Pool) heartbeat(ctx context.Context) {
	t := time.NewTicker(p.opts.HeartbeatInterval)
	defer t.Stop()
	for {
		if err := p.queue.Heartbeat(ctx, p.opts.Consumer, p.now()); err != nil && ctx.Err() == nil {
			p.log.Warn("heartbeat failed", "err", err)
		}
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
	}
}

// fetch takes jobs while there is free capacity and hands claimed ones to
// the delivery goroutines. A token in tokens is one claimed job not yet
// finished, so at most Concurrency messages are ever in sending here.
func (p *Pool) fetch(ctx context.Context, tokens chan struct{}, jobs chan<- Job) {
	defer close(jobs)
	backoff := newBackoff(100*time.Millisecond, 5*time.Second)
	for {
		select {
		case tokens <- struct{}{}:
		case <-ctx.Done():
			return
		}
		n := 1
	grab:
		for n < p.opts.BatchSize {
			select {
			case tokens <- struct{}{}:
				n++
			default:
				break grab
			}
		}
		ids, err := p.queue.Fetch(ctx, p.opts.Consumer, n, p.opts.PollWait)
		if err != nil {
			release(tokens, n)
			if ctx.Err() != nil {
				return
			}
			p.log.Warn("fetch from queue failed; backing off", "err", err, "retry_in", backoff.peek())
			if !backoff.wait(ctx) {
				return
			}
			continue
		}
		backoff.reset()
		release(tokens, n-len(ids))
		if len(ids) == 0 {
			continue
		}
		claimed := p.claim(ctx, ids)
		release(tokens, len(ids)-len(claimed))
		// Claimed messages are in sending: hand every one over even if
		// shutdown began, so each is delivered or recorded as not attempted.
		for _, j := range claimed {
			jobs <- j
		}
	}
}

// claim claims ids, retrying while PostgreSQL is unreachable. Ids it cannot
// claim are settled at once: acknowledged when there is nothing left to do,
// delayed when the message is not due yet or another worker holds it. If
// shutdown begins first, the ids stay in the processing list and Release
// returns them to the queue.
func (p *Pool) claim(ctx context.Context, ids []int64) []Job {
	// The same id twice in one batch (pushed again by a sweep) is one job:
	// acknowledge the extra copies now so they do not linger in the
	// processing list.
	seen := make(map[int64]bool, len(ids))
	uniq := ids[:0:0]
	var dups Settlement
	for _, id := range ids {
		if seen[id] {
			dups.Done = append(dups.Done, id)
			continue
		}
		seen[id] = true
		uniq = append(uniq, id)
	}
	if len(dups.Done) > 0 {
		p.settle(ctx, dups)
	}
	ids = uniq
	backoff := newBackoff(200*time.Millisecond, 5*time.Second)
	for {
		cctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 10*time.Second)
		jobs, unclaimed, err := p.repo.Claim(cctx, ids, p.opts.Lease)
		cancel()
		if err == nil {
			if len(unclaimed) > 0 {
				p.settleUnclaimed(ctx, unclaimed)
			}
			return jobs
		}
		p.log.Warn("claim failed; backing off", "err", err, "jobs", len(ids), "retry_in", backoff.peek())
		if !backoff.wait(ctx) {
			return nil
		}
	}
}

func (p *Pool) settleUnclaimed(ctx context.Context, unclaimed []Unclaimed) {
	var s Settlement
	for _, u := range unclaimed {
		if u.RetryAt.IsZero() {
			s.Done = append(s.Done, u.ID)
			continue
		}
		if s.Delay == nil {
			s.Delay = map[int64]time.Time{}
		}
		s.Delay[u.ID] = u.RetryAt
	}
	p.settle(ctx, s)
}

// deliver renders and sends one job and decides its outcome. It never
// panics: a panicking sender counts as a failed attempt.
func (p *Pool) deliver(sendCtx context.Context, j Job) (r result) {
	r.job = j
	defer func() {
		if v := recover(); v != nil {
			p.log.Error("delivery panicked", "message_id", j.ID, "panic", v)
			r = p.failure(j, fmt.Errorf("panic during delivery: %v", v), false)
		}
	}()
	body, err := Render(j.Template, j.Fields())
	if err != nil {
		return p.failure(j, fmt.Errorf("render template: %w", err), true)
	}
	if sendCtx.Err() != nil {
		return p.notAttempted(j)
	}
	ctx, cancel := context.WithTimeout(sendCtx, p.opts.SendTimeout)
	err = p.sender.Send(ctx, Outgoing{IdempotencyKey: j.ID, Channel: j.Channel, To: j.Phone, Body: body})
	cancel()
	if err == nil {
		r.outcome = Outcome{ID: j.ID, Status: StatusSent, Content: body, Attempted: true}
		return r
	}
	if sendCtx.Err() != nil {
		// Cut off by shutdown, not by the provider: not a failed attempt.
		return p.notAttempted(j)
	}
	return p.failure(j, err, IsPermanent(err))
}

func (p *Pool) notAttempted(j Job) result {
	return result{job: j, outcome: Outcome{ID: j.ID, Status: StatusPending}}
}

func (p *Pool) failure(j Job, err error, permanent bool) result {
	failed := j.RetryCount + 1
	d := p.policy.Decide(failed, permanent, p.jitter())
	o := Outcome{ID: j.ID, Error: truncate(err.Error(), 1000), Attempted: true}
	if d.Retry {
		o.Status = StatusPending
		o.NextAttemptAt = p.now().Add(d.After)
		return result{job: j, outcome: o}
	}
	o.Status = StatusFailed
	if permanent {
		o.Error = "permanent: " + o.Error
	}
	return result{job: j, outcome: o, dead: true}
}

// record batches outcomes: it flushes when BatchSize are waiting or
// FlushInterval has passed since the first one arrived.
func (p *Pool) record(ctx context.Context, results <-chan result) {
	batch := make([]result, 0, p.opts.BatchSize)
	timer := time.NewTimer(time.Hour)
	timer.Stop()
	for {
		select {
		case r, ok := <-results:
			if !ok {
				p.flush(ctx, batch)
				return
			}
			if len(batch) == 0 {
				timer.Reset(p.opts.FlushInterval)
			}
			batch = append(batch, r)
			if len(batch) >= p.opts.BatchSize {
				timer.Stop()
				p.flush(ctx, batch)
				batch = batch[:0]
			}
		case <-timer.C:
			p.flush(ctx, batch)
			batch = batch[:0]
		}
	}
}

// flush records a batch in PostgreSQL, then settles it in Redis. Both steps
// retry until they succeed or ctx ends (only late in shutdown): a job is
// never acknowledged before its outcome is stored, so one whose outcome was
// not stored stays in the processing list and is delivered again; the
// provider's idempotency key keeps that from reaching the customer twice.
func (p *Pool) flush(ctx context.Context, batch []result) {
	if len(batch) == 0 {
		return
	}
	outcomes := make([]Outcome, len(batch))
	var s Settlement
	for i, r := range batch {
		outcomes[i] = r.outcome
		switch {
		case r.outcome.Status == StatusSent:
			s.Done = append(s.Done, r.job.ID)
			p.sent.Add(1)
		case r.dead:
			s.Dead = append(s.Dead, r.job.ID)
			p.failed.Add(1)
			p.log.Warn("message failed for good", "message_id", r.job.ID, "campaign_id", r.job.CampaignID,
				"attempts", r.job.RetryCount+1, "err", r.outcome.Error)
		case !r.outcome.Attempted:
			s.Requeue = append(s.Requeue, r.job.ID)
			p.requeued.Add(1)
		default:
			if s.Delay == nil {
				s.Delay = map[int64]time.Time{}
			}
			s.Delay[r.job.ID] = r.outcome.NextAttemptAt
			p.retried.Add(1)
		}
	}
	backoff := newBackoff(200*time.Millisecond, 5*time.Second)
	for {
		err := p.repo.Record(ctx, outcomes)
		if err == nil {
			break
		}
		p.log.Warn("recording outcomes failed; retrying", "err", err, "outcomes", len(outcomes), "retry_in", backoff.peek())
		if !backoff.wait(ctx) {
			p.log.Error("gave up recording outcomes at shutdown; the jobs will be redelivered", "outcomes", len(outcomes))
			return
		}
	}
	p.settle(ctx, s)
}

// settle retries until Redis takes the settlement or ctx ends. Giving up
// leaves the jobs in the processing list; redelivered, they are found final
// (acknowledged) or not yet due (delayed again), so retrying here is about
// promptness, not safety.
func (p *Pool) settle(ctx context.Context, s Settlement) {
	backoff := newBackoff(200*time.Millisecond, 5*time.Second)
	for {
		err := p.queue.Settle(context.WithoutCancel(ctx), p.opts.Consumer, s)
		if err == nil {
			return
		}
		p.log.Warn("settling jobs in Redis failed; retrying", "err", err, "retry_in", backoff.peek())
		if !backoff.wait(ctx) {
			p.log.Error("gave up settling jobs in Redis; they will be redelivered and found settled", "err", err)
			return
		}
	}
}

func release(tokens chan struct{}, n int) {
	for range n {
		<-tokens
	}
}

func truncate(s string, n int) string {
	if len(s) <= n {
		return s
	}
	return s[:n]
}

// backoff is a capped doubling delay for retrying a dependency that is down.
type backoff struct {
	min, max, cur time.Duration
}

func newBackoff(min, max time.Duration) *backoff { return &backoff{min: min, max: max, cur: min} }

func (b *backoff) peek() time.Duration { return b.cur }
func (b *backoff) reset()              { b.cur = b.min }

// wait sleeps for the current delay and doubles it; false if ctx ended first.
func (b *backoff) wait(ctx context.Context) bool {
	t := time.NewTimer(b.cur)
	defer t.Stop()
	b.cur = min(b.cur*2, b.max)
	select {
	case <-ctx.Done():
		return false
	case <-t.C:
		return true
	}
}
