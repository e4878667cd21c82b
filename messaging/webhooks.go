package messaging

import (
	"context"
	"crypto/sha256"
	"crypto/subtle"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"net/url"
	"strings"

	"github.com/jmoiron/sqlx"
	"github.com/labstack/echo/v4"

	"github.com/campaignd/dispatch/messaging/provider"
	"github.com/campaignd/dispatch/messaging/provider/africastalking"
	"github.com/campaignd/dispatch/messaging/provider/twilio"
	"github.com/campaignd/dispatch/platform/channel"
	"github.com/campaignd/dispatch/platform/errs"
	"github.com/campaignd/dispatch/platform/postgres"
)

// Webhook routes. They authenticate themselves (a provider has no API key),
// so the app lists them among its public routes.
const (
	RouteTwilioStatus    = "/webhooks/twilio/status"
	RouteTwilioInbound   = "/webhooks/twilio/inbound"
	RouteATDelivery      = "/webhooks/africastalking/delivery"
	RouteATInbound       = "/webhooks/africastalking/inbound"
	webhookBodyLimit     = 64 << 10 // a provider's form is a few hundred bytes
	twilioSignatureField = "X-Twilio-Signature"
)

// WebhookPaths lists the routes Register mounts.
func WebhookPaths() []string {
	return []string{RouteTwilioStatus, RouteTwilioInbound, RouteATDelivery, RouteATInbound}
}

// WebhookOptions configure the providers' webhooks. An empty secret turns
// its provider's webhooks off: every request to them is 403.
type WebhookOptions struct {
	// PublicBaseURL is the scheme, host, any port and any path prefix the
	// providers were given ("https://dispatch.example.com"), without a
	// trailing slash: Twilio signs the URL as it called it, which behind a
	// proxy is not the one this process sees. Empty means the request's
	// own scheme and Host.
	PublicBaseURL string
	// TwilioAuthToken verifies X-Twilio-Signature.
	TwilioAuthToken string
	// ATCallbackSecret is the ?key= Africa's Talking's callback URLs carry.
	ATCallbackSecret string
}

// InboundHandler records the opt-outs recipients ask for, by phone. The
// customer feature implements it. Both methods are idempotent and report
// whether a customer has the phone; an unknown phone is not an error.
type InboundHandler interface {
	OptOutPhone(ctx context.Context, phone string, ch channel.Channel) (bool, error)
	OptInPhone(ctx context.Context, phone string, ch channel.Channel) (bool, error)
}

// Webhooks serves the providers' callbacks: delivery receipts, handed to
// Receipts, and inbound messages, whose STOP/START keywords opt the sender
// out of the channel or back in.
type Webhooks struct {
	opts      WebhookOptions
	db        *sqlx.DB
	receipts  *Receipts
	customers InboundHandler
	log       *slog.Logger
}

// NewWebhooks returns the webhooks. db is where an opt-out's pending
// messages are cancelled (CancelPendingToPhone).
func NewWebhooks(opts WebhookOptions, db *sqlx.DB, receipts *Receipts, customers InboundHandler, log *slog.Logger) *Webhooks {
	opts.PublicBaseURL = strings.TrimRight(opts.PublicBaseURL, "/")
	return &Webhooks{opts: opts, db: db, receipts: receipts, customers: customers, log: log}
}

// Register mounts the webhook routes on e.
func (w *Webhooks) Register(e *echo.Echo) {
	e.POST(RouteTwilioStatus, w.twilioStatus)
	e.POST(RouteTwilioInbound, w.twilioInbound)
	e.POST(RouteATDelivery, w.atDelivery)
	e.POST(RouteATInbound, w.atInbound)
}

var (
	errBadTwilioSignature = errs.New(errs.KindForbidden, errs.CodeForbidden, "missing or invalid "+twilioSignatureField)
	errTwilioOff          = errs.New(errs.KindForbidden, errs.CodeForbidden, "twilio webhooks are not configured")
	errBadATKey           = errs.New(errs.KindForbidden, errs.CodeForbidden, "missing or invalid callback key")
	errATOff              = errs.New(errs.KindForbidden, errs.CodeForbidden, "africa's talking callbacks are not configured")
)

