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
	"syscall"
	"time"

	"github.com/jmoiron/sqlx"
	"github.com/pressly/goose/v3"
	"github.com/redis/go-redis/v9"

	"github.com/campaignd/dispatch/campaign"
	"github.com/campaignd/dispatch/customer"
	"github.com/campaignd/dispatch/db/migrations"
	"github.com/campaignd/dispatch/db/seed"
	"github.com/campaignd/dispatch/messaging"
	"github.com/campaignd/dispatch/messaging/provider"
	"github.com/campaignd/dispatch/messaging/queue"
	"github.com/campaignd/dispatch/messaging/throttle"
	"github.com/campaignd/dispatch/platform/auth"
	"github.com/campaignd/dispatch/platform/channel"
	"github.com/campaignd/dispatch/platform/metrics"
	"github.com/campaignd/dispatch/platform/outbox"
	"github.com/campaignd/dispatch/platform/postgres"
	"github.com/campaignd/dispatch/platform/redisx"
)

// App is one running replica: the HTTP API (unless disabled), the worker
// pool (unless its concurrency is 0) and the background loops, sharing one
// PostgreSQL pool and one Redis client (the probes, and the API for its
// rate limit and sessions, have their own Redis connections).
type App struct {
	cfg      Config
	log      *slog.Logger
	db       *sqlx.DB
	rdb      redis.UniversalClient // one node, a cluster or a Sentinel-managed primary
	server   *http.Server
	listener net.Listener

	// probeDB and probeRdb serve only the probes: a few connections of
	// their own, so that /health and /readyz answer within their budget
	// while API traffic holds every connection of db and rdb.
	probeDB    *sqlx.DB
	probeRdb   redis.UniversalClient
	probeQueue *queue.Queue // the queue's depths for /health, read through probeRdb

	// apiRdb serves the API's own Redis calls (the rate limit every request
	// draws on, dashboard sessions) from connections of its own: at 1,000
	// delivery goroutines the pool's gate, fetches and settlements hold
	// rdb's connections, and reads waited longer for one than for their
	// whole query (BenchmarkReadsUnderLoad's block profile).
	apiRdb redis.UniversalClient

	migrator *goose.Provider // readiness: are all migrations applied?
	authn    *auth.Authenticator
	keys     *auth.Service

	customers *customer.Service
	campaigns *campaign.Service
	messaging *messaging.Service
	pool      *messaging.Pool // nil on an API-only replica
	// providerGate paces and brakes providers across replicas; /health
	// reports its brakes.
	providerGate *throttle.Gate
	// probeGate reads the same brakes through the probes' own Redis
	// connections, so /health answers while the main pool is saturated.
	probeGate *throttle.Gate
	receipts  *messaging.Receipts // delivery receipts, applied in batches
	// subscriptions caches which webhook event types some endpoint wants;
	// hooks is the endpoints API.
	subscriptions *outbox.Subscriptions
	hooks         *outbox.Service
	webhooks      *messaging.Webhooks // the providers' callbacks
	metrics       *metrics.Registry

	// testSends delivers test sends; Run fails those a crash cut off.
	testSends *messaging.TestSender
}

