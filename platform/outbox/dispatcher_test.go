package outbox

import (
	"encoding/json"
	"errors"
	"log/slog"
	"net/http"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"github.com/jmoiron/sqlx"
	"go.uber.org/goleak"

	"github.com/campaignd/dispatch/platform/postgres"
	"github.com/campaignd/dispatch/platform/postgres/pgtest"
	"github.com/campaignd/dispatch/platform/webhooksig"
)

func TestNextRetry(t *testing.T) {
	t.Parallel()
	tests := []struct {
		attempt int
		want    time.Duration
		ok      bool
	}{
		{0, 0, false},
		{1, 5 * time.Second, true},
		{2, 5 * time.Minute, true},
		{3, 30 * time.Minute, true},
		{4, 2 * time.Hour, true},
		{5, 5 * time.Hour, true},
		{6, 10 * time.Hour, true},
		{7, 14 * time.Hour, true},
		{8, 20 * time.Hour, true},
		{9, 24 * time.Hour, true},
		{10, 0, false},
	}
	for _, tt := range tests {
		got, ok := NextRetry(DefaultSchedule, tt.attempt)
		if got != tt.want || ok != tt.ok {
			t.Errorf("NextRetry(default, %d) = %s, %v; want %s, %v", tt.attempt, got, ok, tt.want, tt.ok)
		}
	}
	var total time.Duration
	for _, d := range DefaultSchedule {
		total += d
	}
	if total < 24*time.Hour {
		t.Errorf("the default schedule retries for %s, want at least 24h", total)
	}
}

// TestSignedDelivery: a receiver checks each webhook with the Standard
// Webhooks algorithm; the signature verifies with the endpoint's secret and
// fails with any other.
func TestSignedDelivery(t *testing.T) {
	t.Parallel()
	db := newDB(t)
	rc := newReceiver(t)
	ep := addEndpoint(t, db.DB, rc, CampaignFinished, MessageFailed)

	data := map[string]any{"campaign_id": 7, "stats": map[string]int{"sent": 3, "failed": 1}}
	if err := postgres.InTx(t.Context(), db.DB, func(tx *sqlx.Tx) error {
		return Emit(t.Context(), tx, CampaignFinished, data)
	}); err != nil {
		t.Fatal(err)
	}
	emitN(t, db.DB, MessageSent, 3) // nobody is subscribed: never sent
	ids := eventIDs(t, db.DB)
	runDispatcher(t, db.DB, fastOptions(), nil)
	waitFor(t, 10*time.Second, "the event to be delivered", func() bool { return len(rc.snapshot()) == 1 })

	got := rc.snapshot()[0]
	if got.VerifyErr != nil {
		t.Fatalf("signature does not verify with the endpoint's secret: %v", got.VerifyErr)
	}
	if got.ID != ids[0] || !strings.HasPrefix(got.ID, "evt_") || len(got.ID) != 4+32 {
		t.Errorf("webhook-id = %q, want the event's id %q (evt_ + 32 hex)", got.ID, ids[0])
	}
	if ct := got.Header.Get("Content-Type"); ct != "application/json" {
		t.Errorf("Content-Type = %q", ct)
	}
	ts, err := strconv.ParseInt(got.Header.Get(webhooksig.HeaderTimestamp), 10, 64)
	if err != nil || time.Since(time.Unix(ts, 0)).Abs() > time.Minute {
		t.Errorf("webhook-timestamp = %q, want now in Unix seconds", got.Header.Get(webhooksig.HeaderTimestamp))
	}
	// The signature is the Standard Webhooks one, recomputed here.
	want, _ := webhooksig.Sign(secretOf(t, db.DB, ep.ID), got.ID, time.Unix(ts, 0), got.Body)
	if s := got.Header.Get(webhooksig.HeaderSignature); s != want {
		t.Errorf("webhook-signature = %q, want %q", s, want)
	}
	// A wrong secret fails.
	other, _ := webhooksig.NewSecret()
	if err := webhooksig.Verify(other, got.Header, got.Body, time.Now(), 5*time.Minute); !errors.Is(err, webhooksig.ErrNoMatchingSignature) {
		t.Errorf("Verify with a wrong secret = %v, want ErrNoMatchingSignature", err)
	}
	// A body changed in transit fails.
	if err := webhooksig.Verify(secretOf(t, db.DB, ep.ID), got.Header, append(got.Body, ' '), time.Now(), 5*time.Minute); !errors.Is(err, webhooksig.ErrNoMatchingSignature) {
		t.Errorf("Verify of a changed body = %v, want ErrNoMatchingSignature", err)
	}

	// The body is {"id","type","created_at","data"}.
	var body map[string]json.RawMessage
	if err := json.Unmarshal(got.Body, &body); err != nil {
		t.Fatal(err)
	}
	keys := []string{}
	for k := range body {
		keys = append(keys, k)
	}
	if diff := cmp.Diff([]string{"created_at", "data", "id", "type"}, sorted(keys)); diff != "" {
		t.Errorf("body keys (-want +got):\n%s", diff)
	}
	if got.Event.Type != CampaignFinished || got.Event.ID != got.ID || time.Since(got.Event.CreatedAt) > time.Minute {
		t.Errorf("event = %+v", got.Event)
	}
	var gotData map[string]any
	_ = json.Unmarshal(got.Event.Data, &gotData)
	if diff := cmp.Diff(map[string]any{"campaign_id": 7.0, "stats": map[string]any{"sent": 3.0, "failed": 1.0}}, gotData); diff != "" {
		t.Errorf("data (-want +got):\n%s", diff)
	}

	waitFor(t, 5*time.Second, "the attempt to be recorded", func() bool {
		return count(t, db.DB, `SELECT count(*) FROM webhook_deliveries WHERE delivered`) == 1
	})
	if n := count(t, db.DB, `SELECT count(*) FROM webhook_tasks`) + count(t, db.DB, `SELECT count(*) FROM webhook_events`); n != 0 {
		t.Errorf("%d tasks or outbox rows left, want 0 (the message.sent events nobody receives are dropped)", n)
	}
}

