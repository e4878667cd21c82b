package app

import (
	"context"
	"database/sql"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"github.com/labstack/echo/v4"

	"github.com/campaignd/dispatch/dashboard"
)

// Tests for hostile input, overload and fairness: message length limits,
// chunked bodies over the limit, HEAD, unknown customers in a stored
// audience, counts of a cancel during materialisation, and lifecycle
// actions posted by forms.

// TestMessageLengthLimit renders a message longer than its channel takes: the
// preview shows it with a warning, and delivery fails it for good, with the
// reason, without handing it to the provider. (A 4,080-character template
// once rendered to 68,000 characters and went out as one SMS.)
func TestMessageLengthLimit(t *testing.T) {
	t.Parallel()
	cfg := testConfig(t)
	cfg.Limits.SMSMaxChars = 100 // configured, not the default
	cfg.Sender.Ledger = "postgres"
	ta := startApp(t, cfg)
	db := openAppDB(t, cfg, false)
	ids := importCustomers(t, ta, db, "Nairobi") // first name C0

	long := "Hi {first_name}! " + strings.Repeat("a", 100) // renders to 107 characters
	type preview struct {
		RenderedMessage string   `json:"rendered_message"`
		Warnings        []string `json:"warnings"`
	}
	for _, tc := range []struct {
		channel, template string
		warnings          []string
	}{
		{"sms", long, []string{"rendered message is 107 characters; sms allows 100"}},
		{"whatsapp", long, []string{}}, // 4,096 by default
		{"sms", "Hi {first_name}!", []string{}},
	} {
		id, _ := mustCreateCampaign(t, ta, map[string]any{"channel": tc.channel, "base_template": tc.template})
		var p preview
		if code := ta.do(t, "POST", fmt.Sprintf("/campaigns/%d/personalized-preview", id), map[string]any{"customer_id": ids[0]}, &p); code != http.StatusOK {
			t.Fatalf("preview %s %q = %d", tc.channel, tc.template, code)
		}
		if diff := cmp.Diff(tc.warnings, p.Warnings); diff != "" {
			t.Errorf("preview %s %q: warnings (-want +got):\n%s", tc.channel, tc.template, diff)
		}
		if !strings.HasPrefix(p.RenderedMessage, "Hi C0!") {
			t.Errorf("preview %s: rendered %q", tc.channel, p.RenderedMessage)
		}
	}

	id, _ := mustCreateCampaign(t, ta, map[string]any{"base_template": long})
	sendTo(t, ta, id, ids)
	c := waitStatus(t, ta, id, "failed", 10*time.Second)
	if c.Stats.Failed != 1 || c.Stats.Sent != 0 {
		t.Errorf("stats %+v, want the one message failed", c.Stats)
	}
	var m struct {
		RetryCount int     `db:"retry_count"`
		LastError  *string `db:"last_error"`
	}
	if err := db.Get(&m, `SELECT retry_count, last_error FROM outbound_messages WHERE campaign_id = $1`, id); err != nil {
		t.Fatal(err)
	}
	want := "permanent: rendered message is 107 characters; sms allows 100"
	if m.RetryCount != 1 || m.LastError == nil || *m.LastError != want {
		t.Errorf("message: %d attempts, last_error %v; want 1 attempt and %q", m.RetryCount, m.LastError, want)
	}
	if l := readLedger(t, db, id); l.Rows != 0 {
		t.Errorf("the provider was given %d too-long messages", l.Rows)
	}
}

// chunked is a reader of unknown length, so the client sends the body with
// Transfer-Encoding: chunked and no Content-Length, and only reading it
// finds it is over the limit.
type chunked struct{ r io.Reader }

func (c chunked) Read(p []byte) (int, error) { return c.r.Read(p) }

