package messaging

import (
	"math/rand/v2"
	"time"

	"github.com/campaignd/dispatch/platform/loop"
)

// RetryPolicy decides what happens after a failed delivery attempt.
type RetryPolicy struct {
	// MaxAttempts is the number of attempts in all (MAX_RETRY_COUNT); the
	// message fails for good when this many have failed.
	MaxAttempts int
	// Base is the delay before the first retry; each further retry doubles
	// it, up to Max.
	Base time.Duration
	Max  time.Duration
}

// Decision is the outcome of a failed attempt.
type Decision struct {
	Retry bool          // false: the message is failed for good
	After time.Duration // delay before the next attempt, when Retry
}

// Decide is pure: given the failed attempts so far (including this one),
// whether the error was permanent and a jitter source in [0,1), it says
// whether to retry and after how long. The delay is "equal jitter": half
// of the exponential step fixed, half random, so retries of a burst of
// failures spread out instead of returning together, yet never come back
// sooner than half the nominal backoff.
func (p RetryPolicy) Decide(failedAttempts int, permanent bool, jitter float64) Decision {
	if permanent || failedAttempts >= p.MaxAttempts {
		return Decision{}
	}
	ceiling := p.Max
	if ceiling <= 0 {
		ceiling = 24 * time.Hour
	}
	return Decision{Retry: true, After: loop.Backoff(failedAttempts, p.Base, ceiling, jitter)}
}

// randomJitter is the production jitter source.
func randomJitter() float64 { return rand.Float64() }