// TestRetriesUntilSuccess: a receiver that answers 500 three times and then
// 200 gets each event exactly once with a 2xx, after four attempts, all
// recorded.
func TestRetriesUntilSuccess(t *testing.T) {
	t.Parallel()
	db := newDB(t)
	rc := newReceiver(t)
	rc.respond = func(_ string, seen int) int {
		if seen < 3 {
			return http.StatusInternalServerError
		}
		return http.StatusOK
	}
	ep := addEndpoint(t, db.DB, rc, MessageFailed)
	const events = 20
	emitN(t, db.DB, MessageFailed, events)
	ids := eventIDs(t, db.DB)
	runDispatcher(t, db.DB, fastOptions(), nil)

	waitFor(t, 20*time.Second, "every event delivered and recorded", func() bool {
		return count(t, db.DB, `SELECT count(*) FROM webhook_deliveries WHERE delivered`) == events &&
			count(t, db.DB, `SELECT count(*) FROM webhook_tasks`) == 0
	})
	ok := rc.okByID()
	for _, id := range ids {
		if ok[id] != 1 {
			t.Errorf("event %s got %d successful deliveries, want exactly 1", id, ok[id])
		}
	}
	if len(ok) != events {
		t.Errorf("%d events delivered, want %d", len(ok), events)
	}
	if n := len(rc.snapshot()); n != 4*events {
		t.Errorf("the receiver got %d requests, want %d (4 per event)", n, 4*events)
	}
	for _, r := range rc.snapshot() {
		if r.VerifyErr != nil {
			t.Errorf("attempt of %s: signature does not verify: %v", r.ID, r.VerifyErr)
		}
	}

	// Every attempt is recorded: 1-3 failed with a next retry, 4 delivered.
	type row struct {
		Attempt    int    `db:"attempt"`
		StatusCode int    `db:"status_code"`
		Delivered  bool   `db:"delivered"`
		HasRetry   bool   `db:"has_retry"`
		Error      string `db:"error"`
	}
	var rows []row
	if err := db.SelectContext(t.Context(), &rows, `
		SELECT attempt, status_code, delivered, next_retry_at IS NOT NULL AS has_retry, coalesce(error, '') AS error
		FROM webhook_deliveries WHERE event_id = $1 ORDER BY id`, ids[0]); err != nil {
		t.Fatal(err)
	}
	want := []row{
		{1, 500, false, true, "HTTP 500 Internal Server Error"},
		{2, 500, false, true, "HTTP 500 Internal Server Error"},
		{3, 500, false, true, "HTTP 500 Internal Server Error"},
		{4, 200, true, false, ""},
	}
	if diff := cmp.Diff(want, rows); diff != "" {
		t.Errorf("attempts of the first event (-want +got):\n%s", diff)
	}
	if n := count(t, db.DB, `SELECT count(*) FROM webhook_deliveries`); n != 4*events {
		t.Errorf("%d attempts recorded, want %d", n, 4*events)
	}
	// The endpoint recovered: not failing, still enabled.
	e, err := NewStore(db.DB).Get(t.Context(), ep.ID)
	if err != nil {
		t.Fatal(err)
	}
	if !e.Enabled || e.FailingSince != nil {
		t.Errorf("endpoint after recovery: enabled %v, failing_since %v; want enabled, not failing", e.Enabled, e.FailingSince)
	}
}

