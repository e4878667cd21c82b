package campaign

import (
	"context"
	"fmt"
	"net/http"
	"sync"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"github.com/lib/pq"

	"github.com/campaignd/dispatch/messaging"
	"github.com/campaignd/dispatch/messaging/provider"
	"github.com/campaignd/dispatch/messaging/queue"
	"github.com/campaignd/dispatch/platform/channel"
	"github.com/campaignd/dispatch/platform/postgres/pgtest"
	"github.com/campaignd/dispatch/platform/redisx/redistest"
	"github.com/campaignd/dispatch/platform/window"
)

func TestSendWindowValidation(t *testing.T) {
	t.Parallel()
	te := newTestEnv(t)
	const base = `"name":"n","channel":"sms","base_template":"Hi {first_name}"`
	tests := []struct {
		name, window string
		status       int
		code, field  string
	}{
		{"unknown zone", `{"start":"08:00","end":"20:00","timezone":"Africa/Atlantis"}`, 400, "VALIDATION_ERROR", "send_window.timezone"},
		{"missing zone", `{"start":"08:00","end":"20:00"}`, 400, "VALIDATION_ERROR", "send_window.timezone"},
		{"offset for a zone", `{"start":"08:00","end":"20:00","timezone":"+03:00"}`, 400, "VALIDATION_ERROR", "send_window.timezone"},
		{"Local", `{"start":"08:00","end":"20:00","timezone":"Local"}`, 400, "VALIDATION_ERROR", "send_window.timezone"},
		{"bad start", `{"start":"8am","end":"20:00","timezone":"UTC"}`, 400, "VALIDATION_ERROR", "send_window.start"},
		{"hour 24", `{"start":"08:00","end":"24:00","timezone":"UTC"}`, 400, "VALIDATION_ERROR", "send_window.end"},
		{"minute 60", `{"start":"08:60","end":"20:00","timezone":"UTC"}`, 400, "VALIDATION_ERROR", "send_window.start"},
		{"missing end", `{"start":"08:00","timezone":"UTC"}`, 400, "VALIDATION_ERROR", "send_window.end"},
		{"start equals end", `{"start":"08:00","end":"08:00","timezone":"UTC"}`, 400, "VALIDATION_ERROR", "send_window.end"},
		{"unknown key", `{"start":"08:00","end":"20:00","timezone":"UTC","days":[1]}`, 400, "INVALID_JSON", ""},
		{"not an object", `"08:00-20:00"`, 400, "INVALID_JSON", ""},
		{"number for a time", `{"start":8,"end":"20:00","timezone":"UTC"}`, 400, "INVALID_JSON", ""},
	}
	for _, tt := range tests {
		t.Run("create "+tt.name, func(t *testing.T) {
			t.Parallel()
			rec := te.do(http.MethodPost, "/campaigns", `{`+base+`,"send_window":`+tt.window+`}`)
			wantError(t, rec, tt.status, tt.code, tt.field)
		})
	}
	c := te.createCampaign(t, "patched", channel.SMS, "Hi")
	for _, tt := range tests {
		t.Run("patch "+tt.name, func(t *testing.T) {
			t.Parallel()
			rec := te.do(http.MethodPatch, fmt.Sprintf("/campaigns/%d", c.ID), `{"send_window":`+tt.window+`}`)
			wantError(t, rec, tt.status, tt.code, tt.field)
		})
	}
	t.Run("nothing was stored", func(t *testing.T) {
		t.Parallel()
		got := decodeJSON[Detail](t, te.do(http.MethodGet, fmt.Sprintf("/campaigns/%d", c.ID), ""), http.StatusOK)
		if got.SendWindow != nil {
			t.Errorf("send_window = %+v after refused patches", got.SendWindow)
		}
	})
}

