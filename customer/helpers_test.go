package customer

import (
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"net/http/httptest"
	"strings"
	"testing"

	"github.com/labstack/echo/v4"

	"github.com/campaignd/dispatch/platform/httpx"
	"github.com/campaignd/dispatch/platform/postgres/pgtest"
)

// testEnv is a migrated schema of its own, a Service over it and the
// customer routes mounted on a real Echo with the app's error handler.
type testEnv struct {
	db  *pgtest.DB
	svc *Service
	e   *echo.Echo
}

func newEnv(t testing.TB, region string, opts HandlerOptions) *testEnv {
	t.Helper()
	db := pgtest.New(t)
	svc := NewService(NewRepo(db.DB), region)
	return &testEnv{db: db, svc: svc, e: newEcho(svc, opts)}
}

// newEcho mounts the customer routes over svc on an Echo that handles errors
// as the app does.
func newEcho(svc *Service, opts HandlerOptions) *echo.Echo {
	e := echo.New()
	e.HTTPErrorHandler = httpx.ErrorHandler(slog.New(slog.NewTextHandler(io.Discard, nil)))
	NewHandler(svc, opts).Register(e)
	return e
}

// do sends a request through the Echo instance. An empty contentType sends
// no Content-Type header.
func (v *testEnv) do(t testing.TB, method, target, contentType, body string) *httptest.ResponseRecorder {
	t.Helper()
	req := httptest.NewRequest(method, target, strings.NewReader(body))
	if contentType != "" {
		req.Header.Set(echo.HeaderContentType, contentType)
	}
	rec := httptest.NewRecorder()
	v.e.ServeHTTP(rec, req)
	return rec
}

func (v *testEnv) count(t testing.TB) int {
	t.Helper()
	var n int
	if err := v.db.Get(&n, `SELECT count(*) FROM customers`); err != nil {
		t.Fatalf("count customers: %v", err)
	}
	return n
}

// decodeBody decodes rec's body into a T after checking the status.
func decodeBody[T any](t testing.TB, rec *httptest.ResponseRecorder, wantStatus int) T {
	t.Helper()
	var v T
	if rec.Code != wantStatus {
		t.Fatalf("status %d, want %d; body %s", rec.Code, wantStatus, rec.Body)
	}
	if err := json.Unmarshal(rec.Body.Bytes(), &v); err != nil {
		t.Fatalf("decode body %q: %v", rec.Body, err)
	}
	return v
}

// envelope is the error body every failure must have.
type envelope struct {
	Error struct {
		Code    string         `json:"code"`
		Message string         `json:"message"`
		Details map[string]any `json:"details"`
	} `json:"error"`
}

// wantError checks that rec is the JSON error envelope with status and
// code, with a message, and returns it.
func wantError(t testing.TB, rec *httptest.ResponseRecorder, status int, code string) envelope {
	t.Helper()
	if ct := rec.Header().Get(echo.HeaderContentType); !strings.HasPrefix(ct, echo.MIMEApplicationJSON) {
		t.Errorf("Content-Type %q, want JSON; body %s", ct, rec.Body)
	}
	env := decodeBody[envelope](t, rec, status)
	if env.Error.Code != code {
		t.Errorf("code %q, want %q (message %q)", env.Error.Code, code, env.Error.Message)
	}
	if env.Error.Message == "" {
		t.Errorf("error envelope without a message: %s", rec.Body)
	}
	return env
}

// phone returns the i-th distinct valid Kenyan mobile number in E.164.
func phone(i int) string { return fmt.Sprintf("+2547%08d", i) }

// jsonRows renders inputs as a JSON import body.
func jsonRows(t testing.TB, rows []Input) string {
	t.Helper()
	b, err := json.Marshal(rows)
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}
