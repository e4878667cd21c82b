package app

import (
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/jmoiron/sqlx"

	"github.com/campaignd/dispatch/db/migrations"
	"github.com/campaignd/dispatch/platform/postgres"
)

// dispatchWithin is how soon after scheduled_at a due campaign must be
// dispatched ("within a few seconds"); the scheduler runs every 100 ms here.
const dispatchWithin = 3 * time.Second

// campaignState is GET /campaigns/{id} with the fields these tests read.
type campaignState struct {
	ID           int64         `json:"id"`
	Status       string        `json:"status"`
	StatusReason *string       `json:"status_reason"`
	Stats        campaignStats `json:"stats"`
}

// campaignStats is a campaign's stats with every status of the contract.
type campaignStats struct {
	Total       int64 `json:"total"`
	Pending     int64 `json:"pending"`
	Sending     int64 `json:"sending"`
	Sent        int64 `json:"sent"`
	Delivered   int64 `json:"delivered"`
	Undelivered int64 `json:"undelivered"`
	Failed      int64 `json:"failed"`
	Cancelled   int64 `json:"cancelled"`
}

// final: no message waits for an attempt or is being attempted.
func (c campaignState) final() bool {
	return c.Stats.Pending == 0 && c.Stats.Sending == 0
}

// settled: final, and every accepted message has its receipt.
func (c campaignState) settled() bool { return c.final() && c.Stats.Sent == 0 }

// readCampaign gets campaign id and checks the stats invariant on the way:
// every key present and summing to total.
func readCampaign(t testing.TB, ta *testApp, id int64) campaignState {
	t.Helper()
	var raw json.RawMessage
	if code := ta.do(t, "GET", fmt.Sprintf("/campaigns/%d", id), nil, &raw); code != http.StatusOK {
		t.Fatalf("GET /campaigns/%d = %d %s", id, code, raw)
	}
	var c campaignState
	var keys struct {
		Stats map[string]json.RawMessage `json:"stats"`
	}
	if err := json.Unmarshal(raw, &c); err != nil {
		t.Fatal(err)
	}
	if err := json.Unmarshal(raw, &keys); err != nil {
		t.Fatal(err)
	}
	for _, k := range []string{"total", "pending", "sending", "sent", "delivered", "undelivered", "failed", "cancelled"} {
		if _, ok := keys.Stats[k]; !ok {
			t.Errorf("campaign %d stats %s lack %q", id, raw, k)
		}
	}
	s := c.Stats
	if s.Pending+s.Sending+s.Sent+s.Delivered+s.Undelivered+s.Failed+s.Cancelled != s.Total {
		t.Errorf("campaign %d stats %+v do not sum to total", id, s)
	}
	return c
}

// waitStatus polls campaign id until its status is want and returns it.
func waitStatus(t testing.TB, ta *testApp, id int64, want string, timeout time.Duration) campaignState {
	t.Helper()
	var c campaignState
	waitFor(t, fmt.Sprintf("campaign %d %s", id, want), timeout, func() bool {
		c = readCampaign(t, ta, id)
		return c.Status == want
	})
	return c
}

// mustCreateCampaign posts body (name, channel and template filled in when
// absent) and returns the new campaign's id and status.
func mustCreateCampaign(t testing.TB, ta *testApp, body map[string]any) (int64, string) {
	t.Helper()
	full := map[string]any{"name": "campaign", "channel": "sms", "base_template": "Hi {first_name} from {location}"}
	for k, v := range body {
		full[k] = v
	}
	var c struct {
		ID     int64  `json:"id"`
		Status string `json:"status"`
	}
	if code := ta.do(t, "POST", "/campaigns", full, &c); code != http.StatusCreated {
		t.Fatalf("POST /campaigns %v = %d", body, code)
	}
	return c.ID, c.Status
}

