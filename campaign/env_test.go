package campaign

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/labstack/echo/v4"

	"github.com/campaignd/dispatch/messaging"
	"github.com/campaignd/dispatch/messaging/template"
	"github.com/campaignd/dispatch/platform/channel"
	"github.com/campaignd/dispatch/platform/errs"
	"github.com/campaignd/dispatch/platform/httpx"
	"github.com/campaignd/dispatch/platform/postgres/pgtest"
)

// testNow is the service's clock in tests, so "future" and "past" schedules
// do not depend on when the tests run.
var testNow = time.Date(2025, 5, 20, 8, 0, 0, 0, time.UTC)

// errCustomerNotFound stands in for the customer feature's sentinel.
var errCustomerNotFound = errs.New(errs.KindNotFound, "CUSTOMER_NOT_FOUND", "customer not found")

// fakeCustomers is an in-memory CustomerFinder.
type fakeCustomers map[int64]Contact

func (f fakeCustomers) Contact(_ context.Context, id int64) (Contact, error) {
	c, ok := f[id]
	if !ok {
		return Contact{}, errCustomerNotFound.Withf("customer %d not found", id)
	}
	return c, nil
}

var testCustomers = fakeCustomers{
	1: {ID: 1, Fields: template.Fields{FirstName: "Alice", LastName: "Smith", Location: "Lisbon", PreferredProduct: "espresso", Phone: "+351912345678"}},
	2: {ID: 2, Fields: template.Fields{FirstName: "Bob", Location: "", PreferredProduct: "green tea", Phone: "+14155550100"}},
	3: {ID: 3, Fields: template.Fields{FirstName: "Zoë 🌟", LastName: "Ōtsuka", Location: "東京", PreferredProduct: "抹茶", Phone: "+81312345678"}},
}

// testEnv is a service on a fresh schema, served by a real Echo with the
// app's error handler.
type testEnv struct {
	db  *pgtest.DB
	svc *Service
	e   *echo.Echo
}

func newTestEnv(t *testing.T) *testEnv {
	t.Helper()
	db := pgtest.New(t)
	svc := NewService(NewRepo(db.DB), messaging.Templates{}, testCustomers, func() time.Time { return testNow })
	return &testEnv{db: db, svc: svc, e: newEcho(svc)}
}

func newEcho(svc *Service) *echo.Echo {
	e := echo.New()
	e.HTTPErrorHandler = httpx.ErrorHandler(slog.New(slog.NewTextHandler(io.Discard, nil)))
	NewHandler(svc).Register(e)
	return e
}

// do sends a request; a non-empty body is sent as application/json. It is
// safe to call from several goroutines.
func (te *testEnv) do(method, target, body string) *httptest.ResponseRecorder {
	ct := ""
	if body != "" {
		ct = echo.MIMEApplicationJSON
	}
	return te.doCT(method, target, ct, body)
}

// doCT sends a request with the given Content-Type ("" sends none).
func (te *testEnv) doCT(method, target, contentType, body string) *httptest.ResponseRecorder {
	req := httptest.NewRequest(method, target, strings.NewReader(body))
	if contentType != "" {
		req.Header.Set(echo.HeaderContentType, contentType)
	}
	rec := httptest.NewRecorder()
	te.e.ServeHTTP(rec, req)
	return rec
}

// decodeJSON decodes rec's body into a T, failing the test on a status other
// than want.
func decodeJSON[T any](t testing.TB, rec *httptest.ResponseRecorder, want int) T {
	t.Helper()
	var v T
	if rec.Code != want {
		t.Fatalf("status = %d, want %d; body %s", rec.Code, want, rec.Body)
	}
	if err := json.Unmarshal(rec.Body.Bytes(), &v); err != nil {
		t.Fatalf("decode %s: %v", rec.Body, err)
	}
	return v
}

// wantError checks that rec is the JSON error envelope with status and code,
// and, when field is not empty, that details.field names it. It returns the
// envelope body for further checks.
func wantError(t testing.TB, rec *httptest.ResponseRecorder, status int, code, field string) httpx.Body {
	t.Helper()
	if rec.Code >= 500 && status < 500 {
		t.Errorf("got a %d: %s", rec.Code, rec.Body)
	}
	if rec.Code != status {
		t.Fatalf("status = %d, want %d; body %s", rec.Code, status, rec.Body)
	}
	if ct := rec.Header().Get(echo.HeaderContentType); !strings.HasPrefix(ct, echo.MIMEApplicationJSON) {
		t.Errorf("Content-Type = %q, want JSON", ct)
	}
	var env httpx.Envelope
	dec := json.NewDecoder(rec.Body)
	dec.DisallowUnknownFields()
	if err := dec.Decode(&env); err != nil {
		t.Fatalf("body is not the error envelope: %v", err)
	}
	if env.Error.Code != code {
		t.Errorf("code = %q, want %q (message %q)", env.Error.Code, code, env.Error.Message)
	}
	if env.Error.Message == "" {
		t.Error("message is empty")
	}
	if field != "" {
		if got := env.Error.Details["field"]; got != field {
			t.Errorf("details.field = %v, want %q (message %q)", got, field, env.Error.Message)
		}
	}
	return env.Error
}

// createCampaign creates a campaign through the API and returns it.
func (te *testEnv) createCampaign(t testing.TB, name string, ch channel.Channel, tmpl string) Campaign {
	t.Helper()
	body, _ := json.Marshal(CreateInput{Name: name, Channel: string(ch), BaseTemplate: tmpl})
	return decodeJSON[Campaign](t, te.do(http.MethodPost, "/campaigns", string(body)), http.StatusCreated)
}

// insertCampaign stores a campaign directly, for statuses the API cannot
// create; it returns the id.
func (te *testEnv) insertCampaign(t testing.TB, name string, ch channel.Channel, st Status) int64 {
	t.Helper()
	var id int64
	err := te.db.QueryRowContext(context.Background(),
		`INSERT INTO campaigns (name, channel, status, base_template) VALUES ($1, $2, $3, 'Hi {first_name}') RETURNING id`,
		name, ch, st).Scan(&id)
	if err != nil {
		t.Fatalf("insert campaign: %v", err)
	}
	return id
}

// insertCustomers stores n customers and returns their ids.
func (te *testEnv) insertCustomers(t testing.TB, n int) []int64 {
	t.Helper()
	ids := make([]int64, 0, n)
	for i := range n {
		var id int64
		err := te.db.QueryRowContext(context.Background(),
			`INSERT INTO customers (phone, first_name) VALUES ($1, $2) RETURNING id`,
			fmt.Sprintf("+1555%07d", i), fmt.Sprintf("C%d", i)).Scan(&id)
		if err != nil {
			t.Fatalf("insert customer: %v", err)
		}
		ids = append(ids, id)
	}
	return ids
}

// insertMessage stores one outbound message, as the messaging feature would.
func (te *testEnv) insertMessage(t testing.TB, campaignID, customerID int64, status string) {
	t.Helper()
	_, err := te.db.ExecContext(context.Background(),
		`INSERT INTO outbound_messages (campaign_id, customer_id, status) VALUES ($1, $2, $3)`,
		campaignID, customerID, status)
	if err != nil {
		t.Fatalf("insert message: %v", err)
	}
}
