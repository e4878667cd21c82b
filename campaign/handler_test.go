package campaign

import (
	"encoding/json"
	"fmt"
	"maps"
	"net/http"
	"net/url"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"github.com/google/go-cmp/cmp/cmpopts"

	"github.com/campaignd/dispatch/platform/channel"
	"github.com/campaignd/dispatch/platform/errs"
	"github.com/campaignd/dispatch/platform/page"
)

func jsonBody(t testing.TB, v any) string {
	t.Helper()
	b, err := json.Marshal(v)
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}

func keys(m map[string]any) []string {
	return slices.Sorted(maps.Keys(m))
}

func TestCreate(t *testing.T) {
	t.Parallel()
	te := newTestEnv(t)

	t.Run("draft", func(t *testing.T) {
		t.Parallel()
		rec := te.do(http.MethodPost, "/campaigns",
			`{"name":"Summer Sale 2025","channel":"sms","base_template":"Hi {first_name}!"}`)
		got := decodeJSON[Campaign](t, rec, http.StatusCreated)
		if got.ID <= 0 {
			t.Fatalf("id = %d", got.ID)
		}
		if loc := rec.Header().Get("Location"); loc != fmt.Sprintf("/campaigns/%d", got.ID) {
			t.Errorf("Location = %q", loc)
		}
		want := Campaign{ID: got.ID, Name: "Summer Sale 2025", Channel: channel.SMS, Status: StatusDraft,
			BaseTemplate: "Hi {first_name}!", CreatedAt: got.CreatedAt, UpdatedAt: got.UpdatedAt}
		if diff := cmp.Diff(want, got); diff != "" {
			t.Errorf("campaign (-want +got):\n%s", diff)
		}
		if got.CreatedAt.IsZero() || got.CreatedAt.Location() != time.UTC || got.UpdatedAt.Location() != time.UTC {
			t.Errorf("timestamps %v / %v, want set and UTC", got.CreatedAt, got.UpdatedAt)
		}

		// The wire shape: exactly the contract's keys, scheduled_at null,
		// times written in UTC.
		raw := decodeJSON[map[string]any](t, te.do(http.MethodGet, fmt.Sprintf("/campaigns/%d", got.ID), ""), http.StatusOK)
		wantKeys := []string{"audience", "base_template", "channel", "created_at", "finished_at", "id", "name", "next_window_opens_at",
			"progress", "scheduled_at", "send_window", "started_at", "stats", "status", "status_reason", "updated_at"}
		if diff := cmp.Diff(wantKeys, keys(raw)); diff != "" {
			t.Errorf("keys (-want +got):\n%s", diff)
		}
		if v, ok := raw["scheduled_at"]; !ok || v != nil {
			t.Errorf("scheduled_at = %v, want null", v)
		}
		if s, _ := raw["created_at"].(string); !strings.HasSuffix(s, "Z") {
			t.Errorf("created_at = %q, want UTC", s)
		}
	})

	t.Run("explicit null schedule is a draft", func(t *testing.T) {
		t.Parallel()
		got := decodeJSON[Campaign](t, te.do(http.MethodPost, "/campaigns",
			`{"name":"n","channel":"whatsapp","base_template":"t","scheduled_at":null}`), http.StatusCreated)
		if got.Status != StatusDraft || got.ScheduledAt != nil {
			t.Errorf("status %q scheduled_at %v, want draft and none", got.Status, got.ScheduledAt)
		}
	})

	t.Run("future schedule", func(t *testing.T) {
		t.Parallel()
		got := decodeJSON[Campaign](t, te.do(http.MethodPost, "/campaigns",
			`{"name":"Later","channel":"whatsapp","base_template":"Hi","scheduled_at":"2025-06-01T09:30:00+02:00"}`),
			http.StatusCreated)
		wantAt := time.Date(2025, 6, 1, 7, 30, 0, 0, time.UTC)
		if got.Status != StatusScheduled || got.ScheduledAt == nil || !got.ScheduledAt.Equal(wantAt) {
			t.Fatalf("status %q scheduled_at %v, want scheduled at %v", got.Status, got.ScheduledAt, wantAt)
		}
		raw := decodeJSON[map[string]any](t, te.do(http.MethodGet, fmt.Sprintf("/campaigns/%d", got.ID), ""), http.StatusOK)
		if raw["scheduled_at"] != "2025-06-01T07:30:00Z" {
			t.Errorf("scheduled_at = %v, want 2025-06-01T07:30:00Z", raw["scheduled_at"])
		}
	})

	t.Run("past schedule", func(t *testing.T) {
		t.Parallel()
		for _, at := range []string{"2025-05-19T08:00:00Z", "2025-05-20T08:00:00Z", "2000-01-01T00:00:00Z"} {
			rec := te.do(http.MethodPost, "/campaigns", jsonBody(t, map[string]any{
				"name": "n", "channel": "sms", "base_template": "t", "scheduled_at": at}))
			wantError(t, rec, http.StatusBadRequest, errs.CodeValidation, "scheduled_at")
		}
	})

	t.Run("unicode and emoji round-trip", func(t *testing.T) {
		t.Parallel()
		in := CreateInput{
			Name:         "Été ☀️ セール 🎉 👩‍👩‍👧",
			Channel:      "whatsapp",
			BaseTemplate: "Olá {first_name} 👋 — 50% off {preferred_product} in {location}! 🇵🇹 {{VIP}} <b>&</b>",
		}
		created := decodeJSON[Campaign](t, te.do(http.MethodPost, "/campaigns", jsonBody(t, in)), http.StatusCreated)
		got := decodeJSON[Detail](t, te.do(http.MethodGet, fmt.Sprintf("/campaigns/%d", created.ID), ""), http.StatusOK)
		for _, c := range []Campaign{created, got.Campaign} {
			if c.Name != in.Name || c.BaseTemplate != in.BaseTemplate {
				t.Errorf("got name %q template %q, want %q %q", c.Name, c.BaseTemplate, in.Name, in.BaseTemplate)
			}
		}
		// Escaped surrogate pairs in the request decode to the same text.
		esc := decodeJSON[Campaign](t, te.do(http.MethodPost, "/campaigns",
			`{"name":"\ud83c\udf89 party","channel":"sms","base_template":"\u00c9t\u00e9"}`), http.StatusCreated)
		if esc.Name != "🎉 party" || esc.BaseTemplate != "Été" {
			t.Errorf("got %q %q", esc.Name, esc.BaseTemplate)
		}
	})

	t.Run("name is trimmed", func(t *testing.T) {
		t.Parallel()
		got := te.createCampaign(t, "  Spring  ", channel.SMS, " keep my spaces ")
		if got.Name != "Spring" || got.BaseTemplate != " keep my spaces " {
			t.Errorf("name %q template %q", got.Name, got.BaseTemplate)
		}
	})

	t.Run("length limits count characters", func(t *testing.T) {
		t.Parallel()
		got := te.createCampaign(t, strings.Repeat("🎉", 200), channel.SMS, strings.Repeat("🎉", 4096))
		if n := len([]rune(got.Name)); n != 200 {
			t.Errorf("name has %d runes", n)
		}
		rec := te.do(http.MethodPost, "/campaigns", jsonBody(t, CreateInput{
			Name: strings.Repeat("a", 201), Channel: "sms", BaseTemplate: "t"}))
		wantError(t, rec, http.StatusBadRequest, errs.CodeValidation, "name")
		rec = te.do(http.MethodPost, "/campaigns", jsonBody(t, CreateInput{
			Name: "n", Channel: "sms", BaseTemplate: strings.Repeat("é", 4097)}))
		wantError(t, rec, http.StatusBadRequest, errs.CodeValidation, "base_template")
	})

	t.Run("unknown placeholders are listed", func(t *testing.T) {
		t.Parallel()
		rec := te.do(http.MethodPost, "/campaigns",
			`{"name":"n","channel":"sms","base_template":"Hi {name}, {first_name} likes {foo} {name}"}`)
		body := wantError(t, rec, http.StatusBadRequest, errs.CodeValidation, "base_template")
		for _, s := range []string{"base_template", "{name}", "{foo}"} {
			if !strings.Contains(body.Message, s) {
				t.Errorf("message %q does not mention %s", body.Message, s)
			}
		}
		if p, _ := body.Details["problem"].(string); !strings.Contains(p, "{foo}") {
			t.Errorf("details.problem = %q", p)
		}
	})

	t.Run("validation", func(t *testing.T) {
		t.Parallel()
		tests := []struct{ name, body, field string }{
			{"missing name", `{"channel":"sms","base_template":"t"}`, "name"},
			{"blank name", `{"name":"  ","channel":"sms","base_template":"t"}`, "name"},
			{"NUL in name", `{"name":"a\u0000b","channel":"sms","base_template":"t"}`, "name"},
			{"missing channel", `{"name":"n","base_template":"t"}`, "channel"},
			{"unknown channel", `{"name":"n","channel":"email","base_template":"t"}`, "channel"},
			{"missing template", `{"name":"n","channel":"sms"}`, "base_template"},
			{"blank template", `{"name":"n","channel":"sms","base_template":" "}`, "base_template"},
			{"NUL in template", `{"name":"n","channel":"sms","base_template":"a\u0000"}`, "base_template"},
			{"template syntax", `{"name":"n","channel":"sms","base_template":"Hi {first_name"}`, "base_template"},
			{"malformed schedule", `{"name":"n","channel":"sms","base_template":"t","scheduled_at":"next week"}`, "scheduled_at"},
			{"empty schedule", `{"name":"n","channel":"sms","base_template":"t","scheduled_at":""}`, "scheduled_at"},
			{"null body", `null`, "name"},
		}
		for _, tt := range tests {
			t.Run(tt.name, func(t *testing.T) {
				wantError(t, te.do(http.MethodPost, "/campaigns", tt.body), http.StatusBadRequest, errs.CodeValidation, tt.field)
			})
		}
	})
}