// openAppDB opens the app's database for assertions and direct inserts,
// creating it (and, when migrate is set, its schema) if the app has not yet.
func openAppDB(t testing.TB, cfg Config, migrate bool) *sqlx.DB {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	db, err := postgres.Open(ctx, cfg.Database.URL, postgres.Options{MaxOpenConns: 4, CreateDatabase: true})
	if err != nil {
		t.Fatal(err)
	}
	// Registered after pgtest's drop, so it runs first.
	t.Cleanup(func() { db.Close() })
	if migrate {
		if _, err := migrations.Up(ctx, db.DB); err != nil {
			t.Fatalf("migrate: %v", err)
		}
	}
	return db
}

// queryInt runs a query returning one integer.
func queryInt(t testing.TB, db *sqlx.DB, query string, args ...any) int64 {
	t.Helper()
	var n int64
	if err := db.Get(&n, query, args...); err != nil {
		t.Fatalf("%s: %v", strings.Join(strings.Fields(query), " "), err)
	}
	return n
}

// importCustomers imports one customer per location through the CSV import
// and returns their ids in the same order.
func importCustomers(t testing.TB, ta *testApp, db *sqlx.DB, locations ...string) []int64 {
	t.Helper()
	// Phones and first names continue after the customers already there,
	// so several imports into one database never collide.
	offset := queryInt(t, db, `SELECT count(*) FROM customers`)
	var csv strings.Builder
	csv.WriteString("phone,first_name,last_name,location,preferred_product\n")
	phones := make([]string, len(locations))
	for i, loc := range locations {
		n := offset + int64(i)
		phones[i] = fmt.Sprintf("+25471%07d", n)
		fmt.Fprintf(&csv, "%s,C%d,Last,%s,Shoes\n", phones[i], n, loc)
	}
	ta.importCSV(t, csv.String())
	return customerIDs(t, db, phones)
}

// scheduleAt is a scheduled_at value for the API.
func scheduleAt(at time.Time) string { return at.UTC().Format(time.RFC3339Nano) }

