package app

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"strings"
	"time"

	"github.com/jmoiron/sqlx"

	"github.com/campaignd/dispatch/db/migrations"
	"github.com/campaignd/dispatch/db/seed"
	"github.com/campaignd/dispatch/messaging/provider/sim"
	"github.com/campaignd/dispatch/platform/postgres"
)

// Usage describes the commands Main accepts.
const Usage = `usage: dispatch [flags] [command]

commands:
  serve            run the HTTP API and the worker pool (default)
  migrate up       apply pending migrations
  migrate down     roll back the latest migration
  migrate status   list migrations and whether each is applied
  seed             insert the demo customers and campaigns (idempotent)
  healthcheck      exit 0 if the local service's /readyz answers 200 (for container healthchecks)
  apikey create NAME [read|write|admin]
                   create an API key (admin by default) and print it, once
  apikey list      list API keys (never their secrets)
  apikey revoke ID revoke an API key
  stats rebuild [ID]
                   recount campaigns' stats counters from their messages and correct any that drifted
  version          print the version
  provider-sim [flags]
                   serve a simulator of the Africa's Talking and Twilio APIs (see provider-sim --help)

flags:
`

// Main runs the command in args (nil or "serve" runs the service until ctx
// ends) and returns the process exit code.
func Main(ctx context.Context, cfg Config, log *slog.Logger, args []string, out io.Writer) error {
	cmd := "serve"
	if len(args) > 0 {
		cmd = args[0]
	}
	switch cmd {
	case "serve":
		if len(args) > 1 {
			return fmt.Errorf("serve takes no arguments")
		}
		a, err := New(ctx, cfg, log)
		if err != nil {
			return err
		}
		defer a.Close()
		return a.Run(ctx)
	case "migrate":
		sub := ""
		if len(args) == 2 {
			sub = args[1]
		}
		return migrate(ctx, cfg, log, sub, out)
	case "seed":
		db, err := openMigrated(ctx, cfg, log)
		if err != nil {
			return err
		}
		defer db.Close()
		if _, err := seed.Apply(ctx, db); err != nil {
			return err
		}
		fmt.Fprintln(out, "seed applied")
		return nil
	case "healthcheck":
		return healthcheck(ctx, cfg.API.Port)
	case "apikey":
		return apikey(ctx, cfg, log, args[1:], out)
	case "stats":
		return statsCmd(ctx, cfg, log, args[1:], out)
	case "version":
		fmt.Fprintln(out, Version())
		return nil
	}
	return fmt.Errorf("unknown command %q\n%s", strings.Join(args, " "), Usage)
}

// openMigrated opens a small pool for a one-off command and applies pending
// migrations first, as serve would.
func openMigrated(ctx context.Context, cfg Config, log *slog.Logger) (*sqlx.DB, error) {
	db, err := openPostgresDirect(ctx, cfg, log, postgres.Options{MaxOpenConns: 2, CreateDatabase: cfg.Database.CreateIfMissing})
	if err != nil {
		return nil, err
	}
	if _, err := migrations.Up(ctx, db.DB); err != nil {
		db.Close()
		return nil, err
	}
	return db, nil
}

func migrate(ctx context.Context, cfg Config, log *slog.Logger, sub string, out io.Writer) error {
	db, err := openPostgresDirect(ctx, cfg, log, postgres.Options{MaxOpenConns: 2, CreateDatabase: cfg.Database.CreateIfMissing})
	if err != nil {
		return err
	}
	defer db.Close()
	p, err := migrations.Provider(db.DB)
	if err != nil {
		return err
	}
	switch sub {
	case "up":
		res, err := p.Up(ctx)
		for _, r := range res {
			fmt.Fprintf(out, "applied %s (%s)\n", r.Source.Path, r.Duration)
		}
		if err != nil {
			return fmt.Errorf("migrate up: %w", err)
		}
		if len(res) == 0 {
			fmt.Fprintln(out, "no pending migrations")
		}
		return nil
	case "down":
		r, err := p.Down(ctx)
		if err != nil {
			return fmt.Errorf("migrate down: %w", err)
		}
		fmt.Fprintf(out, "rolled back %s\n", r.Source.Path)
		return nil
	case "status":
		st, err := p.Status(ctx)
		if err != nil {
			return fmt.Errorf("migrate status: %w", err)
		}
		for _, s := range st {
			when := "pending"
			if s.State == "applied" {
				when = "applied " + s.AppliedAt.UTC().Format("2006-01-02T15:04:05Z")
			}
			fmt.Fprintf(out, "%-40s %s\n", s.Source.Path, when)
		}
		return nil
	}
	return fmt.Errorf("migrate needs up, down or status\n%s", Usage)
}

// healthcheck asks the service on this host for /readyz, so a distroless
// container (no shell, no curl) can be health-checked by its own binary.
// Readiness, not liveness: a container whose PostgreSQL or Redis is gone is
// shown unhealthy, which is what an operator looking at it needs to see;
// compose does not restart on it.
func healthcheck(ctx context.Context, port int) error {
	ctx, cancel := context.WithTimeout(ctx, 3*time.Second)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, fmt.Sprintf("http://127.0.0.1:%d/readyz", port), nil)
	if err != nil {
		return err
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return fmt.Errorf("healthcheck: %w", err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		body, _ := io.ReadAll(io.LimitReader(resp.Body, 512))
		return fmt.Errorf("healthcheck: status %d: %s", resp.StatusCode, body)
	}
	return nil
}

// ProviderSim runs the provider simulator (dispatch provider-sim) until ctx
// ends.
func ProviderSim(ctx context.Context, args []string, out io.Writer) error {
	return sim.Command(ctx, args, out)
}
