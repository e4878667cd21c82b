package campaign

import (
	"context"
	"fmt"
	"net/http"
	"testing"

	"github.com/google/go-cmp/cmp"

	"github.com/campaignd/dispatch/messaging"
	"github.com/campaignd/dispatch/messaging/provider"
	"github.com/campaignd/dispatch/platform/channel"
)

// TestTestSendThroughHandler test-sends a campaign that is itself sending
// to customers: the provider gets the message rendered with the chosen
// customer's fields and the phone sent to, the message ends sent with
// test true and no customer, and the campaign's status and stats do not
// move, nor does the finisher count the test.
func TestTestSendThroughHandler(t *testing.T) {
	t.Parallel()
	fake := &acceptAll{}
	se, ts := newEstimateEnv(t, fake)
	ctx := context.Background()
	c := se.createCampaign(t, "launch", channel.SMS, "Hi {first_name} ({phone}), {preferred_product} in {location}!")
	ids := seedCustomers(t, se.db.DB, 2)
	wantSendAccepted(t, se.send(c.ID, sendBody(t, ids), ""), c.ID, 2, 0)
	before := decodeJSON[Detail](t, se.do(http.MethodGet, fmt.Sprintf("/campaigns/%d", c.ID), ""), http.StatusOK)

	url := fmt.Sprintf("/campaigns/%d/test-send", c.ID)
	rec := se.do(http.MethodPost, url, `{"phone":"0712 000 001","customer_id":1}`) // a national number, read as Kenyan
	got := decodeJSON[map[string]any](t, rec, http.StatusAccepted)
	body := "Hi Alice (+254712000001), espresso in Lisbon!"
	for k, want := range map[string]any{"test": true, "customer_id": nil, "phone": "+254712000001", "channel": "sms",
		"status": "sending", "rendered_content": body, "encoding": "GSM-7", "segments": float64(1), "attempts": float64(0),
		"campaign_id": float64(c.ID), "provider": "fake"} {
		if !cmp.Equal(got[k], want) {
			t.Errorf("%s = %v, want %v", k, got[k], want)
		}
	}
	for _, k := range []string{"id", "last_error", "provider_message_id", "cost", "currency", "created_at", "sent_at", "delivered_at", "updated_at"} {
		if _, ok := got[k]; !ok {
			t.Errorf("the message has no %q", k)
		}
	}
	ts.Wait()
	id := int64(got["id"].(float64))
	if diff := cmp.Diff([]provider.Message{{ID: id, Channel: channel.SMS, To: "+254712000001", Body: body}}, fake.calls); diff != "" {
		t.Errorf("provider calls (-want +got):\n%s", diff)
	}
	var row struct {
		Status     string `db:"status"`
		Test       bool   `db:"test"`
		CustomerID *int64 `db:"customer_id"`
		Attempts   int    `db:"attempts"`
	}
	if err := se.db.GetContext(ctx, &row, `SELECT status, test, customer_id, attempts FROM outbound_messages WHERE id = $1`, id); err != nil {
		t.Fatal(err)
	}
	if row.Status != "sent" || !row.Test || row.CustomerID != nil || row.Attempts != 1 {
		t.Errorf("stored: %+v; want sent, test, no customer, 1 attempt", row)
	}

	after := decodeJSON[Detail](t, se.do(http.MethodGet, fmt.Sprintf("/campaigns/%d", c.ID), ""), http.StatusOK)
	if after.Status != StatusSending || after.Stats != before.Stats || after.Stats.Total != 2 || after.Stats.Sent != 0 {
		t.Errorf("after the test: status %s, stats %+v; before %+v", after.Status, after.Stats, before.Stats)
	}

	// The campaign's own messages finish, one sent: the campaign is sent.
	// With its only sent message a test, it would have failed: the test
	// counts for neither, and one in flight holds nothing open.
	if _, err := se.db.ExecContext(ctx, `
UPDATE outbound_messages SET status = CASE WHEN customer_id = $2 THEN 'sent' ELSE 'failed' END WHERE campaign_id = $1 AND NOT test`,
		c.ID, ids[0]); err != nil {
		t.Fatal(err)
	}
	other := se.insertCampaign(t, "only a test sent", channel.SMS, StatusSending)
	if _, err := ts.Send(ctx, messaging.TestSend{CampaignID: other, Channel: channel.SMS, Template: "x", Phone: "+254712000003"}); err != nil {
		t.Fatal(err)
	}
	ts.Wait()
	se.insertMessage(t, other, ids[1], "failed")
	inFlight := se.insertCampaign(t, "a test in flight", channel.SMS, StatusSending)
	se.insertMessage(t, inFlight, ids[1], "sent")
	if _, err := se.db.ExecContext(ctx, `
INSERT INTO outbound_messages (campaign_id, test, phone, status) VALUES ($1, true, '+254712000004', 'sending')`, inFlight); err != nil {
		t.Fatal(err)
	}
	done, err := se.svc.repo.Finish(ctx)
	if err != nil {
		t.Fatal(err)
	}
	sortFinished(done)
	want := []Finished{{ID: c.ID, Status: StatusSent}, {ID: other, Status: StatusFailed}, {ID: inFlight, Status: StatusSent}}
	if diff := cmp.Diff(want, done); diff != "" {
		t.Errorf("finished (-want +got):\n%s", diff)
	}
}