// TestScheduleDispatchesAtScheduledAt creates scheduled campaigns with every
// kind of audience and checks that each is dispatched, once, within a few
// seconds of (and not before) scheduled_at and delivered to exactly its
// audience; that one without an audience is left alone; and that one whose
// audience cannot be sent fails with a reason.
func TestScheduleDispatchesAtScheduledAt(t *testing.T) {
	t.Parallel()
	cfg := testConfig(t)
	cfg.Schedule.Interval = 100 * time.Millisecond
	ta := startApp(t, cfg)
	db := openAppDB(t, cfg, false)

	ids := importCustomers(t, ta, db, append(slices.Repeat([]string{"Nairobi"}, 8), slices.Repeat([]string{"Mombasa"}, 4)...)...)

	at := time.Now().Add(2 * time.Second)
	type want struct {
		status   string // final status
		messages int64
	}
	cases := []struct {
		name string
		body map[string]any
		want want
	}{
		{"top-level customer_ids", map[string]any{"customer_ids": ids[:5]}, want{"sent", 5}},
		{"audience customer_ids", map[string]any{"channel": "whatsapp", "audience": map[string]any{"customer_ids": ids[5:8]}}, want{"sent", 3}},
		{"audience all", map[string]any{"audience": map[string]any{"all": true}}, want{"sent", 12}},
		{"audience filter", map[string]any{"audience": map[string]any{"location": "mombasa"}}, want{"sent", 4}},
		{"audience matching nobody", map[string]any{"audience": map[string]any{"location": "Atlantis"}}, want{"failed", 0}},
		{"unknown customer ids", map[string]any{"customer_ids": []int64{ids[0]}}, want{"failed", 0}},
	}
	created := make([]int64, len(cases))
	for i, tc := range cases {
		tc.body["name"] = tc.name
		tc.body["scheduled_at"] = scheduleAt(at)
		id, status := mustCreateCampaign(t, ta, tc.body)
		if status != "scheduled" {
			t.Fatalf("%s: created as %s, want scheduled", tc.name, status)
		}
		created[i] = id
		if tc.name == "unknown customer ids" {
			// Create and edit refuse unknown ids (TestStoredAudienceUnknownCustomers);
			// a customer can still be gone by the time the campaign is due.
			if _, err := db.Exec(`UPDATE campaigns SET audience = jsonb_set(audience, '{customer_ids}', audience->'customer_ids' || to_jsonb($2::bigint))
WHERE id = $1`, id, ids[len(ids)-1]+1000); err != nil {
				t.Fatal(err)
			}
		}
	}
	noAudience, _ := mustCreateCampaign(t, ta, map[string]any{"name": "no audience", "scheduled_at": scheduleAt(at)})

	for i, tc := range cases {
		id := created[i]
		c := waitStatus(t, ta, id, tc.want.status, 10*time.Second+time.Until(at))
		if tc.want.status == "sent" {
			if c.Stats.Total != tc.want.messages || c.Stats.Sent != tc.want.messages {
				t.Errorf("%s: stats %+v, want %d sent", tc.name, c.Stats, tc.want.messages)
			}
			// The batch row is written by the dispatching transaction, so
			// its created_at is the dispatch time.
			var batches []time.Time
			if err := db.Select(&batches, `SELECT created_at FROM dispatch_batches WHERE campaign_id = $1`, id); err != nil {
				t.Fatal(err)
			}
			if len(batches) != 1 {
				t.Fatalf("%s: %d dispatch batches, want 1", tc.name, len(batches))
			}
			t.Logf("%s: dispatched %v after scheduled_at", tc.name, batches[0].Sub(at))
			if d := batches[0].Sub(at); d < 0 || d > dispatchWithin {
				t.Errorf("%s: dispatched %v after scheduled_at, want within [0, %v]", tc.name, d, dispatchWithin)
			}
			continue
		}
		if c.StatusReason == nil || *c.StatusReason == "" {
			t.Errorf("%s: failed without a status_reason", tc.name)
		}
		if c.Stats.Total != 0 {
			t.Errorf("%s: stats %+v, want no messages", tc.name, c.Stats)
		}
		var updated time.Time
		if err := db.Get(&updated, `SELECT updated_at FROM campaigns WHERE id = $1`, id); err != nil {
			t.Fatal(err)
		}
		if d := updated.Sub(at); d < 0 || d > dispatchWithin {
			t.Errorf("%s: failed %v after scheduled_at, want within [0, %v]", tc.name, d, dispatchWithin)
		}
	}

	// Every campaign due at the same instant has been handled, so the
	// scheduler has passed this one by: no audience, nothing to dispatch.
	if c := readCampaign(t, ta, noAudience); c.Status != "scheduled" || c.Stats.Total != 0 || c.StatusReason != nil {
		t.Errorf("campaign without audience = %s %+v reason %v, want still scheduled with no messages", c.Status, c.Stats, c.StatusReason)
	}
}

