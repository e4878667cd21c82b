// Package campaign owns campaigns: a named message template sent over one
// channel, optionally at a scheduled time. It validates and stores campaigns,
// lists them with page-number or cursor pagination, reports per-campaign
// delivery progress and renders personalised previews.
//
// The package does not import the other features. It declares what it needs
// from them, [Templater] and [CustomerFinder], and the app wires the
// messaging and customer features in.
package campaign

import (
	"context"
	"slices"
	"strings"
	"time"

	"github.com/campaignd/dispatch/messaging/template"
	"github.com/campaignd/dispatch/platform/channel"
	"github.com/campaignd/dispatch/platform/errs"
	"github.com/campaignd/dispatch/platform/sms"
	"github.com/campaignd/dispatch/platform/text"
	"github.com/campaignd/dispatch/platform/window"
)

// Limits on user input. The database mirrors them with CHECK constraints; the
// service checks first so that a client gets a 400 naming the field rather
// than a constraint violation.
const (
	MaxNameLen     = 200  // characters (Unicode code points), after trimming
	MaxTemplateLen = 4096 // characters (Unicode code points)
)

// Status is where a campaign is in its life cycle:
//
//	draft → sending, scheduled → sending          (send, or the scheduler at scheduled_at)
//	scheduled → failed                           (came due later than SCHEDULE_MAX_LATENESS)
//	sending ⇄ paused                             (pause, resume)
//	sending → sent | failed                      (every message final; sent if any was sent)
//	sent | failed → sending                      (retry-failed)
//	draft | scheduled | sending | paused → cancelled
//
// Every transition is a guarded UPDATE, so concurrent requests and replicas
// cannot both make the same one.
type Status string

const (
	StatusDraft     Status = "draft"
	StatusScheduled Status = "scheduled"
	StatusSending   Status = "sending"
	StatusPaused    Status = "paused"
	StatusSent      Status = "sent"
	StatusFailed    Status = "failed"
	StatusCancelled Status = "cancelled"
)

// statuses lists every Status in life-cycle order: Valid and the messages
// that name the statuses read it, so a new status is added here only.
var statuses = []Status{StatusDraft, StatusScheduled, StatusSending, StatusPaused, StatusSent, StatusFailed, StatusCancelled}

// Valid reports whether s is a known status (mirrors campaigns_status_check).
func (s Status) Valid() bool {
	return slices.Contains(statuses, s)
}

// Campaign is a stored campaign. Times are UTC; ScheduledAt is nil (JSON
// null) for a campaign that is sent by hand.
type Campaign struct {
	ID           int64           `json:"id" db:"id"`
	Name         string          `json:"name" db:"name"`
	Channel      channel.Channel `json:"channel" db:"channel"`
	Status       Status          `json:"status" db:"status"`
	BaseTemplate string          `json:"base_template" db:"base_template"`
	ScheduledAt  *time.Time      `json:"scheduled_at" db:"scheduled_at"`
	// Audience is the stored audience a scheduled campaign is dispatched to
	// (and a send without one uses); null when none was given.
	Audience *Audience `json:"audience" db:"audience"`
	// StatusReason says why a campaign ended as it did when that is not
	// obvious, e.g. it came due too late to be sent; null otherwise.
	StatusReason *string `json:"status_reason" db:"status_reason"`
	// SendWindow limits delivery to hours of the day in a time zone; null
	// means any time. Messages that come due outside it wait, without using
	// an attempt, until it opens.
	SendWindow *window.Window `json:"send_window" db:"send_window"`
	// StartedAt is when the campaign first went sending; FinishedAt when it
	// became sent, failed or cancelled (null again while a retry-failed
	// sends once more).
	StartedAt  *time.Time `json:"started_at" db:"started_at"`
	FinishedAt *time.Time `json:"finished_at" db:"finished_at"`
	CreatedAt  time.Time  `json:"created_at" db:"created_at"`
	UpdatedAt  time.Time  `json:"updated_at" db:"updated_at"`
}

