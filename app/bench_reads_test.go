package app

import (
	"context"
	"fmt"
	"io"
	"net/http"
	"os"
	"slices"
	"strconv"
	"strings"
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
// The clients read in phases, one per interval of READS_BENCH_INTERVAL_MS
// (comma-separated milliseconds; default "1000,100"), each phase's figures
// prefixed with its interval: every 1,000 ms is how often the dashboard
// polls a campaign (100 reads a second in all), every 100 ms ten times that
// (1,000 a second). A client whose read takes longer than the interval reads
// again at once. 0 reads back to back: the clients then measure how many
// reads the machine has left while it delivers, and the latencies are 100 /
// that rate.
//
// READS_BENCH_N sets the big campaign's size (default 1,000,000) and
// READS_BENCH_SECONDS each phase's reading time (default 15).
func BenchmarkReadsUnderLoad(b *testing.B) {
	n := envInt(b, "READS_BENCH_N", 1_000_000)
	seconds := envInt(b, "READS_BENCH_SECONDS", 15)
	intervals := envIntervals(b, "READS_BENCH_INTERVAL_MS", []time.Duration{time.Second, 100 * time.Millisecond})
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
	if s := ba.stats(b, bigID).Stats; s.Pending+s.Sending == 0 {
		b.Fatalf("campaign %d finished before the reads began: make READS_BENCH_N larger", bigID)
	}

	kinds := []readKind{
		{"detail_1M", fmt.Sprintf("/campaigns/%d", bigID)},
		{"detail_10k", fmt.Sprintf("/campaigns/%d", smallID)},
		{"list", "/campaigns?page_size=50"},
		{"list_sending", "/campaigns?status=sending&page_size=50"},
	}
	client := &http.Client{Transport: keyTransport{key: testAPIKey, next: &http.Transport{MaxIdleConnsPerHost: readClients}}}
	b.ResetTimer()
	for _, interval := range intervals {
		// One phase per interval, one after the other on the same delivering
		// campaign; each phase's figures are prefixed with its interval.
		prefix := fmt.Sprintf("every%dms_", interval.Milliseconds())
		before := ba.stats(b, bigID).Stats
		poolBefore := ba.App.db.Stats()
		errors, total := readPhase(b, client, ba.base, kinds, interval, seconds, prefix)
		poolAfter := ba.App.db.Stats()
		b.ReportMetric(float64(poolAfter.WaitCount-poolBefore.WaitCount)/float64(seconds), prefix+"pool_waits/s")
		b.ReportMetric(float64((poolAfter.WaitDuration-poolBefore.WaitDuration).Milliseconds())/float64(max(1, poolAfter.WaitCount-poolBefore.WaitCount)), prefix+"pool_wait_mean_ms")
		after := ba.stats(b, bigID).Stats
		if errors > 0 {
			b.Errorf("every %v: %d of %d reads failed", interval, errors, total)
		}
		if after.Pending+after.Sending == 0 {
			b.Errorf("campaign %d finished during the reads every %v: make READS_BENCH_N larger", bigID, interval)
		}
		delivered := (after.Sent + after.Failed) - (before.Sent + before.Failed)
		b.ReportMetric(float64(delivered)/float64(seconds), prefix+"delivered/s_during_reads")
		b.ReportMetric(float64(delivered)/float64(seconds)/(float64(cfg.WorkerConcurrency)/meanMockLatency.Seconds()),
			prefix+"delivery_ratio_during_reads")
	}
	b.StopTimer()
	b.ReportMetric(loadAvg(), "loadavg")
	// Stop the rest of the delivery: the campaign has served its purpose.
	if code := ba.do(b, "POST", fmt.Sprintf("/campaigns/%d/cancel", bigID), nil, nil); code != http.StatusOK {
		b.Errorf("cancel campaign %d: status %d", bigID, code)
	}
}

// readClients is how many clients read at once in BenchmarkReadsUnderLoad.
const readClients = 100

// readKind is one of the reads BenchmarkReadsUnderLoad times.
type readKind struct{ name, path string }

// readPhase runs readClients clients for seconds, each reading the kinds in
// turn every interval (back to back with 0), reports each kind's p50, p99
// and max with prefix, and returns how many reads failed of how many.
func readPhase(b *testing.B, client *http.Client, base string, kinds []readKind, interval time.Duration,
	seconds int, prefix string) (errors, total int) {
	b.Helper()
	type sample struct {
		kind int
		d    time.Duration
		err  bool
	}
	results := make([][]sample, readClients)
	stop := time.Now().Add(time.Duration(seconds) * time.Second)
	var wg sync.WaitGroup
	for c := range readClients {
		wg.Add(1)
		go func() {
			defer wg.Done()
			// Clients start spread over one interval, not all at once.
			next := time.Now().Add(interval * time.Duration(c) / readClients)
			for i := c; time.Now().Before(stop); i++ {
				if wait := time.Until(next); wait > 0 {
					time.Sleep(wait)
				}
				next = time.Now().Add(interval)
				k := i % len(kinds)
				start := time.Now()
				resp, err := client.Get(base + kinds[k].path)
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

	byKind := make([][]time.Duration, len(kinds))
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
		b.ReportMetric(ms(ds[len(ds)/2]), prefix+kinds[k].name+"_p50_ms")
		b.ReportMetric(ms(ds[len(ds)*99/100]), prefix+kinds[k].name+"_p99_ms")
		b.ReportMetric(ms(ds[len(ds)-1]), prefix+kinds[k].name+"_max_ms")
	}
	b.ReportMetric(float64(total)/float64(seconds), prefix+"reads/s")
	if interval > 0 {
		b.ReportMetric(float64(readClients)/interval.Seconds(), prefix+"offered_reads/s")
	}
	b.ReportMetric(float64(errors), prefix+"errors")
	return errors, total
}

// envIntervals reads a comma-separated list of intervals in milliseconds
// (0 allowed: back to back) from the environment, or def.
func envIntervals(b *testing.B, key string, def []time.Duration) []time.Duration {
	b.Helper()
	v := os.Getenv(key)
	if v == "" {
		return def
	}
	var out []time.Duration
	for _, f := range strings.Split(v, ",") {
		n, err := strconv.Atoi(strings.TrimSpace(f))
		if err != nil || n < 0 {
			b.Fatalf("%s=%q: want milliseconds, comma-separated", key, v)
		}
		out = append(out, time.Duration(n)*time.Millisecond)
	}
	return out
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
