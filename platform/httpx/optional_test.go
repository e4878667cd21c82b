package httpx

import (
	"errors"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"

	"github.com/labstack/echo/v4"
	"github.com/labstack/echo/v4/middleware"

	"github.com/campaignd/dispatch/platform/errs"
)

// chunkedReader has no length a request could declare, so the body limit
// finds it too large only while it is read.
type chunkedReader struct{ io.Reader }

// TestBodyLimitChunked reads a body with no Content-Length through Echo's
// BodyLimit: over the limit it is 413 PAYLOAD_TOO_LARGE, whichever way the
// handler reads it, not 400 INVALID_JSON "code=413 ...".
func TestBodyLimitChunked(t *testing.T) {
	if kind := errs.KindOf(decodeError(echo.ErrStatusRequestEntityTooLarge)); kind != errs.KindTooLarge {
		t.Errorf("decodeError(echo 413) kind = %v, want KindTooLarge", kind)
	}
	e := echo.New()
	e.HTTPErrorHandler = ErrorHandler(slog.New(slog.NewTextHandler(io.Discard, nil)))
	e.Use(middleware.BodyLimit("1KB"))
	e.POST("/json", func(c echo.Context) error {
		var v map[string]any
		return BindJSON(c, &v)
	})
	e.POST("/empty", BindEmptyJSON)
	for _, path := range []string{"/json", "/empty"} {
		req := httptest.NewRequest(http.MethodPost, path, chunkedReader{strings.NewReader(`{"a":"` + strings.Repeat("x", 4096) + `"}`)})
		req.ContentLength = -1
		req.TransferEncoding = []string{"chunked"}
		req.Header.Set(echo.HeaderContentType, echo.MIMEApplicationJSON)
		rec := httptest.NewRecorder()
		e.ServeHTTP(rec, req)
		if rec.Code != http.StatusRequestEntityTooLarge || !strings.Contains(rec.Body.String(), `"PAYLOAD_TOO_LARGE"`) {
			t.Errorf("POST %s chunked over the limit = %d %s, want 413 PAYLOAD_TOO_LARGE", path, rec.Code, rec.Body)
		}
	}
}

// TestBindEmptyJSON: no body, or {} as JSON; a form (even empty), any other
// type and any other JSON are refused.
func TestBindEmptyJSON(t *testing.T) {
	tests := []struct {
		name, contentType, body string
		kind                    errs.Kind // KindInternal: accepted
	}{
		{"no body", "", "", errs.KindInternal},
		{"white space", "", " \r\n", errs.KindInternal},
		{"json, empty", "application/json", "", errs.KindInternal},
		{"empty object", "application/json", "{}", errs.KindInternal},
		{"empty object, charset", "application/json; charset=utf-8", " { }\n", errs.KindInternal},
		{"form", "application/x-www-form-urlencoded", "a=b", errs.KindUnsupportedMedia},
		{"empty form", "application/x-www-form-urlencoded", "", errs.KindUnsupportedMedia},
		{"text/plain", "text/plain", "{}", errs.KindUnsupportedMedia},
		{"body without a type", "", "{}", errs.KindUnsupportedMedia},
		{"a field", "application/json", `{"force":true}`, errs.KindInvalidJSON},
		{"null", "application/json", "null", errs.KindInvalidJSON},
		{"array", "application/json", "[]", errs.KindInvalidJSON},
		{"two values", "application/json", "{} {}", errs.KindInvalidJSON},
		{"malformed", "application/json", "{", errs.KindInvalidJSON},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var body io.Reader = http.NoBody
			if tt.body != "" {
				body = strings.NewReader(tt.body)
			}
			req := httptest.NewRequest(http.MethodPost, "/", body)
			if tt.contentType != "" {
				req.Header.Set(echo.HeaderContentType, tt.contentType)
			}
			err := BindEmptyJSON(echo.New().NewContext(req, httptest.NewRecorder()))
			var e *errs.Error
			switch {
			case tt.kind == errs.KindInternal && err != nil:
				t.Errorf("err = %v, want nil", err)
			case tt.kind != errs.KindInternal && (!errors.As(err, &e) || e.Kind != tt.kind):
				t.Errorf("err = %v, want kind %v", err, tt.kind)
			}
		})
	}
}
