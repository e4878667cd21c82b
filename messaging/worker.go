package messaging

import (
	"context"
	"fmt"
	"log/slog"
	"slices"
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
	Provider          string        // the sender's name, for Observer
	Observer          Observer      // nil: nothing is observed

	// The three below default from Concurrency and BatchSize; see defaults.
	Fetchers int // fetch-and-claim loops running at once
	Flushers int // record-and-settle loops running at once
	Prefetch int // claimed jobs kept ready beyond Concurrency; negative disables
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
	if o.Observer == nil {
		o.Observer = nopObserver{}
	}
	// One fetcher and one flusher each do one batch per round trip pair,
	// so their rate is BatchSize per (Redis + PostgreSQL) latency. A large
	// pool needs more of them, most of all on a loaded host where that
	// latency is several milliseconds: one per 400 delivery goroutines.
	if o.Fetchers <= 0 {
		o.Fetchers = min(max(1, (o.Concurrency+399)/400), 4)
	}
	if o.Flushers <= 0 {
		o.Flushers = min(max(1, (o.Concurrency+399)/400), 4)
	}
	// A delivery goroutine that finishes would otherwise wait a whole
	// fetch-and-claim round trip for its next job; with mean send latency
	// of 125 ms, a 15 ms round trip alone costs 10% of the throughput. A few
	// claimed jobs kept ready hide it. It is at most Concurrency, so a job
	// waits at most one SendTimeout for a free goroutine (any goroutine is
	// free within one), and is dropped (returned not attempted, see
	// deliverable) if it waited so long that its attempt could outlive the
	// lease. With a lease too short for that, there is no prefetch.
	if o.Prefetch == 0 {
		o.Prefetch = min(o.Concurrency, max(o.BatchSize, o.Concurrency/2))
	}
	if o.Prefetch < 0 || o.Lease <= 2*o.SendTimeout {
		o.Prefetch = 0
	}
}

// Pool delivers queued messages with a fixed number of goroutines.
//
// Fetchers take batches of ids from the queue into this pool's processing
// list and claim them in PostgreSQL with one statement per batch; the
// delivery goroutines render and send; a recorder gathers outcomes into
// batches and flushers store each batch with one statement and only then
// acknowledge its jobs in Redis. A job is therefore acknowledged only after
// the database holds its outcome, and a crash at any point leaves it in the
// processing list, from which a reaper returns it.
//
// Memory is bounded: at most Concurrency+Prefetch jobs are claimed and not
// yet delivered (tokens), and at most Concurrency outcomes wait in the
// results channel plus one batch per flusher and one being gathered.
type Pool struct {
	opts   PoolOptions
	queue  jobQueue
	repo   *Repo
	sender Sender
	policy RetryPolicy
	log    *slog.Logger
	jitter func() float64
	now    func() time.Time

	gathering sync.Mutex // one fetcher at a time takes capacity for a batch
	campaigns *campaignStatuses

	sent, failed, retried, requeued atomic.Int64
}

// NewPool builds a pool; Run starts it.
func NewPool(opts PoolOptions, queue jobQueue, repo *Repo, sender Sender, policy RetryPolicy, log *slog.Logger) *Pool {
	opts.defaults()
	return &Pool{
		opts: opts, queue: queue, repo: repo, sender: sender, policy: policy,
		log: log.With("consumer", opts.Consumer), jitter: randomJitter, now: time.Now,
		campaigns: newCampaignStatuses(repo),
	}
}

// PoolStats counts the outcomes this pool stored since it started.
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

// claimedJob is a job with the time its claim was sent, so a job that
// waited too long for a delivery goroutine is not attempted past its lease.
type claimedJob struct {
	Job
	claimedAt time.Time
}

