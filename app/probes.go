package app

import (
	"context"
	"fmt"
	"net/http"
	"strings"
	"sync"
	"time"

	"github.com/labstack/echo/v4"

	"github.com/campaignd/dispatch/messaging"
	"github.com/campaignd/dispatch/messaging/queue"
	"github.com/campaignd/dispatch/messaging/throttle"
	"github.com/campaignd/dispatch/platform/postgres"
	"github.com/campaignd/dispatch/platform/redisx"
)

// checkBudget is each dependency check's own time limit: one slow check
// does not spend the others' time.
const checkBudget = time.Second

// probeConns is the size of the probes' own PostgreSQL pool and Redis
// client: /readyz uses two PostgreSQL connections at once (ping, schema).
const probeConns = 2

// probeBody is the /readyz response; /health adds detail to it.
type probeBody struct {
	Status string            `json:"status"`
	Checks map[string]string `json:"checks"`
}

// healthBody is the /health response.
type healthBody struct {
	Status  string            `json:"status"`
	Version string            `json:"version"`
	Checks  map[string]string `json:"checks"`
	Pool    poolInfo          `json:"postgres_pool"`
	Queue   *queue.Depths     `json:"queue,omitempty"`
	Worker  *workerInfo       `json:"worker,omitempty"`
	// Providers are the providers in use, each with its brake: an
	// account-level failure (no balance, bad credentials) stops all sends to
	// it on every replica until the brake lifts. A braked provider does not
	// make the service unhealthy: the API and the other providers work.
	Providers map[string]throttle.Status `json:"providers,omitempty"`
}

// poolInfo is the state of the PostgreSQL pool that API requests and
// workers share (not the probes').
type poolInfo struct {
	MaxOpen     int     `json:"max_open"`
	Open        int     `json:"open"`
	InUse       int     `json:"in_use"`
	Idle        int     `json:"idle"`
	Waits       int64   `json:"waits"`        // connections requests waited for, since start
	WaitSeconds float64 `json:"wait_seconds"` // time they waited, in all
}

type workerInfo struct {
	Concurrency int                 `json:"concurrency"`
	Processed   messaging.PoolStats `json:"processed"`
}

// livez answers while the process serves HTTP; it checks nothing else, so
// an orchestrator restarts the process only when it is truly stuck, never
// because PostgreSQL or Redis is down.
func (a *App) livez(c echo.Context) error {
	return c.JSON(http.StatusOK, map[string]string{"status": "ok"})
}

// readyz says whether this replica can do its work: PostgreSQL and Redis
// answer, the schema has every migration this binary knows, and a request
// would get one of the shared pool's PostgreSQL connections within the check
// budget. 503 names the failing check, so a load balancer sends traffic
// elsewhere meanwhile. PostgreSQL, Redis and the schema are checked through
// the probes' own connections, so a replica whose pool is saturated says
// exactly that (postgres_pool) rather than that PostgreSQL is down.
func (a *App) readyz(c echo.Context) error {
	checks := a.runChecks(c.Request().Context(), map[string]func(context.Context) error{
		"postgres":      a.probeDB.PingContext,
		"redis":         func(ctx context.Context) error { return a.probeRdb.Ping(ctx).Err() },
		"migrations":    a.checkMigrations,
		"postgres_pool": a.checkPool,
	})
	body := probeBody{Status: "ok", Checks: checks}
	if !allOK(checks) {
		body.Status = "unavailable"
		return c.JSON(http.StatusServiceUnavailable, body)
	}
	return c.JSON(http.StatusOK, body)
}

