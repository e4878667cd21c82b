package app

import (
	"context"
	"fmt"
	"net/http"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/campaignd/dispatch/platform/redisx"
)

// BenchmarkFairness measures what a small send waits while a
// 1,000,000-message campaign is delivering and a pause/resume storm runs:
//
//	go test -run='^$' -bench=Fairness -benchtime=1x -timeout 20m ./app/
//
// One replica with the default configuration (50 workers, the mock's
// 50–200 ms latency) delivers a 1,000,000-customer audience send. Once it is
// delivering, four clients call pause and resume on it and on a second,
// 13,000-message campaign as fast as they can for storm_s seconds, while a
// 3-recipient campaign is sent (after the first half of the storm):
//
//   - accepted_ms: creating the small campaign and sending it, until the 202;
//   - created_ms, queued_ms, first_delivery_ms: from the same start until its
//     messages exist (materialised), until the feeder queued one, and until
//     the first is sent (the bound: 2,000 ms);
//   - all_delivered_ms: until all three are sent;
//   - ready_peak: the ready list's longest length during the storm (sampled
//     every 5 ms);
//   - storm_calls: pause/resume calls made.
func BenchmarkFairness(b *testing.B) {
	const big, medium = 1_000_000, 13_000
	ctx := context.Background()
	cfg := benchConfig(b)
	def, _ := Load(nil)
	cfg.WorkerConcurrency = def.WorkerConcurrency
	ta := startApp(b, cfg)
	db := audOpenDB(b, cfg)
	rdb, err := redisx.Open(ctx, cfg.Redis.URL)
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { rdb.Close() })
	queueKey := redisx.Keys{Prefix: cfg.Redis.KeyPrefix}.Key(cfg.Queue.Name)

	if _, err := db.ExecContext(ctx, `
INSERT INTO customers (phone, first_name, location, preferred_product)
SELECT '+1555' || lpad(g::text, 7, '0'), 'First' || g,
       CASE WHEN g <= $2 THEN 'Mombasa' WHEN g <= $2 + 3 THEN 'Lamu' ELSE 'Nairobi' END, 'Shoes'
FROM generate_series(1, $1) AS g`, big, medium); err != nil {
		b.Fatal(err)
	}
	if _, err := db.ExecContext(ctx, `ANALYZE customers`); err != nil {
		b.Fatal(err)
	}
	newSend := func(name string, audience map[string]any) int64 {
		var c struct {
			ID int64 `json:"id"`
		}
		if code := ta.do(b, "POST", "/campaigns", map[string]any{"name": name, "channel": "sms", "base_template": "Hi {first_name}"}, &c); code != http.StatusCreated {
			b.Fatalf("create %s: %d", name, code)
		}
		if code := ta.do(b, "POST", fmt.Sprintf("/campaigns/%d/send", c.ID), map[string]any{"audience": audience}, nil); code != http.StatusAccepted {
			b.Fatalf("send %s: %d", name, code)
		}
		return c.ID
	}
	bigID := newSend("million", map[string]any{"all": true})
	mediumID := newSend("thirteen thousand", map[string]any{"location": "Mombasa"})
	sent := func(id int64) int {
		var n int
		if err := db.GetContext(ctx, &n, `SELECT count(*) FROM outbound_messages WHERE campaign_id = $1 AND status = 'sent'`, id); err != nil {
			b.Fatal(err)
		}
		return n
	}
	waitFor(b, "the big campaign to deliver", time.Minute, func() bool { return sent(bigID) > 1000 })

	const storm = 20 * time.Second
	var accepted, created, queued, first, all time.Duration
	var peak int64
	var calls atomic.Int64
	b.ResetTimer()
	for range b.N {
		stormCtx, stop := context.WithTimeout(ctx, storm)
		var wg sync.WaitGroup
		for i := range 4 {
			id := []int64{bigID, mediumID}[i%2]
			wg.Go(func() {
				for stormCtx.Err() == nil {
					ta.do(b, "POST", fmt.Sprintf("/campaigns/%d/pause", id), nil, nil)
					ta.do(b, "POST", fmt.Sprintf("/campaigns/%d/resume", id), nil, nil)
					calls.Add(2)
				}
			})
		}
		wg.Go(func() {
			for stormCtx.Err() == nil {
				if n, err := rdb.LLen(ctx, queueKey).Result(); err == nil {
					peak = max(peak, n)
				}
				time.Sleep(5 * time.Millisecond)
			}
		})
		time.Sleep(storm / 2)
		start := time.Now()
		small := newSend("three", map[string]any{"location": "Lamu"})
		accepted += time.Since(start)
		count := func(cond string) func() bool {
			return func() bool {
				var n int
				if err := db.GetContext(ctx, &n, `SELECT count(*) FROM outbound_messages WHERE campaign_id = $1 AND `+cond, small); err != nil {
					b.Fatal(err)
				}
				return n > 0
			}
		}
		waitFor(b, "the small campaign's messages", time.Minute, count("true"))
		created += time.Since(start)
		waitFor(b, "the small campaign's messages queued", time.Minute, count("queued_at IS NOT NULL"))
		queued += time.Since(start)
		waitFor(b, "the small campaign's first delivery", time.Minute, func() bool { return sent(small) >= 1 })
		first += time.Since(start)
		waitFor(b, "the small campaign's deliveries", time.Minute, func() bool { return sent(small) == 3 })
		all += time.Since(start)
		wg.Wait()
		stop()
	}
	b.StopTimer()
	b.ReportMetric(float64(accepted.Milliseconds())/float64(b.N), "accepted_ms")
	b.ReportMetric(float64(created.Milliseconds())/float64(b.N), "created_ms")
	b.ReportMetric(float64(queued.Milliseconds())/float64(b.N), "queued_ms")
	b.ReportMetric(float64(first.Milliseconds())/float64(b.N), "first_delivery_ms")
	b.ReportMetric(float64(all.Milliseconds())/float64(b.N), "all_delivered_ms")
	b.ReportMetric(float64(peak), "ready_peak")
	b.ReportMetric(float64(calls.Load()), "storm_calls")
}