// Run delivers messages until ctx is cancelled, then shuts down in order:
//  1. the fetchers stop taking jobs (within PollWait);
//  2. deliveries already claimed finish, for at most DrainTimeout, after
//     which the rest are cancelled and recorded as not attempted;
//  3. the recorder and flushers store every outcome and settle the jobs in
//     Redis;
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

	// A token is one claimed job not yet delivered.
	tokens := make(chan struct{}, p.opts.Concurrency+p.opts.Prefetch)
	jobs := make(chan claimedJob, p.opts.Prefetch)
	results := make(chan result, p.opts.Concurrency)

	var fetchers sync.WaitGroup
	for range p.opts.Fetchers {
		fetchers.Go(func() { p.fetch(ctx, tokens, jobs) }) // exits once ctx is cancelled
	}

	var workers sync.WaitGroup
	for range p.opts.Concurrency {
		workers.Go(func() { // exits when jobs is closed and drained
			for j := range jobs {
				p.opts.Observer.Busy(1)
				r := p.deliver(sendCtx, j)
				p.opts.Observer.Busy(-1)
				results <- r
				<-tokens
			}
		})
	}
	var recorderDone sync.WaitGroup
	recorderDone.Go(func() { p.record(recordCtx, results) }) // exits when results is closed and flushed

	fetchers.Wait()
	close(jobs)
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
// delivered, so at most Concurrency+Prefetch claimed jobs wait or are being
// delivered here. Several fetchers may run at once.
func (p *Pool) fetch(ctx context.Context, tokens chan struct{}, jobs chan<- claimedJob) {
	backoff := newBackoff(100*time.Millisecond, 5*time.Second)
	for {
		n, ok := p.gather(ctx, tokens)
		if !ok {
			return
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
		claimed, at := p.claim(ctx, ids)
		release(tokens, len(ids)-len(claimed))
		// Claimed messages are in sending: hand every one over even if
		// shutdown began, so each is delivered or recorded as not attempted.
		for _, j := range claimed {
			jobs <- claimedJob{Job: j, claimedAt: at}
		}
	}
}

// gather takes capacity for the next batch: one token, then whatever is
// free up to BatchSize. With prefetch the delivery goroutines have claimed
// jobs waiting, so it may also linger up to FlushInterval for a fuller
// batch: fewer, larger claims cost PostgreSQL less per message, and
// PostgreSQL's CPU is what runs out first. Fetchers gather one at a time, so
// they do not split the free capacity into small batches. false: shutdown.
func (p *Pool) gather(ctx context.Context, tokens chan struct{}) (int, bool) {
	p.gathering.Lock()
	defer p.gathering.Unlock()
	select {
	case tokens <- struct{}{}:
	case <-ctx.Done():
		return 0, false
	}
	n := 1
	target := min(p.opts.BatchSize, cap(tokens))
	var linger *time.Timer
	for n < target {
		select {
		case tokens <- struct{}{}:
			n++
			continue
		default:
		}
		if p.opts.Prefetch == 0 {
			break
		}
		if linger == nil {
			linger = time.NewTimer(p.opts.FlushInterval)
			defer linger.Stop()
		}
		select {
		case tokens <- struct{}{}:
			n++
		case <-linger.C:
			return n, true
		case <-ctx.Done():
			release(tokens, n)
			return 0, false
		}
	}
	return n, true
}

// claim claims ids, retrying while PostgreSQL is unreachable. Ids it cannot
// claim are settled at once: acknowledged when there is nothing left to do,
// delayed when the message is not due yet or another worker holds it. If
// shutdown begins first, the ids stay in the processing list and Release
// returns them to the queue. It also returns when the successful claim was
// sent.
func (p *Pool) claim(ctx context.Context, ids []int64) ([]Job, time.Time) {
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
		at := p.now()
		cctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 10*time.Second)
		jobs, unclaimed, err := p.repo.Claim(cctx, ids, p.opts.Lease)
		cancel()
		if err == nil {
			if len(unclaimed) > 0 {
				p.observeCancelled(unclaimed)
				p.settleUnclaimed(ctx, unclaimed)
			}
			return jobs, at
		}
		p.log.Warn("claim failed; backing off", "err", err, "jobs", len(ids), "retry_in", backoff.peek())
		if !backoff.wait(ctx) {
			return nil, at
		}
	}
}