func TestGetWithStats(t *testing.T) {
	t.Parallel()
	te := newTestEnv(t)
	c := te.createCampaign(t, "Stats", channel.SMS, "Hi {first_name}")
	other := te.createCampaign(t, "Other", channel.SMS, "Hi")
	idle := te.createCampaign(t, "Idle", channel.WhatsApp, "Hi")
	partial := te.createCampaign(t, "Partial", channel.WhatsApp, "Hi")

	customers := te.insertCustomers(t, 10)
	want := map[string]int{"pending": 3, "sending": 1, "sent": 4, "failed": 2}
	i := 0
	for _, st := range []string{"pending", "sending", "sent", "failed"} {
		for range want[st] {
			te.insertMessage(t, c.ID, customers[i], st)
			i++
		}
	}
	// Messages of other campaigns must not be counted.
	for _, id := range customers[:5] {
		te.insertMessage(t, other.ID, id, "sent")
	}
	te.insertMessage(t, partial.ID, customers[0], "sent")
	te.insertMessage(t, partial.ID, customers[1], "sent")
	te.insertMessage(t, partial.ID, customers[2], "failed")

	tests := []struct {
		name string
		id   int64
		want Stats
	}{
		{name: "every status", id: c.ID, want: Stats{Total: 10, Pending: 3, Sending: 1, Sent: 4, Failed: 2}},
		{name: "no messages", id: idle.ID, want: Stats{}},
		{name: "some statuses", id: partial.ID, want: Stats{Total: 3, Sent: 2, Failed: 1}},
		{name: "other campaign", id: other.ID, want: Stats{Total: 5, Sent: 5}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			rec := te.do(http.MethodGet, fmt.Sprintf("/campaigns/%d", tt.id), "")
			got := decodeJSON[Detail](t, rec, http.StatusOK)
			if got.ID != tt.id {
				t.Errorf("id = %d, want %d", got.ID, tt.id)
			}
			if diff := cmp.Diff(tt.want, got.Stats); diff != "" {
				t.Errorf("stats (-want +got):\n%s", diff)
			}
			s := got.Stats
			if s.Pending+s.Sending+s.Sent+s.Failed != s.Total {
				t.Errorf("stats %+v do not sum to total", s)
			}
			// Zero counts are present, not omitted.
			raw := decodeJSON[map[string]json.RawMessage](t, rec, http.StatusOK)
			var stats map[string]any
			if err := json.Unmarshal(raw["stats"], &stats); err != nil {
				t.Fatal(err)
			}
			if diff := cmp.Diff([]string{"cancelled", "delivered", "failed", "pending", "sending", "sent", "total", "undelivered"}, keys(stats)); diff != "" {
				t.Errorf("stats keys (-want +got):\n%s", diff)
			}
		})
	}

	t.Run("campaign fields", func(t *testing.T) {
		t.Parallel()
		got := decodeJSON[Detail](t, te.do(http.MethodGet, fmt.Sprintf("/campaigns/%d", c.ID), ""), http.StatusOK)
		if diff := cmp.Diff(c, got.Campaign); diff != "" {
			t.Errorf("campaign (-created +got):\n%s", diff)
		}
	})

	t.Run("unknown id", func(t *testing.T) {
		t.Parallel()
		body := wantError(t, te.do(http.MethodGet, "/campaigns/999999", ""), http.StatusNotFound, "CAMPAIGN_NOT_FOUND", "")
		if body.Message != "campaign 999999 not found" {
			t.Errorf("message = %q", body.Message)
		}
	})
}

