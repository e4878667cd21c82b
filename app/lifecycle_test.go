package app

import (
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"slices"
	"strconv"
	"testing"
	"time"

	"github.com/jmoiron/sqlx"
	"github.com/redis/go-redis/v9"

	"github.com/campaignd/dispatch/messaging/queue"
	"github.com/campaignd/dispatch/platform/redisx"
)

// actionResult is the 200 body of pause, resume, cancel and retry-failed;
// the counts are nil when the key is absent.
type actionResult struct {
	CampaignID        int64  `json:"campaign_id"`
	Status            string `json:"status"`
	MessagesCancelled *int64 `json:"messages_cancelled"`
	MessagesRequeued  *int64 `json:"messages_requeued"`
}

// campaignAction posts a lifecycle action and expects 200.
func campaignAction(t testing.TB, ta *testApp, id int64, action string) actionResult {
	t.Helper()
	var res actionResult
	if code := ta.do(t, "POST", fmt.Sprintf("/campaigns/%d/%s", id, action), nil, &res); code != http.StatusOK {
		t.Fatalf("%s campaign %d = %d", action, id, code)
	}
	if res.CampaignID != id {
		t.Errorf("%s campaign %d: campaign_id %d", action, id, res.CampaignID)
	}
	return res
}

// refusedAction posts a lifecycle action that the campaign's status does not
// allow and checks the 409, and that nothing changed.
func refusedAction(t testing.TB, ta *testApp, id int64, action, status string) {
	t.Helper()
	var e apiError
	code := ta.do(t, "POST", fmt.Sprintf("/campaigns/%d/%s", id, action), nil, &e)
	if code != http.StatusConflict || e.Error.Code != "INVALID_STATUS_TRANSITION" || e.Error.Message == "" ||
		e.Error.Details["status"] != status {
		t.Errorf("%s a %s campaign = %d %+v, want 409 INVALID_STATUS_TRANSITION with details.status %q", action, status, code, e, status)
	}
	if c := readCampaign(t, ta, id); c.Status != status {
		t.Errorf("refused %s changed campaign %d from %s to %s", action, id, status, c.Status)
	}
}

// sendTo sends campaign id to customers and expects 202.
func sendTo(t testing.TB, ta *testApp, id int64, customers []int64) {
	t.Helper()
	var res struct {
		Queued int64 `json:"messages_queued"`
	}
	if code := ta.do(t, "POST", fmt.Sprintf("/campaigns/%d/send", id), map[string]any{"customer_ids": customers}, &res); code != http.StatusAccepted ||
		res.Queued != int64(len(customers)) {
		t.Fatalf("send campaign %d = %d %+v, want 202 with %d queued", id, code, res, len(customers))
	}
}

// holdsFor checks cond repeatedly for d and fails the first time it is false.
// It is for asserting that something does not happen, the one case where a
// bounded wait cannot be replaced by waiting for an event.
func holdsFor(t testing.TB, what string, d time.Duration, cond func() bool) {
	t.Helper()
	for deadline := time.Now().Add(d); time.Now().Before(deadline); time.Sleep(100 * time.Millisecond) {
		if !cond() {
			t.Fatalf("%s stopped holding", what)
		}
	}
}

// ledgerCalls summarises the mock provider's ledger for a campaign's
// messages: deliveries, and the fewest and most requests per message.
type ledgerCalls struct {
	Rows     int64 `db:"rows"`
	MinCalls int64 `db:"min_calls"`
	MaxCalls int64 `db:"max_calls"`
}

func readLedger(t testing.TB, db *sqlx.DB, campaignID int64) ledgerCalls {
	t.Helper()
	var l ledgerCalls
	if err := db.Get(&l, `
SELECT count(*) AS rows, coalesce(min(d.calls), 0) AS min_calls, coalesce(max(d.calls), 0) AS max_calls
FROM mock_deliveries d JOIN outbound_messages m ON m.id = d.message_id
WHERE m.campaign_id = $1`, campaignID); err != nil {
		t.Fatal(err)
	}
	return l
}

