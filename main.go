// Command dispatch is the campaign dispatch service: an HTTP API and a worker
// pool in one binary, backed by PostgreSQL and Redis.
package main

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/signal"
	"syscall"

	"github.com/spf13/pflag"

	"github.com/campaignd/dispatch/app"
	"github.com/campaignd/dispatch/platform/logging"
)

func main() {
	os.Exit(run())
}

func run() int {
	// The provider simulator is a tool of its own: it has its own flags and
	// needs neither the service's configuration nor its databases.
	if len(os.Args) > 1 && os.Args[1] == "provider-sim" {
		ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
		defer stop()
		if err := app.ProviderSim(ctx, os.Args[2:], os.Stdout); err != nil {
			fmt.Fprintln(os.Stderr, "provider-sim:", err)
			return 1
		}
		return 0
	}
	fs := pflag.NewFlagSet("dispatch", pflag.ContinueOnError)
	fs.Usage = func() {
		fmt.Fprint(os.Stderr, app.Usage)
		fs.PrintDefaults()
	}
	app.Flags(fs)
	if err := fs.Parse(os.Args[1:]); err != nil {
		if errors.Is(err, pflag.ErrHelp) {
			return 0
		}
		return 2
	}
	// A bad configuration is a start-up failure like any other: one line at
	// error level through the configured logger, or, when the logger's own
	// settings are what is wrong, one plain line on stderr; exit 1.
	cfg, cfgErr := app.Load(fs)
	log, err := logging.New(os.Stderr, cfg.Log.Level, cfg.Log.Format)
	if err != nil {
		if cfgErr != nil {
			err = cfgErr // it lists the bad log setting with any others
		}
		fmt.Fprintln(os.Stderr, "exiting:", err)
		return 1
	}
	if cfgErr != nil {
		log.Error("exiting", "err", cfgErr)
		return 1
	}

	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	if err := app.Main(ctx, cfg, log, fs.Args(), os.Stdout); err != nil {
		log.Error("exiting", "err", err)
		return 1
	}
	return 0
}
