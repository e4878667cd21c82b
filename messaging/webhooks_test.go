package messaging

import (
	"context"
	"encoding/json"
	"net/http"
	"net/http/httptest"
	"net/url"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"
	"github.com/jmoiron/sqlx"
	"github.com/labstack/echo/v4"

	"github.com/campaignd/dispatch/messaging/provider/twilio"
	"github.com/campaignd/dispatch/platform/channel"
	"github.com/campaignd/dispatch/platform/httpx"
	"github.com/campaignd/dispatch/platform/postgres/pgtest"
)

// sqlCustomers stands in for the customer feature: it records opt-outs by
// phone in customer_opt_outs, as customer.Service does.
type sqlCustomers struct{ db *sqlx.DB }

func (s sqlCustomers) OptOutPhone(ctx context.Context, phone string, ch channel.Channel) (bool, error) {
	var found bool
	err := s.db.GetContext(ctx, &found, `
WITH c AS (SELECT id FROM customers WHERE phone = $1),
ins AS (INSERT INTO customer_opt_outs (customer_id, channel) SELECT id, $2 FROM c ON CONFLICT DO NOTHING)
SELECT EXISTS (SELECT 1 FROM c)`, phone, ch)
	return found, err
}

func (s sqlCustomers) OptInPhone(ctx context.Context, phone string, ch channel.Channel) (bool, error) {
	var found bool
	err := s.db.GetContext(ctx, &found, `
WITH c AS (SELECT id FROM customers WHERE phone = $1),
del AS (DELETE FROM customer_opt_outs o USING c WHERE o.customer_id = c.id AND o.channel = $2)
SELECT EXISTS (SELECT 1 FROM c)`, phone, ch)
	return found, err
}

const (
	testBaseURL     = "https://hooks.example.com"
	testTwilioToken = "twilio-auth-token"
	testATSecret    = "at-callback-secret"
)

// webhookEnv is receiptEnv with the webhooks mounted on an Echo that
// handles errors as the app does.
type webhookEnv struct {
	*receiptEnv
	e *echo.Echo
}

func newWebhookEnv(t *testing.T, opts WebhookOptions) *webhookEnv {
	t.Helper()
	return mountWebhooks(t, newReceiptEnv(t, ReceiptOptions{}), opts)
}

func mountWebhooks(t *testing.T, re *receiptEnv, opts WebhookOptions) *webhookEnv {
	t.Helper()
	e := echo.New()
	e.HTTPErrorHandler = httpx.ErrorHandler(quiet)
	NewWebhooks(opts, re.db.DB, re.r, sqlCustomers{re.db.DB}, quiet).Register(e)
	return &webhookEnv{receiptEnv: re, e: e}
}

var allSecrets = WebhookOptions{PublicBaseURL: testBaseURL + "/", TwilioAuthToken: testTwilioToken, ATCallbackSecret: testATSecret}

// post sends form to target with the given headers.
func (w *webhookEnv) post(t *testing.T, target string, form url.Values, header map[string]string) *httptest.ResponseRecorder {
	t.Helper()
	req := httptest.NewRequest(http.MethodPost, target, strings.NewReader(form.Encode()))
	req.Header.Set(echo.HeaderContentType, echo.MIMEApplicationForm)
	for k, v := range header {
		req.Header.Set(k, v)
	}
	rec := httptest.NewRecorder()
	w.e.ServeHTTP(rec, req)
	return rec
}

// postTwilio sends form to target signed as Twilio signs it: over the
// public URL.
func (w *webhookEnv) postTwilio(t *testing.T, target string, form url.Values) *httptest.ResponseRecorder {
	t.Helper()
	sig := twilio.Signature(testTwilioToken, testBaseURL+target, form)
	return w.post(t, target, form, map[string]string{"X-Twilio-Signature": sig})
}

func wantHTTPStatus(t *testing.T, rec *httptest.ResponseRecorder, status int) {
	t.Helper()
	if rec.Code != status {
		t.Fatalf("status %d, want %d; body %s", rec.Code, status, rec.Body)
	}
}

// wantEnvelope checks that rec is the JSON error envelope with status and
// code.
func wantEnvelope(t *testing.T, rec *httptest.ResponseRecorder, status int, code string) {
	t.Helper()
	wantHTTPStatus(t, rec, status)
	var env httpx.Envelope
	if err := json.Unmarshal(rec.Body.Bytes(), &env); err != nil {
		t.Fatalf("body %q is not the error envelope: %v", rec.Body, err)
	}
	if env.Error.Code != code || env.Error.Message == "" {
		t.Errorf("error %+v, want code %s with a message", env.Error, code)
	}
}

