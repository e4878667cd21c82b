package messaging

import (
	"context"
	"errors"
	"fmt"
	"sync"

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

	mu    sync.Mutex
	rings map[int64]*errorRing
}

type errorRing struct {
	errs     []string
	next     int
	full     bool
	failures int
}

func newErrorRates(opts ErrorBrakeOptions) *errorRates {
	return &errorRates{opts: opts, rings: map[int64]*errorRing{}}
}

// observe adds an attempt of campaign (errKey "" for success) and returns
// the reason to pause it when the brake trips. A tripped ring starts over,
// so a resumed campaign gets a fresh window.
func (e *errorRates) observe(campaign int64, errKey string) string {
	if e == nil || e.opts.Window <= 0 || e.opts.Pause == nil {
		return ""
	}
	e.mu.Lock()
	defer e.mu.Unlock()
	r := e.rings[campaign]
	if r == nil {
		r = &errorRing{errs: make([]string, e.opts.Window)}
		e.rings[campaign] = r
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
	delete(e.rings, campaign)
	return reason
}

// forget drops campaign's window (it finished).
func (e *errorRates) forget(campaign int64) {
	if e == nil {
		return
	}
	e.mu.Lock()
	delete(e.rings, campaign)
	e.mu.Unlock()
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