// TestBodyLimitChunked sends bodies over the limit without a Content-Length:
// each is 413 PAYLOAD_TOO_LARGE, as one with a Content-Length is, not a 400.
func TestBodyLimitChunked(t *testing.T) {
	t.Parallel()
	cfg := testConfig(t)
	cfg.API.BodyLimit = "1KB"
	cfg.API.ImportBodyLimit = "1KB"
	cfg.WorkerConcurrency = 0
	ta := startApp(t, cfg)
	id, _ := mustCreateCampaign(t, ta, nil)

	jsonBody := `{"name":"` + strings.Repeat("x", 4000) + `","channel":"sms","base_template":"hi"}`
	var csv strings.Builder
	csv.WriteString("phone,first_name\n")
	for i := range 200 {
		fmt.Fprintf(&csv, "+25471%07d,C%d\n", i, i)
	}
	for _, tc := range []struct {
		name, path, contentType, body string
	}{
		{"json endpoint", "/campaigns", "application/json", jsonBody},
		{"bodiless action", fmt.Sprintf("/campaigns/%d/pause", id), "application/json", `{"x":"` + strings.Repeat("x", 4000) + `"}`},
		{"csv import", "/customers/import", "text/csv", csv.String()},
		{"json import", "/customers/import", "application/json", `[{"phone":"` + strings.Repeat("1", 4000) + `"}]`},
	} {
		t.Run(tc.name, func(t *testing.T) {
			req, err := http.NewRequest(http.MethodPost, ta.base+tc.path, chunked{strings.NewReader(tc.body)})
			if err != nil {
				t.Fatal(err)
			}
			req.ContentLength = -1 // unknown: sent chunked
			req.Header.Set("Content-Type", tc.contentType)
			resp, err := ta.client.Do(req)
			if err != nil {
				t.Fatal(err)
			}
			defer resp.Body.Close()
			var e apiError
			if err := json.NewDecoder(resp.Body).Decode(&e); err != nil {
				t.Fatalf("status %d, body is not the envelope: %v", resp.StatusCode, err)
			}
			if resp.StatusCode != http.StatusRequestEntityTooLarge || e.Error.Code != "PAYLOAD_TOO_LARGE" {
				t.Errorf("chunked body over the limit = %d %+v, want 413 PAYLOAD_TOO_LARGE", resp.StatusCode, e.Error)
			}
		})
	}
	if c := readCampaign(t, ta, id); c.Status != "draft" {
		t.Errorf("the refused action changed the campaign to %s", c.Status)
	}
}

// TestHeadAnswersLikeGet sends HEAD to every GET route: the same status and
// Content-Type as GET (never 405), no body, and the same authentication (a
// read key may, no key may not).
func TestHeadAnswersLikeGet(t *testing.T) {
	t.Parallel()
	cfg := testConfig(t)
	cfg.WorkerConcurrency = 0
	ta := startApp(t, cfg)
	db := openAppDB(t, cfg, false)
	importCustomers(t, ta, db, "Nairobi") // customer 1
	mustCreateCampaign(t, ta, nil)        // campaign 1
	read := ta.createKey(t, "reader", "read")

	gets := 0
	for _, r := range ta.server.Handler.(*echo.Echo).Routes() {
		if r.Method != http.MethodGet || dashboard.IsRoute(r.Path) {
			continue // the dashboard's pages are not API (its tests are dashboard_*_test.go)
		}
		gets++
		path := concretePath(r.Path)
		t.Run(r.Path, func(t *testing.T) {
			for _, key := range []string{testAPIKey, read.Key, ""} {
				auth := []string{"Authorization", ""}
				if key != "" {
					auth[1] = "Bearer " + key
				}
				getStatus, getHeader, _ := ta.rawRequest(t, http.MethodGet, path, "", nil, auth...)
				status, header, body := ta.rawRequest(t, http.MethodHead, path, "", nil, auth...)
				if status != getStatus || status == http.StatusMethodNotAllowed {
					t.Errorf("HEAD = %d, GET = %d (key %.8s)", status, getStatus, key)
				}
				if len(body) != 0 {
					t.Errorf("HEAD answered with a body of %d bytes", len(body))
				}
				if got, want := header.Get("Content-Type"), getHeader.Get("Content-Type"); got != want {
					t.Errorf("HEAD Content-Type %q, GET %q", got, want)
				}
				if publicRoutes[r.Path] {
					break
				}
			}
		})
	}
	if gets < 10 {
		t.Fatalf("only %d GET routes found", gets)
	}

	// HEAD declares the length GET would (a large body is sent chunked,
	// with none).
	for path, small := range map[string]bool{"/openapi.json": false, "/campaigns/1": true, "/customers/1": true, "/campaigns/999999": true} {
		_, getHeader, getBody := ta.rawRequest(t, http.MethodGet, path, "", nil)
		_, header, _ := ta.rawRequest(t, http.MethodHead, path, "", nil)
		want := getHeader.Get("Content-Length")
		if small && want != fmt.Sprint(len(getBody)) {
			t.Fatalf("GET %s Content-Length %q for a body of %d bytes", path, want, len(getBody))
		}
		if got := header.Get("Content-Length"); got != want {
			t.Errorf("HEAD %s Content-Length %q, GET's %q", path, got, want)
		}
	}
	// Unknown ids and routes are the same as for GET.
	for path, want := range map[string]int{"/campaigns/999999": 404, "/campaigns/abc": 400, "/nowhere": 404} {
		if status, _, body := ta.rawRequest(t, http.MethodHead, path, "", nil); status != want || len(body) != 0 {
			t.Errorf("HEAD %s = %d with %d bytes, want %d and no body", path, status, len(body), want)
		}
	}
}