func TestSendWindowCreatePatchClear(t *testing.T) {
	t.Parallel()
	te := newTestEnv(t)
	nairobi := &window.Window{Start: "08:00", End: "20:00", TimeZone: "Africa/Nairobi"}

	// Created with a window: stored and returned as given.
	rec := te.do(http.MethodPost, "/campaigns", jsonBody(t, CreateInput{Name: "w", Channel: "sms", BaseTemplate: "Hi", SendWindow: nairobi}))
	c := decodeJSON[Campaign](t, rec, http.StatusCreated)
	if diff := cmp.Diff(nairobi, c.SendWindow); diff != "" {
		t.Errorf("created send_window (-want +got):\n%s", diff)
	}
	raw := decodeJSON[map[string]any](t, te.do(http.MethodGet, fmt.Sprintf("/campaigns/%d", c.ID), ""), http.StatusOK)
	if diff := cmp.Diff(map[string]any{"start": "08:00", "end": "20:00", "timezone": "Africa/Nairobi"}, raw["send_window"]); diff != "" {
		t.Errorf("wire send_window (-want +got):\n%s", diff)
	}

	// PATCH replaces it, with seconds and across midnight.
	night := &window.Window{Start: "22:00:30", End: "06:00", TimeZone: "America/New_York"}
	got := decodeJSON[Campaign](t, te.do(http.MethodPatch, fmt.Sprintf("/campaigns/%d", c.ID), jsonBody(t, map[string]any{"send_window": night})), http.StatusOK)
	if diff := cmp.Diff(night, got.SendWindow); diff != "" {
		t.Errorf("patched send_window (-want +got):\n%s", diff)
	}
	// Another field's PATCH keeps it.
	got = decodeJSON[Campaign](t, te.do(http.MethodPatch, fmt.Sprintf("/campaigns/%d", c.ID), `{"name":"renamed"}`), http.StatusOK)
	if diff := cmp.Diff(night, got.SendWindow); diff != "" {
		t.Errorf("send_window after renaming (-want +got):\n%s", diff)
	}
	// null clears it.
	got = decodeJSON[Campaign](t, te.do(http.MethodPatch, fmt.Sprintf("/campaigns/%d", c.ID), `{"send_window":null}`), http.StatusOK)
	if got.SendWindow != nil {
		t.Errorf("send_window = %+v after null", got.SendWindow)
	}
	raw = decodeJSON[map[string]any](t, te.do(http.MethodGet, fmt.Sprintf("/campaigns/%d", c.ID), ""), http.StatusOK)
	if v, ok := raw["send_window"]; !ok || v != nil {
		t.Errorf("send_window = %v (present %v), want null", v, ok)
	}

	// Created without one, or with null: null.
	for _, body := range []string{
		`{"name":"n","channel":"sms","base_template":"Hi"}`,
		`{"name":"n","channel":"sms","base_template":"Hi","send_window":null}`,
	} {
		c := decodeJSON[Campaign](t, te.do(http.MethodPost, "/campaigns", body), http.StatusCreated)
		if c.SendWindow != nil {
			t.Errorf("%s: send_window = %+v", body, c.SendWindow)
		}
	}
}

