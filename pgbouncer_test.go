//go:build linux || darwin

package main

import (
	"context"
	"database/sql"
	"fmt"
	"net"
	"net/http"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/jmoiron/sqlx"

	"github.com/campaignd/dispatch/platform/logging/logtest"
	"github.com/campaignd/dispatch/platform/postgres/pgtest"
)

// pgbouncerPoolSize is the test PgBouncer's default_pool_size: the most
// server connections it opens for the test's database.
const pgbouncerPoolSize = 10

// TestPgBouncerTransactionPooling runs three replicas behind PgBouncer in
// transaction pooling mode (DATABASE_PGBOUNCER=true, migrations through
// DATABASE_DIRECT_URL) whose pools together (DATABASE_MAX_OPEN_CONNS=40
// each, more on a larger server, plus the probes') exceed the server's
// max_connections. While a campaign is delivered, paused and resumed, and
// bursts of API reads make every pool open its connections, the server
// sees no more than PgBouncer's pool of the test's database; the campaign
// ends sent, every message final, none delivered twice, and no replica logs
// an error (a statement prepared on one server and used on another would).
func TestPgBouncerTransactionPooling(t *testing.T) {
	t.Parallel()
	requireBinary(t)
	// Three replicas whose pools (plus the probes' 2 each) exceed the
	// server's max_connections: the default 40 each against a default
	// server's 100.
	const replicas = 3
	maxConns := serverMaxConnections(t)
	perReplica := max(40, maxConns/replicas+1)
	e := newCrashEnv(t, defaultRedisURL(), map[string]string{
		"DATABASE_MAX_OPEN_CONNS": strconv.Itoa(perReplica),
		"DATABASE_MAX_IDLE_CONNS": strconv.Itoa(perReplica),
		"DATABASE_PGBOUNCER":      "true",
		"SENDER_SUCCESS_RATE":     "0.9",
		"SENDER_MIN_LATENCY":      "50ms",
		"SENDER_MAX_LATENCY":      "100ms",
	})

	// The test's own connections reach PostgreSQL directly, named so that
	// the server's view of PgBouncer's connections can leave them out; so
	// do the replicas' migrations (short-lived, before they serve).
	direct, err := url.Parse(e.vars["DATABASE_URL"])
	if err != nil {
		t.Fatal(err)
	}
	dbName := strings.TrimPrefix(direct.Path, "/")
	q := direct.Query()
	q.Set("application_name", "dispatch-direct")
	direct.RawQuery = q.Encode()
	pgb := startPgBouncer(t, direct, pgbouncerPoolSize)
	viaPgb := *direct
	viaPgb.Host = pgb
	q.Del("application_name")
	viaPgb.RawQuery = q.Encode()
	e.vars["DATABASE_DIRECT_URL"] = direct.String()
	e.vars["DATABASE_URL"] = viaPgb.String()

	procs := []*dispatchProc{e.start("replica-1")}
	for i := 2; i <= replicas; i++ {
		procs = append(procs, e.startReplica("replica-"+strconv.Itoa(i), nil))
	}
	e.event("%d replicas behind PgBouncer (pool %d): their pools may open %d connections, the server allows %d",
		replicas, pgbouncerPoolSize, replicas*(perReplica+2), maxConns)

	sampler := samplePgBouncer(t, e.db, pgb, dbName)
	e.setupCampaign(procs[0], 5000)
	e.waitSentAbove(procs[0], 0.1)
	procs[1].do(t, "POST", fmt.Sprintf("/campaigns/%d/pause", e.campaignID), "", nil, http.StatusOK, nil)
	time.Sleep(300 * time.Millisecond) // in-flight deliveries land while paused
	procs[2].do(t, "POST", fmt.Sprintf("/campaigns/%d/resume", e.campaignID), "", nil, http.StatusOK, nil)
	e.event("paused and resumed with %v", e.counts())

	// Make every pool open its connections: concurrent reads through each
	// replica while the campaign is delivered.
	burst(t, procs, fmt.Sprintf("/campaigns/%d", e.campaignID), perReplica+5, 2*time.Second)
	e.event("after the burst of reads: %v", e.counts())

	final := e.waitAllFinal(procs[0])
	peak := sampler.stop()
	e.verifyExactlyOnce(final)

	e.event("peak: %d server connections from PgBouncer (pool %d), %d client connections at PgBouncer (server max_connections %d), %d samples",
		peak.servers, pgbouncerPoolSize, peak.clients, maxConns, peak.samples)
	if peak.err != nil {
		t.Errorf("sampling PgBouncer and the server: %v", peak.err)
	}
	if peak.samples < 5 {
		t.Errorf("only %d samples of the connection counts", peak.samples)
	}
	if peak.servers > pgbouncerPoolSize {
		t.Errorf("the server held %d connections from PgBouncer, more than its pool of %d", peak.servers, pgbouncerPoolSize)
	}
	if peak.clients <= maxConns {
		t.Errorf("PgBouncer saw at most %d client connections, not more than the server's max_connections %d: "+
			"the test did not show more replicas' connections than the server allows", peak.clients, maxConns)
	}
	if !strings.Contains(procs[0].out.String(), `"through":"database.direct_url"`) {
		t.Errorf("the first replica did not log migrating through database.direct_url")
	}
	for _, p := range procs {
		if p.exited() {
			t.Errorf("replica %s exited: %v", p.name, p.state)
		}
		// Behind PgBouncer a replica's pool is not the server's concern.
		if out := p.out.String(); strings.Contains(out, "can exhaust the server") || !strings.Contains(out, "connection budget not checked") {
			t.Errorf("replica %s checked its pool against max_connections behind PgBouncer", p.name)
		}
		for line := range strings.Lines(p.out.String()) {
			if strings.Contains(line, `"level":"ERROR"`) || strings.Contains(line, "prepared statement") {
				t.Errorf("replica %s logged: %s", p.name, strings.TrimSpace(line))
			}
		}
	}
}

