package httpx

import (
	"errors"
	"net/http"
	"net/http/httptest"
	"testing"

	"github.com/labstack/echo/v4"

	"github.com/campaignd/dispatch/platform/errs"
)

func TestQuery(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name, raw string
		field     string // "" means success
	}{
		{"empty", "", ""},
		{"plain", "page=2&location=Nairobi", ""},
		{"escapes", "location=S%C3%A3o+Paulo&x=%25", ""},
		{"bad escape in a value", "page=%zz", "page"},
		{"bad escape after a good pair", "page=1&cursor=%%%%", "cursor"},
		{"truncated escape", "location=abc%4", "location"},
		{"bad escape in a name", "pa%zzge=1", "query"},
		{"semicolon", "page=1;page_size=2", "query"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			req := httptest.NewRequest(http.MethodGet, "/", nil)
			req.URL.RawQuery = tt.raw
			_, err := Query(echo.New().NewContext(req, httptest.NewRecorder()))
			if tt.field == "" {
				if err != nil {
					t.Fatalf("Query(%q) = %v", tt.raw, err)
				}
				return
			}
			var e *errs.Error
			if !errors.As(err, &e) || e.Code != errs.CodeValidation || e.Details["field"] != tt.field {
				t.Errorf("Query(%q) = %#v, want VALIDATION_ERROR naming %q", tt.raw, err, tt.field)
			}
		})
	}
}
