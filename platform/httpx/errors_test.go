package httpx

import (
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"

	"github.com/labstack/echo/v4"

	"github.com/campaignd/dispatch/platform/errs"
)

func TestErrorHandler(t *testing.T) {
	notFound := errs.New(errs.KindNotFound, "CAMPAIGN_NOT_FOUND", "campaign not found")
	tests := []struct {
		name       string
		err        error
		wantStatus int
		wantCode   string
		wantMsg    string // substring; "" skips
	}{
		{"domain error wrapped", fmt.Errorf("get: %w", notFound.Withf("campaign %d not found", 9)), 404, "CAMPAIGN_NOT_FOUND", "campaign 9 not found"},
		{"validation", errs.Validation("name", "name is required"), 400, "VALIDATION_ERROR", "name is required"},
		{"unavailable", errs.Unavailable("postgres", errors.New("dial tcp: refused")), 503, "UNAVAILABLE", "postgres"},
		{"echo 404", echo.ErrNotFound, 404, "NOT_FOUND", ""},
		{"echo 405", echo.ErrMethodNotAllowed, 405, "METHOD_NOT_ALLOWED", ""},
		{"echo 413", echo.ErrStatusRequestEntityTooLarge, 413, "PAYLOAD_TOO_LARGE", ""},
		{"internal hides details", errors.New("pq: password=hunter2 failed"), 500, "INTERNAL_ERROR", ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			e := echo.New()
			e.HTTPErrorHandler = ErrorHandler(slog.New(slog.NewTextHandler(io.Discard, nil)))
			e.GET("/x", func(echo.Context) error { return tt.err })
			rec := httptest.NewRecorder()
			e.ServeHTTP(rec, httptest.NewRequest(http.MethodGet, "/x", nil))
			var env Envelope
			if err := json.Unmarshal(rec.Body.Bytes(), &env); err != nil {
				t.Fatalf("body %q: %v", rec.Body, err)
			}
			if rec.Code != tt.wantStatus || env.Error.Code != tt.wantCode || !strings.Contains(env.Error.Message, tt.wantMsg) {
				t.Errorf("got %d %+v, want %d %s %q", rec.Code, env.Error, tt.wantStatus, tt.wantCode, tt.wantMsg)
			}
			if strings.Contains(rec.Body.String(), "hunter2") {
				t.Errorf("internal details leaked: %s", rec.Body)
			}
		})
	}
}

func TestBindJSON(t *testing.T) {
	type body struct {
		Name string  `json:"name"`
		IDs  []int64 `json:"ids"`
	}
	tests := []struct {
		name, contentType, body string
		wantCode                string // "" means success
	}{
		{"ok", "application/json", `{"name":"a","ids":[1]}`, ""},
		{"charset ok", "application/json; charset=utf-8", `{"name":"a"}`, ""},
		{"wrong type", "application/json", `{"name":5}`, errs.CodeInvalidJSON},
		{"wrong element type", "application/json", `{"ids":["1"]}`, errs.CodeInvalidJSON},
		{"unknown field", "application/json", `{"nme":"a"}`, errs.CodeInvalidJSON},
		{"malformed", "application/json", `{"name":`, errs.CodeInvalidJSON},
		{"empty", "application/json", ``, errs.CodeInvalidJSON},
		{"two values", "application/json", `{} {}`, errs.CodeInvalidJSON},
		{"not an object", "application/json", `[1]`, errs.CodeInvalidJSON},
		{"no content type", "", `{}`, errs.CodeUnsupportedMedia},
		{"form", "application/x-www-form-urlencoded", `a=b`, errs.CodeUnsupportedMedia},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			req := httptest.NewRequest(http.MethodPost, "/", strings.NewReader(tt.body))
			if tt.contentType != "" {
				req.Header.Set("Content-Type", tt.contentType)
			}
			c := echo.New().NewContext(req, httptest.NewRecorder())
			var b body
			err := BindJSON(c, &b)
			var e *errs.Error
			switch {
			case tt.wantCode == "" && err != nil:
				t.Errorf("unexpected error %v", err)
			case tt.wantCode != "" && (!errors.As(err, &e) || e.Code != tt.wantCode):
				t.Errorf("error = %v, want code %s", err, tt.wantCode)
			}
		})
	}
}
