package app

// BenchmarkSendAudienceMillion times an audience send to a million customers
// on an API-only replica (worker_concurrency 0, so nothing is delivered and
// the queue only grows):
//
//	go test -run='^$' -bench=SendAudienceMillion -benchtime=1x -timeout 20m ./app/
//
//   - accept_ms: POST /campaigns/{id}/send {"audience":{"all":true}} until
//     its 202, over HTTP;
//   - materialised_s: from the same start until the audience is fully
//     materialised: no dispatch batch of the campaign has a filter left and
//     the campaign has 1,000,000 messages;
//   - ready_peak: the ready list's longest length meanwhile: the feeder
//     queues a bounded amount, not the million (nothing drains it here);
//   - msgs: messages created;
//   - peak_rss_MB: this process's (app plus client) peak RSS during the run
//     (VmHWM, reset just before the send where the kernel allows it);
//   - floor_s: the raw floor for the same rows, measured in the same run just
//     before the send, on the same table: one INSERT INTO outbound_messages
//     (campaign_id, customer_id) SELECT ... FROM customers RETURNING id into
//     a draft campaign of its own, then every id pushed with LPUSH in one
//     pipeline (chunks of 1,000) to a key of the benchmark's own;
//   - cpu_ratio: the CPU the materialisation cost (this process and the
//     PostgreSQL client backends of the app's database, from the send until
//     materialised) over the floor's; wall time on a shared host also
//     counts waiting for a core. The floor's rows are vacuumed (untimed)
//     before the send, so their autovacuum does not land in its window;
//   - ratio: materialised_s / floor_s. The floor's million rows stay in the
//     table, so the send inserts into the larger table: the ratio errs
//     against the send. The send's messages are queued by the feeder as the
//     workers drain the ready list (a bounded list, by design), so its
//     materialised_s counts the rows created, not pushed;
//
// The customers are inserted once, with one INSERT ... SELECT
// generate_series, and vacuumed and analysed. The background loops run at the pacing of
// config.yaml, as deployed.

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"testing"
	"time"

	"github.com/jmoiron/sqlx"
	"github.com/redis/go-redis/v9"

	"github.com/campaignd/dispatch/platform/redisx"
)

