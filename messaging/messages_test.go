package messaging

import (
	"bufio"
	"bytes"
	"context"
	"database/sql"
	"encoding/csv"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"net/url"
	"os"
	"runtime"
	"runtime/metrics"
	"slices"
	"strconv"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"github.com/jmoiron/sqlx"
	"github.com/labstack/echo/v4"
	"github.com/lib/pq"

	"github.com/campaignd/dispatch/platform/errs"
	"github.com/campaignd/dispatch/platform/httpx"
	"github.com/campaignd/dispatch/platform/logging/logtest"
	"github.com/campaignd/dispatch/platform/page"
	"github.com/campaignd/dispatch/platform/postgres"
	"github.com/campaignd/dispatch/platform/postgres/pgtest"
)

// msgEnv is a fresh schema with the messages routes mounted on an Echo that
// has the app's error handler, and HEAD answered like GET as the app does.
type msgEnv struct {
	db   *pgtest.DB
	repo *Repo
	e    *echo.Echo
	log  *logtest.Buffer
}

func newMsgEnv(t testing.TB) *msgEnv {
	t.Helper()
	db := pgtest.New(t)
	return newMsgEnvOn(t, db, db.DB)
}

// newMsgEnvOn serves the routes over a Repo on conn (a pool on db's schema).
func newMsgEnvOn(t testing.TB, db *pgtest.DB, conn *sqlx.DB) *msgEnv {
	t.Helper()
	env := &msgEnv{db: db, repo: NewRepo(conn), e: echo.New(), log: &logtest.Buffer{}}
	log := slog.New(slog.NewTextHandler(env.log, nil))
	env.e.HTTPErrorHandler = httpx.ErrorHandler(log)
	env.e.Use(httpx.Logger(log), httpx.Recover())
	env.e.OnAddRouteHandler = func(host string, r echo.Route, h echo.HandlerFunc, m []echo.MiddlewareFunc) {
		if r.Method == http.MethodGet {
			env.e.Router().Add(http.MethodHead, r.Path, h)
		}
	}
	NewHandler(env.repo).WithLogger(log).Register(env.e)
	return env
}

// do serves one request in process.
func (env *msgEnv) do(t testing.TB, method, target string) *httptest.ResponseRecorder {
	t.Helper()
	rec := httptest.NewRecorder()
	env.e.ServeHTTP(rec, httptest.NewRequest(method, target, nil))
	return rec
}

// mvID runs an INSERT ... RETURNING id.
func mvID(t testing.TB, db *sqlx.DB, query string, args ...any) int64 {
	t.Helper()
	var id int64
	if err := db.GetContext(context.Background(), &id, query, args...); err != nil {
		t.Fatalf("%s: %v", strings.TrimSpace(query), err)
	}
	return id
}

func mvExec(t testing.TB, db *sqlx.DB, query string, args ...any) {
	t.Helper()
	if _, err := db.ExecContext(context.Background(), query, args...); err != nil {
		t.Fatalf("%s: %v", strings.TrimSpace(query), err)
	}
}

func mvCampaign(t testing.TB, db *sqlx.DB, ch string) int64 {
	t.Helper()
	return mvID(t, db, `INSERT INTO campaigns (name, channel, status, base_template) VALUES ('t', $1, 'sending', 'Hi {first_name}') RETURNING id`, ch)
}

func mvCustomer(t testing.TB, db *sqlx.DB, phone, first, last string) int64 {
	t.Helper()
	return mvID(t, db, `INSERT INTO customers (phone, first_name, last_name) VALUES ($1, $2, $3) RETURNING id`, phone, first, last)
}

// errorBody decodes the error envelope.
func errorBody(t testing.TB, rec *httptest.ResponseRecorder) httpx.Body {
	t.Helper()
	var env httpx.Envelope
	if err := json.Unmarshal(rec.Body.Bytes(), &env); err != nil {
		t.Fatalf("not the error envelope: %v: %s", err, rec.Body)
	}
	return env.Error
}

// listFixture is a campaign's messages in every interesting shape.
type listFixture struct {
	campaign, other, empty int64
	alice, bob             int64 // customer ids
	// m1 delivered (Alice), m2 failed (Bob), m3 pending (Carol), m4 sent to
	// Dan, since erased, m5 a test send to a bare phone, m6 a test send to
	// Alice.
	m1, m2, m3, m4, m5, m6 int64
}

func newListFixture(t *testing.T, db *sqlx.DB) listFixture {
	t.Helper()
	var f listFixture
	f.campaign, f.other, f.empty = mvCampaign(t, db, "sms"), mvCampaign(t, db, "whatsapp"), mvCampaign(t, db, "sms")
	f.alice = mvCustomer(t, db, "+254712000001", "Alice", "A")
	f.bob = mvCustomer(t, db, "+254712000002", "Bob", "B")
	carol := mvCustomer(t, db, "+254712000003", "Carol", "C")
	dan := mvCustomer(t, db, "+254712000004", "Dan", "D")
	f.m1 = mvID(t, db, `
INSERT INTO outbound_messages (campaign_id, customer_id, status, attempts, rendered_content, provider,
    provider_message_id, encoding, segments, cost, currency, created_at, sent_at, delivered_at, updated_at)
VALUES ($1, $2, 'delivered', 2, 'Hi Alice', 'africastalking', 'ATXid_1', 'GSM-7', 1, 0.8, 'KES',
    '2025-05-20 11:00:00+03', '2025-05-20 11:00:01.5+03', '2025-05-20 08:00:03Z', '2025-05-20 08:00:03Z')
RETURNING id`, f.campaign, f.alice)
	f.m2 = mvID(t, db, `
INSERT INTO outbound_messages (campaign_id, customer_id, status, attempts, last_error)
VALUES ($1, $2, 'failed', 3, 'provider said no') RETURNING id`, f.campaign, f.bob)
	f.m3 = mvID(t, db, `INSERT INTO outbound_messages (campaign_id, customer_id) VALUES ($1, $2) RETURNING id`, f.campaign, carol)
	f.m4 = mvID(t, db, `
INSERT INTO outbound_messages (campaign_id, customer_id, status, attempts) VALUES ($1, $2, 'sent', 1) RETURNING id`, f.campaign, dan)
	f.m5 = mvID(t, db, `
INSERT INTO outbound_messages (campaign_id, customer_id, phone, test, status, attempts)
VALUES ($1, NULL, '+254712000009', true, 'sent', 1) RETURNING id`, f.campaign)
	f.m6 = mvID(t, db, `
INSERT INTO outbound_messages (campaign_id, customer_id, phone, test, status)
VALUES ($1, $2, '+254712000001', true, 'pending') RETURNING id`, f.campaign, f.alice)
	mvExec(t, db, `INSERT INTO outbound_messages (campaign_id, customer_id) VALUES ($1, $2)`, f.other, f.alice)
	mvExec(t, db, `DELETE FROM customers WHERE id = $1`, dan) // erased: the message stays, without them
	return f
}