// listFixture is 57 campaigns with every channel/status combination.
type listFixture struct {
	te  *testEnv
	all []Summary // newest first
}

func newListFixture(t *testing.T) listFixture {
	t.Helper()
	te := newTestEnv(t)
	statuses := []Status{StatusDraft, StatusScheduled, StatusSending, StatusSent, StatusFailed}
	var all []Summary
	for i := range 57 {
		ch := channel.SMS
		if i%3 == 0 {
			ch = channel.WhatsApp
		}
		st := statuses[i%5]
		name := fmt.Sprintf("Campaign %02d", i)
		all = append(all, Summary{ID: te.insertCampaign(t, name, ch, st), Name: name, Channel: ch, Status: st})
	}
	slices.Reverse(all)
	return listFixture{te: te, all: all}
}

func (f listFixture) want(filter Filter) []int64 {
	var ids []int64
	for _, s := range f.all {
		if (filter.Channel == "" || s.Channel == filter.Channel) && (filter.Status == "" || s.Status == filter.Status) {
			ids = append(ids, s.ID)
		}
	}
	return ids
}

func listURL(filter Filter, extra url.Values) string {
	q := url.Values{}
	if filter.Channel != "" {
		q.Set("channel", string(filter.Channel))
	}
	if filter.Status != "" {
		q.Set("status", string(filter.Status))
	}
	for k, v := range extra {
		q[k] = v
	}
	return "/campaigns?" + q.Encode()
}

