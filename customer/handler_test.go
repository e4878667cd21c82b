package customer

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"net/url"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"github.com/google/go-cmp/cmp/cmpopts"
	"github.com/jmoiron/sqlx"

	"github.com/campaignd/dispatch/platform/channel"
	"github.com/campaignd/dispatch/platform/errs"
	"github.com/campaignd/dispatch/platform/page"
)

func TestCreateAndGet(t *testing.T) {
	t.Parallel()
	v := newEnv(t, "KE", HandlerOptions{})

	rec := v.do(t, http.MethodPost, "/customers", "application/json",
		`{"phone":"0712 345678","first_name":" Zoë ","last_name":"Wanjiru","location":"Nairobi","preferred_product":"Shoes 👟"}`)
	created := decodeBody[Customer](t, rec, http.StatusCreated)
	if created.ID <= 0 {
		t.Fatalf("created id %d", created.ID)
	}
	if got, want := rec.Header().Get("Location"), fmt.Sprintf("/customers/%d", created.ID); got != want {
		t.Errorf("Location %q, want %q", got, want)
	}
	want := Customer{ID: created.ID, Phone: "+254712345678", FirstName: "Zoë", LastName: "Wanjiru",
		Location: "Nairobi", PreferredProduct: "Shoes 👟", OptedOutChannels: []channel.Channel{}}
	if diff := cmp.Diff(want, created, cmpopts.IgnoreFields(Customer{}, "CreatedAt", "UpdatedAt")); diff != "" {
		t.Errorf("created (-want +got):\n%s", diff)
	}
	if created.CreatedAt.IsZero() || time.Since(created.CreatedAt) > time.Minute {
		t.Errorf("created_at %v is not about now", created.CreatedAt)
	}
	// Times are UTC on the wire ("...Z"), whatever the session time zone.
	if !strings.Contains(rec.Body.String(), `Z","updated_at"`) {
		t.Errorf("created_at not in UTC: %s", rec.Body)
	}

	got := decodeBody[Customer](t, v.do(t, http.MethodGet, fmt.Sprintf("/customers/%d", created.ID), "", ""), http.StatusOK)
	if diff := cmp.Diff(created, got); diff != "" {
		t.Errorf("get (-created +got):\n%s", diff)
	}
	// The JSON field names are the contract's.
	raw := decodeBody[map[string]any](t, v.do(t, http.MethodGet, fmt.Sprintf("/customers/%d", created.ID), "", ""), http.StatusOK)
	var keys []string
	for k := range raw {
		keys = append(keys, k)
	}
	slices.Sort(keys)
	wantKeys := []string{"created_at", "first_name", "id", "last_name", "location", "opted_out_channels", "phone", "preferred_product", "updated_at"}
	if diff := cmp.Diff(wantKeys, keys); diff != "" {
		t.Errorf("JSON keys (-want +got):\n%s", diff)
	}

	_, err := v.svc.Get(context.Background(), created.ID+1000)
	if !errors.Is(err, ErrNotFound) {
		t.Errorf("Get(unknown) = %v, want ErrNotFound", err)
	}
}

func TestCreateDuplicatePhone(t *testing.T) {
	t.Parallel()
	v := newEnv(t, "KE", HandlerOptions{})
	first := decodeBody[Customer](t, v.do(t, http.MethodPost, "/customers", "application/json",
		`{"phone":"+254712345678"}`), http.StatusCreated)

	// The same number written another way is the same phone once normalised.
	rec := v.do(t, http.MethodPost, "/customers", "application/json", `{"phone":"0712 345 678","first_name":"Bob"}`)
	env := wantError(t, rec, http.StatusConflict, "CUSTOMER_PHONE_EXISTS")
	if got := env.Error.Details["customer_id"]; got != float64(first.ID) {
		t.Errorf("details.customer_id = %v, want %d", got, first.ID)
	}
	if !strings.Contains(env.Error.Message, "+254712345678") {
		t.Errorf("message %q does not name the phone", env.Error.Message)
	}

	_, err := v.svc.Create(context.Background(), Input{Phone: "712345678"})
	if !errors.Is(err, ErrPhoneTaken) {
		t.Errorf("Create(dup) = %v, want ErrPhoneTaken", err)
	}
	if n := v.count(t); n != 1 {
		t.Errorf("%d customers stored, want 1", n)
	}
}

