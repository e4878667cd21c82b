package customer

import (
	"context"
	"errors"
	"fmt"
	"io"
	"iter"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"github.com/labstack/echo/v4"

	"github.com/campaignd/dispatch/platform/errs"
)

// importResponse is ImportResult as a client decodes it, strictly.
type importResponse map[string]any

func TestImportJSON10k(t *testing.T) {
	t.Parallel()
	v := newEnv(t, "KE", HandlerOptions{})
	const n = 10_000
	rows := make([]Input, n)
	for i := range rows {
		rows[i] = Input{Phone: phone(i), FirstName: fmt.Sprintf("First %d", i), LastName: "Ng'ang'a",
			Location: "Nairobi", PreferredProduct: "Shoes"}
	}
	rows[7].Phone = "0799 000 007" // national format, read as KE
	rows[8].FirstName = "  Zoë 🌟  "

	start := time.Now()
	rec := v.do(t, http.MethodPost, "/customers/import", "application/json", jsonRows(t, rows))
	elapsed := time.Since(start)
	got := decodeBody[importResponse](t, rec, http.StatusCreated)
	if diff := cmp.Diff(importResponse{"imported": float64(n)}, got); diff != "" {
		t.Errorf("response (-want +got):\n%s", diff)
	}
	t.Logf("imported %d JSON rows over HTTP in %v", n, elapsed)
	if c := v.count(t); c != n {
		t.Fatalf("%d customers stored, want %d", c, n)
	}

	var stored []Customer
	if err := v.db.Select(&stored, `SELECT `+columns+` FROM customers WHERE phone IN ($1, $2) ORDER BY phone`,
		"+254799000007", phone(8)); err != nil {
		t.Fatal(err)
	}
	if len(stored) != 2 || stored[0].FirstName != "Zoë 🌟" || stored[1].FirstName != "First 7" {
		t.Errorf("stored rows not normalised: %+v", stored)
	}

	// An import this large refreshes the planner's statistics before it
	// answers (analyzeAfterImport): autovacuum is off on the test server,
	// so nothing else analyses the table.
	if !v.analyzed(t) {
		t.Errorf("customers not analysed after importing %d rows", n)
	}
}

// analyzed reports whether customers has been analysed.
func (v *testEnv) analyzed(t *testing.T) bool {
	t.Helper()
	var done bool
	if err := v.db.Get(&done, `SELECT last_analyze IS NOT NULL FROM pg_stat_user_tables WHERE relid = 'customers'::regclass`); err != nil {
		t.Fatal(err)
	}
	return done
}

func TestImportCSV(t *testing.T) {
	t.Parallel()
	v := newEnv(t, "KE", HandlerOptions{})
	const n = 5_000
	var b strings.Builder
	// BOM, columns in another order and case, no last_name column.
	b.WriteString("\ufeffLocation, PHONE ,preferred_product,first_name\r\n")
	for i := range n {
		fmt.Fprintf(&b, "Nairobi,%s,Shoes,Customer %d\r\n", phone(i), i)
	}
	b.WriteString(`"Mombasa, Coast","0711 000 000","Bags ""XL""",Zoë` + "\n")
	b.WriteString(`Kisumu,+254711000001,,` + "\n") // empty fields

	rec := v.do(t, http.MethodPost, "/customers/import", "text/csv; charset=utf-8", b.String())
	if diff := cmp.Diff(importResponse{"imported": float64(n + 2)}, decodeBody[importResponse](t, rec, http.StatusCreated)); diff != "" {
		t.Errorf("response (-want +got):\n%s", diff)
	}
	if c := v.count(t); c != n+2 {
		t.Fatalf("%d customers stored, want %d", c, n+2)
	}
	var got Customer
	if err := v.db.Get(&got, `SELECT `+columns+` FROM customers WHERE phone = $1`, "+254711000000"); err != nil {
		t.Fatal(err)
	}
	want := Customer{ID: got.ID, Phone: "+254711000000", FirstName: "Zoë", Location: "Mombasa, Coast", PreferredProduct: `Bags "XL"`,
		CreatedAt: got.CreatedAt, UpdatedAt: got.UpdatedAt}
	if diff := cmp.Diff(want, got); diff != "" {
		t.Errorf("quoted row (-want +got):\n%s", diff)
	}
	if v.analyzed(t) {
		t.Errorf("customers analysed after importing %d rows, below analyzeAfterImport (%d)", n, analyzeAfterImport)
	}
}

// rowReport is one entry of details.rows as a client decodes it.
type rowReport struct {
	Index   *int   `json:"index"`
	Line    int    `json:"line"`
	Field   string `json:"field"`
	Message string `json:"message"`
}