func TestMessagesList(t *testing.T) {
	t.Parallel()
	env := newMsgEnv(t)
	f := newListFixture(t, env.db.DB)
	base := fmt.Sprintf("/campaigns/%d/messages", f.campaign)

	t.Run("message object", func(t *testing.T) {
		rec := env.do(t, http.MethodGet, base)
		if rec.Code != http.StatusOK || !strings.HasPrefix(rec.Header().Get(echo.HeaderContentType), "application/json") {
			t.Fatalf("status %d, type %q: %s", rec.Code, rec.Header().Get(echo.HeaderContentType), rec.Body)
		}
		var body struct {
			Data       []map[string]any `json:"data"`
			Pagination map[string]any   `json:"pagination"`
		}
		if err := json.Unmarshal(rec.Body.Bytes(), &body); err != nil {
			t.Fatal(err)
		}
		byID := map[float64]map[string]any{}
		for _, m := range body.Data {
			byID[m["id"].(float64)] = m
		}
		want := map[string]any{
			"id": float64(f.m1), "campaign_id": float64(f.campaign), "customer_id": float64(f.alice),
			"phone": "+254712000001", "channel": "sms", "status": "delivered", "attempts": float64(2),
			"last_error": nil, "rendered_content": "Hi Alice", "provider": "africastalking",
			"provider_message_id": "ATXid_1", "encoding": "GSM-7", "segments": float64(1), "cost": "0.80",
			"currency": "KES", "test": false, "created_at": "2025-05-20T08:00:00Z",
			"sent_at": "2025-05-20T08:00:01.5Z", "delivered_at": "2025-05-20T08:00:03Z", "updated_at": "2025-05-20T08:00:03Z",
		}
		if diff := cmp.Diff(want, byID[float64(f.m1)]); diff != "" {
			t.Errorf("message object (-want +got):\n%s", diff)
		}
		erased := byID[float64(f.m4)]
		if erased == nil || erased["customer_id"] != nil || erased["phone"] != nil || erased["status"] != "sent" {
			t.Errorf("erased customer's message = %v, want customer_id and phone null, status kept", erased)
		}
		pending := byID[float64(f.m3)]
		for _, k := range []string{"provider", "cost", "segments", "sent_at", "delivered_at", "rendered_content", "last_error"} {
			if v, ok := pending[k]; !ok || v != nil {
				t.Errorf("pending message: %s = %v (present %v), want null", k, v, ok)
			}
		}
		wantPage := map[string]any{"page": float64(1), "page_size": float64(20), "next_cursor": nil}
		if diff := cmp.Diff(wantPage, body.Pagination); diff != "" {
			t.Errorf("pagination (-want +got):\n%s", diff)
		}
	})

	for _, tt := range []struct {
		name  string
		id    int64
		query string
		want  []int64
	}{
		{"all but test sends, newest first", f.campaign, "", []int64{f.m4, f.m3, f.m2, f.m1}},
		{"test=false is the default", f.campaign, "test=false", []int64{f.m4, f.m3, f.m2, f.m1}},
		{"test=true includes test sends", f.campaign, "test=true", []int64{f.m6, f.m5, f.m4, f.m3, f.m2, f.m1}},
		{"status", f.campaign, "status=failed", []int64{f.m2}},
		{"status pending", f.campaign, "status=pending", []int64{f.m3}},
		{"status with test sends", f.campaign, "status=sent&test=true", []int64{f.m5, f.m4}},
		{"phone escaped", f.campaign, "phone=%2B254712000001", []int64{f.m1}},
		{"phone with a raw plus", f.campaign, "phone=+254712000001", []int64{f.m1}},
		{"phone with test sends", f.campaign, "phone=%2B254712000001&test=true", []int64{f.m6, f.m1}},
		{"test send's phone left out", f.campaign, "phone=%2B254712000009", nil},
		{"test send's phone", f.campaign, "phone=%2B254712000009&test=true", []int64{f.m5}},
		{"erased customer's phone", f.campaign, "phone=%2B254712000004", nil},
		{"unknown phone", f.campaign, "phone=%2B15550000000", nil},
		{"filters combine", f.campaign, "status=delivered&phone=%2B254712000002", nil},
		{"unknown parameters ignored", f.campaign, "colour=red&status=failed", []int64{f.m2}},
		{"page numbers", f.campaign, "page=2&page_size=2", []int64{f.m2, f.m1}},
		{"other campaign", f.other, "", nil},
		{"campaign without messages", f.empty, "", nil},
	} {
		t.Run(tt.name, func(t *testing.T) {
			rec := env.do(t, http.MethodGet, fmt.Sprintf("/campaigns/%d/messages?%s", tt.id, tt.query))
			if rec.Code != http.StatusOK {
				t.Fatalf("status %d: %s", rec.Code, rec.Body)
			}
			var body MessageList
			if err := json.Unmarshal(rec.Body.Bytes(), &body); err != nil {
				t.Fatal(err)
			}
			var got []int64
			for _, m := range body.Data {
				got = append(got, m.ID)
			}
			if tt.id == f.other {
				if len(got) != 1 || body.Data[0].CampaignID != f.other || body.Data[0].Channel != "whatsapp" {
					t.Errorf("other campaign: %+v", body.Data)
				}
				return
			}
			if diff := cmp.Diff(tt.want, got); diff != "" {
				t.Errorf("ids (-want +got):\n%s", diff)
			}
			if body.Pagination.NextCursor != nil {
				t.Errorf("next_cursor %q on the only page", *body.Pagination.NextCursor)
			}
			if len(got) == 0 && !bytes.Contains(rec.Body.Bytes(), []byte(`"data":[]`)) {
				t.Errorf("empty page is not []: %s", rec.Body)
			}
		})
	}

	// A cursor issued for one filter is refused for another.
	rec := env.do(t, http.MethodGet, base+"?page_size=1&status=failed&test=true")
	var first MessageList
	if err := json.Unmarshal(rec.Body.Bytes(), &first); err != nil || rec.Code != http.StatusOK {
		t.Fatalf("first page: %d %v", rec.Code, err)
	}
	// One failed message and page_size 1: no next page.
	if first.Pagination.NextCursor != nil {
		t.Fatalf("next_cursor after the only failed message")
	}
	rec = env.do(t, http.MethodGet, base+"?page_size=1")
	var all MessageList
	if err := json.Unmarshal(rec.Body.Bytes(), &all); err != nil || all.Pagination.NextCursor == nil {
		t.Fatalf("page 1 of 4 has no next_cursor: %s", rec.Body)
	}
	cursor := url.QueryEscape(*all.Pagination.NextCursor)

	for _, tt := range []struct {
		name, target, field string
	}{
		{"unknown status", base + "?status=bogus", "status"},
		{"status is case-sensitive", base + "?status=SENT", "status"},
		{"phone without plus", base + "?phone=254712000001", "phone"},
		{"phone with letters", base + "?phone=%2B2547abc", "phone"},
		{"phone plus alone", base + "?phone=%2B", "phone"},
		{"phone too long", base + "?phone=%2B1234567890123456", "phone"},
		{"phone with two spaces", base + "?phone=%20%20254712000001", "phone"},
		{"test not a boolean", base + "?test=yes", "test"},
		{"page_size zero", base + "?page_size=0", "page_size"},
		{"page_size too large", base + "?page_size=101", "page_size"},
		{"page zero", base + "?page=0", "page"},
		{"garbage cursor", base + "?cursor=nope", "cursor"},
		{"cursor for other filters", base + "?page_size=1&status=pending&cursor=" + cursor, "cursor"},
		{"cursor and page", base + "?page=2&cursor=" + cursor, "cursor"},
		{"malformed query", base + "?status=%zz", "status"},
		{"id not a number", "/campaigns/abc/messages", "id"},
		{"id zero", "/campaigns/0/messages", "id"},
	} {
		t.Run(tt.name, func(t *testing.T) {
			rec := env.do(t, http.MethodGet, tt.target)
			body := errorBody(t, rec)
			if rec.Code != http.StatusBadRequest || body.Code != errs.CodeValidation || body.Details["field"] != tt.field {
				t.Errorf("%d %s %v (%s), want 400 VALIDATION_ERROR naming %s", rec.Code, body.Code, body.Details, body.Message, tt.field)
			}
		})
	}
	t.Run("the cursor continues", func(t *testing.T) {
		rec := env.do(t, http.MethodGet, base+"?page_size=1&cursor="+cursor)
		var next MessageList
		if err := json.Unmarshal(rec.Body.Bytes(), &next); err != nil || len(next.Data) != 1 || next.Data[0].ID != f.m3 {
			t.Errorf("page 2: %d %s", rec.Code, rec.Body)
		}
		if next.Pagination.Page != 2 {
			t.Errorf("page = %d, want 2", next.Pagination.Page)
		}
	})
	t.Run("unknown campaign", func(t *testing.T) {
		for _, q := range []string{"", "?status=failed", "?page_size=1&cursor=" + cursor} {
			rec := env.do(t, http.MethodGet, "/campaigns/999999/messages"+q)
			body := errorBody(t, rec)
			if rec.Code != http.StatusNotFound || body.Code != "CAMPAIGN_NOT_FOUND" || body.Message != "campaign 999999 not found" {
				t.Errorf("%q: %d %s %q, want 404 CAMPAIGN_NOT_FOUND", q, rec.Code, body.Code, body.Message)
			}
		}
		_, err := env.repo.ListMessages(context.Background(), 999999, MessageFilter{}, mvPage(t, ""))
		if !errors.Is(err, ErrCampaignNotFound) {
			t.Errorf("repo error %v, want ErrCampaignNotFound", err)
		}
	})
	t.Run("repo validates its filter", func(t *testing.T) {
		for _, f := range []MessageFilter{{Status: "bogus"}, {Phone: "0712"}} {
			_, err := env.repo.ListMessages(context.Background(), 1, f, mvPage(t, ""))
			if errs.KindOf(err) != errs.KindValidation {
				t.Errorf("%+v: %v, want a validation error", f, err)
			}
		}
	})
}