// twilioStatus takes a status callback: 204 once a final status is stored
// (an intermediate one changes nothing). A receipt whose id matches no
// message is stored and answered alike, so Twilio does not retry it.
func (w *Webhooks) twilioStatus(c echo.Context) error {
	form, err := w.twilioForm(c)
	if err != nil {
		return err
	}
	rc, err := twilio.ParseStatus(form)
	if err != nil {
		return invalidCallback(err)
	}
	if err := w.receipts.Add(c.Request().Context(), rc); err != nil {
		return err
	}
	return c.NoContent(http.StatusNoContent)
}

// emptyTwiML asks Twilio to send no reply.
const emptyTwiML = `<?xml version="1.0" encoding="UTF-8"?><Response/>`

// twilioInbound takes an inbound message and answers empty TwiML.
func (w *Webhooks) twilioInbound(c echo.Context) error {
	form, err := w.twilioForm(c)
	if err != nil {
		return err
	}
	in, err := twilio.ParseInbound(form)
	if err != nil {
		return invalidCallback(err)
	}
	if err := w.inbound(c.Request().Context(), in); err != nil {
		return err
	}
	return c.Blob(http.StatusOK, "text/xml; charset=utf-8", []byte(emptyTwiML))
}

// atDelivery takes a delivery report: 200 once a final status is stored.
func (w *Webhooks) atDelivery(c echo.Context) error {
	form, err := w.atForm(c)
	if err != nil {
		return err
	}
	rc, err := africastalking.ParseDelivery(form)
	if err != nil {
		return invalidCallback(err)
	}
	if err := w.receipts.Add(c.Request().Context(), rc); err != nil {
		return err
	}
	return c.NoContent(http.StatusOK)
}

// atInbound takes an incoming SMS.
func (w *Webhooks) atInbound(c echo.Context) error {
	form, err := w.atForm(c)
	if err != nil {
		return err
	}
	in, err := africastalking.ParseInbound(form)
	if err != nil {
		return invalidCallback(err)
	}
	if err := w.inbound(c.Request().Context(), in); err != nil {
		return err
	}
	return c.NoContent(http.StatusOK)
}

// twilioForm reads the form and checks that Twilio signed it for the URL
// it called (PublicBaseURL and the path and query this process sees).
func (w *Webhooks) twilioForm(c echo.Context) (url.Values, error) {
	if w.opts.TwilioAuthToken == "" {
		return nil, errTwilioOff
	}
	form, err := readForm(c)
	if err != nil {
		return nil, err
	}
	req := c.Request()
	base := w.opts.PublicBaseURL
	if base == "" {
		base = c.Scheme() + "://" + req.Host
	}
	if !twilio.ValidSignature(w.opts.TwilioAuthToken, base+req.URL.RequestURI(), form, req.Header.Get(twilioSignatureField)) {
		return nil, errBadTwilioSignature
	}
	return form, nil
}

// atForm checks the callback URL's key and reads the form. The key is
// compared by its SHA-256, in constant time, so neither its content nor its
// length shows in the timing.
func (w *Webhooks) atForm(c echo.Context) (url.Values, error) {
	if w.opts.ATCallbackSecret == "" {
		return nil, errATOff
	}
	got := sha256.Sum256([]byte(c.QueryParam("key")))
	want := sha256.Sum256([]byte(w.opts.ATCallbackSecret))
	if subtle.ConstantTimeCompare(got[:], want[:]) != 1 {
		return nil, errBadATKey
	}
	return readForm(c)
}

// readForm reads a form-encoded body of at most webhookBodyLimit bytes.
// Only the body's fields are returned: the query string belongs to the URL
// (which Twilio signs as such).
func readForm(c echo.Context) (url.Values, error) {
	req := c.Request()
	req.Body = http.MaxBytesReader(c.Response(), req.Body, webhookBodyLimit)
	if err := req.ParseForm(); err != nil {
		var tooBig *http.MaxBytesError
		if errors.As(err, &tooBig) {
			return nil, errs.New(errs.KindTooLarge, errs.CodeTooLarge,
				fmt.Sprintf("webhook body is larger than %d bytes", webhookBodyLimit))
		}
		return nil, errs.New(errs.KindValidation, errs.CodeValidation, "webhook body is not a valid form")
	}
	return req.PostForm, nil
}

// invalidCallback is a callback without a field it needs: 400, so the
// provider's dashboard shows the fault.
func invalidCallback(err error) error {
	return &errs.Error{Kind: errs.KindValidation, Code: errs.CodeValidation, Message: err.Error(), Err: err}
}