// slowConfig makes a few hundred messages take a couple of seconds, so a
// test can act on a campaign while it is being delivered.
func slowConfig(t testing.TB) Config {
	t.Helper()
	cfg := testConfig(t)
	cfg.WorkerConcurrency = 4
	cfg.Sender.MinLatency, cfg.Sender.MaxLatency = 20*time.Millisecond, 40*time.Millisecond
	cfg.Sender.Ledger = "postgres"
	return cfg
}

// TestLifecyclePauseResume pauses a campaign mid-run: deliveries stop and
// stay stopped; resumed, it finishes with every message delivered exactly
// once.
func TestLifecyclePauseResume(t *testing.T) {
	t.Parallel()
	cfg := slowConfig(t)
	ta := startApp(t, cfg)
	db := openAppDB(t, cfg, false)
	ids := importCustomers(t, ta, db, slices.Repeat([]string{"Nairobi"}, 300)...)

	id, _ := mustCreateCampaign(t, ta, nil)
	sendTo(t, ta, id, ids)
	waitFor(t, "first deliveries", 10*time.Second, func() bool { return readCampaign(t, ta, id).Stats.Sent >= 30 })

	if res := campaignAction(t, ta, id, "pause"); res.Status != "paused" || res.MessagesCancelled != nil || res.MessagesRequeued != nil {
		t.Fatalf("pause = %+v", res)
	}
	// Deliveries under way when the pause came finish; then nothing moves.
	var paused campaignState
	waitFor(t, "in-flight deliveries to finish", 10*time.Second, func() bool {
		paused = readCampaign(t, ta, id)
		return paused.Stats.Sending == 0
	})
	if paused.Status != "paused" || paused.Stats.Sent >= 300 || paused.Stats.Pending != 300-paused.Stats.Sent {
		t.Fatalf("after pause: %s %+v, want paused with messages still pending", paused.Status, paused.Stats)
	}
	holdsFor(t, "paused campaign standing still", time.Second, func() bool {
		c := readCampaign(t, ta, id)
		return c.Status == "paused" && c.Stats == paused.Stats && readLedger(t, db, id).Rows == paused.Stats.Sent
	})
	t.Logf("paused with %d of 300 sent", paused.Stats.Sent)

	if res := campaignAction(t, ta, id, "resume"); res.Status != "sending" {
		t.Fatalf("resume = %+v", res)
	}
	c := waitStatus(t, ta, id, "sent", 30*time.Second)
	if c.Stats.Sent != 300 || c.Stats.Total != 300 {
		t.Errorf("after resume: stats %+v, want 300 sent", c.Stats)
	}
	// Resuming re-queues what is left; none of what was sent is asked of
	// the provider again.
	if l := readLedger(t, db, id); l.Rows != 300 || l.MinCalls != 1 || l.MaxCalls != 1 {
		t.Errorf("ledger %+v, want 300 deliveries each requested once", l)
	}
	requireStatsMatchMessages(t, db, id)
}

