package app

// End-to-end tests of audience sends, stored audiences, PATCH /campaigns/{id}
// and opt-outs, each against the whole app booted in-process (startApp) on a
// database and Redis prefix of its own. The HTTP API is the client's view;
// the app's database is read directly where the API shows no detail (which
// customers got a message, dispatch batches, the mock provider's ledger).

import (
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"github.com/jmoiron/sqlx"

	"github.com/campaignd/dispatch/messaging/queue"
	"github.com/campaignd/dispatch/platform/postgres"
)

// audEnv is a running app plus a connection of the test's own to the app's
// database.
type audEnv struct {
	*testApp
	cfg Config
	db  *sqlx.DB
}

// newAudEnv boots an app with workers delivery goroutines (0: API only, so
// messages stay pending) and the PostgreSQL ledger, which records every
// delivery the mock provider accepted in mock_deliveries.
func newAudEnv(t *testing.T, workers int) *audEnv {
	t.Helper()
	cfg := testConfig(t)
	cfg.WorkerConcurrency = workers
	cfg.Sender.Ledger = "postgres"
	ta := startApp(t, cfg) // creates and migrates the database
	return &audEnv{testApp: ta, cfg: cfg, db: audOpenDB(t, cfg)}
}

// audOpenDB connects to the app's database. The cleanup is registered after
// the app's, so it runs before the app stops and the database is dropped.
func audOpenDB(t testing.TB, cfg Config) *sqlx.DB {
	t.Helper()
	db, err := postgres.Open(context.Background(), cfg.Database.URL, postgres.Options{MaxOpenConns: 4})
	if err != nil {
		t.Fatalf("open the app's database: %v", err)
	}
	t.Cleanup(func() { db.Close() })
	return db
}

// audCustomer is one row of a customer import.
type audCustomer struct {
	phone, first, location, product string
}

// importCustomers imports cs over HTTP as CSV and returns their ids, in
// the order given.
func (e *audEnv) importCustomers(t *testing.T, cs ...audCustomer) []int64 {
	t.Helper()
	var csv strings.Builder
	csv.WriteString("phone,first_name,last_name,location,preferred_product\n")
	phones := make([]string, len(cs))
	for i, c := range cs {
		fmt.Fprintf(&csv, "%s,%s,Last,%s,%s\n", c.phone, c.first, c.location, c.product)
		phones[i] = c.phone
	}
	e.importCSV(t, csv.String())
	return customerIDs(t, e.db, phones)
}

// audCampaign is a campaign object as the API returns it.
type audCampaign struct {
	ID           int64           `json:"id"`
	Name         string          `json:"name"`
	Channel      string          `json:"channel"`
	Status       string          `json:"status"`
	BaseTemplate string          `json:"base_template"`
	ScheduledAt  *time.Time      `json:"scheduled_at"`
	Audience     json.RawMessage `json:"audience"`
}

// newCampaign creates a campaign from body (name and template filled in when
// absent) and fails unless it is created.
func (e *audEnv) newCampaign(t *testing.T, channel string, body map[string]any) audCampaign {
	t.Helper()
	if body == nil {
		body = map[string]any{}
	}
	body["channel"] = channel
	if _, ok := body["name"]; !ok {
		body["name"] = "Audience test"
	}
	if _, ok := body["base_template"]; !ok {
		body["base_template"] = "Hi {first_name}, {preferred_product} in {location}!"
	}
	var c audCampaign
	if code := e.do(t, "POST", "/campaigns", body, &c); code != http.StatusCreated {
		t.Fatalf("create campaign %v: status %d", body, code)
	}
	return c
}

// getCampaign reads campaign id over HTTP as raw JSON fields.
func (e *audEnv) getCampaign(t *testing.T, id int64) map[string]json.RawMessage {
	t.Helper()
	var raw map[string]json.RawMessage
	if code := e.do(t, "GET", fmt.Sprintf("/campaigns/%d", id), nil, &raw); code != http.StatusOK {
		t.Fatalf("get campaign %d: status %d", id, code)
	}
	return raw
}

func (e *audEnv) status(t *testing.T, id int64) string {
	t.Helper()
	var s string
	if err := json.Unmarshal(e.getCampaign(t, id)["status"], &s); err != nil {
		t.Fatal(err)
	}
	return s
}

// stats reads campaign id's stats and checks the contract: exactly the
// keys total, pending, sending, sent, failed and cancelled, the last five
// summing to total.
func (e *audEnv) stats(t *testing.T, id int64) map[string]int64 {
	t.Helper()
	var s map[string]int64
	if err := json.Unmarshal(e.getCampaign(t, id)["stats"], &s); err != nil {
		t.Fatalf("campaign %d: decode stats: %v", id, err)
	}
	keys := make([]string, 0, len(s))
	for k := range s {
		keys = append(keys, k)
	}
	slices.Sort(keys)
	if want := []string{"cancelled", "delivered", "failed", "pending", "sending", "sent", "total", "undelivered"}; !slices.Equal(keys, want) {
		t.Errorf("campaign %d: stats keys %v, want %v", id, keys, want)
	}
	if sum := s["pending"] + s["sending"] + s["sent"] + s["failed"] + s["cancelled"]; sum != s["total"] {
		t.Errorf("campaign %d: stats %v sum to %d, not total %d", id, s, sum, s["total"])
	}
	return s
}

// audSendResult is the 202 body of a send.
type audSendResult struct {
	CampaignID        int64  `json:"campaign_id"`
	MessagesQueued    int64  `json:"messages_queued"`
	Status            string `json:"status"`
	DuplicatesRemoved int    `json:"duplicates_removed"`
	SkippedOptedOut   int64  `json:"skipped_opted_out"`
}

// send posts body to campaign id's send and returns the status with the
// body decoded as a result (on 202, after checking its keys) or an error.
func (e *audEnv) send(t *testing.T, id int64, body any) (int, audSendResult, apiError) {
	t.Helper()
	var raw json.RawMessage
	code := e.do(t, "POST", fmt.Sprintf("/campaigns/%d/send", id), body, &raw)
	var res audSendResult
	var ae apiError
	if code == http.StatusAccepted {
		var m map[string]any
		if err := json.Unmarshal(raw, &m); err != nil {
			t.Fatal(err)
		}
		keys := make([]string, 0, len(m))
		for k := range m {
			keys = append(keys, k)
		}
		slices.Sort(keys)
		if want := []string{"campaign_id", "duplicates_removed", "messages_queued", "skipped_opted_out", "status"}; !slices.Equal(keys, want) {
			t.Errorf("send campaign %d: response keys %v, want %v", id, keys, want)
		}
		if err := json.Unmarshal(raw, &res); err != nil {
			t.Fatal(err)
		}
	} else if err := json.Unmarshal(raw, &ae); err != nil {
		t.Fatalf("send campaign %d: status %d, decode error %s: %v", id, code, raw, err)
	}
	return code, res, ae
}