// Summary is a campaign as a list shows it: without the template, which may be
// several kilobytes and is not needed to pick a campaign from a list.
type Summary struct {
	ID          int64           `json:"id" db:"id"`
	Name        string          `json:"name" db:"name"`
	Channel     channel.Channel `json:"channel" db:"channel"`
	Status      Status          `json:"status" db:"status"`
	ScheduledAt *time.Time      `json:"scheduled_at" db:"scheduled_at"`
	CreatedAt   time.Time       `json:"created_at" db:"created_at"`
	// Stats are the campaign's message counts, as in its detail; the
	// list's one statement reads them for the whole page (Repo.List).
	Stats Stats `json:"stats" db:"-"`
}

// Stats counts a campaign's outbound messages by status. Every field is always
// present in JSON and Pending+Sending+Sent+Failed+Cancelled == Total.
// Cancelled includes the recipients of an audience send cancelled before
// their messages were created (see Repo.Stats).
type Stats struct {
	Total       int64 `json:"total"`
	Pending     int64 `json:"pending"`
	Sending     int64 `json:"sending"`
	Sent        int64 `json:"sent"`
	Delivered   int64 `json:"delivered"`
	Undelivered int64 `json:"undelivered"`
	Failed      int64 `json:"failed"`
	Cancelled   int64 `json:"cancelled"`
}

// Detail is a campaign with its delivery progress, the body of
// GET /campaigns/{id}.
type Detail struct {
	Campaign
	Stats Stats `json:"stats"`
	// NextWindowOpensAt is when the send window opens next, while it is
	// closed and the campaign may still send (draft, scheduled, sending,
	// paused); null when it is open, when there is no window, and once the
	// campaign has ended.
	NextWindowOpensAt *time.Time `json:"next_window_opens_at"`
	Progress          Progress   `json:"progress"`
}

// Progress answers "when will it finish?". RatePerSecond is how many of the
// campaign's messages became final per second over the last minute (see
// Repo.Rate); ETA is now + (pending + sending) / rate while the campaign is
// sending and the rate is positive, null otherwise (paused, ended, nothing
// finished lately, or waiting for its send window).
type Progress struct {
	RatePerSecond float64    `json:"rate_per_second"`
	ETA           *time.Time `json:"eta"`
}

// Filter narrows a list. A zero field does not filter.
type Filter struct {
	Channel channel.Channel
	Status  Status
}

// Domain errors. Compare with errors.Is: every "campaign N not found" made
// from ErrNotFound with Withf matches it.
var (
	// ErrNotFound is returned for an id that names no campaign (404).
	ErrNotFound = errs.New(errs.KindNotFound, "CAMPAIGN_NOT_FOUND", "campaign not found")
	// ErrNotSendable is returned when a send is asked of a campaign that is
	// not draft or scheduled (409); nothing changes.
	ErrNotSendable = errs.New(errs.KindConflict, "CAMPAIGN_NOT_SENDABLE", "campaign is not draft or scheduled")
	// ErrNotEditable is returned when PATCH is asked of a campaign that is
	// not draft or scheduled (409); nothing changes.
	ErrNotEditable = errs.New(errs.KindConflict, "CAMPAIGN_NOT_EDITABLE", "campaign is not draft or scheduled")
	// ErrInvalidTransition is returned when pause, resume, cancel or
	// retry-failed is asked of a campaign whose status does not allow it
	// (409); details.status holds the current status.
	ErrInvalidTransition = errs.New(errs.KindConflict, "INVALID_STATUS_TRANSITION", "the campaign's status does not allow this")
	// ErrEmptyAudience is returned when a send's audience matches no
	// customer who may be messaged on the channel (422); nothing changes.
	ErrEmptyAudience = errs.New(errs.KindUnprocessable, "EMPTY_AUDIENCE", "the audience matches no customer")
)

