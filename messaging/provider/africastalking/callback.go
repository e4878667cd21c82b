package africastalking

import (
	"errors"
	"fmt"
	"net/url"
	"strings"

	"github.com/campaignd/dispatch/messaging/provider"
	"github.com/campaignd/dispatch/platform/channel"
)

// ErrInvalidCallback is returned (wrapped, naming the field) for a
// callback that lacks a required field; the handler should answer 400 so
// the sender can see the fault, and record nothing.
var ErrInvalidCallback = errors.New("africastalking: invalid callback")

// optOutReasons are the failureReasons that mean the recipient refused
// this sender (PROVIDERS.md §2), so the phone is opted out of SMS.
var optOutReasons = map[string]bool{
	"userinblacklist":            true,
	"donotdisturbrejection":      true,
	"usernotsubscribedtoproduct": true,
}

// ParseDelivery reads a delivery-report callback (form fields id, status,
// phoneNumber, networkCode, failureReason, retryCount). Success is
// Delivered; Rejected, Failed, AbsentSubscriber and Expired are
// Undelivered with Error set to failureReason; Sent, Submitted, Buffered
// and any word we do not know are intermediate (Status ""), so a new
// status can never fail a message by mistake. Africa's Talking may repeat
// a report, so the caller must apply it idempotently on (id, status).
// It returns an error wrapping ErrInvalidCallback when id or status is
// missing.
func ParseDelivery(form url.Values) (provider.Receipt, error) {
	id := strings.TrimSpace(form.Get("id"))
	status := strings.TrimSpace(form.Get("status"))
	if id == "" {
		return provider.Receipt{}, fmt.Errorf("%w: delivery report without id", ErrInvalidCallback)
	}
	if status == "" {
		return provider.Receipt{}, fmt.Errorf("%w: delivery report without status", ErrInvalidCallback)
	}
	reason := strings.TrimSpace(form.Get("failureReason"))
	r := provider.Receipt{
		Provider:       Name,
		MessageID:      id,
		ProviderStatus: status,
		Error:          reason,
	}
	switch strings.ToLower(status) {
	case "success":
		r.Status = provider.Delivered
	case "rejected", "failed", "absentsubscriber", "expired":
		r.Status = provider.Undelivered
		// Only a final failure opts the phone out: a reason on a report
		// that did not fail the message is not the recipient's refusal.
		r.OptOut = optOutReasons[strings.ToLower(reason)]
	}
	return r, nil
}

// ParseInbound reads an incoming-SMS callback (form fields from, to, text,
// date, id). A sender given as bare digits gets its '+' so it matches the
// E.164 numbers we store. It returns an error wrapping ErrInvalidCallback
// when from is missing.
func ParseInbound(form url.Values) (provider.Inbound, error) {
	from := strings.TrimSpace(form.Get("from"))
	if from == "" {
		return provider.Inbound{}, fmt.Errorf("%w: incoming message without from", ErrInvalidCallback)
	}
	if isDigits(from) {
		from = "+" + from
	}
	return provider.Inbound{
		Provider: Name,
		Channel:  channel.SMS,
		From:     from,
		Body:     form.Get("text"),
	}, nil
}