// mustSend sends and fails unless the send is accepted.
func (e *audEnv) mustSend(t *testing.T, id int64, body any) audSendResult {
	t.Helper()
	code, res, ae := e.send(t, id, body)
	if code != http.StatusAccepted {
		t.Fatalf("send campaign %d %v: status %d %+v", id, body, code, ae.Error)
	}
	if res.CampaignID != id || res.Status != "sending" {
		t.Errorf("send campaign %d: %+v, want campaign_id %d and status sending", id, res, id)
	}
	return res
}

// optOut opts customer id out of channel over HTTP.
func (e *audEnv) optOut(t *testing.T, id int64, channel string) {
	t.Helper()
	if code := e.do(t, "POST", fmt.Sprintf("/customers/%d/opt-out", id), map[string]any{"channel": channel}, nil); code != http.StatusOK {
		t.Fatalf("opt customer %d out of %s: status %d", id, channel, code)
	}
}

// recipients returns the customer ids campaign id has messages for, sorted.
func (e *audEnv) recipients(t *testing.T, id int64) []int64 {
	t.Helper()
	ids := []int64{}
	if err := e.db.Select(&ids, `SELECT customer_id FROM outbound_messages WHERE campaign_id = $1 ORDER BY customer_id`, id); err != nil {
		t.Fatal(err)
	}
	return ids
}

// materialising counts campaign id's dispatch batches whose audience is
// still being turned into messages.
func (e *audEnv) materialising(t *testing.T, id int64) int {
	t.Helper()
	var n int
	if err := e.db.Get(&n, `SELECT count(*) FROM dispatch_batches WHERE campaign_id = $1 AND filter IS NOT NULL`, id); err != nil {
		t.Fatal(err)
	}
	return n
}

// waitMaterialised waits until campaign id's audience has been turned into
// messages.
func (e *audEnv) waitMaterialised(t *testing.T, id int64) {
	t.Helper()
	waitFor(t, fmt.Sprintf("campaign %d materialised", id), 30*time.Second, func() bool {
		return e.materialising(t, id) == 0
	})
}

// waitStatus waits until campaign id has status want.
func (e *audEnv) waitStatus(t *testing.T, id int64, want string, timeout time.Duration) {
	t.Helper()
	waitFor(t, fmt.Sprintf("campaign %d %s", id, want), timeout, func() bool { return e.status(t, id) == want })
}

// countRows runs a count query.
func (e *audEnv) countRows(t *testing.T, query string, args ...any) int {
	t.Helper()
	var n int
	if err := e.db.Get(&n, query, args...); err != nil {
		t.Fatal(err)
	}
	return n
}

// audSorted returns a sorted copy of ids.
func audSorted(ids ...int64) []int64 {
	out := slices.Clone(ids)
	slices.Sort(out)
	if out == nil {
		out = []int64{}
	}
	return out
}

// audPhone returns a distinct valid Kenyan mobile number for i.
func audPhone(i int) string { return fmt.Sprintf("+2547120%05d", i) }

// TestAudienceAllDeliversToEveryone sends {"audience":{"all":true}} and
// waits for every customer to be messaged once, on distinct phones.
func TestAudienceAllDeliversToEveryone(t *testing.T) {
	t.Parallel()
	e := newAudEnv(t, 8)
	var cs []audCustomer
	for i := range 30 {
		cs = append(cs, audCustomer{audPhone(i), fmt.Sprintf("N%d", i), []string{"Nairobi", "Mombasa", ""}[i%3], "Shoes"})
	}
	ids := e.importCustomers(t, cs...)

	c := e.newCampaign(t, "sms", nil)
	res := e.mustSend(t, c.ID, map[string]any{"audience": map[string]any{"all": true}})
	if res.MessagesQueued != 30 || res.DuplicatesRemoved != 0 || res.SkippedOptedOut != 0 {
		t.Errorf("send = %+v, want 30 queued, nothing removed or skipped", res)
	}
	e.waitStatus(t, c.ID, "sent", 30*time.Second)
	if s := e.stats(t, c.ID); s["total"] != 30 || s["sent"] != 30 {
		t.Errorf("stats = %v, want 30 sent", s)
	}
	if diff := cmp.Diff(audSorted(ids...), e.recipients(t, c.ID)); diff != "" {
		t.Errorf("recipients (-want +got):\n%s", diff)
	}
	// Every message went to its own phone and was delivered once.
	if n := e.countRows(t, `
SELECT count(DISTINCT u.phone) FROM outbound_messages m JOIN customers u ON u.id = m.customer_id
WHERE m.campaign_id = $1`, c.ID); n != 30 {
		t.Errorf("messages went to %d distinct phones, want 30", n)
	}
	if n := e.countRows(t, `
SELECT count(*) FROM mock_deliveries d JOIN outbound_messages m ON m.id = d.message_id
WHERE m.campaign_id = $1 AND d.calls = 1`, c.ID); n != 30 {
		t.Errorf("%d messages delivered exactly once, want 30", n)
	}
}

// TestAudienceOnePhoneOneMessage checks the two guarantees behind "a phone is
// never messaged twice in one campaign": a second customer with the same
// phone (however it is written) is refused, and a campaign sent to everyone
// and to a list naming a customer twice has one message per phone.
func TestAudienceOnePhoneOneMessage(t *testing.T) {
	t.Parallel()
	e := newAudEnv(t, 0)
	var first struct {
		ID int64 `json:"id"`
	}
	if code := e.do(t, "POST", "/customers", map[string]any{"phone": "+254712345678", "first_name": "A"}, &first); code != http.StatusCreated {
		t.Fatalf("create customer: status %d", code)
	}
	for _, p := range []string{"+254712345678", "+254 712 345 678", "+254-712-345-678"} {
		var ae apiError
		if code := e.do(t, "POST", "/customers", map[string]any{"phone": p, "first_name": "B"}, &ae); code != http.StatusConflict || ae.Error.Code != "CUSTOMER_PHONE_EXISTS" {
			t.Errorf("second customer with phone %q = %d %+v, want 409 CUSTOMER_PHONE_EXISTS", p, code, ae.Error)
		}
	}
	ids := e.importCustomers(t, audCustomer{audPhone(1), "C", "Nairobi", "Shoes"}, audCustomer{audPhone(2), "D", "Nairobi", "Shoes"})
	all := append([]int64{first.ID}, ids...)

	byIDs := e.newCampaign(t, "sms", nil)
	res := e.mustSend(t, byIDs.ID, map[string]any{"customer_ids": append(slices.Clone(all), first.ID, ids[0])})
	if res.MessagesQueued != 3 || res.DuplicatesRemoved != 2 {
		t.Errorf("send with duplicates = %+v, want 3 queued, 2 duplicates removed", res)
	}
	everyone := e.newCampaign(t, "sms", map[string]any{"audience": map[string]any{"all": true}})
	e.mustSend(t, everyone.ID, map[string]any{})
	e.waitMaterialised(t, everyone.ID)
	for _, id := range []int64{byIDs.ID, everyone.ID} {
		var phones []string
		if err := e.db.Select(&phones, `
SELECT u.phone FROM outbound_messages m JOIN customers u ON u.id = m.customer_id
WHERE m.campaign_id = $1 ORDER BY u.phone`, id); err != nil {
			t.Fatal(err)
		}
		if len(phones) != 3 || len(slices.Compact(slices.Clone(phones))) != 3 {
			t.Errorf("campaign %d: messages to phones %v, want 3 distinct", id, phones)
		}
	}
}

