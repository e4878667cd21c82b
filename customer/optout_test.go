package customer

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"net/url"
	"strings"
	"sync"
	"testing"

	"github.com/google/go-cmp/cmp"

	"github.com/campaignd/dispatch/platform/channel"
	"github.com/campaignd/dispatch/platform/errs"
	"github.com/campaignd/dispatch/platform/page"
)

// optOutRows returns customer id's rows of customer_opt_outs as channels, in
// order.
func (v *testEnv) optOutRows(t testing.TB, id int64) []channel.Channel {
	t.Helper()
	chs := []channel.Channel{}
	if err := v.db.Select(&chs, `SELECT channel FROM customer_opt_outs WHERE customer_id = $1 ORDER BY channel`, id); err != nil {
		t.Fatalf("read opt-outs: %v", err)
	}
	return chs
}

// TestOptOutAndBackIn walks one customer through opting out and back in
// over HTTP, in both request forms of DELETE. After each step the response
// and a fresh GET show the same customer with the expected channels.
func TestOptOutAndBackIn(t *testing.T) {
	t.Parallel()
	v := newEnv(t, "KE", HandlerOptions{})
	cust, err := v.svc.Create(context.Background(), Input{Phone: phone(1), FirstName: "Alice"})
	if err != nil {
		t.Fatal(err)
	}
	// Another customer whose opt-outs must not leak into the first one's.
	other, err := v.svc.Create(context.Background(), Input{Phone: phone(2)})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := v.svc.OptOut(context.Background(), other.ID, channel.WhatsApp); err != nil {
		t.Fatal(err)
	}

	const js = "application/json"
	target := fmt.Sprintf("/customers/%d/opt-out", cust.ID)
	steps := []struct {
		name        string
		method      string
		target      string
		contentType string
		body        string
		want        []channel.Channel
	}{
		{"opt out of sms", "POST", target, js, `{"channel":"sms"}`, []channel.Channel{"sms"}},
		{"opt out of sms again", "POST", target, js, `{"channel":"sms"}`, []channel.Channel{"sms"}},
		{"opt out of whatsapp too", "POST", target, "application/json; charset=utf-8", `{"channel":"whatsapp"}`, []channel.Channel{"sms", "whatsapp"}},
		{"opt back in to sms by query", "DELETE", target + "?channel=sms", "", "", []channel.Channel{"whatsapp"}},
		{"opt back in to sms again", "DELETE", target + "?channel=sms", "", "", []channel.Channel{"whatsapp"}},
		{"opt out of sms a second time", "POST", target, js, `{"channel":"sms"}`, []channel.Channel{"sms", "whatsapp"}},
		{"opt back in by body", "DELETE", target, js, `{"channel":"whatsapp"}`, []channel.Channel{"sms"}},
		{"query with an empty JSON body", "DELETE", target + "?channel=sms", js, ``, []channel.Channel{}},
		{"opt in when not opted out", "DELETE", target + "?channel=whatsapp", "", "", []channel.Channel{}},
		{"query and body agreeing", "DELETE", target + "?channel=sms", js, ` {"channel":"sms"}`, []channel.Channel{}},
		{"query with a body of only white space", "DELETE", target + "?channel=sms", "text/plain", " \n", []channel.Channel{}},
		{"query with a body without channel", "DELETE", target + "?channel=sms", js, `{}`, []channel.Channel{}},
	}
	for _, st := range steps { // in order: each step starts where the last ended
		t.Run(st.name, func(t *testing.T) {
			got := decodeBody[Customer](t, v.do(t, st.method, st.target, st.contentType, st.body), http.StatusOK)
			want := cust
			want.OptedOutChannels = st.want
			if diff := cmp.Diff(want, got); diff != "" {
				t.Errorf("response (-want +got):\n%s", diff)
			}
			fresh := decodeBody[Customer](t, v.do(t, "GET", fmt.Sprintf("/customers/%d", cust.ID), "", ""), http.StatusOK)
			if diff := cmp.Diff(want, fresh); diff != "" {
				t.Errorf("GET after the step (-want +got):\n%s", diff)
			}
			if diff := cmp.Diff(st.want, v.optOutRows(t, cust.ID)); diff != "" {
				t.Errorf("stored opt-outs (-want +got):\n%s", diff)
			}
		})
	}
	if diff := cmp.Diff([]channel.Channel{channel.WhatsApp}, v.optOutRows(t, other.ID)); diff != "" {
		t.Errorf("the other customer's opt-outs changed (-want +got):\n%s", diff)
	}
}

