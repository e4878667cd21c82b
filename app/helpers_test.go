package app

import (
	"bytes"
	"context"
	"encoding/json"
	"io"
	"log/slog"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/jmoiron/sqlx"
	"github.com/lib/pq"

	"github.com/campaignd/dispatch/campaign"
	"github.com/campaignd/dispatch/platform/postgres/pgtest"
	"github.com/campaignd/dispatch/platform/redisx/redistest"
)

// testApp is the whole service running in-process on a free port, against a
// database of its own (created by the app itself) and a Redis key prefix of
// its own.
type testApp struct {
	*App
	base string
	// client sends the test admin key with every request that names none,
	// and checks every response against the OpenAPI document.
	client *http.Client
	cancel context.CancelFunc
	done   chan error
}

// testAPIKey is made an admin key by every test app (BOOTSTRAP_API_KEY).
const testAPIKey = "dsp_testsuite_admin_0123456789abcdefghijklmn"

// keyTransport adds "Authorization: Bearer key" to requests that carry no
// Authorization header of their own.
type keyTransport struct {
	key  string
	next http.RoundTripper
}

func (k keyTransport) RoundTrip(r *http.Request) (*http.Response, error) {
	if _, set := r.Header["Authorization"]; !set {
		r = r.Clone(r.Context())
		r.Header.Set("Authorization", "Bearer "+k.key)
	}
	return k.next.RoundTrip(r)
}

// testConfig is the default configuration pointed at fresh storage, with
// fast loops and a fast, always-successful mock sender.
func testConfig(t testing.TB) Config {
	t.Helper()
	cfg, err := Load(nil)
	if err != nil {
		t.Fatal(err)
	}
	_, prefix := redistest.New(t)
	cfg.Database.URL = pgtest.NewDatabase(t)
	cfg.Database.SeedOnStart = false
	// Tests run apps in parallel (and packages in parallel) against one
	// server with max_connections 100, and a test waiting for its parallel
	// subtests keeps its app while others start theirs (eight at once have
	// been seen): keep each app's pool small. Probes add 2 of their own.
	cfg.Database.MaxOpenConns, cfg.Database.MaxIdleConns = 5, 5
	cfg.Redis.URL = redistest.URL()
	cfg.Redis.KeyPrefix = prefix
	cfg.BootstrapAPIKey = testAPIKey
	// The rate limit has its own test; elsewhere it would only add noise.
	cfg.API.RateLimit, cfg.API.RateBurst = 1_000_000, 1_000_000
	cfg.API.Port = 0
	cfg.WorkerConcurrency = 8
	cfg.Sender.SuccessRate = 1
	cfg.Sender.MinLatency, cfg.Sender.MaxLatency = 0, time.Millisecond
	cfg.Sender.Ledger = "memory"
	cfg.RetryBackoffBase = 20 * time.Millisecond
	cfg.Sweeper.Interval = 200 * time.Millisecond
	cfg.Sweeper.PromoteInterval = 20 * time.Millisecond
	cfg.Sweeper.FinishInterval = 50 * time.Millisecond
	return cfg
}

// startApp boots the app with cfg and stops it when the test ends.
func startApp(t testing.TB, cfg Config) *testApp {
	t.Helper()
	log := slog.New(slog.NewTextHandler(io.Discard, nil))
	if testing.Verbose() {
		log = slog.New(slog.NewTextHandler(testWriter{t}, &slog.HandlerOptions{Level: slog.LevelWarn}))
	}
	return startAppWithLog(t, cfg, log)
}

// startAppWithLog is startApp with the app logging to log.
func startAppWithLog(t testing.TB, cfg Config, log *slog.Logger) *testApp {
	t.Helper()
	if err := cfg.Validate(); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	a, err := New(ctx, cfg, log)
	if err != nil {
		cancel()
		t.Fatalf("start app: %v", err)
	}
	ta := &testApp{App: a, base: "http://" + a.Addr(), cancel: cancel, done: make(chan error, 1),
		client: &http.Client{Transport: validatingTransport(t, keyTransport{key: testAPIKey, next: http.DefaultTransport})}}
	go func() { ta.done <- a.Run(ctx) }()
	t.Cleanup(func() { ta.stop(t) })
	return ta
}