// TestAudienceFilterSend sends audience filters and compares the customers
// messaged with exactly those matching: location and preferred_product
// combine with AND, match whole values only, and ignore case.
func TestAudienceFilterSend(t *testing.T) {
	t.Parallel()
	e := newAudEnv(t, 0)
	cs := []audCustomer{
		{audPhone(0), "A", "Nairobi", "Running Shoes"},
		{audPhone(1), "B", "NAIROBI", "running shoes"},
		{audPhone(2), "C", "nairobi", "Sandals"},
		{audPhone(3), "D", "Mombasa", "Running Shoes"},
		{audPhone(4), "E", "Mombasa", "Sandals"},
		{audPhone(5), "F", "Nairobi West", "Running Shoes"},
		{audPhone(6), "G", "Kisumu", "Running Shoes Pro"},
		{audPhone(7), "H", "", ""},
		{audPhone(8), "I", "ÉLDORET", "Crème"},
	}
	ids := e.importCustomers(t, cs...)
	pick := func(idx ...int) []int64 {
		out := make([]int64, len(idx))
		for i, k := range idx {
			out[i] = ids[k]
		}
		return audSorted(out...)
	}
	tests := []struct {
		name     string
		audience map[string]any
		want     []int64
	}{
		{"location", map[string]any{"location": "Nairobi"}, pick(0, 1, 2)},
		{"product", map[string]any{"preferred_product": "Running Shoes"}, pick(0, 1, 3, 5)},
		{"both", map[string]any{"location": "Nairobi", "preferred_product": "Running Shoes"}, pick(0, 1)},
		{"case-insensitive", map[string]any{"location": "nAiRoBi", "preferred_product": "RUNNING SHOES"}, pick(0, 1)},
		{"other location", map[string]any{"location": "mombasa"}, pick(3, 4)},
		{"whole value only", map[string]any{"location": "Nairobi West"}, pick(5)},
		{"unicode case", map[string]any{"location": "éldoret", "preferred_product": "CRÈME"}, pick(8)},
		{"all", map[string]any{"all": true}, pick(0, 1, 2, 3, 4, 5, 6, 7, 8)},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			c := e.newCampaign(t, "whatsapp", nil)
			res := e.mustSend(t, c.ID, map[string]any{"audience": tt.audience})
			if res.MessagesQueued != int64(len(tt.want)) || res.SkippedOptedOut != 0 || res.DuplicatesRemoved != 0 {
				t.Errorf("send = %+v, want %d queued", res, len(tt.want))
			}
			e.waitMaterialised(t, c.ID)
			if diff := cmp.Diff(tt.want, e.recipients(t, c.ID)); diff != "" {
				t.Errorf("recipients (-want +got):\n%s", diff)
			}
			if s := e.stats(t, c.ID); s["total"] != int64(len(tt.want)) || s["pending"] != int64(len(tt.want)) {
				t.Errorf("stats = %v, want %d pending", s, len(tt.want))
			}
		})
	}
}

// TestAudienceSendValidation checks that malformed audiences are refused
// with a 400 and change nothing.
func TestAudienceSendValidation(t *testing.T) {
	t.Parallel()
	e := newAudEnv(t, 0)
	ids := e.importCustomers(t, audCustomer{audPhone(0), "A", "Nairobi", "Shoes"})
	tests := []struct {
		name  string
		body  any
		code  string
		field string
	}{
		{"all plus location", map[string]any{"audience": map[string]any{"all": true, "location": "Nairobi"}}, "VALIDATION_ERROR", "audience"},
		{"all plus product", map[string]any{"audience": map[string]any{"all": true, "preferred_product": "Shoes"}}, "VALIDATION_ERROR", "audience"},
		{"customer_ids plus audience", map[string]any{"customer_ids": ids, "audience": map[string]any{"all": true}}, "VALIDATION_ERROR", "audience"},
		{"customer_ids plus filter audience", map[string]any{"customer_ids": ids, "audience": map[string]any{"location": "Nairobi"}}, "VALIDATION_ERROR", "audience"},
		{"empty audience", map[string]any{"audience": map[string]any{}}, "VALIDATION_ERROR", "audience"},
		{"all false", map[string]any{"audience": map[string]any{"all": false}}, "VALIDATION_ERROR", "audience"},
		{"blank filter", map[string]any{"audience": map[string]any{"location": "  "}}, "VALIDATION_ERROR", "audience"},
		{"no audience stored", map[string]any{}, "VALIDATION_ERROR", ""},
		{"unknown audience key", map[string]any{"audience": map[string]any{"city": "Nairobi"}}, "INVALID_JSON", ""},
		{"wrong type", map[string]any{"audience": map[string]any{"all": "yes"}}, "INVALID_JSON", ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			c := e.newCampaign(t, "sms", nil)
			code, _, ae := e.send(t, c.ID, tt.body)
			if code != http.StatusBadRequest || ae.Error.Code != tt.code || (tt.field != "" && ae.Error.Details["field"] != tt.field) {
				t.Errorf("send %v = %d %+v, want 400 %s naming %q", tt.body, code, ae.Error, tt.code, tt.field)
			}
			if st := e.status(t, c.ID); st != "draft" {
				t.Errorf("status after a refused send = %s, want draft", st)
			}
			if n := e.countRows(t, `SELECT count(*) FROM outbound_messages WHERE campaign_id = $1`, c.ID); n != 0 {
				t.Errorf("%d messages after a refused send", n)
			}
		})
	}
}