// health is readyz's detail for humans: the version, whether PostgreSQL and
// Redis answer (through the probes' own connections, so a busy replica does
// not look dead), the shared PostgreSQL pool's state, the queue's depths and
// this replica's worker counters. A saturated pool does not make it 503:
// /readyz reports that.
func (a *App) health(c echo.Context) error {
	ctx := c.Request().Context()
	checks := a.runChecks(ctx, map[string]func(context.Context) error{
		"postgres": a.probeDB.PingContext,
		"redis":    func(ctx context.Context) error { return a.probeRdb.Ping(ctx).Err() },
	})
	s := a.db.Stats()
	body := healthBody{Status: "ok", Version: Version(), Checks: checks, Pool: poolInfo{
		MaxOpen: s.MaxOpenConnections, Open: s.OpenConnections, InUse: s.InUse, Idle: s.Idle,
		Waits: s.WaitCount, WaitSeconds: s.WaitDuration.Seconds(),
	}}
	status := http.StatusOK
	if !allOK(checks) {
		body.Status, status = "unavailable", http.StatusServiceUnavailable
	}
	if checks["redis"] == "ok" {
		dctx, cancel := context.WithTimeout(ctx, checkBudget)
		if d, err := a.probeQueue.Depths(dctx); err == nil {
			body.Queue = &d
		}
		cancel()
	}
	if a.pool != nil {
		body.Worker = &workerInfo{Concurrency: a.cfg.WorkerConcurrency, Processed: a.pool.Stats()}
	}
	if checks["redis"] == "ok" {
		body.Providers = map[string]throttle.Status{}
		for _, name := range a.providerNames() {
			pctx, cancel := context.WithTimeout(ctx, checkBudget)
			if st, err := a.probeGate.Status(pctx, name); err == nil {
				body.Providers[name] = st
			}
			cancel()
		}
	}
	return c.JSON(status, body)
}

// checkMigrations fails while the database lacks a migration this binary
// has (another replica may be applying them, or migrate_on_start is off).
func (a *App) checkMigrations(ctx context.Context) error {
	pending, err := a.migrator.HasPending(ctx)
	if err != nil {
		return err
	}
	if pending {
		return errPendingMigrations
	}
	return nil
}

type probeError string

func (e probeError) Error() string { return string(e) }

const errPendingMigrations = probeError("pending migrations; run dispatch migrate up")

// checkPool fails when a request arriving now would wait longer than the
// check budget for a connection of the shared pool: the check takes one and
// gives it back at once, so what it measures is exactly what a request
// meets. (The pool's counters cannot say it: WaitDuration grows only when a
// wait ends, so while every connection is held by long queries they show
// nothing, and a full pool whose waits are short is busy, not exhausted.) A
// pool that cannot open a connection (the server refuses: too many clients)
// fails it too.
func (a *App) checkPool(ctx context.Context) error {
	conn, err := a.db.Conn(ctx)
	if err == nil {
		return conn.Close() // back to the pool
	}
	if ctx.Err() != nil {
		s := a.db.Stats()
		return probeError(fmt.Sprintf("pool exhausted, no connection free within %v (%d of %d in use, %d waits since start)",
			checkBudget, s.InUse, s.MaxOpenConnections, s.WaitCount))
	}
	return err
}

// openProbeClients opens the probes' own PostgreSQL pool and Redis client,
// of probeConns connections each, after the shared ones (so the servers are
// known to be reachable).
func (a *App) openProbeClients(ctx context.Context) (err error) {
	a.probeDB, err = openPostgres(ctx, a.cfg, a.log, postgres.Options{
		MaxOpenConns:    probeConns,
		MaxIdleConns:    probeConns,
		ConnMaxLifetime: a.cfg.Database.ConnMaxLifetime,
	})
	if err != nil {
		return fmt.Errorf("probes: %w", err)
	}
	a.probeRdb, err = openRedis(ctx, a.cfg, a.log, redisx.Options{PoolSize: probeConns})
	if err != nil {
		return fmt.Errorf("probes: %w", err)
	}
	a.probeQueue = queue.New(a.probeRdb, a.cfg.Redis.KeyPrefix, a.cfg.Queue.Name)
	return nil
}

// connBudget compares the PostgreSQL connections one replica may open with
// those the server allows.
type connBudget struct {
	maxConns   int // the server's max_connections
	reserved   int // slots only superusers (and pg_use_reserved_connections) may use
	others     int // connections other clients hold now (other replicas, tools)
	perReplica int // database.max_open_conns + the probes' probeConns
}