func TestCreateNormalisesPhoneWithDefaultRegion(t *testing.T) {
	t.Parallel()
	tests := []struct{ region, raw, want string }{
		{"KE", "0712 345678", "+254712345678"},
		{"ke", "0722-000-111", "+254722000111"},
		{"US", "(202) 555-0123", "+12025550123"},
		{"US", "+254 712 345 679", "+254712345679"},
	}
	for _, tt := range tests {
		t.Run(tt.region+" "+tt.raw, func(t *testing.T) {
			t.Parallel()
			v := newEnv(t, tt.region, HandlerOptions{})
			c := decodeBody[Customer](t, v.do(t, http.MethodPost, "/customers", "application/json",
				fmt.Sprintf(`{"phone":%q}`, tt.raw)), http.StatusCreated)
			if c.Phone != tt.want {
				t.Errorf("phone %q stored as %q, want %q", tt.raw, c.Phone, tt.want)
			}
		})
	}
}

func TestBadInputIsA4xxEnvelope(t *testing.T) {
	t.Parallel()
	v := newEnv(t, "KE", HandlerOptions{})
	decodeBody[Customer](t, v.do(t, http.MethodPost, "/customers", "application/json", `{"phone":"+254712345678"}`), http.StatusCreated)

	const js = "application/json"
	tests := []struct {
		name        string
		method      string
		target      string
		contentType string
		body        string
		status      int
		code        string
		field       string // details.field, when the error names one
	}{
		{"get non-numeric id", "GET", "/customers/abc", "", "", 400, "VALIDATION_ERROR", "id"},
		{"get id 0", "GET", "/customers/0", "", "", 400, "VALIDATION_ERROR", "id"},
		{"get negative id", "GET", "/customers/-3", "", "", 400, "VALIDATION_ERROR", "id"},
		{"get id overflowing int64", "GET", "/customers/99999999999999999999", "", "", 400, "VALIDATION_ERROR", "id"},
		{"get unknown id", "GET", "/customers/999999", "", "", 404, "CUSTOMER_NOT_FOUND", ""},
		{"wrong method", "PUT", "/customers/1", "", "", 405, "METHOD_NOT_ALLOWED", ""},

		{"create malformed JSON", "POST", "/customers", js, `{"phone":`, 400, "INVALID_JSON", ""},
		{"create syntax error", "POST", "/customers", js, `{"phone" "x"}`, 400, "INVALID_JSON", ""},
		{"create empty body", "POST", "/customers", js, ``, 400, "INVALID_JSON", ""},
		{"create wrong type", "POST", "/customers", js, `{"phone":254712345678}`, 400, "INVALID_JSON", "phone"},
		{"create name wrong type", "POST", "/customers", js, `{"phone":"+254712345679","first_name":["a"]}`, 400, "INVALID_JSON", "first_name"},
		{"create unknown field", "POST", "/customers", js, `{"phone":"+254712345679","email":"a@b.c"}`, 400, "INVALID_JSON", "email"},
		{"create array body", "POST", "/customers", js, `[{"phone":"+254712345679"}]`, 400, "INVALID_JSON", ""},
		{"create trailing data", "POST", "/customers", js, `{"phone":"+254712345679"} {}`, 400, "INVALID_JSON", ""},
		{"create without phone", "POST", "/customers", js, `{"first_name":"Alice"}`, 400, "VALIDATION_ERROR", "phone"},
		{"create null phone", "POST", "/customers", js, `{"phone":null}`, 400, "VALIDATION_ERROR", "phone"},
		{"create invalid phone", "POST", "/customers", js, `{"phone":"12345"}`, 400, "VALIDATION_ERROR", "phone"},
		{"create too-long name", "POST", "/customers", js, `{"phone":"+254712345679","last_name":"` + strings.Repeat("x", 201) + `"}`, 400, "VALIDATION_ERROR", "last_name"},
		{"create NUL in location", "POST", "/customers", js, `{"phone":"+254712345679","location":"a\u0000b"}`, 400, "VALIDATION_ERROR", "location"},
		{"create text/plain", "POST", "/customers", "text/plain", `{"phone":"+254712345679"}`, 415, "UNSUPPORTED_MEDIA_TYPE", ""},
		{"create no content type", "POST", "/customers", "", `{"phone":"+254712345679"}`, 415, "UNSUPPORTED_MEDIA_TYPE", ""},

		{"list page_size 0", "GET", "/customers?page_size=0", "", "", 400, "VALIDATION_ERROR", "page_size"},
		{"list page_size 101", "GET", "/customers?page_size=101", "", "", 400, "VALIDATION_ERROR", "page_size"},
		{"list page_size text", "GET", "/customers?page_size=ten", "", "", 400, "VALIDATION_ERROR", "page_size"},
		{"list page -1", "GET", "/customers?page=-1", "", "", 400, "VALIDATION_ERROR", "page"},
		{"list page 0", "GET", "/customers?page=0", "", "", 400, "VALIDATION_ERROR", "page"},
		{"list bad cursor", "GET", "/customers?cursor=not-a-cursor", "", "", 400, "VALIDATION_ERROR", "cursor"},
		{"list page and cursor", "GET", "/customers?page=2&cursor=eyJhIjoxLCJwIjoyLCJmIjoiIn0", "", "", 400, "VALIDATION_ERROR", "cursor"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			env := wantError(t, v.do(t, tt.method, tt.target, tt.contentType, tt.body), tt.status, tt.code)
			if tt.field != "" && env.Error.Details["field"] != tt.field {
				t.Errorf("details.field = %v, want %q (message %q)", env.Error.Details["field"], tt.field, env.Error.Message)
			}
		})
	}
	if n := v.count(t); n != 1 {
		t.Errorf("%d customers stored after bad requests, want 1", n)
	}
}

