package page

import (
	"errors"
	"net/url"
	"testing"

	"github.com/campaignd/dispatch/platform/errs"
)

func TestParse(t *testing.T) {
	tests := []struct {
		name      string
		query     string
		wantPage  int
		wantSize  int
		wantField string // non-empty: a VALIDATION_ERROR naming this field
	}{
		{"defaults", "", 1, DefaultSize, ""},
		{"explicit", "page=3&page_size=7", 3, 7, ""},
		{"largest size", "page_size=100", 1, 100, ""},
		{"size zero", "page_size=0", 0, 0, "page_size"},
		{"size too big", "page_size=101", 0, 0, "page_size"},
		{"size not a number", "page_size=ten", 0, 0, "page_size"},
		{"page zero", "page=0", 0, 0, "page"},
		{"page negative", "page=-1", 0, 0, "page"},
		{"page absurd", "page=9223372036854775807", 0, 0, "page"},
		{"garbage cursor", "cursor=!!!", 0, 0, "cursor"},
		{"cursor and page", "cursor=abc&page=2", 0, 0, "cursor"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			q, _ := url.ParseQuery(tt.query)
			r, err := Parse(q)
			if tt.wantField != "" {
				var e *errs.Error
				if !errors.As(err, &e) || e.Code != errs.CodeValidation || e.Details["field"] != tt.wantField {
					t.Fatalf("Parse(%q) error = %v, want VALIDATION_ERROR on %s", tt.query, err, tt.wantField)
				}
				return
			}
			if err != nil || r.Page != tt.wantPage || r.Size != tt.wantSize {
				t.Fatalf("Parse(%q) = %+v, %v; want page %d size %d", tt.query, r, err, tt.wantPage, tt.wantSize)
			}
		})
	}
}

func TestCursorRoundTrip(t *testing.T) {
	first, err := Parse(url.Values{"page_size": {"10"}}, "sms", "draft")
	if err != nil {
		t.Fatal(err)
	}
	info := first.Info(95, 4711, true)
	if info.NextCursor == nil || info.TotalPages != 10 || info.Page != 1 {
		t.Fatalf("info = %+v", info)
	}
	next, err := Parse(url.Values{"cursor": {*info.NextCursor}, "page_size": {"10"}}, "sms", "draft")
	if err != nil {
		t.Fatal(err)
	}
	if next.AfterID != 4711 || next.Page != 2 || next.Offset() != 0 {
		t.Errorf("next = %+v, want after 4711 on page 2 with no offset", next)
	}
	if _, err := Parse(url.Values{"cursor": {*info.NextCursor}}, "whatsapp", "draft"); err == nil {
		t.Error("a cursor replayed with other filters was accepted")
	}
	if last := first.Info(95, 1, false); last.NextCursor != nil {
		t.Errorf("last page has a next_cursor")
	}
}

func TestOffset(t *testing.T) {
	r, err := Parse(url.Values{"page": {"1000000000"}, "page_size": {"100"}})
	if err != nil {
		t.Fatal(err)
	}
	if got := r.Offset(); got != 99_999_999_900 {
		t.Errorf("Offset() = %d", got)
	}
}