// available is how many connections the server lets this service open, if
// nothing else were connected.
func (b connBudget) available() int { return b.maxConns - b.reserved }

// exceeded reports whether this replica's pools, full, would need more
// connections than the server has left: requests would then fail with "too
// many clients" while /health stays 200.
func (b connBudget) exceeded() bool { return b.perReplica > b.available()-b.others }

// connBudgetSQL reads max_connections, the reserved slots (reserved_connections
// exists from PostgreSQL 16) and the client connections open now.
const connBudgetSQL = `
SELECT current_setting('max_connections')::int,
       current_setting('superuser_reserved_connections')::int
           + coalesce(current_setting('reserved_connections', true)::int, 0),
       (SELECT count(*) FROM pg_stat_activity WHERE backend_type = 'client backend')`

// checkConnectionBudget logs a warning when this replica's pools could use
// up the server's connections, and otherwise how many such replicas fit. A
// failure to read the settings is logged and ignored: it must not stop
// start-up.
func (a *App) checkConnectionBudget(ctx context.Context) {
	if a.cfg.Database.PgBouncer {
		// The pool's connections are PgBouncer's clients; the server sees
		// only PgBouncer's own pool, whatever the replicas' pools add up to.
		a.log.Info("postgres connection budget not checked: behind PgBouncer, its pool size bounds the server's connections",
			"database.max_open_conns", a.cfg.Database.MaxOpenConns, "probe_conns", probeConns)
		return
	}
	qctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	var b connBudget
	var open int
	if err := a.probeDB.QueryRowContext(qctx, connBudgetSQL).Scan(&b.maxConns, &b.reserved, &open); err != nil {
		a.log.Warn("could not read max_connections to check the pool size against it", "err", err)
		return
	}
	own := a.db.Stats().OpenConnections + a.probeDB.Stats().OpenConnections
	b.others = max(open-own, 0)
	b.perReplica = a.cfg.Database.MaxOpenConns + probeConns
	attrs := []any{"database.max_open_conns", a.cfg.Database.MaxOpenConns, "probe_conns", probeConns,
		"max_connections", b.maxConns, "reserved_connections", b.reserved, "other_connections", b.others}
	if b.exceeded() {
		a.log.Warn(fmt.Sprintf("the PostgreSQL pool can exhaust the server: this replica may open %d connections "+
			"(database.max_open_conns %d + %d for the probes) but the server has %d left (max_connections %d, "+
			"%d reserved, %d held by other clients); under load requests would fail with \"too many clients\". "+
			"Lower database.max_open_conns (DATABASE_MAX_OPEN_CONNS) or raise max_connections; with several "+
			"replicas, their pools together must fit",
			b.perReplica, a.cfg.Database.MaxOpenConns, probeConns, b.available()-b.others, b.maxConns, b.reserved, b.others),
			attrs...)
		return
	}
	a.log.Info("postgres connection budget", append(attrs,
		"replicas_that_fit", b.available()/b.perReplica)...)
}

// runChecks runs every check at once, each within its own checkBudget, and
// returns "ok" or "unavailable: <cause>" per check.
func (a *App) runChecks(ctx context.Context, checks map[string]func(context.Context) error) map[string]string {
	out := make(map[string]string, len(checks))
	var mu sync.Mutex
	var wg sync.WaitGroup
	for name, check := range checks {
		wg.Go(func() {
			cctx, cancel := context.WithTimeout(ctx, checkBudget)
			defer cancel()
			res := "ok"
			if err := check(cctx); err != nil {
				res = "unavailable: " + shortErr(err)
			}
			mu.Lock()
			out[name] = res
			mu.Unlock()
		})
	}
	wg.Wait()
	return out
}

func allOK(checks map[string]string) bool {
	for _, v := range checks {
		if v != "ok" {
			return false
		}
	}
	return true
}

func shortErr(err error) string {
	s := err.Error()
	if i := strings.LastIndex(s, ": "); i >= 0 && i+2 < len(s) {
		s = s[i+2:]
	}
	return s
}