// TestDetailWindowAndProgress checks next_window_opens_at, started_at,
// finished_at and progress on the detail, at the service's fixed clock
// (testNow, 2025-05-20 08:00 UTC, 11:00 in Nairobi).
func TestDetailWindowAndProgress(t *testing.T) {
	t.Parallel()
	te := newTestEnv(t)
	detail := func(t *testing.T, id int64) (Detail, map[string]any) {
		t.Helper()
		d := decodeJSON[Detail](t, te.do(http.MethodGet, fmt.Sprintf("/campaigns/%d", id), ""), http.StatusOK)
		raw := decodeJSON[map[string]any](t, te.do(http.MethodGet, fmt.Sprintf("/campaigns/%d", id), ""), http.StatusOK)
		return d, raw
	}
	create := func(t *testing.T, w *window.Window) int64 {
		t.Helper()
		return decodeJSON[Campaign](t, te.do(http.MethodPost, "/campaigns",
			jsonBody(t, CreateInput{Name: "d", Channel: "sms", BaseTemplate: "Hi", SendWindow: w})), http.StatusCreated).ID
	}

	t.Run("closed window", func(t *testing.T) {
		t.Parallel()
		id := create(t, &window.Window{Start: "12:00", End: "20:00", TimeZone: "Africa/Nairobi"})
		d, raw := detail(t, id)
		want := time.Date(2025, 5, 20, 9, 0, 0, 0, time.UTC) // 12:00 EAT
		if d.NextWindowOpensAt == nil || !d.NextWindowOpensAt.Equal(want) {
			t.Errorf("next_window_opens_at = %v, want %s", d.NextWindowOpensAt, want)
		}
		if raw["next_window_opens_at"] != "2025-05-20T09:00:00Z" {
			t.Errorf("wire next_window_opens_at = %v, want UTC", raw["next_window_opens_at"])
		}
		// A draft has not started, finished or progressed.
		for _, k := range []string{"started_at", "finished_at"} {
			if v, ok := raw[k]; !ok || v != nil {
				t.Errorf("%s = %v (present %v), want null", k, v, ok)
			}
		}
		if diff := cmp.Diff(map[string]any{"rate_per_second": 0.0, "eta": nil}, raw["progress"]); diff != "" {
			t.Errorf("progress (-want +got):\n%s", diff)
		}
	})
	t.Run("closed window, tomorrow", func(t *testing.T) {
		t.Parallel()
		id := create(t, &window.Window{Start: "06:00", End: "10:00", TimeZone: "Africa/Nairobi"})
		d, _ := detail(t, id)
		want := time.Date(2025, 5, 21, 3, 0, 0, 0, time.UTC)
		if d.NextWindowOpensAt == nil || !d.NextWindowOpensAt.Equal(want) {
			t.Errorf("next_window_opens_at = %v, want %s", d.NextWindowOpensAt, want)
		}
	})
	t.Run("open window", func(t *testing.T) {
		t.Parallel()
		id := create(t, &window.Window{Start: "08:00", End: "20:00", TimeZone: "Africa/Nairobi"})
		_, raw := detail(t, id)
		if v, ok := raw["next_window_opens_at"]; !ok || v != nil {
			t.Errorf("next_window_opens_at = %v (present %v), want null", v, ok)
		}
	})
	t.Run("no window", func(t *testing.T) {
		t.Parallel()
		id := create(t, nil)
		_, raw := detail(t, id)
		if v, ok := raw["next_window_opens_at"]; !ok || v != nil {
			t.Errorf("next_window_opens_at = %v (present %v), want null", v, ok)
		}
	})
	t.Run("ended campaign", func(t *testing.T) {
		t.Parallel()
		id := te.insertCampaign(t, "done", channel.SMS, StatusSent)
		te.windowExec(t, `UPDATE campaigns SET send_window = '{"start":"12:00","end":"20:00","timezone":"Africa/Nairobi"}' WHERE id = $1`, id)
		d, _ := detail(t, id)
		if d.NextWindowOpensAt != nil {
			t.Errorf("next_window_opens_at = %v for a sent campaign", d.NextWindowOpensAt)
		}
	})

	// The subtests below seed customers, so they run one after another.
	t.Run("rate and eta", func(t *testing.T) {
		// Sending for two minutes; 30 messages finished 10 s ago (18 sent,
		// 6 delivered, 3 failed, 3 cancelled), 5 finished long ago, 70 left,
		// and a test send that is not the campaign's.
		id := te.insertCampaign(t, "sending", channel.SMS, StatusSending)
		te.windowExec(t, `UPDATE campaigns SET started_at = now() - interval '2 minutes' WHERE id = $1`, id)
		customers := seedCustomers(t, te.db.DB, 106)
		statuses := map[string]int{"sent": 18, "delivered": 6, "failed": 3, "cancelled": 3}
		i := 0
		for st, n := range statuses {
			for range n {
				te.insertFinished(t, id, customers[i], st, "now() - interval '10 seconds'")
				i++
			}
		}
		for range 5 {
			te.insertFinished(t, id, customers[i], "sent", "now() - interval '5 minutes'")
			i++
		}
		for range 60 {
			te.insertMessage(t, id, customers[i], "pending")
			i++
		}
		for range 10 {
			te.insertMessage(t, id, customers[i], "sending")
			i++
		}
		te.windowExec(t, `INSERT INTO outbound_messages (campaign_id, customer_id, status, test, sent_at) VALUES ($1, NULL, 'sent', true, now())`, id)

		d, raw := detail(t, id)
		if d.Stats.Total != 105 {
			t.Errorf("stats.total = %d, want 105 (the test send left out)", d.Stats.Total)
		}
		// 30 in the last 60 s: 0.5/s; 70 left: 140 s after the service's now.
		want := Progress{RatePerSecond: 0.5, ETA: ptr(testNow.Add(140 * time.Second))}
		if diff := cmp.Diff(want, d.Progress); diff != "" {
			t.Errorf("progress (-want +got):\n%s", diff)
		}
		p, _ := raw["progress"].(map[string]any)
		if p["eta"] != "2025-05-20T08:02:20Z" {
			t.Errorf("wire eta = %v", p["eta"])
		}
		if d.StartedAt == nil || d.FinishedAt != nil {
			t.Errorf("started_at %v finished_at %v, want set and null", d.StartedAt, d.FinishedAt)
		}

		// Paused: the rate, no ETA.
		te.windowExec(t, `UPDATE campaigns SET status = 'paused' WHERE id = $1`, id)
		d, _ = detail(t, id)
		if d.Progress.RatePerSecond != 0.5 || d.Progress.ETA != nil {
			t.Errorf("paused progress = %+v, want the rate and no eta", d.Progress)
		}
		// Sending, but outside its window: no ETA either.
		te.windowExec(t, `UPDATE campaigns SET status = 'sending', send_window = '{"start":"12:00","end":"20:00","timezone":"Africa/Nairobi"}' WHERE id = $1`, id)
		d, _ = detail(t, id)
		if d.Progress.ETA != nil || d.NextWindowOpensAt == nil {
			t.Errorf("closed window: progress %+v, next_window_opens_at %v; want no eta and the opening", d.Progress, d.NextWindowOpensAt)
		}
	})

	t.Run("rate of a fast campaign", func(t *testing.T) {
		// More finished in the last minute than the rate reads: 3,000 sent
		// 10 ms apart, the newest now. The rate comes from the newest 2,000
		// (20 s): 100/s.
		id := te.insertCampaign(t, "fast", channel.SMS, StatusSending)
		te.windowExec(t, `UPDATE campaigns SET started_at = now() - interval '1 hour' WHERE id = $1`, id)
		customers := seedCustomers(t, te.db.DB, 3000)
		inserted := time.Now() // no later than the insert's now()
		te.windowExec(t, `
INSERT INTO outbound_messages (campaign_id, customer_id, status, sent_at, updated_at)
SELECT $1, c, 'sent', now() - (3000 - g) * interval '10 milliseconds', now()
FROM unnest($2::bigint[]) WITH ORDINALITY AS u(c, g)
ORDER BY g`, id, pq.Array(customers))
		d, _ := detail(t, id)
		// The rate is counted per second: the 2,000th newest finished in
		// the second that began 20 to 21 s before the insert, and all of
		// that second counts, so the rate is 2,000-2,100 over 20-21 s plus
		// however long the insert and the read took to start (seconds on a
		// loaded machine): allow for exactly that.
		lowest := 2000 / (21 + time.Since(inserted).Seconds() + 0.05)
		if r := d.Progress.RatePerSecond; r < lowest-0.01 || r > 105 {
			t.Errorf("rate = %v, want about 100 (at least %.2f)", r, lowest)
		}
	})

	t.Run("a campaign just started is measured since it started", func(t *testing.T) {
		id := te.insertCampaign(t, "new", channel.SMS, StatusSending)
		te.windowExec(t, `UPDATE campaigns SET started_at = now() - interval '10 seconds' WHERE id = $1`, id)
		customers := seedCustomers(t, te.db.DB, 20)
		for _, c := range customers {
			te.insertFinished(t, id, c, "sent", "now() - interval '1 second'")
		}
		d, _ := detail(t, id)
		if r := d.Progress.RatePerSecond; r < 1.8 || r > 2.1 {
			t.Errorf("rate = %v, want about 2 (20 in 10 s)", r)
		}
	})
}

