package customer

import (
	"net/http"
	"net/url"
	"strings"
	"testing"
)

// TestHostileInput sends the values that once reached PostgreSQL unchecked
// (a 500 logged at error) or were silently ignored: each is now a 400 naming
// what is wrong, and nothing is stored.
func TestHostileInput(t *testing.T) {
	t.Parallel()
	v := newEnv(t, "KE", HandlerOptions{})
	const js = "application/json"
	tests := []struct {
		name, method, target, contentType, body string
		code, field                             string
	}{
		{"list location NUL", "GET", "/customers?location=%00", "", "", "VALIDATION_ERROR", "location"},
		{"list location invalid UTF-8", "GET", "/customers?location=%ff", "", "", "VALIDATION_ERROR", "location"},
		{"list location overlong slash", "GET", "/customers?location=%C0%AF", "", "", "VALIDATION_ERROR", "location"},
		{"list location control character", "GET", "/customers?location=a%1Bb", "", "", "VALIDATION_ERROR", "location"},
		{"list location 201 characters", "GET", "/customers?location=" + strings.Repeat("%C3%A9", 201), "", "", "VALIDATION_ERROR", "location"},
		{"list product NUL", "GET", "/customers?preferred_product=%00", "", "", "VALIDATION_ERROR", "preferred_product"},
		{"list product invalid UTF-8", "GET", "/customers?preferred_product=%ff", "", "", "VALIDATION_ERROR", "preferred_product"},
		{"list product overlong slash", "GET", "/customers?preferred_product=%C0%AF", "", "", "VALIDATION_ERROR", "preferred_product"},
		{"list malformed page escape", "GET", "/customers?page=%zz", "", "", "VALIDATION_ERROR", "page"},
		{"list malformed cursor escape", "GET", "/customers?cursor=%%%%", "", "", "VALIDATION_ERROR", "cursor"},
		{"list semicolon separator", "GET", "/customers?page=1;page_size=5", "", "", "VALIDATION_ERROR", "query"},
		{"opt in malformed query", "DELETE", "/customers/1/opt-out?channel=sms&x=%zz", "", "", "VALIDATION_ERROR", "x"},
		{"create right-to-left override", "POST", "/customers", js, `{"phone":"+254712345679","first_name":"Ali\u202Ece"}`, "VALIDATION_ERROR", "first_name"},
		{"create duplicate key", "POST", "/customers", js, `{"phone":"+254712345679","phone":"+254712345670"}`, "INVALID_JSON", "phone"},
		{"create upper-case key", "POST", "/customers", js, `{"PHONE":"+254712345679"}`, "INVALID_JSON", "PHONE"},
		{"import row duplicate key", "POST", "/customers/import", js, `[{"phone":"+254712345679"},{"phone":"+254712345670","location":"a","location":"b"}]`, "INVALID_JSON", "location"},
		{"import row upper-case key", "POST", "/customers/import", js, `[{"Phone":"+254712345679"}]`, "INVALID_JSON", "Phone"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			env := wantError(t, v.do(t, tt.method, tt.target, tt.contentType, tt.body), http.StatusBadRequest, tt.code)
			if got := env.Error.Details["field"]; got != tt.field {
				t.Errorf("details.field = %v, want %q (message %q)", got, tt.field, env.Error.Message)
			}
		})
	}
	if n := v.count(t); n != 0 {
		t.Errorf("%d customers stored by bad requests", n)
	}
}

// TestFilterCountsCharacters: a location of 200 non-ASCII characters (400
// bytes) is a valid customer field, so it can be listed by.
func TestFilterCountsCharacters(t *testing.T) {
	t.Parallel()
	v := newEnv(t, "KE", HandlerOptions{})
	loc := strings.Repeat("é", MaxFieldLen)
	decodeBody[Customer](t, v.do(t, http.MethodPost, "/customers", "application/json",
		`{"phone":"+254712345679","location":"`+loc+`"}`), http.StatusCreated)
	res := decodeBody[struct{ Data []Customer }](t,
		v.do(t, http.MethodGet, "/customers?location="+url.QueryEscape(loc), "", ""), http.StatusOK)
	if len(res.Data) != 1 {
		t.Errorf("listing by a 200-character location found %d customers, want 1", len(res.Data))
	}
}

// TestErrorsEchoLittle: a message repeats at most a short prefix of what the
// client sent, however long.
func TestErrorsEchoLittle(t *testing.T) {
	t.Parallel()
	v := newEnv(t, "KE", HandlerOptions{})
	huge := strings.Repeat("x", 1<<20)
	for _, tt := range []struct{ name, method, target, contentType, body string }{
		{"unknown key", "POST", "/customers", "application/json", `{"` + huge + `":1}`},
		{"huge number", "POST", "/customers", "application/json", `{"phone":1` + strings.Repeat("0", 1<<20) + `}`},
		{"unknown channel", "POST", "/customers/1/opt-out", "application/json", `{"channel":"` + huge + `"}`},
		{"bad id", "GET", "/customers/" + huge, "", ""},
		{"bad page", "GET", "/customers?page=" + huge, "", ""},
		{"content type", "POST", "/customers", "text/" + huge, `{}`},
		{"import row unknown key", "POST", "/customers/import", "application/json", `[{"` + huge + `":1}]`},
		{"CSV column", "POST", "/customers/import", "text/csv", "phone," + huge + "\n"},
	} {
		t.Run(tt.name, func(t *testing.T) {
			rec := v.do(t, tt.method, tt.target, tt.contentType, tt.body)
			if rec.Code < 400 || rec.Code >= 500 || rec.Body.Len() > 1000 {
				t.Errorf("status %d with a %d-byte body, want a 4xx of at most 1000 bytes: %.300s", rec.Code, rec.Body.Len(), rec.Body)
			}
		})
	}
}
