package messaging

import (
	"github.com/campaignd/dispatch/messaging/template"
	"github.com/campaignd/dispatch/platform/errs"
)

// Status is a message's delivery state.
//
//	pending → sending → sent → delivered | undelivered   (the provider's receipt)
//	sending → pending   (a retry is scheduled, delivery was abandoned at shutdown,
//	                     or the provider throttled or is braked: no attempt used)
//	sending → failed    (last attempt failed, or the error was permanent)
//	pending → cancelled (the campaign was cancelled, or the customer opted out)
//	sending → cancelled (the same, found when reclaiming past the lease)
type Status string

const (
	StatusPending     Status = "pending"
	StatusSending     Status = "sending"
	StatusSent        Status = "sent"
	StatusDelivered   Status = "delivered"
	StatusUndelivered Status = "undelivered"
	StatusFailed      Status = "failed"
	StatusCancelled   Status = "cancelled"
)

// Statuses lists every status, in the order the API documents them (the
// campaign's stats keys follow it).
var Statuses = []Status{StatusPending, StatusSending, StatusSent, StatusDelivered, StatusUndelivered, StatusFailed, StatusCancelled}

// Valid reports whether s is a known status.
func (s Status) Valid() bool {
	switch s {
	case StatusPending, StatusSending, StatusSent, StatusDelivered, StatusUndelivered, StatusFailed, StatusCancelled:
		return true
	}
	return false
}

// Final reports whether no further delivery will be attempted (a sent
// message may still get its receipt).
func (s Status) Final() bool { return s != StatusPending && s != StatusSending }

// Job is a claimed message with everything needed to deliver it, loaded in
// the claim's single query.
type Job struct {
	ID              int64  `db:"id"`
	CampaignID      int64  `db:"campaign_id"`
	CustomerID      int64  `db:"customer_id"`
	RetryCount      int    `db:"retry_count"` // failed attempts before this one
	Channel         string `db:"channel"`
	Template        string `db:"base_template"`
	template.Fields        // the customer's values, Phone among them
}

// ErrUnknownCustomers is returned by CreateMessages when customer ids do
// not exist; details.missing_ids lists the first 100.
var ErrUnknownCustomers = errs.New(errs.KindUnprocessable, "UNKNOWN_CUSTOMERS", "some customers do not exist")