func BenchmarkSendAudienceMillion(b *testing.B) {
	const n = 1_000_000
	ctx := context.Background()
	cfg := testConfig(b)
	def, err := Load(nil)
	if err != nil {
		b.Fatal(err)
	}
	cfg.Sweeper = def.Sweeper
	cfg.WorkerConcurrency = 0 // API-only: the ids stay in the queue, countable
	ta := startApp(b, cfg)
	db := audOpenDB(b, cfg)
	rdb, err := redisx.Open(ctx, cfg.Redis.URL)
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { rdb.Close() })
	queueKey := redisx.Keys{Prefix: cfg.Redis.KeyPrefix}.Key(cfg.Queue.Name)

	start := time.Now()
	if _, err := db.ExecContext(ctx, `
INSERT INTO customers (phone, first_name, last_name, location, preferred_product)
SELECT '+1555' || lpad(g::text, 7, '0'), 'First' || g, 'Last' || g,
       (ARRAY['Nairobi', 'Mombasa', 'Kisumu', 'Nakuru'])[g % 4 + 1], 'Running Shoes'
FROM generate_series(1, $1) AS g`, n); err != nil {
		b.Fatalf("insert %d customers: %v", n, err)
	}
	// Vacuumed as well as analysed, as autovacuum leaves a table that has
	// stood a while: a freshly loaded table has no visibility map, so every
	// index-only scan of it (the materialiser's chunks walk customers_pkey)
	// would also read the heap, a cost no deployed database pays.
	if _, err := db.ExecContext(ctx, `VACUUM (ANALYZE) customers`); err != nil {
		b.Fatal(err)
	}
	b.Logf("%d customers inserted and analysed in %v", n, time.Since(start).Round(time.Millisecond))

	floorKey := redisx.Keys{Prefix: cfg.Redis.KeyPrefix}.Key("bench_floor")
	b.Cleanup(func() { rdb.Del(ctx, floorKey) })

	ba := &benchApp{testApp: ta, db: db}
	var sendCPU, floorCPU cpuUsage
	var accept, materialised, floor time.Duration
	var peak float64
	var readyPeak int64
	b.ResetTimer()
	for range b.N {
		b.StopTimer()
		var c struct {
			ID int64 `json:"id"`
		}
		if code := ta.do(b, "POST", "/campaigns", map[string]any{
			"name": "million", "channel": "sms", "base_template": "Hi {first_name}, new {preferred_product} in {location}!",
		}, &c); code != http.StatusCreated {
			b.Fatalf("create campaign: status %d", code)
		}
		before := ba.cpu(b)
		floor += audienceFloor(b, ta, db, rdb, floorKey, n)
		floorCPU = floorCPU.add(ba.cpu(b).sub(before))
		// Untimed: vacuum the floor's million rows now, so that their
		// autovacuum does not run inside the send's window.
		if _, err := db.ExecContext(ctx, `VACUUM (ANALYZE) outbound_messages`); err != nil {
			b.Fatal(err)
		}
		base, err := rdb.LLen(ctx, queueKey).Result()
		if err != nil {
			b.Fatal(err)
		}
		resetPeakRSS(b)
		before = ba.cpu(b)
		b.StartTimer()

		start := time.Now()
		resp, err := ta.client.Post(fmt.Sprintf("%s/campaigns/%d/send", ta.base, c.ID), "application/json",
			bytes.NewReader([]byte(`{"audience":{"all":true}}`)))
		if err != nil {
			b.Fatal(err)
		}
		raw, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		accept += time.Since(start)
		if resp.StatusCode != http.StatusAccepted {
			b.Fatalf("send: status %d: %.300s", resp.StatusCode, raw)
		}
		var res struct {
			Queued int64 `json:"messages_queued"`
		}
		if err := json.Unmarshal(raw, &res); err != nil || res.Queued != n {
			b.Fatalf("send: %s (%v), want %d queued", raw, err, n)
		}

		// A cheap probe (an index probe) while it runs; the messages are
		// counted at the end.
		deadline := start.Add(15 * time.Minute)
		for {
			if time.Now().After(deadline) {
				b.Fatalf("campaign %d not materialised after 15m", c.ID)
			}
			var left int
			if err := db.GetContext(ctx, &left,
				`SELECT count(*) FROM dispatch_batches WHERE campaign_id = $1 AND filter IS NOT NULL`, c.ID); err != nil {
				b.Fatal(err)
			}
			queued, err := rdb.LLen(ctx, queueKey).Result()
			if err != nil {
				b.Fatal(err)
			}
			readyPeak = max(readyPeak, queued-base)
			if left == 0 {
				break
			}
			// Every 100 ms: the probe runs on a client backend of the app's
			// database, so it counts in the send's CPU.
			time.Sleep(100 * time.Millisecond)
		}
		materialised += time.Since(start)
		b.StopTimer()
		sendCPU = sendCPU.add(ba.cpu(b).sub(before))
		peak = max(peak, rssMB(b, "VmHWM"))

		var msgs int
		if err := db.GetContext(ctx, &msgs, `SELECT count(*) FROM outbound_messages WHERE campaign_id = $1`, c.ID); err != nil {
			b.Fatal(err)
		}
		if msgs != n {
			b.Errorf("campaign %d: %d messages, want %d", c.ID, msgs, n)
		}
		if readyPeak > 25_000 {
			b.Errorf("the ready list grew to %d ids: the feeder should keep it near its target", readyPeak)
		}
		b.StartTimer()
	}
	b.StopTimer()
	b.ReportMetric(float64(accept.Microseconds())/1000/float64(b.N), "accept_ms")
	b.ReportMetric(materialised.Seconds()/float64(b.N), "materialised_s")
	b.ReportMetric(floor.Seconds()/float64(b.N), "floor_s")
	b.ReportMetric(materialised.Seconds()/floor.Seconds(), "ratio")
	b.ReportMetric(float64(sendCPU.goProc+sendCPU.postgres)/float64(floorCPU.goProc+floorCPU.postgres), "cpu_ratio")
	b.ReportMetric(sendCPU.goProc.Seconds()/float64(b.N), "go_cpu_s")
	b.ReportMetric(sendCPU.postgres.Seconds()/float64(b.N), "pg_cpu_s")
	b.ReportMetric(floorCPU.goProc.Seconds()/float64(b.N), "floor_go_cpu_s")
	b.ReportMetric(floorCPU.postgres.Seconds()/float64(b.N), "floor_pg_cpu_s")
	b.ReportMetric(loadAvg(), "loadavg")
	b.ReportMetric(n, "msgs")
	b.ReportMetric(peak, "peak_rss_MB")
	b.ReportMetric(float64(readyPeak), "ready_peak")
}

// audienceFloor inserts one message per customer into a fresh draft campaign
// with one INSERT ... SELECT, pushes their ids in one pipeline, and returns
// how long that took (the campaign's creation untimed). The key is emptied
// after.
func audienceFloor(b *testing.B, ta *testApp, db *sqlx.DB, rdb *redis.Client, key string, n int) time.Duration {
	b.Helper()
	ctx := context.Background()
	var c struct {
		ID int64 `json:"id"`
	}
	if code := ta.do(b, "POST", "/campaigns", map[string]any{
		"name": "floor", "channel": "sms", "base_template": "Hi {first_name}",
	}, &c); code != http.StatusCreated {
		b.Fatalf("create campaign: status %d", code)
	}
	start := time.Now()
	var ids []int64
	if err := db.SelectContext(ctx, &ids, `
INSERT INTO outbound_messages (campaign_id, customer_id)
SELECT $1, id FROM customers
RETURNING id`, c.ID); err != nil {
		b.Fatal(err)
	}
	if _, err := rdb.Pipelined(ctx, func(p redis.Pipeliner) error {
		for lo := 0; lo < len(ids); lo += 1000 {
			chunk := ids[lo:min(lo+1000, len(ids))]
			args := make([]any, len(chunk))
			for i, id := range chunk {
				args[i] = id
			}
			p.LPush(ctx, key, args...)
		}
		return nil
	}); err != nil {
		b.Fatal(err)
	}
	d := time.Since(start)
	if len(ids) != n {
		b.Fatalf("floor: %d rows, want %d", len(ids), n)
	}
	if err := rdb.Del(ctx, key).Err(); err != nil {
		b.Fatal(err)
	}
	b.Logf("floor: %d rows inserted and pushed in %v", n, d.Round(time.Millisecond))
	return d
}