func TestListPagination(t *testing.T) {
	t.Parallel()
	f := newListFixture(t)
	filters := []Filter{
		{},
		{Channel: channel.SMS},
		{Channel: channel.WhatsApp},
		{Status: StatusDraft},
		{Status: StatusSent},
		{Channel: channel.SMS, Status: StatusFailed},
		{Channel: channel.WhatsApp, Status: StatusScheduled},
	}
	for _, filter := range filters {
		want := f.want(filter)
		if len(want) == 0 {
			t.Fatalf("fixture has no campaign for %+v", filter)
		}
		for _, size := range []int{20, 7} {
			name := fmt.Sprintf("channel=%s,status=%s,size=%d", filter.Channel, filter.Status, size)
			wantPages := int64((len(want) + size - 1) / size)

			t.Run(name+"/pages", func(t *testing.T) {
				t.Parallel()
				var got []int64
				for p := 1; ; p++ {
					rec := f.te.do(http.MethodGet, listURL(filter, url.Values{
						"page": {fmt.Sprint(p)}, "page_size": {fmt.Sprint(size)}}), "")
					l := decodeJSON[page.List[Summary]](t, rec, http.StatusOK)
					wantInfo := page.Info{Page: p, PageSize: size, TotalCount: int64(len(want)), TotalPages: wantPages,
						NextCursor: l.Pagination.NextCursor}
					if diff := cmp.Diff(wantInfo, l.Pagination); diff != "" {
						t.Fatalf("page %d pagination (-want +got):\n%s", p, diff)
					}
					if last := int64(p) >= wantPages; last != (l.Pagination.NextCursor == nil) {
						t.Fatalf("page %d of %d: next_cursor = %v", p, wantPages, l.Pagination.NextCursor)
					}
					for _, s := range l.Data {
						got = append(got, s.ID)
					}
					if int64(p) > wantPages {
						if len(l.Data) != 0 {
							t.Fatalf("page %d past the end has %d rows", p, len(l.Data))
						}
						break
					}
					if wantLen := min(size, len(want)-(p-1)*size); len(l.Data) != wantLen {
						t.Fatalf("page %d has %d rows, want %d", p, len(l.Data), wantLen)
					}
				}
				if diff := cmp.Diff(want, got); diff != "" {
					t.Errorf("ids over all pages (-want +got):\n%s", diff)
				}
			})

			t.Run(name+"/cursor", func(t *testing.T) {
				t.Parallel()
				got := walkCursor(t, f.te, filter, size, nil)
				if diff := cmp.Diff(want, got); diff != "" {
					t.Errorf("ids over the cursor walk (-want +got):\n%s", diff)
				}
			})
		}
	}

	t.Run("items are summaries with the right content", func(t *testing.T) {
		t.Parallel()
		rec := f.te.do(http.MethodGet, "/campaigns?page_size=100", "")
		l := decodeJSON[page.List[Summary]](t, rec, http.StatusOK)
		for i := range l.Data {
			l.Data[i].CreatedAt = time.Time{}
		}
		if diff := cmp.Diff(f.all, l.Data); diff != "" {
			t.Errorf("data (-want +got):\n%s", diff)
		}
		raw := decodeJSON[struct{ Data []map[string]any }](t, rec, http.StatusOK)
		wantKeys := []string{"channel", "created_at", "id", "name", "scheduled_at", "stats", "status"}
		if diff := cmp.Diff(wantKeys, keys(raw.Data[0])); diff != "" {
			t.Errorf("item keys (-want +got):\n%s", diff)
		}
	})

	t.Run("default page size", func(t *testing.T) {
		t.Parallel()
		l := decodeJSON[page.List[Summary]](t, f.te.do(http.MethodGet, "/campaigns", ""), http.StatusOK)
		if len(l.Data) != page.DefaultSize || l.Pagination.PageSize != page.DefaultSize || l.Pagination.TotalPages != 3 {
			t.Errorf("got %d rows, pagination %+v", len(l.Data), l.Pagination)
		}
	})

	t.Run("page past the end is empty", func(t *testing.T) {
		t.Parallel()
		rec := f.te.do(http.MethodGet, "/campaigns?page=1000000000&page_size=100", "")
		l := decodeJSON[page.List[Summary]](t, rec, http.StatusOK)
		if len(l.Data) != 0 || l.Pagination.TotalCount != 57 || l.Pagination.NextCursor != nil {
			t.Errorf("got %d rows, pagination %+v", len(l.Data), l.Pagination)
		}
	})

	t.Run("absurd page number is a 400", func(t *testing.T) {
		t.Parallel()
		rec := f.te.do(http.MethodGet, "/campaigns?page=9223372036854775807&page_size=100", "")
		if rec.Code != http.StatusBadRequest {
			t.Errorf("status = %d, want 400", rec.Code)
		}
	})

	t.Run("cursor for other filters", func(t *testing.T) {
		t.Parallel()
		l := decodeJSON[page.List[Summary]](t, f.te.do(http.MethodGet, "/campaigns?channel=sms&page_size=5", ""), http.StatusOK)
		if l.Pagination.NextCursor == nil {
			t.Fatal("no next_cursor")
		}
		cur := *l.Pagination.NextCursor
		for _, other := range []Filter{{}, {Channel: channel.WhatsApp}, {Channel: channel.SMS, Status: StatusDraft}, {Status: StatusDraft}} {
			rec := f.te.do(http.MethodGet, listURL(other, url.Values{"cursor": {cur}, "page_size": {"5"}}), "")
			wantError(t, rec, http.StatusBadRequest, errs.CodeValidation, "cursor")
		}
		// The same filters continue the list.
		rec := f.te.do(http.MethodGet, listURL(Filter{Channel: channel.SMS}, url.Values{"cursor": {cur}, "page_size": {"5"}}), "")
		next := decodeJSON[page.List[Summary]](t, rec, http.StatusOK)
		if next.Pagination.Page != 2 || len(next.Data) != 5 || next.Data[0].ID >= l.Data[4].ID {
			t.Errorf("second page %+v", next)
		}
	})
}

