package customer

import (
	"context"
	"database/sql"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"github.com/labstack/echo/v4"

	"github.com/campaignd/dispatch/platform/auth"
	"github.com/campaignd/dispatch/platform/channel"
	"github.com/campaignd/dispatch/platform/errs"
	"github.com/campaignd/dispatch/platform/httpx"
	"github.com/campaignd/dispatch/platform/logging/logtest"
)

// fakeEraser stands in for messaging's MessageEraser. It records the ids it
// was asked to erase and whether each customer's row still existed then,
// and runs during, if set, while Erase holds the customer.
type fakeEraser struct {
	db        *sql.DB
	cancelled int64
	err       error
	during    func(id int64)

	mu       sync.Mutex
	calls    []int64
	rowFound []bool
}

func (f *fakeEraser) EraseCustomer(ctx context.Context, id int64) (int64, error) {
	var n int
	err := f.db.QueryRowContext(ctx, `SELECT count(*) FROM customers WHERE id = $1`, id).Scan(&n)
	f.mu.Lock()
	f.calls = append(f.calls, id)
	f.rowFound = append(f.rowFound, err == nil && n == 1)
	f.mu.Unlock()
	if f.during != nil {
		f.during(id)
	}
	if f.err != nil {
		return 0, f.err
	}
	return f.cancelled, nil
}

func (f *fakeEraser) record() ([]int64, []bool) {
	f.mu.Lock()
	defer f.mu.Unlock()
	return append([]int64(nil), f.calls...), append([]bool(nil), f.rowFound...)
}

// eraseEnv is a testEnv whose routes sit behind the API-key middleware, as
// in the app, with an eraser wired and its log collected.
type eraseEnv struct {
	*testEnv
	eraser *fakeEraser
	logged *logtest.Buffer
	key    auth.Key
	secret string
}

func newEraseEnv(t *testing.T) *eraseEnv {
	t.Helper()
	v := newEnv(t, "KE", HandlerOptions{})
	ee := &eraseEnv{testEnv: v, eraser: &fakeEraser{db: v.db.DB.DB, cancelled: 1}, logged: &logtest.Buffer{}}
	v.svc.WithEraser(ee.eraser, slog.New(slog.NewJSONHandler(ee.logged, nil)))

	store := auth.NewStore(v.db.DB)
	ee.secret = auth.NewSecret()
	key, err := store.Create(context.Background(), "ops-erasure", auth.ScopeWrite, ee.secret)
	if err != nil {
		t.Fatal(err)
	}
	ee.key = key
	e := echo.New()
	e.HTTPErrorHandler = httpx.ErrorHandler(slog.New(slog.NewTextHandler(io.Discard, nil)))
	e.Use(auth.Middleware(auth.NewAuthenticator(store, time.Minute), auth.MiddlewareOptions{}))
	NewHandler(v.svc, HandlerOptions{}).Register(e)
	v.e = e
	return ee
}

// request sends method target with the env's API key.
func (ee *eraseEnv) request(t *testing.T, method, target string) *httptest.ResponseRecorder {
	t.Helper()
	req := httptest.NewRequest(method, target, nil)
	req.Header.Set(echo.HeaderAuthorization, "Bearer "+ee.secret)
	rec := httptest.NewRecorder()
	ee.e.ServeHTTP(rec, req)
	return rec
}

func (ee *eraseEnv) exec(t *testing.T, query string, args ...any) {
	t.Helper()
	if _, err := ee.db.Exec(query, args...); err != nil {
		t.Fatalf("%s: %v", query, err)
	}
}

func (ee *eraseEnv) insertID(t *testing.T, query string, args ...any) int64 {
	t.Helper()
	var id int64
	if err := ee.db.Get(&id, query, args...); err != nil {
		t.Fatalf("%s: %v", query, err)
	}
	return id
}

// campaign inserts a sending SMS campaign.
func (ee *eraseEnv) campaign(t *testing.T) int64 {
	t.Helper()
	return ee.insertID(t, `INSERT INTO campaigns (name, channel, status, base_template)
VALUES ('Erase', 'sms', 'sending', 'Hi {first_name}') RETURNING id`)
}

