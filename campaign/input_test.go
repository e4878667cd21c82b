package campaign

import (
	"fmt"
	"net/http"
	"strings"
	"testing"

	"github.com/campaignd/dispatch/platform/channel"
	"github.com/campaignd/dispatch/platform/errs"
)

// TestHostileInput sends the values that once reached PostgreSQL unchecked
// (a 500: NUL cannot be stored in text or jsonb, nor compared) or were
// accepted when they should not be: each is now a 400 naming what is wrong,
// and nothing changes.
func TestHostileInput(t *testing.T) {
	t.Parallel()
	se := newSendEnv(t)
	seedCustomers(t, se.db.DB, 2)
	draft := se.insertCampaign(t, "draft", channel.SMS, StatusDraft)
	create := func(extra string) string {
		return `{"name":"n","channel":"sms","base_template":"Hi {first_name}"` + extra + `}`
	}
	patch := fmt.Sprintf("/campaigns/%d", draft)
	send := fmt.Sprintf("/campaigns/%d/send", draft)
	js := "application/json"
	tests := []struct {
		name, method, target, body, key string
		code, field                     string
	}{
		{"create audience location NUL", "POST", "/campaigns", create(`,"audience":{"location":"a\u0000b"}`), "", errs.CodeValidation, "audience.location"},
		{"create audience product NUL", "POST", "/campaigns", create(`,"audience":{"preferred_product":"\u0000"}`), "", errs.CodeValidation, "audience.preferred_product"},
		{"create audience location 201 characters", "POST", "/campaigns", create(`,"audience":{"location":"` + strings.Repeat("é", 201) + `"}`), "", errs.CodeValidation, "audience.location"},
		{"create audience location control character", "POST", "/campaigns", create(`,"audience":{"location":"Nai\nrobi"}`), "", errs.CodeValidation, "audience.location"},
		{"patch audience location NUL", "PATCH", patch, `{"audience":{"location":"a\u0000b"}}`, "", errs.CodeValidation, "audience.location"},
		{"send audience location NUL", "POST", send, `{"audience":{"location":"a\u0000b"}}`, "", errs.CodeValidation, "audience.location"},
		{"send audience product NUL", "POST", send, `{"audience":{"preferred_product":"\u0000"}}`, "", errs.CodeValidation, "audience.preferred_product"},
		{"send Idempotency-Key invalid UTF-8", "POST", send, `{"customer_ids":[1]}`, "k\xff", errs.CodeValidation, "Idempotency-Key"},

		{"create name with escape", "POST", "/campaigns", `{"name":"a\u001b[31mb","channel":"sms","base_template":"t"}`, "", errs.CodeValidation, "name"},
		{"create name with newline", "POST", "/campaigns", `{"name":"a\nb","channel":"sms","base_template":"t"}`, "", errs.CodeValidation, "name"},
		{"create name with right-to-left override", "POST", "/campaigns", `{"name":"sale\u202Egnp.exe","channel":"sms","base_template":"t"}`, "", errs.CodeValidation, "name"},
		{"patch name with right-to-left override", "PATCH", patch, `{"name":"\u202Eabc"}`, "", errs.CodeValidation, "name"},

		{"create duplicate key", "POST", "/campaigns", `{"name":"a","name":"b","channel":"sms","base_template":"t"}`, "", errs.CodeInvalidJSON, "name"},
		{"create upper-case key", "POST", "/campaigns", `{"NAME":"a","channel":"sms","base_template":"t"}`, "", errs.CodeInvalidJSON, "NAME"},
		{"create audience upper-case key", "POST", "/campaigns", create(`,"audience":{"Location":"x"}`), "", errs.CodeInvalidJSON, "audience.Location"},
		{"patch duplicate key", "PATCH", patch, `{"name":"a","name":"b"}`, "", errs.CodeInvalidJSON, "name"},
		{"patch audience duplicate key", "PATCH", patch, `{"audience":{"all":true,"all":false}}`, "", errs.CodeInvalidJSON, "audience.all"},
		{"patch audience upper-case key", "PATCH", patch, `{"audience":{"LOCATION":"x"}}`, "", errs.CodeInvalidJSON, "audience.LOCATION"},
		{"send duplicate key", "POST", send, `{"customer_ids":[1],"customer_ids":[2]}`, "", errs.CodeInvalidJSON, "customer_ids"},
		{"send upper-case key", "POST", send, `{"Customer_IDs":[1]}`, "", errs.CodeInvalidJSON, "Customer_IDs"},
		{"preview upper-case key", "POST", fmt.Sprintf("/campaigns/%d/personalized-preview", draft), `{"Customer_ID":1}`, "", errs.CodeInvalidJSON, "Customer_ID"},

		{"list malformed page escape", "GET", "/campaigns?page=%zz", "", "", errs.CodeValidation, "page"},
		{"list malformed cursor escape", "GET", "/campaigns?cursor=%%%%", "", "", errs.CodeValidation, "cursor"},
		{"list malformed status escape", "GET", "/campaigns?status=sen%d", "", "", errs.CodeValidation, "status"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			ct := ""
			if tt.body != "" {
				ct = js
			}
			if tt.key != "" { // only sends take one
				wantError(t, se.sendCT(draft, ct, tt.body, tt.key), http.StatusBadRequest, tt.code, tt.field)
				return
			}
			wantError(t, se.doCT(tt.method, tt.target, ct, tt.body), http.StatusBadRequest, tt.code, tt.field)
		})
	}
	if st := se.campaignStatus(t, draft); st != StatusDraft {
		t.Errorf("campaign is %s after bad requests, want draft", st)
	}
	if n := se.countMessages(t); n != 0 {
		t.Errorf("%d messages after bad requests", n)
	}
	var n int
	if err := se.db.Get(&n, `SELECT count(*) FROM campaigns`); err != nil || n != 1 {
		t.Errorf("%d campaigns after bad requests (%v), want the 1 draft", n, err)
	}
}