// serverMaxConnections reads the server's max_connections.
func serverMaxConnections(t *testing.T) int {
	t.Helper()
	u, err := url.Parse(pgtest.BaseURL())
	if err != nil {
		t.Fatal(err)
	}
	u.Path = "/postgres"
	db, err := sqlx.Open("postgres", u.String())
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	var n int
	if err := db.Get(&n, `SELECT current_setting('max_connections')::int`); err != nil {
		t.Fatalf("read max_connections: %v", err)
	}
	return n
}

// startPgBouncer runs a PgBouncer of the test's own in transaction pooling
// mode on a free loopback port, in front of server's host (any database,
// logging in as server's user), and returns its host:port. It is stopped
// when the test ends. PgBouncer refuses to run as root: as root it is
// started with -u postgres.
func startPgBouncer(t *testing.T, server *url.URL, poolSize int) string {
	t.Helper()
	bin, err := exec.LookPath("pgbouncer")
	if err != nil {
		if _, serr := os.Stat("/usr/sbin/pgbouncer"); serr != nil {
			t.Skip("pgbouncer not installed (apt-get install pgbouncer; .ci/run installs it)")
		}
		bin = "/usr/sbin/pgbouncer"
	}
	// Not t.TempDir(): its parents are private to root, and PgBouncer,
	// once it runs as postgres, must still read its files.
	dir, err := os.MkdirTemp("", "pgbouncer-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	if err := os.Chmod(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	user := server.User.Username()
	if user == "" {
		user = "postgres"
	}
	serverConn := fmt.Sprintf("host=%s port=%s user=%s", server.Hostname(), portOr(server.Port(), "5432"), user)
	if pw, ok := server.User.Password(); ok {
		serverConn += " password=" + pw
	}
	users := filepath.Join(dir, "users.txt")
	if err := os.WriteFile(users, []byte(strconv.Quote(user)+` ""`+"\n"), 0o644); err != nil {
		t.Fatal(err)
	}

	var lastErr error
	for range 3 {
		port := freePort(t)
		ini := filepath.Join(dir, "pgbouncer.ini")
		conf := fmt.Sprintf(`[databases]
* = %s

[pgbouncer]
listen_addr = 127.0.0.1
listen_port = %d
unix_socket_dir =
auth_type = trust
auth_file = %s
admin_users = %s
pool_mode = transaction
default_pool_size = %d
max_client_conn = 2000
; lib/pq sends it at start-up; PgBouncer would refuse the connection
ignore_startup_parameters = extra_float_digits
logfile =
pidfile =
`, serverConn, port, users, user, poolSize)
		if err := os.WriteFile(ini, []byte(conf), 0o644); err != nil {
			t.Fatal(err)
		}
		args := []string{ini}
		if os.Geteuid() == 0 {
			args = []string{"-u", "postgres", ini}
		}
		cmd := exec.Command(bin, args...)
		cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
		out := &logtest.Buffer{}
		cmd.Stdout, cmd.Stderr = out, out
		cmd.WaitDelay = 5 * time.Second
		if err := cmd.Start(); err != nil {
			t.Fatalf("start pgbouncer: %v", err)
		}
		done := make(chan struct{})
		go func() { _ = cmd.Wait(); close(done) }()
		t.Cleanup(func() {
			_ = syscall.Kill(-cmd.Process.Pid, syscall.SIGTERM)
			select {
			case <-done:
			case <-time.After(5 * time.Second):
				_ = syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL)
				<-done
			}
			if t.Failed() {
				t.Logf("---- pgbouncer output ----\n%s", tail(out.String(), 32<<10))
			}
		})
		addr := net.JoinHostPort("127.0.0.1", strconv.Itoa(port))
		if lastErr = waitListening(addr, done); lastErr == nil {
			return addr
		}
		lastErr = fmt.Errorf("%w; output: %s", lastErr, out.String())
	}
	t.Fatalf("pgbouncer did not start: %v", lastErr)
	return ""
}