type importErrorBody struct {
	Error struct {
		Code    string `json:"code"`
		Message string `json:"message"`
		Details struct {
			Rows        []rowReport `json:"rows"`
			InvalidRows int         `json:"invalid_rows"`
		} `json:"details"`
	} `json:"error"`
}

func intp(i int) *int { return &i }

// positions reduces reports to what a test asserts: where and which field.
func positions(rs []rowReport) []rowReport {
	out := make([]rowReport, len(rs))
	for i, r := range rs {
		if r.Message == "" {
			r.Field += " (no message)"
		}
		out[i] = rowReport{Index: r.Index, Line: r.Line, Field: r.Field}
	}
	return out
}

func TestImportIsAllOrNothing(t *testing.T) {
	t.Parallel()
	v := newEnv(t, "KE", HandlerOptions{})
	existing, err := v.svc.Create(context.Background(), Input{Phone: phone(999_999)})
	if err != nil {
		t.Fatal(err)
	}

	t.Run("JSON rows reported by index", func(t *testing.T) {
		rows := make([]Input, 5000)
		for i := range rows {
			rows[i] = Input{Phone: phone(i)}
		}
		rows[3].Phone = "not a phone"
		rows[10].LastName = strings.Repeat("x", 201)
		rows[11] = Input{Phone: phone(10)}              // the phone of row 10 again
		rows[12] = Input{Phone: "0" + phone(12)[4:]}    // row 12 unchanged, national form
		rows[20] = Input{Phone: existing.Phone}         // an existing customer's phone
		rows[4999] = Input{Phone: "", Location: "\x00"} // two problems in one row

		rec := v.do(t, http.MethodPost, "/customers/import", "application/json", jsonRows(t, rows))
		wantError(t, rec, http.StatusBadRequest, "VALIDATION_ERROR")
		body := decodeBody[importErrorBody](t, rec, http.StatusBadRequest)
		if want := "5 of 5000 rows are invalid; nothing was imported"; body.Error.Message != want {
			t.Errorf("message %q, want %q", body.Error.Message, want)
		}
		if body.Error.Details.InvalidRows != 5 {
			t.Errorf("invalid_rows %d, want 5", body.Error.Details.InvalidRows)
		}
		want := []rowReport{
			{Index: intp(3), Field: "phone"},
			{Index: intp(10), Field: "last_name"},
			{Index: intp(11), Field: "phone"},
			{Index: intp(20), Field: "phone"},
			{Index: intp(4999), Field: "phone"},
			{Index: intp(4999), Field: "location"},
		}
		if diff := cmp.Diff(want, positions(body.Error.Details.Rows)); diff != "" {
			t.Errorf("details.rows (-want +got):\n%s", diff)
		}
		msgs := body.Error.Details.Rows
		if !strings.Contains(msgs[2].Message, "index 10") {
			t.Errorf("duplicate message %q does not point at the first row", msgs[2].Message)
		}
		if !strings.Contains(msgs[3].Message, fmt.Sprint(existing.ID)) {
			t.Errorf("existing-phone message %q does not name customer %d", msgs[3].Message, existing.ID)
		}
		if c := v.count(t); c != 1 {
			t.Errorf("%d customers stored, want only the existing one", c)
		}
	})

	t.Run("CSV rows reported by line", func(t *testing.T) {
		csv := "phone,first_name\n" + // line 1
			phone(1) + ",Ann\n" + // line 2
			"12,Bob\n" + // line 3: invalid phone
			"\"" + phone(3) + "\",\"two\nlines\"\n" + // lines 4-5: a quoted newline in first_name
			phone(1) + ",Dup\n" + // line 6: duplicate of line 2
			existing.Phone + ",Old\n" // line 7: existing
		rec := v.do(t, http.MethodPost, "/customers/import", "text/csv", csv)
		body := decodeBody[importErrorBody](t, rec, http.StatusBadRequest)
		want := []rowReport{
			{Line: 3, Field: "phone"},
			{Line: 4, Field: "first_name"},
			{Line: 6, Field: "phone"},
			{Line: 7, Field: "phone"},
		}
		if diff := cmp.Diff(want, positions(body.Error.Details.Rows)); diff != "" {
			t.Errorf("details.rows (-want +got):\n%s", diff)
		}
		if !strings.Contains(body.Error.Details.Rows[2].Message, "line 2") {
			t.Errorf("duplicate message %q does not point at line 2", body.Error.Details.Rows[2].Message)
		}
		if !strings.HasPrefix(body.Error.Message, "4 of 5 rows are invalid") {
			t.Errorf("message %q", body.Error.Message)
		}
		if c := v.count(t); c != 1 {
			t.Errorf("%d customers stored, want only the existing one", c)
		}
	})

	t.Run("report capped at 100 rows", func(t *testing.T) {
		rows := make([]Input, 300)
		for i := range rows {
			rows[i] = Input{Phone: "bad"}
		}
		body := decodeBody[importErrorBody](t, v.do(t, http.MethodPost, "/customers/import", "application/json", jsonRows(t, rows)), http.StatusBadRequest)
		if len(body.Error.Details.Rows) != 100 || body.Error.Details.InvalidRows != 300 {
			t.Errorf("%d rows reported, invalid_rows %d; want 100 and 300", len(body.Error.Details.Rows), body.Error.Details.InvalidRows)
		}
	})
}