// TestAudienceEmpty checks EMPTY_AUDIENCE: a send matching nobody, or only
// customers opted out of the channel, is a 422 and changes nothing; the
// campaign can still be sent afterwards.
func TestAudienceEmpty(t *testing.T) {
	t.Parallel()
	e := newAudEnv(t, 0)
	ids := e.importCustomers(t,
		audCustomer{audPhone(0), "A", "Nairobi", "Shoes"},
		audCustomer{audPhone(1), "B", "Nairobi", "Shoes"},
		audCustomer{audPhone(2), "C", "Mombasa", "Sandals"},
	)
	e.optOut(t, ids[0], "sms")
	e.optOut(t, ids[1], "sms")

	tests := []struct {
		name    string
		body    any
		skipped float64
	}{
		{"no match", map[string]any{"audience": map[string]any{"location": "Atlantis"}}, 0},
		{"no match on both fields", map[string]any{"audience": map[string]any{"location": "Mombasa", "preferred_product": "Shoes"}}, 0},
		{"all matches opted out", map[string]any{"audience": map[string]any{"location": "Nairobi"}}, 2},
		{"all ids opted out", map[string]any{"customer_ids": ids[:2]}, 2},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			c := e.newCampaign(t, "sms", nil)
			code, _, ae := e.send(t, c.ID, tt.body)
			if code != http.StatusUnprocessableEntity || ae.Error.Code != "EMPTY_AUDIENCE" || ae.Error.Message == "" {
				t.Fatalf("send %v = %d %+v, want 422 EMPTY_AUDIENCE", tt.body, code, ae.Error)
			}
			if got := ae.Error.Details["skipped_opted_out"]; got != tt.skipped {
				t.Errorf("details.skipped_opted_out = %v, want %v", got, tt.skipped)
			}
			if st := e.status(t, c.ID); st != "draft" {
				t.Errorf("status = %s, want draft", st)
			}
			if n := e.countRows(t, `SELECT count(*) FROM outbound_messages WHERE campaign_id = $1`, c.ID); n != 0 {
				t.Errorf("%d messages created", n)
			}
			if n := e.countRows(t, `SELECT count(*) FROM dispatch_batches WHERE campaign_id = $1`, c.ID); n != 0 {
				t.Errorf("%d dispatch batches created", n)
			}
			if s := e.stats(t, c.ID); s["total"] != 0 {
				t.Errorf("stats = %v, want none", s)
			}
			// Nothing is left behind that would stop a later send.
			res := e.mustSend(t, c.ID, map[string]any{"customer_ids": ids[2:]})
			if res.MessagesQueued != 1 {
				t.Errorf("later send = %+v, want 1 queued", res)
			}
		})
	}
}

// TestOptOutSkippedAtSend checks that customers opted out of a channel get no
// message on it, for id and audience sends alike, are counted in
// skipped_opted_out, and still get messages on the other channel; and that
// opting back in makes them reachable again.
func TestOptOutSkippedAtSend(t *testing.T) {
	t.Parallel()
	e := newAudEnv(t, 8)
	var cs []audCustomer
	for i := range 10 {
		cs = append(cs, audCustomer{audPhone(i), fmt.Sprintf("N%d", i), []string{"Nairobi", "Mombasa"}[i%2], "Shoes"})
	}
	ids := e.importCustomers(t, cs...)
	smsOut := []int64{ids[0], ids[1], ids[2]} // ids[0], ids[2] in Nairobi
	for _, id := range smsOut {
		e.optOut(t, id, "sms")
	}
	e.optOut(t, ids[9], "whatsapp")
	e.optOut(t, ids[9], "whatsapp") // twice: still one opt-out

	without := func(drop ...int64) []int64 {
		return audSorted(slices.DeleteFunc(slices.Clone(ids), func(id int64) bool { return slices.Contains(drop, id) })...)
	}
	nairobi := []int64{ids[0], ids[2], ids[4], ids[6], ids[8]}
	tests := []struct {
		name, channel string
		body          map[string]any
		want          []int64
		skipped       int64
	}{
		{"sms ids", "sms", map[string]any{"customer_ids": ids}, without(smsOut...), 3},
		{"sms all", "sms", map[string]any{"audience": map[string]any{"all": true}}, without(smsOut...), 3},
		{"sms filter", "sms", map[string]any{"audience": map[string]any{"location": "Nairobi"}}, audSorted(ids[4], ids[6], ids[8]), 2},
		{"whatsapp ids", "whatsapp", map[string]any{"customer_ids": ids}, without(ids[9]), 1},
		{"whatsapp all", "whatsapp", map[string]any{"audience": map[string]any{"all": true}}, without(ids[9]), 1},
		{"whatsapp filter", "whatsapp", map[string]any{"audience": map[string]any{"location": "Nairobi"}}, audSorted(nairobi...), 0},
	}
	// The group returns once its parallel subtests are done, so they all
	// see the opt-outs before the last subtest removes one.
	t.Run("sends", func(t *testing.T) {
		for _, tt := range tests {
			t.Run(tt.name, func(t *testing.T) {
				t.Parallel()
				c := e.newCampaign(t, tt.channel, nil)
				res := e.mustSend(t, c.ID, tt.body)
				if res.MessagesQueued != int64(len(tt.want)) || res.SkippedOptedOut != tt.skipped {
					t.Errorf("send = %+v, want %d queued, %d skipped", res, len(tt.want), tt.skipped)
				}
				e.waitStatus(t, c.ID, "sent", 30*time.Second)
				if diff := cmp.Diff(tt.want, e.recipients(t, c.ID)); diff != "" {
					t.Errorf("recipients (-want +got):\n%s", diff)
				}
				if s := e.stats(t, c.ID); s["sent"] != int64(len(tt.want)) || s["total"] != int64(len(tt.want)) {
					t.Errorf("stats = %v, want %d sent", s, len(tt.want))
				}
			})
		}
	})

	t.Run("opted back in", func(t *testing.T) {
		req, _ := http.NewRequest("DELETE", fmt.Sprintf("%s/customers/%d/opt-out?channel=sms", e.base, ids[0]), nil)
		resp, err := e.client.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		if resp.StatusCode != http.StatusOK {
			t.Fatalf("opt in: status %d", resp.StatusCode)
		}
		c := e.newCampaign(t, "sms", nil)
		res := e.mustSend(t, c.ID, map[string]any{"audience": map[string]any{"all": true}})
		if res.MessagesQueued != 8 || res.SkippedOptedOut != 2 {
			t.Errorf("send after opting back in = %+v, want 8 queued, 2 skipped", res)
		}
	})
}