// TestStoredAudienceUnknownCustomers creates and edits a scheduled campaign
// with customer_ids that name no customer: 422 UNKNOWN_CUSTOMERS listing
// them, as a send says, and nothing is stored, instead of a campaign that
// fails only when it comes due.
func TestStoredAudienceUnknownCustomers(t *testing.T) {
	t.Parallel()
	cfg := testConfig(t)
	cfg.WorkerConcurrency = 0
	ta := startApp(t, cfg)
	db := openAppDB(t, cfg, false)
	ids := importCustomers(t, ta, db, "Nairobi", "Mombasa")
	at := scheduleAt(time.Now().Add(time.Hour))

	unknown := func(t *testing.T, code int, e apiError, want ...int64) {
		t.Helper()
		var missing []int64
		raw, _ := json.Marshal(e.Error.Details["missing_ids"])
		_ = json.Unmarshal(raw, &missing)
		if code != http.StatusUnprocessableEntity || e.Error.Code != "UNKNOWN_CUSTOMERS" || !slices.Equal(missing, want) {
			t.Errorf("= %d %+v, want 422 UNKNOWN_CUSTOMERS with missing_ids %v", code, e.Error, want)
		}
	}
	base := map[string]any{"name": "later", "channel": "sms", "base_template": "Hi {first_name}", "scheduled_at": at}
	with := func(k string, v any) map[string]any {
		m := map[string]any{k: v}
		for k, v := range base {
			m[k] = v
		}
		return m
	}
	for name, body := range map[string]map[string]any{
		"customer_ids":          with("customer_ids", []int64{ids[0], 999_999, 999_998}),
		"audience.customer_ids": with("audience", map[string]any{"customer_ids": []int64{999_998, ids[1], 999_999}}),
	} {
		t.Run("create with "+name, func(t *testing.T) {
			var e apiError
			unknown(t, ta.do(t, "POST", "/campaigns", body, &e), e, 999_998, 999_999)
		})
	}
	if n := queryInt(t, db, `SELECT count(*) FROM campaigns`); n != 0 {
		t.Fatalf("%d campaigns stored by refused creates", n)
	}

	id, status := mustCreateCampaign(t, ta, with("customer_ids", ids))
	if status != "scheduled" {
		t.Fatalf("create with known ids: status %s", status)
	}
	path := fmt.Sprintf("/campaigns/%d", id)
	for name, body := range map[string]map[string]any{
		"customer_ids":          {"customer_ids": []int64{ids[1], 999_997}},
		"audience.customer_ids": {"audience": map[string]any{"customer_ids": []int64{999_997}}, "name": "renamed"},
	} {
		t.Run("edit with "+name, func(t *testing.T) {
			var e apiError
			unknown(t, ta.do(t, "PATCH", path, body, &e), e, 999_997)
		})
	}
	var stored struct {
		Name     string `json:"name"`
		Audience struct {
			CustomerIDs []int64 `json:"customer_ids"`
		} `json:"audience"`
	}
	if code := ta.do(t, "GET", path, nil, &stored); code != http.StatusOK || stored.Name != "later" || !slices.Equal(stored.Audience.CustomerIDs, ids) {
		t.Errorf("after refused edits: %d %+v, want the campaign unchanged", code, stored)
	}
	if code := ta.do(t, "PATCH", path, map[string]any{"customer_ids": ids[1:]}, &stored); code != http.StatusOK ||
		!slices.Equal(stored.Audience.CustomerIDs, ids[1:]) {
		t.Errorf("edit with a known id = %d %+v", code, stored)
	}
}

