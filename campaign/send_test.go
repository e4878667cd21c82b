package campaign

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"github.com/jmoiron/sqlx"
	"github.com/labstack/echo/v4"
	"github.com/lib/pq"
	"github.com/redis/go-redis/v9"

	"github.com/campaignd/dispatch/messaging"
	"github.com/campaignd/dispatch/messaging/queue"
	"github.com/campaignd/dispatch/platform/channel"
	"github.com/campaignd/dispatch/platform/errs"
	"github.com/campaignd/dispatch/platform/postgres/pgtest"
	"github.com/campaignd/dispatch/platform/redisx/redistest"
)

// sendQueueName is the queue the app pushes sends to (config queue.name).
const sendQueueName = "campaign_sends"

var sendLog = slog.New(slog.NewTextHandler(io.Discard, nil))

// sendEnv is a campaign service whose Send goes through the real messaging
// dispatcher: rows in a fresh PostgreSQL schema, ids in Redis under a fresh
// key prefix, served by a real Echo with the app's error handler.
type sendEnv struct {
	*testEnv
	msvc     *messaging.Service
	rdb      *redis.Client
	prefix   string
	queueKey string // the ready list: {<prefix>campaign_sends}
}

func newSendEnv(t testing.TB) *sendEnv {
	t.Helper()
	db := pgtest.New(t)
	rdb, prefix := redistest.New(t)
	return newSendEnvOn(db, rdb, prefix)
}

// newSendEnvOn builds the service over db, pushing through rdb (which may be
// a client of a server that is down).
func newSendEnvOn(db *pgtest.DB, rdb *redis.Client, prefix string) *sendEnv {
	msvc := messaging.NewService(messaging.NewRepo(db.DB), queue.New(rdb, prefix, sendQueueName),
		messaging.MaintenanceOptions{}, sendLog)
	svc := NewService(NewRepo(db.DB), messaging.Templates{}, testCustomers, func() time.Time { return testNow }).
		WithDispatch(messagingDispatcher{msvc}, sendLog)
	return &sendEnv{
		testEnv:  &testEnv{db: db, svc: svc, e: newEcho(svc)},
		msvc:     msvc,
		rdb:      rdb,
		prefix:   prefix,
		queueKey: queue.New(rdb, prefix, sendQueueName).Keys().Ready,
	}
}

// send posts body to POST /campaigns/{id}/send as JSON, with an
// Idempotency-Key header when key is not empty. Safe for concurrent use.
func (se *sendEnv) send(id any, body, key string) *httptest.ResponseRecorder {
	return se.sendCT(id, echo.MIMEApplicationJSON, body, key)
}

func (se *sendEnv) sendCT(id any, contentType, body, key string) *httptest.ResponseRecorder {
	req := httptest.NewRequest(http.MethodPost, fmt.Sprintf("/campaigns/%v/send", id), strings.NewReader(body))
	if contentType != "" {
		req.Header.Set(echo.HeaderContentType, contentType)
	}
	if key != "" {
		req.Header.Set("Idempotency-Key", key)
	}
	rec := httptest.NewRecorder()
	se.e.ServeHTTP(rec, req)
	return rec
}

// sendBody is the JSON of {"customer_ids": ids}.
func sendBody(t testing.TB, ids []int64) string {
	t.Helper()
	return jsonBody(t, SendInput{CustomerIDs: ids})
}

// seedCustomers inserts n customers with one statement and returns their
// ids in ascending order. It may be called several times on one schema.
func seedCustomers(t testing.TB, db *sqlx.DB, n int) []int64 {
	t.Helper()
	var ids []int64
	err := db.SelectContext(context.Background(), &ids, `
WITH base AS (SELECT coalesce(max(id), 0) AS m FROM customers)
INSERT INTO customers (phone, first_name)
SELECT '+1666' || lpad(g::text, 8, '0'), 'C' || g
FROM base, generate_series(base.m + 1, base.m + $1) AS g
RETURNING id`, n)
	if err != nil {
		t.Fatalf("seed %d customers: %v", n, err)
	}
	if len(ids) != n {
		t.Fatalf("seeded %d customers, want %d", len(ids), n)
	}
	slices.Sort(ids)
	return ids
}

// sentRow is one outbound message as the send created it.
type sentRow struct {
	ID         int64  `db:"id"`
	CustomerID int64  `db:"customer_id"`
	Status     string `db:"status"`
}

func (se *sendEnv) messageRows(t testing.TB, campaignID int64) []sentRow {
	t.Helper()
	var rows []sentRow
	if err := se.db.SelectContext(context.Background(), &rows,
		`SELECT id, customer_id, status FROM outbound_messages WHERE campaign_id = $1 ORDER BY id`, campaignID); err != nil {
		t.Fatalf("read messages: %v", err)
	}
	return rows
}

func (se *sendEnv) countMessages(t testing.TB) int {
	t.Helper()
	var n int
	if err := se.db.GetContext(context.Background(), &n, `SELECT count(*) FROM outbound_messages`); err != nil {
		t.Fatalf("count messages: %v", err)
	}
	return n
}

func (se *sendEnv) campaignStatus(t testing.TB, id int64) Status {
	t.Helper()
	var st Status
	if err := se.db.GetContext(context.Background(), &st, `SELECT status FROM campaigns WHERE id = $1`, id); err != nil {
		t.Fatalf("read campaign %d: %v", id, err)
	}
	return st
}

