package messaging

import "time"

// Observer is told what the worker pool does, for metrics (platform/metrics
// implements it). The pool calls it from many goroutines at once, so it must
// be safe for concurrent use, and it is on the delivery path, so it must be
// cheap and must not block.
type Observer interface {
	// Outcomes reports n messages of channel, for provider, that ended an
	// attempt with outcome (one of the Outcome* constants). It is called
	// once per batch and outcome, only after the outcomes are stored in
	// PostgreSQL, so its counts agree with the campaigns' stats.
	Outcomes(channel, provider, outcome string, n int)
	// DeliveryTook reports how long one call to the provider took.
	DeliveryTook(provider string, d time.Duration)
	// Busy moves the number of deliveries in flight by delta.
	Busy(delta int)
}

// The outcomes an Observer counts. A provider's delivery receipts will add
// "delivered" and "undelivered"; those names are reserved.
const (
	OutcomeSent      = "sent"      // the provider accepted the message
	OutcomeFailed    = "failed"    // the last attempt failed, or the error was permanent
	OutcomeRetried   = "retried"   // the attempt failed and another is scheduled
	OutcomeCancelled = "cancelled" // the claim found the campaign cancelled or the customer opted out
)

type nopObserver struct{}

func (nopObserver) Outcomes(string, string, string, int) {}
func (nopObserver) DeliveryTook(string, time.Duration)   {}
func (nopObserver) Busy(int)                             {}

// kind is what became of one claimed job; the first four are outcomes.
type kind int

const (
	kindSent kind = iota
	kindFailed
	kindRetried
	kindCancelled
	kindRequeued // not attempted (shutdown, a paused campaign): not an outcome
)

var outcomeOf = [...]string{
	kindSent:      OutcomeSent,
	kindFailed:    OutcomeFailed,
	kindRetried:   OutcomeRetried,
	kindCancelled: OutcomeCancelled,
}

// tally counts outcomes per channel within one batch, so the observer is
// called once per channel and outcome rather than once per message. A batch
// rarely holds more than one or two channels: a linear search is enough.
type tally []channelTally

type channelTally struct {
	channel string
	n       [len(outcomeOf)]int
}

// add counts one outcome of channel and returns the tally, as append does.
func (t tally) add(channel string, k kind) tally {
	if k == kindRequeued {
		return t
	}
	for i := range t {
		if t[i].channel == channel {
			t[i].n[k]++
			return t
		}
	}
	c := channelTally{channel: channel}
	c.n[k] = 1
	return append(t, c)
}

// report hands the counts to obs.
func (t tally) report(obs Observer, provider string) {
	for _, c := range t {
		for k, n := range c.n {
			if n > 0 {
				obs.Outcomes(c.channel, provider, outcomeOf[k], n)
			}
		}
	}
}