// mvPage parses a page request from a query string.
func mvPage(t testing.TB, query string) page.Request {
	t.Helper()
	q, err := url.ParseQuery(query)
	if err != nil {
		t.Fatal(err)
	}
	r, err := page.Parse(q)
	if err != nil {
		t.Fatal(err)
	}
	return r
}

func TestMessagesGet(t *testing.T) {
	t.Parallel()
	env := newMsgEnv(t)
	f := newListFixture(t, env.db.DB)
	// Attempts are written out of order; the log is by attempt number.
	mvExec(t, env.db.DB, `
INSERT INTO message_attempts (campaign_id, message_id, attempt, started_at, duration_ms, outcome, error, provider_status)
SELECT m.campaign_id, m.id, a.* FROM outbound_messages m, (VALUES
    (3, '2025-05-20 11:00:09.25+03'::timestamptz, 120, 'sent', NULL, 'Success'),
    (1, '2025-05-20 08:00:00Z', 30000, 'retried', 'timeout after 30s', NULL),
    (2, '2025-05-20 08:00:05Z', 45, 'retried', 'HTTP 503', '503')) AS a
WHERE m.id = $1`, f.m2)

	rec := env.do(t, http.MethodGet, fmt.Sprintf("/messages/%d", f.m2))
	if rec.Code != http.StatusOK {
		t.Fatalf("status %d: %s\n%s", rec.Code, rec.Body, env.log)
	}
	var got MessageDetail
	if err := json.Unmarshal(rec.Body.Bytes(), &got); err != nil {
		t.Fatal(err)
	}
	at := func(s string) time.Time {
		v, err := time.Parse(time.RFC3339Nano, s)
		if err != nil {
			t.Fatal(err)
		}
		return v
	}
	s := func(v string) *string { return &v }
	want := []AttemptView{
		{Attempt: 1, StartedAt: at("2025-05-20T08:00:00Z"), DurationMS: 30000, Outcome: "retried", Error: s("timeout after 30s")},
		{Attempt: 2, StartedAt: at("2025-05-20T08:00:05Z"), DurationMS: 45, Outcome: "retried", Error: s("HTTP 503"), ProviderStatus: s("503")},
		{Attempt: 3, StartedAt: at("2025-05-20T08:00:09.25Z"), DurationMS: 120, Outcome: "sent", ProviderStatus: s("Success")},
	}
	if diff := cmp.Diff(want, got.AttemptsLog); diff != "" {
		t.Errorf("attempts_log (-want +got):\n%s", diff)
	}
	if !bytes.Contains(rec.Body.Bytes(), []byte(`"started_at":"2025-05-20T08:00:09.25Z"`)) {
		t.Errorf("started_at not in UTC: %s", rec.Body)
	}
	if got.ID != f.m2 || got.Status != StatusFailed || got.Attempts != 3 || got.LastError == nil || *got.LastError != "provider said no" ||
		got.Phone == nil || *got.Phone != "+254712000002" || got.Channel != "sms" {
		t.Errorf("message fields: %+v", got.MessageView)
	}

	t.Run("no attempts is an empty log", func(t *testing.T) {
		rec := env.do(t, http.MethodGet, fmt.Sprintf("/messages/%d", f.m3))
		if rec.Code != http.StatusOK || !bytes.Contains(rec.Body.Bytes(), []byte(`"attempts_log":[]`)) {
			t.Errorf("%d %s", rec.Code, rec.Body)
		}
	})
	t.Run("test send", func(t *testing.T) {
		d, err := env.repo.GetMessage(context.Background(), f.m5)
		if err != nil || !d.Test || d.CustomerID != nil || d.Phone == nil || *d.Phone != "+254712000009" {
			t.Errorf("%+v %v", d, err)
		}
	})
	t.Run("errors", func(t *testing.T) {
		for _, tt := range []struct {
			target string
			status int
			code   string
		}{
			{"/messages/999999", 404, "MESSAGE_NOT_FOUND"},
			{"/messages/abc", 400, errs.CodeValidation},
			{"/messages/-1", 400, errs.CodeValidation},
		} {
			rec := env.do(t, http.MethodGet, tt.target)
			if body := errorBody(t, rec); rec.Code != tt.status || body.Code != tt.code {
				t.Errorf("%s: %d %s, want %d %s", tt.target, rec.Code, body.Code, tt.status, tt.code)
			}
		}
		_, err := env.repo.GetMessage(context.Background(), 999999)
		if !errors.Is(err, ErrMessageNotFound) {
			t.Errorf("repo error %v, want ErrMessageNotFound", err)
		}
	})
}

