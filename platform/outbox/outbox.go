// Package outbox delivers the service's events to the customer's systems as
// webhooks signed the Standard Webhooks way (platform/webhooksig).
//
// The write side is a transactional outbox: a feature that changes state
// writes the event that reports the change (Emit, EmitMany, or EmitSQL
// spliced into its own statement) with the same transaction, into
// webhook_events, so an event exists if and only if its change committed.
// Message-level events are written as batch rows (one row per statement and
// type, however many messages it records), so the delivery path pays one
// small insert per batch. Nothing else happens on that path: no HTTP, no
// fan-out, no lookups beyond the in-process Subscriptions cache that lets a
// hot path skip writing events nobody receives.
//
// The read side is the Dispatcher, a background loop on any number of
// replicas: it splits the outbox into one task per event and subscribed
// enabled endpoint (webhook_tasks) at the pace the endpoints take them,
// delivers each with a per-attempt timeout and bounded concurrency, retries
// on a non-2xx answer or a timeout along a schedule that lasts more than 24
// hours, records every attempt (webhook_deliveries), and disables an
// endpoint that has failed for days. Delivery is at least once: a task is
// done only after a 2xx, so a crash between the 2xx and its record means one
// more delivery, with the same webhook-id, which receivers use to
// deduplicate. Order is not guaranteed.
//
// The Handler serves the endpoints API (POST, GET and DELETE
// /webhook-endpoints, GET /webhook-endpoints/{id}/deliveries), all of it
// admin scope.
package outbox

import (
	"encoding/json"
	"time"

	"github.com/campaignd/dispatch/platform/errs"
)

// EventType names what happened. The set is closed: Valid is mirrored by
// CHECK constraints on webhook_events.type and webhook_endpoints.events.
type EventType string

// The event types of API.md ("Outbound webhooks").
const (
	CampaignSending    EventType = "campaign.sending"
	CampaignPaused     EventType = "campaign.paused"
	CampaignFinished   EventType = "campaign.finished"
	MessageSent        EventType = "message.sent"
	MessageDelivered   EventType = "message.delivered"
	MessageUndelivered EventType = "message.undelivered"
	MessageFailed      EventType = "message.failed"
	CustomerOptedOut   EventType = "customer.opted_out"
)

// eventTypes lists every type once; a type's index is its bit in
// Subscriptions.
var eventTypes = [...]EventType{
	CampaignSending, CampaignPaused, CampaignFinished,
	MessageSent, MessageDelivered, MessageUndelivered, MessageFailed,
	CustomerOptedOut,
}

// EventTypes returns every event type, in a fixed order.
func EventTypes() []EventType { return append([]EventType(nil), eventTypes[:]...) }

// Valid reports whether t is one of the event types.
func (t EventType) Valid() bool { return t.bit() != 0 }

// bit is t's bit in a set of types, 0 for an unknown type.
func (t EventType) bit() uint32 {
	for i, et := range eventTypes {
		if et == t {
			return 1 << i
		}
	}
	return 0
}

// Event is the body of every webhook: {"id","type","created_at","data"}.
// ID ("evt_" and 32 hex digits: its outbox row's 26 random ones and its
// index in the row's batch) is also the webhook-id header, the same on
// every attempt. Data is the JSON its writer gave, as given.
type Event struct {
	ID        string          `json:"id"`
	Type      EventType       `json:"type"`
	CreatedAt time.Time       `json:"created_at"`
	Data      json.RawMessage `json:"data"`
}

// Endpoint is a customer's receiver, without its secret.
type Endpoint struct {
	ID             int64      `db:"id" json:"id"`
	URL            string     `db:"url" json:"url"`
	Events         []string   `db:"-" json:"events"`
	Description    string     `db:"description" json:"description"`
	Enabled        bool       `db:"enabled" json:"enabled"`
	DisabledAt     *time.Time `db:"disabled_at" json:"disabled_at"`
	DisabledReason *string    `db:"disabled_reason" json:"disabled_reason"`
	FailingSince   *time.Time `db:"failing_since" json:"failing_since"`
	CreatedAt      time.Time  `db:"created_at" json:"created_at"`
	UpdatedAt      time.Time  `db:"updated_at" json:"updated_at"`
}

// Delivery is one attempt to deliver one event to one endpoint.
// StatusCode is nil when no response came (timeout, refused connection);
// NextRetryAt is nil on success and when no attempt follows.
type Delivery struct {
	ID          int64      `db:"id" json:"id"`
	EventID     string     `db:"event_id" json:"event_id"`
	EventType   EventType  `db:"event_type" json:"event_type"`
	Attempt     int        `db:"attempt" json:"attempt"`
	StatusCode  *int       `db:"status_code" json:"status_code"`
	DurationMS  int64      `db:"duration_ms" json:"duration_ms"`
	Error       *string    `db:"error" json:"error"`
	NextRetryAt *time.Time `db:"next_retry_at" json:"next_retry_at"`
	Delivered   bool       `db:"delivered" json:"delivered"`
	CreatedAt   time.Time  `db:"created_at" json:"created_at"`
}

// ErrEndpointNotFound: no webhook endpoint has the id.
var ErrEndpointNotFound = errs.New(errs.KindNotFound, "WEBHOOK_ENDPOINT_NOT_FOUND", "webhook endpoint not found")
