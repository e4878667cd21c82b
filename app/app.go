// Package app wires the service together and runs it: configuration, the
// PostgreSQL and Redis connections, the feature packages, the HTTP API and
// the worker pool, started in dependency order and stopped in reverse.
package app

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"os"
	"strconv"
	"sync"
	"time"

	"github.com/jmoiron/sqlx"
	"github.com/redis/go-redis/v9"

	"github.com/campaignd/dispatch/campaign"
	"github.com/campaignd/dispatch/customer"
	"github.com/campaignd/dispatch/db/migrations"
	"github.com/campaignd/dispatch/db/seed"
	"github.com/campaignd/dispatch/messaging"
	"github.com/campaignd/dispatch/platform/postgres"
	"github.com/campaignd/dispatch/platform/redisx"
)

// App is one running replica: the HTTP API (unless disabled), the worker
// pool (unless its concurrency is 0) and the background loops, sharing one
// PostgreSQL pool and one Redis client.
type App struct {
	cfg      Config
	log      *slog.Logger
	db       *sqlx.DB
	rdb      *redis.Client
	server   *http.Server
	listener net.Listener

	customers *customer.Service
	campaigns *campaign.Service
	messaging *messaging.Service
	pool      *messaging.Pool // nil on an API-only replica
}

// New connects to PostgreSQL and Redis, migrates and seeds as configured,
// builds the features and binds the HTTP port. Nothing runs until Run.
func New(ctx context.Context, cfg Config, log *slog.Logger) (a *App, err error) {
	a = &App{cfg: cfg, log: log}
	defer func() {
		if err != nil {
			a.Close()
		}
	}()

	log.Info("starting", "config", cfg.Masked())

	a.db, err = postgres.Open(ctx, cfg.DatabaseURL(), postgres.Options{
		MaxOpenConns:    cfg.Database.MaxOpenConns,
		MaxIdleConns:    cfg.Database.MaxIdleConns,
		ConnMaxLifetime: cfg.Database.ConnMaxLifetime,
		CreateDatabase:  cfg.Database.CreateIfMissing,
	})
	if err != nil {
		return nil, err
	}
	if cfg.Database.MigrateOnStart {
		n, err := migrations.Up(ctx, a.db.DB)
		if err != nil {
			return nil, err
		}
		log.Info("migrations applied", "count", n)
	}
	if cfg.Database.SeedOnStart {
		seeded, err := seed.ApplyIfEmpty(ctx, a.db)
		if err != nil {
			return nil, err
		}
		if seeded {
			log.Info("empty database seeded with demo customers and campaigns")
		}
	}

	a.rdb, err = redisx.Open(ctx, cfg.Redis.URL)
	if err != nil {
		return nil, err
	}

	a.wire()

	handler, err := a.routes()
	if err != nil {
		return nil, err
	}
	a.listener, err = net.Listen("tcp", net.JoinHostPort("", strconv.Itoa(cfg.API.Port)))
	if err != nil {
		return nil, fmt.Errorf("listen on port %d: %w", cfg.API.Port, err)
	}
	a.server = &http.Server{
		Handler:           handler,
		ReadHeaderTimeout: 10 * time.Second,
		ReadTimeout:       60 * time.Second,
		WriteTimeout:      60 * time.Second,
		IdleTimeout:       120 * time.Second,
		ErrorLog:          slog.NewLogLogger(log.Handler(), slog.LevelWarn),
	}
	return a, nil
}

// wire builds the features. Features never import each other: app passes
// one feature's service to another through the small interfaces the
// consumer declares.
func (a *App) wire() {
	cfg := a.cfg
	a.customers = customer.NewService(customer.NewRepo(a.db), cfg.Customers.DefaultRegion)

	queue := messaging.NewRedisQueue(a.rdb, cfg.Redis.KeyPrefix, cfg.Queue.Name)
	msgRepo := messaging.NewRepo(a.db)
	a.messaging = messaging.NewService(msgRepo, queue, messaging.MaintenanceOptions{
		PromoteInterval: cfg.Sweeper.PromoteInterval,
		ReapInterval:    cfg.Worker.HeartbeatInterval,
		ConsumerTTL:     cfg.Worker.ConsumerTTL,
		SweepInterval:   cfg.Sweeper.Interval,
		UnpushedAfter:   cfg.Sweeper.UnpushedAfter,
		StaleAfter:      cfg.Sweeper.StaleAfter,
	}, a.log.With("component", "sweeper"))

	a.campaigns = campaign.NewService(campaign.NewRepo(a.db), messaging.Templates{}, contactFinder{a.customers}, nil).
		WithDispatch(dispatcher{a.messaging}, a.log.With("component", "campaign"))

	if cfg.WorkerConcurrency > 0 {
		var ledger messaging.Ledger = messaging.NewPostgresLedger(a.db)
		if cfg.Sender.Ledger == "memory" {
			ledger = messaging.NewMemoryLedger()
		}
		sender := messaging.NewMock(messaging.MockOptions{
			SuccessRate:          cfg.Sender.SuccessRate,
			PermanentFailureRate: cfg.Sender.PermanentFailureRate,
			MinLatency:           cfg.Sender.MinLatency,
			MaxLatency:           cfg.Sender.MaxLatency,
			Seed:                 cfg.Sender.Seed,
		}, ledger)
		host, _ := os.Hostname()
		a.pool = messaging.NewPool(messaging.PoolOptions{
			Consumer:          messaging.NewConsumerID(host),
			Concurrency:       cfg.WorkerConcurrency,
			BatchSize:         cfg.Worker.BatchSize,
			SendTimeout:       cfg.Worker.SendTimeout,
			Lease:             cfg.Worker.Lease,
			HeartbeatInterval: cfg.Worker.HeartbeatInterval,
			DrainTimeout:      cfg.Worker.DrainTimeout,
		}, queue, msgRepo, sender, messaging.RetryPolicy{
			MaxAttempts: cfg.MaxRetryCount,
			Base:        cfg.RetryBackoffBase,
			Max:         cfg.RetryBackoffMax,
		}, a.log.With("component", "worker"))
	}
}