// TestMessagesRoutes checks that Echo tells /messages from /messages.csv.
func TestMessagesRoutes(t *testing.T) {
	t.Parallel()
	env := newMsgEnv(t)
	id := mvCampaign(t, env.db.DB, "sms")
	for _, tt := range []struct {
		method, path string
		status       int
		ctype        string
	}{
		{"GET", fmt.Sprintf("/campaigns/%d/messages", id), 200, "application/json"},
		{"GET", fmt.Sprintf("/campaigns/%d/messages.csv", id), 200, "text/csv; charset=utf-8"},
		{"HEAD", fmt.Sprintf("/campaigns/%d/messages.csv", id), 200, "text/csv; charset=utf-8"},
		{"HEAD", "/campaigns/999999/messages.csv", 404, "application/json"},
		{"GET", fmt.Sprintf("/campaigns/%d/messages.json", id), 404, "application/json"},
		{"GET", fmt.Sprintf("/campaigns/%d/messages.csvx", id), 404, "application/json"},
		{"GET", fmt.Sprintf("/campaigns/%d/messages/", id), 404, "application/json"},
		{"GET", "/campaigns/abc/messages.csv", 400, "application/json"},
		{"POST", fmt.Sprintf("/campaigns/%d/messages", id), 405, "application/json"},
	} {
		t.Run(tt.method+" "+tt.path, func(t *testing.T) {
			rec := env.do(t, tt.method, tt.path)
			if rec.Code != tt.status || !strings.HasPrefix(rec.Header().Get(echo.HeaderContentType), tt.ctype) {
				t.Errorf("%d %q, want %d %q: %s", rec.Code, rec.Header().Get(echo.HeaderContentType), tt.status, tt.ctype, rec.Body)
			}
			if tt.method == "HEAD" && tt.status == 200 && rec.Body.Len() != 0 {
				t.Errorf("HEAD ran the export: %q", rec.Body)
			}
		})
	}
}

// TestMessagesCursorWalkWhileDelivering walks a campaign's messages by
// cursor while, between pages, another goroutine adds messages and moves
// others along their statuses: every message that existed when the walk
// began is seen exactly once, in id order, and none of the new ones.
func TestMessagesCursorWalkWhileDelivering(t *testing.T) {
	t.Parallel()
	env := newMsgEnv(t)
	db := env.db.DB
	ctx := context.Background()
	campaign := mvCampaign(t, db, "sms")
	const initial, extra, pageSize = 300, 400, 7
	mvExec(t, db, `
INSERT INTO customers (phone, first_name) SELECT '+25471' || lpad(g::text, 7, '0'), 'c' || g FROM generate_series(1, $1::int) g`, initial+extra)
	mvExec(t, db, `
INSERT INTO outbound_messages (campaign_id, customer_id) SELECT $1, id FROM customers ORDER BY id LIMIT $2`, campaign, initial)
	// A test send among them is not listed.
	mvExec(t, db, `INSERT INTO outbound_messages (campaign_id, phone, test) VALUES ($1, '+15550000001', true)`, campaign)
	var existing []int64
	if err := db.SelectContext(ctx, &existing, `SELECT id FROM outbound_messages WHERE campaign_id = $1 AND NOT test ORDER BY id DESC`, campaign); err != nil {
		t.Fatal(err)
	}

	// The "deliverer": on each signal, it adds messages for new customers
	// (some of them test sends) and advances a batch of existing ones.
	more, done := make(chan struct{}), make(chan error)
	var rounds atomic.Int64
	go func() { // exits when more is closed
		defer close(done)
		for range more {
			_, err := db.ExecContext(ctx, `
WITH fresh AS (
    INSERT INTO outbound_messages (campaign_id, customer_id)
    SELECT $1, u.id FROM customers u
    WHERE NOT EXISTS (SELECT 1 FROM outbound_messages m WHERE m.customer_id = u.id AND NOT m.test)
    ORDER BY u.id LIMIT 5
), test AS (
    INSERT INTO outbound_messages (campaign_id, phone, test) VALUES ($1, '+15550000002', true)
)
UPDATE outbound_messages SET status = CASE status WHEN 'pending' THEN 'sending' WHEN 'sending' THEN 'sent' ELSE 'delivered' END,
       updated_at = now()
WHERE id IN (SELECT id FROM outbound_messages WHERE campaign_id = $1 AND status <> 'delivered' ORDER BY random() LIMIT 20)`, campaign)
			if err != nil {
				done <- err
				return
			}
			rounds.Add(1)
			done <- nil
		}
	}()

	var seen []int64
	target := fmt.Sprintf("/campaigns/%d/messages?page_size=%d", campaign, pageSize)
	for page := 1; ; page++ {
		rec := env.do(t, http.MethodGet, target)
		var body MessageList
		if err := json.Unmarshal(rec.Body.Bytes(), &body); err != nil || rec.Code != http.StatusOK {
			t.Fatalf("page %d: %d %v %s", page, rec.Code, err, rec.Body)
		}
		if len(body.Data) > pageSize {
			t.Fatalf("page %d has %d messages", page, len(body.Data))
		}
		for _, m := range body.Data {
			seen = append(seen, m.ID)
		}
		if body.Pagination.NextCursor == nil {
			break
		}
		if page > initial {
			t.Fatal("the walk does not end")
		}
		target = fmt.Sprintf("/campaigns/%d/messages?page_size=%d&cursor=%s", campaign, pageSize, url.QueryEscape(*body.Pagination.NextCursor))
		more <- struct{}{} // messages arrive and move between this page and the next
		if err := <-done; err != nil {
			t.Fatal(err)
		}
	}
	close(more)
	<-done

	if diff := cmp.Diff(existing, seen); diff != "" {
		t.Errorf("walk (-existing at start +seen):\n%s", diff)
	}
	var total int
	if err := db.GetContext(ctx, &total, `SELECT count(*) FROM outbound_messages WHERE campaign_id = $1 AND NOT test`, campaign); err != nil {
		t.Fatal(err)
	}
	t.Logf("walked %d messages in %d pages while %d more arrived over %d rounds", len(seen), (len(seen)+pageSize-1)/pageSize, total-len(existing), rounds.Load())
	if total-len(existing) < 5*int(rounds.Load()) || rounds.Load() < initial/pageSize {
		t.Errorf("the deliverer did not run between pages: %d rounds, %d new messages", rounds.Load(), total-len(existing))
	}
}