// TestOptOutKeepsFirstTime checks that opting out again does not rewrite
// the stored opt-out.
func TestOptOutKeepsFirstTime(t *testing.T) {
	t.Parallel()
	v := newEnv(t, "KE", HandlerOptions{})
	ctx := context.Background()
	c, err := v.svc.Create(ctx, Input{Phone: phone(1)})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := v.svc.OptOut(ctx, c.ID, channel.SMS); err != nil {
		t.Fatal(err)
	}
	if _, err := v.db.Exec(`UPDATE customer_opt_outs SET created_at = '2020-01-01T00:00:00Z'`); err != nil {
		t.Fatal(err)
	}
	if _, err := v.svc.OptOut(ctx, c.ID, channel.SMS); err != nil {
		t.Fatal(err)
	}
	var n int
	var year int
	if err := v.db.QueryRow(`SELECT count(*), min(extract(year FROM created_at AT TIME ZONE 'UTC'))::int FROM customer_opt_outs`).Scan(&n, &year); err != nil {
		t.Fatal(err)
	}
	if n != 1 || year != 2020 {
		t.Errorf("after a repeated opt-out: %d rows, created in %d; want 1 row from 2020", n, year)
	}
}

func TestOptOutServiceErrors(t *testing.T) {
	t.Parallel()
	v := newEnv(t, "KE", HandlerOptions{})
	ctx := context.Background()
	c, err := v.svc.Create(ctx, Input{Phone: phone(1)})
	if err != nil {
		t.Fatal(err)
	}
	validation := errs.New(errs.KindValidation, errs.CodeValidation, "")
	tests := []struct {
		name string
		op   func(context.Context, int64, channel.Channel) (Customer, error)
		id   int64
		ch   channel.Channel
		want error
	}{
		{"opt out of unknown customer", v.svc.OptOut, c.ID + 1000, channel.SMS, ErrNotFound},
		{"opt in of unknown customer", v.svc.OptIn, c.ID + 1000, channel.WhatsApp, ErrNotFound},
		{"opt out of empty channel", v.svc.OptOut, c.ID, "", validation},
		{"opt out of unknown channel", v.svc.OptOut, c.ID, "email", validation},
		{"opt in to unknown channel", v.svc.OptIn, c.ID, "Sms", validation},
		{"bad channel checked before the customer", v.svc.OptOut, c.ID + 1000, "fax", validation},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			_, err := tt.op(ctx, tt.id, tt.ch)
			if !errors.Is(err, tt.want) {
				t.Errorf("err = %v, want %v", err, tt.want)
			}
		})
	}
	t.Cleanup(func() {
		if got := v.optOutRows(t, c.ID); len(got) != 0 {
			t.Errorf("failed calls stored opt-outs %v", got)
		}
	})
}

// TestOptOutConcurrent opts one customer out of the same channel from many
// requests at once: every one succeeds and one row is stored.
func TestOptOutConcurrent(t *testing.T) {
	t.Parallel()
	v := newEnv(t, "KE", HandlerOptions{})
	c, err := v.svc.Create(context.Background(), Input{Phone: phone(1)})
	if err != nil {
		t.Fatal(err)
	}
	const n = 16
	errc := make(chan error, n)
	var wg sync.WaitGroup
	for range n {
		// Each goroutine exits after its one call.
		wg.Go(func() {
			got, err := v.svc.OptOut(context.Background(), c.ID, channel.SMS)
			if err == nil && !cmp.Equal(got.OptedOutChannels, []channel.Channel{channel.SMS}) {
				err = fmt.Errorf("opted_out_channels %v", got.OptedOutChannels)
			}
			errc <- err
		})
	}
	wg.Wait()
	close(errc)
	for err := range errc {
		if err != nil {
			t.Errorf("concurrent opt-out: %v", err)
		}
	}
	if diff := cmp.Diff([]channel.Channel{channel.SMS}, v.optOutRows(t, c.ID)); diff != "" {
		t.Errorf("stored opt-outs (-want +got):\n%s", diff)
	}
}

