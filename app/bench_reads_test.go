package app

import (
	"context"
	"fmt"
	"io"
	"net/http"
	"os"
	"slices"
	"strconv"
	"sync"
	"testing"
	"time"

	"github.com/lib/pq"
)

// BenchmarkReadsUnderLoad reads campaigns while a 1,000,000-message campaign
// is delivered at full speed (1,000 workers, the default PostgreSQL ledger
// and mock latency): 100 concurrent clients loop over the big campaign's
// detail, a finished 10,000-message campaign's detail, and the campaign list
// with its stats, for a bounded time, and the latencies are reported per
// kind (p50, p99, max) with the number of errors. Reads go through a plain
// HTTP client with an API key: authentication, rate limiting and logging
// included, no response validation.
//
// Each client reads every READS_BENCH_INTERVAL_MS (default 100: ten reads a
// second each, 1,000 a second in all, a dashboard polling ten times faster
// than ours does), or, when a read takes longer, at once after it. 0 reads
// back to back: then the clients measure how many reads the machine has
// left while it delivers, and the latencies are 100 / that rate.
//
// READS_BENCH_N sets the big campaign's size (default 1,000,000) and
// READS_BENCH_SECONDS the reading time (default 15).
func BenchmarkReadsUnderLoad(b *testing.B) {
	n := envInt(b, "READS_BENCH_N", 1_000_000)
	seconds := envInt(b, "READS_BENCH_SECONDS", 15)
	interval := time.Duration(envIntOrZero(b, "READS_BENCH_INTERVAL_MS", 100)) * time.Millisecond
	const clients = 100
	const small = 10_000

	cfg := benchConfig(b)
	cfg.WorkerConcurrency = 1000
	cfg.Sender.Ledger = "postgres" // the default
	ba := startBenchApp(b, cfg)
	ctx := context.Background()
	ids := ba.addCustomers(b, n)

	// A finished campaign of 10,000 messages, created directly.
	smallID := ba.newCampaign(b)
	if _, err := ba.db.ExecContext(ctx, `
WITH m AS (
    INSERT INTO outbound_messages (campaign_id, customer_id, status, rendered_content, sent_at)
    SELECT $1, id, 'sent', 'done', now() FROM unnest($2::bigint[]) AS u(id)
)
UPDATE campaigns SET status = 'sent', started_at = now(), finished_at = now() WHERE id = $1`,
		smallID, pq.Array(ids[:small])); err != nil {
		b.Fatal(err)
	}
	// A few hundred more campaigns, so the list has pages.
	if _, err := ba.db.ExecContext(ctx, `
INSERT INTO campaigns (name, channel, base_template) SELECT 'filler ' || g, 'sms', 'Hi' FROM generate_series(1, 500) g`); err != nil {
		b.Fatal(err)
	}

	bigID := ba.newCampaign(b)
	ba.send(b, bigID, []byte(`{"audience":{"all":true}}`))
	// Read once every message exists (the materialiser creates them while
	// delivery runs), so the detail reads a 1,000,000-message campaign.
	deadline := time.Now().Add(5 * time.Minute)
	for ba.stats(b, bigID).Stats.Total < int64(n) {
		if time.Now().After(deadline) {
			b.Fatalf("campaign %d: not all %d messages created after 5 minutes", bigID, n)
		}
		time.Sleep(200 * time.Millisecond)
	}
	before := ba.stats(b, bigID).Stats
	if before.Pending+before.Sending == 0 {
		b.Fatalf("campaign %d finished before the reads began: make READS_BENCH_N larger", bigID)
	}

	kinds := []struct {
		name, path string
	}{
		{"detail_1M", fmt.Sprintf("/campaigns/%d", bigID)},
		{"detail_10k", fmt.Sprintf("/campaigns/%d", smallID)},
		{"list", "/campaigns?page_size=50"},
		{"list_sending", "/campaigns?status=sending&page_size=50"},
	}
	client := &http.Client{Transport: keyTransport{key: testAPIKey, next: &http.Transport{MaxIdleConnsPerHost: clients}}}
	type sample struct {
		kind int
		d    time.Duration
		err  bool
	}
	results := make([][]sample, clients)
	b.ResetTimer()
	stop := time.Now().Add(time.Duration(seconds) * time.Second)
	var wg sync.WaitGroup
	for c := range clients {
		wg.Add(1)
		go func() {
			defer wg.Done()
			// Clients start spread over one interval, not all at once.
			next := time.Now().Add(interval * time.Duration(c) / clients)
			for i := c; time.Now().Before(stop); i++ {
				if wait := time.Until(next); wait > 0 {
					time.Sleep(wait)
				}
				next = time.Now().Add(interval)
				k := i % len(kinds)
				start := time.Now()
				resp, err := client.Get(ba.base + kinds[k].path)
				failed := err != nil
				if err == nil {
					_, _ = io.Copy(io.Discard, resp.Body)
					resp.Body.Close()
					failed = resp.StatusCode != http.StatusOK
				}
				results[c] = append(results[c], sample{k, time.Since(start), failed})
			}
		}()
	}
	wg.Wait()
	b.StopTimer()
	after := ba.stats(b, bigID).Stats

	byKind := make([][]time.Duration, len(kinds))
	errors, total := 0, 0
	for _, rs := range results {
		for _, s := range rs {
			total++
			if s.err {
				errors++
				continue
			}
			byKind[s.kind] = append(byKind[s.kind], s.d)
		}
	}
	ms := func(d time.Duration) float64 { return float64(d.Microseconds()) / 1000 }
	for k, ds := range byKind {
		if len(ds) == 0 {
			continue
		}
		slices.Sort(ds)
		b.ReportMetric(ms(ds[len(ds)/2]), kinds[k].name+"_p50_ms")
		b.ReportMetric(ms(ds[len(ds)*99/100]), kinds[k].name+"_p99_ms")
		b.ReportMetric(ms(ds[len(ds)-1]), kinds[k].name+"_max_ms")
	}
	b.ReportMetric(float64(total)/float64(seconds), "reads/s")
	if interval > 0 {
		b.ReportMetric(float64(clients)/interval.Seconds(), "offered_reads/s")
	}
	b.ReportMetric(float64(errors), "errors")
	delivered := (after.Sent + after.Failed) - (before.Sent + before.Failed)
	b.ReportMetric(float64(delivered)/float64(seconds), "delivered/s_during_reads")
	b.ReportMetric(float64(delivered)/float64(seconds)/(float64(cfg.WorkerConcurrency)/meanMockLatency.Seconds()), "delivery_ratio_during_reads")
	b.ReportMetric(loadAvg(), "loadavg")
	if errors > 0 {
		b.Errorf("%d of %d reads failed", errors, total)
	}
	// Stop the rest of the delivery: the campaign has served its purpose.
	ba.do(b, "POST", fmt.Sprintf("/campaigns/%d/cancel", bigID), nil, nil)
}

// envIntOrZero reads a non-negative integer from the environment, or def.
func envIntOrZero(b *testing.B, key string, def int) int {
	b.Helper()
	if os.Getenv(key) == "0" {
		return 0
	}
	return envInt(b, key, def)
}

// envInt reads a positive integer from the environment, or def.
func envInt(b *testing.B, key string, def int) int {
	b.Helper()
	v := os.Getenv(key)
	if v == "" {
		return def
	}
	n, err := strconv.Atoi(v)
	if err != nil || n <= 0 {
		b.Fatalf("%s=%q: want a positive integer", key, v)
	}
	return n
}