// TestLifecycleCancelMidRun cancels a campaign being delivered: its pending
// messages are cancelled and never sent, and the finisher leaves it
// cancelled.
func TestLifecycleCancelMidRun(t *testing.T) {
	t.Parallel()
	cfg := slowConfig(t)
	ta := startApp(t, cfg)
	db := openAppDB(t, cfg, false)
	ids := importCustomers(t, ta, db, slices.Repeat([]string{"Nairobi"}, 301)...)

	id, _ := mustCreateCampaign(t, ta, nil)
	sendTo(t, ta, id, ids[:300])
	waitFor(t, "first deliveries", 10*time.Second, func() bool { return readCampaign(t, ta, id).Stats.Sent >= 30 })

	res := campaignAction(t, ta, id, "cancel")
	if res.Status != "cancelled" || res.MessagesCancelled == nil || *res.MessagesCancelled == 0 || res.MessagesRequeued != nil {
		t.Fatalf("cancel = %+v, want cancelled with a count", res)
	}
	var c campaignState
	waitFor(t, "in-flight deliveries to finish", 10*time.Second, func() bool {
		c = readCampaign(t, ta, id)
		return c.final()
	})
	t.Logf("cancelled %d of 300; %d sent", *res.MessagesCancelled, c.Stats.Sent)
	// Messages claimed but not yet handed to the provider may end
	// cancelled too, so the response's count is a lower bound.
	if c.Status != "cancelled" || c.Stats.Cancelled < *res.MessagesCancelled || c.Stats.Sent+c.Stats.Cancelled != 300 || c.Stats.Failed != 0 {
		t.Errorf("after cancel: %s %+v, want cancelled with at least %d cancelled and the rest sent", c.Status, c.Stats, *res.MessagesCancelled)
	}
	// The provider got exactly the messages recorded sent, none cancelled.
	if l := readLedger(t, db, id); l.Rows != c.Stats.Sent || l.MaxCalls > 1 {
		t.Errorf("ledger %+v, want %d deliveries each requested once", l, c.Stats.Sent)
	}
	if n := queryInt(t, db, `
SELECT count(*) FROM mock_deliveries d JOIN outbound_messages m ON m.id = d.message_id
WHERE m.campaign_id = $1 AND m.status = 'cancelled'`, id); n != 0 {
		t.Errorf("%d cancelled messages were delivered", n)
	}

	// A campaign sent after the cancelled one's messages were all final is
	// finished by a later pass of the finisher, which must have left the
	// cancelled one alone.
	later, _ := mustCreateCampaign(t, ta, nil)
	sendTo(t, ta, later, ids[300:])
	waitStatus(t, ta, later, "sent", 10*time.Second)
	if got := readCampaign(t, ta, id); got.Status != "cancelled" || got.Stats != c.Stats {
		t.Errorf("cancelled campaign became %s %+v", got.Status, got.Stats)
	}
	for _, action := range []string{"cancel", "pause", "resume", "retry-failed"} {
		refusedAction(t, ta, id, action, "cancelled")
	}
	requireStatsMatchMessages(t, db, id)
}

// TestLifecycleCancelBeforeSending cancels a draft and a scheduled campaign:
// neither can be sent afterwards, and the scheduled one is never dispatched.
func TestLifecycleCancelBeforeSending(t *testing.T) {
	t.Parallel()
	cfg := testConfig(t)
	cfg.Schedule.Interval = 100 * time.Millisecond
	ta := startApp(t, cfg)
	db := openAppDB(t, cfg, false)
	ids := importCustomers(t, ta, db, "Nairobi", "Nairobi")

	draft, _ := mustCreateCampaign(t, ta, nil)
	// Far enough ahead that the cancel below comes first even on a loaded
	// CI machine (at 1 s, the scheduler once dispatched it before the cancel).
	at := time.Now().Add(4 * time.Second)
	scheduled, _ := mustCreateCampaign(t, ta, map[string]any{"scheduled_at": scheduleAt(at), "audience": map[string]any{"all": true}})
	// Due after the cancelled one: once it is dispatched, the scheduler has
	// passed the cancelled one's time.
	sentinel, _ := mustCreateCampaign(t, ta, map[string]any{"scheduled_at": scheduleAt(at.Add(500 * time.Millisecond)), "customer_ids": ids})

	for _, id := range []int64{draft, scheduled} {
		res := campaignAction(t, ta, id, "cancel")
		if res.Status != "cancelled" || res.MessagesCancelled == nil || *res.MessagesCancelled != 0 {
			t.Errorf("cancel campaign %d = %+v, want cancelled with 0 messages cancelled", id, res)
		}
		var e apiError
		if code := ta.do(t, "POST", fmt.Sprintf("/campaigns/%d/send", id), map[string]any{"customer_ids": ids}, &e); code != http.StatusConflict ||
			e.Error.Code != "CAMPAIGN_NOT_SENDABLE" {
			t.Errorf("send cancelled campaign %d = %d %+v, want 409 CAMPAIGN_NOT_SENDABLE", id, code, e)
		}
	}

	waitStatus(t, ta, sentinel, "sent", 10*time.Second+time.Until(at))
	for _, id := range []int64{draft, scheduled} {
		if c := readCampaign(t, ta, id); c.Status != "cancelled" || c.Stats.Total != 0 {
			t.Errorf("cancelled campaign %d = %s %+v, want cancelled with no messages", id, c.Status, c.Stats)
		}
		if n := queryInt(t, db, `SELECT count(*) FROM dispatch_batches WHERE campaign_id = $1`, id); n != 0 {
			t.Errorf("cancelled campaign %d was dispatched %d times", id, n)
		}
	}
	requireStatsMatchMessages(t, db, sentinel)
}

