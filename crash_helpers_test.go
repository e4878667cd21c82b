//go:build linux || darwin

package main

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/jmoiron/sqlx"
	_ "github.com/lib/pq"
	"github.com/redis/go-redis/v9"

	"github.com/campaignd/dispatch/campaign"
	"github.com/campaignd/dispatch/platform/logging/logtest"
	"github.com/campaignd/dispatch/platform/postgres/pgtest"
	"github.com/campaignd/dispatch/platform/redisx/redistest"
)

// The crash tests run the real binary as a subprocess and kill it in the
// ways production kills it (SIGKILL, SIGTERM, a Redis flush), then read the
// outcome straight from PostgreSQL: every message final, and the mock
// provider's ledger (mock_deliveries) holding exactly one row per sent
// message and none for a failed one.

var (
	dispatchBin string // built once by TestMain
	buildErr    error
)

func TestMain(m *testing.M) {
	flag.Parse()
	if testing.Short() {
		os.Exit(m.Run())
	}
	dir, err := os.MkdirTemp("", "dispatch-crash-")
	if err != nil {
		fmt.Fprintln(os.Stderr, "crash tests: temp dir:", err)
		os.Exit(1)
	}
	// Built without -race even under `go test -race`: the subprocess must
	// be fast enough that the timings the tests rely on hold on 2 cores.
	bin := filepath.Join(dir, "dispatch")
	cmd := exec.Command("go", "build", "-o", bin, ".")
	if out, err := cmd.CombinedOutput(); err != nil {
		buildErr = fmt.Errorf("go build: %v\n%s", err, out)
	} else {
		dispatchBin = bin
	}
	code := m.Run()
	os.RemoveAll(dir)
	os.Exit(code)
}

// requireBinary skips in -short mode and fails when TestMain could not build
// the binary.
func requireBinary(t testing.TB) {
	t.Helper()
	if testing.Short() {
		t.Skip("crash tests run the built binary against PostgreSQL and Redis; skipped in -short mode")
	}
	if buildErr != nil {
		t.Fatalf("cannot build the dispatch binary: %v", buildErr)
	}
}

// Timing constants of the subprocess, in one place so the deadlines below
// can be derived from them.
const (
	crashLease        = 3 * time.Second
	crashDrainTimeout = 5 * time.Second
	crashConsumerTTL  = 2 * time.Second
)

// baseCrashVars is the environment every subprocess gets on top of its
// storage: fast loops, a flaky mock sender with a PostgreSQL ledger, short
// leases. Tests may override any key.
// crashAPIKey is the admin key every process under test is started with.
const crashAPIKey = "dsp_crashtests_admin_0123456789abcdefghijkl"

func baseCrashVars() map[string]string {
	return map[string]string{
		"BOOTSTRAP_API_KEY":         crashAPIKey,
		"API_RATE_LIMIT":            "100000",
		"API_RATE_BURST":            "100000",
		"LOG_FORMAT":                "json",
		"LOG_LEVEL":                 "info",
		"DATABASE_SEED_ON_START":    "false",
		"DATABASE_MAX_OPEN_CONNS":   "6", // with the app tests running beside them, stay well under max_connections=100
		"DATABASE_MAX_IDLE_CONNS":   "6", // = max open: no connection churn under load
		"WORKER_CONCURRENCY":        "20",
		"SENDER_LEDGER":             "postgres",
		"SENDER_SUCCESS_RATE":       "0.8",
		"SENDER_MIN_LATENCY":        "5ms",
		"SENDER_MAX_LATENCY":        "30ms",
		"RETRY_BACKOFF_BASE":        "50ms",
		"RETRY_BACKOFF_MAX":         "500ms",
		"MAX_RETRY_COUNT":           "5",
		"WORKER_SEND_TIMEOUT":       "1s",
		"WORKER_LEASE":              crashLease.String(),
		"WORKER_HEARTBEAT_INTERVAL": "300ms",
		"WORKER_CONSUMER_TTL":       crashConsumerTTL.String(),
		"SWEEPER_INTERVAL":          "300ms",
		"SWEEPER_FINISH_INTERVAL":   "200ms",
		"WORKER_DRAIN_TIMEOUT":      crashDrainTimeout.String(),
	}
}