// message inserts a message with status and rendered text ("" for none).
func (ee *eraseEnv) message(t *testing.T, campaignID, customerID int64, status, content string) int64 {
	t.Helper()
	return ee.insertID(t, `INSERT INTO outbound_messages (campaign_id, customer_id, status, rendered_content)
VALUES ($1, $2, $3, nullif($4, '')) RETURNING id`, campaignID, customerID, status, content)
}

// storedMessage is what the customer feature can see of a message.
type storedMessage struct {
	CustomerID *int64  `db:"customer_id"`
	Status     string  `db:"status"`
	Content    *string `db:"rendered_content"`
}

func (ee *eraseEnv) stored(t *testing.T, id int64) storedMessage {
	t.Helper()
	var m storedMessage
	if err := ee.db.Get(&m, `SELECT customer_id, status, rendered_content FROM outbound_messages WHERE id = $1`, id); err != nil {
		t.Fatalf("read message %d: %v", id, err)
	}
	return m
}

func ptr[T any](v T) *T { return &v }

// TestEraseCustomer: DELETE runs the eraser while the customer still
// exists, then removes the row and its opt-outs; the customer's messages
// stay, with their status, detached from them; another customer's are
// untouched. One info line records it with the key that asked. A second
// DELETE is 404 and erases nothing. What the eraser does to the messages is
// messaging's (messaging/erase_test.go).
func TestEraseCustomer(t *testing.T) {
	t.Parallel()
	ee := newEraseEnv(t)
	ctx := context.Background()
	alice, err := ee.svc.Create(ctx, Input{Phone: phone(1), FirstName: "Alice"})
	if err != nil {
		t.Fatal(err)
	}
	bob, err := ee.svc.Create(ctx, Input{Phone: phone(2), FirstName: "Bob"})
	if err != nil {
		t.Fatal(err)
	}
	for _, id := range []int64{alice.ID, bob.ID} {
		if _, err := ee.svc.OptOut(ctx, id, channel.WhatsApp); err != nil {
			t.Fatal(err)
		}
	}
	k1, k2 := ee.campaign(t), ee.campaign(t)
	alicePending := ee.message(t, k1, alice.ID, "pending", "")
	aliceSent := ee.message(t, k2, alice.ID, "sent", "Hi Alice")
	bobPending := ee.message(t, k1, bob.ID, "pending", "")
	bobSent := ee.message(t, k2, bob.ID, "sent", "Hi Bob")

	rec := ee.request(t, http.MethodDelete, fmt.Sprintf("/customers/%d", alice.ID))
	if rec.Code != http.StatusNoContent || rec.Body.Len() != 0 {
		t.Fatalf("DELETE = %d %q, want 204 and no body", rec.Code, rec.Body)
	}
	calls, rowFound := ee.eraser.record()
	if diff := cmp.Diff([]int64{alice.ID}, calls); diff != "" {
		t.Errorf("eraser calls (-want +got):\n%s", diff)
	}
	if len(rowFound) == 1 && !rowFound[0] {
		t.Errorf("the customer's row was gone when the eraser ran; messages must be erased first")
	}

	wantError(t, ee.request(t, http.MethodGet, fmt.Sprintf("/customers/%d", alice.ID)), http.StatusNotFound, "CUSTOMER_NOT_FOUND")
	if got := ee.optOutRows(t, alice.ID); len(got) != 0 {
		t.Errorf("opt-outs left behind: %v", got)
	}
	if got := ee.optOutRows(t, bob.ID); !cmp.Equal(got, []channel.Channel{channel.WhatsApp}) {
		t.Errorf("bob's opt-outs = %v, want [whatsapp]", got)
	}
	for _, m := range []struct {
		id   int64
		want storedMessage
	}{
		// The fake eraser changes nothing: the status stays as the eraser left it.
		{alicePending, storedMessage{CustomerID: nil, Status: "pending"}},
		{aliceSent, storedMessage{CustomerID: nil, Status: "sent", Content: ptr("Hi Alice")}},
		{bobPending, storedMessage{CustomerID: &bob.ID, Status: "pending"}},
		{bobSent, storedMessage{CustomerID: &bob.ID, Status: "sent", Content: ptr("Hi Bob")}},
	} {
		if diff := cmp.Diff(m.want, ee.stored(t, m.id)); diff != "" {
			t.Errorf("message %d (-want +got):\n%s", m.id, diff)
		}
	}
	if _, err := ee.svc.Get(ctx, bob.ID); err != nil {
		t.Errorf("bob: %v", err)
	}

	// The log line: who was erased, what it cancelled, which key asked.
	var lines []map[string]any
	for _, l := range strings.Split(strings.TrimSpace(ee.logged.String()), "\n") {
		var m map[string]any
		if err := json.Unmarshal([]byte(l), &m); err != nil {
			t.Fatalf("log line %q: %v", l, err)
		}
		lines = append(lines, m)
	}
	want := map[string]any{"level": "INFO", "msg": "customer erased", "customer_id": float64(alice.ID),
		"messages_cancelled": float64(1), "api_key_id": float64(ee.key.ID), "api_key_name": "ops-erasure"}
	if len(lines) != 1 {
		t.Fatalf("logged %d lines, want 1: %s", len(lines), ee.logged)
	}
	delete(lines[0], "time")
	if diff := cmp.Diff(want, lines[0]); diff != "" {
		t.Errorf("log line (-want +got):\n%s", diff)
	}
	if strings.Contains(ee.logged.String(), ee.secret) || strings.Contains(ee.logged.String(), ee.key.Prefix) {
		t.Errorf("the log shows the key: %s", ee.logged)
	}

	// Again: nobody to erase, and the eraser is not asked.
	wantError(t, ee.request(t, http.MethodDelete, fmt.Sprintf("/customers/%d", alice.ID)), http.StatusNotFound, "CUSTOMER_NOT_FOUND")
	if calls, _ := ee.eraser.record(); len(calls) != 1 {
		t.Errorf("eraser called %d times, want once", len(calls))
	}
	if n := strings.Count(ee.logged.String(), "customer erased"); n != 1 {
		t.Errorf("%d erasures logged, want 1", n)
	}
}