// TestWebhookTwilioStatus checks a signed status callback is applied, and
// that a missing or bad signature, or no configured token, is 403 with the
// envelope and changes nothing.
func TestWebhookTwilioStatus(t *testing.T) {
	t.Parallel()
	w := newWebhookEnv(t, allSecrets)
	id := w.sentMessage(t, "+14155550101", "twilio", "SM1")
	form := url.Values{"MessageSid": {"SM1"}, "MessageStatus": {"delivered"}, "AccountSid": {"AC1"}}
	const target = "/webhooks/twilio/status?attempt=1"

	unsigned := w.post(t, target, form, nil)
	wantEnvelope(t, unsigned, http.StatusForbidden, "FORBIDDEN")
	wrong := twilio.Signature(testTwilioToken, testBaseURL+"/webhooks/twilio/status", form) // query left out
	wantEnvelope(t, w.post(t, target, form, map[string]string{"X-Twilio-Signature": wrong}), http.StatusForbidden, "FORBIDDEN")
	if got := w.state(t, id).Status; got != "sent" {
		t.Fatalf("rejected callbacks moved the message to %s", got)
	}

	wantHTTPStatus(t, w.postTwilio(t, target, form), http.StatusNoContent)
	if got := w.state(t, id); got.Status != "delivered" || got.DeliveredAt == nil {
		t.Errorf("status %s, delivered_at %v; want delivered", got.Status, got.DeliveredAt)
	}
	wantHTTPStatus(t, w.postTwilio(t, target, form), http.StatusNoContent) // a retry

	// Intermediate: 2xx, nothing stored.
	wantHTTPStatus(t, w.postTwilio(t, target, url.Values{"MessageSid": {"SM2"}, "MessageStatus": {"sent"}}), http.StatusNoContent)
	// Unknown id: 2xx, stored, never applied.
	wantHTTPStatus(t, w.postTwilio(t, target, url.Values{"MessageSid": {"SM404"}, "MessageStatus": {"undelivered"}, "ErrorCode": {"30003"}}), http.StatusNoContent)
	if got := w.receipts(t, "twilio", "SM2"); len(got) != 0 {
		t.Errorf("intermediate status stored: %+v", got)
	}
	if diff := cmp.Diff([]receiptRow{{Status: "undelivered"}}, w.receipts(t, "twilio", "SM404")); diff != "" {
		t.Errorf("inbox for an unknown id (-want +got):\n%s", diff)
	}
	// Signed but malformed: 400.
	wantEnvelope(t, w.postTwilio(t, target, url.Values{"MessageStatus": {"delivered"}}), http.StatusBadRequest, "VALIDATION_ERROR")
	// Too large.
	big := url.Values{"MessageSid": {"SM1"}, "MessageStatus": {"delivered"}, "Pad": {strings.Repeat("x", 70<<10)}}
	wantEnvelope(t, w.postTwilio(t, target, big), http.StatusRequestEntityTooLarge, "PAYLOAD_TOO_LARGE")

	// No token configured: every Twilio webhook is 403, signed or not.
	off := mountWebhooks(t, w.receiptEnv, WebhookOptions{PublicBaseURL: testBaseURL})
	wantEnvelope(t, off.postTwilio(t, target, form), http.StatusForbidden, "FORBIDDEN")
	wantEnvelope(t, off.postTwilio(t, "/webhooks/twilio/inbound", url.Values{"From": {"+14155550101"}, "Body": {"STOP"}}), http.StatusForbidden, "FORBIDDEN")
}

