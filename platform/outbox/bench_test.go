package outbox

// BenchmarkWebhooksOnVsOff measures what webhooks cost the message delivery
// path, in one run, on one fresh schema:
//
//	go test -run='^$' -bench=WebhooksOnVsOff -benchtime=1x ./platform/outbox/
//
// The delivery path is stood in for by its database work, which is all that
// webhooks add to it: messaging's recorder statement (a copy of recordSQL as
// of this writing: a batch of 100 outcomes updating outbound_messages and
// inserting their message_attempts rows, on the real tables of a migrated
// schema), run by 8 goroutines back to back, as fast as PostgreSQL takes
// them. That is the worst case: the real path also waits for the provider
// (the mock's 125 ms on average), which webhooks do not touch, so at the
// app level PostgreSQL has room to spare.
//
//   - baseline: recordSQL as it is;
//   - off: with EmitSQL spliced in as the lead will splice it and no
//     endpoint subscribed (the wanted parameter is empty), which is what
//     every deployment without webhooks runs;
// baseline, off, on (writes only) and on alternate, rounds times, each round on a fresh
// campaign of perRound messages, and the median of each is reported (the
// host is shared: single rounds vary by a third); after each on round the
// backlog is drained before the next round starts. Reported: msgs/s of
// each, on/off (goal ≥ 0.9), and the webhooks delivered per second while
// the on round was recording and from its start until all were delivered.

import (
	"bytes"
	"context"
	"fmt"
	"net/http"
	"net/http/httptest"
	"net/url"
	"os"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/jmoiron/sqlx"
	"github.com/lib/pq"

	"github.com/campaignd/dispatch/platform/postgres"
	"github.com/campaignd/dispatch/platform/postgres/pgtest"
)

// benchRecordSQL is messaging's recordSQL (messaging/repo.go) with upd
// RETURNING what the message events carry; benchEvents is the CTE the lead
// adds after hist.
const benchRecordSQL = `
WITH v AS (
    SELECT * FROM unnest($1::bigint[], $2::text[], $3::text[], $4::text[], $5::bool[], $6::timestamptz[],
                         $7::text[], $8::text[], $9::int[], $10::text[], $11::text[], $12::text[],
                         $13::timestamptz[], $14::int[], $15::text[], $16::text[])
        AS v(id, status, content, err, attempted, next_at,
             provider, provider_id, segments, encoding, cost, currency,
             started_at, duration_ms, result, provider_status)
), upd AS (
    UPDATE outbound_messages m
    SET status = v.status,
        rendered_content = CASE WHEN v.status = 'sent' THEN v.content ELSE m.rendered_content END,
        last_error = CASE WHEN v.err = '' THEN m.last_error ELSE v.err END,
        retry_count = m.retry_count + CASE WHEN v.attempted AND v.status <> 'sent' THEN 1 ELSE 0 END,
        attempts = m.attempts + CASE WHEN v.attempted THEN 1 ELSE 0 END,
        next_attempt_at = v.next_at,
        provider = CASE WHEN v.provider = '' THEN m.provider ELSE v.provider END,
        provider_message_id = CASE WHEN v.status = 'sent' AND v.provider_id <> '' THEN v.provider_id ELSE m.provider_message_id END,
        segments = CASE WHEN v.segments > 0 THEN v.segments ELSE m.segments END,
        encoding = CASE WHEN v.encoding = '' THEN m.encoding ELSE v.encoding END,
        cost = CASE WHEN v.cost = '' THEN m.cost ELSE v.cost::numeric END,
        currency = CASE WHEN v.currency = '' THEN m.currency ELSE v.currency END,
        sent_at = CASE WHEN v.status = 'sent' THEN now() ELSE m.sent_at END,
        updated_at = now()
    FROM v
    WHERE m.id = v.id AND m.status = 'sending'
    RETURNING m.id, m.attempts, m.campaign_id, m.customer_id, m.status, m.provider, m.provider_message_id,
              m.segments, m.last_error, m.sent_at
), hist AS (
    INSERT INTO message_attempts (message_id, attempt, started_at, duration_ms, outcome, error, provider_status)
    SELECT u.id, u.attempts, v.started_at, v.duration_ms, v.result, nullif(v.err, ''), nullif(v.provider_status, '')
    FROM upd u JOIN v ON v.id = u.id
    WHERE v.attempted
    ON CONFLICT (message_id, attempt) DO NOTHING
)`

