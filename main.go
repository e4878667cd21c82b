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
	cfg, err := app.Load(fs)
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 2
	}
	log, err := logging.New(os.Stderr, cfg.Log.Level, cfg.Log.Format)
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 2
	}

	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	if err := app.Main(ctx, cfg, log, fs.Args(), os.Stdout); err != nil {
		log.Error("exiting", "err", err)
		return 1
	}
	return 0
}
