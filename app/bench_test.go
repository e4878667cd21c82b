package app

// Benchmarks of the performance requirements, each against the whole
// app booted in-process (startApp) on a fresh database and Redis prefix:
//
//	go test -run='^$' -bench=. -benchtime=1x ./app/
//
//   - BenchmarkSendHTTP: POST /campaigns/{id}/send with 10,000 and 100,000
//     ids on an API-only replica (worker_concurrency 0); ms/op (and min_ms,
//     max_ms over iterations) is the send request alone, over HTTP.
//     BenchmarkSendFloor (bench_send_test.go) puts the same sends next to
//     their raw PostgreSQL and Redis floor, as ratios.
//   - BenchmarkThroughput: end to end, from the send request until no
//     message of the campaign is pending or sending, with the default mock
//     latency (uniform 50-200 ms, mean 125 ms) and success rate 1 at
//     worker_concurrency 50, 200 and 1,000, sent as {"audience":{"all":true}}
//     (delivery overlaps the chunked creation of messages); at 1,000 also
//     sent as a customer_ids list (every message created before the 202)
//     and at the default success rate 0.92; msgs/s, ratio to the ideal
//     concurrency/0.125 s, and
//     peak_rss_MB, the test process's (app plus client) peak RSS during the
//     run (VmHWM, reset before the send). send_ms is the send request within
//     the run and ratio_after_send the ratio of the delivery phase alone.
//   - BenchmarkCeiling: the same pipeline with zero sender latency (msgs/s
//     end to end, and msgs/s_after_send once the send request returned),
//     next to PostgreSQL's raw batched UPDATE rate measured on the same
//     table right after (pg_batched_updates_rows/s; each message needs two
//     such updates, the claim and the record, hence pg_bound_msgs/s).
//
// Configuration is the default one (config.yaml: worker.batch_size 100,
// database.max_open_conns 40) with the concurrency under test and the
// in-memory ledger; nothing is tuned per run.
//
// The host is shared, so next to wall-time figures each benchmark reports
// the one-minute load average and the CPU spent per message (or per send)
// by this process (go_cpu) and by the PostgreSQL backends of the app's
// database (pg_cpu): CPU per message shows where the work goes even when
// other tenants make the wall time noisy.
//
// The app's log is discarded unless -v is given (then warnings only).

import (
	"bufio"
	"bytes"
	"context"
	"fmt"
	"io"
	"net/http"
	"os"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/jmoiron/sqlx"
	"github.com/lib/pq"

	"github.com/campaignd/dispatch/platform/postgres"
)

// meanMockLatency is the mean of the default mock latency, uniform in
// [50ms, 200ms]: the ideal throughput of C delivery goroutines is C/0.125 s.
const meanMockLatency = 125 * time.Millisecond

// benchConfig is testConfig with the production pacing of the background
// loops and pool size (config.yaml), so the benchmarks measure what a
// deployment runs.
func benchConfig(b *testing.B) Config {
	b.Helper()
	cfg := testConfig(b)
	def, err := Load(nil)
	if err != nil {
		b.Fatal(err)
	}
	cfg.Sweeper = def.Sweeper
	cfg.Database.MaxOpenConns, cfg.Database.MaxIdleConns = def.Database.MaxOpenConns, def.Database.MaxIdleConns
	cfg.RetryBackoffBase = def.RetryBackoffBase
	cfg.Sender.MinLatency, cfg.Sender.MaxLatency = def.Sender.MinLatency, def.Sender.MaxLatency
	cfg.Sender.Ledger = "memory"
	return cfg
}

// benchApp is a running app plus a connection of the benchmark's own to the
// app's database, for bulk setup and cheap progress polling.
type benchApp struct {
	*testApp
	db *sqlx.DB
}

