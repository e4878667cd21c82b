package app

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/campaignd/dispatch/platform/logging/logtest"
	"github.com/campaignd/dispatch/platform/redisx"
)

// TestProbesAnswerWhilePoolsAreSaturated: with every connection of the
// shared PostgreSQL pool held by long queries, every connection of the
// shared Redis client held by blocking pops, and API requests queued behind
// them, /health still answers 200 within the check budget through the
// probes' own connections, and /readyz says what is wrong (postgres_pool)
// while its postgres, redis and migrations checks stay ok; once the load is
// gone /readyz is 200 again.
func TestProbesAnswerWhilePoolsAreSaturated(t *testing.T) {
	t.Parallel()
	cfg := testConfig(t)
	cfg.Database.MaxOpenConns, cfg.Database.MaxIdleConns = 4, 4
	ta := startApp(t, cfg)

	// Another client wakes the blocking pops when the test ends: cancelling
	// their context does not interrupt them.
	rdb, err := redisx.Open(context.Background(), cfg.Redis.URL)
	if err != nil {
		t.Fatal(err)
	}
	defer rdb.Close()
	redisConns := ta.rdb.(*redis.Client).Options().PoolSize // the tests run on one node
	popKeys := make([]string, redisConns)
	for i := range popKeys {
		popKeys[i] = cfg.Redis.KeyPrefix + fmt.Sprintf("saturate-%d", i)
	}
	hold, cancel := context.WithCancel(context.Background())
	release := func() {
		cancel()
		for _, k := range popKeys {
			_ = rdb.LPush(context.Background(), k, "wake").Err()
		}
	}
	var held sync.WaitGroup
	defer held.Wait()
	defer release()
	taken := make(chan struct{}, cfg.Database.MaxOpenConns)
	for range cfg.Database.MaxOpenConns {
		held.Go(func() { // ends with hold
			conn, err := ta.db.Conn(hold)
			if err != nil {
				return
			}
			defer conn.Close()
			taken <- struct{}{}
			_, _ = conn.ExecContext(hold, `SELECT pg_sleep(60)`)
		})
	}
	for range cfg.Database.MaxOpenConns {
		select {
		case <-taken:
		case <-time.After(10 * time.Second):
			t.Fatal("the shared pool's connections were not all taken within 10s")
		}
	}
	for _, k := range popKeys {
		held.Go(func() { _ = ta.rdb.BLPop(hold, time.Minute, k).Err() }) // ends when release pushes to k
	}
	waitFor(t, "every connection of the shared Redis client to be taken", 10*time.Second, func() bool {
		ps := ta.rdb.PoolStats()
		return int(ps.TotalConns-ps.IdleConns) >= redisConns
	})
	// Traffic that waits for those connections, as a busy replica's does.
	for range 20 {
		held.Go(func() { // ends when the request does, once hold has ended
			req, _ := http.NewRequestWithContext(hold, http.MethodGet, ta.base+"/customers", nil)
			req.Header.Set("Authorization", "Bearer "+testAPIKey)
			if resp, err := http.DefaultClient.Do(req); err == nil {
				_, _ = io.Copy(io.Discard, resp.Body)
				resp.Body.Close()
			}
		})
	}
	waitFor(t, "requests to wait for a connection", 10*time.Second, func() bool { return ta.db.Stats().WaitCount > 0 })

	var health struct {
		Status string            `json:"status"`
		Checks map[string]string `json:"checks"`
		Pool   struct {
			MaxOpen int `json:"max_open"`
			InUse   int `json:"in_use"`
		} `json:"postgres_pool"`
	}
	start := time.Now()
	code := ta.do(t, "GET", "/health", nil, &health)
	healthTook := time.Since(start)
	if code != http.StatusOK || health.Status != "ok" || health.Checks["postgres"] != "ok" || health.Checks["redis"] != "ok" {
		t.Errorf("/health with the shared pools saturated: %d %+v; want 200 with every check ok", code, health)
	}
	if healthTook > checkBudget {
		t.Errorf("/health took %v, want less than the check budget (%v)", healthTook, checkBudget)
	}
	if health.Pool.InUse != health.Pool.MaxOpen || health.Pool.MaxOpen != cfg.Database.MaxOpenConns {
		t.Errorf("/health postgres_pool = %+v, want all %d connections in use", health.Pool, cfg.Database.MaxOpenConns)
	}

	var ready probeBody
	start = time.Now()
	code = ta.do(t, "GET", "/readyz", nil, &ready)
	readyTook := time.Since(start)
	if code != http.StatusServiceUnavailable || !strings.HasPrefix(ready.Checks["postgres_pool"], "unavailable: pool exhausted") {
		t.Errorf("/readyz with the shared pool saturated: %d %+v; want 503 naming postgres_pool", code, ready)
	}
	for _, name := range []string{"postgres", "redis", "migrations"} {
		if ready.Checks[name] != "ok" {
			t.Errorf("/readyz check %s = %q with the shared pools saturated; want ok through the probes' connections", name, ready.Checks[name])
		}
	}
	if readyTook > checkBudget+time.Second {
		t.Errorf("/readyz took %v, want about the check budget (%v)", readyTook, checkBudget)
	}
	t.Logf("/health %v, /readyz %v: %s", healthTook, readyTook, ready.Checks["postgres_pool"])

	release()
	waitFor(t, "/readyz to be 200 once the load is gone", 15*time.Second, func() bool {
		return ta.do(t, "GET", "/readyz", nil, nil) == http.StatusOK
	})
}