// TestWebhookATDelivery checks a delivery report with the right key is
// applied, and that a wrong or missing key, or no configured secret, is
// 403.
func TestWebhookATDelivery(t *testing.T) {
	t.Parallel()
	w := newWebhookEnv(t, allSecrets)
	id := w.sentMessage(t, "+254700000001", "africastalking", "ATXid_1")
	form := url.Values{"id": {"ATXid_1"}, "status": {"Failed"}, "phoneNumber": {"+254700000001"},
		"networkCode": {"63902"}, "failureReason": {"DeliveryFailure"}}

	wantEnvelope(t, w.post(t, "/webhooks/africastalking/delivery?key=wrong", form, nil), http.StatusForbidden, "FORBIDDEN")
	wantEnvelope(t, w.post(t, "/webhooks/africastalking/delivery", form, nil), http.StatusForbidden, "FORBIDDEN")
	wantEnvelope(t, w.post(t, "/webhooks/africastalking/inbound?key=wrong", url.Values{"from": {"254700000001"}, "text": {"STOP"}}, nil),
		http.StatusForbidden, "FORBIDDEN")
	if got := w.state(t, id).Status; got != "sent" {
		t.Fatalf("rejected callbacks moved the message to %s", got)
	}

	wantHTTPStatus(t, w.post(t, "/webhooks/africastalking/delivery?key="+testATSecret, form, nil), http.StatusOK)
	if got := w.state(t, id); got.Status != "undelivered" || got.LastError == nil || *got.LastError != "DeliveryFailure" {
		t.Errorf("status %s, last_error %s; want undelivered, DeliveryFailure", got.Status, deref(got.LastError))
	}
	wantEnvelope(t, w.post(t, "/webhooks/africastalking/delivery?key="+testATSecret, url.Values{"status": {"Success"}}, nil),
		http.StatusBadRequest, "VALIDATION_ERROR")

	off := mountWebhooks(t, w.receiptEnv, WebhookOptions{})
	wantEnvelope(t, off.post(t, "/webhooks/africastalking/delivery?key=", form, nil), http.StatusForbidden, "FORBIDDEN")
}

// inboundFixture is one customer with a pending message on an SMS and on a
// WhatsApp campaign, and another customer with a pending SMS message.
type inboundFixture struct {
	phone                string
	sms, whatsapp, other int64
	customer             int64
}

func (w *webhookEnv) inboundFixture(t *testing.T, phone, otherPhone string) inboundFixture {
	t.Helper()
	f := inboundFixture{phone: phone, customer: w.customer(t, phone)}
	sms, wa := w.campaign(t, channel.SMS), w.campaign(t, channel.WhatsApp)
	f.sms = w.message(t, sms, f.customer, "pending", "", "")
	f.whatsapp = w.message(t, wa, f.customer, "pending", "", "")
	f.other = w.message(t, sms, w.customer(t, otherPhone), "pending", "", "")
	return f
}

func (w *webhookEnv) optOuts(t *testing.T, customerID int64) []string {
	t.Helper()
	chs := []string{}
	if err := w.db.Select(&chs, `SELECT channel FROM customer_opt_outs WHERE customer_id = $1 ORDER BY channel`, customerID); err != nil {
		t.Fatal(err)
	}
	return chs
}

// statuses returns the statuses of ids, in order.
func (w *webhookEnv) statuses(t *testing.T, ids ...int64) []string {
	t.Helper()
	out := make([]string, len(ids))
	for i, id := range ids {
		out[i] = w.state(t, id).Status
	}
	return out
}