func TestListEmpty(t *testing.T) {
	t.Parallel()
	te := newTestEnv(t)
	rec := te.do(http.MethodGet, "/campaigns?channel=sms&status=sent", "")
	raw := decodeJSON[map[string]json.RawMessage](t, rec, http.StatusOK)
	if string(raw["data"]) != "[]" {
		t.Errorf("data = %s, want []", raw["data"])
	}
	l := decodeJSON[page.List[Summary]](t, rec, http.StatusOK)
	if diff := cmp.Diff(page.Info{Page: 1, PageSize: 20}, l.Pagination); diff != "" {
		t.Errorf("pagination (-want +got):\n%s", diff)
	}
}

// walkCursor lists every page by following next_cursor and returns the ids
// seen. afterPage, if set, runs after each page.
func walkCursor(t *testing.T, te *testEnv, filter Filter, size int, afterPage func()) []int64 {
	t.Helper()
	var ids []int64
	target := listURL(filter, url.Values{"page_size": {fmt.Sprint(size)}})
	for p := 1; ; p++ {
		l := decodeJSON[page.List[Summary]](t, te.do(http.MethodGet, target, ""), http.StatusOK)
		if l.Pagination.Page != p {
			t.Fatalf("pagination.page = %d, want %d", l.Pagination.Page, p)
		}
		if len(l.Data) > size {
			t.Fatalf("page %d has %d rows, more than %d", p, len(l.Data), size)
		}
		for _, s := range l.Data {
			ids = append(ids, s.ID)
		}
		if l.Pagination.NextCursor == nil {
			return ids
		}
		if len(l.Data) != size {
			t.Fatalf("page %d has %d rows and a next_cursor", p, len(l.Data))
		}
		if afterPage != nil {
			afterPage()
		}
		target = listURL(filter, url.Values{"cursor": {*l.Pagination.NextCursor}, "page_size": {fmt.Sprint(size)}})
	}
}

func TestListCursorWhileCreating(t *testing.T) {
	t.Parallel()
	f := newListFixture(t)

	for _, filter := range []Filter{{}, {Channel: channel.SMS}, {Status: StatusDraft}, {Channel: channel.WhatsApp, Status: StatusDraft}} {
		t.Run(fmt.Sprintf("channel=%s,status=%s", filter.Channel, filter.Status), func(t *testing.T) {
			t.Parallel()
			before := f.want(filter)

			// Writers create campaigns that match every filter tested here
			// (draft, both channels) until the walk ends. The walker waits for
			// a creation after every page, so pages and inserts interleave.
			created := make(chan int64)
			stop := make(chan struct{})
			var wg sync.WaitGroup
			for w := range 4 {
				ch := []channel.Channel{channel.SMS, channel.WhatsApp}[w%2]
				wg.Go(func() {
					for i := 0; ; i++ {
						select {
						case <-stop:
							return
						default:
						}
						rec := f.te.do(http.MethodPost, "/campaigns", jsonBody(t, CreateInput{
							Name: fmt.Sprintf("concurrent %d-%d", w, i), Channel: string(ch), BaseTemplate: "Hi"}))
						if rec.Code != http.StatusCreated {
							t.Errorf("create: %d %s", rec.Code, rec.Body)
							return
						}
						var c Campaign
						_ = json.Unmarshal(rec.Body.Bytes(), &c)
						select {
						case created <- c.ID:
						case <-stop:
							return
						}
					}
				})
			}
			var during []int64
			// A small page makes even the narrowest filter span several pages.
			got := walkCursor(t, f.te, filter, 3, func() { during = append(during, <-created) })
			close(stop)
			wg.Wait()

			if len(during) == 0 {
				t.Fatal("no campaign was created during the walk")
			}
			seen := map[int64]bool{}
			for _, id := range got {
				if seen[id] {
					t.Errorf("id %d listed twice", id)
				}
				seen[id] = true
			}
			for _, id := range before {
				if !seen[id] {
					t.Errorf("id %d existed when the walk began but was not listed", id)
				}
			}
			// Strictly newest first: with the no-duplicate check above this
			// means a campaign created after a page was read, which has a
			// higher id than every row of that page, never shows up later.
			for i := 1; i < len(got); i++ {
				if got[i] >= got[i-1] {
					t.Errorf("ids not strictly newest first at %d: %d then %d", i, got[i-1], got[i])
				}
			}
		})
	}
}

