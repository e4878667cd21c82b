// Package loop is the one shape of the service's background work: a step run
// every interval (Every), an operation retried until it works (Retry), and
// the delay between attempts (Backoff). Both runners back off the same way
// when a dependency is down (exponentially, with jitter, up to a cap) and
// log the same way: one warning at the first failure, then at most one line
// every 30 seconds with the number of failures since, and one line when the
// step works again. An outage of any length is therefore a handful of log
// lines and a trickle of attempts, not a line and a round trip per tick.
//
// A loop runs in its own goroutine and returns when its context ends. A
// step that may find more work than one run should do keeps going inside
// itself (until a batch comes back short, say) and returns nil when done;
// returning an error means "failed: back off". For example:
//
//	wg.Go(func() { // returns when ctx ends
//		loop.Every(ctx, 100*time.Millisecond, "feeder", log, func(ctx context.Context) error {
//			for {
//				more, err := f.round(ctx)
//				if err != nil || !more {
//					return err
//				}
//			}
//		}, loop.WakeOn(wake)) // wake: a chan struct{} with a buffer of 1
//	})
package loop

import (
	"context"
	"log/slog"
	"math/rand/v2"
	"time"
)

// Defaults of the backoff caps; see MaxBackoff.
const (
	// DefaultMaxBackoff caps Every's pause after failures (unless the
	// interval itself is longer): a loop notices a recovered dependency
	// within about this long.
	DefaultMaxBackoff = 5 * time.Second
	// retryBase and retryMax pace Retry: the first retry comes after
	// 100-200 ms, later ones at most every 5 s.
	retryBase = 200 * time.Millisecond
	retryMax  = 5 * time.Second
	// logEvery spaces the "still failing" lines of one long failure.
	logEvery = 30 * time.Second
)

// Option adjusts Every or Retry.
type Option func(*options)

type options struct {
	wake       <-chan struct{}
	maxBackoff time.Duration
	logEvery   time.Duration
	jitter     func() float64
}

func newOptions(opts []Option) options {
	o := options{logEvery: logEvery, jitter: rand.Float64}
	for _, opt := range opts {
		opt(&o)
	}
	return o
}

// WakeOn makes Every run its step as soon as a value arrives on ch, instead
// of waiting for the rest of the interval (a send committed in this process
// wakes the loop that queues it). While the loop is backing off after a
// failure, ch is not read: the next run, after the pause, sees the work.
// Give ch a buffer of 1 and send without blocking, so wake-ups coalesce.
// Retry ignores it.
func WakeOn(ch <-chan struct{}) Option { return func(o *options) { o.wake = ch } }

// MaxBackoff caps the pause between failed attempts: DefaultMaxBackoff for
// Every (never less than its interval), 5s for Retry. A loop that must keep
// its pace while failing (a heartbeat) passes its interval.
func MaxBackoff(d time.Duration) Option { return func(o *options) { o.maxBackoff = d } }

// Every runs step at once and then again interval after each run ends,
// until ctx ends; it returns when ctx has ended and the run in progress
// (which gets ctx) has returned.
//
// After a failed run the next one waits longer instead: the n-th failure in
// a row pauses Backoff(n, 2*interval, cap), so from 1 to 2 intervals after
// the first failure, doubling up to cap (MaxBackoff; DefaultMaxBackoff, but
// at least interval). A success resets it.
//
// It logs through log, naming the loop by name ("retry promoter"): a
// warning at the first failure ("<name> failing; backing off", with the
// error and the pause), while the failures last at most one warning every
// 30 s ("<name> still failing", with the failures since the previous line
// and the latest error), and one info line at the first success after them
// ("<name> recovered", with the failures and how long they lasted). An
// error returned after ctx ended is not logged.
func Every(ctx context.Context, interval time.Duration, name string, log *slog.Logger, step func(context.Context) error, opts ...Option) {
	o := newOptions(opts)
	capped := max(o.maxBackoff, interval)
	if o.maxBackoff <= 0 {
		capped = max(DefaultMaxBackoff, interval)
	}
	r := reporter{name: name, log: log, every: o.logEvery}
	t := time.NewTimer(interval)
	t.Stop()
	defer t.Stop()
	for {
		err := step(ctx)
		if ctx.Err() != nil {
			return
		}
		pause, wake := interval, o.wake
		if err != nil {
			pause = Backoff(r.failures+1, 2*interval, capped, o.jitter())
			r.failed(err, pause)
			wake = nil
		} else {
			r.succeeded()
		}
		t.Reset(pause)
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		case <-wake:
			t.Stop() // since Go 1.23 a stopped timer delivers nothing stale
		}
	}
}

// Retry calls op until it returns nil, and then returns nil, or until ctx
// ends, and then returns op's last error. It calls op at least once, even
// if ctx has already ended (op decides which context its own call gets).
// Between failures it pauses Backoff(n, 200ms, 5s) (MaxBackoff changes the
// 5s) and logs as Every does, naming the operation by name ("recording
// outcomes"), except that giving up is the caller's to log.
func Retry(ctx context.Context, name string, log *slog.Logger, op func(context.Context) error, opts ...Option) error {
	o := newOptions(opts)
	capped := retryMax
	if o.maxBackoff > 0 {
		capped = max(o.maxBackoff, retryBase)
	}
	r := reporter{name: name, log: log, every: o.logEvery}
	for {
		err := op(ctx)
		if err == nil {
			r.succeeded()
			return nil
		}
		if ctx.Err() != nil {
			return err
		}
		pause := Backoff(r.failures+1, retryBase, capped, o.jitter())
		r.failed(err, pause)
		t := time.NewTimer(pause)
		select {
		case <-ctx.Done():
			t.Stop()
			return err
		case <-t.C:
		}
	}
}

// Backoff is the pause after the attempt-th failure in a row (from 1): base,
// doubled for each further attempt, capped at max (which should be at least
// base), with "equal jitter": half of that step fixed and half scaled by
// jitter in [0,1), so clients that failed together do not retry in step,
// yet none retries sooner than half the step. It is pure, for tests to
// table-drive; callers pass rand.Float64() as jitter.
func Backoff(attempt int, base, max time.Duration, jitter float64) time.Duration {
	step := base
	for i := 1; i < attempt && step < max; i++ {
		step *= 2 // stops at max, so it cannot overflow
	}
	step = min(step, max)
	half := step / 2
	return half + time.Duration(jitter*float64(step-half))
}

// reporter writes the log lines of one run of failures.
type reporter struct {
	name  string
	log   *slog.Logger
	every time.Duration

	failures int       // in a row, since the last success
	since    int       // failures not yet counted in a line
	first    time.Time // of the current run of failures
	logged   time.Time // last line written
}

func (r *reporter) failed(err error, pause time.Duration) {
	now := time.Now()
	r.failures++
	r.since++
	switch {
	case r.failures == 1:
		r.first, r.logged, r.since = now, now, 0
		r.log.Warn(r.name+" failing; backing off", "err", err, "retry_in", pause.Round(time.Millisecond).String())
	case now.Sub(r.logged) >= r.every:
		r.log.Warn(r.name+" still failing", "err", err, "failures", r.since,
			"failing_for", now.Sub(r.first).Round(time.Second).String(), "retry_in", pause.Round(time.Millisecond).String())
		r.logged, r.since = now, 0
	}
}

func (r *reporter) succeeded() {
	if r.failures == 0 {
		return
	}
	r.log.Info(r.name+" recovered", "failures", r.failures, "failed_for", time.Since(r.first).Round(time.Millisecond).String())
	r.failures, r.since = 0, 0
}
