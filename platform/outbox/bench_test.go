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
//   - on (writes only): an endpoint subscribed to message.sent, so one
//     event per message is written by the same statement (one outbox row
//     per statement), with the Dispatcher started after the round: the
//     cost of webhooks to the delivery path itself;
//   - on: the same with a Dispatcher delivering the events to a local
//     receiver during the round, competing for the same PostgreSQL (and,
//     here, the same CPUs, receiver included).
//
// baseline, off, on (writes only) and on alternate, rounds times, each round on a fresh
// campaign of perRound messages, and the median of each is reported (the
// host is shared: single rounds vary by a third); after each on round the
// backlog is drained before the next round starts. Reported: msgs/s of
// each, on/off (goal ≥ 0.9), and the webhooks delivered per second while
// the on round was recording and from its start until all were delivered.

import (
	"context"
	"fmt"
	"net/http"
	"net/http/httptest"
	"slices"
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
		rounds   = 3
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

	// onRound subscribes an endpoint and records a round with events; the
	// dispatcher runs during the round (concurrent) or only after it, and
	// the backlog is drained before the next round either way.
	onRound := func(concurrent bool) (rate, during, drain float64) {
		e, err := NewStore(db.DB).Create(ctx, rcv.URL, []string{string(MessageSent)}, "bench", "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw")
		if err != nil {
			b.Fatal(err)
		}
		dctx, stop := context.WithCancel(ctx)
		done := make(chan struct{})
		start := func() {
			d := NewDispatcher(db.DB, DispatcherOptions{PollInterval: 100 * time.Millisecond}, discardLog())
			go func() { defer close(done); d.Run(dctx) }() // returns when dctx ends
		}
		delivered.Store(0)
		if concurrent {
			start()
		}
		began := time.Now()
		rate = round(withEvents, []string{string(MessageSent)})
		during = float64(delivered.Load()) / time.Since(began).Seconds()
		if !concurrent {
			start()
		}
		waitFor(b, 10*time.Minute, "the webhook backlog to drain", func() bool {
			return delivered.Load() >= perRound && count(b, db.DB, `SELECT count(*) FROM webhook_tasks`) == 0
		})
		drain = float64(perRound) / time.Since(began).Seconds()
		stop()
		<-done
		mustExec(b, db, `DELETE FROM webhook_endpoints WHERE id = $1`, e.ID)
		return rate, during, drain
	}
	median := func(xs []float64) float64 {
		xs = slices.Clone(xs)
		slices.Sort(xs)
		return xs[len(xs)/2]
	}
	for b.Loop() {
		var base, off, writes, on, during, drain []float64
		for r := range rounds {
			base = append(base, round(plain, nil))
			off = append(off, round(withEvents, []string{}))
			w, _, _ := onRound(false)
			writes = append(writes, w)
			o, du, dr := onRound(true)
			on, during, drain = append(on, o), append(during, du), append(drain, dr)
			b.Logf("round %d: baseline %.0f, off %.0f, on (writes only) %.0f, on %.0f msgs/s; on/off %.2f; webhooks %.0f/s during, %.0f/s until drained",
				r+1, base[r], off[r], writes[r], on[r], on[r]/off[r], during[r], drain[r])
		}
		b.ReportMetric(median(base), "baseline_msgs/s")
		b.ReportMetric(median(off), "off_msgs/s")
		b.ReportMetric(median(writes), "on_writes_only_msgs/s")
		b.ReportMetric(median(on), "on_msgs/s")
		b.ReportMetric(median(writes)/median(off), "writes_only/off")
		b.ReportMetric(median(on)/median(off), "on/off")
		b.ReportMetric(median(during), "webhooks/s_during")
		b.ReportMetric(median(drain), "webhooks/s_to_drain")
	}
}