func TestMessagesCSVSafe(t *testing.T) {
	t.Parallel()
	for in, want := range map[string]string{
		"":          "",
		"Alice":     "Alice",
		"=1+2":      "'=1+2",
		"+254 call": "'+254 call",
		"-5":        "'-5",
		"@SUM(A1)":  "'@SUM(A1)",
		"\tx":       "'\tx",
		"\rx":       "'\rx",
		" =x":       " =x",
		"a=b":       "a=b",
		"'=x":       "'=x",
		"🎉=":        "🎉=",
	} {
		if got := csvSafe(in); got != want {
			t.Errorf("csvSafe(%q) = %q, want %q", in, got, want)
		}
	}
}

func TestMessagesCostText(t *testing.T) {
	t.Parallel()
	for in, want := range map[string]string{
		"0.80000":  "0.80",
		"0.00750":  "0.0075",
		"12.00000": "12.00",
		"1.23456":  "1.23456",
		"0.10000":  "0.10",
		"5":        "5.00",
		"0.5":      "0.50",
	} {
		if got := costText(in); got != want {
			t.Errorf("costText(%q) = %q, want %q", in, got, want)
		}
	}
}

// TestMessagesExportTrickyFields exports a handful of awkward values and
// checks the CSV cell by cell.
func TestMessagesExportTrickyFields(t *testing.T) {
	t.Parallel()
	env := newMsgEnv(t)
	db := env.db.DB
	campaign := mvCampaign(t, db, "whatsapp")
	type person struct{ first, last, content, lastError string }
	people := []person{
		{"Smith, John", `O"Brien`, "Hi, \"John\"", ""},
		{"Line\nBreak", "Café 🎉👩🏽‍💻", "Hi 🎉\nsecond line", "-boom"},
		{`=HYPERLINK("http://x","y")`, "-2+3", "=1+2", "@fail"},
		{"+254 formula", "@SUM(A1)", "+bonus", "=cmd|' /C calc'!A0"},
		{"\tTabbed", "\rCR", "\tx", "\ry"},
		{" leading space", "a\r\nb", "", "plain error"},
		{"", "", `\.`, ""},
	}
	var ids []int64
	for i, p := range people {
		c := mvCustomer(t, db, fmt.Sprintf("+25472000000%d", i), p.first, p.last)
		ids = append(ids, mvID(t, db, `
INSERT INTO outbound_messages (campaign_id, customer_id, rendered_content, last_error)
VALUES ($1, $2, nullif($3, ''), nullif($4, '')) RETURNING id`, campaign, c, p.content, p.lastError))
	}
	test := mvID(t, db, `INSERT INTO outbound_messages (campaign_id, phone, test, rendered_content) VALUES ($1, '+15550000001', true, 'test') RETURNING id`, campaign)
	other := mvCampaign(t, db, "sms")
	mvExec(t, db, `INSERT INTO outbound_messages (campaign_id, customer_id) SELECT $1, customer_id FROM outbound_messages WHERE id = $2`, other, ids[0])

	rec := env.do(t, http.MethodGet, fmt.Sprintf("/campaigns/%d/messages.csv", campaign))
	if rec.Code != http.StatusOK {
		t.Fatalf("status %d: %s", rec.Code, rec.Body)
	}
	if got := rec.Header().Get(echo.HeaderContentType); got != "text/csv; charset=utf-8" {
		t.Errorf("Content-Type %q", got)
	}
	if got, want := rec.Header().Get(echo.HeaderContentDisposition), fmt.Sprintf(`attachment; filename="campaign-%d-messages.csv"`, campaign); got != want {
		t.Errorf("Content-Disposition %q, want %q", got, want)
	}
	raw := rec.Body.String()
	header := "id,campaign_id,customer_id,phone,first_name,last_name,channel,status,attempts,last_error,rendered_content," +
		"provider,provider_message_id,encoding,segments,cost,currency,created_at,sent_at,delivered_at,updated_at\n"
	if !strings.HasPrefix(raw, header) {
		t.Errorf("header row: %q", raw[:min(len(raw), len(header))])
	}
	// The bytes hold the stored text exactly; encoding/csv's reader turns a
	// CR LF inside a quoted field into LF (below), other readers keep it.
	for _, quoted := range []string{`"Smith, John"`, `"O""Brien"`, `"'=HYPERLINK(""http://x"",""y"")"`, "\"a\r\nb\"", "\"'\rCR\"",
		"\"Line\nBreak\"", "Café 🎉👩🏽‍💻"} {
		if !strings.Contains(raw, quoted) {
			t.Errorf("raw CSV lacks %s", quoted)
		}
	}
	recs, err := csv.NewReader(strings.NewReader(raw)).ReadAll()
	if err != nil {
		t.Fatal(err)
	}
	if len(recs) != len(people)+1 {
		t.Fatalf("%d records, want header + %d (test send %d and the other campaign left out)", len(recs), len(people), test)
	}
	type cells struct{ ID, Phone, First, Last, Channel, LastError, Content string }
	var got, want []cells
	guarded := map[string]string{
		`=HYPERLINK("http://x","y")`: `'=HYPERLINK("http://x","y")`, "-2+3": "'-2+3", "=1+2": "'=1+2", "@fail": "'@fail",
		"+254 formula": "'+254 formula", "@SUM(A1)": "'@SUM(A1)", "+bonus": "'+bonus", "=cmd|' /C calc'!A0": "'=cmd|' /C calc'!A0",
		"\tTabbed": "'\tTabbed", "\rCR": "'\rCR", "\tx": "'\tx", "\ry": "'\ry", "-boom": "'-boom",
	}
	g := func(s string) string {
		if v, ok := guarded[s]; ok {
			return v
		}
		return strings.ReplaceAll(s, "\r\n", "\n") // encoding/csv's reading of a CR LF in a field
	}
	for i, p := range people {
		want = append(want, cells{strconv.FormatInt(ids[i], 10), fmt.Sprintf("+25472000000%d", i), g(p.first), g(p.last), "whatsapp", g(p.lastError), g(p.content)})
	}
	for _, r := range recs[1:] {
		if len(r) != 21 {
			t.Fatalf("record of %d cells: %q", len(r), r)
		}
		got = append(got, cells{r[0], r[3], r[4], r[5], r[6], r[9], r[10]})
	}
	if diff := cmp.Diff(want, got); diff != "" {
		t.Errorf("cells (-want +got):\n%s", diff)
	}

	t.Run("empty campaign is the header alone", func(t *testing.T) {
		rec := env.do(t, http.MethodGet, fmt.Sprintf("/campaigns/%d/messages.csv", mvCampaign(t, db, "sms")))
		if rec.Code != http.StatusOK || rec.Body.String() != header {
			t.Errorf("%d %q", rec.Code, rec.Body)
		}
	})
	t.Run("unknown campaign is a JSON 404", func(t *testing.T) {
		rec := env.do(t, http.MethodGet, "/campaigns/999999/messages.csv")
		if body := errorBody(t, rec); rec.Code != http.StatusNotFound || body.Code != "CAMPAIGN_NOT_FOUND" ||
			rec.Header().Get(echo.HeaderContentDisposition) != "" {
			t.Errorf("%d %s %v", rec.Code, body.Code, rec.Header())
		}
	})
	t.Run("malformed query is a JSON 400", func(t *testing.T) {
		rec := env.do(t, http.MethodGet, fmt.Sprintf("/campaigns/%d/messages.csv?x=%%zz", campaign))
		if body := errorBody(t, rec); rec.Code != http.StatusBadRequest || body.Code != errs.CodeValidation {
			t.Errorf("%d %s", rec.Code, body.Code)
		}
	})
}