// batchRow is a dispatch_batches row.
type batchRow struct {
	Messages int `db:"messages"`
}

func (se *sendEnv) batches(t testing.TB, campaignID int64) []batchRow {
	t.Helper()
	var rows []batchRow
	if err := se.db.SelectContext(context.Background(), &rows,
		`SELECT messages FROM dispatch_batches WHERE campaign_id = $1 ORDER BY id`, campaignID); err != nil {
		t.Fatalf("read dispatch batches: %v", err)
	}
	return rows
}

// queued returns the ids in the ready list, sorted, and the list's length.
//
// The messaging feeder queues what sends leave pending (the app runs it in a
// loop); it runs here once first, as it would right after the send.
func (se *sendEnv) queued(t testing.TB) (ids []int64, llen int64) {
	t.Helper()
	ctx := context.Background()
	if _, err := se.msvc.Feed(ctx); err != nil {
		t.Fatalf("feed the queue: %v", err)
	}
	llen, err := se.rdb.LLen(ctx, se.queueKey).Result()
	if err != nil {
		t.Fatalf("LLEN %s: %v", se.queueKey, err)
	}
	vals, err := se.rdb.LRange(ctx, se.queueKey, 0, -1).Result()
	if err != nil {
		t.Fatalf("LRANGE %s: %v", se.queueKey, err)
	}
	for _, v := range vals {
		id, err := strconv.ParseInt(v, 10, 64)
		if err != nil {
			t.Fatalf("queue holds %q, not a message id", v)
		}
		ids = append(ids, id)
	}
	slices.Sort(ids)
	return ids, llen
}

func rowIDs(rows []sentRow) []int64 {
	ids := make([]int64, len(rows))
	for i, r := range rows {
		ids[i] = r.ID
	}
	slices.Sort(ids)
	return ids
}

func rowCustomers(rows []sentRow) []int64 {
	ids := make([]int64, len(rows))
	for i, r := range rows {
		ids[i] = r.CustomerID
	}
	slices.Sort(ids)
	return ids
}

func distinctSorted(ids []int64) []int64 {
	out := slices.Clone(ids)
	slices.Sort(out)
	return slices.Compact(out)
}

// wantSendAccepted checks a 202 send response: exactly the contract's keys
// with the given values.
func wantSendAccepted(t testing.TB, rec *httptest.ResponseRecorder, campaignID int64, queued, dups int) {
	t.Helper()
	got := decodeJSON[SendResult](t, rec, http.StatusAccepted)
	want := SendResult{CampaignID: campaignID, MessagesQueued: int64(queued), Status: StatusSending, DuplicatesRemoved: dups}
	if diff := cmp.Diff(want, got); diff != "" {
		t.Errorf("send result (-want +got):\n%s", diff)
	}
	raw := decodeJSON[map[string]any](t, rec, http.StatusAccepted)
	if diff := cmp.Diff([]string{"campaign_id", "duplicates_removed", "messages_queued", "skipped_opted_out", "status"}, keys(raw)); diff != "" {
		t.Errorf("send result keys (-want +got):\n%s", diff)
	}
}

// sendState is everything a send may change, to check that a refused send
// changed nothing.
type sendState struct {
	Status   Status
	Messages []sentRow
	Batches  []batchRow
	Queued   []int64
}

func (se *sendEnv) state(t testing.TB, campaignID int64) sendState {
	t.Helper()
	q, _ := se.queued(t)
	return sendState{
		Status:   se.campaignStatus(t, campaignID),
		Messages: se.messageRows(t, campaignID),
		Batches:  se.batches(t, campaignID),
		Queued:   q,
	}
}

func TestSendAccepted(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name     string
		from     Status
		pick     []int // indexes into the seeded customers, in request order
		wantDups int
	}{
		{name: "three ids", from: StatusDraft, pick: []int{0, 1, 2}},
		{name: "one id", from: StatusDraft, pick: []int{4}},
		{name: "duplicates removed and counted", from: StatusDraft, pick: []int{3, 0, 3, 1, 0, 3, 2}, wantDups: 3},
		{name: "from scheduled", from: StatusScheduled, pick: []int{2, 4, 1}},
		{name: "scheduled with duplicates", from: StatusScheduled, pick: []int{1, 1}, wantDups: 1},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			se := newSendEnv(t)
			customers := seedCustomers(t, se.db.DB, 5)
			id := se.insertCampaign(t, "send "+tt.name, channel.SMS, tt.from)
			var ids []int64
			for _, i := range tt.pick {
				ids = append(ids, customers[i])
			}
			distinct := distinctSorted(ids)

			rec := se.send(id, sendBody(t, ids), "")
			wantSendAccepted(t, rec, id, len(distinct), tt.wantDups)
			if rec.Header().Get("Idempotent-Replayed") != "" {
				t.Errorf("a first response carries Idempotent-Replayed")
			}

			rows := se.messageRows(t, id)
			if diff := cmp.Diff(distinct, rowCustomers(rows)); diff != "" {
				t.Errorf("message customers (-want +got):\n%s", diff)
			}
			for _, r := range rows {
				if r.Status != "pending" {
					t.Errorf("message %d is %s, want pending", r.ID, r.Status)
				}
			}
			queued, llen := se.queued(t)
			if llen != int64(len(distinct)) {
				t.Errorf("LLEN %s = %d, want %d", se.queueKey, llen, len(distinct))
			}
			if diff := cmp.Diff(rowIDs(rows), queued); diff != "" {
				t.Errorf("queued ids (-message ids +queue):\n%s", diff)
			}
			if st := se.campaignStatus(t, id); st != StatusSending {
				t.Errorf("campaign status = %s, want sending", st)
			}
			if diff := cmp.Diff([]batchRow{{Messages: len(distinct)}}, se.batches(t, id)); diff != "" {
				t.Errorf("dispatch batches (-want +got):\n%s", diff)
			}

			// A second send is refused and changes nothing.
			before := se.state(t, id)
			body := wantError(t, se.send(id, sendBody(t, ids), ""), http.StatusConflict, "CAMPAIGN_NOT_SENDABLE", "")
			if body.Details["status"] != string(StatusSending) {
				t.Errorf("details.status = %v, want sending", body.Details["status"])
			}
			if diff := cmp.Diff(before, se.state(t, id)); diff != "" {
				t.Errorf("a refused send changed state (-before +after):\n%s", diff)
			}
		})
	}
}