func TestPreview(t *testing.T) {
	t.Parallel()
	te := newTestEnv(t)
	c := te.createCampaign(t, "Preview", channel.SMS, "Hi {first_name} {last_name}, {preferred_product} in {location}!")
	target := fmt.Sprintf("/campaigns/%d/personalized-preview", c.ID)

	tests := []struct {
		name string
		body string
		want Preview
	}{
		{name: "customer 1", body: `{"customer_id":1}`, want: Preview{
			RenderedMessage: "Hi Alice Smith, espresso in Lisbon!", UsedTemplate: c.BaseTemplate, Customer: testCustomers[1], Warnings: []string{}}},
		{name: "empty fields render empty", body: `{"customer_id":2}`, want: Preview{
			RenderedMessage: "Hi Bob , green tea in !", UsedTemplate: c.BaseTemplate, Customer: testCustomers[2], Warnings: []string{}}},
		{name: "unicode customer", body: `{"customer_id":3}`, want: Preview{
			RenderedMessage: "Hi Zoë 🌟 Ōtsuka, 抹茶 in 東京!", UsedTemplate: c.BaseTemplate, Customer: testCustomers[3], Warnings: []string{}}},
		{name: "override", body: `{"customer_id":1,"override_template":"{first_name}, call {phone} 📞 {{VIP}}"}`, want: Preview{
			RenderedMessage: "Alice, call +351912345678 📞 {VIP}", UsedTemplate: "{first_name}, call {phone} 📞 {{VIP}}",
			Customer: testCustomers[1], Warnings: []string{}}},
		{name: "override with empty last name", body: `{"customer_id":2,"override_template":"Hi {first_name} {last_name}"}`,
			want: Preview{RenderedMessage: "Hi Bob ", UsedTemplate: "Hi {first_name} {last_name}", Customer: testCustomers[2], Warnings: []string{}}},
		{name: "null override uses base", body: `{"customer_id":1,"override_template":null}`, want: Preview{
			RenderedMessage: "Hi Alice Smith, espresso in Lisbon!", UsedTemplate: c.BaseTemplate, Customer: testCustomers[1], Warnings: []string{}}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			got := decodeJSON[Preview](t, te.do(http.MethodPost, target, tt.body), http.StatusOK)
			// The sms counts have a test of their own (TestPreviewSMSLength).
			if diff := cmp.Diff(tt.want, got, cmpopts.IgnoreFields(Preview{}, "SMS")); diff != "" {
				t.Errorf("preview (-want +got):\n%s", diff)
			}
		})
	}

	t.Run("wire shape", func(t *testing.T) {
		t.Parallel()
		raw := decodeJSON[map[string]any](t, te.do(http.MethodPost, target, `{"customer_id":2}`), http.StatusOK)
		if diff := cmp.Diff([]string{"customer", "rendered_message", "sms", "used_template", "warnings"}, keys(raw)); diff != "" {
			t.Errorf("keys (-want +got):\n%s", diff)
		}
		cust, _ := raw["customer"].(map[string]any)
		want := []string{"first_name", "id", "last_name", "location", "phone", "preferred_product"}
		if diff := cmp.Diff(want, keys(cust)); diff != "" {
			t.Errorf("customer keys (-want +got):\n%s", diff)
		}
	})

	t.Run("override is not stored", func(t *testing.T) {
		t.Parallel()
		decodeJSON[Preview](t, te.do(http.MethodPost, target, `{"customer_id":1,"override_template":"changed"}`), http.StatusOK)
		got := decodeJSON[Detail](t, te.do(http.MethodGet, fmt.Sprintf("/campaigns/%d", c.ID), ""), http.StatusOK)
		if got.BaseTemplate != c.BaseTemplate {
			t.Errorf("base_template = %q, want %q", got.BaseTemplate, c.BaseTemplate)
		}
	})

	t.Run("errors", func(t *testing.T) {
		t.Parallel()
		tests := []struct {
			name, target, body string
			status             int
			code, field        string
		}{
			{"unknown campaign", "/campaigns/999999/personalized-preview", `{"customer_id":1}`, 404, "CAMPAIGN_NOT_FOUND", ""},
			{"unknown customer", target, `{"customer_id":999}`, 404, "CUSTOMER_NOT_FOUND", ""},
			{"both unknown", "/campaigns/999999/personalized-preview", `{"customer_id":999}`, 404, "CAMPAIGN_NOT_FOUND", ""},
			{"missing customer_id", target, `{}`, 400, errs.CodeValidation, "customer_id"},
			{"null customer_id", target, `{"customer_id":null}`, 400, errs.CodeValidation, "customer_id"},
			{"zero customer_id", target, `{"customer_id":0}`, 400, errs.CodeValidation, "customer_id"},
			{"negative customer_id", target, `{"customer_id":-1}`, 400, errs.CodeValidation, "customer_id"},
			{"string customer_id", target, `{"customer_id":"1"}`, 400, errs.CodeInvalidJSON, "customer_id"},
			{"fractional customer_id", target, `{"customer_id":1.5}`, 400, errs.CodeInvalidJSON, "customer_id"},
			{"huge customer_id", target, `{"customer_id":99999999999999999999}`, 400, errs.CodeInvalidJSON, "customer_id"},
			{"empty override", target, `{"customer_id":1,"override_template":""}`, 400, errs.CodeValidation, "override_template"},
			{"blank override", target, `{"customer_id":1,"override_template":"   "}`, 400, errs.CodeValidation, "override_template"},
			{"unknown placeholder", target, `{"customer_id":1,"override_template":"Hi {nope} {first_name}"}`, 400, errs.CodeValidation, "override_template"},
			{"override syntax", target, `{"customer_id":1,"override_template":"Hi }"}`, 400, errs.CodeValidation, "override_template"},
			{"override too long", target, jsonBody(t, map[string]any{"customer_id": 1, "override_template": strings.Repeat("a", 4097)}),
				400, errs.CodeValidation, "override_template"},
			{"override number", target, `{"customer_id":1,"override_template":5}`, 400, errs.CodeInvalidJSON, "override_template"},
			{"validation before lookup", "/campaigns/999999/personalized-preview", `{"customer_id":0}`, 400, errs.CodeValidation, "customer_id"},
		}
		for _, tt := range tests {
			t.Run(tt.name, func(t *testing.T) {
				body := wantError(t, te.do(http.MethodPost, tt.target, tt.body), tt.status, tt.code, tt.field)
				if tt.name == "unknown customer" && body.Message != "customer 999 not found" {
					t.Errorf("message = %q", body.Message)
				}
				if tt.name == "unknown placeholder" && !strings.Contains(body.Message, "{nope}") {
					t.Errorf("message %q does not list {nope}", body.Message)
				}
			})
		}
	})
}