func TestRate(t *testing.T) {
	t.Parallel()
	now := time.Date(2025, 5, 20, 8, 0, 0, 500_000_000, time.UTC)
	sec := func(ago, n int64) finishes {
		return finishes{At: now.Truncate(time.Second).Add(-time.Duration(ago) * time.Second), N: n}
	}
	tests := []struct {
		name    string
		seconds []finishes // newest first, as rateSQL returns them
		started *time.Time
		want    float64
	}{
		{"nothing", nil, nil, 0},
		{"over the minute", []finishes{sec(0, 10), sec(30, 10), sec(50, 10)}, nil, 0.5},
		{"started 10 s ago", []finishes{sec(1, 15), sec(5, 5)}, ptr(now.Add(-10 * time.Second)), 2},
		{"started an instant ago counts a second", []finishes{sec(0, 5)}, ptr(now.Add(-time.Millisecond)), 5},
		// 2,000 reached in the second that began 3.5 s ago: 2,000 over 3.5 s.
		{"full sample since its second", []finishes{sec(0, 500), sec(1, 500), sec(2, 500), sec(3, 500), sec(4, 500)},
			ptr(now.Add(-time.Hour)), 571.43},
		{"a retried message nets out", []finishes{sec(2, 1), sec(9, 0)}, nil, 0.02},
		{"rounded", []finishes{sec(10, 1)}, nil, 0.02},
	}
	for _, tt := range tests {
		if got := rate(tt.seconds, now, tt.started); got != tt.want {
			t.Errorf("%s: rate = %v, want %v", tt.name, got, tt.want)
		}
	}
}

