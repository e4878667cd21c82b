package app

import (
	"context"
	"net/http"
	"strings"
	"sync"
	"time"

	"github.com/labstack/echo/v4"

	"github.com/campaignd/dispatch/messaging"
)

// checkBudget is each dependency check's own time limit: one slow check
// does not spend the others' time.
const checkBudget = time.Second

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
	Queue   *messaging.Depths `json:"queue,omitempty"`
	Worker  *workerInfo       `json:"worker,omitempty"`
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
// answer and the schema has every migration this binary knows. 503 names the
// failing check, so a load balancer sends traffic elsewhere meanwhile.
func (a *App) readyz(c echo.Context) error {
	checks := a.runChecks(c.Request().Context(), map[string]func(context.Context) error{
		"postgres":   a.db.PingContext,
		"redis":      func(ctx context.Context) error { return a.rdb.Ping(ctx).Err() },
		"migrations": a.checkMigrations,
	})
	body := probeBody{Status: "ok", Checks: checks}
	if !allOK(checks) {
		body.Status = "unavailable"
		return c.JSON(http.StatusServiceUnavailable, body)
	}
	return c.JSON(http.StatusOK, body)
}

// health is readyz's detail for humans: the version, whether PostgreSQL and
// Redis answer, the queue's depths and this replica's worker counters.
func (a *App) health(c echo.Context) error {
	ctx := c.Request().Context()
	checks := a.runChecks(ctx, map[string]func(context.Context) error{
		"postgres": a.db.PingContext,
		"redis":    func(ctx context.Context) error { return a.rdb.Ping(ctx).Err() },
	})
	body := healthBody{Status: "ok", Version: Version(), Checks: checks}
	status := http.StatusOK
	if !allOK(checks) {
		body.Status, status = "unavailable", http.StatusServiceUnavailable
	}
	if checks["redis"] == "ok" {
		dctx, cancel := context.WithTimeout(ctx, checkBudget)
		if d, err := a.messaging.QueueDepths(dctx); err == nil {
			body.Queue = &d
		}
		cancel()
	}
	if a.pool != nil {
		body.Worker = &workerInfo{Concurrency: a.cfg.WorkerConcurrency, Processed: a.pool.Stats()}
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