// bulkFixture fills a campaign with n messages in a few statements: every
// status, tricky names and texts (commas, quotes, line breaks, emoji,
// formula-like starts), provider details on a third of them, erased
// customers, and test sends (left out of the export) among them. It
// returns the campaign's id.
func bulkFixture(t testing.TB, db *sqlx.DB, n, padding int) int64 {
	t.Helper()
	start := time.Now()
	campaign := mvCampaign(t, db, "sms")
	names := []string{"Alice", "Smith, John", `O"Brien`, "Line\nBreak", "Café 🎉", "=1+2", "-5", "+x", "@me", "\tTab",
		"\rCR", "a\r\nb", " spaced ", "Zoë", "李", `"quoted"`}
	texts := []string{"Hi {first}, 20% off", "=HYPERLINK(\"x\")", "Hi, \"friend\"\nline two", "@cmd", "Plain 🎉",
		"-5 off", "+bonus", "\ttab", "\rcr", "comma, inside", ""}
	lastErrors := []string{"provider said no", "-boom", "=err", "timeout, retrying"}
	mvExec(t, db, `
INSERT INTO customers (phone, first_name, last_name)
SELECT '+2547' || lpad(g::text, 8, '0'),
       ($2::text[])[1 + g % cardinality($2::text[])],
       ($2::text[])[1 + (g / 7) % cardinality($2::text[])]
FROM generate_series(1, $1::int) g`, n, pq.Array(names))
	mvExec(t, db, `
INSERT INTO outbound_messages (campaign_id, customer_id, status, rendered_content, last_error, attempts,
    provider, provider_message_id, segments, encoding, cost, currency, created_at, sent_at, delivered_at, updated_at, test, phone)
SELECT $1, CASE WHEN c.id % 1000 = 999 THEN NULL ELSE c.id END,
       (ARRAY['pending','sending','sent','delivered','undelivered','failed','cancelled'])[1 + c.id % 7],
       CASE WHEN c.id % 13 = 0 THEN NULL ELSE ($2::text[])[1 + c.id % cardinality($2::text[])] || repeat('x', $4::int) END,
       CASE WHEN c.id % 5 = 0 THEN ($3::text[])[1 + c.id % cardinality($3::text[])] END,
       c.id % 4,
       CASE WHEN c.id % 3 = 0 THEN 'africastalking' END,
       CASE WHEN c.id % 3 = 0 THEN 'ATXid_' || c.id END,
       CASE WHEN c.id % 3 = 0 THEN 1 + c.id % 3 END,
       CASE WHEN c.id % 3 = 0 THEN (ARRAY['GSM-7','UCS-2'])[1 + c.id % 2] END,
       CASE WHEN c.id % 3 = 0 THEN 0.8 + (c.id % 100) / 1000.0 END,
       CASE WHEN c.id % 3 = 0 THEN 'KES' END,
       timestamptz '2025-05-20 08:00:00+03' + c.id * interval '1 millisecond',
       CASE WHEN c.id % 3 = 0 THEN timestamptz '2025-05-20 09:00:00Z' + c.id * interval '1 microsecond' END,
       CASE WHEN c.id % 6 = 0 THEN timestamptz '2025-05-20 09:00:05Z' END,
       timestamptz '2025-05-21 00:00:00Z',
       c.id % 1000 = 999,
       CASE WHEN c.id % 1000 = 999 THEN '+15550000001' END
FROM customers c`, campaign, pq.Array(texts), pq.Array(lastErrors), padding)
	// Erase some customers: their messages stay, with no customer.
	mvExec(t, db, `DELETE FROM customers WHERE id % 997 = 0`)
	mvExec(t, db, `ANALYZE outbound_messages`) // plan the chunks on real statistics
	t.Logf("fixture: %d messages in %v", n, time.Since(start).Round(time.Millisecond))
	return campaign
}