// TestEraseFailureKeepsCustomer: when the messages cannot be erased, the
// customer stays (the error is the client's answer) and a retry completes
// the erasure.
func TestEraseFailureKeepsCustomer(t *testing.T) {
	t.Parallel()
	ee := newEraseEnv(t)
	cust, err := ee.svc.Create(context.Background(), Input{Phone: phone(1)})
	if err != nil {
		t.Fatal(err)
	}
	target := fmt.Sprintf("/customers/%d", cust.ID)
	ee.eraser.err = errs.Unavailable("postgres", errors.New("connection refused"))
	wantError(t, ee.request(t, http.MethodDelete, target), http.StatusServiceUnavailable, "UNAVAILABLE")
	if _, err := ee.svc.Get(context.Background(), cust.ID); err != nil {
		t.Fatalf("customer after a failed erasure: %v", err)
	}
	if strings.Contains(ee.logged.String(), "customer erased") {
		t.Errorf("a failed erasure was logged as done: %s", ee.logged)
	}

	ee.eraser.err = nil
	if rec := ee.request(t, http.MethodDelete, target); rec.Code != http.StatusNoContent {
		t.Fatalf("retry = %d %s, want 204", rec.Code, rec.Body)
	}
	if calls, _ := ee.eraser.record(); !cmp.Equal(calls, []int64{cust.ID, cust.ID}) {
		t.Errorf("eraser calls %v, want the customer twice", calls)
	}
	if n := ee.count(t); n != 0 {
		t.Errorf("%d customers left", n)
	}
}