// TestLifecycleInvalidTransitions asks each action of campaigns in statuses
// that do not allow it. Without workers a sent campaign stays sending, so
// every status but sent and failed (covered by TestLifecycleRetryFailed)
// holds still while it is probed.
func TestLifecycleInvalidTransitions(t *testing.T) {
	t.Parallel()
	cfg := testConfig(t)
	cfg.WorkerConcurrency = 0
	ta := startApp(t, cfg)
	db := openAppDB(t, cfg, false)
	ids := importCustomers(t, ta, db, "Nairobi")

	byStatus := map[string]int64{}
	byStatus["draft"], _ = mustCreateCampaign(t, ta, nil)
	byStatus["scheduled"], _ = mustCreateCampaign(t, ta, map[string]any{"scheduled_at": scheduleAt(time.Now().Add(time.Hour))})
	byStatus["sending"], _ = mustCreateCampaign(t, ta, nil)
	sendTo(t, ta, byStatus["sending"], ids)
	byStatus["paused"], _ = mustCreateCampaign(t, ta, nil)
	sendTo(t, ta, byStatus["paused"], ids)
	if res := campaignAction(t, ta, byStatus["paused"], "pause"); res.Status != "paused" {
		t.Fatalf("pause = %+v", res)
	}
	byStatus["cancelled"], _ = mustCreateCampaign(t, ta, nil)
	campaignAction(t, ta, byStatus["cancelled"], "cancel")

	for _, tc := range []struct{ action, status string }{
		{"pause", "draft"},
		{"pause", "scheduled"},
		{"pause", "paused"},
		{"pause", "cancelled"},
		{"resume", "draft"},
		{"resume", "scheduled"},
		{"resume", "sending"},
		{"resume", "cancelled"},
		{"cancel", "cancelled"},
		{"retry-failed", "draft"},
		{"retry-failed", "scheduled"},
		{"retry-failed", "paused"},
		{"retry-failed", "cancelled"},
	} {
		t.Run(tc.action+" "+tc.status, func(t *testing.T) {
			refusedAction(t, ta, byStatus[tc.status], tc.action, tc.status)
		})
	}

	// Cancelling a sending or a paused campaign cancels its pending message.
	for _, status := range []string{"sending", "paused"} {
		id := byStatus[status]
		if res := campaignAction(t, ta, id, "cancel"); res.Status != "cancelled" || res.MessagesCancelled == nil || *res.MessagesCancelled != 1 {
			t.Errorf("cancel a %s campaign = %+v, want cancelled with 1 message cancelled", status, res)
		}
		if c := readCampaign(t, ta, id); c.Status != "cancelled" || c.Stats.Cancelled != 1 || c.Stats.Total != 1 {
			t.Errorf("cancelled %s campaign = %s %+v, want cancelled with its message cancelled", status, c.Status, c.Stats)
		}
	}

	// retry-failed on a sending campaign with nothing failed changes nothing.
	sending, _ := mustCreateCampaign(t, ta, nil)
	sendTo(t, ta, sending, ids)
	if res := campaignAction(t, ta, sending, "retry-failed"); res.Status != "sending" ||
		res.MessagesRequeued == nil || *res.MessagesRequeued != 0 {
		t.Errorf("retry-failed with nothing failed = %+v, want sending with 0 requeued", res)
	}
	for _, tc := range []struct {
		path, code string
		status     int
	}{
		{"/campaigns/999999/pause", "CAMPAIGN_NOT_FOUND", http.StatusNotFound},
		{"/campaigns/999999/cancel", "CAMPAIGN_NOT_FOUND", http.StatusNotFound},
		{"/campaigns/abc/resume", "VALIDATION_ERROR", http.StatusBadRequest},
		{"/campaigns/0/retry-failed", "VALIDATION_ERROR", http.StatusBadRequest},
	} {
		var e apiError
		if code := ta.do(t, "POST", tc.path, nil, &e); code != tc.status || e.Error.Code != tc.code {
			t.Errorf("POST %s = %d %+v, want %d %s", tc.path, code, e, tc.status, tc.code)
		}
	}
}