func TestSendNotSendable(t *testing.T) {
	t.Parallel()
	se := newSendEnv(t)
	customers := seedCustomers(t, se.db.DB, 3)
	for _, st := range []Status{StatusSending, StatusSent, StatusFailed} {
		t.Run(string(st), func(t *testing.T) {
			t.Parallel()
			id := se.insertCampaign(t, "not sendable", channel.WhatsApp, st)
			before := se.state(t, id)
			rec := se.send(id, sendBody(t, customers), "")
			body := wantError(t, rec, http.StatusConflict, "CAMPAIGN_NOT_SENDABLE", "")
			if body.Details["status"] != string(st) {
				t.Errorf("details.status = %v, want %s", body.Details["status"], st)
			}
			if !strings.Contains(body.Message, strconv.FormatInt(id, 10)) {
				t.Errorf("message %q does not name the campaign", body.Message)
			}
			after := se.state(t, id)
			if after.Status != st || len(after.Messages) != 0 || len(after.Batches) != 0 {
				t.Errorf("a refused send changed state: %+v", after)
			}
			if diff := cmp.Diff(before, after); diff != "" {
				t.Errorf("state (-before +after):\n%s", diff)
			}
		})
	}
	t.Run("service error", func(t *testing.T) {
		t.Parallel()
		id := se.insertCampaign(t, "sent", channel.SMS, StatusSent)
		_, _, err := se.svc.Send(context.Background(), id, SendInput{CustomerIDs: customers}, "")
		if !errors.Is(err, ErrNotSendable) {
			t.Errorf("error = %v, want ErrNotSendable", err)
		}
	})
}

// TestSendConcurrent sends one campaign from many goroutines at once, with
// overlapping id lists: exactly one send wins, and only its messages exist.
func TestSendConcurrent(t *testing.T) {
	t.Parallel()
	se := newSendEnv(t)
	customers := seedCustomers(t, se.db.DB, 40)
	const senders = 8
	for round := range 5 {
		t.Run(fmt.Sprintf("round %d", round), func(t *testing.T) {
			id := se.insertCampaign(t, "race", channel.SMS, StatusDraft)
			lists := make([][]int64, senders)
			for g := range senders {
				// Sender g asks for customers g..g+19 (and repeats one), so
				// every two lists overlap.
				lists[g] = append(slices.Clone(customers[g:g+20]), customers[g])
			}
			recs := make([]*httptest.ResponseRecorder, senders)
			start := make(chan struct{})
			var wg sync.WaitGroup
			for g := range senders {
				wg.Go(func() {
					<-start
					recs[g] = se.send(id, sendBody(t, lists[g]), "")
				})
			}
			close(start)
			wg.Wait()

			winner := -1
			for g, rec := range recs {
				switch rec.Code {
				case http.StatusAccepted:
					if winner >= 0 {
						t.Errorf("senders %d and %d both got 202", winner, g)
					}
					winner = g
				default:
					wantError(t, rec, http.StatusConflict, "CAMPAIGN_NOT_SENDABLE", "")
				}
			}
			if winner < 0 {
				t.Fatal("no send succeeded")
			}
			want := distinctSorted(lists[winner])
			wantSendAccepted(t, recs[winner], id, len(want), 1)
			rows := se.messageRows(t, id)
			if diff := cmp.Diff(want, rowCustomers(rows)); diff != "" {
				t.Errorf("message customers (-winner's ids +rows):\n%s", diff)
			}
			if bs := se.batches(t, id); len(bs) != 1 {
				t.Errorf("dispatch batches = %+v, want one", bs)
			}
			if st := se.campaignStatus(t, id); st != StatusSending {
				t.Errorf("campaign status = %s, want sending", st)
			}
		})
	}
	// Across all rounds, the queue holds every message exactly once.
	var all []int64
	if err := se.db.SelectContext(context.Background(), &all, `SELECT id FROM outbound_messages ORDER BY id`); err != nil {
		t.Fatal(err)
	}
	queued, _ := se.queued(t)
	if diff := cmp.Diff(all, queued); diff != "" {
		t.Errorf("queued ids (-messages +queue):\n%s", diff)
	}
}

