package campaign

import (
	"encoding/json"
	"fmt"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"

	"github.com/labstack/echo/v4"

	"github.com/campaignd/dispatch/platform/channel"
	"github.com/campaignd/dispatch/platform/httpx"
	"github.com/campaignd/dispatch/platform/logging/logtest"
)

// campaignFuzzRoutes are the routes FuzzCampaignsAPI drives; {id} in a path
// is replaced by the fuzzed id, or by a fresh draft campaign's when that is
// empty.
var campaignFuzzRoutes = []struct{ method, path string }{
	{http.MethodGet, "/campaigns"},
	{http.MethodGet, "/campaigns/{id}"},
	{http.MethodPost, "/campaigns"},
	{http.MethodPatch, "/campaigns/{id}"},
	{http.MethodPost, "/campaigns/{id}/personalized-preview"},
	{http.MethodPost, "/campaigns/{id}/send"},
	{http.MethodPost, "/campaigns/{id}/pause"},
	{http.MethodPost, "/campaigns/{id}/resume"},
	{http.MethodPost, "/campaigns/{id}/cancel"},
	{http.MethodPost, "/campaigns/{id}/retry-failed"},
}

// FuzzCampaignsAPI drives the campaign handlers, over a real schema and
// Redis, with generated ids, query strings, JSON bodies and Idempotency-Keys.
// No input may be answered with a 5xx (a 500 is a bug: input that reached
// PostgreSQL unchecked, or a panic), and every error must be the envelope,
// with a message that does not grow with the input. Its seeds, the hostile
// inputs that once gave 500s, run with every `go test`.
func FuzzCampaignsAPI(f *testing.F) {
	se := newSendEnv(f)
	seedCustomers(f, se.db.DB, 3)
	// The app's error handler, logging where a failure can show the cause.
	var logged logtest.Buffer
	e := echo.New()
	e.HTTPErrorHandler = httpx.ErrorHandler(slog.New(slog.NewTextHandler(&logged, nil)))
	NewHandler(se.svc).Register(e)

	const (
		list, get, create, patch, preview, send = 0, 1, 2, 3, 4, 5
	)
	nested := strings.Repeat("[", 20_000) + strings.Repeat("]", 20_000)
	deepAudience := `{"audience":` + strings.Repeat(`{"audience":`, 5_000) + `{}` + strings.Repeat("}", 5_001)
	campaign := func(extra string) string {
		return `{"name":"n","channel":"sms","base_template":"Hi {first_name}"` + extra + `}`
	}
	for _, s := range []struct {
		route                uint8
		id, query, body, key string
	}{
		{list, "", "status=%00", "", ""},
		{list, "", "channel=%ff&status=%C0%AF", "", ""},
		{list, "", "page=%zz", "", ""},
		{list, "", "cursor=%%%%", "", ""},
		{list, "", "page=99999999999999999999", "", ""},
		{get, "%00", "", "", ""},
		{get, "99999999999999999999", "", "", ""},
		{create, "", "", campaign(`,"audience":{"location":"a\u0000b"}`), ""},
		{create, "", "", campaign(`,"audience":{"preferred_product":"\u0000"}`), ""},
		{create, "", "", campaign(`,"audience":{"location":"` + strings.Repeat("é", 200) + `"}`), ""},
		{create, "", "", "{\"name\":\"\xc0\xaf\",\"channel\":\"sms\",\"base_template\":\"\xff\"}", ""},
		{create, "", "", `{"name":"a\u202Eb","channel":"sms","base_template":"t"}`, ""},
		{create, "", "", `{"name":"a","name":"b","channel":"sms","base_template":"t"}`, ""},
		{create, "", "", `{"NAME":"a","channel":"sms","base_template":"t"}`, ""},
		{create, "", "", campaign(`,"customer_ids":[1e999]`), ""},
		{create, "", "", campaign(`,"customer_ids":[99999999999999999999]`), ""},
		{create, "", "", campaign(`,"scheduled_at":"99999-01-01T00:00:00Z"`), ""},
		{create, "", "", campaign(`,"scheduled_at":"2030-01-01T00:00:00+99:99"`), ""},
		{create, "", "", nested, ""},
		{create, "", "", deepAudience, ""},
		{patch, "", "", `{"audience":{"location":"a\u0000b"}}`, ""},
		{patch, "", "", `{"audience":{"LOCATION":"x"}}`, ""},
		{patch, "", "", `{"name":"a","name":"b"}`, ""},
		{patch, "", "", `{"audience":{"all":true,"all":true}}`, ""},
		{patch, "", "", `{"customer_ids":[0,-1,1e2]}`, ""},
		{patch, "", "", `{"scheduled_at":"\u0000"}`, ""},
		{patch, "", "", deepAudience, ""},
		{preview, "", "", `{"customer_id":1,"override_template":"\u0000"}`, ""},
		{preview, "", "", `{"customer_id":99999999999999999999}`, ""},
		{send, "", "", `{"audience":{"location":"a\u0000b"}}`, ""},
		{send, "", "", `{"audience":{"preferred_product":"\u0000"}}`, ""},
		{send, "", "", `{"customer_ids":[1],"customer_ids":[2]}`, ""},
		{send, "", "", `{"audience":{"all":true}}`, "k\xff"},
		{send, "", "", `{"audience":{"all":true}}`, "\u202e"},
		{send, "", "", `{"customer_ids":[1e999]}`, ""},
		{6, "", "", `{"x":1}`, ""},
		{8, "", "", "\x00", ""},
	} {
		f.Add(s.route, s.id, s.query, s.body, s.key)
	}

	f.Fuzz(func(t *testing.T, route uint8, id, query, body, key string) {
		r := campaignFuzzRoutes[int(route)%len(campaignFuzzRoutes)]
		if id == "" && strings.Contains(r.path, "{id}") {
			id = fmt.Sprint(se.insertCampaign(t, "fuzz", channel.SMS, StatusDraft))
		}
		req := httptest.NewRequest(r.method, "/", strings.NewReader(body))
		// Set, not parsed: any bytes a client could put on the request line.
		req.URL.Path = strings.ReplaceAll(r.path, "{id}", id)
		req.URL.RawQuery = query
		if body != "" {
			req.Header.Set(echo.HeaderContentType, echo.MIMEApplicationJSON)
		}
		if key != "" {
			req.Header["Idempotency-Key"] = []string{key} // as sent: any bytes
		}
		rec := httptest.NewRecorder()
		e.ServeHTTP(rec, req)

		if rec.Code >= 500 {
			t.Fatalf("%s %.100q: %d %s\nlogged: %s", r.method, req.URL.Path, rec.Code, rec.Body, logged.String())
		}
		if rec.Code < 400 {
			return
		}
		var env httpx.Envelope
		if err := json.Unmarshal(rec.Body.Bytes(), &env); err != nil || env.Error.Code == "" || env.Error.Message == "" {
			t.Fatalf("%s %.100q: %d is not the error envelope (%v): %.500s", r.method, req.URL.Path, rec.Code, err, rec.Body)
		}
		// A template's problem lists what is wrong with it, bounded by the
		// template's own limit; every other message repeats little.
		if _, template := env.Error.Details["problem"]; !template && len(env.Error.Message) > 1024 {
			t.Fatalf("%s %.100q: a %d-byte message: %.300s", r.method, req.URL.Path, len(env.Error.Message), env.Error.Message)
		}
	})
}