// inbound applies an inbound message's keyword, if it is one. A phone no
// customer has is logged and answered 200 like any other.
func (w *Webhooks) inbound(ctx context.Context, in provider.Inbound) error {
	kw := provider.ParseKeyword(in.Body)
	var (
		known     bool
		cancelled int64
		err       error
	)
	switch kw {
	case provider.OptOut:
		known, cancelled, err = optOutPhone(ctx, w.db, w.customers, in.From, in.Channel)
	case provider.OptIn:
		known, err = w.customers.OptInPhone(ctx, in.From, in.Channel)
	default:
		w.log.DebugContext(ctx, "inbound message is no keyword", "provider", in.Provider,
			"channel", in.Channel, "phone", maskPhone(in.From))
		return nil
	}
	if err != nil {
		return fmt.Errorf("apply inbound %s from %s on %s: %w", kw, maskPhone(in.From), in.Channel, err)
	}
	w.log.InfoContext(ctx, "inbound keyword applied", "provider", in.Provider, "channel", in.Channel,
		"phone", maskPhone(in.From), "keyword", kw.String(), "customer_found", known, "pending_cancelled", cancelled)
	return nil
}

// optOutPhone opts phone out of ch through customers and, when a customer
// has the phone, cancels their pending messages on ch at once. Messages
// already being delivered are left to the claim, which checks opt-outs.
func optOutPhone(ctx context.Context, db *sqlx.DB, customers InboundHandler, phone string, ch channel.Channel) (known bool, cancelled int64, err error) {
	known, err = customers.OptOutPhone(ctx, phone, ch)
	if err != nil || !known {
		return known, 0, err
	}
	cancelled, err = CancelPendingToPhone(ctx, db, phone, ch)
	return known, cancelled, err
}

// OptOutHook returns a ReceiptOptions.OnOptOut that does what an inbound
// STOP does: opts the phone out of the channel through customers and
// cancels its pending messages on it. It logs the outcome, and failures:
// Receipts reports the opt-out again only if the provider repeats the
// receipt.
func OptOutHook(db *sqlx.DB, customers InboundHandler, log *slog.Logger) func(context.Context, string, channel.Channel) {
	return func(ctx context.Context, phone string, ch channel.Channel) {
		known, cancelled, err := optOutPhone(ctx, db, customers, phone, ch)
		if err != nil {
			log.WarnContext(ctx, "opt-out from a delivery receipt failed", "channel", ch, "phone", maskPhone(phone), "err", err)
			return
		}
		log.InfoContext(ctx, "delivery receipt opted a phone out", "channel", ch, "phone", maskPhone(phone),
			"customer_found", known, "pending_cancelled", cancelled)
	}
}

// cancelPendingToPhoneSQL reads the customer by phone (its unique index)
// and their messages by customer (outbound_messages_customer_idx). The
// reason is the claim's, word for word. It locks the messages in id order
// first, as a campaign's cancel does (cancelPendingSQL), so it cannot
// deadlock with a claim that holds some of them.
const cancelPendingToPhoneSQL = `
UPDATE outbound_messages m
SET status = 'cancelled', last_error = 'not sent: customer opted out of ' || $2::text, updated_at = now()
WHERE m.id IN (
    SELECT p.id FROM outbound_messages p
    JOIN campaigns k ON k.id = p.campaign_id
    JOIN customers u ON u.id = p.customer_id
    WHERE u.phone = $1 AND k.channel = $2 AND p.status = 'pending'
    ORDER BY p.id
    FOR UPDATE OF p)
  AND m.status = 'pending'`

// CancelPendingToPhone cancels the pending messages to the customer with
// phone (E.164, as stored) on campaigns of channel ch, and returns how many
// it cancelled. Messages being delivered (sending) are left alone: the
// claim cancels them if it has not passed its opt-out check yet.
func CancelPendingToPhone(ctx context.Context, db *sqlx.DB, phone string, ch channel.Channel) (int64, error) {
	res, err := db.ExecContext(ctx, cancelPendingToPhoneSQL, phone, ch)
	if err != nil {
		return 0, postgres.Classify(err, "cancel pending messages of an opted-out phone")
	}
	n, err := res.RowsAffected()
	return n, postgres.Classify(err, "cancel pending messages of an opted-out phone")
}

// maskPhone hides all but the last three digits of phone, for logs.
func maskPhone(phone string) string {
	if len(phone) <= 3 {
		return strings.Repeat("*", len(phone))
	}
	return strings.Repeat("*", len(phone)-3) + phone[len(phone)-3:]
}