func TestSendIdempotencyKey(t *testing.T) {
	t.Parallel()

	t.Run("replay returns the first response", func(t *testing.T) {
		t.Parallel()
		se := newSendEnv(t)
		customers := seedCustomers(t, se.db.DB, 4)
		id := se.insertCampaign(t, "idem", channel.SMS, StatusDraft)
		body := sendBody(t, []int64{customers[0], customers[1], customers[0]})

		first := se.send(id, body, "key-replay-1")
		wantSendAccepted(t, first, id, 2, 1)
		if first.Header().Get("Idempotent-Replayed") != "" {
			t.Error("the first response carries Idempotent-Replayed")
		}
		before := se.state(t, id)

		for i := range 3 {
			again := se.send(id, body, "key-replay-1")
			if again.Code != first.Code {
				t.Fatalf("replay %d: status = %d, want %d; body %s", i, again.Code, first.Code, again.Body)
			}
			if got := again.Header().Get("Idempotent-Replayed"); got != "true" {
				t.Errorf("replay %d: Idempotent-Replayed = %q, want true", i, got)
			}
			if ct := again.Header().Get(echo.HeaderContentType); !strings.HasPrefix(ct, echo.MIMEApplicationJSON) {
				t.Errorf("replay %d: Content-Type = %q", i, ct)
			}
			// The same response, not merely an equivalent one.
			if !bytes.Equal(again.Body.Bytes(), first.Body.Bytes()) {
				t.Errorf("replay %d: body differs from the first response\nfirst:  %q\nreplay: %q", i, first.Body, again.Body)
			}
			wantSendAccepted(t, again, id, 2, 1)
		}
		if diff := cmp.Diff(before, se.state(t, id)); diff != "" {
			t.Errorf("a replay changed state (-before +after):\n%s", diff)
		}
	})

	t.Run("same key with another body", func(t *testing.T) {
		t.Parallel()
		se := newSendEnv(t)
		customers := seedCustomers(t, se.db.DB, 4)
		id := se.insertCampaign(t, "idem", channel.SMS, StatusDraft)
		other := se.insertCampaign(t, "other", channel.SMS, StatusDraft)
		wantSendAccepted(t, se.send(id, sendBody(t, customers[:2]), "key-reuse"), id, 2, 0)
		before := se.state(t, id)

		tests := []struct {
			name   string
			target int64
			ids    []int64
		}{
			{"other ids", id, customers[1:3]},
			{"more ids", id, customers[:3]},
			{"same ids reordered", id, []int64{customers[1], customers[0]}},
			{"same ids with a duplicate", id, []int64{customers[0], customers[1], customers[1]}},
			{"other campaign", other, customers[:2]},
		}
		for _, tt := range tests {
			rec := se.send(tt.target, sendBody(t, tt.ids), "key-reuse")
			wantError(t, rec, http.StatusConflict, "IDEMPOTENCY_KEY_REUSED", "")
			if rec.Header().Get("Idempotent-Replayed") != "" {
				t.Errorf("%s: a refused request carries Idempotent-Replayed", tt.name)
			}
		}
		if diff := cmp.Diff(before, se.state(t, id)); diff != "" {
			t.Errorf("state (-before +after):\n%s", diff)
		}
		if st := se.campaignStatus(t, other); st != StatusDraft {
			t.Errorf("other campaign is %s, want draft", st)
		}
		_, _, err := se.svc.Send(context.Background(), id, SendInput{CustomerIDs: customers[2:]}, "key-reuse")
		if !errors.Is(err, ErrIdempotencyKeyReused) {
			t.Errorf("service error = %v, want ErrIdempotencyKeyReused", err)
		}
	})

	t.Run("without a key a repeat is a conflict", func(t *testing.T) {
		t.Parallel()
		se := newSendEnv(t)
		customers := seedCustomers(t, se.db.DB, 2)
		id := se.insertCampaign(t, "no key", channel.SMS, StatusDraft)
		wantSendAccepted(t, se.send(id, sendBody(t, customers), ""), id, 2, 0)
		wantError(t, se.send(id, sendBody(t, customers), ""), http.StatusConflict, "CAMPAIGN_NOT_SENDABLE", "")
		// A fresh key on a campaign already sent is a conflict too: the key
		// replays responses, it does not make a second send possible.
		wantError(t, se.send(id, sendBody(t, customers), "late-key"), http.StatusConflict, "CAMPAIGN_NOT_SENDABLE", "")
	})

	t.Run("a refused request does not consume its key", func(t *testing.T) {
		t.Parallel()
		se := newSendEnv(t)
		customers := seedCustomers(t, se.db.DB, 2)
		sent := se.insertCampaign(t, "sent", channel.SMS, StatusSent)
		draft := se.insertCampaign(t, "draft", channel.SMS, StatusDraft)
		body := sendBody(t, customers)
		wantError(t, se.send(sent, body, "key-after-409"), http.StatusConflict, "CAMPAIGN_NOT_SENDABLE", "")
		// The key was not stored, so it is free for another request.
		wantSendAccepted(t, se.send(draft, body, "key-after-409"), draft, 2, 0)
	})

	t.Run("key of 200 characters", func(t *testing.T) {
		t.Parallel()
		se := newSendEnv(t)
		customers := seedCustomers(t, se.db.DB, 1)
		id := se.insertCampaign(t, "long key", channel.SMS, StatusDraft)
		key := strings.Repeat("k", 200)
		first := se.send(id, sendBody(t, customers), key)
		wantSendAccepted(t, first, id, 1, 0)
		again := se.send(id, sendBody(t, customers), key)
		if again.Code != http.StatusAccepted || again.Header().Get("Idempotent-Replayed") != "true" {
			t.Errorf("replay: %d %s, Idempotent-Replayed %q", again.Code, again.Body, again.Header().Get("Idempotent-Replayed"))
		}
	})

	t.Run("concurrent requests with one key", func(t *testing.T) {
		t.Parallel()
		se := newSendEnv(t)
		customers := seedCustomers(t, se.db.DB, 30)
		id := se.insertCampaign(t, "idem race", channel.SMS, StatusDraft)
		body := sendBody(t, customers)
		const n = 8
		recs := make([]*httptest.ResponseRecorder, n)
		start := make(chan struct{})
		var wg sync.WaitGroup
		for g := range n {
			wg.Go(func() {
				<-start
				recs[g] = se.send(id, body, "key-race")
			})
		}
		close(start)
		wg.Wait()
		replayed := 0
		for g, rec := range recs {
			if rec.Code != http.StatusAccepted {
				t.Errorf("request %d: status %d, body %s", g, rec.Code, rec.Body)
				continue
			}
			wantSendAccepted(t, rec, id, len(customers), 0)
			if rec.Header().Get("Idempotent-Replayed") == "true" {
				replayed++
			}
		}
		if replayed != n-1 {
			t.Errorf("%d responses were replays, want %d", replayed, n-1)
		}
		rows := se.messageRows(t, id)
		if diff := cmp.Diff(customers, rowCustomers(rows)); diff != "" {
			t.Errorf("message customers (-want +got):\n%s", diff)
		}
		queued, _ := se.queued(t)
		if diff := cmp.Diff(rowIDs(rows), queued); diff != "" {
			t.Errorf("queued ids (-messages +queue):\n%s", diff)
		}
		if bs := se.batches(t, id); len(bs) != 1 {
			t.Errorf("dispatch batches = %+v, want one", bs)
		}
	})
}