// TestEraseHoldsNewMessages: a statement creating messages for the customer
// while their messages are being erased (a send racing the DELETE) locks
// the customer's row FOR KEY SHARE, as every message-creating statement
// does (messaging's insertByIDsSQL, materializeChunkSQL; 00018). It waits
// for the erasure and then finds the customer gone, so it creates nothing
// for nobody. The message and the customer row also let the test check
// that the deletion releases the customer's existing messages
// (customers_release_messages).
func TestEraseHoldsNewMessages(t *testing.T) {
	t.Parallel()
	ee := newEraseEnv(t)
	cust, err := ee.svc.Create(context.Background(), Input{Phone: phone(1)})
	if err != nil {
		t.Fatal(err)
	}
	k := ee.campaign(t)
	var earlier int64
	if err := ee.db.Get(&earlier, `INSERT INTO outbound_messages (campaign_id, customer_id, status) VALUES ($1, $2, 'sent') RETURNING id`,
		k, cust.ID); err != nil {
		t.Fatal(err)
	}
	inserted := make(chan error, 1)
	// The comment tells this test's insert from other tests' in pg_stat_activity.
	tag := "/* erase race " + ee.db.Schema + " */"
	ee.eraser.during = func(id int64) {
		go func() { // returns when the insert ends, which Erase's commit or rollback decides
			_, err := ee.db.Exec(`
WITH known AS (SELECT c.id FROM customers c WHERE c.id = $2 FOR KEY SHARE OF c)
INSERT INTO outbound_messages (campaign_id, customer_id) SELECT $1, id FROM known `+tag, k, id)
			inserted <- err
		}()
		// Wait until the insert is blocked on the customer's row.
		deadline := time.Now().Add(10 * time.Second)
		for {
			var waiting int
			if err := ee.db.Get(&waiting, `
SELECT count(*) FROM pg_stat_activity
WHERE datname = current_database() AND wait_event_type = 'Lock' AND query LIKE '%' || $1 || '%'`, tag); err != nil {
				t.Errorf("pg_stat_activity: %v", err)
				return
			}
			if waiting > 0 {
				return
			}
			select {
			case err := <-inserted:
				t.Errorf("a message was created for a customer being erased (err %v)", err)
				inserted <- err
				return
			default:
			}
			if time.Now().After(deadline) {
				t.Errorf("the insert never waited for the customer's row")
				return
			}
			time.Sleep(10 * time.Millisecond)
		}
	}
	if rec := ee.request(t, http.MethodDelete, fmt.Sprintf("/customers/%d", cust.ID)); rec.Code != http.StatusNoContent {
		t.Fatalf("DELETE = %d %s", rec.Code, rec.Body)
	}
	if err := <-inserted; err != nil {
		t.Errorf("insert racing the erasure: %v, want it to find the customer gone and insert nothing", err)
	}
	var n int
	if err := ee.db.Get(&n, `SELECT count(*) FROM outbound_messages WHERE id <> $1`, earlier); err != nil || n != 0 {
		t.Errorf("%d messages created during the erasure (%v), want none", n, err)
	}
	var ref *int64
	if err := ee.db.Get(&ref, `SELECT customer_id FROM outbound_messages WHERE id = $1`, earlier); err != nil || ref != nil {
		t.Errorf("the erased customer's earlier message has customer_id %v (%v), want NULL", ref, err)
	}
}

// TestEraseRefusals: a bad id is 400 and an unknown one 404 without asking
// the eraser; a Service without an eraser erases nothing.
func TestEraseRefusals(t *testing.T) {
	t.Parallel()
	ee := newEraseEnv(t)
	wantError(t, ee.request(t, http.MethodDelete, "/customers/abc"), http.StatusBadRequest, "VALIDATION_ERROR")
	wantError(t, ee.request(t, http.MethodDelete, "/customers/0"), http.StatusBadRequest, "VALIDATION_ERROR")
	wantError(t, ee.request(t, http.MethodDelete, "/customers/999999"), http.StatusNotFound, "CUSTOMER_NOT_FOUND")
	if calls, _ := ee.eraser.record(); len(calls) != 0 {
		t.Errorf("eraser asked about %v", calls)
	}
	if err := ee.svc.Erase(context.Background(), 999999); !errors.Is(err, ErrNotFound) {
		t.Errorf("Erase(unknown) = %v, want ErrNotFound", err)
	}

	unwired := NewService(NewRepo(ee.db.DB), "KE")
	cust, err := unwired.Create(context.Background(), Input{Phone: phone(1)})
	if err != nil {
		t.Fatal(err)
	}
	if err := unwired.Erase(context.Background(), cust.ID); err == nil || errs.KindOf(err) != errs.KindInternal {
		t.Errorf("Erase without an eraser = %v, want an internal error", err)
	}
	if _, err := unwired.Get(context.Background(), cust.ID); err != nil {
		t.Errorf("customer after an unwired erasure: %v", err)
	}
}