func TestListItemsCarryStats(t *testing.T) {
	t.Parallel()
	te := newTestEnv(t)
	customers := te.insertCustomers(t, 10)
	a := te.insertCampaign(t, "a", channel.SMS, StatusSending)
	b := te.insertCampaign(t, "b", channel.SMS, StatusSent)
	c := te.insertCampaign(t, "c", channel.SMS, StatusDraft)
	for i, st := range []string{"pending", "pending", "sending", "sent", "failed"} {
		te.insertMessage(t, a, customers[i], st)
	}
	for i, st := range []string{"delivered", "undelivered", "cancelled"} {
		te.insertMessage(t, b, customers[i], st)
	}
	// A test send is not counted; recipients cancelled before they were
	// materialised are.
	te.windowExec(t, `INSERT INTO outbound_messages (campaign_id, customer_id, status, test) VALUES ($1, NULL, 'sent', true)`, b)
	te.windowExec(t, `INSERT INTO dispatch_batches (campaign_id, messages, cancelled_unmaterialised) VALUES ($1, 4, 4)`, b)

	list := decodeJSON[struct {
		Data []Summary `json:"data"`
	}](t, te.do(http.MethodGet, "/campaigns", ""), http.StatusOK)
	got := map[int64]Stats{}
	for _, s := range list.Data {
		got[s.ID] = s.Stats
	}
	want := map[int64]Stats{
		a: {Total: 5, Pending: 2, Sending: 1, Sent: 1, Failed: 1},
		b: {Total: 7, Delivered: 1, Undelivered: 1, Cancelled: 5},
		c: {},
	}
	if diff := cmp.Diff(want, got); diff != "" {
		t.Errorf("list stats (-want +got):\n%s", diff)
	}
	// The list agrees with each detail.
	for id, st := range want {
		d := decodeJSON[Detail](t, te.do(http.MethodGet, fmt.Sprintf("/campaigns/%d", id), ""), http.StatusOK)
		if diff := cmp.Diff(st, d.Stats); diff != "" {
			t.Errorf("campaign %d detail stats (-list +detail):\n%s", id, diff)
		}
	}
	// Every key is present on the wire, zeros included.
	raw := decodeJSON[map[string]any](t, te.do(http.MethodGet, "/campaigns?status=draft", ""), http.StatusOK)
	item := raw["data"].([]any)[0].(map[string]any)
	wantKeys := []string{"cancelled", "delivered", "failed", "pending", "sending", "sent", "total", "undelivered"}
	if diff := cmp.Diff(wantKeys, keys(item["stats"].(map[string]any))); diff != "" {
		t.Errorf("stats keys (-want +got):\n%s", diff)
	}
}