// TestLifecycleRetryFailed fails every message of a campaign for good, then,
// on a replica whose provider works, gives them fresh attempts: they leave
// the dead-letter list, start over at retry_count 0, and are delivered.
func TestLifecycleRetryFailed(t *testing.T) {
	t.Parallel()
	cfg := testConfig(t)
	cfg.Sender.SuccessRate = 0
	cfg.MaxRetryCount = 1
	cfg.Sender.Ledger = "postgres"
	failing := startApp(t, cfg)
	db := openAppDB(t, cfg, false)
	rdb := openTestRedis(t, cfg)
	deadKey := queue.New(rdb, cfg.Redis.KeyPrefix, cfg.Queue.Name).Keys().Dead
	ids := importCustomers(t, failing, db, slices.Repeat([]string{"Nairobi"}, 20)...)

	id, _ := mustCreateCampaign(t, failing, nil)
	sendTo(t, failing, id, ids)
	c := waitStatus(t, failing, id, "failed", 20*time.Second)
	if c.Stats.Failed != 20 {
		t.Fatalf("stats %+v, want 20 failed", c.Stats)
	}
	var msgIDs []int64
	if err := db.Select(&msgIDs, `SELECT id FROM outbound_messages WHERE campaign_id = $1 AND retry_count = 1 ORDER BY id`, id); err != nil {
		t.Fatal(err)
	}
	if len(msgIDs) != 20 {
		t.Fatalf("%d messages with retry_count 1, want 20", len(msgIDs))
	}
	if dead := deadLetters(t, rdb, deadKey); !slices.Equal(dead, msgIDs) {
		t.Fatalf("dead letters %v, want %v", dead, msgIDs)
	}

	// The provider recovers: a replica with a working one takes over.
	cfg.Sender.SuccessRate = 1
	healthy := startApp(t, cfg)
	failing.stop(t)

	res := campaignAction(t, healthy, id, "retry-failed")
	if res.Status != "sending" || res.MessagesRequeued == nil || *res.MessagesRequeued != 20 || res.MessagesCancelled != nil {
		t.Fatalf("retry-failed = %+v, want sending with 20 requeued", res)
	}
	if dead := deadLetters(t, rdb, deadKey); len(dead) != 0 {
		t.Errorf("dead letters after retry-failed: %v, want none", dead)
	}
	c = waitStatus(t, healthy, id, "sent", 20*time.Second)
	if c.Stats.Sent != 20 || c.Stats.Failed != 0 {
		t.Errorf("after retry: stats %+v, want 20 sent", c.Stats)
	}
	if n := queryInt(t, db, `SELECT count(*) FROM outbound_messages WHERE campaign_id = $1 AND retry_count = 0`, id); n != 20 {
		t.Errorf("%d messages with retry_count 0 after a first-try success, want 20", n)
	}
	if l := readLedger(t, db, id); l.Rows != 20 || l.MinCalls != 1 || l.MaxCalls != 1 {
		t.Errorf("ledger %+v, want 20 deliveries each requested once", l)
	}

	// Nothing failed is left: retrying again changes nothing, and a sent
	// campaign cannot be paused, resumed or cancelled.
	if res := campaignAction(t, healthy, id, "retry-failed"); res.Status != "sent" || res.MessagesRequeued == nil || *res.MessagesRequeued != 0 {
		t.Errorf("second retry-failed = %+v, want sent with 0 requeued", res)
	}
	for _, action := range []string{"pause", "resume", "cancel"} {
		refusedAction(t, healthy, id, action, "sent")
	}
	requireStatsMatchMessages(t, db, id)
}