// Addr is the address the HTTP server listens on (useful with port 0).
func (a *App) Addr() string { return a.listener.Addr().String() }

// Run serves HTTP, delivers messages and runs the background loops until
// ctx is cancelled. Shutdown then goes in this order:
//  1. the HTTP server stops accepting connections and waits for in-flight
//     requests (api.shutdown_timeout), while, at the same time, the worker
//     pool stops taking jobs and finishes in-flight deliveries
//     (worker.drain_timeout), recording every outcome;
//  2. the background loops (sweeper, promoter, reaper, materialiser, finisher, scheduler) stop;
//  3. Close (called by the owner) closes Redis, then PostgreSQL.
//
// It returns nil after a clean shutdown.
func (a *App) Run(ctx context.Context) error {
	serveErr := make(chan error, 1)
	go func() {
		// Exits when Shutdown closes the listener (ErrServerClosed) or on a
		// fatal serve error.
		a.log.Info("http server listening", "addr", a.Addr(), "api_enabled", a.cfg.API.Enabled)
		serveErr <- a.server.Serve(a.listener)
	}()

	var poolErr error
	var pool sync.WaitGroup
	if a.pool != nil {
		pool.Go(func() { poolErr = a.pool.Run(ctx) }) // returns after draining, once ctx ends
	}
	loopCtx, stopLoops := context.WithCancel(context.WithoutCancel(ctx))
	defer stopLoops()
	var loops sync.WaitGroup
	loops.Go(func() { a.messaging.RunMaintenance(loopCtx) })                            // returns when loopCtx ends
	loops.Go(func() { a.messaging.RunMaterializer(loopCtx, a.cfg.Sweeper.Interval) })   // returns when loopCtx ends
	loops.Go(func() { a.campaigns.RunFinisher(loopCtx, a.cfg.Sweeper.FinishInterval) }) // returns when loopCtx ends
	loops.Go(func() {                                                                   // returns when loopCtx ends
		a.campaigns.RunScheduler(loopCtx, a.cfg.Schedule.Interval, a.cfg.Schedule.MaxLateness)
	})

	var runErr error
	select {
	case err := <-serveErr:
		runErr = fmt.Errorf("http server: %w", err)
	case <-ctx.Done():
	}

	a.log.Info("shutting down: no new requests or jobs; finishing in-flight ones",
		"http_timeout", a.cfg.API.ShutdownTimeout, "drain_timeout", a.cfg.Worker.DrainTimeout)
	sctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), a.cfg.API.ShutdownTimeout)
	defer cancel()
	if err := a.server.Shutdown(sctx); err != nil && runErr == nil {
		runErr = fmt.Errorf("http shutdown: %w", err)
	}
	pool.Wait()
	if poolErr != nil && runErr == nil {
		runErr = poolErr
	}
	// Let the finisher complete campaigns whose last messages the drain
	// just recorded, then stop the loops.
	stopLoops()
	loops.Wait()
	if runErr != nil {
		return runErr
	}
	if err := <-serveErr; err != nil && !errors.Is(err, http.ErrServerClosed) {
		return fmt.Errorf("http server: %w", err)
	}
	a.log.Info("shutdown complete")
	return nil
}

// Close releases connections in reverse order of creation. Safe to call on a
// partly built App.
func (a *App) Close() {
	if a.listener != nil && a.server == nil {
		a.listener.Close()
	}
	if a.rdb != nil {
		if err := a.rdb.Close(); err != nil {
			a.log.Warn("close redis", "err", err)
		}
	}
	if a.db != nil {
		if err := a.db.Close(); err != nil {
			a.log.Warn("close postgres", "err", err)
		}
	}
}
