package customer

import (
	"encoding/json"
	"fmt"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"

	"github.com/labstack/echo/v4"

	"github.com/campaignd/dispatch/platform/httpx"
	"github.com/campaignd/dispatch/platform/logging/logtest"
)

// fuzzRoute is a route FuzzCustomersAPI drives; {id} in path is replaced by
// the fuzzed id, or by an existing customer's when that is empty.
type fuzzRoute struct{ method, path, contentType string }

var customerFuzzRoutes = []fuzzRoute{
	{http.MethodGet, "/customers", ""},
	{http.MethodGet, "/customers/{id}", ""},
	{http.MethodPost, "/customers", echo.MIMEApplicationJSON},
	{http.MethodPost, "/customers/import", echo.MIMEApplicationJSON},
	{http.MethodPost, "/customers/import", "text/csv"},
	{http.MethodPost, "/customers/{id}/opt-out", echo.MIMEApplicationJSON},
	{http.MethodDelete, "/customers/{id}/opt-out", echo.MIMEApplicationJSON},
}

// FuzzCustomersAPI drives the customer handlers, over a real schema, with
// generated ids, query strings and bodies. No input may be answered with a
// 5xx (a 500 is a bug: input that reached PostgreSQL unchecked, or a panic),
// and every error must be the envelope, with a message that does not grow
// with the input. Its seeds, the hostile inputs that once gave 500s, run
// with every `go test`.
func FuzzCustomersAPI(f *testing.F) {
	opts := HandlerOptions{ImportMaxBytes: 64 << 10, ImportMaxRows: 20}
	v := newEnv(f, "KE", opts)
	// The app's error handler, logging where a failure can show the cause.
	var logged logtest.Buffer
	v.e = echo.New()
	v.e.HTTPErrorHandler = httpx.ErrorHandler(slog.New(slog.NewTextHandler(&logged, nil)))
	NewHandler(v.svc, opts).Register(v.e)
	existing := decodeBody[Customer](f, v.do(f, http.MethodPost, "/customers", echo.MIMEApplicationJSON,
		`{"phone":"+254712345678","location":"Nairobi"}`), http.StatusCreated)

	const (
		list, get, create, importJSON, importCSV, optOut, optIn = 0, 1, 2, 3, 4, 5, 6
	)
	nested := strings.Repeat("[", 20_000) + strings.Repeat("]", 20_000)
	deepObject := strings.Repeat(`{"phone":`, 5_000) + `"x"` + strings.Repeat("}", 5_000)
	for _, s := range []struct {
		route           uint8
		id, query, body string
	}{
		{list, "", "location=%00", ""},
		{list, "", "location=%ff", ""},
		{list, "", "location=%C0%AF", ""},
		{list, "", "preferred_product=%00", ""},
		{list, "", "preferred_product=%ff", ""},
		{list, "", "preferred_product=%C0%AF", ""},
		{list, "", "location=" + strings.Repeat("%C3%A9", 201), ""},
		{list, "", "page=%zz", ""},
		{list, "", "cursor=%%%%", ""},
		{list, "", "page=99999999999999999999&page_size=-1", ""},
		{list, "", "page=1;page_size=2", ""},
		{list, "", "cursor=eyJhIjo5OTk5OTk5OTk5OTk5OTk5OTk5OTksInAiOjIsImYiOiIifQ", ""},
		{get, "%00", "", ""},
		{get, "99999999999999999999", "", ""},
		{get, "-1", "", ""},
		{get, "1e3", "", ""},
		{create, "", "", `{"phone":"+254712345679","location":"a\u0000b"}`},
		{create, "", "", "{\"phone\":\"+254712345679\",\"first_name\":\"\xc0\xaf\xff\"}"},
		{create, "", "", `{"phone":"+254712345679","first_name":"Ali\u202Ece"}`},
		{create, "", "", `{"phone":1e999999}`},
		{create, "", "", `{"phone":123456789012345678901234567890}`},
		{create, "", "", `{"phone":"+254712345679","phone":"+254712345670"}`},
		{create, "", "", `{"PHONE":"+254712345679"}`},
		{create, "", "", `{"phone":"\ud800"}`},
		{create, "", "", nested},
		{create, "", "", deepObject},
		{create, "", "", `{"` + strings.Repeat("k", 10_000) + `":1}`},
		{importJSON, "", "", `[{"phone":"+254712345679","location":"\u0000"}]`},
		{importJSON, "", "", `[{"phone":"+254712345679","phone":"+254712345670"}]`},
		{importJSON, "", "", `[{"Phone":"+254712345679"}]`},
		{importJSON, "", "", nested},
		{importCSV, "", "", "phone,location\n+254712345679,a\x00b\n"},
		{importCSV, "", "", "phone,location\n+254712345679,\xc0\xaf\n"},
		{importCSV, "", "", "phone,PHONE\n1,2\n"},
		{optOut, "", "", `{"channel":"\u0000"}`},
		{optOut, "", "", `{"channel":"sms","channel":"whatsapp"}`},
		{optIn, "", "channel=%00", ""},
		{optIn, "", "channel=%zz", ""},
		{optIn, "", "channel=sms", `{"CHANNEL":"sms"}`},
	} {
		f.Add(s.route, s.id, s.query, s.body)
	}

	f.Fuzz(func(t *testing.T, route uint8, id, query, body string) {
		r := customerFuzzRoutes[int(route)%len(customerFuzzRoutes)]
		if id == "" {
			id = fmt.Sprint(existing.ID)
		}
		req := httptest.NewRequest(r.method, "/", strings.NewReader(body))
		// Set, not parsed: any bytes a client could put on the request line.
		req.URL.Path = strings.ReplaceAll(r.path, "{id}", id)
		req.URL.RawQuery = query
		if r.contentType != "" {
			req.Header.Set(echo.HeaderContentType, r.contentType)
		}
		rec := httptest.NewRecorder()
		v.e.ServeHTTP(rec, req)
		checkFuzzResponse(t, r.method, req.URL.Path, rec, &logged)
	})
}

// checkFuzzResponse fails on a 5xx, and on an error that is not the
// envelope or whose message grows with the input.
func checkFuzzResponse(t *testing.T, method, path string, rec *httptest.ResponseRecorder, logged *logtest.Buffer) {
	t.Helper()
	if rec.Code >= 500 {
		t.Fatalf("%s %.100q: %d %s\nlogged: %s", method, path, rec.Code, rec.Body, logged.String())
	}
	if rec.Code < 400 {
		return
	}
	var env envelope
	if err := json.Unmarshal(rec.Body.Bytes(), &env); err != nil || env.Error.Code == "" || env.Error.Message == "" {
		t.Fatalf("%s %.100q: %d is not the error envelope (%v): %.500s", method, path, rec.Code, err, rec.Body)
	}
	if len(env.Error.Message) > 1024 {
		t.Fatalf("%s %.100q: a %d-byte message: %.300s", method, path, len(env.Error.Message), env.Error.Message)
	}
}