// Templater checks and renders message templates (messaging.Templates
// implements it).
type Templater interface {
	// Check returns nil for a valid template. Any other result means the
	// template is invalid; its text, meant for the person editing the
	// template, already lists unknown placeholders.
	Check(tmpl string) error
	// Render fills tmpl's placeholders from fields exactly as delivery on
	// channel would; an empty field renders as "". It
	// fails exactly when Check does. warnings say why delivery would refuse
	// the message (it is longer than the channel takes), for the person
	// editing the template.
	Render(channel, tmpl string, fields template.Fields) (msg string, warnings []string, err error)
}

// Contact is the customer data a preview shows and renders from.
type Contact struct {
	ID int64 `json:"id"`
	template.Fields
}

// CustomerFinder looks up a customer. For an unknown id it returns an error
// matching the customer feature's CUSTOMER_NOT_FOUND errs.Error, which is
// passed to the client as is (404).
type CustomerFinder interface {
	Contact(ctx context.Context, id int64) (Contact, error)
}

// CreateInput is the body of POST /campaigns. ScheduledAt is kept as text so
// that a malformed time is reported as a validation error naming the field,
// not as undecodable JSON.
type CreateInput struct {
	Name         string  `json:"name"`
	Channel      string  `json:"channel"`
	BaseTemplate string  `json:"base_template"`
	ScheduledAt  *string `json:"scheduled_at"`
	// The audience to send to (at scheduled_at, or by a later send without
	// one): customer_ids, or audience, not both.
	CustomerIDs []int64   `json:"customer_ids"`
	Audience    *Audience `json:"audience"`
	// SendWindow is optional; null or absent means any time.
	SendWindow *window.Window `json:"send_window"`
}

// PreviewInput is the body of POST /campaigns/{id}/personalized-preview.
// A nil OverrideTemplate (absent or JSON null) previews the campaign's own
// template; a present one must be a valid template by the same rules as
// base_template, so an empty string is a 400 rather than silently falling
// back to the base template.
type PreviewInput struct {
	CustomerID       *int64  `json:"customer_id"`
	OverrideTemplate *string `json:"override_template"`
}

// Preview is a template rendered for one customer, exactly as the worker
// would render it. Warnings (never null) say why delivery would fail the
// message, such as "rendered message is 2,100 characters; sms allows
// 1,600".
type Preview struct {
	RenderedMessage string   `json:"rendered_message"`
	UsedTemplate    string   `json:"used_template"`
	Customer        Contact  `json:"customer"`
	Warnings        []string `json:"warnings"`
	// SMS is the rendered message's length as SMS (encoding, characters,
	// segments, the characters that forced UCS-2); absent for WhatsApp.
	SMS *sms.Info `json:"sms,omitempty"`
}

// validateCreate checks in and returns the campaign to store, with the status
// its schedule implies. The first invalid field, in body order, is reported
// as a VALIDATION_ERROR naming it.
func validateCreate(in CreateInput, now time.Time, check func(string) error) (Campaign, error) {
	name, err := validateName(in.Name)
	if err != nil {
		return Campaign{}, err
	}
	ch, err := channel.Parse("channel", in.Channel)
	if err != nil {
		return Campaign{}, err
	}
	if err := validateTemplate("base_template", in.BaseTemplate, check); err != nil {
		return Campaign{}, err
	}
	at, status, err := parseSchedule(in.ScheduledAt, now)
	if err != nil {
		return Campaign{}, err
	}
	audience, err := optionalAudience(in.CustomerIDs, in.Audience)
	if err != nil {
		return Campaign{}, err
	}
	if in.SendWindow != nil {
		if err := in.SendWindow.Validate("send_window"); err != nil {
			return Campaign{}, err
		}
	}
	return Campaign{Name: name, Channel: ch, Status: status, BaseTemplate: in.BaseTemplate, ScheduledAt: at,
		Audience: audience, SendWindow: in.SendWindow}, nil
}

// optionalAudience validates the audience a campaign may be created or
// edited with: customer_ids or audience, or neither.
func optionalAudience(ids []int64, a *Audience) (*Audience, error) {
	switch {
	case ids != nil && a != nil:
		return nil, errs.Validation("audience", "give customer_ids or audience, not both")
	case ids != nil:
		v, _, err := Audience{CustomerIDs: ids}.validate("customer_ids")
		return &v, err
	case a != nil:
		v, _, err := a.validate("audience")
		return &v, err
	}
	return nil, nil
}