// TestSendWaitsForErasure: an id send naming a customer whose erasure is
// under way (its row locked FOR UPDATE, as customer.Erase locks it before
// deleting it) waits for the erasure, then reports the customer unknown and
// creates nothing. The send's insert locks the customers it reads FOR KEY
// SHARE; without that lock (outbound_messages has no foreign key since
// 00018) it would create a message for a customer who is gone.
func TestSendWaitsForErasure(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	se := newSendEnv(t)
	cs := seedCustomers(t, se.db.DB, 3)
	id := se.insertCampaign(t, "erased", channel.SMS, StatusDraft)

	eraser, err := se.db.BeginTxx(ctx, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer eraser.Rollback()
	var eraserPID int
	if err := eraser.GetContext(ctx, &eraserPID, `SELECT pg_backend_pid() FROM customers WHERE id = $1 FOR UPDATE`, cs[1]); err != nil {
		t.Fatal(err)
	}
	sent := make(chan *httptest.ResponseRecorder, 1)
	go func() { sent <- se.send(id, sendBody(t, cs), "") }()

	// Wait until the send is blocked by the eraser.
	deadline := time.Now().Add(10 * time.Second)
	for {
		var blocked int
		if err := se.db.GetContext(ctx, &blocked,
			`SELECT count(*) FROM pg_stat_activity WHERE $1 = ANY (pg_blocking_pids(pid))`, eraserPID); err != nil {
			t.Fatal(err)
		}
		if blocked > 0 {
			break
		}
		select {
		case rec := <-sent:
			t.Fatalf("the send did not wait for the erasure: %d %s", rec.Code, rec.Body)
		default:
		}
		if time.Now().After(deadline) {
			t.Fatal("the send never waited for the customer being erased")
		}
		time.Sleep(10 * time.Millisecond)
	}
	if _, err := eraser.ExecContext(ctx, `DELETE FROM customers WHERE id = $1`, cs[1]); err != nil {
		t.Fatal(err)
	}
	if err := eraser.Commit(); err != nil {
		t.Fatal(err)
	}

	env := wantError(t, <-sent, http.StatusUnprocessableEntity, "UNKNOWN_CUSTOMERS", "")
	if got, _ := json.Marshal(env.Details["missing_ids"]); string(got) != fmt.Sprintf("[%d]", cs[1]) {
		t.Errorf("details.missing_ids = %s, want [%d]", got, cs[1])
	}
	if n := se.countMessages(t); n != 0 {
		t.Errorf("%d messages created, want none", n)
	}
	if st := se.campaignStatus(t, id); st != StatusDraft {
		t.Errorf("campaign %s, want still draft", st)
	}
}

func TestSendUnknownCustomers(t *testing.T) {
	t.Parallel()
	se := newSendEnv(t)
	known := seedCustomers(t, se.db.DB, 5)
	id := se.insertCampaign(t, "unknown", channel.SMS, StatusDraft)

	// 150 unknown ids, given in descending order, some of them twice,
	// mixed with known ones.
	var unknown []int64
	for i := range 150 {
		unknown = append(unknown, 900_000+int64(i)*7)
	}
	var ids []int64
	for i := len(unknown) - 1; i >= 0; i-- {
		ids = append(ids, unknown[i])
		if i%50 == 0 {
			ids = append(ids, unknown[i], known[i%len(known)])
		}
	}
	ids = append(ids, known...)
	body := sendBody(t, ids)
	const key = "key-unknown"

	before := se.state(t, id)
	rec := se.send(id, body, key)
	env := wantError(t, rec, http.StatusUnprocessableEntity, "UNKNOWN_CUSTOMERS", "")
	var missing []int64
	raw, _ := json.Marshal(env.Details["missing_ids"])
	if err := json.Unmarshal(raw, &missing); err != nil {
		t.Fatalf("details.missing_ids = %s: %v", raw, err)
	}
	if diff := cmp.Diff(unknown[:100], missing); diff != "" {
		t.Errorf("missing_ids: want the first 100 unknown ids, sorted (-want +got):\n%s", diff)
	}

	// Nothing was created: no rows, no batch, no job, campaign still draft.
	if diff := cmp.Diff(before, se.state(t, id)); diff != "" {
		t.Errorf("a refused send changed state (-before +after):\n%s", diff)
	}
	if n, err := se.rdb.Exists(context.Background(), se.queueKey).Result(); err != nil || n != 0 {
		t.Errorf("queue key exists = %d (%v), want nothing pushed", n, err)
	}
	var keysStored int
	if err := se.db.GetContext(context.Background(), &keysStored, `SELECT count(*) FROM idempotency_keys`); err != nil {
		t.Fatal(err)
	}
	if keysStored != 0 {
		t.Errorf("%d idempotency keys stored after a refused send, want 0", keysStored)
	}

	// Once the customers exist, the same request with the same key is sent.
	if _, err := se.db.ExecContext(context.Background(), `
INSERT INTO customers (id, phone, first_name)
SELECT u.id, '+1777' || lpad(u.id::text, 8, '0'), 'late'
FROM unnest($1::bigint[]) AS u(id)`, pq.Array(unknown)); err != nil {
		t.Fatalf("create the missing customers: %v", err)
	}
	want := distinctSorted(ids)
	wantSendAccepted(t, se.send(id, body, key), id, len(want), len(ids)-len(want))
	if diff := cmp.Diff(want, rowCustomers(se.messageRows(t, id))); diff != "" {
		t.Errorf("message customers (-want +got):\n%s", diff)
	}

	t.Run("service error", func(t *testing.T) {
		other := se.insertCampaign(t, "unknown 2", channel.SMS, StatusDraft)
		_, _, err := se.svc.Send(context.Background(), other, SendInput{CustomerIDs: []int64{known[0], 42_000_000}}, "")
		if !errors.Is(err, messaging.ErrUnknownCustomers) {
			t.Errorf("error = %v, want ErrUnknownCustomers", err)
		}
		if errs.KindOf(err) != errs.KindUnprocessable {
			t.Errorf("kind = %v, want unprocessable", errs.KindOf(err))
		}
	})
}

func TestSendValidation(t *testing.T) {
	t.Parallel()
	se := newSendEnv(t)
	customers := seedCustomers(t, se.db.DB, 2)
	id := se.insertCampaign(t, "validation", channel.SMS, StatusDraft)
	valid := sendBody(t, customers)

	tooMany := make([]int64, MaxSendIDs+1)
	for i := range tooMany {
		tooMany[i] = int64(i + 1)
	}
	js := echo.MIMEApplicationJSON

	tests := []struct {
		name, target, contentType, body, key string
		status                               int
		code, field                          string
	}{
		{name: "missing customer_ids", body: `{}`, status: 400, code: errs.CodeValidation, field: "customer_ids"},
		{name: "null customer_ids", body: `{"customer_ids":null}`, status: 400, code: errs.CodeValidation, field: "customer_ids"},
		{name: "empty array", body: `{"customer_ids":[]}`, status: 400, code: errs.CodeValidation, field: "customer_ids"},
		{name: "zero id", body: fmt.Sprintf(`{"customer_ids":[%d,0]}`, customers[0]), status: 400, code: errs.CodeValidation, field: "customer_ids"},
		{name: "negative id", body: `{"customer_ids":[-5]}`, status: 400, code: errs.CodeValidation, field: "customer_ids"},
		{name: "too many ids", body: sendBody(t, tooMany), status: 400, code: errs.CodeValidation, field: "customer_ids"},
		{name: "ids as strings", body: `{"customer_ids":["1","2"]}`, status: 400, code: errs.CodeInvalidJSON, field: "customer_ids"},
		{name: "fractional id", body: `{"customer_ids":[1.5]}`, status: 400, code: errs.CodeInvalidJSON, field: "customer_ids"},
		{name: "id overflows int64", body: `{"customer_ids":[99999999999999999999]}`, status: 400, code: errs.CodeInvalidJSON, field: "customer_ids"},
		{name: "customer_ids not an array", body: `{"customer_ids":1}`, status: 400, code: errs.CodeInvalidJSON, field: "customer_ids"},
		{name: "unknown field", body: `{"customer_ids":[1],"all":true}`, status: 400, code: errs.CodeInvalidJSON, field: "all"},
		{name: "malformed JSON", body: `{"customer_ids":[1,`, status: 400, code: errs.CodeInvalidJSON},
		{name: "empty body", body: ``, status: 400, code: errs.CodeInvalidJSON},
		{name: "text/plain", contentType: "text/plain", body: valid, status: 415, code: errs.CodeUnsupportedMedia},
		{name: "no content type", contentType: "-", body: valid, status: 415, code: errs.CodeUnsupportedMedia},
		{name: "form", contentType: "application/x-www-form-urlencoded", body: "customer_ids=1", status: 415, code: errs.CodeUnsupportedMedia},
		{name: "non-numeric campaign id", target: "abc", body: valid, status: 400, code: errs.CodeValidation, field: "id"},
		{name: "campaign id 0", target: "0", body: valid, status: 400, code: errs.CodeValidation, field: "id"},
		{name: "negative campaign id", target: "-3", body: valid, status: 400, code: errs.CodeValidation, field: "id"},
		{name: "unknown campaign", target: "987654", body: valid, status: 404, code: "CAMPAIGN_NOT_FOUND"},
		{name: "unknown campaign with key", target: "987654", body: valid, key: "k-404", status: 404, code: "CAMPAIGN_NOT_FOUND"},
		{name: "key over 200 characters", body: valid, key: strings.Repeat("k", 201), status: 400, code: errs.CodeValidation, field: "Idempotency-Key"},
		{name: "key with a control character", body: valid, key: "a\x01b", status: 400, code: errs.CodeValidation, field: "Idempotency-Key"},
	}
	// The group returns once its parallel subtests are done.
	t.Run("requests", func(t *testing.T) {
		for _, tt := range tests {
			t.Run(tt.name, func(t *testing.T) {
				t.Parallel()
				target := any(id)
				if tt.target != "" {
					target = tt.target
				}
				ct := js
				switch tt.contentType {
				case "":
				case "-":
					ct = ""
				default:
					ct = tt.contentType
				}
				wantError(t, se.sendCT(target, ct, tt.body, tt.key), tt.status, tt.code, tt.field)
			})
		}
	})
	// No invalid request created anything.
	if st := se.campaignStatus(t, id); st != StatusDraft {
		t.Errorf("campaign is %s after invalid sends, want draft", st)
	}
	if n := se.countMessages(t); n != 0 {
		t.Errorf("%d messages after invalid sends, want 0", n)
	}
	if q, _ := se.queued(t); len(q) != 0 {
		t.Errorf("queue holds %v after invalid sends", q)
	}
}

// TestSendRedisDown sends while Redis cannot be reached: the send is
// accepted (the rows are the truth) and the feeder queues the messages once
// Redis is back.
func TestSendRedisDown(t *testing.T) {
	t.Parallel()
	db := pgtest.New(t)
	// Nothing listens on port 1.
	down := redis.NewClient(&redis.Options{Addr: "127.0.0.1:1", MaxRetries: -1, DialTimeout: time.Second})
	t.Cleanup(func() { down.Close() })
	se := newSendEnvOn(db, down, "down:")
	customers := seedCustomers(t, db.DB, 6)
	id := se.insertCampaign(t, "redis down", channel.SMS, StatusDraft)

	started := time.Now()
	rec := se.send(id, sendBody(t, customers), "")
	wantSendAccepted(t, rec, id, len(customers), 0)
	if d := time.Since(started); d > 5*time.Second {
		t.Errorf("send took %v with Redis down", d)
	}
	rows := se.messageRows(t, id)
	if diff := cmp.Diff(customers, rowCustomers(rows)); diff != "" {
		t.Errorf("message customers (-want +got):\n%s", diff)
	}
	if st := se.campaignStatus(t, id); st != StatusSending {
		t.Errorf("campaign status = %s, want sending", st)
	}
	if diff := cmp.Diff([]batchRow{{Messages: len(customers)}}, se.batches(t, id)); diff != "" {
		t.Errorf("dispatch batches (-want +got):\n%s", diff)
	}

	// Redis is back: the feeder (up.queued runs it) queues the messages.
	rdb, prefix := redistest.New(t)
	up := newSendEnvOn(db, rdb, prefix)
	queued, _ := up.queued(t)
	if diff := cmp.Diff(rowIDs(rows), queued); diff != "" {
		t.Errorf("queued ids after the sweep (-messages +queue):\n%s", diff)
	}
}

func TestFinish(t *testing.T) {
	t.Parallel()
	te := newTestEnv(t)
	repo := NewRepo(te.db.DB)
	ctx := context.Background()
	customers := seedCustomers(t, te.db.DB, 3)

	tests := []struct {
		name     string
		status   Status
		messages []string
		want     Status
		// lostCounts zeroes the campaign's counters after its messages
		// are in: Finish reads them first, but must not finish a
		// campaign on their word alone.
		lostCounts bool
	}{
		{"all sent", StatusSending, []string{"sent", "sent", "sent"}, StatusSent, false},
		{"one sent, rest failed", StatusSending, []string{"failed", "sent", "failed"}, StatusSent, false},
		{"all failed", StatusSending, []string{"failed", "failed"}, StatusFailed, false},
		{"one pending", StatusSending, []string{"sent", "pending", "failed"}, StatusSending, false},
		{"one sending", StatusSending, []string{"sent", "sending"}, StatusSending, false},
		{"all pending", StatusSending, []string{"pending", "pending"}, StatusSending, false},
		{"draft is not finished", StatusDraft, []string{"sent"}, StatusDraft, false},
		{"sent stays sent", StatusSent, []string{"sent"}, StatusSent, false},
		{"no messages at all", StatusSending, nil, StatusFailed, false},
		{"counters lost, one pending", StatusSending, []string{"sent", "pending"}, StatusSending, true},
		{"counters lost, all final", StatusSending, []string{"sent", "failed"}, StatusSent, true},
	}
	ids := make([]int64, len(tests))
	var want []Finished
	for i, tt := range tests {
		ids[i] = te.insertCampaign(t, tt.name, channel.SMS, tt.status)
		for j, st := range tt.messages {
			te.insertMessage(t, ids[i], customers[j], st)
		}
		if tt.lostCounts {
			if _, err := te.db.ExecContext(ctx, `DELETE FROM campaign_stats WHERE campaign_id = $1`, ids[i]); err != nil {
				t.Fatal(err)
			}
		}
		if tt.status != tt.want {
			want = append(want, Finished{ID: ids[i], Status: tt.want})
		}
	}

	got, err := repo.Finish(ctx)
	if err != nil {
		t.Fatal(err)
	}
	sortFinished(got)
	if diff := cmp.Diff(want, got); diff != "" {
		t.Errorf("Finish (-want +got):\n%s", diff)
	}
	for i, tt := range tests {
		var st Status
		if err := te.db.GetContext(ctx, &st, `SELECT status FROM campaigns WHERE id = $1`, ids[i]); err != nil {
			t.Fatal(err)
		}
		if st != tt.want {
			t.Errorf("%s: status = %s, want %s", tt.name, st, tt.want)
		}
	}

	// Exactly once: nothing more to finish.
	if again, err := repo.Finish(ctx); err != nil || len(again) != 0 {
		t.Errorf("second Finish = %+v, %v; want nothing", again, err)
	}

	// The campaign with a pending message finishes once that message does.
	if _, err := te.db.ExecContext(ctx, `UPDATE outbound_messages SET status = 'failed' WHERE campaign_id = $1 AND status = 'pending'`, ids[3]); err != nil {
		t.Fatal(err)
	}
	got, err = repo.Finish(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if diff := cmp.Diff([]Finished{{ID: ids[3], Status: StatusSent}}, got); diff != "" {
		t.Errorf("Finish after the last message ended (-want +got):\n%s", diff)
	}
}

func sortFinished(fs []Finished) {
	slices.SortFunc(fs, func(a, b Finished) int {
		switch {
		case a.ID < b.ID:
			return -1
		case a.ID > b.ID:
			return 1
		}
		return 0
	})
}

// TestFinishConcurrent runs Finish from several goroutines at once, as
// several replicas would: every campaign is reported exactly once in total.
func TestFinishConcurrent(t *testing.T) {
	t.Parallel()
	te := newTestEnv(t)
	repo := NewRepo(te.db.DB)
	customers := seedCustomers(t, te.db.DB, 2)
	var want []Finished
	for i := range 30 {
		id := te.insertCampaign(t, fmt.Sprintf("c%d", i), channel.SMS, StatusSending)
		st := StatusSent
		if i%3 == 0 {
			st = StatusFailed
			te.insertMessage(t, id, customers[0], "failed")
			te.insertMessage(t, id, customers[1], "failed")
		} else {
			te.insertMessage(t, id, customers[0], "sent")
			te.insertMessage(t, id, customers[1], "failed")
		}
		want = append(want, Finished{ID: id, Status: st})
	}

	const callers = 6
	results := make([][]Finished, callers)
	errsSeen := make([]error, callers)
	start := make(chan struct{})
	var wg sync.WaitGroup
	for g := range callers {
		wg.Go(func() {
			<-start
			results[g], errsSeen[g] = repo.Finish(context.Background())
		})
	}
	close(start)
	wg.Wait()
	var got []Finished
	for g := range callers {
		if errsSeen[g] != nil {
			t.Errorf("Finish %d: %v", g, errsSeen[g])
		}
		got = append(got, results[g]...)
	}
	sortFinished(got)
	if diff := cmp.Diff(want, got); diff != "" {
		t.Errorf("campaigns finished over all callers (-want +got):\n%s", diff)
	}
}

// benchmarkSend measures POST /campaigns/{id}/send of n distinct existing
// customers: validation, the insert of n rows, the status change, the push
// of n ids to Redis and the response. Each iteration sends a fresh draft
// campaign; creating it is not timed.
func benchmarkSend(b *testing.B, n int) {
	se := newSendEnv(b)
	customers := seedCustomers(b, se.db.DB, n)
	body := sendBody(b, customers)
	ctx := context.Background()
	b.ResetTimer()
	for i := range b.N {
		b.StopTimer()
		id := se.insertCampaign(b, fmt.Sprintf("bench %d", i), channel.SMS, StatusDraft)
		if err := se.rdb.Del(ctx, se.queueKey).Err(); err != nil {
			b.Fatal(err)
		}
		b.StartTimer()
		rec := se.send(id, body, "")
		if rec.Code != http.StatusAccepted {
			b.Fatalf("status %d: %s", rec.Code, rec.Body)
		}
	}
	b.StopTimer()
	b.ReportMetric(float64(n)*float64(b.N)/b.Elapsed().Seconds(), "msgs/s")
}

func BenchmarkSend10k(b *testing.B)  { benchmarkSend(b, 10_000) }
func BenchmarkSend100k(b *testing.B) { benchmarkSend(b, 100_000) }