// seedForList creates n customers one by one (so ids follow creation order)
// with locations and products in mixed case, and returns them as stored.
func seedForList(t *testing.T, v *testEnv, n int) []Customer {
	t.Helper()
	locations := []string{"Nairobi", "NAIROBI", "Mombasa", "nairobi", ""}
	products := []string{"Shoes", "bags", "SHOES", "Phones"}
	var out []Customer
	for i := range n {
		c, err := v.svc.Create(context.Background(), Input{
			Phone:            phone(i),
			FirstName:        fmt.Sprintf("Customer %d", i),
			Location:         locations[i%len(locations)],
			PreferredProduct: products[i%len(products)],
		})
		if err != nil {
			t.Fatalf("seed customer %d: %v", i, err)
		}
		out = append(out, c)
	}
	return out
}

// newestFirst returns the ids of the customers keep selects, highest first.
func newestFirst(cs []Customer, keep func(Customer) bool) []int64 {
	var ids []int64
	for _, c := range cs {
		if keep(c) {
			ids = append(ids, c.ID)
		}
	}
	slices.Sort(ids)
	slices.Reverse(ids)
	return ids
}

func ids(cs []Customer) []int64 {
	out := make([]int64, len(cs))
	for i, c := range cs {
		out[i] = c.ID
	}
	return out
}

func TestListPages(t *testing.T) {
	t.Parallel()
	v := newEnv(t, "KE", HandlerOptions{})
	seeded := seedForList(t, v, 47)
	want := newestFirst(seeded, func(Customer) bool { return true })

	var got []int64
	for p := 1; p <= 5; p++ {
		res := decodeBody[page.List[Customer]](t, v.do(t, "GET", fmt.Sprintf("/customers?page=%d&page_size=10", p), "", ""), http.StatusOK)
		if res.Pagination.Page != p || res.Pagination.PageSize != 10 || res.Pagination.TotalCount != 47 || res.Pagination.TotalPages != 5 {
			t.Errorf("page %d pagination %+v", p, res.Pagination)
		}
		if (res.Pagination.NextCursor == nil) != (p == 5) {
			t.Errorf("page %d next_cursor %v; want null only on the last page", p, res.Pagination.NextCursor)
		}
		got = append(got, ids(res.Data)...)
	}
	// Pages concatenate to the whole list, newest first: no duplicate, no gap.
	if diff := cmp.Diff(want, got); diff != "" {
		t.Errorf("ids over all pages (-want +got):\n%s", diff)
	}

	// Past the end: an empty array, never null.
	rec := v.do(t, "GET", "/customers?page=9&page_size=10", "", "")
	if res := decodeBody[page.List[Customer]](t, rec, http.StatusOK); len(res.Data) != 0 || !strings.Contains(rec.Body.String(), `"data":[]`) {
		t.Errorf("page past the end: %s", rec.Body)
	}

	// Defaults: page 1 of 20.
	res := decodeBody[page.List[Customer]](t, v.do(t, "GET", "/customers", "", ""), http.StatusOK)
	if diff := cmp.Diff(want[:20], ids(res.Data)); diff != "" || res.Pagination.PageSize != 20 {
		t.Errorf("default page (-want +got):\n%s", diff)
	}

	// The cursor walk from page 1 gives the same sequence.
	got = nil
	target := "/customers?page_size=10"
	for pages := 0; ; pages++ {
		if pages > 10 {
			t.Fatal("cursor walk does not end")
		}
		res := decodeBody[page.List[Customer]](t, v.do(t, "GET", target, "", ""), http.StatusOK)
		got = append(got, ids(res.Data)...)
		if res.Pagination.NextCursor == nil {
			break
		}
		target = "/customers?page_size=10&cursor=" + url.QueryEscape(*res.Pagination.NextCursor)
	}
	if diff := cmp.Diff(want, got); diff != "" {
		t.Errorf("ids over the cursor walk (-want +got):\n%s", diff)
	}
}