// wantRowsSQL is the test's own reading of what the export must hold,
// written independently of exportChunkSQL: every cell as text, NULL as the empty string.
const wantRowsSQL = `
SELECT m.id::text, m.campaign_id::text, coalesce(m.customer_id::text, ''), coalesce(m.phone, u.phone, ''),
       coalesce(u.first_name, ''), coalesce(u.last_name, ''), k.channel, m.status, m.attempts::text,
       coalesce(m.last_error, ''), coalesce(m.rendered_content, ''), coalesce(m.provider, ''),
       coalesce(m.provider_message_id, ''), coalesce(m.encoding, ''), coalesce(m.segments::text, ''),
       coalesce(CASE WHEN scale(trim_scale(m.cost)) < 2 THEN round(m.cost, 2)::text ELSE trim_scale(m.cost)::text END, ''),
       coalesce(m.currency, ''), m.created_at, m.sent_at, m.delivered_at, m.updated_at
FROM outbound_messages m
JOIN campaigns k ON k.id = m.campaign_id
LEFT JOIN customers u ON u.id = m.customer_id
WHERE m.campaign_id = $1 AND NOT m.test
ORDER BY m.id`

// wantGuard is the formula-injection rule, restated for the test.
func wantGuard(s string) string {
	if s != "" && strings.ContainsRune("=+-@\t\r", rune(s[0])) {
		return "'" + s
	}
	return s
}

// compareExport reads the CSV from r and the campaign's rows from db side
// by side, one row at a time (so the comparison itself holds nothing), and
// returns how many data rows matched.
func compareExport(t testing.TB, db *sqlx.DB, campaign int64, r io.Reader) int {
	t.Helper()
	rows, err := db.QueryContext(context.Background(), wantRowsSQL, campaign)
	if err != nil {
		t.Fatal(err)
	}
	defer rows.Close()
	cr := csv.NewReader(bufio.NewReaderSize(r, 64<<10))
	cr.ReuseRecord = true
	header, err := cr.Read()
	if err != nil || strings.Join(header, ",") != strings.Join(exportColumns, ",") {
		t.Fatalf("header %q, %v", header, err)
	}
	want := make([]string, 21)
	ptrs := make([]any, 21)
	for i := range 17 {
		ptrs[i] = &want[i]
	}
	var created, updated time.Time
	var sent, delivered sql.NullTime
	ptrs[17], ptrs[18], ptrs[19], ptrs[20] = &created, &sent, &delivered, &updated
	ts := func(t sql.NullTime) string {
		if !t.Valid {
			return ""
		}
		return t.Time.UTC().Format(time.RFC3339Nano)
	}
	n, bad := 0, 0
	for rows.Next() {
		if err := rows.Scan(ptrs...); err != nil {
			t.Fatal(err)
		}
		for _, i := range []int{4, 5, 9, 10} { // first_name, last_name, last_error, rendered_content
			// encoding/csv reads a CR LF inside a quoted field as LF.
			want[i] = strings.ReplaceAll(wantGuard(want[i]), "\r\n", "\n")
		}
		want[17], want[18], want[19], want[20] = created.UTC().Format(time.RFC3339Nano), ts(sent), ts(delivered), updated.UTC().Format(time.RFC3339Nano)
		got, err := cr.Read()
		if err != nil {
			t.Fatalf("row %d (id %s): %v", n+1, want[0], err)
		}
		if !slices.Equal(want, got) { // cmp.Diff only to explain: it is slow for 200,000 rows
			if bad++; bad <= 5 {
				t.Errorf("row %d (-table +csv):\n%s", n+1, cmp.Diff(want, got))
			}
		}
		n++
	}
	if err := rows.Err(); err != nil {
		t.Fatal(err)
	}
	if extra, err := cr.Read(); !errors.Is(err, io.EOF) {
		t.Errorf("after %d rows the CSV goes on: %q, %v", n, extra, err)
	}
	if bad > 0 {
		t.Fatalf("%d of %d rows differ", bad, n)
	}
	return n
}

// memSampler records the peak heap in use (runtime.MemStats.HeapInuse,
// read through runtime/metrics, which does not stop the world) and resident
// set size while it runs, sampling every 2 ms.
type memSampler struct {
	heapBase, rssBase uint64
	heapPeak, rssPeak uint64
	stop              chan struct{}
	done              chan struct{}
}

func startMemSampler() *memSampler {
	runtime.GC()
	s := &memSampler{heapBase: heapInuse(), rssBase: rss(), stop: make(chan struct{}), done: make(chan struct{})}
	s.heapPeak, s.rssPeak = s.heapBase, s.rssBase
	go func() { // exits when stop is closed
		defer close(s.done)
		tick := time.NewTicker(2 * time.Millisecond)
		defer tick.Stop()
		for {
			select {
			case <-s.stop:
				return
			case <-tick.C:
			}
			s.heapPeak, s.rssPeak = max(s.heapPeak, heapInuse()), max(s.rssPeak, rss())
		}
	}()
	return s
}

// finish stops sampling and returns the peak growth of the heap in use and
// of the RSS over their values at the start, and the peak RSS, in bytes.
func (s *memSampler) finish() (heapGrowth, rssGrowth, rssPeak uint64) {
	close(s.stop)
	<-s.done
	return s.heapPeak - s.heapBase, s.rssPeak - s.rssBase, s.rssPeak
}

// heapInuse is MemStats.HeapInuse: the heap's in-use spans, objects and the
// free space within those spans.
func heapInuse() uint64 {
	m := []metrics.Sample{{Name: "/memory/classes/heap/objects:bytes"}, {Name: "/memory/classes/heap/unused:bytes"}}
	metrics.Read(m)
	return m[0].Value.Uint64() + m[1].Value.Uint64()
}