// validateName returns name without surrounding whitespace, which is what is
// stored: it must then be one line of 1 to MaxNameLen characters by the
// service's text rule (text.Line: no control characters or bidirectional
// overrides, which would let a name display as another). Characters are
// counted as Unicode code points, as PostgreSQL's char_length does, so an
// emoji is one.
func validateName(name string) (string, error) {
	name = strings.TrimSpace(name)
	if err := text.Line("name", name, 1, MaxNameLen); err != nil {
		return "", err
	}
	return name, nil
}

// validateTemplate checks a template held in field (base_template or
// override_template): not blank, at most MaxTemplateLen characters, and
// accepted by check. The template is stored as given, whitespace included,
// because the message is sent as written.
func validateTemplate(field, tmpl string, check func(string) error) error {
	if err := text.Multiline(field, tmpl, 1, MaxTemplateLen); err != nil {
		return err
	}
	if strings.TrimSpace(tmpl) == "" {
		return errs.Validation(field, "%s is required and must not be blank", field)
	}
	if err := check(tmpl); err != nil {
		return errs.Validation(field, "%s is invalid: %s", field, err.Error()).WithDetail("problem", err.Error())
	}
	return nil
}

// parseStatus parses a status given in field.
func parseStatus(field, s string) (Status, error) {
	st := Status(s)
	if !st.Valid() {
		return "", errs.Validation(field, "%s must be one of %s, got %s", field, joinStatuses(statuses), errs.Quote(s))
	}
	return st, nil
}

// parseSchedule turns the optional scheduled_at into the time to store (UTC)
// and the initial status: absent or null → draft with no time; strictly after
// now → scheduled. A time at or before now is rejected, since the scheduler
// would send it at once, which is what a manual send is for.
func parseSchedule(raw *string, now time.Time) (*time.Time, Status, error) {
	if raw == nil {
		return nil, StatusDraft, nil
	}
	t, err := time.Parse(time.RFC3339, *raw)
	if err != nil {
		return nil, "", errs.Validation("scheduled_at",
			"scheduled_at must be an RFC 3339 time such as 2030-01-02T15:04:05Z, got %s", errs.Quote(*raw))
	}
	if !t.After(now) {
		return nil, "", errs.Validation("scheduled_at", "scheduled_at must be in the future, got %s (now %s)",
			t.UTC().Format(time.RFC3339), now.UTC().Format(time.RFC3339))
	}
	t = t.UTC()
	return &t, StatusScheduled, nil
}

// parseFilter reads the list filters channel and status; an empty value does
// not filter, an unknown one is a 400 naming the parameter.
func parseFilter(ch, status string) (Filter, error) {
	var f Filter
	var err error
	if ch != "" {
		if f.Channel, err = channel.Parse("channel", ch); err != nil {
			return Filter{}, err
		}
	}
	if status != "" {
		if f.Status, err = parseStatus("status", status); err != nil {
			return Filter{}, err
		}
	}
	return f, nil
}

// validatePreview checks a preview request and returns the customer id and
// the override template ("" with ok false when the campaign's own is used).
func validatePreview(in PreviewInput, check func(string) error) (customerID int64, override string, ok bool, err error) {
	if in.CustomerID == nil {
		return 0, "", false, errs.Validation("customer_id", "customer_id is required")
	}
	if *in.CustomerID <= 0 {
		return 0, "", false, errs.Validation("customer_id", "customer_id must be a positive integer, got %d", *in.CustomerID)
	}
	if in.OverrideTemplate == nil {
		return *in.CustomerID, "", false, nil
	}
	if err := validateTemplate("override_template", *in.OverrideTemplate, check); err != nil {
		return 0, "", false, err
	}
	return *in.CustomerID, *in.OverrideTemplate, true, nil
}