func startBenchApp(b *testing.B, cfg Config) *benchApp {
	b.Helper()
	ta := startApp(b, cfg) // creates and migrates the database
	db, err := postgres.Open(context.Background(), cfg.Database.URL, postgres.Options{MaxOpenConns: 4})
	if err != nil {
		b.Fatal(err)
	}
	// Registered after startApp's cleanup, so it runs before the app stops
	// and the database is dropped.
	b.Cleanup(func() { db.Close() })
	return &benchApp{testApp: ta, db: db}
}

// addCustomers inserts n customers with one statement and returns their ids.
func (ba *benchApp) addCustomers(b *testing.B, n int) []int64 {
	b.Helper()
	ctx := context.Background()
	var ids []int64
	err := ba.db.SelectContext(ctx, &ids, `
INSERT INTO customers (phone, first_name, last_name, location, preferred_product)
SELECT '+1415' || lpad(g::text, 8, '0'), 'First' || g, 'Last' || g, 'Nairobi', 'Shoes'
FROM generate_series(coalesce((SELECT max(id) FROM customers), 0) + 1,
                     coalesce((SELECT max(id) FROM customers), 0) + $1) AS g
RETURNING id`, n)
	if err != nil {
		b.Fatalf("insert %d customers: %v", n, err)
	}
	if _, err := ba.db.ExecContext(ctx, `ANALYZE customers`); err != nil {
		b.Fatal(err)
	}
	return ids
}

// newCampaign creates a draft campaign over HTTP and returns its id.
func (ba *benchApp) newCampaign(b *testing.B) int64 {
	b.Helper()
	var c struct {
		ID int64 `json:"id"`
	}
	code := ba.do(b, "POST", "/campaigns", map[string]any{
		"name": "bench", "channel": "sms",
		"base_template": "Hi {first_name} {last_name}, {preferred_product} are waiting for you in {location}!",
	}, &c)
	if code != http.StatusCreated {
		b.Fatalf("create campaign: status %d", code)
	}
	return c.ID
}

// sendBody encodes {"customer_ids": ids} once, outside any timed section.
func sendBody(ids []int64) []byte {
	var buf bytes.Buffer
	buf.Grow(len(ids)*9 + 20)
	buf.WriteString(`{"customer_ids":[`)
	for i, id := range ids {
		if i > 0 {
			buf.WriteByte(',')
		}
		buf.WriteString(strconv.FormatInt(id, 10))
	}
	buf.WriteString(`]}`)
	return buf.Bytes()
}

// send posts a pre-encoded send request and fails unless it is accepted.
func (ba *benchApp) send(b *testing.B, campaignID int64, body []byte) {
	b.Helper()
	resp, err := ba.client.Post(fmt.Sprintf("%s/campaigns/%d/send", ba.base, campaignID), "application/json", bytes.NewReader(body))
	if err != nil {
		b.Fatal(err)
	}
	raw, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != http.StatusAccepted {
		b.Fatalf("send campaign %d: status %d: %.300s", campaignID, resp.StatusCode, raw)
	}
}

