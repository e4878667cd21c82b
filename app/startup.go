package app

import (
	"context"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"time"

	"github.com/jmoiron/sqlx"
	"github.com/redis/go-redis/v9"

	"github.com/campaignd/dispatch/db/migrations"
	"github.com/campaignd/dispatch/platform/loop"
	"github.com/campaignd/dispatch/platform/postgres"
	"github.com/campaignd/dispatch/platform/redisx"
)

// Start-up waits for PostgreSQL and Redis: under docker compose or
// Kubernetes the service is often up before its servers accept connections,
// and such a race should heal by itself within startup_timeout instead of
// costing a crash loop.

// dependency is a server the service cannot start without.
type dependency struct {
	name string // "postgres" or "redis", in log lines and errors
	addr string // host:port: never a URL, which may hold a password
	// unavailable tells the errors that waiting can fix (connection
	// refused, a name that does not resolve yet, a server starting up or
	// out of connection slots) from those it cannot (credentials, a bad
	// URL, a missing database), which fail start-up at once.
	unavailable func(error) bool
}

const (
	startupBackoffMin = 250 * time.Millisecond
	startupBackoffMax = 5 * time.Second
	// waitLogEvery spaces the "waiting for" lines of one long wait, so a
	// minute's wait is a few lines, not one per attempt.
	waitLogEvery = 10 * time.Second
)

// connect calls open until it succeeds, fails with an error dep.unavailable
// rejects, timeout passes or ctx ends (SIGTERM), pausing between attempts
// (loop.Backoff: startupBackoffMin doubling to startupBackoffMax, jittered). Each attempt's context ends with the wait, so a slow attempt
// cannot outlast it. When dep is first found unreachable it logs one warning
// ("waiting for postgres", with the address, the cause and the timeout),
// repeated at most every waitLogEvery, and on success after waiting one info
// line with how long it took. Every error it returns names dep and its
// address: "postgres at 127.0.0.1:5432 not reachable after 1m0s: dial tcp
// ...: connection refused".
func connect[T any](ctx context.Context, log *slog.Logger, timeout time.Duration, dep dependency, open func(context.Context) (T, error)) (T, error) {
	var zero T
	start := time.Now()
	wctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	var cause error      // the latest error that says why dep is unreachable
	var warned time.Time // when the last "waiting for" line was written
	for attempt := 1; ; attempt++ {
		v, err := open(wctx)
		if err == nil {
			if !warned.IsZero() {
				log.Info(dep.name+" reachable", "addr", dep.addr, "waited", time.Since(start).Round(time.Millisecond).String())
			}
			return v, nil
		}
		// An attempt cut short by the end of the wait reports only that;
		// the attempt before it said why.
		if cause == nil || wctx.Err() == nil {
			cause = err
		}
		if wctx.Err() == nil && !dep.unavailable(err) {
			return zero, fmt.Errorf("%s at %s: %w", dep.name, dep.addr, err)
		}
		if wctx.Err() == nil && (warned.IsZero() || time.Since(warned) >= waitLogEvery) {
			attrs := []any{"addr", dep.addr, "err", err, "timeout", timeout.String()}
			if !warned.IsZero() {
				attrs = append(attrs, "waited", time.Since(start).Round(time.Second).String())
			}
			log.Warn("waiting for "+dep.name, attrs...)
			warned = time.Now()
		}
		pause := time.NewTimer(loop.Backoff(attempt, startupBackoffMin, startupBackoffMax, rand.Float64()))
		select {
		case <-pause.C:
			continue
		case <-wctx.Done():
			pause.Stop()
		}
		if ctx.Err() != nil {
			return zero, fmt.Errorf("%s at %s: start-up stopped while waiting (%v): %w", dep.name, dep.addr, cause, ctx.Err())
		}
		return zero, fmt.Errorf("%s at %s not reachable after %v: %w", dep.name, dep.addr, timeout, cause)
	}
}

// openPostgres opens a pool on database.url (creating the database first, if
// configured), in PgBouncer mode if database.pgbouncer says so, waiting up to
// startup_timeout for the server to be reachable.
func openPostgres(ctx context.Context, cfg Config, log *slog.Logger, o postgres.Options) (*sqlx.DB, error) {
	o.PgBouncer = cfg.Database.PgBouncer
	return openPostgresAt(ctx, cfg, log, cfg.DatabaseURL(), o)
}

// openPostgresDirect opens a pool on PostgreSQL itself (database.direct_url),
// for creating the database and migrating; without a direct URL it is
// openPostgres.
func openPostgresDirect(ctx context.Context, cfg Config, log *slog.Logger, o postgres.Options) (*sqlx.DB, error) {
	if cfg.Database.DirectURL == "" {
		return openPostgres(ctx, cfg, log, o)
	}
	return openPostgresAt(ctx, cfg, log, cfg.Database.DirectURL, o)
}

// migrateDirect creates the database if configured to and applies pending
// migrations if configured to, through a pool of its own on
// database.direct_url, closed before it returns. Behind PgBouncer this keeps
// the DDL off its few server connections (and its query_timeout), and a
// CREATE DATABASE needs the server's maintenance database, which PgBouncer
// may not serve.
func migrateDirect(ctx context.Context, cfg Config, log *slog.Logger) error {
	db, err := openPostgresDirect(ctx, cfg, log, postgres.Options{MaxOpenConns: 2, CreateDatabase: cfg.Database.CreateIfMissing})
	if err != nil {
		return err
	}
	defer db.Close()
	if !cfg.Database.MigrateOnStart {
		return nil
	}
	n, err := migrations.Up(ctx, db.DB)
	if err != nil {
		return err
	}
	log.Info("migrations applied", "count", n, "through", "database.direct_url")
	return nil
}

func openPostgresAt(ctx context.Context, cfg Config, log *slog.Logger, dsn string, o postgres.Options) (*sqlx.DB, error) {
	dep := dependency{name: "postgres", addr: postgres.Addr(dsn), unavailable: postgres.IsUnavailable}
	return connect(ctx, log, cfg.StartupTimeout, dep, func(ctx context.Context) (*sqlx.DB, error) {
		return postgres.Open(ctx, dsn, o)
	})
}

// openRedis opens a client of the configured Redis (one node, a cluster or
// a Sentinel-managed primary), waiting up to startup_timeout for it to be
// reachable.
func openRedis(ctx context.Context, cfg Config, log *slog.Logger, o redisx.Options) (redis.UniversalClient, error) {
	target := cfg.RedisTarget()
	dep := dependency{name: "redis", addr: target.Addr(), unavailable: redisx.IsUnavailable}
	return connect(ctx, log, cfg.StartupTimeout, dep, func(ctx context.Context) (redis.UniversalClient, error) {
		return redisx.OpenWith(ctx, target, o)
	})
}