// observeCancelled counts the messages the claim, already committed,
// cancelled.
func (p *Pool) observeCancelled(unclaimed []Unclaimed) {
	var buf [2]channelTally
	t := tally(buf[:0])
	for _, u := range unclaimed {
		if u.Cancelled {
			t = t.add(u.Channel, kindCancelled)
		}
	}
	t.report(p.opts.Observer, p.opts.Provider)
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
func (p *Pool) deliver(sendCtx context.Context, cj claimedJob) (r result) {
	j := cj.Job
	r.job = j
	if !p.deliverable(cj) {
		return p.notAttempted(j)
	}
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
	// The campaign is checked again just before sending: a job claimed
	// before a pause or cancel (waiting in the prefetch buffer) is not
	// sent; recorded as not attempted, it is requeued, then dropped
	// (paused) or cancelled by the claim.
	if sendCtx.Err() != nil || !p.campaigns.sending(sendCtx, j.CampaignID) {
		return p.notAttempted(j)
	}
	ctx, cancel := context.WithTimeout(sendCtx, p.opts.SendTimeout)
	start := time.Now()
	err = p.sender.Send(ctx, Outgoing{IdempotencyKey: j.ID, Channel: j.Channel, To: j.Phone, Body: body})
	p.opts.Observer.DeliveryTook(p.opts.Provider, time.Since(start))
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

// deliverable reports whether a prefetched job can still be attempted
// within its lease: claimed jobs wait for a free delivery goroutine, and one
// that waited longer than Lease-SendTimeout (the recorder was stalled, say,
// by PostgreSQL being down) could still be sending when its lease runs out
// and another worker claims it again. It goes back to the queue instead.
func (p *Pool) deliverable(j claimedJob) bool {
	return p.opts.Prefetch == 0 || p.now().Sub(j.claimedAt) <= p.opts.Lease-p.opts.SendTimeout
}

func (p *Pool) notAttempted(j Job) result {
	return result{job: j, outcome: Outcome{ID: j.ID, Status: StatusPending}}
}

// kind says what the result does to its message once recorded.
func (r result) kind() kind {
	switch {
	case r.outcome.Status == StatusSent:
		return kindSent
	case r.dead:
		return kindFailed
	case !r.outcome.Attempted:
		return kindRequeued
	default:
		return kindRetried
	}
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

// record gathers outcomes into batches and hands each to one of Flushers
// flushing goroutines: a batch is handed over once BatchSize outcomes are
// waiting, or FlushInterval after its first one arrived. While every
// flusher is busy the batch keeps growing up to BatchSize, so batches grow
// with load.
func (p *Pool) record(ctx context.Context, results <-chan result) {
	batches := make(chan []result)
	var flushers sync.WaitGroup
	for range p.opts.Flushers {
		flushers.Go(func() { // exits when batches is closed
			for b := range batches {
				p.flush(ctx, b)
			}
		})
	}
	defer flushers.Wait()
	defer close(batches)

	var batch []result
	timer := time.NewTimer(time.Hour)
	timer.Stop()
	due := false // the batch's FlushInterval has passed
	for {
		var out chan<- []result
		if len(batch) > 0 && (due || len(batch) >= p.opts.BatchSize) {
			out = batches
		}
		in := results
		if len(batch) >= p.opts.BatchSize {
			in = nil // full: wait for a flusher
		}
		select {
		case r, ok := <-in:
			if !ok {
				if len(batch) > 0 {
					batches <- batch
				}
				return
			}
			if len(batch) == 0 {
				timer.Reset(p.opts.FlushInterval)
				due = false
				batch = make([]result, 0, p.opts.BatchSize)
			}
			batch = append(batch, r)
		case out <- batch:
			timer.Stop()
			batch, due = nil, false
		case <-timer.C:
			due = true
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
		switch r.kind() {
		case kindSent:
			s.Done = append(s.Done, r.job.ID)
		case kindFailed:
			s.Dead = append(s.Dead, r.job.ID)
			p.log.Warn("message failed for good", "message_id", r.job.ID, "campaign_id", r.job.CampaignID,
				"attempts", r.job.RetryCount+1, "err", r.outcome.Error)
		case kindRequeued:
			s.Requeue = append(s.Requeue, r.job.ID)
		default:
			if s.Delay == nil {
				s.Delay = map[int64]time.Time{}
			}
			s.Delay[r.job.ID] = r.outcome.NextAttemptAt
		}
	}
	backoff := newBackoff(200*time.Millisecond, 5*time.Second)
	for {
		skipped, err := p.repo.Record(ctx, outcomes)
		if err == nil {
			p.count(batch, skipped)
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

// count adds a recorded batch to the pool's counters and the observer,
// leaving out the outcomes the database skipped (their messages were
// finished elsewhere), so the counts agree with the stored statuses.
func (p *Pool) count(batch []result, skipped []int64) {
	var n [kindRequeued + 1]int64
	var buf [2]channelTally
	t := tally(buf[:0])
	for _, r := range batch {
		if len(skipped) > 0 && slices.Contains(skipped, r.job.ID) {
			continue
		}
		k := r.kind()
		n[k]++
		t = t.add(r.job.Channel, k)
	}
	p.sent.Add(n[kindSent])
	p.failed.Add(n[kindFailed])
	p.retried.Add(n[kindRetried])
	p.requeued.Add(n[kindRequeued])
	t.report(p.opts.Observer, p.opts.Provider)
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