// rss returns the process's resident set size, 0 where /proc is missing.
func rss() uint64 {
	b, err := os.ReadFile("/proc/self/statm")
	if err != nil {
		return 0
	}
	f := strings.Fields(string(b))
	if len(f) < 2 {
		return 0
	}
	pages, _ := strconv.ParseUint(f[1], 10, 64)
	return pages * uint64(os.Getpagesize())
}

const mb = 1 << 20

// TestMessagesExportLarge exports 200,000 messages through the handler over
// real HTTP, parses the CSV back with encoding/csv and compares it row for
// row with the table, while sampling memory: the heap in use may not grow
// by more than 32 MB however many rows go out. It does not run in parallel
// with other tests, whose allocations would count against it.
func TestMessagesExportLarge(t *testing.T) {
	env := newMsgEnv(t)
	const n = 200_000
	campaign := bulkFixture(t, env.db.DB, n, 40)
	srv := httptest.NewServer(env.e)
	t.Cleanup(srv.Close)

	mem := startMemSampler()
	start := time.Now()
	resp, err := http.Get(fmt.Sprintf("%s/campaigns/%d/messages.csv", srv.URL, campaign))
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK || resp.Header.Get("Content-Type") != "text/csv; charset=utf-8" {
		t.Fatalf("status %d, type %q", resp.StatusCode, resp.Header.Get("Content-Type"))
	}
	counted := &countingReader{r: resp.Body}
	rows := compareExport(t, env.db.DB, campaign, counted)
	elapsed := time.Since(start)
	heapGrowth, rssGrowth, rssPeak := mem.finish()

	want := n - n/1000 // the test sends
	if rows != want {
		t.Errorf("%d rows, want %d", rows, want)
	}
	t.Logf("exported and compared %d rows (%.1f MB of CSV) in %v (%.0f rows/s); heap in use grew %.1f MB, RSS grew %.1f MB (peak %.1f MB)",
		rows, float64(counted.n)/mb, elapsed.Round(time.Millisecond), float64(rows)/elapsed.Seconds(),
		float64(heapGrowth)/mb, float64(rssGrowth)/mb, float64(rssPeak)/mb)
	if heapGrowth >= 32*mb {
		t.Errorf("heap in use grew %.1f MB during the export, want < 32 MB", float64(heapGrowth)/mb)
	}
}

type countingReader struct {
	r io.Reader
	n int64
}

func (c *countingReader) Read(p []byte) (int, error) {
	n, err := c.r.Read(p)
	c.n += int64(n)
	return n, err
}

// TestMessagesExportAbortsMidStream kills the export's database session
// after the download began: the client must see a broken download, not a
// complete-looking file, and the failure must be logged. Not parallel: the
// export is found by its session's application_name.
func TestMessagesExportAbortsMidStream(t *testing.T) {
	db := pgtest.New(t)
	campaign := bulkFixture(t, db.DB, 60_000, 300)
	// A pool whose sessions carry the schema's name, to find the export's.
	u, err := url.Parse(db.URL)
	if err != nil {
		t.Fatal(err)
	}
	q := u.Query()
	q.Set("application_name", db.Schema)
	u.RawQuery = q.Encode()
	ctx := context.Background()
	conn, err := postgres.Open(ctx, u.String(), postgres.Options{MaxOpenConns: 2})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	env := newMsgEnvOn(t, db, conn)
	srv := httptest.NewServer(env.e)
	t.Cleanup(srv.Close)

	resp, err := http.Get(fmt.Sprintf("%s/campaigns/%d/messages.csv", srv.URL, campaign))
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("status %d", resp.StatusCode)
	}
	if _, err := io.ReadFull(resp.Body, make([]byte, 64<<10)); err != nil {
		t.Fatal(err)
	}
	var killed int
	if err := db.GetContext(ctx, &killed, `
SELECT count(*) FROM (SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE application_name = $1) k`, db.Schema); err != nil {
		t.Fatal(err)
	}
	if killed == 0 {
		t.Fatal("no export session found")
	}
	n, err := io.Copy(io.Discard, resp.Body)
	if err == nil {
		t.Fatalf("the download ended cleanly after %d more bytes; want it broken", n)
	}
	t.Logf("download broken after %d more bytes: %v", n, err)
	// The failure, and the request's own line saying the export was
	// aborted, are logged once the handler returns, which the client does
	// not wait for.
	deadline := time.Now().Add(5 * time.Second)
	for log := env.log.String(); !strings.Contains(log, "aborting it") || !strings.Contains(log, "export_aborted=true"); log = env.log.String() {
		if time.Now().After(deadline) {
			t.Fatalf("failure not logged:\n%s", log)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// BenchmarkExport exports MESSAGES_EXPORT_N messages (default 100,000) per
// iteration and reports rows/s and the peak growth of the heap in use and of
// the RSS. Run: MESSAGES_EXPORT_N=1000000 go test -run '^$' -bench BenchmarkExport -benchtime 1x ./messaging/
func BenchmarkExport(b *testing.B) {
	n := 100_000
	if v := os.Getenv("MESSAGES_EXPORT_N"); v != "" {
		var err error
		if n, err = strconv.Atoi(v); err != nil || n < 1 {
			b.Fatalf("MESSAGES_EXPORT_N=%q", v)
		}
	}
	db := pgtest.New(b)
	campaign := bulkFixture(b, db.DB, n, 40)
	repo := NewRepo(db.DB)
	ctx := context.Background()
	w := &countingWriter{}
	mem := startMemSampler()
	b.ResetTimer()
	start := time.Now()
	for b.Loop() {
		w.n = 0
		if err := repo.ExportMessages(ctx, campaign, w); err != nil {
			b.Fatal(err)
		}
	}
	elapsed := time.Since(start)
	b.StopTimer()
	heapGrowth, rssGrowth, rssPeak := mem.finish()
	rows := n - n/1000
	b.ReportMetric(float64(rows*b.N)/elapsed.Seconds(), "rows/s")
	b.ReportMetric(float64(heapGrowth)/mb, "peak-heap-growth-MB")
	b.ReportMetric(float64(rssGrowth)/mb, "rss-growth-MB")
	b.ReportMetric(float64(rssPeak)/mb, "peak-rss-MB")
	b.ReportMetric(float64(w.n)/mb, "csv-MB")
}

type countingWriter struct{ n int64 }

func (w *countingWriter) Write(p []byte) (int, error) {
	w.n += int64(len(p))
	return len(p), nil
}