// TestListShowsOptOuts gives customers every combination of opt-outs and
// checks that each list page, walked by page number, by cursor and with a
// filter, shows every customer with exactly its own channels.
func TestListShowsOptOuts(t *testing.T) {
	t.Parallel()
	v := newEnv(t, "KE", HandlerOptions{})
	ctx := context.Background()
	seeded := seedForList(t, v, 23)
	combos := [][]channel.Channel{{}, {channel.SMS}, {channel.WhatsApp}, {channel.SMS, channel.WhatsApp}}
	want := make(map[int64][]channel.Channel, len(seeded))
	for i, c := range seeded {
		chs := combos[i%len(combos)]
		// Opt out in reverse order, so sorted output is not insertion order.
		for j := len(chs) - 1; j >= 0; j-- {
			if _, err := v.svc.OptOut(ctx, c.ID, chs[j]); err != nil {
				t.Fatal(err)
			}
		}
		want[c.ID] = chs
	}

	check := func(t *testing.T, cs []Customer) {
		t.Helper()
		for _, c := range cs {
			if diff := cmp.Diff(want[c.ID], c.OptedOutChannels); diff != "" {
				t.Errorf("customer %d opted_out_channels (-want +got):\n%s", c.ID, diff)
			}
		}
	}
	tests := []struct {
		name   string
		query  string
		cursor bool
		wantN  int
	}{
		{"pages", "page_size=5", false, len(seeded)},
		{"cursor walk", "page_size=4", true, len(seeded)},
		{"filtered pages", "page_size=3&location=nairobi", false, len(newestFirst(seeded, func(c Customer) bool { return strings.EqualFold(c.Location, "nairobi") }))},
		{"one page holds all", "page_size=100", false, len(seeded)},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			seen := 0
			target := "/customers?" + tt.query
			for p := 1; ; p++ {
				if p > 30 {
					t.Fatal("pages do not end")
				}
				if !tt.cursor {
					target = fmt.Sprintf("/customers?%s&page=%d", tt.query, p)
				}
				rec := v.do(t, "GET", target, "", "")
				res := decodeBody[page.List[Customer]](t, rec, http.StatusOK)
				check(t, res.Data)
				seen += len(res.Data)
				if res.Pagination.NextCursor == nil {
					break
				}
				target = "/customers?" + tt.query + "&cursor=" + url.QueryEscape(*res.Pagination.NextCursor)
			}
			if seen != tt.wantN {
				t.Errorf("walk showed %d customers, want %d", seen, tt.wantN)
			}
		})
	}

	t.Run("none opted out is [] in JSON", func(t *testing.T) {
		t.Parallel()
		rec := v.do(t, "GET", "/customers?page_size=100", "", "")
		if got := strings.Count(rec.Body.String(), `"opted_out_channels":[]`); got != 6 { // ids 0, 4, ... 20
			t.Errorf("%d customers with opted_out_channels [], want 6: %s", got, rec.Body)
		}
		if strings.Contains(rec.Body.String(), `"opted_out_channels":null`) {
			t.Errorf("opted_out_channels null: %s", rec.Body)
		}
	})

	t.Run("GET each", func(t *testing.T) {
		t.Parallel()
		for _, c := range seeded {
			got := decodeBody[Customer](t, v.do(t, "GET", fmt.Sprintf("/customers/%d", c.ID), "", ""), http.StatusOK)
			check(t, []Customer{got})
		}
	})
}