// TestStartedAndFinishedAt follows the timestamps through send, finish,
// retry-failed and cancel.
func TestStartedAndFinishedAt(t *testing.T) {
	t.Parallel()
	se := newSendEnv(t)
	ctx := context.Background()
	get := func(id int64) Campaign {
		t.Helper()
		c, err := se.svc.repo.Get(ctx, id)
		if err != nil {
			t.Fatal(err)
		}
		return c
	}
	customers := seedCustomers(t, se.db.DB, 3)

	c := se.createCampaign(t, "timed", channel.SMS, "Hi {first_name}")
	if got := get(c.ID); got.StartedAt != nil || got.FinishedAt != nil {
		t.Fatalf("draft: started_at %v finished_at %v", got.StartedAt, got.FinishedAt)
	}
	wantSendAccepted(t, se.send(c.ID, sendBody(t, customers), ""), c.ID, 3, 0)
	sent := get(c.ID)
	if sent.StartedAt == nil || sent.FinishedAt != nil {
		t.Fatalf("sending: started_at %v finished_at %v, want set and null", sent.StartedAt, sent.FinishedAt)
	}

	// Every message final: the finisher stamps finished_at.
	se.windowExec(t, `UPDATE outbound_messages SET status = 'failed' WHERE campaign_id = $1`, c.ID)
	if _, err := se.svc.repo.Finish(ctx); err != nil {
		t.Fatal(err)
	}
	done := get(c.ID)
	if done.Status != StatusFailed || done.FinishedAt == nil || done.FinishedAt.Before(*done.StartedAt) {
		t.Fatalf("finished: status %s started_at %v finished_at %v", done.Status, done.StartedAt, done.FinishedAt)
	}

	// retry-failed sends again: finished_at cleared, started_at kept.
	if _, err := se.svc.RetryFailed(ctx, c.ID); err != nil {
		t.Fatal(err)
	}
	again := get(c.ID)
	if again.Status != StatusSending || again.FinishedAt != nil || !again.StartedAt.Equal(*sent.StartedAt) {
		t.Fatalf("retrying: status %s started_at %v (was %v) finished_at %v", again.Status, again.StartedAt, sent.StartedAt, again.FinishedAt)
	}

	// Cancel stamps it again; so does cancelling a draft, which never started.
	if _, err := se.svc.Cancel(ctx, c.ID); err != nil {
		t.Fatal(err)
	}
	if got := get(c.ID); got.FinishedAt == nil {
		t.Errorf("cancelled: finished_at null")
	}
	d := se.createCampaign(t, "never sent", channel.SMS, "Hi")
	if _, err := se.svc.Cancel(ctx, d.ID); err != nil {
		t.Fatal(err)
	}
	if got := get(d.ID); got.StartedAt != nil || got.FinishedAt == nil {
		t.Errorf("cancelled draft: started_at %v finished_at %v, want null and set", got.StartedAt, got.FinishedAt)
	}
}

// windowSender accepts every message and notes when each was sent.
type windowSender struct {
	mu    sync.Mutex
	calls map[int64]int
	first time.Time
}

func (s *windowSender) Send(_ context.Context, m provider.Message) (provider.Accepted, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.calls == nil {
		s.calls = map[int64]int{}
	}
	if s.first.IsZero() {
		s.first = time.Now()
	}
	s.calls[m.ID]++
	return provider.Accepted{MessageID: fmt.Sprintf("win-%d", m.ID)}, nil
}

func (s *windowSender) snapshot() (map[int64]int, time.Time) {
	s.mu.Lock()
	defer s.mu.Unlock()
	out := make(map[int64]int, len(s.calls))
	for k, v := range s.calls {
		out[k] = v
	}
	return out, s.first
}