// TestImportRollsBackOnRace covers what no check before the insert can
// see: a phone given to another customer by a concurrent request while the
// import runs, after the import's first batch went to the database. The
// import reports the row, and nothing it inserted is stored.
func TestImportRollsBackOnRace(t *testing.T) {
	t.Parallel()
	v := newEnv(t, "KE", HandlerOptions{})
	ctx := context.Background()
	taken := importBatch + 10
	var other Customer
	rows := func(yield func(ImportRow, error) bool) {
		for i := range importBatch + 100 {
			if i == importBatch { // the first batch has been handed to the writer
				var err error
				if other, err = v.svc.Create(ctx, Input{Phone: phone(taken)}); err != nil {
					t.Errorf("create the concurrent customer: %v", err)
				}
			}
			if !yield(ImportRow{Input: Input{Phone: phone(i)}}, nil) {
				return
			}
		}
	}
	_, err := v.svc.Import(ctx, rows)
	var e *errs.Error
	if !errors.As(err, &e) || e.Code != errs.CodeValidation {
		t.Fatalf("Import = %v, want a VALIDATION_ERROR", err)
	}
	want := []RowError{{Index: intp(taken), Field: "phone",
		Message: fmt.Sprintf("phone %s already belongs to customer %d", phone(taken), other.ID)}}
	if diff := cmp.Diff(want, e.Details["rows"]); diff != "" || e.Details["invalid_rows"] != 1 {
		t.Errorf("details.rows (-want +got):\n%s\ninvalid_rows %v, want 1", diff, e.Details["invalid_rows"])
	}
	if c := v.count(t); c != 1 {
		t.Errorf("%d customers stored, want 1: the import's transaction was not rolled back", c)
	}
}