func TestOptOutBadRequests(t *testing.T) {
	t.Parallel()
	v := newEnv(t, "KE", HandlerOptions{})
	c, err := v.svc.Create(context.Background(), Input{Phone: phone(1)})
	if err != nil {
		t.Fatal(err)
	}
	const js = "application/json"
	target := fmt.Sprintf("/customers/%d/opt-out", c.ID)
	unknown := fmt.Sprintf("/customers/%d/opt-out", c.ID+1000)
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
		{"opt out of unknown customer", "POST", unknown, js, `{"channel":"sms"}`, 404, "CUSTOMER_NOT_FOUND", ""},
		{"opt out non-numeric id", "POST", "/customers/abc/opt-out", js, `{"channel":"sms"}`, 400, "VALIDATION_ERROR", "id"},
		{"opt out id 0", "POST", "/customers/0/opt-out", js, `{"channel":"sms"}`, 400, "VALIDATION_ERROR", "id"},
		{"opt out without channel", "POST", target, js, `{}`, 400, "VALIDATION_ERROR", "channel"},
		{"opt out null channel", "POST", target, js, `{"channel":null}`, 400, "VALIDATION_ERROR", "channel"},
		{"opt out empty channel", "POST", target, js, `{"channel":""}`, 400, "VALIDATION_ERROR", "channel"},
		{"opt out unknown channel", "POST", target, js, `{"channel":"email"}`, 400, "VALIDATION_ERROR", "channel"},
		{"opt out upper-case channel", "POST", target, js, `{"channel":"SMS"}`, 400, "VALIDATION_ERROR", "channel"},
		{"opt out padded channel", "POST", target, js, `{"channel":" sms"}`, 400, "VALIDATION_ERROR", "channel"},
		{"opt out channel wrong type", "POST", target, js, `{"channel":1}`, 400, "INVALID_JSON", "channel"},
		{"opt out channel array", "POST", target, js, `{"channel":["sms"]}`, 400, "INVALID_JSON", "channel"},
		{"opt out unknown field", "POST", target, js, `{"channel":"sms","reason":"spam"}`, 400, "INVALID_JSON", "reason"},
		{"opt out malformed JSON", "POST", target, js, `{"channel":`, 400, "INVALID_JSON", ""},
		{"opt out empty body", "POST", target, js, ``, 400, "INVALID_JSON", ""},
		{"opt out string body", "POST", target, js, `"sms"`, 400, "INVALID_JSON", ""},
		{"opt out text/plain", "POST", target, "text/plain", `{"channel":"sms"}`, 415, "UNSUPPORTED_MEDIA_TYPE", ""},
		{"opt out no content type", "POST", target, "", `{"channel":"sms"}`, 415, "UNSUPPORTED_MEDIA_TYPE", ""},
		{"opt out bad channel, unknown customer", "POST", unknown, js, `{"channel":"fax"}`, 400, "VALIDATION_ERROR", "channel"},

		{"opt in of unknown customer", "DELETE", unknown + "?channel=sms", "", "", 404, "CUSTOMER_NOT_FOUND", ""},
		{"opt in of unknown customer by body", "DELETE", unknown, js, `{"channel":"whatsapp"}`, 404, "CUSTOMER_NOT_FOUND", ""},
		{"opt in non-numeric id", "DELETE", "/customers/x/opt-out?channel=sms", "", "", 400, "VALIDATION_ERROR", "id"},
		{"opt in without channel", "DELETE", target, "", "", 400, "VALIDATION_ERROR", "channel"},
		{"opt in empty query channel", "DELETE", target + "?channel=", "", "", 400, "VALIDATION_ERROR", "channel"},
		{"opt in unknown query channel", "DELETE", target + "?channel=email", "", "", 400, "VALIDATION_ERROR", "channel"},
		{"opt in upper-case query channel", "DELETE", target + "?channel=WHATSAPP", "", "", 400, "VALIDATION_ERROR", "channel"},
		{"opt in channel twice", "DELETE", target + "?channel=sms&channel=whatsapp", "", "", 400, "VALIDATION_ERROR", "channel"},
		{"opt in query and body disagree", "DELETE", target + "?channel=sms", js, `{"channel":"whatsapp"}`, 400, "VALIDATION_ERROR", "channel"},
		{"opt in unknown body channel", "DELETE", target, js, `{"channel":"fax"}`, 400, "VALIDATION_ERROR", "channel"},
		{"opt in body without channel", "DELETE", target, js, `{}`, 400, "VALIDATION_ERROR", "channel"},
		{"opt in empty JSON body", "DELETE", target, js, ``, 400, "VALIDATION_ERROR", "channel"},
		{"opt in malformed body", "DELETE", target + "?channel=sms", js, `{"channel"`, 400, "INVALID_JSON", ""},
		{"opt in body wrong type", "DELETE", target, js, `{"channel":true}`, 400, "INVALID_JSON", "channel"},
		{"opt in body unknown field", "DELETE", target, js, `{"chanel":"sms"}`, 400, "INVALID_JSON", "chanel"},
		{"opt in text/plain body", "DELETE", target, "text/plain", `channel=sms`, 415, "UNSUPPORTED_MEDIA_TYPE", ""},
		{"opt in body without content type", "DELETE", target + "?channel=sms", "", `{"channel":"sms"}`, 415, "UNSUPPORTED_MEDIA_TYPE", ""},

		{"wrong method", "GET", target, "", "", 405, "METHOD_NOT_ALLOWED", ""},
		{"wrong method PUT", "PUT", target, js, `{"channel":"sms"}`, 405, "METHOD_NOT_ALLOWED", ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			env := wantError(t, v.do(t, tt.method, tt.target, tt.contentType, tt.body), tt.status, tt.code)
			if tt.field != "" && env.Error.Details["field"] != tt.field {
				t.Errorf("details.field = %v, want %q (message %q)", env.Error.Details["field"], tt.field, env.Error.Message)
			}
			if tt.field == "channel" && !strings.Contains(env.Error.Message, "channel") {
				t.Errorf("message %q does not name channel", env.Error.Message)
			}
		})
	}
	t.Cleanup(func() {
		var n int
		if err := v.db.Get(&n, `SELECT count(*) FROM customer_opt_outs`); err != nil {
			t.Errorf("count opt-outs: %v", err)
		} else if n != 0 {
			t.Errorf("bad requests stored %d opt-outs", n)
		}
	})
}