// openTestRedis connects to the app's Redis for assertions on its keys.
func openTestRedis(t testing.TB, cfg Config) *redis.Client {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	rdb, err := redisx.Open(ctx, cfg.Redis.URL)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { rdb.Close() })
	return rdb
}

// deadLetters returns the ids in the dead-letter list, sorted.
func deadLetters(t testing.TB, rdb *redis.Client, key string) []int64 {
	t.Helper()
	vals, err := rdb.LRange(context.Background(), key, 0, -1).Result()
	if err != nil {
		t.Fatal(err)
	}
	ids := make([]int64, len(vals))
	for i, v := range vals {
		if ids[i], err = strconv.ParseInt(v, 10, 64); err != nil {
			t.Fatalf("dead letter %q: %v", v, err)
		}
	}
	slices.Sort(ids)
	return ids
}

// TestLifecycleClaimedJobsStopAtPauseAndCancel checks the promise that
// workers look at the campaign before each delivery, not only when they
// claim a batch. With two delivery goroutines and a slow provider, the pool
// claims four messages at once: two are being sent, two wait for a free
// goroutine. Once the campaign is paused or cancelled, at most the two in
// the provider's hands may still be delivered: the waiting ones must stay
// pending (pause) or end cancelled (cancel).
func TestLifecycleClaimedJobsStopAtPauseAndCancel(t *testing.T) {
	t.Parallel()
	for _, action := range []string{"pause", "cancel"} {
		t.Run(action, func(t *testing.T) {
			t.Parallel()
			cfg := testConfig(t)
			cfg.WorkerConcurrency = 2
			cfg.Sender.MinLatency, cfg.Sender.MaxLatency = 400*time.Millisecond, 400*time.Millisecond
			cfg.Sender.Ledger = "postgres"
			ta := startApp(t, cfg)
			db := openAppDB(t, cfg, false)
			ids := importCustomers(t, ta, db, slices.Repeat([]string{"Nairobi"}, 20)...)

			id, _ := mustCreateCampaign(t, ta, nil)
			sendTo(t, ta, id, ids)
			// Wait for the pool to hold more claimed messages than it has
			// goroutines (prefetch), or, should it not prefetch, for the
			// first delivery, by which time it claimed all it will.
			waitFor(t, "messages claimed", 10*time.Second, func() bool {
				s := readCampaign(t, ta, id).Stats
				return s.Sending > int64(cfg.WorkerConcurrency) || s.Sent > 0
			})
			campaignAction(t, ta, id, action)
			var c campaignState
			waitFor(t, "in-flight deliveries to finish", 10*time.Second, func() bool {
				c = readCampaign(t, ta, id)
				return c.Stats.Sending == 0
			})
			// The action's transaction stamped updated_at; a delivery the
			// provider recorded after it was under way at that moment, or
			// began after it.
			after := queryInt(t, db, `
SELECT count(*) FROM mock_deliveries d
JOIN outbound_messages m ON m.id = d.message_id
JOIN campaigns k ON k.id = m.campaign_id
WHERE k.id = $1 AND d.delivered_at >= k.updated_at`, id)
			if after > int64(cfg.WorkerConcurrency) {
				var lag []string
				if err := db.Select(&lag, `
SELECT (d.delivered_at - k.updated_at)::text FROM mock_deliveries d
JOIN outbound_messages m ON m.id = d.message_id
JOIN campaigns k ON k.id = m.campaign_id
WHERE k.id = $1 AND d.delivered_at >= k.updated_at ORDER BY 1`, id); err != nil {
					t.Fatal(err)
				}
				t.Logf("deliveries after %s, by delay: %v; stats %+v", action, lag, c.Stats)
				t.Errorf("%d messages were delivered after %s, more than the %d that can have been in the provider's hands: "+
					"claimed messages waiting for a goroutine were sent without checking the campaign",
					after, action, cfg.WorkerConcurrency)
			}
		})
	}
}

