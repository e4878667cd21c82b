package messaging

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"github.com/campaignd/dispatch/messaging/provider"
	"github.com/campaignd/dispatch/messaging/queue"
	"github.com/campaignd/dispatch/platform/channel"
	"github.com/campaignd/dispatch/platform/errs"
	"github.com/campaignd/dispatch/platform/loop"
	"github.com/campaignd/dispatch/platform/sms"
)

// jobQueue is what the pool needs from the queue; RedisQueue implements it,
// and tests use an in-memory one.
type jobQueue interface {
	Fetch(ctx context.Context, consumer string, max int, wait time.Duration) ([]int64, error)
	Settle(ctx context.Context, consumer string, s queue.Settlement) error
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
	// Starved, if set, is called when a fetch finds fewer jobs than it has
	// room for: the app wakes the feeder with it, so the list is topped up
	// at once instead of at the feeder's next tick.
	Starved  func()
	Provider string   // the sender's name, for Observer, when it does not name one per channel
	Observer Observer // nil: nothing is observed
	Limits   Limits   // the longest message per channel; a longer one fails for good

	// Gate paces and brakes providers across replicas; nil admits every
	// send at once.
	Gate Gate
	// FailUncertain is UNCERTAIN_POLICY=fail: a message whose attempt may
	// have reached the provider (a timeout, a 5xx, a worker that died
	// mid-send) fails for manual review instead of being sent again.
	FailUncertain bool
	// OnOptOut, if set, is called after a provider said the recipient
	// unsubscribed: the app opts the customer out of the channel.
	OnOptOut func(ctx context.Context, customerID int64, ch channel.Channel)
	// ErrorBrake pauses a campaign whose recent attempts mostly fail; the
	// zero value disables it.
	ErrorBrake ErrorBrakeOptions

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
	// pool needs more of them, most of all on a loaded host where a claim
	// or a record of 100 rows takes 20-50 ms: one per 170 delivery
	// goroutines. At 1,000 goroutines on a loaded 2-core host, 6 of each
	// delivered 1.3-1.5 times what 3 did (6,703 and 5,852 msgs/s against
	// 4,482 and 4,150, alternating runs of BenchmarkThroughput); 10 did no
	// better than 6.
	if o.Fetchers <= 0 {
		o.Fetchers = min(max(1, (o.Concurrency+169)/170), 8)
	}
	if o.Flushers <= 0 {
		o.Flushers = min(max(1, (o.Concurrency+169)/170), 8)
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
// hand its jobs to the settler, which acknowledges them in Redis in the
// background. A job is therefore acknowledged only after the database holds
// its outcome, and a crash at any point leaves it in the processing list,
// from which a reaper returns it. Recording never waits for Redis: while
// Redis is down, outcomes keep reaching PostgreSQL and the settlements wait,
// bounded, in the settler.
//
// A delivery that fails because of this service's own PostgreSQL or Redis
// (IsInfrastructure), not the provider, is not an attempt: the message goes
// back to pending, retry_count unchanged, for another try after a short
// pause.
//
// Memory is bounded: at most Concurrency+Prefetch jobs are claimed and not
// yet delivered (tokens), at most Concurrency outcomes wait in the results
// channel plus one batch per flusher and one being gathered, and at most
// settleBacklog ids wait in the settler.
type Pool struct {
	opts   PoolOptions
	queue  jobQueue
	repo   *Repo
	sender provider.Sender
	policy RetryPolicy
	log    *slog.Logger
	jitter func() float64
	now    func() time.Time

	gathering sync.Mutex // one fetcher at a time takes capacity for a batch
	campaigns *campaignStatuses
	settler   *settler
	// infraDelay is the pause before a delivery that failed on our own
	// infrastructure is tried again (infraRetryDelay; tests shorten it).
	infraDelay time.Duration

	errorRates *errorRates

	sent, failed, retried, requeued atomic.Int64
}

// NewPool builds a pool; Run starts it.
func NewPool(opts PoolOptions, q jobQueue, repo *Repo, sender provider.Sender, policy RetryPolicy, log *slog.Logger) *Pool {
	opts.defaults()
	return &Pool{
		opts: opts, queue: q, repo: repo, sender: sender, policy: policy,
		log: log.With("consumer", opts.Consumer), jitter: randomJitter, now: time.Now,
		campaigns:  newCampaignStatuses(repo),
		settler:    newSettler(q, opts.Consumer, log.With("consumer", opts.Consumer)),
		infraDelay: infraRetryDelay,
		errorRates: newErrorRates(opts.ErrorBrake),
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
	optOut  bool   // the provider said the recipient unsubscribed
	pause   string // the error-rate brake tripped: pause the campaign with this reason
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
//  3. the recorder and flushers store every outcome;
//  4. the settler settles the jobs in Redis, for at most settleDrain;
//  5. anything still in the processing list goes back to the queue and the
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

	settleCtx, cancelSettle := context.WithCancel(context.WithoutCancel(ctx))
	defer cancelSettle()
	settling := make(chan struct{}) // closed once nothing more is handed to the settler
	var settlerDone sync.WaitGroup
	// Exits once settling is closed and its backlog is settled, or when
	// settleCtx ends (settleDrain after settling is closed).
	settlerDone.Go(func() { p.settler.run(settleCtx, settling) })

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
	close(settling)
	stopSettling := time.AfterFunc(settleDrain, cancelSettle)
	settlerDone.Wait()
	stopSettling.Stop()

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

// settleDrain is how long shutdown waits for the settler to settle what
// the recorder handed it. Past it (Redis down), the jobs stay in the
// processing list and Release returns them to the queue, or, if Redis is
// still down, the reaper does after the restart.
const settleDrain = 5 * time.Second

// heartbeat keeps this consumer registered until ctx ends. It does not back
// off past its interval: a heartbeat that came late after an outage would
// get this consumer's jobs reaped while it still works on them.
func (p *Pool) heartbeat(ctx context.Context) {
	loop.Every(ctx, p.opts.HeartbeatInterval, "heartbeat", p.log, func(ctx context.Context) error {
		return p.queue.Heartbeat(ctx, p.opts.Consumer, p.now())
	}, loop.MaxBackoff(p.opts.HeartbeatInterval))
}

// fetch takes jobs while there is free capacity and hands claimed ones to
// the delivery goroutines. A token in tokens is one claimed job not yet
// delivered, so at most Concurrency+Prefetch claimed jobs wait or are being
// delivered here. Several fetchers may run at once.
func (p *Pool) fetch(ctx context.Context, tokens chan struct{}, jobs chan<- claimedJob) {
	for {
		n, ok := p.gather(ctx, tokens)
		if !ok {
			return
		}
		var ids []int64
		err := loop.Retry(ctx, "fetching jobs", p.log, func(ctx context.Context) (err error) {
			ids, err = p.queue.Fetch(ctx, p.opts.Consumer, n, p.opts.PollWait)
			return err
		})
		if err != nil { // shutdown
			release(tokens, n)
			return
		}
		release(tokens, n-len(ids))
		if len(ids) < n && p.opts.Starved != nil {
			p.opts.Starved() // the ready list ran short: ask for more now
		}
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
// claim are handed to the settler: acknowledged when there is nothing left to do,
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
	var dups queue.Settlement
	for _, id := range ids {
		if seen[id] {
			dups.Done = append(dups.Done, id)
			continue
		}
		seen[id] = true
		uniq = append(uniq, id)
	}
	p.settler.add(dups)
	ids = uniq
	var (
		jobs      []Job
		unclaimed []Unclaimed
		at        time.Time
	)
	err := loop.Retry(ctx, "claiming jobs", p.log, func(ctx context.Context) (err error) {
		at = p.now()
		cctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 10*time.Second)
		defer cancel()
		jobs, unclaimed, err = p.repo.Claim(cctx, ids, p.opts.Lease, p.opts.FailUncertain)
		return err
	})
	if err != nil { // shutdown
		return nil, at
	}
	if len(unclaimed) > 0 {
		p.observeCancelled(unclaimed)
		p.settleUnclaimed(unclaimed)
	}
	return jobs, at
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

func (p *Pool) settleUnclaimed(unclaimed []Unclaimed) {
	var s queue.Settlement
	for _, u := range unclaimed {
		if u.Failed {
			s.Dead = append(s.Dead, u.ID)
			continue
		}
		if u.RetryAt.IsZero() {
			s.Done = append(s.Done, u.ID)
			continue
		}
		s.AddDelay(u.ID, u.RetryAt)
	}
	p.settler.add(s)
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
	body, err := p.opts.Limits.Render(channel.Channel(j.Channel), j.Template, j.Fields)
	if err != nil {
		// Neither a template that cannot render nor a message too long for
		// its channel gets better with another attempt.
		var long *TooLongError
		if !errors.As(err, &long) {
			err = fmt.Errorf("render template: %w", err)
		}
		return p.failure(j, err, true)
	}
	// The campaign is checked again just before sending: a job claimed
	// before a pause or cancel (waiting in the prefetch buffer) is not
	// sent; recorded as not attempted, it is requeued, then dropped
	// (paused) or cancelled by the claim.
	if sendCtx.Err() != nil || !p.campaigns.sending(sendCtx, j.CampaignID) {
		return p.notAttempted(j)
	}
	// Outside the campaign's send window (as the read just above found
	// it), the message waits until the window opens: no attempt is used.
	if next, closed := p.campaigns.windowClosed(j.CampaignID, p.now()); closed {
		r = p.notAttempted(j)
		r.outcome.NextAttemptAt = next
		return r
	}
	ch := channel.Channel(j.Channel)
	prov := p.providerFor(ch)
	if p.opts.Gate != nil {
		// Waiting for the provider's shared rate, or for its brake to lift,
		// is no attempt; a long wait goes back to the queue instead of
		// holding this goroutine, so other providers keep flowing.
		wait, err := p.opts.Gate.Admit(sendCtx, prov, maxGateWait)
		if err != nil || wait > 0 {
			r = p.notAttempted(j)
			if err == nil {
				r.outcome.NextAttemptAt = p.now().Add(wait)
			}
			return r
		}
	}
	ctx, cancel := context.WithTimeout(sendCtx, p.opts.SendTimeout)
	start := time.Now()
	acc, err := p.sender.Send(ctx, provider.Message{ID: j.ID, Channel: ch, To: j.Phone, Body: body})
	took := time.Since(start)
	p.opts.Observer.DeliveryTook(prov, took)
	cancel()
	if err == nil {
		o := Outcome{ID: j.ID, Status: StatusSent, Content: body, Attempted: true,
			Provider: prov, ProviderMessageID: acc.MessageID, Segments: acc.Segments,
			Cost: acc.Cost, Currency: acc.Currency,
			StartedAt: start, Duration: took, AttemptResult: "sent", ProviderStatus: acc.Status}
		if ch == channel.SMS {
			info := sms.Analyze(body)
			o.Encoding = string(info.Encoding)
			if o.Segments == 0 {
				o.Segments = info.Segments
			}
		}
		r.outcome = o
		r.pause = p.errorRates.observe(j.CampaignID, p.campaigns.generation(j.CampaignID), "")
		return r
	}
	if IsInfrastructure(err) {
		// Our own PostgreSQL or Redis failed (the mock's ledger could not
		// be written, say): the provider was not the problem, so this is
		// not an attempt either. Retried after a pause, not at once, so an
		// overloaded database is not hammered; nothing counts it, so an
		// outage cannot use up a message's attempts.
		r = p.notAttempted(j)
		r.outcome.NextAttemptAt = p.now().Add(loop.Backoff(1, p.infraDelay, p.infraDelay, p.jitter()))
		return r
	}
	uncertain := provider.IsUncertain(err)
	if sendCtx.Err() != nil && !uncertain {
		// Cut off by shutdown before the request left: not an attempt.
		return p.notAttempted(j)
	}
	var pe *provider.Error
	errors.As(err, &pe)
	switch provider.ClassOf(err) {
	case provider.Throttled:
		// The provider asked us to slow down: no attempt, and every
		// replica waits with it.
		wait := max(pe.RetryAfter, time.Second)
		if p.opts.Gate != nil {
			p.opts.Gate.Throttled(sendCtx, prov, wait)
		}
		r = p.notAttempted(j)
		r.outcome.NextAttemptAt = p.now().Add(wait + time.Duration(p.jitter()*float64(wait)))
		return r
	case provider.Account:
		// The provider refuses the whole account: brake it for every
		// replica and burn no attempt until it recovers.
		wait := time.Duration(0)
		if p.opts.Gate != nil {
			wait = p.opts.Gate.Brake(sendCtx, prov, err.Error())
		}
		r = p.notAttempted(j)
		r.outcome.NextAttemptAt = p.now().Add(max(wait, time.Second))
		return r
	}
	trip := p.errorRates.observe(j.CampaignID, p.campaigns.generation(j.CampaignID), errorKey(err))
	var res result
	switch {
	case provider.ClassOf(err) == provider.OptedOut:
		res = p.failure(j, err, true)
		res.optOut = true
	case provider.ClassOf(err) == provider.Permanent:
		res = p.failure(j, err, true)
	case uncertain && p.opts.FailUncertain:
		res = p.failure(j, fmt.Errorf("uncertain: %w; not resent (UNCERTAIN_POLICY=fail)", err), true)
	default:
		res = p.failure(j, err, false)
	}
	res.outcome.Provider, res.outcome.StartedAt, res.outcome.Duration = prov, start, took
	if pe != nil {
		res.outcome.ProviderStatus = pe.Code
	}
	if uncertain {
		res.outcome.AttemptResult = "uncertain"
	}
	res.pause = trip
	return res
}

// maxGateWait is the longest a delivery goroutine waits in line for its
// provider's rate; a longer wait puts the job back, delayed.
const maxGateWait = time.Second

// providerFor names the provider that carries ch.
func (p *Pool) providerFor(ch channel.Channel) string {
	if r, ok := p.sender.(interface{ ProviderFor(channel.Channel) string }); ok {
		if name := r.ProviderFor(ch); name != "" {
			return name
		}
	}
	return p.opts.Provider
}

// infraRetryDelay is the pause (with jitter, half to all of it) before a
// message whose delivery failed on our own infrastructure is tried again.
const infraRetryDelay = 2 * time.Second

// deliverable reports whether a prefetched job can still be attempted
// within its lease: claimed jobs wait for a free delivery goroutine, and one
// that waited longer than Lease-SendTimeout (the recorder was stalled, say,
// by PostgreSQL being down) could still be sending when its lease runs out
// and another worker claims it again. It goes back to the queue instead.
func (p *Pool) deliverable(j claimedJob) bool {
	return p.opts.Prefetch == 0 || p.now().Sub(j.claimedAt) <= p.opts.Lease-p.opts.SendTimeout
}

// notAttempted is a delivery that did not happen: the message goes back to
// pending with retry_count unchanged, and its job to the front of the queue
// (or, with NextAttemptAt set, to the delayed set).
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
		o.AttemptResult = "retried"
		return result{job: j, outcome: o}
	}
	o.Status = StatusFailed
	o.AttemptResult = "failed"
	var pe *provider.Error
	if permanent && !errors.As(err, &pe) { // a provider's error names its class itself
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

// flush records a batch in PostgreSQL, retrying until it succeeds or ctx
// ends (only late in shutdown), then hands its settlement to the settler,
// so the next batch is recorded without waiting for Redis. A job is never
// acknowledged before its outcome is stored, so one whose outcome was not
// stored stays in the processing list and is delivered again; the
// provider's idempotency key keeps that from reaching the customer twice.
func (p *Pool) flush(ctx context.Context, batch []result) {
	if len(batch) == 0 {
		return
	}
	outcomes := make([]Outcome, len(batch))
	var s queue.Settlement
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
			if r.outcome.NextAttemptAt.IsZero() {
				s.Requeue = append(s.Requeue, r.job.ID)
			} else {
				s.AddDelay(r.job.ID, r.outcome.NextAttemptAt)
			}
		default:
			s.AddDelay(r.job.ID, r.outcome.NextAttemptAt)
		}
	}
	var skipped []int64
	err := loop.Retry(ctx, "recording outcomes", p.log, func(ctx context.Context) (err error) {
		skipped, err = p.repo.Record(ctx, outcomes)
		if err == nil {
			p.count(batch, skipped)
		}
		return err
	})
	if err != nil {
		p.log.Error("gave up recording outcomes at shutdown; the jobs will be redelivered", "outcomes", len(outcomes), "err", err)
		return
	}
	p.settler.add(s)
	p.afterRecord(ctx, batch, skipped)
}

// afterRecord acts on what a recorded batch said beyond message states:
// recipients who unsubscribed are opted out, and campaigns whose error
// rate tripped the brake are paused. Both run after the outcomes are
// stored, and neither is retried: the opt-out repeats on the next message
// to that customer (the provider answers it the same way), and the brake
// trips again on the next window.
func (p *Pool) afterRecord(ctx context.Context, batch []result, skipped []int64) {
	for _, r := range batch {
		if len(skipped) > 0 && slices.Contains(skipped, r.job.ID) {
			continue
		}
		if r.optOut && p.opts.OnOptOut != nil {
			p.opts.OnOptOut(ctx, r.job.CustomerID, channel.Channel(r.job.Channel))
		}
		if r.pause != "" {
			if err := p.opts.ErrorBrake.Pause(ctx, r.job.CampaignID, r.pause); err != nil {
				p.log.Warn("error-rate brake could not pause the campaign", "campaign_id", r.job.CampaignID, "err", err)
				continue
			}
			p.log.Warn("campaign paused by the error-rate brake", "campaign_id", r.job.CampaignID, "reason", r.pause)
		}
	}
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

// Gate paces and brakes providers for every replica (messaging/throttle
// implements it over Redis).
type Gate interface {
	// Admit returns 0 when a message may go to provider now, waiting in
	// line up to max for the provider's shared rate; otherwise how long the
	// message should wait (the rate is exhausted for longer, or the
	// provider is braked).
	Admit(ctx context.Context, provider string, max time.Duration) (time.Duration, error)
	// Throttled tells every replica the provider asked to slow down for d.
	Throttled(ctx context.Context, provider string, d time.Duration)
	// Brake stops sends to provider on every replica, for reason, and
	// returns how long the brake holds before a send is tried again.
	Brake(ctx context.Context, provider, reason string) time.Duration
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