func TestListFilters(t *testing.T) {
	t.Parallel()
	v := newEnv(t, "KE", HandlerOptions{})
	seeded := seedForList(t, v, 60)
	nairobi := func(c Customer) bool { return strings.EqualFold(c.Location, "nairobi") }
	shoes := func(c Customer) bool { return strings.EqualFold(c.PreferredProduct, "shoes") }

	tests := []struct {
		name  string
		query string
		keep  func(Customer) bool
	}{
		{"location", "location=Nairobi", nairobi},
		{"location lower case", "location=nairobi", nairobi},
		{"location upper case, padded", "location=%20NAIROBI%20", nairobi},
		{"product", "preferred_product=shoes", shoes},
		{"product mixed case", "preferred_product=sHoEs", shoes},
		{"both", "location=NAIROBI&preferred_product=Shoes", func(c Customer) bool { return nairobi(c) && shoes(c) }},
		{"empty filters mean none", "location=&preferred_product=", func(Customer) bool { return true }},
		{"no match", "location=Kisumu", func(Customer) bool { return false }},
		{"unknown parameters ignored", "colour=red&location=mombasa", func(c Customer) bool { return c.Location == "Mombasa" }},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			want := newestFirst(seeded, tt.keep)
			if len(want) > 0 && len(want) <= 5 && tt.name != "both" {
				t.Fatalf("seed too small for a multi-page check: %d matches", len(want))
			}
			// Walk by page with a small page size so every filter spans pages.
			var got []int64
			for p := 1; ; p++ {
				res := decodeBody[page.List[Customer]](t,
					v.do(t, "GET", fmt.Sprintf("/customers?%s&page_size=5&page=%d", tt.query, p), "", ""), http.StatusOK)
				if res.Pagination.TotalCount != int64(len(want)) {
					t.Fatalf("total_count %d, want %d", res.Pagination.TotalCount, len(want))
				}
				got = append(got, ids(res.Data)...)
				if res.Pagination.NextCursor == nil {
					break
				}
				if p > 20 {
					t.Fatal("pages do not end")
				}
			}
			if diff := cmp.Diff(want, got, cmpopts.EquateEmpty()); diff != "" {
				t.Errorf("ids (-want +got):\n%s", diff)
			}
		})
	}

	t.Run("cursor keeps to its filters", func(t *testing.T) {
		res := decodeBody[page.List[Customer]](t, v.do(t, "GET", "/customers?location=nairobi&page_size=5", "", ""), http.StatusOK)
		cur := url.QueryEscape(*res.Pagination.NextCursor)
		// The same filter in another case is the same list.
		decodeBody[page.List[Customer]](t, v.do(t, "GET", "/customers?location=NAIROBI&page_size=5&cursor="+cur, "", ""), http.StatusOK)
		// Another filter is not.
		wantError(t, v.do(t, "GET", "/customers?location=mombasa&page_size=5&cursor="+cur, "", ""), 400, "VALIDATION_ERROR")
		wantError(t, v.do(t, "GET", "/customers?page_size=5&cursor="+cur, "", ""), 400, "VALIDATION_ERROR")
	})
}