// TestCancelCountsUnmaterialisedAudience sends to an audience of 3,000 and
// cancels while its messages are still being created (after the
// materialiser's first chunk of 1,000): the cancel counts all 3,000, and so
// do the stats, as the send did. Before, the cancel said 1,000 and the
// stats' total was 1,000 after a send of 3,000.
func TestCancelCountsUnmaterialisedAudience(t *testing.T) {
	t.Parallel()
	cfg := testConfig(t)
	cfg.WorkerConcurrency = 0 // nothing is sent, so every count is exact
	ta := startApp(t, cfg)
	db := openAppDB(t, cfg, false)
	const audience = 3000
	if _, err := db.Exec(`
INSERT INTO customers (phone, first_name, location)
SELECT '+25472' || lpad(g::text, 7, '0'), 'C' || g, 'Nairobi' FROM generate_series(1, $1) g`, audience); err != nil {
		t.Fatal(err)
	}
	// One customer opted out is left out of the send, and of the remainder.
	if _, err := db.Exec(`INSERT INTO customer_opt_outs (customer_id, channel) SELECT max(id), 'sms' FROM customers`); err != nil {
		t.Fatal(err)
	}
	const recipients = audience - 1

	ctx := context.Background()
	for attempt := 1; ; attempt++ {
		id, _ := mustCreateCampaign(t, ta, nil)
		var sent struct {
			Queued int64 `json:"messages_queued"`
		}
		if code := ta.do(t, "POST", fmt.Sprintf("/campaigns/%d/send", id), map[string]any{"audience": map[string]any{"all": true}}, &sent); code != http.StatusAccepted ||
			sent.Queued != recipients {
			t.Fatalf("send = %d %+v, want %d queued", code, sent, recipients)
		}
		// Hold the materialiser off the batch (it skips a locked one) so the
		// cancel surely meets a part-materialised audience; taking the lock
		// waits for a chunk being written to commit.
		tx, err := db.BeginTxx(ctx, nil)
		if err != nil {
			t.Fatal(err)
		}
		var b struct {
			Cursor int64 `db:"cursor"`
			Max    int64 `db:"max_customer_id"`
		}
		err = tx.Get(&b, `SELECT cursor, max_customer_id FROM dispatch_batches WHERE campaign_id = $1 AND filter IS NOT NULL FOR UPDATE`, id)
		if (errors.Is(err, sql.ErrNoRows) || err == nil && b.Cursor >= b.Max) && attempt < 5 {
			tx.Rollback() // every message created already; try again
			continue
		}
		if err != nil {
			tx.Rollback()
			t.Fatal(err)
		}
		cursor := b.Cursor
		created := queryInt(t, db, `SELECT count(*) FROM outbound_messages WHERE campaign_id = $1`, id)
		t.Logf("attempt %d: cancelling with %d of %d messages created (cursor %d)", attempt, created, recipients, cursor)

		type reply struct {
			code int
			res  actionResult
			err  error
		}
		done := make(chan reply, 1)
		go func() {
			var r reply
			req, _ := http.NewRequest(http.MethodPost, fmt.Sprintf("%s/campaigns/%d/cancel", ta.base, id), nil)
			resp, err := ta.client.Do(req)
			if err != nil {
				done <- reply{err: err}
				return
			}
			defer resp.Body.Close()
			r.code = resp.StatusCode
			r.err = json.NewDecoder(resp.Body).Decode(&r.res)
			done <- r
		}()
		waitFor(t, "the cancel to wait for the batch", 10*time.Second, func() bool {
			return queryInt(t, db, `SELECT count(*) FROM pg_stat_activity
WHERE datname = current_database() AND wait_event_type = 'Lock' AND pid <> pg_backend_pid()`) > 0
		})
		if err := tx.Rollback(); err != nil {
			t.Fatal(err)
		}
		r := <-done
		if r.err != nil || r.code != http.StatusOK || r.res.Status != "cancelled" || r.res.MessagesCancelled == nil {
			t.Fatalf("cancel = %d %+v %v", r.code, r.res, r.err)
		}
		if got := *r.res.MessagesCancelled; got != recipients {
			t.Errorf("cancel reports %d messages cancelled; the send queued %d", got, recipients)
		}
		c := readCampaign(t, ta, id)
		if c.Status != "cancelled" || c.Stats.Total != recipients || c.Stats.Cancelled != recipients {
			t.Errorf("after cancel: %s %+v, want %d messages, all cancelled", c.Status, c.Stats, recipients)
		}
		if n := queryInt(t, db, `SELECT count(*) FROM dispatch_batches WHERE campaign_id = $1 AND filter IS NOT NULL`, id); n != 0 {
			t.Errorf("the audience is still being materialised after the cancel")
		}
		holdsFor(t, "the cancelled campaign's counts", 300*time.Millisecond, func() bool {
			return readCampaign(t, ta, id).Stats == c.Stats
		})
		return
	}
}