// TestConnectionBudget: a pool that, full, would need more connections than
// the server has left is reported; one that fits is not.
func TestConnectionBudget(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name string
		b    connBudget
		want bool
	}{
		// The issue: max_connections 20 and the default pool of 40.
		{"default pool, small server", connBudget{maxConns: 20, reserved: 3, perReplica: 40 + probeConns}, true},
		{"default pool, default server", connBudget{maxConns: 100, reserved: 3, perReplica: 40 + probeConns}, false},
		{"fits exactly", connBudget{maxConns: 100, reserved: 3, perReplica: 97}, false},
		{"one too many", connBudget{maxConns: 100, reserved: 3, perReplica: 98}, true},
		{"another replica holds the rest", connBudget{maxConns: 100, reserved: 3, others: 60, perReplica: 40 + probeConns}, true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := tt.b.exceeded(); got != tt.want {
				t.Errorf("%+v: exceeded = %v, want %v", tt.b, got, tt.want)
			}
		})
	}

	// At start the app compares its pool with the server's settings.
	logs := &logtest.Buffer{}
	cfg := testConfig(t)
	cfg.Database.MaxOpenConns, cfg.Database.MaxIdleConns = 1000, 8
	ta := startAppWithLog(t, cfg, slog.New(slog.NewJSONHandler(logs, nil)))
	ta.stop(t)
	var warned bool
	for line := range strings.SplitSeq(strings.TrimSpace(logs.String()), "\n") {
		var m map[string]any
		if err := json.Unmarshal([]byte(line), &m); err != nil {
			t.Fatalf("log line %q: %v", line, err)
		}
		msg, _ := m["msg"].(string)
		if m["level"] == "WARN" && strings.Contains(msg, "pool can exhaust the server") && strings.Contains(msg, "database.max_open_conns 1000") {
			warned = true
		}
	}
	if !warned {
		t.Errorf("no warning that a pool of 1000 can exhaust the server; logs:\n%s", logs)
	}
}

// TestImportsBeyondTheLimitAre429: while api.import_concurrency imports run,
// one more is 429 RATE_LIMITED with Retry-After: 1 (and reads nothing);
// once one ends, the next is accepted.
func TestImportsBeyondTheLimitAre429(t *testing.T) {
	t.Parallel()
	cfg := testConfig(t)
	cfg.API.ImportConcurrency = 1
	ta := startApp(t, cfg)

	// The first import streams its body: it holds the only slot until the
	// pipe is closed. Its body cannot be sent twice, so it goes on a
	// connection of its own, never on an idle one the server may have closed.
	pr, pw := io.Pipe()
	defer pw.Close()
	first := make(chan error, 1)
	tr := &http.Transport{}
	defer tr.CloseIdleConnections()
	own := &http.Client{Transport: validatingTransport(t, keyTransport{key: testAPIKey, next: tr})}
	go func() { // ends when the request does, after pw is closed
		req, _ := http.NewRequest(http.MethodPost, ta.base+"/customers/import", pr)
		req.Header.Set("Content-Type", "text/csv")
		resp, err := own.Do(req)
		if err != nil {
			first <- err
			return
		}
		body, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if resp.StatusCode != http.StatusCreated {
			err = fmt.Errorf("status %d, want 201: %s", resp.StatusCode, body)
		}
		first <- err
	}()
	// Rows enough for the import to store a batch or more while the body is
	// still open. It is then surely running: the rows stay invisible until
	// it commits, but their ids are taken from the sequence at once.
	const firstRows = 20_000
	var b strings.Builder
	b.WriteString("phone,first_name\n")
	for i := range firstRows {
		fmt.Fprintf(&b, "+2547%08d,First\n", i)
	}
	if _, err := io.WriteString(pw, b.String()); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "the first import to store rows", 10*time.Second, func() bool {
		select {
		case err := <-first:
			t.Fatalf("the first import ended early: %v", err)
		default:
		}
		var ids int64
		if err := ta.db.Get(&ids, `SELECT CASE WHEN is_called THEN last_value ELSE 0 END FROM customers_id_seq`); err != nil {
			t.Fatal(err)
		}
		return ids > 0
	})

	post := func(body string) *http.Response {
		t.Helper()
		req, _ := http.NewRequest(http.MethodPost, ta.base+"/customers/import", strings.NewReader(body))
		req.Header.Set("Content-Type", "text/csv")
		resp, err := ta.client.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		return resp
	}
	busy := post("phone\n+254711000001\n")
	var env struct {
		Error struct {
			Code string `json:"code"`
		} `json:"error"`
	}
	if err := json.NewDecoder(busy.Body).Decode(&env); err != nil {
		t.Fatal(err)
	}
	busy.Body.Close()
	if busy.StatusCode != http.StatusTooManyRequests || env.Error.Code != "RATE_LIMITED" || busy.Header.Get("Retry-After") != "1" {
		t.Errorf("second import: %d %q, Retry-After %q; want 429 RATE_LIMITED and 1",
			busy.StatusCode, env.Error.Code, busy.Header.Get("Retry-After"))
	}

	if _, err := io.WriteString(pw, "+254700999999,Last\n"); err != nil {
		t.Fatal(err)
	}
	pw.Close()
	if err := <-first; err != nil {
		t.Fatalf("first import: %v", err)
	}
	resp := post("phone\n+254711000001\n")
	resp.Body.Close()
	if resp.StatusCode != http.StatusCreated {
		t.Errorf("import after the first ended: status %d, want 201", resp.StatusCode)
	}
	var n int
	if err := ta.db.Get(&n, `SELECT count(*) FROM customers`); err != nil {
		t.Fatal(err)
	}
	if n != firstRows+2 {
		t.Errorf("%d customers stored, want %d", n, firstRows+2)
	}
}