// TestLifecycleCancelWhileMaterialising cancels audience sends while the
// materialiser is inserting a chunk of their messages: each cancel must
// succeed (not fail on a lock conflict with the materialiser), and every
// message not yet delivered must end cancelled. The moment is a race, so a
// few campaigns are tried.
func TestLifecycleCancelWhileMaterialising(t *testing.T) {
	t.Parallel()
	cfg := testConfig(t)
	ta := startApp(t, cfg)
	db := openAppDB(t, cfg, false)
	// Enough customers that one chunk's insert takes a while.
	const customers = 50000
	if _, err := db.Exec(`
INSERT INTO customers (phone, first_name, location)
SELECT '+25471' || lpad(g::text, 7, '0'), 'C' || g, 'Nairobi' FROM generate_series(1, $1) g`, customers); err != nil {
		t.Fatal(err)
	}

	for range 3 {
		id, _ := mustCreateCampaign(t, ta, nil)
		var sent struct {
			Queued int64 `json:"messages_queued"`
		}
		if code := ta.do(t, "POST", fmt.Sprintf("/campaigns/%d/send", id), map[string]any{"audience": map[string]any{"all": true}}, &sent); code != http.StatusAccepted ||
			sent.Queued != customers {
			t.Fatalf("send to all = %d %+v", code, sent)
		}
		// The insert is not visible until it commits, so watch for it among
		// the database's running statements; polling without a pause keeps
		// the window from being missed.
		deadline := time.Now().Add(10 * time.Second)
		for queryInt(t, db, `
SELECT count(*) FROM pg_stat_activity
WHERE datname = current_database() AND state = 'active' AND query LIKE '%INSERT INTO outbound_messages%'`) == 0 {
			if time.Now().After(deadline) {
				t.Fatal("the materialiser's insert was never seen running")
			}
		}
		var raw json.RawMessage
		code := ta.do(t, "POST", fmt.Sprintf("/campaigns/%d/cancel", id), nil, &raw)
		var res actionResult
		if err := json.Unmarshal(raw, &res); err != nil || code != http.StatusOK || res.Status != "cancelled" {
			t.Fatalf("cancel campaign %d during materialisation = %d %s, want 200 cancelled", id, code, raw)
		}
		var c campaignState
		waitFor(t, "messages final", 20*time.Second, func() bool {
			c = readCampaign(t, ta, id)
			return c.final()
		})
		if c.Status != "cancelled" || c.Stats.Sent+c.Stats.Cancelled != c.Stats.Total || c.Stats.Sent >= customers {
			t.Errorf("after cancel: %s %+v, want cancelled with the undelivered rest cancelled", c.Status, c.Stats)
		}
		if n := queryInt(t, db, `SELECT count(*) FROM dispatch_batches WHERE campaign_id = $1 AND filter IS NOT NULL`, id); n != 0 {
			t.Errorf("campaign %d: audience still materialising after cancel", id)
		}
		requireStatsMatchMessages(t, db, id)
	}
}