var benchEvents = `, events AS (
    ` + EmitSQL("upd", "'message.' || upd.status", `json_build_object('message_id', upd.id,
        'campaign_id', upd.campaign_id, 'customer_id', upd.customer_id, 'status', upd.status,
        'provider', upd.provider, 'provider_message_id', upd.provider_message_id, 'segments', upd.segments,
        'error', upd.last_error, 'sent_at', upd.sent_at)`, "$17") + `
)`

func BenchmarkWebhooksOnVsOff(b *testing.B) {
	const (
		perRound = 40000
		batch    = 100
		workers  = 8
		rounds   = 3
	)
	db := newDB(b)
	ctx := context.Background()
	// The recorder and the dispatcher have pools of their own, named, so
	// that the CPU of their PostgreSQL backends can be told apart.
	recDB := namedPool(b, db, "rec", workers)
	dispDB := namedPool(b, db, "disp", 8)
	mustExec(b, db, `INSERT INTO customers (phone) SELECT '+2547' || lpad(g::text, 8, '0') FROM generate_series(1, $1) g`, perRound)

	plain := benchRecordSQL + `
SELECT count(*) FROM upd`
	withEvents := benchRecordSQL + benchEvents + `
SELECT count(*) FROM upd`

	var delivered atomic.Int64
	rcv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		delivered.Add(1)
		w.WriteHeader(http.StatusNoContent)
	}))
	b.Cleanup(rcv.Close)

	// round records perRound messages of a fresh campaign and returns msgs/s.
	round := func(query string, wanted []string) (rate, pgCPU, goCPU float64) {
		var campaign int64
		if err := db.GetContext(ctx, &campaign, `INSERT INTO campaigns (name, channel, status, base_template)
			VALUES ('bench', 'sms', 'sending', 'Hi {first_name}') RETURNING id`); err != nil {
			b.Fatal(err)
		}
		mustExec(b, db, `INSERT INTO outbound_messages (campaign_id, customer_id, status)
			SELECT $1, id, 'sending' FROM customers ORDER BY id`, campaign)
		var ids []int64
		if err := db.SelectContext(ctx, &ids, `SELECT id FROM outbound_messages WHERE campaign_id = $1 ORDER BY id`, campaign); err != nil {
			b.Fatal(err)
		}
		mustExec(b, db, `ANALYZE outbound_messages`)
		work := make(chan []int64, len(ids)/batch+1)
		for i := 0; i < len(ids); i += batch {
			work <- ids[i:min(i+batch, len(ids))]
		}
		close(work)
		var wg sync.WaitGroup
		var failed atomic.Value
		cpu0, go0 := backendCPU(b, db, recDB), processCPU()
		began := time.Now()
		for range workers {
			wg.Go(func() {
				for chunk := range work {
					n := len(chunk)
					statuses, contents, errTexts, providers, pids := make([]string, n), make([]string, n), make([]string, n), make([]string, n), make([]string, n)
					encodings, costs, currencies, results, pstatuses := make([]string, n), make([]string, n), make([]string, n), make([]string, n), make([]string, n)
					attempted, segments, durations := make([]bool, n), make([]int64, n), make([]int64, n)
					next, started := make([]*string, n), make([]string, n)
					now := time.Now().UTC().Format(time.RFC3339Nano)
					for i, id := range chunk {
						statuses[i], contents[i], providers[i], pids[i] = "sent", "Hi Amina, your espresso is waiting", "mock", "mock-"+strconv.FormatInt(id, 10)
						encodings[i], costs[i], currencies[i], results[i] = "GSM-7", "0.0075", "USD", "sent"
						attempted[i], segments[i], durations[i], started[i] = true, 1, 120, now
					}
					args := []any{pq.Array(chunk), pq.Array(statuses), pq.Array(contents), pq.Array(errTexts), pq.Array(attempted),
						pq.Array(next), pq.Array(providers), pq.Array(pids), pq.Array(segments), pq.Array(encodings),
						pq.Array(costs), pq.Array(currencies), pq.Array(started), pq.Array(durations), pq.Array(results),
						pq.Array(pstatuses)}
					if wanted != nil {
						args = append(args, pq.Array(wanted))
					}
					var got int
					if err := recDB.GetContext(ctx, &got, query, args...); err != nil {
						failed.Store(err)
						return
					}
				}
			})
		}
		wg.Wait()
		took := time.Since(began)
		cpu, goUsed := backendCPU(b, db, recDB)-cpu0, processCPU()-go0
		if err, ok := failed.Load().(error); ok {
			b.Fatal(err)
		}
		return float64(perRound) / took.Seconds(), float64(cpu.Microseconds()) / perRound, float64(goUsed.Microseconds()) / perRound
	}

	// onRound subscribes an endpoint and records a round with events; the
	// dispatcher runs during the round (concurrent) or only after it, and
	// the backlog is drained before the next round either way.
	type onResult struct{ rate, pgCPU, goCPU, during, drain, dispCPU float64 }
	onRound := func(concurrent bool) (res onResult) {
		e, err := NewStore(db.DB).Create(ctx, rcv.URL, []string{string(MessageSent)}, "bench", "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw")
		if err != nil {
			b.Fatal(err)
		}
		dctx, stop := context.WithCancel(ctx)
		done := make(chan struct{})
		var disp0 time.Duration
		start := func() {
			disp0 = backendCPU(b, db, dispDB)
			d := NewDispatcher(dispDB, DispatcherOptions{PollInterval: 100 * time.Millisecond}, discardLog())
			go func() { defer close(done); d.Run(dctx) }() // returns when dctx ends
		}
		delivered.Store(0)
		if concurrent {
			start()
		}
		began := time.Now()
		res.rate, res.pgCPU, res.goCPU = round(withEvents, []string{string(MessageSent)})
		res.during = float64(delivered.Load()) / time.Since(began).Seconds()
		if !concurrent {
			start()
		}
		waitFor(b, 10*time.Minute, "the webhook backlog to drain", func() bool {
			return delivered.Load() >= perRound && count(b, db.DB, `SELECT count(*) FROM webhook_tasks`) == 0
		})
		res.drain = float64(perRound) / time.Since(began).Seconds()
		res.dispCPU = float64((backendCPU(b, db, dispDB) - disp0).Microseconds()) / perRound
		stop()
		<-done
		mustExec(b, db, `DELETE FROM webhook_endpoints WHERE id = $1`, e.ID)
		return res
	}
	median := func(xs []float64) float64 {
		xs = slices.Clone(xs)
		slices.Sort(xs)
		return xs[len(xs)/2]
	}
	for b.Loop() {
		var base, off, writes, on, during, drain []float64
		var baseCPU, offCPU, writesCPU, dispCPU, offGo, onGo []float64
		for r := range rounds {
			rate, cpu, goCPU := round(plain, nil)
			base, baseCPU = append(base, rate), append(baseCPU, cpu)
			rate, cpu, goCPU = round(withEvents, []string{})
			off, offCPU, offGo = append(off, rate), append(offCPU, cpu), append(offGo, goCPU)
			w := onRound(false)
			writes, writesCPU, dispCPU = append(writes, w.rate), append(writesCPU, w.pgCPU), append(dispCPU, w.dispCPU)
			o := onRound(true)
			on, during, drain, onGo = append(on, o.rate), append(during, o.during), append(drain, o.drain), append(onGo, o.goCPU)
			b.Logf("round %d (load %.1f): msgs/s baseline %.0f, off %.0f, on (writes only) %.0f, on %.0f; on/off %.2f; "+
				"recorder pg_cpu_us/msg baseline %.1f, off %.1f, on %.1f; go_cpu_us/msg off %.1f, on %.1f; "+
				"webhooks/s %.0f during, %.0f until drained; dispatcher pg_cpu_us/webhook %.1f",
				r+1, loadAvg(), base[r], off[r], writes[r], on[r], on[r]/off[r], baseCPU[r], offCPU[r], writesCPU[r],
				offGo[r], onGo[r], during[r], drain[r], dispCPU[r])
		}
		b.ReportMetric(median(base), "baseline_msgs/s")
		b.ReportMetric(median(off), "off_msgs/s")
		b.ReportMetric(median(writes), "on_writes_only_msgs/s")
		b.ReportMetric(median(on), "on_msgs/s")
		b.ReportMetric(median(writes)/median(off), "writes_only/off")
		b.ReportMetric(median(on)/median(off), "on/off")
		b.ReportMetric(median(offCPU), "off_pg_cpu_us/msg")
		b.ReportMetric(median(writesCPU), "on_pg_cpu_us/msg")
		b.ReportMetric(median(offCPU)/median(writesCPU), "cpu_off/on")
		b.ReportMetric(median(dispCPU), "dispatcher_pg_cpu_us/webhook")
		b.ReportMetric(median(during), "webhooks/s_during")
		b.ReportMetric(median(drain), "webhooks/s_to_drain")
	}
}