// crashEnv is one test's world: a database of its own (created by the first
// process), a Redis key prefix of its own, the processes started so far and
// the campaign under test.
type crashEnv struct {
	t        testing.TB
	vars     map[string]string
	redisURL string
	db       *sqlx.DB // the test's own connection to DATABASE_URL, opened after the first start

	mu    sync.Mutex
	procs []*dispatchProc

	campaignID int64
	messages   int
}

func newCrashEnv(t testing.TB, redisURL string, overrides map[string]string) *crashEnv {
	t.Helper()
	requireBinary(t)
	dbURL := pgtest.NewDatabase(t) // dropped last: registered first
	prefix := "crash:" + randomHex(6) + ":"

	e := &crashEnv{t: t, redisURL: redisURL, vars: baseCrashVars()}
	for k, v := range overrides {
		e.vars[k] = v
	}
	e.vars["DATABASE_URL"] = dbURL
	e.vars["REDIS_KEY_PREFIX"] = prefix
	e.vars["API_PORT"] = strconv.Itoa(freePort(t))

	// An empty redisURL leaves the Redis to the caller (a private cluster:
	// newClusterCrashEnv), whose servers take their keys with them.
	if redisURL != "" {
		e.vars["REDIS_URL"] = redisURL
		t.Cleanup(func() { deletePrefix(t, redisURL, prefix) })
	}
	t.Cleanup(func() {
		if e.db != nil {
			e.db.Close()
		}
	})
	// Runs after every process was killed (cleanups run last-in first-out),
	// so the logs are complete.
	t.Cleanup(func() {
		if !t.Failed() {
			return
		}
		e.mu.Lock()
		defer e.mu.Unlock()
		for _, p := range e.procs {
			t.Logf("---- output of process %q (pid %d) ----\n%s", p.name, p.pid(), tail(p.out.String(), 64<<10))
		}
	})
	return e
}