func TestImportBadRequests(t *testing.T) {
	t.Parallel()
	v := newEnv(t, "KE", HandlerOptions{ImportMaxBytes: 4096, ImportMaxRows: 10})
	rowsJSON := func(n int) string {
		rows := make([]Input, n)
		for i := range rows {
			rows[i] = Input{Phone: phone(i)}
		}
		return jsonRows(t, rows)
	}
	const js, csv = "application/json", "text/csv"
	tests := []struct {
		name        string
		contentType string
		body        string
		status      int
		code        string
		details     map[string]any // entries that must be in details
	}{
		{"no content type", "", rowsJSON(1), 415, "UNSUPPORTED_MEDIA_TYPE", nil},
		{"text/plain", "text/plain", rowsJSON(1), 415, "UNSUPPORTED_MEDIA_TYPE", nil},
		{"form", "application/x-www-form-urlencoded", "phone=1", 415, "UNSUPPORTED_MEDIA_TYPE", nil},
		{"JSON too large", js, "[" + strings.Repeat(" ", 5000) + "]", 413, "PAYLOAD_TOO_LARGE", nil},
		{"CSV too large", csv, "phone\n" + strings.Repeat(phone(1)+"\n", 400), 413, "PAYLOAD_TOO_LARGE", nil},
		{"JSON too many rows", js, rowsJSON(11), 400, "VALIDATION_ERROR", map[string]any{"field": "rows"}},
		{"CSV too many rows", csv, "phone\n" + strings.Repeat(phone(1)+"\n", 11), 400, "VALIDATION_ERROR", map[string]any{"field": "rows"}},
		{"JSON at the row limit is fine", js, rowsJSON(10), 201, "", nil},

		{"JSON empty body", js, "", 400, "INVALID_JSON", nil},
		{"JSON empty array", js, "[]", 400, "VALIDATION_ERROR", map[string]any{"field": "rows"}},
		{"JSON object, not array", js, `{"phone":"+254712345678"}`, 400, "INVALID_JSON", nil},
		{"JSON string", js, `"x"`, 400, "INVALID_JSON", nil},
		{"JSON malformed", js, `[{"phone":"+254712345678"},,]`, 400, "INVALID_JSON", nil},
		{"JSON missing comma", js, `[{"phone":"+254712345678"} {"phone":"+254712345679"}]`, 400, "INVALID_JSON", nil},
		{"JSON truncated", js, `[{"phone":"+254712345678"},`, 400, "INVALID_JSON", nil},
		{"JSON trailing data", js, `[{"phone":"+254712345678"}] []`, 400, "INVALID_JSON", nil},
		{"JSON row not an object", js, `[{"phone":"+254712345678"}, 42]`, 400, "INVALID_JSON", map[string]any{"index": float64(1)}},
		{"JSON wrong type", js, `[{"phone":"+254712345678"}, {"phone":254712345679}]`, 400, "INVALID_JSON", map[string]any{"index": float64(1), "field": "phone"}},
		{"JSON unknown field", js, `[{"phone":"+254712345678","email":"x"}]`, 400, "INVALID_JSON", map[string]any{"index": float64(0), "field": "email"}},
		{"JSON null row", js, `[null]`, 400, "VALIDATION_ERROR", nil},

		{"CSV empty", csv, "", 400, "VALIDATION_ERROR", map[string]any{"field": "header"}},
		{"CSV header only", csv, "phone,first_name\n", 400, "VALIDATION_ERROR", map[string]any{"field": "rows"}},
		{"CSV unknown column", csv, "phone,email\n+254712345678,a@b.c\n", 400, "VALIDATION_ERROR", map[string]any{"field": "header"}},
		{"CSV without phone column", csv, "first_name,last_name\nAnn,Lee\n", 400, "VALIDATION_ERROR", map[string]any{"field": "header"}},
		{"CSV duplicate column", csv, "phone,phone\n+254712345678,+254712345679\n", 400, "VALIDATION_ERROR", map[string]any{"field": "header"}},
		{"CSV wrong field count", csv, "phone,first_name\n+254712345678,Ann\n+254712345679\n", 400, "VALIDATION_ERROR", map[string]any{"line": float64(3)}},
		{"CSV bare quote", csv, "phone,first_name\n+254712345678,An\"n\n", 400, "VALIDATION_ERROR", map[string]any{"line": float64(2)}},
		{"CSV invalid UTF-8", csv, "phone,first_name\n+254712345670,\xff\n", 400, "VALIDATION_ERROR", nil},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			before := v.count(t)
			rec := v.do(t, http.MethodPost, "/customers/import", tt.contentType, tt.body)
			if tt.status == http.StatusCreated {
				decodeBody[importResponse](t, rec, http.StatusCreated)
				return
			}
			env := wantError(t, rec, tt.status, tt.code)
			for k, want := range tt.details {
				if got := env.Error.Details[k]; got != want {
					t.Errorf("details[%q] = %v, want %v (message %q)", k, got, want, env.Error.Message)
				}
			}
			if after := v.count(t); after != before {
				t.Errorf("a rejected import stored %d customers", after-before)
			}
		})
	}

	// A body that does not declare its length (chunked) is cut off by the
	// reader rather than by the Content-Length check.
	t.Run("chunked body too large", func(t *testing.T) {
		req := httptest.NewRequest(http.MethodPost, "/customers/import",
			io.MultiReader(strings.NewReader("phone,first_name\n"+phone(1)+","), strings.NewReader(strings.Repeat("x", 5000))))
		req.ContentLength = -1
		req.Header.Set(echo.HeaderContentType, "text/csv")
		rec := httptest.NewRecorder()
		v.e.ServeHTTP(rec, req)
		wantError(t, rec, http.StatusRequestEntityTooLarge, "PAYLOAD_TOO_LARGE")
	})
}

func BenchmarkImport10k(b *testing.B) {
	v := newEnv(b, "KE", HandlerOptions{})
	const n = 10_000
	rows := make([]ImportRow, n)
	ctx := context.Background()
	round := 0
	for b.Loop() {
		b.StopTimer()
		for i := range rows {
			rows[i] = ImportRow{Input: Input{Phone: phone(round*n + i), FirstName: "Bench", Location: "Nairobi", PreferredProduct: "Shoes"}}
		}
		round++
		b.StartTimer()
		if _, err := v.svc.Import(ctx, rowsOf(rows)); err != nil {
			b.Fatal(err)
		}
	}
	b.ReportMetric(float64(b.Elapsed().Microseconds())/float64(b.N)/n, "µs/row")
}

// rowsOf yields rows as a body reader does.
func rowsOf(rows []ImportRow) iter.Seq2[ImportRow, error] {
	return func(yield func(ImportRow, error) bool) {
		for _, r := range rows {
			if !yield(r, nil) {
				return
			}
		}
	}
}