// TestScheduleTwoReplicasDispatchOnce runs two replicas, each with its
// scheduler and workers, on one database and Redis prefix, and checks that
// ten campaigns due at the same instant are each dispatched exactly once and
// every message delivered exactly once.
func TestScheduleTwoReplicasDispatchOnce(t *testing.T) {
	t.Parallel()
	cfg := testConfig(t)
	cfg.Schedule.Interval = 50 * time.Millisecond
	cfg.Sender.Ledger = "postgres"
	replicas := []*testApp{startApp(t, cfg)}
	cfg2 := cfg
	cfg2.API.Port = 0
	replicas = append(replicas, startApp(t, cfg2))
	db := openAppDB(t, cfg, false)

	locs := append(slices.Repeat([]string{"Nairobi"}, 25), slices.Repeat([]string{"Mombasa"}, 15)...)
	ids := importCustomers(t, replicas[0], db, locs...)

	at := time.Now().Add(2 * time.Second)
	want := map[int64]int64{} // campaign → messages
	for i := range 10 {
		body := map[string]any{"name": fmt.Sprintf("replicated %d", i), "scheduled_at": scheduleAt(at)}
		var n int64
		switch i % 3 {
		case 0:
			body["audience"] = map[string]any{"all": true}
			n = 40
		case 1:
			body["customer_ids"] = ids[i : i+3+i]
			n = int64(3 + i)
		case 2:
			body["audience"] = map[string]any{"location": "MOMBASA"}
			n = 15
		}
		id, status := mustCreateCampaign(t, replicas[i%2], body)
		if status != "scheduled" {
			t.Fatalf("campaign %d created as %s", i, status)
		}
		want[id] = n
	}

	for id := range want {
		waitStatus(t, replicas[int(id)%2], id, "sent", 20*time.Second+time.Until(at))
	}

	var total int64
	for id, n := range want {
		total += n
		if got := queryInt(t, db, `SELECT count(*) FROM outbound_messages WHERE campaign_id = $1 AND status = 'sent'`, id); got != n {
			t.Errorf("campaign %d: %d sent messages, want %d", id, got, n)
		}
		if got := queryInt(t, db, `SELECT count(*) FROM outbound_messages WHERE campaign_id = $1`, id); got != n {
			t.Errorf("campaign %d: %d messages, want %d", id, got, n)
		}
		if got := queryInt(t, db, `SELECT count(*) FROM dispatch_batches WHERE campaign_id = $1`, id); got != 1 {
			t.Errorf("campaign %d: dispatched %d times, want once", id, got)
		}
	}
	// The provider's ledger: one delivery per message, each asked for once.
	var ledger struct {
		Rows     int64 `db:"rows"`
		Orphans  int64 `db:"orphans"`
		MinCalls int64 `db:"min_calls"`
		MaxCalls int64 `db:"max_calls"`
	}
	if err := db.Get(&ledger, `
SELECT count(*) AS rows,
       count(*) FILTER (WHERE m.id IS NULL) AS orphans,
       coalesce(min(d.calls), 0) AS min_calls, coalesce(max(d.calls), 0) AS max_calls
FROM mock_deliveries d LEFT JOIN outbound_messages m ON m.id = d.message_id`); err != nil {
		t.Fatal(err)
	}
	if ledger.Rows != total || ledger.Orphans != 0 || ledger.MinCalls != 1 || ledger.MaxCalls != 1 {
		t.Errorf("ledger = %+v, want %d deliveries of known messages, each called once", ledger, total)
	}
}

// TestScheduleManualSendBeforeDue sends scheduled campaigns by hand: they go
// out at once (with the request's audience, or the stored one), and the
// scheduler does nothing when their time comes.
func TestScheduleManualSendBeforeDue(t *testing.T) {
	t.Parallel()
	cfg := testConfig(t)
	cfg.Schedule.Interval = 100 * time.Millisecond
	ta := startApp(t, cfg)
	db := openAppDB(t, cfg, false)
	ids := importCustomers(t, ta, db, slices.Repeat([]string{"Nairobi"}, 6)...)

	at := time.Now().Add(2 * time.Second)
	explicit, _ := mustCreateCampaign(t, ta, map[string]any{"scheduled_at": scheduleAt(at), "customer_ids": ids[:3]})
	stored, _ := mustCreateCampaign(t, ta, map[string]any{"scheduled_at": scheduleAt(at), "customer_ids": ids[:3]})
	// Due just after the others: once it is dispatched, the scheduler has
	// looked at everything due before it.
	sentinel, _ := mustCreateCampaign(t, ta, map[string]any{
		"scheduled_at": scheduleAt(at.Add(500 * time.Millisecond)), "customer_ids": ids[5:],
	})

	for _, tc := range []struct {
		id   int64
		body map[string]any
		want int64
	}{
		{explicit, map[string]any{"customer_ids": ids[3:5]}, 2},
		{stored, map[string]any{}, 3},
	} {
		var res struct {
			Queued int64  `json:"messages_queued"`
			Status string `json:"status"`
		}
		if code := ta.do(t, "POST", fmt.Sprintf("/campaigns/%d/send", tc.id), tc.body, &res); code != http.StatusAccepted ||
			res.Queued != tc.want || res.Status != "sending" {
			t.Fatalf("send scheduled campaign %d = %d %+v, want 202 sending with %d", tc.id, code, res, tc.want)
		}
	}

	waitStatus(t, ta, sentinel, "sent", 10*time.Second+time.Until(at))
	for _, tc := range []struct {
		id   int64
		want int64
	}{{explicit, 2}, {stored, 3}} {
		c := readCampaign(t, ta, tc.id)
		if c.Status != "sent" || c.Stats.Total != tc.want || c.Stats.Sent != tc.want {
			t.Errorf("campaign %d = %s %+v, want sent with %d", tc.id, c.Status, c.Stats, tc.want)
		}
		if n := queryInt(t, db, `SELECT count(*) FROM dispatch_batches WHERE campaign_id = $1`, tc.id); n != 1 {
			t.Errorf("campaign %d: %d dispatch batches, want only the manual send's", tc.id, n)
		}
	}
}