// New connects to PostgreSQL and Redis (waiting up to startup_timeout for
// each to be reachable), migrates and seeds as configured, builds the
// features and binds the HTTP port. Nothing runs until Run. On error it
// returns a nil *App, having closed whatever it had opened, and an error of
// one line that names the cause.
func New(ctx context.Context, cfg Config, log *slog.Logger) (_ *App, err error) {
	// a is not the named result: each "return nil, err" sets the result to
	// nil, and the cleanup below must still see what was opened.
	a := &App{cfg: cfg, log: log}
	defer func() {
		if err != nil {
			a.Close()
		}
	}()

	log.Info("starting", "version", Version(), "config", cfg)
	if cfg.Auth.Disabled {
		log.Warn("authentication is DISABLED (AUTH_DISABLED=true): anyone who reaches this port can read and message every customer")
	}

	// With database.direct_url (behind PgBouncer), the database is created
	// and migrated through it first; the pool then only serves.
	direct := cfg.Database.DirectURL != ""
	if direct && (cfg.Database.CreateIfMissing || cfg.Database.MigrateOnStart) {
		if err := migrateDirect(ctx, cfg, log); err != nil {
			return nil, err
		}
	}
	a.db, err = openPostgres(ctx, cfg, log, postgres.Options{
		MaxOpenConns:    cfg.Database.MaxOpenConns,
		MaxIdleConns:    cfg.Database.MaxIdleConns,
		ConnMaxLifetime: cfg.Database.ConnMaxLifetime,
		CreateDatabase:  cfg.Database.CreateIfMissing && !direct,
	})
	if err != nil {
		return nil, err
	}
	if cfg.Database.MigrateOnStart && !direct {
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

	// go-redis logs by itself (failed dials, dropped connections) to stderr
	// in plain text; send it through slog. Its logger is global to the
	// process: the last App built sets it for every client.
	redisx.SetLogger(log.With("component", "redis"))
	a.rdb, err = openRedis(ctx, cfg, log, redisx.Options{})
	if err != nil {
		return nil, err
	}
	if err := a.openProbeClients(ctx); err != nil {
		return nil, err
	}
	if a.apiRdb, err = openRedis(ctx, cfg, log, redisx.Options{}); err != nil {
		return nil, fmt.Errorf("api: %w", err)
	}
	a.checkConnectionBudget(ctx)

	if err := a.wire(); err != nil {
		return nil, err
	}
	if a.migrator, err = migrations.Provider(a.probeDB.DB); err != nil {
		return nil, err
	}
	if cfg.BootstrapAPIKey != "" {
		if err := a.keys.Bootstrap(ctx, cfg.BootstrapAPIKey); err != nil {
			return nil, fmt.Errorf("store the bootstrap API key: %w", err)
		}
	}
	if !cfg.Auth.Disabled {
		if err := a.keys.WarnIfNoKeys(ctx); err != nil {
			return nil, err
		}
	}

	handler, err := a.routes()
	if err != nil {
		return nil, err
	}
	a.listener, err = net.Listen("tcp", net.JoinHostPort("", strconv.Itoa(cfg.API.Port)))
	if errors.Is(err, syscall.EADDRINUSE) {
		// The usual case, said plainly: "listen on port 8080: address already in use".
		return nil, fmt.Errorf("listen on port %d: %w", cfg.API.Port, syscall.EADDRINUSE)
	}
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

// retentionInterval paces the partition keeper (messaging.Retention): it
// makes the next messages partition ahead of the campaigns that need it and
// drops expired ones; both are a few catalog reads when there is nothing to
// do.
const retentionInterval = time.Minute

// wire builds the features. Features never import each other: app passes
// one feature's service to another through the small interfaces the
// consumer declares.
func (a *App) wire() error {
	cfg := a.cfg
	a.authn = auth.NewAuthenticator(auth.NewStore(a.db), cfg.Auth.CacheTTL)
	a.keys = auth.NewService(auth.NewStore(a.db), a.authn, a.log.With("component", "auth"))
	a.customers = customer.NewService(customer.NewRepo(a.db), cfg.Customers.DefaultRegion).
		WithLogger(a.log.With("component", "customers"))

	jobs := queue.New(a.rdb, cfg.Redis.KeyPrefix, cfg.Queue.Name)
	// Outbound webhooks: features write events in their own transactions
	// (the recorder and receipts only the types some endpoint wants); the
	// dispatcher delivers them, off the delivery path.
	a.subscriptions = outbox.NewSubscriptions(a.db, a.log.With("component", "webhooks"))
	a.hooks = outbox.NewService(outbox.NewStore(a.db), a.subscriptions, a.log.With("component", "webhooks"))
	msgRepo := messaging.NewRepo(a.db).WithEventTypes(a.subscriptions.Types)
	a.messaging = messaging.NewService(msgRepo, jobs, messaging.MaintenanceOptions{
		PromoteInterval: cfg.Sweeper.PromoteInterval,
		ReapInterval:    cfg.Worker.HeartbeatInterval,
		ConsumerTTL:     cfg.Worker.ConsumerTTL,
		SweepInterval:   cfg.Sweeper.Interval,
		StaleAfter:      cfg.Sweeper.StaleAfter,
		FeedFloor:       2*cfg.WorkerConcurrency + cfg.Worker.BatchSize,
	}, a.log.With("component", "sweeper"))
	// Erasing a customer anonymises their messages first (messaging), then
	// deletes the row (customer).
	a.customers.WithEraser(msgRepo, a.log.With("component", "customer"))
	a.providerGate = a.gate(a.rdb)
	a.probeGate = a.gate(a.probeRdb)
	a.metrics = a.newMetrics()
	// A receipt saying the recipient blocked us opts them out as a STOP
	// reply does: the opt-out, then their pending messages cancelled.
	a.receipts = messaging.NewReceipts(a.db, messaging.ReceiptOptions{
		OnOptOut:   messaging.OptOutHook(a.db, a.customers, a.log.With("component", "receipts")),
		OnApplied:  a.metrics.Outcomes,
		EventTypes: a.subscriptions.Types,
	}, a.log.With("component", "receipts"))
	a.webhooks = messaging.NewWebhooks(messaging.WebhookOptions{
		PublicBaseURL:    cfg.PublicBaseURL,
		TwilioAuthToken:  cfg.Twilio.AuthToken,
		ATCallbackSecret: cfg.AfricasTalking.CallbackSecret,
	}, a.db, a.receipts, a.customers, a.log.With("component", "webhooks"))

	// The preview and the workers enforce the same limits.
	limits := messaging.Limits{SMS: cfg.Limits.SMSMaxChars, WhatsApp: cfg.Limits.WhatsAppMaxChars}
	a.campaigns = campaign.NewService(campaign.NewRepo(a.db), messaging.Templates{Limits: limits}, contactFinder{a.customers}, nil).
		WithDispatch(dispatcher{a.messaging}, a.log.With("component", "campaign"))

	// The providers: the pool's, and test sends' (on API-only replicas too).
	sender, err := a.senders()
	if err != nil {
		return err
	}
	if cfg.WorkerConcurrency > 0 {
		host, _ := os.Hostname()
		a.pool = messaging.NewPool(messaging.PoolOptions{
			Consumer:          queue.NewConsumerID(host),
			Concurrency:       cfg.WorkerConcurrency,
			BatchSize:         cfg.Worker.BatchSize,
			SendTimeout:       cfg.Worker.SendTimeout,
			Lease:             cfg.Worker.Lease,
			HeartbeatInterval: cfg.Worker.HeartbeatInterval,
			DrainTimeout:      cfg.Worker.DrainTimeout,
			Starved:           a.messaging.WakeFeeder,
			Provider:          cfg.Providers.SMS,
			Observer:          a.messaging.CountThroughput(a.metrics), // and per-minute counts for GET /queue
			Limits:            limits,
			Gate:              a.providerGate,
			FailUncertain:     cfg.UncertainPolicy == "fail",
			OnOptOut: func(ctx context.Context, customerID int64, ch channel.Channel) {
				if _, err := a.customers.OptOut(ctx, customerID, ch); err != nil {
					a.log.Warn("could not opt out a customer the provider reported unsubscribed",
						"customer_id", customerID, "channel", ch, "err", err)
				}
			},
			ErrorBrake: messaging.ErrorBrakeOptions{
				Window: cfg.ErrorBrake.Window, Threshold: cfg.ErrorBrake.Threshold,
				Pause: a.campaigns.AutoPause,
			},
		}, jobs, msgRepo, sender, messaging.RetryPolicy{
			MaxAttempts: cfg.MaxRetryCount,
			Base:        cfg.RetryBackoffBase,
			Max:         cfg.RetryBackoffMax,
		}, a.log.With("component", "worker"))
	}
	return a.wireEstimatesAndTestSends(limits, sender, msgRepo)
}

// Addr is the address the HTTP server listens on (useful with port 0).
func (a *App) Addr() string { return a.listener.Addr().String() }

// Run serves HTTP, delivers messages and runs the background loops until
// ctx is cancelled. Shutdown then goes in this order:
//  1. the HTTP server stops accepting connections and waits for in-flight
//     requests (api.shutdown_timeout), while, at the same time, the worker
//     pool stops taking jobs and finishes in-flight deliveries
//     (worker.drain_timeout), recording every outcome;
//  2. the background loops (feeder, sweeper, promoter, reaper, materialiser, finisher, scheduler, partition keeper) stop;
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
	loops.Go(func() { a.messaging.RunMaintenance(loopCtx) }) // returns when loopCtx ends
	loops.Go(func() { a.receipts.Run(loopCtx) })             // returns when loopCtx ends
	loops.Go(func() { a.subscriptions.Run(loopCtx, 0) })     // returns when loopCtx ends
	loops.Go(func() {                                        // returns when loopCtx ends
		outbox.NewDispatcher(a.db, outbox.DispatcherOptions{
			Timeout: a.cfg.Webhooks.Timeout, DisableAfter: a.cfg.Webhooks.DisableAfter,
		}, a.log.With("component", "webhooks")).Run(loopCtx)
	})
	loops.Go(func() { a.messaging.RunFeeder(loopCtx) })                                 // returns when loopCtx ends
	loops.Go(func() { a.messaging.RunMaterializer(loopCtx, a.cfg.Sweeper.Interval) })   // returns when loopCtx ends
	loops.Go(func() { a.campaigns.RunFinisher(loopCtx, a.cfg.Sweeper.FinishInterval) }) // returns when loopCtx ends
	loops.Go(func() { a.testSends.Run(loopCtx, a.cfg.Sweeper.Interval) })               // returns when loopCtx ends and test deliveries are recorded
	loops.Go(func() {                                                                   // returns when loopCtx ends
		a.campaigns.RunScheduler(loopCtx, a.cfg.Schedule.Interval, a.cfg.Schedule.MaxLateness)
	})
	loops.Go(func() { // returns when loopCtx ends
		messaging.NewRetention(a.db, a.cfg.MessageRetentionPeriod(), a.log.With("component", "retention")).
			Run(loopCtx, retentionInterval)
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
// partly built App, and on one that never ran.
func (a *App) Close() {
	if a.listener != nil {
		a.listener.Close() // already closed if Run served on it: the error says so
	}
	if a.apiRdb != nil {
		if err := a.apiRdb.Close(); err != nil {
			a.log.Warn("close the api's redis client", "err", err)
		}
	}
	if a.probeRdb != nil {
		if err := a.probeRdb.Close(); err != nil {
			a.log.Warn("close the probes' redis client", "err", err)
		}
	}
	if a.probeDB != nil {
		if err := a.probeDB.Close(); err != nil {
			a.log.Warn("close the probes' postgres pool", "err", err)
		}
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

// wireEstimatesAndTestSends enables the estimate (priced by pricing.*) and
// test sends, which go through sender, the pool's providers, with the
// pool's deadline, lease, limits and provider gate.
func (a *App) wireEstimatesAndTestSends(limits messaging.Limits, sender provider.Sender, repo *messaging.Repo) error {
	pricing, err := a.cfg.PricingTable()
	if err != nil {
		return err
	}
	a.testSends = messaging.NewTestSender(repo, sender, messaging.TestSendOptions{
		Timeout: a.cfg.Worker.SendTimeout, Lease: a.cfg.Worker.Lease, Provider: a.cfg.Providers.SMS,
		Limits: limits, Gate: a.providerGate,
	}, a.log.With("component", "test-send"))
	a.campaigns.WithEstimates(estimator{messaging.NewEstimator(a.db, limits, pricing)}).
		WithTestSend(testSender{a.testSends}, a.customers.NormalizePhone)
	return nil
}

// estimator adapts messaging's Estimator to campaign.Estimator.
type estimator struct{ e *messaging.Estimator }

func (e estimator) Estimate(ctx context.Context, ch channel.Channel, tmpl string, a campaign.Audience, dups int) (any, error) {
	est, err := e.e.Estimate(ctx, ch, tmpl, messaging.Audience(a))
	if err != nil {
		return nil, err
	}
	est.DuplicatesRemoved = dups
	return est, nil
}

// testSender adapts messaging's TestSender to campaign.TestSender.
type testSender struct{ t *messaging.TestSender }

func (t testSender) TestSend(ctx context.Context, m campaign.TestSend) (any, error) {
	msg, err := t.t.Send(ctx, messaging.TestSend(m))
	if err != nil {
		return nil, err
	}
	return msg, nil
}