// TestOptOutAfterSendCancelsDelivery opts customers out after their messages
// were created and queued but before any was delivered (an API-only replica
// accepts the sends), then starts a replica with workers on the same
// database and queue: the opted-out customers' messages end cancelled with
// the opt-out as last_error and never reach the provider; the others, and
// the other channel, are sent.
func TestOptOutAfterSendCancelsDelivery(t *testing.T) {
	t.Parallel()
	e := newAudEnv(t, 0)
	ids := e.importCustomers(t,
		audCustomer{audPhone(0), "A", "Nairobi", "Shoes"},
		audCustomer{audPhone(1), "B", "Nairobi", "Shoes"},
		audCustomer{audPhone(2), "C", "Nairobi", "Shoes"},
		audCustomer{audPhone(3), "D", "Mombasa", "Shoes"},
		audCustomer{audPhone(4), "E", "Mombasa", "Shoes"},
	)
	smsOut, waOut := ids[1], ids[3]

	byIDs := e.newCampaign(t, "sms", nil)
	byAudience := e.newCampaign(t, "sms", nil)
	whatsapp := e.newCampaign(t, "whatsapp", nil)
	for _, c := range []int64{byIDs.ID, byAudience.ID, whatsapp.ID} {
		body := map[string]any{"audience": map[string]any{"all": true}}
		if c == byIDs.ID {
			body = map[string]any{"customer_ids": ids}
		}
		if res := e.mustSend(t, c, body); res.MessagesQueued != 5 || res.SkippedOptedOut != 0 {
			t.Fatalf("send campaign %d = %+v, want 5 queued", c, res)
		}
		e.waitMaterialised(t, c)
	}
	if n := e.countRows(t, `SELECT count(*) FROM outbound_messages WHERE status = 'pending'`); n != 15 {
		t.Fatalf("%d pending messages before the opt-outs, want 15", n)
	}
	e.optOut(t, smsOut, "sms")
	e.optOut(t, waOut, "whatsapp")
	e.stop(t)

	cfg := e.cfg
	cfg.WorkerConcurrency = 4
	workers := &audEnv{testApp: startApp(t, cfg), cfg: cfg, db: e.db}
	for _, tc := range []struct {
		campaign int64
		out      int64
		channel  string
	}{{byIDs.ID, smsOut, "sms"}, {byAudience.ID, smsOut, "sms"}, {whatsapp.ID, waOut, "whatsapp"}} {
		workers.waitStatus(t, tc.campaign, "sent", 30*time.Second)
		s := workers.stats(t, tc.campaign)
		if s["total"] != 5 || s["sent"] != 4 || s["cancelled"] != 1 {
			t.Errorf("campaign %d: stats %v, want 4 sent, 1 cancelled", tc.campaign, s)
		}
		var msgs []struct {
			ID         int64   `db:"id"`
			CustomerID int64   `db:"customer_id"`
			Status     string  `db:"status"`
			LastError  *string `db:"last_error"`
			Delivered  bool    `db:"delivered"`
		}
		if err := workers.db.Select(&msgs, `
SELECT m.id, m.customer_id, m.status, m.last_error,
       EXISTS (SELECT 1 FROM mock_deliveries d WHERE d.message_id = m.id) AS delivered
FROM outbound_messages m WHERE m.campaign_id = $1 ORDER BY m.customer_id`, tc.campaign); err != nil {
			t.Fatal(err)
		}
		for _, m := range msgs {
			if m.CustomerID == tc.out {
				if m.Status != "cancelled" || m.Delivered || m.LastError == nil ||
					!strings.Contains(*m.LastError, "opted out") || !strings.Contains(*m.LastError, tc.channel) {
					t.Errorf("campaign %d: message to the opted-out customer: status %s, delivered %v, last_error %v; want cancelled, undelivered, naming the %s opt-out",
						tc.campaign, m.Status, m.Delivered, audDeref(m.LastError), tc.channel)
				}
				continue
			}
			if m.Status != "sent" || !m.Delivered {
				t.Errorf("campaign %d: message %d to customer %d: status %s, delivered %v; want sent and delivered",
					tc.campaign, m.ID, m.CustomerID, m.Status, m.Delivered)
			}
		}
	}
}

func audDeref(s *string) string {
	if s == nil {
		return "<nil>"
	}
	return *s
}

// TestAudienceMaterialisedBeforeSent sends to 16,000 customers, the first
// chunk of 1,000 and three of 5,000, with workers delivering while later
// chunks are still being created: the campaign must not be finished until
// its whole audience has messages, and ends sent with every one delivered.
func TestAudienceMaterialisedBeforeSent(t *testing.T) {
	t.Parallel()
	const n = 16_000
	e := newAudEnv(t, 50)
	if _, err := e.db.Exec(`
INSERT INTO customers (phone, first_name, last_name, location, preferred_product)
SELECT '+1555' || lpad(g::text, 7, '0'), 'First' || g, 'Last' || g, 'Nairobi', 'Shoes'
FROM generate_series(1, $1) AS g`, n); err != nil {
		t.Fatal(err)
	}
	if _, err := e.db.Exec(`ANALYZE customers`); err != nil {
		t.Fatal(err)
	}
	c := e.newCampaign(t, "sms", nil)
	res := e.mustSend(t, c.ID, map[string]any{"audience": map[string]any{"all": true}})
	if res.MessagesQueued != n {
		t.Fatalf("send = %+v, want %d queued", res, n)
	}

	// Watch the campaign and its materialisation together, in one snapshot
	// (one statement), until it is no longer sending. The messages are only
	// counted once it is: counting them on every poll would slow delivery.
	var sawPartial bool
	waitFor(t, "campaign finished", 3*time.Minute, func() bool {
		var snap struct {
			Status        string `db:"status"`
			Materialising int    `db:"materialising"`
			Started       bool   `db:"started"`
			Messages      int    `db:"messages"`
		}
		if err := e.db.Get(&snap, `
SELECT k.status,
       (SELECT count(*) FROM dispatch_batches b WHERE b.campaign_id = k.id AND b.filter IS NOT NULL) AS materialising,
       EXISTS (SELECT 1 FROM dispatch_batches b WHERE b.campaign_id = k.id AND b.filter IS NOT NULL AND b.cursor > 0) AS started,
       CASE WHEN k.status = 'sending' THEN 0
            ELSE (SELECT count(*) FROM outbound_messages m WHERE m.campaign_id = k.id) END AS messages
FROM campaigns k WHERE k.id = $1`, c.ID); err != nil {
			t.Fatal(err)
		}
		sawPartial = sawPartial || snap.Started
		if snap.Status != "sending" && (snap.Materialising > 0 || snap.Messages < n) {
			t.Fatalf("campaign %s with %d of %d messages created, %d batches materialising",
				snap.Status, snap.Messages, n, snap.Materialising)
		}
		return snap.Status != "sending"
	})
	if !sawPartial {
		t.Log("the audience was fully materialised before the first poll; chunks were not observed in progress")
	}
	if st := e.status(t, c.ID); st != "sent" {
		t.Fatalf("status = %s, want sent", st)
	}
	if s := e.stats(t, c.ID); s["total"] != n || s["sent"] != n {
		t.Errorf("stats = %v, want %d sent", s, n)
	}
	if got := e.countRows(t, `SELECT count(DISTINCT customer_id) FROM outbound_messages WHERE campaign_id = $1`, c.ID); got != n {
		t.Errorf("%d distinct recipients, want %d", got, n)
	}
	if got := e.countRows(t, `
SELECT count(*) FROM mock_deliveries d JOIN outbound_messages m ON m.id = d.message_id
WHERE m.campaign_id = $1 AND d.calls = 1`, c.ID); got != n {
		t.Errorf("%d messages delivered exactly once, want %d", got, n)
	}
}