// TestGivesUpAfterSchedule: past the last retry the event is dropped for
// that endpoint; the last attempt has no next retry.
func TestGivesUpAfterSchedule(t *testing.T) {
	t.Parallel()
	db := newDB(t)
	rc := newReceiver(t)
	rc.respond = func(string, int) int { return http.StatusServiceUnavailable }
	addEndpoint(t, db.DB, rc, CustomerOptedOut)
	emitN(t, db.DB, CustomerOptedOut, 1)
	runDispatcher(t, db.DB, fastOptions(), nil) // 3 retries: 4 attempts

	waitFor(t, 10*time.Second, "the task to be given up", func() bool {
		return count(t, db.DB, `SELECT count(*) FROM webhook_deliveries`) == 4 &&
			count(t, db.DB, `SELECT count(*) FROM webhook_tasks`) == 0
	})
	if n := count(t, db.DB, `SELECT count(*) FROM webhook_deliveries WHERE attempt = 4 AND next_retry_at IS NULL AND NOT delivered`); n != 1 {
		t.Errorf("last attempt rows without a retry: %d, want 1", n)
	}
	if n := len(rc.snapshot()); n != 4 {
		t.Errorf("the receiver got %d requests, want 4", n)
	}
}

// TestRestartDeliversOutbox: a dispatcher stopped with events in the outbox
// and deliveries in flight; a new one, on a new pool as a restarted process
// would have, delivers every event, each with exactly one 2xx.
func TestRestartDeliversOutbox(t *testing.T) {
	t.Parallel()
	db := newDB(t)
	rc := newReceiver(t)
	hold := make(chan struct{})
	rc.hold = hold
	addEndpoint(t, db.DB, rc, MessageDelivered)
	emitN(t, db.DB, MessageDelivered, 40)
	ids := eventIDs(t, db.DB)

	o := fastOptions()
	o.Concurrency, o.PerEndpoint = 4, 4
	stop := runDispatcher(t, db.DB, o, nil)
	waitFor(t, 10*time.Second, "4 deliveries in flight", func() bool { return rc.requestsInFlight() == 4 })
	stop()
	// The attempts cut short are released (due now, no attempt counted),
	// not recorded.
	if n := count(t, db.DB, `SELECT count(*) FROM webhook_deliveries`); n != 0 {
		t.Errorf("%d attempts recorded for deliveries cut short by shutdown, want 0", n)
	}
	if n := count(t, db.DB, `SELECT count(*) FROM webhook_tasks WHERE next_attempt_at > now() OR attempts > 0`); n != 0 {
		t.Errorf("%d tasks still leased or counted after shutdown, want 0", n)
	}
	// More events arrive while no dispatcher runs.
	emitN(t, db.DB, MessageDelivered, 10)
	ids = append(ids, eventIDs(t, db.DB)...)
	close(hold)

	pool, err := postgres.Open(t.Context(), db.URL, postgres.Options{MaxOpenConns: 4})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { pool.Close() })
	runDispatcher(t, pool, o, nil)
	if len(ids) != 50 {
		t.Fatalf("%d events, want 50", len(ids))
	}
	waitFor(t, 20*time.Second, "all 50 events delivered", func() bool {
		return count(t, db.DB, `SELECT count(*) FROM webhook_tasks`) == 0 && len(rc.okByID()) == 50
	})
	ok := rc.okByID()
	for _, id := range ids {
		if ok[id] != 1 {
			t.Errorf("event %s: %d successful deliveries, want 1", id, ok[id])
		}
	}
}