// namedPool opens a pool on db's schema whose connections carry an
// application_name of their own.
func namedPool(b *testing.B, db *pgtest.DB, role string, conns int) *sqlx.DB {
	b.Helper()
	u, err := url.Parse(db.URL)
	if err != nil {
		b.Fatal(err)
	}
	q := u.Query()
	q.Set("application_name", "outbox-bench-"+role+"-"+db.Schema)
	u.RawQuery = q.Encode()
	p, err := postgres.Open(context.Background(), u.String(), postgres.Options{MaxOpenConns: conns, MaxIdleConns: conns})
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { p.Close() })
	return p
}

// backendCPU is the CPU time spent so far by the PostgreSQL backends of
// pool (user and system, from /proc; 0 when the server is not on this
// host). Backends that have exited are not counted: the pools keep theirs.
func backendCPU(b *testing.B, db *pgtest.DB, pool *sqlx.DB) time.Duration {
	b.Helper()
	var name string
	if err := pool.Get(&name, `SELECT current_setting('application_name')`); err != nil {
		b.Fatal(err)
	}
	var pids []int
	if err := db.Select(&pids, `SELECT pid FROM pg_stat_activity WHERE application_name = $1`, name); err != nil {
		b.Fatal(err)
	}
	var total time.Duration
	for _, pid := range pids {
		raw, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
		if err != nil {
			continue
		}
		// utime and stime: the 14th and 15th fields, in clock ticks (100 a
		// second), counted after the command's closing parenthesis.
		f := strings.Fields(string(raw[bytes.LastIndexByte(raw, ')')+1:]))
		if len(f) < 13 {
			continue
		}
		ut, _ := strconv.ParseInt(f[11], 10, 64)
		st, _ := strconv.ParseInt(f[12], 10, 64)
		total += time.Duration(ut+st) * 10 * time.Millisecond
	}
	return total
}

// processCPU is the CPU time this process has used (benchmark, dispatcher
// and receiver alike).
func processCPU() time.Duration {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		return 0
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

func loadAvg() float64 {
	raw, err := os.ReadFile("/proc/loadavg")
	if err != nil {
		return 0
	}
	v, _ := strconv.ParseFloat(strings.Fields(string(raw))[0], 64)
	return v
}