// TestStoredAudienceSend creates campaigns with an audience or customer_ids,
// shows them in the campaign object, and sends each with {}.
func TestStoredAudienceSend(t *testing.T) {
	t.Parallel()
	e := newAudEnv(t, 0)
	ids := e.importCustomers(t,
		audCustomer{audPhone(0), "A", "Nairobi", "Shoes"},
		audCustomer{audPhone(1), "B", "nairobi", "Sandals"},
		audCustomer{audPhone(2), "C", "Mombasa", "Shoes"},
	)

	t.Run("filter", func(t *testing.T) {
		t.Parallel()
		c := e.newCampaign(t, "sms", map[string]any{"audience": map[string]any{"location": "Nairobi"}})
		audAssertAudience(t, c.Audience, `{"location":"Nairobi"}`)
		audAssertAudience(t, e.getCampaign(t, c.ID)["audience"], `{"location":"Nairobi"}`)
		res := e.mustSend(t, c.ID, map[string]any{})
		if res.MessagesQueued != 2 {
			t.Errorf("send {} = %+v, want 2 queued", res)
		}
		e.waitMaterialised(t, c.ID)
		if diff := cmp.Diff(audSorted(ids[0], ids[1]), e.recipients(t, c.ID)); diff != "" {
			t.Errorf("recipients (-want +got):\n%s", diff)
		}
	})
	t.Run("all", func(t *testing.T) {
		t.Parallel()
		c := e.newCampaign(t, "sms", map[string]any{"audience": map[string]any{"all": true}})
		audAssertAudience(t, c.Audience, `{"all":true}`)
		if res := e.mustSend(t, c.ID, map[string]any{}); res.MessagesQueued != 3 {
			t.Errorf("send {} = %+v, want 3 queued", res)
		}
		e.waitMaterialised(t, c.ID)
		if diff := cmp.Diff(audSorted(ids...), e.recipients(t, c.ID)); diff != "" {
			t.Errorf("recipients (-want +got):\n%s", diff)
		}
	})
	t.Run("customer_ids", func(t *testing.T) {
		t.Parallel()
		c := e.newCampaign(t, "whatsapp", map[string]any{"customer_ids": []int64{ids[2], ids[0], ids[2]}})
		audAssertAudience(t, c.Audience, fmt.Sprintf(`{"customer_ids":[%d,%d]}`, ids[2], ids[0]))
		if res := e.mustSend(t, c.ID, map[string]any{}); res.MessagesQueued != 2 {
			t.Errorf("send {} = %+v, want 2 queued", res)
		}
		if diff := cmp.Diff(audSorted(ids[0], ids[2]), e.recipients(t, c.ID)); diff != "" {
			t.Errorf("recipients (-want +got):\n%s", diff)
		}
	})
	t.Run("none stored", func(t *testing.T) {
		t.Parallel()
		c := e.newCampaign(t, "sms", nil)
		if string(c.Audience) != "null" {
			t.Errorf("audience of a campaign created without one = %s, want null", c.Audience)
		}
		if code, _, ae := e.send(t, c.ID, map[string]any{}); code != http.StatusBadRequest || ae.Error.Code != "VALIDATION_ERROR" {
			t.Errorf("send {} = %d %+v, want 400 VALIDATION_ERROR", code, ae.Error)
		}
	})
	t.Run("refused at create", func(t *testing.T) {
		t.Parallel()
		for _, body := range []map[string]any{
			{"customer_ids": ids, "audience": map[string]any{"all": true}},
			{"audience": map[string]any{"all": true, "location": "Nairobi"}},
			{"audience": map[string]any{}},
			{"customer_ids": []int64{}},
			{"customer_ids": []int64{-1}},
		} {
			body["name"], body["channel"], body["base_template"] = "x", "sms", "hi"
			var ae apiError
			if code := e.do(t, "POST", "/campaigns", body, &ae); code != http.StatusBadRequest || ae.Error.Code != "VALIDATION_ERROR" {
				t.Errorf("create %v = %d %+v, want 400 VALIDATION_ERROR", body, code, ae.Error)
			}
		}
	})
}

// audAssertAudience compares a campaign's audience JSON with want.
func audAssertAudience(t *testing.T, got json.RawMessage, want string) {
	t.Helper()
	var g, w any
	if err := json.Unmarshal(got, &g); err != nil {
		t.Fatalf("decode audience %s: %v", got, err)
	}
	if err := json.Unmarshal([]byte(want), &w); err != nil {
		t.Fatal(err)
	}
	if diff := cmp.Diff(w, g); diff != "" {
		t.Errorf("audience (-want +got):\n%s", diff)
	}
}

// patch sends PATCH /campaigns/{id} with body (a string is sent as is).
func (e *audEnv) patch(t *testing.T, id int64, body any, out any) int {
	t.Helper()
	if s, ok := body.(string); ok {
		req, err := http.NewRequest("PATCH", fmt.Sprintf("%s/campaigns/%d", e.base, id), strings.NewReader(s))
		if err != nil {
			t.Fatal(err)
		}
		req.Header.Set("Content-Type", "application/json")
		resp, err := e.client.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		if err := json.NewDecoder(resp.Body).Decode(out); err != nil {
			t.Fatalf("PATCH %q: status %d: %v", s, resp.StatusCode, err)
		}
		return resp.StatusCode
	}
	return e.do(t, "PATCH", fmt.Sprintf("/campaigns/%d", id), body, out)
}