// TestScheduleMaxLateness stores campaigns that came due while the service
// was down, then starts it: one later than SCHEDULE_MAX_LATENESS fails with a
// reason and sends nothing, ones within it are sent, one without audience is
// left alone, and ones whose audience cannot be sent fail with a reason.
func TestScheduleMaxLateness(t *testing.T) {
	t.Parallel()
	cfg := testConfig(t)
	cfg.Schedule.Interval = 100 * time.Millisecond
	cfg.Schedule.MaxLateness = time.Hour
	db := openAppDB(t, cfg, true)

	var ids []int64
	if err := db.Select(&ids, `
INSERT INTO customers (phone, first_name, location)
SELECT '+25471' || lpad(g::text, 7, '0'), 'C' || g, 'Nairobi' FROM generate_series(1, 5) g
RETURNING id`); err != nil {
		t.Fatal(err)
	}
	slices.Sort(ids)

	ptr := func(s string) *string { return &s }
	cases := []struct {
		name     string
		late     string // how long before now it came due
		audience *string
		status   string
		messages int64
	}{
		{"two hours late", "2 hours", ptr(`{"all": true}`), "failed", 0},
		{"thirty minutes late", "30 minutes", ptr(`{"all": true}`), "sent", 5},
		{"thirty minutes late, by ids", "30 minutes", ptr(fmt.Sprintf(`{"customer_ids": [%d, %d]}`, ids[0], ids[1])), "sent", 2},
		{"no audience", "10 minutes", nil, "scheduled", 0},
		{"audience matching nobody", "1 minute", ptr(`{"location": "Atlantis"}`), "failed", 0},
		{"unknown customers", "1 minute", ptr(`{"customer_ids": [999999]}`), "failed", 0},
	}
	created := make([]int64, len(cases))
	for i, tc := range cases {
		created[i] = queryInt(t, db, `
INSERT INTO campaigns (name, channel, status, base_template, scheduled_at, audience)
VALUES ($1, 'sms', 'scheduled', 'Hi {first_name}', now() - $2::interval, $3::jsonb)
RETURNING id`, tc.name, tc.late, tc.audience)
	}

	ta := startApp(t, cfg)
	for i, tc := range cases {
		if tc.status == "scheduled" {
			continue
		}
		c := waitStatus(t, ta, created[i], tc.status, 10*time.Second)
		if c.Stats.Total != tc.messages || c.Stats.Sent != tc.messages {
			t.Errorf("%s: stats %+v, want %d sent", tc.name, c.Stats, tc.messages)
		}
		reason := c.StatusReason != nil && *c.StatusReason != ""
		if tc.status == "failed" && !reason {
			t.Errorf("%s: failed without a status_reason", tc.name)
		}
		if tc.status == "sent" && reason {
			t.Errorf("%s: sent with status_reason %q", tc.name, *c.StatusReason)
		}
		if tc.status == "failed" {
			if n := queryInt(t, db, `SELECT count(*) FROM dispatch_batches WHERE campaign_id = $1`, created[i]); n != 0 {
				t.Errorf("%s: %d dispatch batches, want none", tc.name, n)
			}
		}
	}
	// The scheduler handled campaigns due before and after it, so it has
	// seen and skipped this one.
	for i, tc := range cases {
		if tc.status != "scheduled" {
			continue
		}
		if c := readCampaign(t, ta, created[i]); c.Status != "scheduled" || c.Stats.Total != 0 {
			t.Errorf("%s: %s %+v, want left scheduled with no messages", tc.name, c.Status, c.Stats)
		}
	}
}