// TestCursorWalkWhileInserting walks the list by cursor while other
// goroutines create customers. At least one insert lands between any two
// pages. The walk must show no customer twice and every customer that
// existed when it began.
func TestCursorWalkWhileInserting(t *testing.T) {
	t.Parallel()
	v := newEnv(t, "KE", HandlerOptions{})
	before := seedForList(t, v, 120)

	ctx, cancel := context.WithCancel(context.Background())
	inserted := make(chan int64)
	var wg sync.WaitGroup
	var mu sync.Mutex
	var insertErr error
	next := 1000
	for range 4 {
		wg.Add(1)
		// Each inserter exits when ctx is cancelled at the end of the walk.
		go func() {
			defer wg.Done()
			for {
				mu.Lock()
				i := next
				next++
				mu.Unlock()
				c, err := v.svc.Create(ctx, Input{Phone: phone(i), Location: "Nairobi"})
				if ctx.Err() != nil {
					return
				}
				if err != nil {
					mu.Lock()
					insertErr = err
					mu.Unlock()
					return
				}
				select {
				case inserted <- c.ID:
				case <-ctx.Done():
					return
				}
			}
		}()
	}
	defer func() {
		cancel()
		wg.Wait()
		if insertErr != nil {
			t.Errorf("concurrent insert: %v", insertErr)
		}
	}()

	waitInsert := func() int64 {
		select {
		case id := <-inserted:
			return id
		case <-time.After(10 * time.Second):
			t.Fatal("no concurrent insert within 10s")
			return 0
		}
	}
	waitInsert()

	seen := make(map[int64]bool)
	var newer []int64 // ids created during the walk, which it must not show after page 1
	target := "/customers?page_size=7"
	for pages := 0; ; pages++ {
		if pages > 100 {
			t.Fatal("cursor walk does not end")
		}
		res := decodeBody[page.List[Customer]](t, v.do(t, "GET", target, "", ""), http.StatusOK)
		for _, c := range res.Data {
			if seen[c.ID] {
				t.Errorf("customer %d shown twice", c.ID)
			}
			seen[c.ID] = true
			if pages > 0 && slices.Contains(newer, c.ID) {
				t.Errorf("customer %d created during the walk shown on page %d", c.ID, pages+1)
			}
		}
		if res.Pagination.NextCursor == nil {
			break
		}
		newer = append(newer, waitInsert(), waitInsert())
		target = "/customers?page_size=7&cursor=" + url.QueryEscape(*res.Pagination.NextCursor)
	}
	for _, c := range before {
		if !seen[c.ID] {
			t.Errorf("customer %d existed before the walk but was skipped", c.ID)
		}
	}
	if len(newer) < 10 {
		t.Errorf("only %d inserts during the walk; the test did not exercise concurrency", len(newer))
	}
}

// TestUnavailableDatabaseIs503 points the service at a local port nothing
// listens on (so it needs no server and runs with -short): every endpoint
// that needs the database answers 503 UNAVAILABLE.
func TestUnavailableDatabaseIs503(t *testing.T) {
	t.Parallel()
	db, err := sqlx.Open("postgres", "postgres://postgres@127.0.0.1:1/none?sslmode=disable&connect_timeout=2")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { db.Close() })
	svc := NewService(NewRepo(db), "KE")
	v := &testEnv{svc: svc, e: newEcho(svc, HandlerOptions{})}

	for _, tt := range []struct{ method, target, ct, body string }{
		{"GET", "/customers", "", ""},
		{"GET", "/customers/1", "", ""},
		{"POST", "/customers", "application/json", `{"phone":"+254712345678"}`},
		{"POST", "/customers/import", "application/json", `[{"phone":"+254712345678"}]`},
		{"POST", "/customers/1/opt-out", "application/json", `{"channel":"sms"}`},
		{"DELETE", "/customers/1/opt-out?channel=sms", "", ""},
	} {
		env := wantError(t, v.do(t, tt.method, tt.target, tt.ct, tt.body), http.StatusServiceUnavailable, errs.CodeUnavailable)
		if env.Error.Details["dependency"] != "postgres" {
			t.Errorf("%s %s: details %v, want dependency postgres", tt.method, tt.target, env.Error.Details)
		}
	}
}