func TestTestSendPhoneAlone(t *testing.T) {
	t.Parallel()
	fake := &acceptAll{}
	se, ts := newEstimateEnv(t, fake)
	// A draft WhatsApp campaign: any status may be tested.
	c := se.createCampaign(t, "draft", channel.WhatsApp, "Hi {first_name}{last_name}, this goes to {phone}.")
	got := decodeJSON[map[string]any](t, se.do(http.MethodPost, fmt.Sprintf("/campaigns/%d/test-send", c.ID),
		`{"phone":"+14155550100"}`), http.StatusAccepted)
	if got["rendered_content"] != "Hi , this goes to +14155550100." || got["encoding"] != nil || got["segments"] != nil || got["channel"] != "whatsapp" {
		t.Errorf("test message: %v", got)
	}
	ts.Wait()
	if len(fake.calls) != 1 || fake.calls[0].Channel != channel.WhatsApp || fake.calls[0].To != "+14155550100" {
		t.Errorf("provider calls: %+v", fake.calls)
	}
	if st := se.campaignStatus(t, c.ID); st != StatusDraft {
		t.Errorf("campaign is %s after a test, want draft", st)
	}
}

func TestTestSendErrors(t *testing.T) {
	t.Parallel()
	se, _ := newEstimateEnv(t, &acceptAll{})
	c := se.createCampaign(t, "errors", channel.SMS, "Hi {first_name}")
	url := fmt.Sprintf("/campaigns/%d/test-send", c.ID)
	wantError(t, se.do(http.MethodPost, url, `{}`), http.StatusBadRequest, "VALIDATION_ERROR", "phone")
	wantError(t, se.do(http.MethodPost, url, `{"phone":"  "}`), http.StatusBadRequest, "VALIDATION_ERROR", "phone")
	wantError(t, se.do(http.MethodPost, url, `{"phone":"12"}`), http.StatusBadRequest, "VALIDATION_ERROR", "phone")
	wantError(t, se.do(http.MethodPost, url, `{"phone":"+254712000001","customer_id":0}`), http.StatusBadRequest, "VALIDATION_ERROR", "customer_id")
	wantError(t, se.do(http.MethodPost, url, `{"phone":"+254712000001","extra":1}`), http.StatusBadRequest, "INVALID_JSON", "")
	wantError(t, se.do(http.MethodPost, "/campaigns/999999/test-send", `{"phone":"+254712000001"}`), http.StatusNotFound, "CAMPAIGN_NOT_FOUND", "")
	wantError(t, se.do(http.MethodPost, url, `{"phone":"+254712000001","customer_id":99}`), http.StatusNotFound, "CUSTOMER_NOT_FOUND", "")
	if _, err := se.db.ExecContext(context.Background(), `
WITH c AS (INSERT INTO customers (phone) VALUES ('+254712000009') RETURNING id)
INSERT INTO customer_opt_outs (customer_id, channel) SELECT id, 'sms' FROM c`); err != nil {
		t.Fatal(err)
	}
	wantError(t, se.do(http.MethodPost, url, `{"phone":"+254712000009"}`), http.StatusUnprocessableEntity, "RECIPIENT_OPTED_OUT", "")
	if n := se.countMessages(t); n != 0 {
		t.Errorf("%d messages created by refused test sends", n)
	}
}