// TestDisabledAfterFailingTooLong: an endpoint whose every attempt fails for
// longer than DisableAfter is disabled with a WARN line naming it, and its
// pending events are dropped.
func TestDisabledAfterFailingTooLong(t *testing.T) {
	t.Parallel()
	db := newDB(t)
	rc := newReceiver(t)
	rc.respond = func(string, int) int { return http.StatusBadGateway }
	ep := addEndpoint(t, db.DB, rc, CampaignPaused)
	healthy := newReceiver(t)
	other := addEndpoint(t, db.DB, healthy, CampaignPaused)
	emitN(t, db.DB, CampaignPaused, 3)

	var logged syncBuffer
	log := slog.New(slog.NewTextHandler(&logged, nil))
	o := fastOptions()
	o.Schedule = make([]time.Duration, 200)
	for i := range o.Schedule {
		o.Schedule[i] = 20 * time.Millisecond
	}
	o.DisableAfter = 300 * time.Millisecond
	began := time.Now()
	runDispatcher(t, db.DB, o, log)

	store := NewStore(db.DB)
	waitFor(t, 20*time.Second, "the endpoint to be disabled", func() bool {
		e, err := store.Get(t.Context(), ep.ID)
		return err == nil && !e.Enabled
	})
	if since := time.Since(began); since < o.DisableAfter {
		t.Errorf("disabled after %s, before DisableAfter %s", since, o.DisableAfter)
	}
	e, _ := store.Get(t.Context(), ep.ID)
	if e.DisabledAt == nil || e.DisabledReason == nil || !strings.Contains(*e.DisabledReason, "failed for longer than 300ms") || e.FailingSince == nil {
		t.Errorf("disabled endpoint = %+v, want disabled_at, a reason and failing_since", e)
	}
	waitFor(t, 5*time.Second, "the WARN line", func() bool {
		return strings.Contains(logged.String(), "level=WARN msg=\"webhook endpoint disabled")
	})
	line := ""
	for l := range strings.SplitSeq(logged.String(), "\n") {
		if strings.Contains(l, "webhook endpoint disabled") {
			line = l
		}
	}
	if !strings.Contains(line, "webhook_endpoint_id="+strconv.FormatInt(ep.ID, 10)) || !strings.Contains(line, rc.srv.URL) {
		t.Errorf("WARN line does not name the endpoint: %s", line)
	}
	if n := count(t, db.DB, `SELECT count(*) FROM webhook_tasks WHERE endpoint_id = $1`, ep.ID); n != 0 {
		t.Errorf("%d tasks left for the disabled endpoint, want 0", n)
	}
	// The healthy endpoint got everything and stays enabled.
	waitFor(t, 5*time.Second, "the healthy endpoint's deliveries", func() bool { return len(healthy.okByID()) == 3 })
	if h, _ := store.Get(t.Context(), other.ID); !h.Enabled {
		t.Error("the healthy endpoint was disabled")
	}
	// A disabled endpoint receives no new events.
	before := len(rc.snapshot())
	emitN(t, db.DB, CampaignPaused, 1)
	waitFor(t, 5*time.Second, "the healthy endpoint's 4th delivery", func() bool { return len(healthy.okByID()) == 4 })
	if after := len(rc.snapshot()); after != before {
		t.Errorf("the disabled endpoint got %d more requests", after-before)
	}
}