func portOr(port, def string) string {
	if port == "" {
		return def
	}
	return port
}

// waitListening waits up to 10s for addr to accept a connection, or for
// done (the process exited).
func waitListening(addr string, done <-chan struct{}) error {
	deadline := time.Now().Add(10 * time.Second)
	for {
		c, err := net.DialTimeout("tcp", addr, time.Second)
		if err == nil {
			c.Close()
			return nil
		}
		select {
		case <-done:
			return fmt.Errorf("exited before listening on %s", addr)
		default:
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("not listening on %s after 10s: %v", addr, err)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// connPeaks are the highest counts samplePgBouncer saw.
type connPeaks struct {
	servers int // the server's connections to the database, but the test's direct ones
	clients int // PgBouncer's client connections for the database (active and waiting)
	samples int
	err     error // the first sampling error
}

type connSampler struct {
	stop func() connPeaks
}

// samplePgBouncer polls, every 50 ms until stop, the server's connections
// to dbName other than the direct ones (application_name dispatch-direct)
// and PgBouncer's client connections for dbName (SHOW POOLS on its admin
// console), and keeps the peaks.
func samplePgBouncer(t *testing.T, direct *sqlx.DB, pgbAddr, dbName string) connSampler {
	t.Helper()
	admin, err := sql.Open("postgres", fmt.Sprintf("postgres://postgres@%s/pgbouncer?sslmode=disable", pgbAddr))
	if err != nil {
		t.Fatal(err)
	}
	admin.SetMaxOpenConns(1)
	var (
		mu   sync.Mutex
		peak connPeaks
	)
	fail := func(err error) {
		mu.Lock()
		if peak.err == nil {
			peak.err = err
		}
		mu.Unlock()
	}
	ctx, cancel := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	wg.Go(func() {
		tick := time.NewTicker(50 * time.Millisecond)
		defer tick.Stop()
		for {
			select {
			case <-ctx.Done():
				return
			case <-tick.C:
			}
			var servers int
			if err := direct.GetContext(ctx, &servers, `
SELECT count(*) FROM pg_stat_activity
WHERE datname = $1 AND backend_type = 'client backend' AND application_name <> 'dispatch-direct'`, dbName); err != nil {
				if ctx.Err() == nil {
					fail(fmt.Errorf("count server connections: %w", err))
				}
				continue
			}
			clients, err := pgbouncerClients(ctx, admin, dbName)
			if err != nil {
				if ctx.Err() == nil {
					fail(err)
				}
				continue
			}
			mu.Lock()
			peak.servers = max(peak.servers, servers)
			peak.clients = max(peak.clients, clients)
			peak.samples++
			mu.Unlock()
		}
	})
	stopped := false
	stop := func() connPeaks {
		if !stopped {
			stopped = true
			cancel()
			wg.Wait()
			admin.Close()
		}
		mu.Lock()
		defer mu.Unlock()
		return peak
	}
	t.Cleanup(func() { stop() })
	return connSampler{stop: stop}
}

// pgbouncerClients sums cl_active and cl_waiting of dbName's pools. The
// admin console speaks only the simple query protocol: a query without
// arguments.
func pgbouncerClients(ctx context.Context, admin *sql.DB, dbName string) (int, error) {
	rows, err := admin.QueryContext(ctx, "SHOW POOLS")
	if err != nil {
		return 0, fmt.Errorf("SHOW POOLS: %w", err)
	}
	defer rows.Close()
	cols, err := rows.Columns()
	if err != nil {
		return 0, err
	}
	total := 0
	for rows.Next() {
		vals := make([]sql.NullString, len(cols))
		ptrs := make([]any, len(cols))
		for i := range vals {
			ptrs[i] = &vals[i]
		}
		if err := rows.Scan(ptrs...); err != nil {
			return 0, fmt.Errorf("SHOW POOLS: %w", err)
		}
		row := map[string]string{}
		for i, c := range cols {
			row[c] = vals[i].String
		}
		if row["database"] != dbName {
			continue
		}
		for _, c := range []string{"cl_active", "cl_waiting"} {
			n, _ := strconv.Atoi(row[c])
			total += n
		}
	}
	return total, rows.Err()
}

// burst runs workers concurrent GETs of path through each process for d.
func burst(t *testing.T, procs []*dispatchProc, path string, workers int, d time.Duration) {
	t.Helper()
	client := &http.Client{Timeout: 10 * time.Second, Transport: &http.Transport{MaxIdleConnsPerHost: workers}}
	defer client.CloseIdleConnections()
	end := time.Now().Add(d)
	var (
		wg     sync.WaitGroup
		mu     sync.Mutex
		codes  = map[int]int{}
		errors int
	)
	for _, p := range procs {
		for range workers {
			wg.Go(func() {
				for time.Now().Before(end) {
					req, _ := http.NewRequest("GET", p.base+path, nil)
					req.Header.Set("Authorization", "Bearer "+crashAPIKey)
					resp, err := client.Do(req)
					mu.Lock()
					if err != nil {
						errors++
					} else {
						codes[resp.StatusCode]++
					}
					mu.Unlock()
					if err == nil {
						resp.Body.Close()
					}
				}
			})
		}
	}
	wg.Wait()
	if errors > 0 || len(codes) != 1 || codes[http.StatusOK] == 0 {
		t.Errorf("burst of reads: %d transport errors, statuses %v (want only 200)", errors, codes)
	}
	t.Logf("burst of reads: %d concurrent clients through %d replicas for %v: statuses %v", workers*len(procs), len(procs), d, codes)
}
