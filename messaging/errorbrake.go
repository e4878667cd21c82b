package messaging

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"time"

	"github.com/campaignd/dispatch/messaging/provider"
)

// ErrorBrakeOptions configure the error-rate brake: a campaign whose last
// Window attempts (on this replica) failed more than Threshold of the time
// is paused, so a broken template or a bad number list does not burn
// through a whole audience. Resume clears it.
type ErrorBrakeOptions struct {
	Window    int     // attempts considered (ERROR_BRAKE_WINDOW); 0 disables the brake
	Threshold float64 // share of failures that trips it (ERROR_BRAKE_THRESHOLD), e.g. 0.5
	// Pause pauses the campaign with reason as its status_reason (the
	// campaign feature, wired by the app).
	Pause func(ctx context.Context, campaignID int64, reason string) error
}

// errorRates keeps, per campaign, a ring of its recent attempts' errors
// ("" for a success). Memory is bounded by Window per campaign being sent.
type errorRates struct {
	opts ErrorBrakeOptions

	mu       sync.Mutex
	rings    map[int64]*errorRing
	observed int // calls since the last prune
}

// ringIdle is how long a campaign's window is kept without an attempt;
// then it is dropped (the campaign finished or is paused), so memory stays
// bounded by the campaigns being sent.
const ringIdle = 10 * time.Minute

type errorRing struct {
	last     time.Time // the latest attempt added
	gen      time.Time // the campaign's generation the window belongs to
	tripped  bool      // the brake tripped in this generation: ignore the rest of it
	errs     []string
	next     int
	full     bool
	failures int
}

func newErrorRates(opts ErrorBrakeOptions) *errorRates {
	return &errorRates{opts: opts, rings: map[int64]*errorRing{}}
}

// observe adds an attempt of campaign (errKey "" for success) made in
// generation gen (the campaign's updated_at as the delivery read it), and
// returns the reason to pause it when the brake trips. After a trip, the
// attempts still in flight in that generation are ignored; a new
// generation (the campaign was paused and resumed) starts a fresh window.
func (e *errorRates) observe(campaign int64, gen time.Time, errKey string) string {
	if e == nil || e.opts.Window <= 0 || e.opts.Pause == nil {
		return ""
	}
	e.mu.Lock()
	defer e.mu.Unlock()
	now := time.Now()
	if e.observed++; e.observed >= 10_000 {
		e.observed = 0
		for id, r := range e.rings {
			if now.Sub(r.last) > ringIdle {
				delete(e.rings, id)
			}
		}
	}
	r := e.rings[campaign]
	if r == nil || !r.gen.Equal(gen) {
		r = &errorRing{gen: gen, errs: make([]string, e.opts.Window)}
		e.rings[campaign] = r
	}
	r.last = now
	if r.tripped {
		return ""
	}
	if r.full && r.errs[r.next] != "" {
		r.failures--
	}
	r.errs[r.next] = errKey
	if errKey != "" {
		r.failures++
	}
	r.next = (r.next + 1) % len(r.errs)
	if r.next == 0 {
		r.full = true
	}
	if !r.full || float64(r.failures) <= e.opts.Threshold*float64(len(r.errs)) {
		return ""
	}
	counts := map[string]int{}
	common := ""
	for _, k := range r.errs {
		if k == "" {
			continue
		}
		counts[k]++
		if counts[k] > counts[common] || (counts[k] == counts[common] && k < common) {
			common = k
		}
	}
	reason := fmt.Sprintf("paused automatically: %d%% of the last %d attempts failed (threshold %.0f%%); most common error: %s",
		r.failures*100/len(r.errs), len(r.errs), e.opts.Threshold*100, common)
	r.tripped = true
	return reason
}

// errorKey groups errors for the brake's "most common error": the
// provider's code and message, without per-message detail.
func errorKey(err error) string {
	var pe *provider.Error
	if errors.As(err, &pe) {
		k := pe.Provider + " " + pe.Code
		if pe.Message != "" {
			k += ": " + pe.Message
		}
		return truncate(k, 120)
	}
	return truncate(err.Error(), 120)
}