// TestSlowReceiverIsolated: an endpoint that never answers holds at most
// PerEndpoint slots; another endpoint's events flow meanwhile.
func TestSlowReceiverIsolated(t *testing.T) {
	t.Parallel()
	db := newDB(t)
	slow, fast := newReceiver(t), newReceiver(t)
	slow.hold = make(chan struct{}) // never closed: requests end when the dispatcher cancels them
	addEndpoint(t, db.DB, slow, MessageSent)
	addEndpoint(t, db.DB, fast, MessageSent)
	emitN(t, db.DB, MessageSent, 50)
	o := fastOptions()
	o.Concurrency, o.PerEndpoint, o.Timeout = 8, 3, time.Minute
	stop := runDispatcher(t, db.DB, o, nil)
	waitFor(t, 20*time.Second, "the fast endpoint's 50 events", func() bool { return len(fast.okByID()) == 50 })
	if n := slow.requestsInFlight(); n != 3 {
		t.Errorf("slow endpoint has %d requests in flight, want PerEndpoint = 3", n)
	}
	stop()
	slow.mu.Lock()
	maxIn := slow.maxIn
	slow.mu.Unlock()
	if maxIn > 3 {
		t.Errorf("slow endpoint had up to %d requests in flight, want at most 3", maxIn)
	}
	if fast.maxIn > 3 {
		t.Errorf("fast endpoint had up to %d requests in flight, want at most 3", fast.maxIn)
	}
}

// TestTwoDispatchersShareWork: two dispatchers on one database deliver each
// event once between them.
func TestTwoDispatchersShareWork(t *testing.T) {
	t.Parallel()
	db := newDB(t)
	rc := newReceiver(t)
	addEndpoint(t, db.DB, rc, MessageUndelivered)
	emitN(t, db.DB, MessageUndelivered, 200)
	o := fastOptions()
	o.FanOutBatch = 16 // several fan-out rounds, raced by both
	runDispatcher(t, db.DB, o, nil)
	runDispatcher(t, db.DB, o, nil)
	waitFor(t, 30*time.Second, "200 events delivered", func() bool {
		return count(t, db.DB, `SELECT count(*) FROM webhook_tasks`) == 0 && len(rc.okByID()) == 200
	})
	for id, n := range rc.okByID() {
		if n != 1 {
			t.Errorf("event %s delivered %d times, want 1", id, n)
		}
	}
	if n := count(t, db.DB, `SELECT count(*) FROM webhook_deliveries`); n != 200 {
		t.Errorf("%d attempts recorded, want 200", n)
	}
}

// TestTimeoutIsAFailedAttempt: no answer within Timeout is a failure with
// no status code, retried.
func TestTimeoutIsAFailedAttempt(t *testing.T) {
	t.Parallel()
	db := newDB(t)
	rc := newReceiver(t)
	hold := make(chan struct{})
	t.Cleanup(func() { close(hold) })
	rc.hold = hold
	addEndpoint(t, db.DB, rc, CampaignSending)
	emitN(t, db.DB, CampaignSending, 1)
	o := fastOptions()
	o.Timeout = 100 * time.Millisecond
	runDispatcher(t, db.DB, o, nil)
	waitFor(t, 10*time.Second, "a timed-out attempt", func() bool {
		return count(t, db.DB, `SELECT count(*) FROM webhook_deliveries WHERE status_code IS NULL AND error LIKE 'timed out after 100ms' AND next_retry_at IS NOT NULL`) >= 1
	})
}