// TestBadInput sends malformed requests to every endpoint: each gets its 4xx
// and the JSON envelope, never a 5xx.
func TestBadInput(t *testing.T) {
	t.Parallel()
	te := newTestEnv(t)
	c := te.createCampaign(t, "Bad input", channel.SMS, "Hi {first_name}")
	preview := fmt.Sprintf("/campaigns/%d/personalized-preview", c.ID)
	const (
		get  = http.MethodGet
		post = http.MethodPost
		js   = "application/json"
	)
	valid := `{"name":"n","channel":"sms","base_template":"t"}`

	tests := []struct {
		name, method, target, contentType, body string
		status                                  int
		code, field                             string
	}{
		// POST /campaigns
		{"create malformed JSON", post, "/campaigns", js, `{"name":`, 400, errs.CodeInvalidJSON, ""},
		{"create not JSON", post, "/campaigns", js, `{name: x}`, 400, errs.CodeInvalidJSON, ""},
		{"create empty body", post, "/campaigns", js, ``, 400, errs.CodeInvalidJSON, ""},
		{"create array body", post, "/campaigns", js, `[]`, 400, errs.CodeInvalidJSON, ""},
		{"create trailing data", post, "/campaigns", js, valid + `{}`, 400, errs.CodeInvalidJSON, ""},
		{"create name as number", post, "/campaigns", js, `{"name":5,"channel":"sms","base_template":"t"}`, 400, errs.CodeInvalidJSON, "name"},
		{"create channel as array", post, "/campaigns", js, `{"name":"n","channel":["sms"],"base_template":"t"}`, 400, errs.CodeInvalidJSON, "channel"},
		{"create schedule as number", post, "/campaigns", js, `{"name":"n","channel":"sms","base_template":"t","scheduled_at":1}`, 400, errs.CodeInvalidJSON, "scheduled_at"},
		{"create unknown field", post, "/campaigns", js, `{"name":"n","channel":"sms","base_template":"t","status":"sent"}`, 400, errs.CodeInvalidJSON, "status"},
		{"create no content type", post, "/campaigns", "", valid, 415, errs.CodeUnsupportedMedia, ""},
		{"create text/plain", post, "/campaigns", "text/plain", valid, 415, errs.CodeUnsupportedMedia, ""},
		{"create form", post, "/campaigns", "application/x-www-form-urlencoded", "name=n", 415, errs.CodeUnsupportedMedia, ""},

		// GET /campaigns
		{"list page_size 0", get, "/campaigns?page_size=0", "", "", 400, errs.CodeValidation, "page_size"},
		{"list page_size 101", get, "/campaigns?page_size=101", "", "", 400, errs.CodeValidation, "page_size"},
		{"list page_size text", get, "/campaigns?page_size=ten", "", "", 400, errs.CodeValidation, "page_size"},
		{"list page 0", get, "/campaigns?page=0", "", "", 400, errs.CodeValidation, "page"},
		{"list page -1", get, "/campaigns?page=-1", "", "", 400, errs.CodeValidation, "page"},
		{"list page text", get, "/campaigns?page=first", "", "", 400, errs.CodeValidation, "page"},
		{"list unknown channel", get, "/campaigns?channel=email", "", "", 400, errs.CodeValidation, "channel"},
		{"list channel case", get, "/campaigns?channel=SMS", "", "", 400, errs.CodeValidation, "channel"},
		{"list unknown status", get, "/campaigns?status=done", "", "", 400, errs.CodeValidation, "status"},
		{"list bad cursor", get, "/campaigns?cursor=not-a-cursor", "", "", 400, errs.CodeValidation, "cursor"},
		{"list forged cursor", get, "/campaigns?cursor=eyJhIjotMSwicCI6MiwiZiI6IngifQ", "", "", 400, errs.CodeValidation, "cursor"},
		{"list cursor and page", get, "/campaigns?page=2&cursor=eyJhIjo1LCJwIjoyLCJmIjoiIn0", "", "", 400, errs.CodeValidation, "cursor"},

		// GET /campaigns/{id}
		{"get non-numeric id", get, "/campaigns/abc", "", "", 400, errs.CodeValidation, "id"},
		{"get id 0", get, "/campaigns/0", "", "", 400, errs.CodeValidation, "id"},
		{"get id -1", get, "/campaigns/-1", "", "", 400, errs.CodeValidation, "id"},
		{"get fractional id", get, "/campaigns/1.5", "", "", 400, errs.CodeValidation, "id"},
		{"get id overflow", get, "/campaigns/99999999999999999999", "", "", 400, errs.CodeValidation, "id"},
		{"get unknown id", get, "/campaigns/999999", "", "", 404, "CAMPAIGN_NOT_FOUND", ""},
		{"get max id", get, "/campaigns/9223372036854775807", "", "", 404, "CAMPAIGN_NOT_FOUND", ""},

		// POST /campaigns/{id}/personalized-preview
		{"preview non-numeric id", post, "/campaigns/abc/personalized-preview", js, `{"customer_id":1}`, 400, errs.CodeValidation, "id"},
		{"preview id 0", post, "/campaigns/0/personalized-preview", js, `{"customer_id":1}`, 400, errs.CodeValidation, "id"},
		{"preview id -1", post, "/campaigns/-1/personalized-preview", js, `{"customer_id":1}`, 400, errs.CodeValidation, "id"},
		{"preview unknown id", post, "/campaigns/999999/personalized-preview", js, `{"customer_id":1}`, 404, "CAMPAIGN_NOT_FOUND", ""},
		{"preview malformed JSON", post, preview, js, `{"customer_id":`, 400, errs.CodeInvalidJSON, ""},
		{"preview empty body", post, preview, js, ``, 400, errs.CodeInvalidJSON, ""},
		{"preview unknown field", post, preview, js, `{"customer_id":1,"template":"x"}`, 400, errs.CodeInvalidJSON, "template"},
		{"preview no content type", post, preview, "", `{"customer_id":1}`, 415, errs.CodeUnsupportedMedia, ""},

		// Routing
		{"unknown route", get, "/campaigns/1/nope", "", "", 404, errs.CodeNotFound, ""},
		{"delete campaign", http.MethodDelete, fmt.Sprintf("/campaigns/%d", c.ID), "", "", 405, errs.CodeMethodNotAllowed, ""},
		{"put campaigns", http.MethodPut, "/campaigns", js, valid, 405, errs.CodeMethodNotAllowed, ""},
		{"get preview", get, preview, "", "", 405, errs.CodeMethodNotAllowed, ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			wantError(t, te.doCT(tt.method, tt.target, tt.contentType, tt.body), tt.status, tt.code, tt.field)
		})
	}
}