// stop shuts the app down as SIGTERM would and fails the test if shutdown
// was not clean. Safe to call twice.
func (ta *testApp) stop(t testing.TB) {
	t.Helper()
	if ta.cancel == nil {
		return
	}
	ta.cancel()
	ta.cancel = nil
	select {
	case err := <-ta.done:
		if err != nil {
			t.Errorf("app.Run: %v", err)
		}
	case <-time.After(30 * time.Second):
		t.Error("app did not shut down within 30s")
	}
	ta.Close()
}

type testWriter struct{ t testing.TB }

func (w testWriter) Write(p []byte) (int, error) {
	w.t.Log(string(bytes.TrimRight(p, "\n")))
	return len(p), nil
}

// do sends a request with a JSON body (nil for none) and decodes the JSON
// response into out (nil to skip). It returns the status.
func (ta *testApp) do(t testing.TB, method, path string, body any, out any, headers ...string) int {
	t.Helper()
	var r io.Reader
	contentType := ""
	if body != nil {
		b, err := json.Marshal(body)
		if err != nil {
			t.Fatal(err)
		}
		r, contentType = bytes.NewReader(b), "application/json"
	}
	status, _, raw := ta.rawRequest(t, method, path, contentType, r, headers...)
	if out != nil {
		if err := json.Unmarshal(raw, out); err != nil {
			t.Fatalf("%s %s: status %d, decode %q: %v", method, path, status, raw, err)
		}
	}
	return status
}

// rawRequest sends method path with body (nil: none) and contentType (""
// sends none) through the validating client, with extra header pairs, and
// returns the status, headers and body.
func (ta *testApp) rawRequest(t testing.TB, method, path, contentType string, body io.Reader, headers ...string) (int, http.Header, []byte) {
	t.Helper()
	req, err := http.NewRequest(method, ta.base+path, body)
	if err != nil {
		t.Fatal(err)
	}
	if contentType != "" {
		req.Header.Set("Content-Type", contentType)
	}
	for i := 0; i+1 < len(headers); i += 2 {
		req.Header.Set(headers[i], headers[i+1])
	}
	resp, err := ta.client.Do(req)
	if err != nil {
		t.Fatalf("%s %s: %v", method, path, err)
	}
	defer resp.Body.Close()
	raw, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatal(err)
	}
	return resp.StatusCode, resp.Header, raw
}

// waitFor polls cond until it holds or timeout passes.
func waitFor(t testing.TB, what string, timeout time.Duration, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out after %v waiting for %s", timeout, what)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// importCSV posts csv to POST /customers/import and fails the test unless
// the import is accepted.
func (ta *testApp) importCSV(t testing.TB, csv string) {
	t.Helper()
	req, err := http.NewRequest(http.MethodPost, ta.base+"/customers/import", strings.NewReader(csv))
	if err != nil {
		t.Fatal(err)
	}
	req.Header.Set("Content-Type", "text/csv")
	resp, err := ta.client.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != http.StatusCreated {
		t.Fatalf("import customers: status %d: %.300s", resp.StatusCode, body)
	}
}

// customerIDs returns the ids of the customers with phones, in that order,
// failing the test if one is missing.
func customerIDs(t testing.TB, db *sqlx.DB, phones []string) []int64 {
	t.Helper()
	var rows []struct {
		ID    int64  `db:"id"`
		Phone string `db:"phone"`
	}
	if err := db.Select(&rows, `SELECT id, phone FROM customers WHERE phone = ANY($1)`, pq.Array(phones)); err != nil {
		t.Fatal(err)
	}
	byPhone := make(map[string]int64, len(rows))
	for _, r := range rows {
		byPhone[r.Phone] = r.ID
	}
	ids := make([]int64, len(phones))
	for i, p := range phones {
		if ids[i] = byPhone[p]; ids[i] == 0 {
			t.Fatalf("customer %s not found", p)
		}
	}
	return ids
}

// requireStatsMatchMessages fails unless campaign id's counters equal a
// recount of its messages: whatever the test put the campaign through, the
// counters kept by triggers must not drift.
func requireStatsMatchMessages(t testing.TB, db *sqlx.DB, id int64) {
	t.Helper()
	r, err := campaign.NewRepo(db).RebuildStats(context.Background(), id)
	if err != nil {
		t.Fatalf("recount stats of campaign %d: %v", id, err)
	}
	if r.Drifted() {
		t.Errorf("campaign %d stats drifted from its messages: counters %+v, messages %+v", id, r.Kept, r.Counted)
	}
}