// TestPrune drops the attempts older than Retention.
func TestPrune(t *testing.T) {
	t.Parallel()
	db := newDB(t)
	rc := newReceiver(t)
	ep := addEndpoint(t, db.DB, rc, MessageSent)
	mustExec(t, db, `INSERT INTO webhook_deliveries (endpoint_id, event_id, event_type, attempt, duration_ms, delivered, created_at)
		SELECT $1, 'evt_' || g, 'message.sent', 1, 5, true, now() - g * interval '1 day' FROM generate_series(1, 10) g`, ep.ID)
	d := NewDispatcher(db.DB, DispatcherOptions{Retention: 7*24*time.Hour - time.Hour}, discardLog())
	if err := d.prune(t.Context()); err != nil {
		t.Fatal(err)
	}
	if n := count(t, db.DB, `SELECT count(*) FROM webhook_deliveries`); n != 6 {
		t.Errorf("%d attempts left, want the 6 younger than 7 days", n)
	}
}

func mustExec(t testing.TB, db *pgtest.DB, q string, args ...any) {
	t.Helper()
	if _, err := db.ExecContext(t.Context(), q, args...); err != nil {
		t.Fatalf("%s: %v", q, err)
	}
}

// TestEndpointDeletedInFlight: deleting an endpoint while its deliveries
// are in flight and queued drops them without disturbing the recording of
// another endpoint's.
func TestEndpointDeletedInFlight(t *testing.T) {
	t.Parallel()
	db := newDB(t)
	gone, kept := newReceiver(t), newReceiver(t)
	hold := make(chan struct{})
	gone.hold = hold
	ep := addEndpoint(t, db.DB, gone, MessageSent)
	addEndpoint(t, db.DB, kept, MessageSent)
	emitN(t, db.DB, MessageSent, 100)
	var logged syncBuffer
	runDispatcher(t, db.DB, fastOptions(), slog.New(slog.NewTextHandler(&logged, nil)))
	waitFor(t, 10*time.Second, "deliveries in flight to the endpoint", func() bool { return gone.requestsInFlight() == DefaultPerEndpoint })
	if err := NewStore(db.DB).Delete(t.Context(), ep.ID); err != nil {
		t.Fatal(err)
	}
	close(hold)
	waitFor(t, 10*time.Second, "the other endpoint's 100 events", func() bool {
		return len(kept.okByID()) == 100 && count(t, db.DB, `SELECT count(*) FROM webhook_deliveries`) == 100
	})
	if n := count(t, db.DB, `SELECT count(*) FROM webhook_tasks`); n != 0 {
		t.Errorf("%d tasks left", n)
	}
	// Queued tasks of the deleted endpoint were dropped, not sent: at most
	// those in flight, and a step's worth of queue, reached it.
	if n := len(gone.snapshot()); n > 2*prefetch*DefaultPerEndpoint {
		t.Errorf("the deleted endpoint got %d requests", n)
	}
	if strings.Contains(logged.String(), "level=ERROR") {
		t.Errorf("errors logged:\n%s", logged.String())
	}
}

// TestRunLeavesNoGoroutines: once Run has returned, nothing it started is
// left running. Not parallel: goleak sees the whole process.
func TestRunLeavesNoGoroutines(t *testing.T) {
	db := newDB(t)
	rc := newReceiver(t)
	addEndpoint(t, db.DB, rc, MessageSent)
	emitN(t, db.DB, MessageSent, 50)
	defer goleak.VerifyNone(t, goleak.IgnoreCurrent())
	stop := runDispatcher(t, db.DB, fastOptions(), nil)
	waitFor(t, 10*time.Second, "50 deliveries", func() bool { return len(rc.okByID()) == 50 })
	stop()
	rc.srv.Close()
}