// TestSendWindowHoldsDeliveryUntilItOpens sends a campaign whose window
// opens about three seconds from now (in Kathmandu, UTC+05:45, to seconds)
// through the real pipeline: API, messaging's feeder, Redis queue, worker
// pool, finisher. Nothing is delivered while the window is closed, and the
// detail says when it opens; then every message is delivered once, with
// one attempt each (waiting used none).
func TestSendWindowHoldsDeliveryUntilItOpens(t *testing.T) {
	t.Parallel()
	db := pgtest.New(t)
	rdb, prefix := redistest.New(t)
	q := queue.New(rdb, prefix, sendQueueName)
	msvc := messaging.NewService(messaging.NewRepo(db.DB), q, messaging.MaintenanceOptions{
		PromoteInterval: 20 * time.Millisecond, ReapInterval: 100 * time.Millisecond, ConsumerTTL: 5 * time.Second,
		SweepInterval: 200 * time.Millisecond, StaleAfter: 10 * time.Minute,
	}, sendLog)
	svc := NewService(NewRepo(db.DB), messaging.Templates{}, testCustomers, nil).WithDispatch(messagingDispatcher{msvc}, sendLog)
	te := &testEnv{db: db, svc: svc, e: newEcho(svc)}
	sender := &windowSender{}
	pool := messaging.NewPool(messaging.PoolOptions{
		Consumer: "window-test", Concurrency: 4, BatchSize: 10,
		SendTimeout: time.Second, Lease: 5 * time.Second, PollWait: 100 * time.Millisecond,
		HeartbeatInterval: 100 * time.Millisecond, DrainTimeout: 2 * time.Second, Starved: msvc.WakeFeeder,
	}, q, msvc.Repo(), sender, messaging.RetryPolicy{MaxAttempts: 3, Base: 10 * time.Millisecond}, sendLog)
	ctx, cancel := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	wg.Go(func() { msvc.RunMaintenance(ctx) })                  // returns when ctx ends
	wg.Go(func() { msvc.RunFeeder(ctx) })                       // returns when ctx ends
	wg.Go(func() { svc.RunFinisher(ctx, 50*time.Millisecond) }) // returns when ctx ends
	poolErr := make(chan error, 1)
	wg.Go(func() { poolErr <- pool.Run(ctx) }) // returns after draining, once ctx ends
	t.Cleanup(func() {                         // before pgtest's and redistest's cleanups drop the schema and keys
		cancel()
		wg.Wait()
		if err := <-poolErr; err != nil {
			t.Errorf("pool.Run: %v", err)
		}
	})

	loc, err := time.LoadLocation("Asia/Kathmandu")
	if err != nil {
		t.Fatal(err)
	}
	opensAt := time.Now().Add(3 * time.Second).Truncate(time.Second)
	w := &window.Window{
		Start:    opensAt.In(loc).Format("15:04:05"),
		End:      opensAt.Add(time.Hour).In(loc).Format("15:04:05"),
		TimeZone: "Asia/Kathmandu",
	}
	c := decodeJSON[Campaign](t, te.do(http.MethodPost, "/campaigns",
		jsonBody(t, CreateInput{Name: "windowed", Channel: "sms", BaseTemplate: "Hi {first_name}", SendWindow: w})), http.StatusCreated)
	const n = 25
	customers := seedCustomers(t, db.DB, n)
	se := &sendEnv{testEnv: te, msvc: msvc, rdb: rdb, prefix: prefix, queueKey: queue.New(rdb, prefix, sendQueueName).Keys().Ready}
	wantSendAccepted(t, se.send(c.ID, sendBody(t, customers), ""), c.ID, n, 0)
	if time.Until(opensAt) < time.Second {
		t.Skipf("setup took too long: the window opens in %s, too soon to watch it closed", time.Until(opensAt))
	}

	detail := func() Detail {
		return decodeJSON[Detail](t, te.do(http.MethodGet, fmt.Sprintf("/campaigns/%d", c.ID), ""), http.StatusOK)
	}
	// While closed: nothing delivered, nothing attempted, and the detail
	// says when it opens.
	polls := 0
	tick := time.NewTicker(100 * time.Millisecond)
	defer tick.Stop()
	for time.Until(opensAt) > 150*time.Millisecond {
		d := detail()
		if d.Stats.Sent+d.Stats.Delivered+d.Stats.Failed != 0 || d.Stats.Total != n {
			t.Fatalf("%s before the window opens: stats %+v", time.Until(opensAt), d.Stats)
		}
		if d.NextWindowOpensAt == nil || !d.NextWindowOpensAt.Equal(opensAt.UTC()) {
			t.Fatalf("next_window_opens_at = %v, want %s", d.NextWindowOpensAt, opensAt.UTC())
		}
		if d.Progress.ETA != nil {
			t.Errorf("eta %v while the window is closed", d.Progress.ETA)
		}
		if calls, _ := sender.snapshot(); len(calls) != 0 {
			t.Fatalf("%d messages sent before the window opened", len(calls))
		}
		polls++
		<-tick.C
	}
	if polls == 0 {
		t.Fatal("never observed the closed window")
	}

	// Once open: everything, once.
	deadline := time.Now().Add(20 * time.Second)
	var d Detail
	for {
		d = detail()
		if d.Status == StatusSent && d.Stats.Sent == n {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("not finished 20 s after the window opened: status %s, stats %+v", d.Status, d.Stats)
		}
		<-tick.C
	}
	calls, first := sender.snapshot()
	if first.Before(opensAt) {
		t.Errorf("first message sent at %s, before the window opened at %s", first.Format(time.StampMilli), opensAt.Format(time.StampMilli))
	}
	if len(calls) != n {
		t.Errorf("%d messages sent, want %d", len(calls), n)
	}
	for id, k := range calls {
		if k != 1 {
			t.Errorf("message %d sent %d times", id, k)
		}
	}
	var rows []struct {
		ID         int64 `db:"id"`
		Attempts   int   `db:"attempts"`
		RetryCount int   `db:"retry_count"`
		Logged     int   `db:"logged"`
	}
	if err := db.SelectContext(ctx, &rows, `
SELECT m.id, m.attempts, m.retry_count, (SELECT count(*) FROM message_attempts a WHERE a.message_id = m.id) AS logged
FROM outbound_messages m WHERE m.campaign_id = $1`, c.ID); err != nil {
		t.Fatal(err)
	}
	for _, r := range rows {
		if r.Attempts != 1 || r.RetryCount != 0 || r.Logged != 1 {
			t.Errorf("message %d: attempts %d, retry_count %d, %d attempts logged; want 1, 0, 1", r.ID, r.Attempts, r.RetryCount, r.Logged)
		}
	}
	if d.StartedAt == nil || d.FinishedAt == nil || d.FinishedAt.Before(opensAt) || !d.StartedAt.Before(opensAt) {
		t.Errorf("started_at %v finished_at %v, want the send before %s and the end after", d.StartedAt, d.FinishedAt, opensAt)
	}
	if d.NextWindowOpensAt != nil || d.Progress.ETA != nil || d.Progress.RatePerSecond <= 0 {
		t.Errorf("finished: next_window_opens_at %v, progress %+v; want null, a rate and no eta", d.NextWindowOpensAt, d.Progress)
	}
}