// TestPatchCampaign edits a draft and a scheduled campaign field by field,
// checks every refused edit is a 400 naming the field and changes nothing,
// and that a campaign being sent can no longer be edited.
func TestPatchCampaign(t *testing.T) {
	t.Parallel()
	e := newAudEnv(t, 0)
	ids := e.importCustomers(t,
		audCustomer{audPhone(0), "A", "Nairobi", "Shoes"},
		audCustomer{audPhone(1), "B", "Mombasa", "Shoes"},
		audCustomer{audPhone(2), "C", "Mombasa", "Sandals"},
	)
	c := e.newCampaign(t, "sms", map[string]any{"name": "Before"})
	future := time.Now().Add(48 * time.Hour).UTC().Truncate(time.Second)

	steps := []struct {
		name  string
		body  map[string]any
		check func(t *testing.T, got audCampaign)
	}{
		{"name", map[string]any{"name": "  After 🚀 "}, func(t *testing.T, got audCampaign) {
			if got.Name != "After 🚀" {
				t.Errorf("name = %q", got.Name)
			}
		}},
		{"base_template", map[string]any{"base_template": "Hello {first_name} in {location}"}, func(t *testing.T, got audCampaign) {
			if got.BaseTemplate != "Hello {first_name} in {location}" {
				t.Errorf("base_template = %q", got.BaseTemplate)
			}
		}},
		{"scheduled_at future", map[string]any{"scheduled_at": future.Format(time.RFC3339)}, func(t *testing.T, got audCampaign) {
			if got.Status != "scheduled" || got.ScheduledAt == nil || !got.ScheduledAt.Equal(future) {
				t.Errorf("status %s, scheduled_at %v; want scheduled at %v", got.Status, got.ScheduledAt, future)
			}
		}},
		{"name while scheduled", map[string]any{"name": "Scheduled"}, func(t *testing.T, got audCampaign) {
			if got.Status != "scheduled" || got.Name != "Scheduled" {
				t.Errorf("status %s, name %q; want scheduled, Scheduled", got.Status, got.Name)
			}
		}},
		{"scheduled_at null", map[string]any{"scheduled_at": nil}, func(t *testing.T, got audCampaign) {
			if got.Status != "draft" || got.ScheduledAt != nil {
				t.Errorf("status %s, scheduled_at %v; want draft, null", got.Status, got.ScheduledAt)
			}
		}},
		{"audience", map[string]any{"audience": map[string]any{"location": "Mombasa"}}, func(t *testing.T, got audCampaign) {
			audAssertAudience(t, got.Audience, `{"location":"Mombasa"}`)
		}},
		{"customer_ids", map[string]any{"customer_ids": []int64{ids[1], ids[0], ids[1]}}, func(t *testing.T, got audCampaign) {
			audAssertAudience(t, got.Audience, fmt.Sprintf(`{"customer_ids":[%d,%d]}`, ids[1], ids[0]))
		}},
		{"audience null", map[string]any{"audience": nil}, func(t *testing.T, got audCampaign) {
			if string(got.Audience) != "null" {
				t.Errorf("audience = %s, want null", got.Audience)
			}
		}},
		{"customer_ids null", map[string]any{"customer_ids": nil}, func(t *testing.T, got audCampaign) {
			if string(got.Audience) != "null" {
				t.Errorf("audience = %s, want null", got.Audience)
			}
		}},
		{"several fields", map[string]any{
			"name": "Final", "audience": map[string]any{"location": "mombasa", "preferred_product": "shoes"},
			"scheduled_at": future.Format(time.RFC3339),
		}, func(t *testing.T, got audCampaign) {
			if got.Name != "Final" || got.Status != "scheduled" {
				t.Errorf("name %q, status %s; want Final, scheduled", got.Name, got.Status)
			}
			audAssertAudience(t, got.Audience, `{"location":"mombasa","preferred_product":"shoes"}`)
		}},
	}
	for _, st := range steps {
		// Sequential: each step edits the same campaign.
		t.Run(st.name, func(t *testing.T) {
			var got audCampaign
			if code := e.patch(t, c.ID, st.body, &got); code != http.StatusOK {
				t.Fatalf("PATCH %v: status %d", st.body, code)
			}
			st.check(t, got)
			var stored audCampaign
			if code := e.do(t, "GET", fmt.Sprintf("/campaigns/%d", c.ID), nil, &stored); code != http.StatusOK {
				t.Fatalf("get: status %d", code)
			}
			st.check(t, stored)
		})
	}

	refused := []struct {
		name  string
		body  any
		code  string
		field string
	}{
		{"empty object", map[string]any{}, "", ""},
		{"no body", "", "", ""},
		{"null body", "null", "", ""},
		{"unknown key", map[string]any{"nme": "x"}, "INVALID_JSON", "nme"},
		{"channel is not editable", map[string]any{"channel": "whatsapp"}, "INVALID_JSON", "channel"},
		{"status is not editable", map[string]any{"status": "sent"}, "INVALID_JSON", "status"},
		{"name wrong type", map[string]any{"name": 5}, "INVALID_JSON", "name"},
		{"not an object", "[1,2]", "INVALID_JSON", ""},
		{"malformed", `{"name":`, "INVALID_JSON", ""},
		{"blank name", map[string]any{"name": "   "}, "VALIDATION_ERROR", "name"},
		{"long name", map[string]any{"name": strings.Repeat("x", 201)}, "VALIDATION_ERROR", "name"},
		{"blank template", map[string]any{"base_template": " "}, "VALIDATION_ERROR", "base_template"},
		{"unknown placeholder", map[string]any{"base_template": "Hi {nickname}"}, "VALIDATION_ERROR", "base_template"},
		{"long template", map[string]any{"base_template": strings.Repeat("x", 4097)}, "VALIDATION_ERROR", "base_template"},
		{"scheduled_at past", map[string]any{"scheduled_at": "2001-01-01T00:00:00Z"}, "VALIDATION_ERROR", "scheduled_at"},
		{"scheduled_at malformed", map[string]any{"scheduled_at": "tomorrow"}, "VALIDATION_ERROR", "scheduled_at"},
		{"audience all plus filter", map[string]any{"audience": map[string]any{"all": true, "location": "Nairobi"}}, "VALIDATION_ERROR", "audience"},
		{"audience empty", map[string]any{"audience": map[string]any{}}, "VALIDATION_ERROR", "audience"},
		{"audience unknown key", map[string]any{"audience": map[string]any{"city": "Nairobi"}}, "INVALID_JSON", "audience.city"},
		{"customer_ids empty", map[string]any{"customer_ids": []int64{}}, "VALIDATION_ERROR", "customer_ids"},
		{"customer_ids not positive", map[string]any{"customer_ids": []int64{0}}, "VALIDATION_ERROR", "customer_ids"},
		{"customer_ids and audience", map[string]any{"customer_ids": ids, "audience": map[string]any{"all": true}}, "VALIDATION_ERROR", "audience"},
	}
	before := e.getCampaign(t, c.ID)
	for _, tt := range refused {
		t.Run("refused/"+tt.name, func(t *testing.T) {
			var ae apiError
			code := e.patch(t, c.ID, tt.body, &ae)
			if code != http.StatusBadRequest || ae.Error.Message == "" ||
				(tt.code != "" && ae.Error.Code != tt.code) || (tt.field != "" && ae.Error.Details["field"] != tt.field) {
				t.Errorf("PATCH %v = %d %+v, want 400 %s naming %q", tt.body, code, ae.Error, tt.code, tt.field)
			}
			if diff := cmp.Diff(before, e.getCampaign(t, c.ID)); diff != "" {
				t.Errorf("a refused PATCH changed the campaign (-before +after):\n%s", diff)
			}
		})
	}

	t.Run("unknown campaign", func(t *testing.T) {
		var ae apiError
		if code := e.patch(t, 999_999, map[string]any{"name": "x"}, &ae); code != http.StatusNotFound || ae.Error.Code != "CAMPAIGN_NOT_FOUND" {
			t.Errorf("PATCH unknown = %d %+v, want 404 CAMPAIGN_NOT_FOUND", code, ae.Error)
		}
	})

	// The scheduled campaign is sent now with its stored (patched) audience,
	// then can no longer be edited.
	t.Run("not editable once sending", func(t *testing.T) {
		res := e.mustSend(t, c.ID, map[string]any{})
		if res.MessagesQueued != 1 {
			t.Errorf("send {} = %+v, want 1 queued (Mombasa and Shoes)", res)
		}
		e.waitMaterialised(t, c.ID)
		if diff := cmp.Diff([]int64{ids[1]}, e.recipients(t, c.ID)); diff != "" {
			t.Errorf("recipients (-want +got):\n%s", diff)
		}
		sending := e.getCampaign(t, c.ID)
		for _, body := range []map[string]any{
			{"name": "Too late"},
			{"scheduled_at": nil},
			{"audience": map[string]any{"all": true}},
		} {
			var ae apiError
			code := e.patch(t, c.ID, body, &ae)
			if code != http.StatusConflict || ae.Error.Code != "CAMPAIGN_NOT_EDITABLE" || ae.Error.Details["status"] != "sending" {
				t.Errorf("PATCH %v of a sending campaign = %d %+v, want 409 CAMPAIGN_NOT_EDITABLE", body, code, ae.Error)
			}
		}
		if diff := cmp.Diff(sending, e.getCampaign(t, c.ID)); diff != "" {
			t.Errorf("a refused PATCH changed the campaign (-before +after):\n%s", diff)
		}
		if code := e.do(t, "POST", fmt.Sprintf("/campaigns/%d/cancel", c.ID), nil, nil); code != http.StatusOK {
			t.Fatalf("cancel: status %d", code)
		}
		var ae apiError
		if code := e.patch(t, c.ID, map[string]any{"name": "x"}, &ae); code != http.StatusConflict || ae.Error.Code != "CAMPAIGN_NOT_EDITABLE" {
			t.Errorf("PATCH of a cancelled campaign = %d %+v, want 409 CAMPAIGN_NOT_EDITABLE", code, ae.Error)
		}
	})
}

