package httpx

import (
	"log/slog"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"

	"github.com/labstack/echo/v4"
	"github.com/labstack/echo/v4/middleware"

	"github.com/campaignd/dispatch/platform/logging"
)

func TestRequestID(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name, sent string
		kept       bool
	}{
		{"none", "", false},
		{"uuid", "0b6c3c1e-7a0e-4c55-9d43-6a8f2f1f4e10", true},
		{"dotted", "req_1.2-3", true},
		{"64 characters", strings.Repeat("a", 64), true},
		{"65 characters", strings.Repeat("a", 65), false},
		{"500 kB", strings.Repeat("x", 500_000), false},
		{"forged log line", "abc\",\"level\":\"ERROR", false},
		{"space", "a b", false},
		{"non-ASCII", "é", false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			var logged strings.Builder
			log := slog.New(logging.NewContextHandler(slog.NewJSONHandler(&logged, nil)))
			e := echo.New()
			e.Use(middleware.RequestIDWithConfig(RequestIDConfig()), Logger(log))
			var seen string
			e.GET("/", func(c echo.Context) error { seen = RequestID(c); return c.NoContent(http.StatusNoContent) })
			req := httptest.NewRequest(http.MethodGet, "/", nil)
			if tt.sent != "" {
				req.Header.Set(echo.HeaderXRequestID, tt.sent)
			}
			rec := httptest.NewRecorder()
			e.ServeHTTP(rec, req)
			got := rec.Header().Get(echo.HeaderXRequestID)
			if tt.kept && got != tt.sent {
				t.Errorf("X-Request-Id = %q, want the client's %q", got, tt.sent)
			}
			if !tt.kept && (got == tt.sent || !ValidRequestID(got)) {
				t.Errorf("X-Request-Id = %.80q, want a fresh id", got)
			}
			if seen != got {
				t.Errorf("handler saw request id %.80q, response has %q", seen, got)
			}
			if !strings.Contains(logged.String(), `"request_id":"`+got+`"`) || logged.Len() > 1000 {
				t.Errorf("log line %.300q does not carry request_id %q (or is too long)", logged.String(), got)
			}
		})
	}
}

// TestAccessLogClipsPath: the path is the client's to choose, up to the
// server's header limit; the access line keeps a short prefix of it.
func TestAccessLogClipsPath(t *testing.T) {
	t.Parallel()
	var logged strings.Builder
	e := echo.New()
	e.Use(middleware.RequestIDWithConfig(RequestIDConfig()), Logger(slog.New(slog.NewJSONHandler(&logged, nil))))
	e.ServeHTTP(httptest.NewRecorder(), httptest.NewRequest(http.MethodGet, "/"+strings.Repeat("p", 500_000), nil))
	if logged.Len() > 1000 {
		t.Errorf("a %d-byte access line", logged.Len())
	}
}
