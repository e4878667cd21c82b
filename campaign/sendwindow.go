package campaign

import (
	"errors"
	"time"

	"github.com/campaignd/dispatch/platform/errs"
)

// nextWindowOpens is when c's send window opens next, in UTC, if it is
// closed at now and c may still send; nil otherwise.
func nextWindowOpens(c Campaign, now time.Time) *time.Time {
	if c.SendWindow == nil || c.Status.ended() {
		return nil
	}
	next := c.SendWindow.NextOpen(now)
	if next.Equal(now) {
		return nil
	}
	next = next.UTC()
	return &next
}

// windowJSONError places httpx.DecodeJSON's error about a PATCH's
// send_window at it ("send_window.start").
func windowJSONError(err error) error {
	const want = `field "send_window" must be an object {"start","end","timezone"} or null`
	e := errs.InvalidJSON(want).WithDetail("field", "send_window")
	var de *errs.Error
	if errors.As(err, &de) {
		e = errs.InvalidJSON("%s: %s", want, de.Message).WithDetail("field", "send_window")
		if f, ok := de.Details["field"].(string); ok && f != "" {
			e = e.WithDetail("field", "send_window."+f)
		}
	}
	return e
}