// TestAudienceStatsKeys checks that the stats of a campaign with no
// messages, with pending ones and with cancelled ones have every key and sum
// to total.
func TestAudienceStatsKeys(t *testing.T) {
	t.Parallel()
	e := newAudEnv(t, 0)
	ids := e.importCustomers(t, audCustomer{audPhone(0), "A", "Nairobi", "Shoes"}, audCustomer{audPhone(1), "B", "Nairobi", "Shoes"})
	c := e.newCampaign(t, "sms", nil)
	if s := e.stats(t, c.ID); s["total"] != 0 {
		t.Errorf("draft stats = %v, want all zero", s)
	}
	e.mustSend(t, c.ID, map[string]any{"customer_ids": ids})
	if s := e.stats(t, c.ID); s["total"] != 2 || s["pending"] != 2 {
		t.Errorf("stats after send = %v, want 2 pending", s)
	}
	if code := e.do(t, "POST", fmt.Sprintf("/campaigns/%d/cancel", c.ID), nil, nil); code != http.StatusOK {
		t.Fatalf("cancel: status %d", code)
	}
	if s := e.stats(t, c.ID); s["total"] != 2 || s["cancelled"] != 2 {
		t.Errorf("stats after cancel = %v, want 2 cancelled", s)
	}
}

// TestAudienceQueuedOnce checks that an audience send's ids reach the queue
// once, however often the sweeper, the feeder and resume run meanwhile:
// nothing consumes the queue here (an API-only replica), so its length
// counts pushes.
func TestAudienceQueuedOnce(t *testing.T) {
	t.Parallel()
	cfg := testConfig(t)
	cfg.WorkerConcurrency = 0
	cfg.Sweeper.Interval = 20 * time.Millisecond
	ta := startApp(t, cfg)
	e := &audEnv{testApp: ta, cfg: cfg, db: audOpenDB(t, cfg)}
	ids := e.importCustomers(t,
		audCustomer{audPhone(0), "A", "Nairobi", "Shoes"},
		audCustomer{audPhone(1), "B", "Nairobi", "Shoes"},
		audCustomer{audPhone(2), "C", "Nairobi", "Shoes"},
	)
	c := e.newCampaign(t, "sms", nil)
	e.mustSend(t, c.ID, map[string]any{"audience": map[string]any{"all": true}})
	queueLen := func() int64 {
		n, err := e.App.rdb.LLen(context.Background(), queue.New(e.App.rdb, cfg.Redis.KeyPrefix, cfg.Queue.Name).Keys().Ready).Result()
		if err != nil {
			t.Fatal(err)
		}
		return n
	}
	waitFor(t, "the audience queued", 30*time.Second, func() bool { return queueLen() == int64(len(ids)) })
	for range 20 { // pause/resume storm
		e.do(t, "POST", fmt.Sprintf("/campaigns/%d/pause", c.ID), nil, nil)
		e.do(t, "POST", fmt.Sprintf("/campaigns/%d/resume", c.ID), nil, nil)
	}
	// Let several sweeps and feeder rounds pass; none may push again.
	time.Sleep(25 * cfg.Sweeper.Interval)
	if n := queueLen(); n != int64(len(ids)) {
		t.Errorf("the queue holds %d ids for a send of %d messages: something pushed them twice", n, len(ids))
	}
}