// TestLifecycleActionsRefuseForms posts lifecycle actions as a page on
// another site could make a browser post them (a form: no preflight, any
// body) and as a JSON client would: only no body or an empty JSON object
// gets through.
func TestLifecycleActionsRefuseForms(t *testing.T) {
	t.Parallel()
	cfg := testConfig(t)
	cfg.WorkerConcurrency = 0
	ta := startApp(t, cfg)
	db := openAppDB(t, cfg, false)
	ids := importCustomers(t, ta, db, "Nairobi")
	id, _ := mustCreateCampaign(t, ta, nil)
	sendTo(t, ta, id, ids)
	pause := fmt.Sprintf("/campaigns/%d/pause", id)

	for _, tc := range []struct {
		name, contentType, body string
		status                  int
		code                    string
	}{
		{"form", "application/x-www-form-urlencoded", "confirm=yes", 415, "UNSUPPORTED_MEDIA_TYPE"},
		{"empty form", "application/x-www-form-urlencoded", "", 415, "UNSUPPORTED_MEDIA_TYPE"},
		{"multipart form", "multipart/form-data; boundary=x", "--x--\r\n", 415, "UNSUPPORTED_MEDIA_TYPE"},
		{"text/plain form", "text/plain", `{"a":1}`, 415, "UNSUPPORTED_MEDIA_TYPE"},
		{"body without a type", "", "{}", 415, "UNSUPPORTED_MEDIA_TYPE"},
		{"json with a field", "application/json", `{"force":true}`, 400, "INVALID_JSON"},
		{"json array", "application/json", `[]`, 400, "INVALID_JSON"},
		{"json null", "application/json", `null`, 400, "INVALID_JSON"},
		{"malformed json", "application/json", `{`, 400, "INVALID_JSON"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var body io.Reader
			if tc.body != "" {
				body = strings.NewReader(tc.body)
			}
			status, _, raw := ta.rawRequest(t, http.MethodPost, pause, tc.contentType, body)
			var e apiError
			if err := json.Unmarshal(raw, &e); err != nil || status != tc.status || e.Error.Code != tc.code {
				t.Errorf("= %d %s, want %d %s", status, raw, tc.status, tc.code)
			}
		})
	}
	if c := readCampaign(t, ta, id); c.Status != "sending" {
		t.Fatalf("a refused action changed the campaign to %s", c.Status)
	}

	for _, tc := range []struct {
		action, contentType, body, status string
	}{
		{"pause", "application/json", "{}", "paused"},
		{"resume", "", "", "sending"},
		{"pause", "application/json", "", "paused"},
		{"cancel", "application/json; charset=utf-8", " { } \n", "cancelled"},
	} {
		var body io.Reader
		if tc.body != "" {
			body = strings.NewReader(tc.body)
		}
		status, _, raw := ta.rawRequest(t, http.MethodPost, fmt.Sprintf("/campaigns/%d/%s", id, tc.action), tc.contentType, body)
		var res actionResult
		if err := json.Unmarshal(raw, &res); err != nil || status != http.StatusOK || res.Status != tc.status {
			t.Errorf("%s with %q %q = %d %s, want 200 %s", tc.action, tc.contentType, tc.body, status, raw, tc.status)
		}
	}
}