// waitAllFinal returns once no message of the campaign is pending or
// sending (an index probe on (campaign_id, status)); the stats are checked
// over HTTP after.
func (ba *benchApp) waitAllFinal(b *testing.B, campaignID int64, n int, timeout time.Duration) {
	b.Helper()
	deadline := time.Now().Add(timeout)
	// Until the pool has counted n final outcomes, wait on its in-process
	// counters: polling the table would cost PostgreSQL CPU the pipeline
	// needs. The counters move just before each batch is recorded, so the
	// table is then polled until it agrees.
	for ba.pool != nil {
		s := ba.pool.Stats()
		if s.Sent+s.Failed >= int64(n) {
			break
		}
		if time.Now().After(deadline) {
			b.Fatalf("campaign %d: %d of %d messages final after %v", campaignID, s.Sent+s.Failed, n, timeout)
		}
		time.Sleep(5 * time.Millisecond)
	}
	for {
		var active bool
		if err := ba.db.Get(&active, `
SELECT EXISTS (SELECT 1 FROM outbound_messages WHERE campaign_id = $1 AND status IN ('pending', 'sending'))`,
			campaignID); err != nil {
			b.Fatal(err)
		}
		if !active {
			return
		}
		if time.Now().After(deadline) {
			b.Fatalf("campaign %d: messages still active after %v", campaignID, timeout)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// stats reads the campaign's detail over HTTP.
func (ba *benchApp) stats(b *testing.B, campaignID int64) campaignDetail {
	b.Helper()
	var d campaignDetail
	if code := ba.do(b, "GET", fmt.Sprintf("/campaigns/%d", campaignID), nil, &d); code != http.StatusOK {
		b.Fatalf("get campaign %d: status %d", campaignID, code)
	}
	return d
}

// timedSend creates a draft campaign (untimed) and times one send of body
// to it, returning the time and the CPU it cost; the timer is stopped on
// return.
func (ba *benchApp) timedSend(b *testing.B, body []byte) (time.Duration, cpuUsage) {
	b.Helper()
	b.StopTimer()
	id := ba.newCampaign(b)
	before := ba.cpu(b)
	b.StartTimer()
	start := time.Now()
	ba.send(b, id, body)
	d := time.Since(start)
	b.StopTimer()
	return d, ba.cpu(b).sub(before)
}

// BenchmarkSendHTTP times POST /campaigns/{id}/send alone, on an API-only
// replica: one fresh draft campaign per iteration, created untimed.
func BenchmarkSendHTTP(b *testing.B) {
	cfg := benchConfig(b)
	cfg.WorkerConcurrency = 0 // API-only replica: no deliveries compete with the request
	ba := startBenchApp(b, cfg)
	all := ba.addCustomers(b, 100_000)
	// Warm up the connection pools and the statements' plans.
	ba.send(b, ba.newCampaign(b), sendBody(all[:1000]))

	for _, n := range []int{10_000, 100_000} {
		body := sendBody(all[:n])
		b.Run(fmt.Sprintf("ids=%d", n), func(b *testing.B) {
			b.ReportAllocs()
			var total, worst, best time.Duration
			var cpu cpuUsage
			load := loadAvg()
			for range b.N {
				d, c := ba.timedSend(b, body)
				cpu = cpu.add(c)
				b.StartTimer()
				total += d
				worst = max(worst, d)
				if best == 0 || d < best {
					best = d
				}
			}
			b.ReportMetric(float64(total.Microseconds())/1000/float64(b.N), "ms/op")
			b.ReportMetric(float64(best.Microseconds())/1000, "min_ms")
			b.ReportMetric(float64(worst.Microseconds())/1000, "max_ms")
			b.ReportMetric(float64(cpu.goProc.Microseconds())/1000/float64(b.N), "go_cpu_ms/op")
			b.ReportMetric(float64(cpu.postgres.Microseconds())/1000/float64(b.N), "pg_cpu_ms/op")
			b.ReportMetric(max(load, loadAvg()), "loadavg")
		})
	}
}

// throughputRun is one end-to-end delivery run's figures.
type throughputRun struct {
	msgs     int
	elapsed  time.Duration // from the send request until every message is final
	send     time.Duration // the send request alone
	peakRSS  float64       // MB, since the run's start
	sent     int64
	failed   int64
	baseline float64 // MB, RSS just before the send
	cpu      cpuUsage
	load     float64 // host load average, the higher of before and after
}

// runDelivery boots an app with cfg, sends n messages in one request and
// times it until every message is final. With audience the request is
// {"audience":{"all":true}} (the app's database holds exactly the n
// customers), whose messages are materialised in chunks after the 202, so
// delivery overlaps their creation; otherwise it lists the n customer_ids,
// whose messages all exist before the 202.
func runDelivery(b *testing.B, cfg Config, n int, audience bool) throughputRun {
	b.Helper()
	b.StopTimer()
	ba := startBenchApp(b, cfg)
	ids := ba.addCustomers(b, n)
	body := sendBody(ids)
	if audience {
		body = []byte(`{"audience":{"all":true}}`)
	}
	id := ba.newCampaign(b)
	resetPeakRSS(b)
	r := throughputRun{msgs: n, baseline: rssMB(b, "VmRSS"), load: loadAvg()}
	before := ba.cpu(b)
	b.StartTimer()
	start := time.Now()
	ba.send(b, id, body)
	r.send = time.Since(start)
	ba.waitAllFinal(b, id, n, 10*time.Minute)
	r.elapsed = time.Since(start)
	b.StopTimer()
	r.cpu = ba.cpu(b).sub(before)
	r.peakRSS = rssMB(b, "VmHWM")
	r.load = max(r.load, loadAvg())
	d := ba.stats(b, id)
	if d.Stats.Total != int64(n) || d.Stats.Sent+d.Stats.Failed != int64(n) {
		b.Fatalf("campaign %d: stats %+v, want %d messages all final", id, d.Stats, n)
	}
	r.sent, r.failed = d.Stats.Sent, d.Stats.Failed
	if cfg.Sender.SuccessRate >= 1 && r.sent != int64(n) {
		b.Fatalf("campaign %d: %d of %d sent with success rate 1", id, r.sent, n)
	}
	return r
}

// BenchmarkThroughput measures end-to-end delivery with the default mock
// latency (uniform 50-200 ms): enough messages for about 8 s of work at the
// ideal rate concurrency/0.125 s.
func BenchmarkThroughput(b *testing.B) {
	const seconds = 8
	for _, c := range []int{50, 200, 1000} {
		for _, v := range []struct {
			rate     float64
			ids      bool
			postgres bool // the default ledger (benchConfig uses the in-memory one)
		}{{1, false, false}, {1, false, true}, {1, true, false}, {0.92, false, false}} {
			rate := v.rate
			name := fmt.Sprintf("concurrency=%d", c)
			if v.ids || rate < 1 {
				if c != 1000 {
					continue // the variants once, at the largest pool
				}
			}
			if v.postgres {
				name += "/ledger=postgres"
			}
			if v.ids {
				name += "/customer_ids"
			}
			if rate < 1 {
				name += "/success=0.92"
			}
			b.Run(name, func(b *testing.B) {
				ideal := float64(c) / meanMockLatency.Seconds()
				n := int(ideal * seconds)
				var msgs int
				var elapsed, send time.Duration
				var peak, base, load float64
				var cpu cpuUsage
				for range b.N {
					cfg := benchConfig(b)
					cfg.WorkerConcurrency = c
					cfg.Sender.SuccessRate = rate
					if v.postgres {
						cfg.Sender.Ledger = "postgres"
					}
					r := runDelivery(b, cfg, n, !v.ids)
					msgs += r.msgs
					elapsed += r.elapsed
					send += r.send
					peak, base, load = max(peak, r.peakRSS), r.baseline, max(load, r.load)
					cpu.goProc += r.cpu.goProc
					cpu.postgres += r.cpu.postgres
					if rate < 1 {
						b.Logf("success=%.2f: %d sent, %d failed for good", rate, r.sent, r.failed)
					}
				}
				got := float64(msgs) / elapsed.Seconds()
				b.ReportMetric(got, "msgs/s")
				b.ReportMetric(got/ideal, "ratio")
				b.ReportMetric(peak, "peak_rss_MB")
				b.ReportMetric(base, "start_rss_MB")
				b.ReportMetric(float64(n), "msgs")
				b.ReportMetric(load, "loadavg")
				b.ReportMetric(float64(send.Milliseconds())/float64(b.N), "send_ms")
				b.ReportMetric(float64(msgs)/(elapsed-send).Seconds()/ideal, "ratio_after_send")
				cpu.report(b, msgs)
			})
		}
	}
}

// BenchmarkCeiling runs the pipeline with zero sender latency (its own
// ceiling), then times PostgreSQL's raw batched updates of the same rows, in
// batches of worker.batch_size, on the same database: each message costs
// two such updates (the claim and the record).
func BenchmarkCeiling(b *testing.B) {
	const n = 50_000
	const concurrency = 200
	cfg := benchConfig(b)
	cfg.WorkerConcurrency = concurrency
	cfg.Sender.MinLatency, cfg.Sender.MaxLatency = 0, 0
	var pg, pgNoCounters, load float64
	var elapsed, send time.Duration
	var cpu cpuUsage
	for range b.N {
		r := runDelivery(b, cfg, n, false)
		elapsed += r.elapsed
		send += r.send
		pg += pgBatchedUpdateRate(b, cfg, cfg.Worker.BatchSize, true) / float64(b.N)
		pgNoCounters += pgBatchedUpdateRate(b, cfg, cfg.Worker.BatchSize, false) / float64(b.N)
		cpu.goProc += r.cpu.goProc
		cpu.postgres += r.cpu.postgres
		load = max(load, r.load, loadAvg())
	}
	b.ReportMetric(float64(n*b.N)/elapsed.Seconds(), "msgs/s")
	b.ReportMetric(float64(n*b.N)/(elapsed-send).Seconds(), "msgs/s_after_send")
	b.ReportMetric(float64(send.Milliseconds())/float64(b.N), "send_ms")
	b.ReportMetric(load, "loadavg")
	cpu.report(b, n*b.N)
	b.ReportMetric(pg, "pg_batched_updates_rows/s")
	b.ReportMetric(pg/2, "pg_bound_msgs/s")
	b.ReportMetric(float64(n*b.N)/elapsed.Seconds()/(pg/2), "ratio_to_pg_bound")
	// What the stats counters' triggers cost those updates.
	b.ReportMetric(pg/pgNoCounters, "pg_rate_with/without_counters")
	b.ReportMetric(float64(cfg.Worker.BatchSize), "batch")
}

// pgBatchedUpdateRate times claim-like then record-like batched updates of
// every outbound message (the rows the pipeline just delivered), from one
// connection, batch rows per statement, and returns updated rows per second.
// Without counters, the stats triggers are disabled for the measurement (the
// app has finished with the table by then) and enabled again after.
func pgBatchedUpdateRate(b *testing.B, cfg Config, batch int, counters bool) float64 {
	b.Helper()
	ctx := context.Background()
	db, err := postgres.Open(ctx, cfg.Database.URL, postgres.Options{MaxOpenConns: 1})
	if err != nil {
		b.Fatal(err)
	}
	defer db.Close()
	if !counters {
		if _, err := db.ExecContext(ctx, `ALTER TABLE outbound_messages DISABLE TRIGGER USER`); err != nil {
			b.Fatal(err)
		}
		defer db.ExecContext(ctx, `ALTER TABLE outbound_messages ENABLE TRIGGER USER`)
	}
	var ids []int64
	if err := db.SelectContext(ctx, &ids, `SELECT id FROM outbound_messages ORDER BY id`); err != nil {
		b.Fatal(err)
	}
	contents := make([]string, batch)
	statuses := make([]string, batch)
	for i := range contents {
		contents[i] = "Hi First1 Last1, Shoes are waiting for you in Nairobi!"
		statuses[i] = "sent"
	}
	const claimLike = `
UPDATE outbound_messages m SET status = 'sending', updated_at = now()
FROM unnest($1::bigint[]) AS v(id) WHERE m.id = v.id`
	const recordLike = `
UPDATE outbound_messages m SET status = v.status, rendered_content = v.content, updated_at = now()
FROM unnest($1::bigint[], $2::text[], $3::text[]) AS v(id, status, content) WHERE m.id = v.id`
	start := time.Now()
	rows := 0
	for lo := 0; lo < len(ids); lo += batch {
		chunk := ids[lo:min(lo+batch, len(ids))]
		if _, err := db.ExecContext(ctx, claimLike, pq.Array(chunk)); err != nil {
			b.Fatal(err)
		}
		k := len(chunk)
		if _, err := db.ExecContext(ctx, recordLike, pq.Array(chunk), pq.Array(statuses[:k]), pq.Array(contents[:k])); err != nil {
			b.Fatal(err)
		}
		rows += 2 * k
	}
	return float64(rows) / time.Since(start).Seconds()
}

// resetPeakRSS resets the process's VmHWM to its current RSS (Linux 4.0+),
// so the peak read after a run belongs to that run.
func resetPeakRSS(b *testing.B) {
	if err := os.WriteFile("/proc/self/clear_refs", []byte("5"), 0); err != nil {
		b.Logf("cannot reset peak RSS (%v); peak_rss_MB is the process's peak so far", err)
	}
}

// rssMB reads a VmRSS-like field of /proc/self/status, in MB.
func rssMB(b *testing.B, field string) float64 {
	f, err := os.Open("/proc/self/status")
	if err != nil {
		b.Logf("read /proc/self/status: %v", err)
		return 0
	}
	defer f.Close()
	s := bufio.NewScanner(f)
	for s.Scan() {
		rest, ok := strings.CutPrefix(s.Text(), field+":")
		if !ok {
			continue
		}
		kb, err := strconv.ParseFloat(strings.TrimSuffix(strings.TrimSpace(rest), " kB"), 64)
		if err != nil {
			return 0
		}
		return kb / 1024
	}
	return 0
}

// cpuUsage is CPU time spent so far by this process (the app and the
// benchmark's client) and by the PostgreSQL backends connected to the app's
// database. Per message it tells how close a run is to using the machine
// up, which wall time alone cannot on a shared host.
type cpuUsage struct {
	goProc, postgres time.Duration
}

func (ba *benchApp) cpu(b *testing.B) cpuUsage {
	b.Helper()
	var u cpuUsage
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err == nil {
		u.goProc = time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
	}
	var pids []int
	// Client backends only: an autovacuum worker that happens to run in the
	// window (after a million-row insert, say) is not the work measured.
	if err := ba.db.Select(&pids, `
SELECT pid FROM pg_stat_activity WHERE datname = current_database() AND backend_type = 'client backend'`); err != nil {
		b.Logf("list backends: %v", err)
		return u
	}
	for _, pid := range pids {
		raw, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
		if err != nil {
			continue // not on this host, or gone
		}
		// Fields after the command's closing parenthesis; utime and stime
		// are the 14th and 15th fields, in clock ticks (100 a second).
		f := strings.Fields(string(raw[bytes.LastIndexByte(raw, ')')+1:]))
		if len(f) < 13 {
			continue
		}
		ut, _ := strconv.ParseInt(f[11], 10, 64)
		st, _ := strconv.ParseInt(f[12], 10, 64)
		u.postgres += time.Duration(ut+st) * 10 * time.Millisecond
	}
	return u
}

func (u cpuUsage) sub(v cpuUsage) cpuUsage {
	return cpuUsage{goProc: u.goProc - v.goProc, postgres: u.postgres - v.postgres}
}

func (u cpuUsage) add(v cpuUsage) cpuUsage {
	return cpuUsage{goProc: u.goProc + v.goProc, postgres: u.postgres + v.postgres}
}

// perMsg reports CPU microseconds per message.
func (u cpuUsage) report(b *testing.B, msgs int) {
	b.ReportMetric(float64(u.goProc.Microseconds())/float64(msgs), "go_cpu_us/msg")
	b.ReportMetric(float64(u.postgres.Microseconds())/float64(msgs), "pg_cpu_us/msg")
}

// loadAvg is the host's one-minute load average, reported next to wall-time
// figures measured on a shared machine.
func loadAvg() float64 {
	raw, err := os.ReadFile("/proc/loadavg")
	if err != nil {
		return 0
	}
	f := strings.Fields(string(raw))
	v, _ := strconv.ParseFloat(f[0], 64)
	return v
}