// TestAudienceCountsCharacters: a location of 200 non-ASCII characters (400
// bytes) is a valid customer location, so a campaign can target it.
func TestAudienceCountsCharacters(t *testing.T) {
	t.Parallel()
	te := newTestEnv(t)
	loc := strings.Repeat("é", MaxFilterLen)
	c := decodeJSON[Campaign](t, te.do(http.MethodPost, "/campaigns",
		`{"name":"n","channel":"sms","base_template":"t","audience":{"location":"`+loc+`"}}`), http.StatusCreated)
	if c.Audience == nil || c.Audience.Location != loc {
		t.Errorf("stored audience %+v, want location of 200 é", c.Audience)
	}
}

// TestStatusErrorNamesEveryStatus: the list's status filter error names
// every status a campaign can have.
func TestStatusErrorNamesEveryStatus(t *testing.T) {
	t.Parallel()
	_, err := parseStatus("status", "bogus")
	if err == nil {
		t.Fatal("parseStatus(bogus) = nil")
	}
	for _, s := range []Status{StatusDraft, StatusScheduled, StatusSending, StatusPaused, StatusSent, StatusFailed, StatusCancelled} {
		if !strings.Contains(err.Error(), string(s)) {
			t.Errorf("error %q does not name status %s", err, s)
		}
	}
}

// TestErrorsEchoLittle: a message repeats at most a short prefix of what the
// client sent, however long.
func TestErrorsEchoLittle(t *testing.T) {
	t.Parallel()
	se := newSendEnv(t)
	draft := se.insertCampaign(t, "draft", channel.SMS, StatusDraft)
	huge := strings.Repeat("x", 1<<20)
	for _, tt := range []struct{ name, method, target, body string }{
		{"create unknown key", "POST", "/campaigns", `{"` + huge + `":1}`},
		{"create huge scheduled_at", "POST", "/campaigns", `{"name":"n","channel":"sms","base_template":"t","scheduled_at":"` + huge + `"}`},
		{"create unknown channel", "POST", "/campaigns", `{"name":"n","channel":"` + huge + `","base_template":"t"}`},
		{"patch unknown key", "PATCH", fmt.Sprintf("/campaigns/%d", draft), `{"` + huge + `":1}`},
		{"patch audience unknown key", "PATCH", fmt.Sprintf("/campaigns/%d", draft), `{"audience":{"` + huge + `":1}}`},
		{"send huge number", "POST", fmt.Sprintf("/campaigns/%d/send", draft), `{"customer_ids":[1` + strings.Repeat("0", 1<<20) + `]}`},
		{"list unknown status", "GET", "/campaigns?status=" + huge, ""},
		{"bad id", "GET", "/campaigns/" + huge, ""},
	} {
		t.Run(tt.name, func(t *testing.T) {
			rec := se.do(tt.method, tt.target, tt.body)
			if rec.Code < 400 || rec.Code >= 500 || rec.Body.Len() > 1000 {
				t.Errorf("status %d with a %d-byte body, want a 4xx of at most 1000 bytes: %.300s", rec.Code, rec.Body.Len(), rec.Body)
			}
		})
	}
}