// env is the subprocess environment: a minimal base (so that the caller's
// own DATABASE_URL, API_PORT... cannot leak in) plus the test's keys, and
// then one process's own (extra, may be nil).
func (e *crashEnv) env(extra map[string]string) []string {
	out := []string{}
	for _, k := range []string{"PATH", "HOME", "TMPDIR", "TZ"} {
		if v, ok := os.LookupEnv(k); ok {
			out = append(out, k+"="+v)
		}
	}
	vars := make(map[string]string, len(e.vars)+len(extra))
	for k, v := range e.vars {
		vars[k] = v
	}
	for k, v := range extra {
		vars[k] = v
	}
	keys := make([]string, 0, len(vars))
	for k := range vars {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	for _, k := range keys {
		out = append(out, k+"="+vars[k])
	}
	return out
}

// dispatchProc is one run of the binary.
type dispatchProc struct {
	name  string
	cmd   *exec.Cmd
	out   *logtest.Buffer
	base  string
	done  chan struct{} // closed when the process has exited and its output is drained
	state *os.ProcessState
}

func (p *dispatchProc) pid() int {
	if p.cmd.Process == nil {
		return 0
	}
	return p.cmd.Process.Pid
}

func (p *dispatchProc) exited() bool {
	select {
	case <-p.done:
		return true
	default:
		return false
	}
}

// signalGroup sends sig to the process's whole group.
func (p *dispatchProc) signalGroup(sig syscall.Signal) error {
	return syscall.Kill(-p.cmd.Process.Pid, sig)
}

// wait returns true once the process exited, false after timeout.
func (p *dispatchProc) wait(timeout time.Duration) bool {
	select {
	case <-p.done:
		return true
	case <-time.After(timeout):
		return false
	}
}

// kill SIGKILLs the process group and waits for the process to be gone.
func (p *dispatchProc) kill(t testing.TB) {
	t.Helper()
	if err := p.signalGroup(syscall.SIGKILL); err != nil && !p.exited() {
		t.Fatalf("SIGKILL %s: %v", p.name, err)
	}
	if !p.wait(10 * time.Second) {
		t.Fatalf("process %s still running 10s after SIGKILL", p.name)
	}
}

// start runs the binary with the test's environment and waits until its
// /health answers 200. It retries with another port if the chosen one was
// taken meanwhile.
func (e *crashEnv) start(name string) *dispatchProc {
	e.t.Helper()
	return e.startWith(name, nil)
}

// startReplica starts one more process beside those running, on a port of
// its own, with extra (may be nil) on top of the test's environment.
func (e *crashEnv) startReplica(name string, extra map[string]string) *dispatchProc {
	e.t.Helper()
	own := map[string]string{"API_PORT": strconv.Itoa(freePort(e.t))}
	for k, v := range extra {
		own[k] = v
	}
	return e.startWith(name, own)
}

// startWith is start with extra (may be nil) on top of the test's
// environment, for this process only.
func (e *crashEnv) startWith(name string, extra map[string]string) *dispatchProc {
	t := e.t
	t.Helper()
	for attempt := 1; ; attempt++ {
		p, err := e.startOnce(name, extra)
		if err == nil {
			return p
		}
		if attempt < 3 && strings.Contains(p.out.String(), "listen on port") {
			if _, own := extra["API_PORT"]; own {
				t.Logf("port %s was taken; retrying with another", extra["API_PORT"])
				extra["API_PORT"] = strconv.Itoa(freePort(t))
				continue
			}
			t.Logf("port %s was taken; retrying with another", e.vars["API_PORT"])
			e.vars["API_PORT"] = strconv.Itoa(freePort(t))
			continue
		}
		t.Fatalf("start %s: %v", name, err)
	}
}

func (e *crashEnv) startOnce(name string, extra map[string]string) (*dispatchProc, error) {
	t := e.t
	cmd := exec.Command(dispatchBin)
	cmd.Env = e.env(extra)
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	out := &logtest.Buffer{}
	cmd.Stdout, cmd.Stderr = out, out
	cmd.WaitDelay = 5 * time.Second
	port := e.vars["API_PORT"]
	if p, ok := extra["API_PORT"]; ok {
		port = p
	}
	p := &dispatchProc{name: name, cmd: cmd, out: out, done: make(chan struct{}),
		base: "http://127.0.0.1:" + port}
	started := time.Now()
	if err := cmd.Start(); err != nil {
		return p, err
	}
	e.mu.Lock()
	e.procs = append(e.procs, p)
	e.mu.Unlock()
	go func() {
		_ = cmd.Wait()
		p.state = cmd.ProcessState
		close(p.done)
	}()
	t.Cleanup(func() {
		if !p.exited() {
			_ = p.signalGroup(syscall.SIGKILL)
			p.wait(10 * time.Second)
		}
	})

	client := &http.Client{Timeout: 2 * time.Second}
	deadline := time.Now().Add(60 * time.Second)
	for {
		if p.exited() {
			return p, fmt.Errorf("process exited during start-up: %v", p.state)
		}
		resp, err := client.Get(p.base + "/health")
		if err == nil {
			io.Copy(io.Discard, resp.Body)
			resp.Body.Close()
			if resp.StatusCode == http.StatusOK {
				break
			}
		}
		if time.Now().After(deadline) {
			return p, fmt.Errorf("/health not 200 within 60s (last: %v)", err)
		}
		time.Sleep(25 * time.Millisecond)
	}
	e.event("process %q (pid %d) healthy after %v", name, p.pid(), time.Since(started).Round(time.Millisecond))

	if e.db == nil {
		// The test reads PostgreSQL itself, not through a pooler the
		// processes may be given (DATABASE_DIRECT_URL).
		dsn := e.vars["DATABASE_URL"]
		if d := e.vars["DATABASE_DIRECT_URL"]; d != "" {
			dsn = d
		}
		db, err := sqlx.Connect("postgres", dsn)
		if err != nil {
			return p, fmt.Errorf("test connection to the app's database: %w", err)
		}
		db.SetMaxOpenConns(2)
		e.db = db
	}
	return p, nil
}

// ---- client side: data set-up over HTTP ----

func (p *dispatchProc) do(t testing.TB, method, path, contentType string, body []byte, want int, out any) {
	t.Helper()
	req, err := http.NewRequest(method, p.base+path, bytes.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	if contentType != "" {
		req.Header.Set("Content-Type", contentType)
	}
	req.Header.Set("Authorization", "Bearer "+crashAPIKey)
	client := &http.Client{Timeout: 60 * time.Second}
	resp, err := client.Do(req)
	if err != nil {
		t.Fatalf("%s %s: %v", method, path, err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	if resp.StatusCode != want {
		t.Fatalf("%s %s: status %d, want %d: %s", method, path, resp.StatusCode, want, b)
	}
	if out != nil {
		if err := json.Unmarshal(b, out); err != nil {
			t.Fatalf("%s %s: decode %s: %v", method, path, b, err)
		}
	}
}

// setupCampaign imports n customers as CSV, creates an SMS campaign and
// sends it to all of them, as a client would.
func (e *crashEnv) setupCampaign(p *dispatchProc, n int) {
	e.t.Helper()
	ids := e.importCustomers(p, n)
	e.createCampaign(p)
	e.sendCampaign(p, ids)
}

// importCustomers imports n customers as CSV and returns their ids.
func (e *crashEnv) importCustomers(p *dispatchProc, n int) []int64 {
	t := e.t
	t.Helper()
	var csv strings.Builder
	csv.WriteString("phone,first_name,last_name,location,preferred_product\n")
	for i := range n {
		fmt.Fprintf(&csv, "+2547120%05d,First%d,Last%d,Nairobi,Shoes\n", i, i, i)
	}
	p.do(t, "POST", "/customers/import", "text/csv", []byte(csv.String()), http.StatusCreated, nil)

	var ids []int64
	if err := e.db.Select(&ids, `SELECT id FROM customers ORDER BY id`); err != nil {
		t.Fatal(err)
	}
	if len(ids) != n {
		t.Fatalf("imported %d customers, want %d", len(ids), n)
	}
	return ids
}

// createCampaign creates an SMS campaign and makes it the env's campaign
// under test.
func (e *crashEnv) createCampaign(p *dispatchProc) {
	t := e.t
	t.Helper()
	var camp struct {
		ID int64 `json:"id"`
	}
	body, _ := json.Marshal(map[string]string{"name": "crash " + t.Name(), "channel": "sms", "base_template": "Hi {first_name}!"})
	p.do(t, "POST", "/campaigns", "application/json", body, http.StatusCreated, &camp)
	if camp.ID == 0 {
		t.Fatal("POST /campaigns returned no id")
	}
	e.campaignID, e.messages = camp.ID, 0
}

// sendCampaign sends the campaign under test to ids and returns once the
// send was accepted (202).
func (e *crashEnv) sendCampaign(p *dispatchProc, ids []int64) {
	t := e.t
	t.Helper()
	body, _ := json.Marshal(map[string][]int64{"customer_ids": ids})
	var sent struct {
		MessagesQueued int `json:"messages_queued"`
	}
	p.do(t, "POST", fmt.Sprintf("/campaigns/%d/send", e.campaignID), "application/json", body, http.StatusAccepted, &sent)
	if sent.MessagesQueued != len(ids) {
		t.Fatalf("send queued %d messages, want %d", sent.MessagesQueued, len(ids))
	}
	e.messages = len(ids)
}

// ---- PostgreSQL side: progress and the final verdict ----

type msgCounts struct {
	Messages int `db:"messages"`
	Pending  int `db:"pending"`
	Sending  int `db:"sending"`
	Sent     int `db:"sent"` // accepted by the provider: sent, delivered or undelivered
	Failed   int `db:"failed"`
}

func (c msgCounts) active() int { return c.Pending + c.Sending }
func (c msgCounts) final() int  { return c.Sent + c.Failed }

func (c msgCounts) String() string {
	return fmt.Sprintf("messages=%d pending=%d sending=%d sent=%d failed=%d",
		c.Messages, c.Pending, c.Sending, c.Sent, c.Failed)
}

func (e *crashEnv) counts() msgCounts {
	e.t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	var c msgCounts
	err := e.db.GetContext(ctx, &c, `
SELECT count(*) AS messages,
       count(*) FILTER (WHERE status = 'pending') AS pending,
       count(*) FILTER (WHERE status = 'sending') AS sending,
       count(*) FILTER (WHERE status IN ('sent', 'delivered', 'undelivered')) AS sent,
       count(*) FILTER (WHERE status = 'failed')  AS failed
FROM outbound_messages WHERE campaign_id = $1`, e.campaignID)
	if err != nil {
		e.t.Fatalf("count messages: %v", err)
	}
	return c
}

func (e *crashEnv) campaignStatus() string {
	e.t.Helper()
	var s string
	if err := e.db.Get(&s, `SELECT status FROM campaigns WHERE id = $1`, e.campaignID); err != nil {
		e.t.Fatalf("read campaign status: %v", err)
	}
	return s
}

// waitSentAbove polls until more than frac of the messages are sent while p
// runs, and returns the counts it saw. It fails if p dies or if the run got
// past 90% before the poll noticed (the test would no longer be mid-run).
func (e *crashEnv) waitSentAbove(p *dispatchProc, frac float64) msgCounts {
	t := e.t
	t.Helper()
	threshold := int(frac * float64(e.messages))
	deadline := time.Now().Add(60 * time.Second)
	for {
		c := e.counts()
		if c.Sent > threshold {
			if c.Sent >= e.messages*9/10 || c.active() == 0 {
				t.Fatalf("run too far along to interrupt mid-run: %v (slow the sender down)", c)
			}
			return c
		}
		if p.exited() {
			t.Fatalf("process %s exited before %.0f%% of messages were sent: %v", p.name, frac*100, p.state)
		}
		if time.Now().After(deadline) {
			t.Fatalf("fewer than %d messages sent within 60s: %v", threshold, c)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// waitAllFinal polls until no message is pending or sending and the
// campaign left sending, and returns the final counts.
func (e *crashEnv) waitAllFinal(p *dispatchProc) msgCounts {
	t := e.t
	t.Helper()
	start := time.Now()
	deadline := start.Add(60 * time.Second)
	var c msgCounts
	for {
		c = e.counts()
		if c.active() == 0 && e.campaignStatus() != "sending" {
			break
		}
		if p != nil && p.exited() {
			t.Fatalf("process %s exited before the campaign finished: %v; %v", p.name, p.state, c)
		}
		if time.Now().After(deadline) {
			t.Fatalf("messages still active 60s later: %v (campaign %s)", c, e.campaignStatus())
		}
		time.Sleep(50 * time.Millisecond)
	}
	e.event("all %d messages final, %v after the last fault or restart", c.Messages, time.Since(start).Round(time.Millisecond))
	return c
}

// deliveredNotSent counts the campaign's messages the provider has
// delivered (a ledger row) that are not recorded as sent: the window between
// the provider's acceptance and the worker recording the outcome.
func (e *crashEnv) deliveredNotSent() int {
	e.t.Helper()
	var n int
	err := e.db.Get(&n, `
SELECT count(*) FROM outbound_messages m JOIN mock_deliveries d ON d.message_id = m.id
WHERE m.campaign_id = $1 AND m.status <> 'sent'`, e.campaignID)
	if err != nil {
		e.t.Fatalf("count delivered but unrecorded messages: %v", err)
	}
	return n
}

type ledgerCounts struct {
	Rows          int `db:"rows"`           // ledger rows for the campaign's messages
	Calls         int `db:"calls"`          // sum(calls): every Send that reached the ledger
	SentWithRow   int `db:"sent_with_row"`  // sent messages with a ledger row
	NotSentRows   int `db:"not_sent_rows"`  // ledger rows of messages not sent (must be 0)
	ContentDiffer int `db:"content_differ"` // sent messages whose ledger content differs from rendered_content
	TableRows     int `db:"table_rows"`     // every row in mock_deliveries (only this campaign exists)
}

// verifyExactlyOnce asserts the reliability guarantees at the end of a run
// and logs the counts.
func (e *crashEnv) verifyExactlyOnce(c msgCounts) {
	t := e.t
	t.Helper()
	var l ledgerCounts
	err := e.db.Get(&l, `
SELECT count(d.message_id)                                                   AS rows,
       coalesce(sum(d.calls), 0)                                             AS calls,
       count(d.message_id) FILTER (WHERE m.status = 'sent')                  AS sent_with_row,
       count(d.message_id) FILTER (WHERE m.status <> 'sent')                 AS not_sent_rows,
       count(d.message_id) FILTER (WHERE m.status = 'sent'
                                     AND m.rendered_content IS DISTINCT FROM d.content) AS content_differ,
       (SELECT count(*) FROM mock_deliveries)                                AS table_rows
FROM outbound_messages m
JOIN mock_deliveries d ON d.message_id = m.id
WHERE m.campaign_id = $1`, e.campaignID)
	if err != nil {
		t.Fatalf("read ledger: %v", err)
	}
	status := e.campaignStatus()
	t.Logf("COUNTS %s: messages=%d sent=%d failed=%d ledger_rows=%d ledger_calls=%d absorbed_redeliveries=%d campaign=%s",
		t.Name(), c.Messages, c.Sent, c.Failed, l.Rows, l.Calls, l.Calls-l.Rows, status)

	if c.Messages != e.messages {
		t.Errorf("campaign has %d messages, want %d", c.Messages, e.messages)
	}
	if c.active() != 0 {
		t.Errorf("messages not final: %v", c)
	}
	if l.Rows != c.Sent {
		t.Errorf("ledger holds %d deliveries for the campaign but %d messages are sent", l.Rows, c.Sent)
	}
	if l.SentWithRow != c.Sent {
		t.Errorf("%d sent messages have no ledger row (sent without being delivered)", c.Sent-l.SentWithRow)
	}
	if l.NotSentRows != 0 {
		var ids []struct {
			ID          int64     `db:"id"`
			Status      string    `db:"status"`
			Retry       int       `db:"retry_count"`
			Calls       int       `db:"calls"`
			Err         string    `db:"last_error"`
			DeliveredAt time.Time `db:"delivered_at"`
			UpdatedAt   time.Time `db:"updated_at"`
		}
		_ = e.db.Select(&ids, `
SELECT m.id, m.status, m.retry_count, d.calls, coalesce(m.last_error, '') AS last_error,
       d.delivered_at, m.updated_at
FROM outbound_messages m JOIN mock_deliveries d ON d.message_id = m.id
WHERE m.campaign_id = $1 AND m.status <> 'sent' ORDER BY m.id LIMIT 20`, e.campaignID)
		for _, m := range ids {
			t.Errorf("message %d is %s after %d failed attempts (last error %q, last update %s) although the provider "+
				"delivered it at %s (%d ledger calls): the customer got a message the service reports as %s",
				m.ID, m.Status, m.Retry, m.Err, m.UpdatedAt.UTC().Format(stampFormat), m.DeliveredAt.UTC().Format(stampFormat),
				m.Calls, m.Status)
		}
		t.Errorf("%d messages that are not sent were delivered by the provider", l.NotSentRows)
	}
	if l.ContentDiffer != 0 {
		t.Errorf("%d sent messages store a text other than the one delivered", l.ContentDiffer)
	}
	if l.TableRows != l.Rows {
		t.Errorf("mock_deliveries holds %d rows, %d of them for the campaign's messages", l.TableRows, l.Rows)
	}
	if status != "sent" {
		t.Errorf("campaign status %q, want sent", status)
	}
	e.verifyStatsCounters()
}

// verifyStatsCounters asserts that the campaign's counters (campaign_stats,
// kept by triggers) equal a recount of its messages by status: they must
// not drift whatever the run went through (kills, retries, reclaims,
// flushes, outages, receipts).
func (e *crashEnv) verifyStatsCounters() {
	e.t.Helper()
	r, err := campaign.NewRepo(e.db).RebuildStats(context.Background(), e.campaignID)
	if err != nil {
		e.t.Fatalf("recount stats: %v", err)
	}
	if r.Drifted() {
		e.t.Errorf("campaign stats drifted from its messages: counters %+v, messages %+v", r.Kept, r.Counted)
	}
}

// ---- small helpers ----

// stampFormat matches the wall-clock times in the subprocess's JSON logs,
// so events in the test log can be lined up with them.
const stampFormat = "15:04:05.000"

// event logs what the test did, stamped with UTC wall-clock time.
func (e *crashEnv) event(format string, args ...any) {
	e.t.Helper()
	e.t.Logf("%s %s", time.Now().UTC().Format(stampFormat), fmt.Sprintf(format, args...))
}

func tail(s string, n int) string {
	if len(s) <= n {
		return s
	}
	return "...[truncated]...\n" + s[len(s)-n:]
}

func randomHex(n int) string {
	b := make([]byte, n)
	_, _ = rand.Read(b)
	return hex.EncodeToString(b)
}

// freePort asks the kernel for a free TCP port.
func freePort(t testing.TB) int {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port
}

func defaultRedisURL() string {
	if u := os.Getenv("TEST_REDIS_URL"); u != "" {
		return u
	}
	return "redis://127.0.0.1:6379/0"
}

// deletePrefix removes every key under prefix, hash-tagged ones
// ("{<prefix>...}") included (redistest.DeletePrefix).
func deletePrefix(t testing.TB, redisURL, prefix string) {
	opts, err := redis.ParseURL(redisURL)
	if err != nil {
		t.Errorf("parse %s: %v", redisURL, err)
		return
	}
	c := redis.NewClient(opts)
	defer c.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := c.Ping(ctx).Err(); err != nil {
		return // a private server already gone takes its keys with it
	}
	if err := redistest.DeletePrefix(ctx, c, prefix); err != nil {
		t.Errorf("delete keys %s*: %v", prefix, err)
	}
}

// startPrivateRedis runs a redis-server of the test's own, without
// persistence, and returns its URL and a client. Killed at cleanup.
func startPrivateRedis(t testing.TB) (string, *redis.Client) {
	t.Helper()
	bin, err := exec.LookPath("redis-server")
	if err != nil {
		t.Skip("redis-server not on PATH: cannot run a private Redis to flush")
	}
	var lastErr error
	for range 3 {
		port := freePort(t)
		url := fmt.Sprintf("redis://127.0.0.1:%d/0", port)
		opts, _ := redis.ParseURL(url)
		c := redis.NewClient(opts)
		if lastErr = runRedisServer(t, bin, port, c); lastErr == nil {
			t.Cleanup(func() { c.Close() })
			return url, c
		}
		c.Close()
	}
	t.Fatalf("private redis-server did not start: %v", lastErr)
	return "", nil
}

// runRedisServer starts bin (redis-server, no persistence) on port, killed
// when the test ends, and waits up to 10s for c to answer. The error carries
// the server's output.
func runRedisServer(t testing.TB, bin string, port int, c *redis.Client) error {
	t.Helper()
	cmd := exec.Command(bin, "--port", strconv.Itoa(port), "--bind", "127.0.0.1",
		"--save", "", "--appendonly", "no", "--daemonize", "no")
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	out := &logtest.Buffer{}
	cmd.Stdout, cmd.Stderr = out, out
	cmd.WaitDelay = 5 * time.Second
	if err := cmd.Start(); err != nil {
		return fmt.Errorf("start redis-server: %w", err)
	}
	done := make(chan struct{})
	go func() { _ = cmd.Wait(); close(done) }()
	t.Cleanup(func() {
		_ = syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL)
		<-done
	})
	deadline := time.Now().Add(10 * time.Second)
	for {
		ctx, cancel := context.WithTimeout(context.Background(), time.Second)
		err := c.Ping(ctx).Err()
		cancel()
		if err == nil {
			return nil
		}
		select {
		case <-done:
			return fmt.Errorf("redis-server on port %d exited: %v; output: %s", port, err, out.String())
		default:
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("redis-server on port %d not answering after 10s: %v; output: %s", port, err, out.String())
		}
		time.Sleep(20 * time.Millisecond)
	}
}