func (te *testEnv) windowExec(t testing.TB, query string, args ...any) {
	t.Helper()
	if _, err := te.db.ExecContext(context.Background(), query, args...); err != nil {
		t.Fatalf("%s: %v", query, err)
	}
}

// insertFinished stores a final message that finished at the SQL time
// expression at (its sent_at when sent, else its updated_at).
func (te *testEnv) insertFinished(t testing.TB, campaignID, customerID int64, status, at string) {
	t.Helper()
	te.windowExec(t, `INSERT INTO outbound_messages (campaign_id, customer_id, status, sent_at, updated_at)
VALUES ($1, $2, $3, CASE WHEN $3 IN ('sent', 'delivered', 'undelivered') THEN `+at+` END, `+at+`)`,
		campaignID, customerID, status)
}

// TestFinishCounts follows the per-second finish counts the rate reads
// (campaign_finishes) through the changes a message goes through: they
// count messages that are final now, by finishing second, whatever path
// they took.
func TestFinishCounts(t *testing.T) {
	t.Parallel()
	te := newTestEnv(t)
	id := te.insertCampaign(t, "finishes", channel.SMS, StatusSending)
	customers := seedCustomers(t, te.db.DB, 6)
	for _, c := range customers {
		te.insertMessage(t, id, c, "pending")
	}
	counted := func() int64 {
		t.Helper()
		var n int64
		if err := te.db.Get(&n, `SELECT coalesce(sum(n), 0) FROM campaign_finishes WHERE campaign_id = $1`, id); err != nil {
			t.Fatal(err)
		}
		return n
	}
	final := func() int64 {
		t.Helper()
		var n int64
		if err := te.db.Get(&n, `SELECT count(*) FROM outbound_messages WHERE campaign_id = $1
AND status IN ('sent', 'delivered', 'undelivered', 'failed', 'cancelled')`, id); err != nil {
			t.Fatal(err)
		}
		return n
	}
	steps := []struct {
		name, sql string
		args      []any
	}{
		{"claimed", `UPDATE outbound_messages SET status = 'sending', updated_at = now() WHERE campaign_id = $1`, nil},
		{"recorded: 3 sent, 1 failed, 2 back to pending", `UPDATE outbound_messages SET
    status = CASE WHEN customer_id = ANY($2) THEN 'sent' WHEN customer_id = $3 THEN 'failed' ELSE 'pending' END,
    sent_at = CASE WHEN customer_id = ANY($2) THEN now() END, updated_at = now() WHERE campaign_id = $1`,
			[]any{pq.Array(customers[:3]), customers[3]}},
		{"a receipt: sent to delivered", `UPDATE outbound_messages SET status = 'delivered', updated_at = now()
WHERE campaign_id = $1 AND customer_id = $2`, []any{customers[0]}},
		{"retry-failed", `UPDATE outbound_messages SET status = 'pending', updated_at = now() WHERE campaign_id = $1 AND status = 'failed'`, nil},
		{"cancelled", `UPDATE outbound_messages SET status = 'cancelled', updated_at = now() WHERE campaign_id = $1 AND status = 'pending'`, nil},
		{"a message deleted", `DELETE FROM outbound_messages WHERE campaign_id = $1 AND customer_id = $2`, []any{customers[0]}},
	}
	for _, s := range steps {
		te.windowExec(t, s.sql, append([]any{id}, s.args...)...)
		if got, want := counted(), final(); got != want {
			t.Errorf("after %s: %d counted as finished, %d messages final", s.name, got, want)
		}
	}
	if got := counted(); got != 5 {
		t.Errorf("at the end %d counted, want 5 (2 sent, 3 cancelled)", got)
	}
}