// TestWebhookInboundStopAndStart sends STOP and START over both providers:
// STOP records the opt-out of the message's channel and cancels the
// sender's pending messages on that channel only; START removes it.
func TestWebhookInboundStopAndStart(t *testing.T) {
	t.Parallel()
	w := newWebhookEnv(t, allSecrets)

	t.Run("twilio whatsapp", func(t *testing.T) {
		f := w.inboundFixture(t, "+14155550101", "+14155550201")
		rec := w.postTwilio(t, "/webhooks/twilio/inbound", url.Values{"From": {"whatsapp:" + f.phone}, "To": {"whatsapp:+14155550000"},
			"Body": {" Stop\n"}, "MessageSid": {"SMin1"}})
		wantHTTPStatus(t, rec, http.StatusOK)
		if ct := rec.Header().Get(echo.HeaderContentType); !strings.HasPrefix(ct, "text/xml") || !strings.Contains(rec.Body.String(), "<Response/>") {
			t.Errorf("reply %q (%s), want empty TwiML", rec.Body, ct)
		}
		if diff := cmp.Diff([]string{"whatsapp"}, w.optOuts(t, f.customer)); diff != "" {
			t.Errorf("opt-outs (-want +got):\n%s", diff)
		}
		if diff := cmp.Diff([]string{"pending", "cancelled", "pending"}, w.statuses(t, f.sms, f.whatsapp, f.other)); diff != "" {
			t.Errorf("statuses of sms, whatsapp, other (-want +got):\n%s", diff)
		}
		if got := w.state(t, f.whatsapp).LastError; got == nil || *got != "not sent: customer opted out of whatsapp" {
			t.Errorf("last_error %s", deref(got))
		}

		wantHTTPStatus(t, w.postTwilio(t, "/webhooks/twilio/inbound", url.Values{"From": {"whatsapp:" + f.phone}, "Body": {"START"}}), http.StatusOK)
		if got := w.optOuts(t, f.customer); len(got) != 0 {
			t.Errorf("opt-outs after START = %v, want none", got)
		}
		// A message that is no keyword changes nothing.
		wantHTTPStatus(t, w.postTwilio(t, "/webhooks/twilio/inbound", url.Values{"From": {f.phone}, "Body": {"STOP PLEASE"}}), http.StatusOK)
		if got := w.optOuts(t, f.customer); len(got) != 0 {
			t.Errorf("opt-outs after a non-keyword = %v, want none", got)
		}
	})

	t.Run("africastalking sms", func(t *testing.T) {
		f := w.inboundFixture(t, "+254700000001", "+254700000201")
		target := "/webhooks/africastalking/inbound?key=" + testATSecret
		wantHTTPStatus(t, w.post(t, target, url.Values{"from": {"254700000001"}, "to": {"12345"}, "text": {"stop"}, "id": {"x"}}, nil), http.StatusOK)
		if diff := cmp.Diff([]string{"sms"}, w.optOuts(t, f.customer)); diff != "" {
			t.Errorf("opt-outs (-want +got):\n%s", diff)
		}
		if diff := cmp.Diff([]string{"cancelled", "pending", "pending"}, w.statuses(t, f.sms, f.whatsapp, f.other)); diff != "" {
			t.Errorf("statuses of sms, whatsapp, other (-want +got):\n%s", diff)
		}
		wantHTTPStatus(t, w.post(t, target, url.Values{"from": {"+254700000001"}, "text": {"UNSTOP"}}, nil), http.StatusOK)
		if got := w.optOuts(t, f.customer); len(got) != 0 {
			t.Errorf("opt-outs after UNSTOP = %v, want none", got)
		}
	})

	t.Run("unknown phone", func(t *testing.T) {
		wantHTTPStatus(t, w.postTwilio(t, "/webhooks/twilio/inbound", url.Values{"From": {"+14155557777"}, "Body": {"STOP"}}), http.StatusOK)
		wantHTTPStatus(t, w.post(t, "/webhooks/africastalking/inbound?key="+testATSecret, url.Values{"from": {"+14155557777"}, "text": {"STOP"}}, nil),
			http.StatusOK)
		wantEnvelope(t, w.postTwilio(t, "/webhooks/twilio/inbound", url.Values{"Body": {"STOP"}}), http.StatusBadRequest, "VALIDATION_ERROR")
	})
}

// TestWebhookReceiptOptOutHook wires OptOutHook as the app does: an
// undelivered receipt that says the recipient blocked the sender opts
// their phone out of the channel and cancels their pending messages on it.
func TestWebhookReceiptOptOutHook(t *testing.T) {
	t.Parallel()
	db := pgtest.New(t)
	re := startReceipts(t, db, ReceiptOptions{OnOptOut: OptOutHook(db.DB, sqlCustomers{db.DB}, quiet)})
	w := mountWebhooks(t, re, allSecrets)

	f := w.inboundFixture(t, "+14155550101", "+14155550201")
	sent := w.message(t, w.campaign(t, channel.SMS), f.customer, "sent", "twilio", "SM1")
	wantHTTPStatus(t, w.postTwilio(t, "/webhooks/twilio/status", url.Values{"MessageSid": {"SM1"}, "MessageStatus": {"undelivered"}, "ErrorCode": {"21610"}}),
		http.StatusNoContent)
	if diff := cmp.Diff([]string{"sms"}, w.optOuts(t, f.customer)); diff != "" {
		t.Errorf("opt-outs (-want +got):\n%s", diff)
	}
	if diff := cmp.Diff([]string{"undelivered", "cancelled", "pending", "pending"}, w.statuses(t, sent, f.sms, f.whatsapp, f.other)); diff != "" {
		t.Errorf("statuses of sent, sms, whatsapp, other (-want +got):\n%s", diff)
	}
}
