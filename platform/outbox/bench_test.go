package outbox

// BenchmarkWebhooksOnVsOff measures what webhooks cost the message delivery
// path, in one run, on one fresh schema:
//
//	go test -run='^$' -bench=WebhooksOnVsOff -benchtime=1x ./platform/outbox/
//
// The delivery path is stood in for by its database work, which is all that
// webhooks add to it: a recorder statement shaped like messaging's (a batch
// of 100 outcomes, UPDATE ... FROM unnest ... RETURNING, over a table indexed
// like outbound_messages), run by 8 goroutines back to back as fast as
// PostgreSQL takes them. That is the worst case: the real path also waits
// for the provider (the mock's 125 ms on average), which webhooks do not
// touch.
//
//   - baseline: the statement without EmitSQL;
//   - off: with EmitSQL spliced in and no endpoint subscribed (the wanted
//     parameter is empty), which is what every deployment runs;
//   - on: an endpoint subscribed to message.sent, so one event per message
//     is written by the same statement, while a Dispatcher delivers them to
//     a local receiver at the same time.
//
// off and on alternate (rounds times each) and the best round of each is
// kept; after each on round the backlog is drained (untimed) so it does not
// spill into the next round. Reported: msgs/s of each, on/off (goal ≥ 0.9),
// and the webhooks the dispatcher delivered per second during and after the
// on rounds.

import (
	"context"
	"fmt"
	"net/http"
	"net/http/httptest"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/lib/pq"
)

const benchRecordSQL = `
WITH v AS (
    SELECT * FROM unnest($1::bigint[], $2::text[], $3::text[]) AS v(id, status, provider_id)
), upd AS (
    UPDATE bench_messages m
    SET status = v.status, provider_message_id = v.provider_id, attempts = m.attempts + 1,
        sent_at = now(), updated_at = now()
    FROM v
    WHERE m.id = v.id AND m.status = 'sending'
    RETURNING m.id, m.campaign_id, m.customer_id, m.status, m.provider, m.provider_message_id, m.sent_at
)`

const benchEventData = `json_build_object('message_id', upd.id, 'campaign_id', upd.campaign_id,
    'customer_id', upd.customer_id, 'status', upd.status, 'provider', upd.provider,
    'provider_message_id', upd.provider_message_id, 'sent_at', upd.sent_at)`

func BenchmarkWebhooksOnVsOff(b *testing.B) {
	const (
		perRound = 40000
		batch    = 100
		workers  = 8
		rounds   = 2
	)
	db := newDB(b)
	ctx := context.Background()
	mustExec(b, db, `CREATE TABLE bench_messages (
		id bigserial PRIMARY KEY, campaign_id bigint NOT NULL, customer_id bigint, status text NOT NULL,
		provider text NOT NULL DEFAULT 'mock', provider_message_id text, attempts int NOT NULL DEFAULT 0,
		sent_at timestamptz, created_at timestamptz NOT NULL DEFAULT now(), updated_at timestamptz NOT NULL DEFAULT now())`)
	mustExec(b, db, `CREATE INDEX ON bench_messages (campaign_id, status, id)`)
	mustExec(b, db, `CREATE INDEX ON bench_messages (campaign_id, id)`)

	plain := benchRecordSQL + `
SELECT count(*) FROM upd`
	withEvents := benchRecordSQL + `, events AS (
    ` + EmitSQL("upd", "'message.' || upd.status", benchEventData, "$4") + `
)
SELECT count(*) FROM upd`

	var delivered atomic.Int64
	rcv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		delivered.Add(1)
		w.WriteHeader(http.StatusNoContent)
	}))
	b.Cleanup(rcv.Close)

	var campaign int64
	// round records perRound messages of a fresh campaign and returns msgs/s.
	round := func(query string, wanted []string) float64 {
		campaign++
		mustExec(b, db, `INSERT INTO bench_messages (campaign_id, customer_id, status)
			SELECT $1, g, 'sending' FROM generate_series(1, $2) g`, campaign, perRound)
		var ids []int64
		if err := db.SelectContext(ctx, &ids, `SELECT id FROM bench_messages WHERE campaign_id = $1 ORDER BY id`, campaign); err != nil {
			b.Fatal(err)
		}
		mustExec(b, db, `ANALYZE bench_messages`)
		work := make(chan []int64, len(ids)/batch+1)
		for i := 0; i < len(ids); i += batch {
			work <- ids[i:min(i+batch, len(ids))]
		}
		close(work)
		var wg sync.WaitGroup
		var failed atomic.Value
		began := time.Now()
		for range workers {
			wg.Go(func() {
				for chunk := range work {
					statuses, pids := make([]string, len(chunk)), make([]string, len(chunk))
					for i, id := range chunk {
						statuses[i], pids[i] = "sent", fmt.Sprintf("mock-%d", id)
					}
					args := []any{pq.Array(chunk), pq.Array(statuses), pq.Array(pids)}
					if wanted != nil {
						args = append(args, pq.Array(wanted))
					}
					var n int
					if err := db.GetContext(ctx, &n, query, args...); err != nil {
						failed.Store(err)
						return
					}
				}
			})
		}
		wg.Wait()
		took := time.Since(began)
		if err, ok := failed.Load().(error); ok {
			b.Fatal(err)
		}
		return float64(perRound) / took.Seconds()
	}

	for b.Loop() {
		base := round(plain, nil)
		var off, on, during, after float64
		var endpointID int64
		for r := range rounds {
			off = max(off, round(withEvents, []string{}))

			// on: subscribe, run a dispatcher, record, then drain.
			e, err := NewStore(db.DB).Create(ctx, rcv.URL, []string{string(MessageSent)}, "bench", "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw")
			if err != nil {
				b.Fatal(err)
			}
			endpointID = e.ID
			dctx, stop := context.WithCancel(ctx)
			done := make(chan struct{})
			d := NewDispatcher(db.DB, DispatcherOptions{PollInterval: 100 * time.Millisecond}, discardLog())
			go func() { defer close(done); d.Run(dctx) }() // returns when dctx ends
			delivered.Store(0)
			began := time.Now()
			rate := round(withEvents, []string{string(MessageSent)})
			recorded := time.Since(began)
			during = max(during, float64(delivered.Load())/recorded.Seconds())
			waitFor(b, 10*time.Minute, "the webhook backlog to drain", func() bool {
				return delivered.Load() >= perRound && count(b, db.DB, `SELECT count(*) FROM webhook_tasks`) == 0
			})
			after = max(after, float64(perRound)/time.Since(began).Seconds())
			stop()
			<-done
			on = max(on, rate)
			mustExec(b, db, `DELETE FROM webhook_endpoints WHERE id = $1`, endpointID)
			b.Logf("round %d: off %.0f msgs/s, on %.0f msgs/s", r+1, off, rate)
		}
		b.ReportMetric(base, "baseline_msgs/s")
		b.ReportMetric(off, "off_msgs/s")
		b.ReportMetric(on, "on_msgs/s")
		b.ReportMetric(on/off, "on/off")
		b.ReportMetric(during, "webhooks/s_during")
		b.ReportMetric(after, "webhooks/s_to_drain")
	}
}
