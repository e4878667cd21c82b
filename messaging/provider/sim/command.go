package sim

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"strconv"
	"strings"
	"time"

	"github.com/spf13/pflag"
)

const usage = `sim plays Africa's Talking and Twilio over HTTP for tests and local runs.

Usage: sim [flags]

Every flag can also be set by the environment variable shown with it; a flag
given on the command line wins.

`

const shutdownTimeout = 10 * time.Second

// Command runs the simulator as a process: it parses args (flags, each also
// settable by SIM_<FLAG> in the environment, e.g. SIM_ACCEPT_RATE), listens
// on all interfaces at --port, writes one line to stdout with the address
// and the endpoints, and serves until ctx ends; then it stops accepting
// requests, waits up to 10s for those in progress, drops receipts not yet
// posted and returns nil. --help writes the usage to stdout and returns nil.
func Command(ctx context.Context, args []string, stdout io.Writer) error {
	return command(ctx, args, stdout, os.LookupEnv)
}

func command(ctx context.Context, args []string, stdout io.Writer, lookupEnv func(string) (string, bool)) error {
	fs := pflag.NewFlagSet("sim", pflag.ContinueOnError)
	fs.SetOutput(stdout)
	var (
		port int
		o    Options
	)
	fs.IntVar(&port, "port", 9090, "port to listen on, on all interfaces (0 picks one)")
	fs.DurationVar(&o.Latency, "latency", 100*time.Millisecond, "how long each send waits before it is answered")
	fs.DurationVar(&o.LatencyJitter, "latency-jitter", 0, "random extra latency, up to this")
	fs.Float64Var(&o.AcceptRate, "accept-rate", 1, "share of sends accepted")
	fs.Float64Var(&o.PermanentRate, "permanent-rate", 0, "share of the sends not accepted that fail permanently (the rest fail transiently)")
	fs.Float64Var(&o.ThrottleRate, "throttle-rate", 0, "share of send requests answered 429 Retry-After: 1")
	fs.DurationVar(&o.ReceiptDelay, "receipt-delay", time.Second, "how long after a send its delivery receipt is posted")
	fs.DurationVar(&o.ReceiptJitter, "receipt-jitter", 0, "random extra receipt delay, up to this")
	fs.Float64Var(&o.DeliveredRatio, "delivered-ratio", 0.95, "share of accepted messages reported delivered (the rest undelivered)")
	fs.Float64Var(&o.DuplicateReceipts, "duplicate-receipts", 0, "probability that a final receipt is posted twice")
	fs.BoolVar(&o.OutOfOrder, "out-of-order", false, `Twilio: post an intermediate "sent" callback after the final one`)
	fs.StringVar(&o.ATDeliveryURL, "at-delivery-url", "", "where Africa's Talking delivery reports go (none if empty)")
	fs.StringVar(&o.ATInboundURL, "at-inbound-url", "", "where Africa's Talking incoming messages go")
	fs.StringVar(&o.TwilioInboundURL, "twilio-inbound-url", "", "where Twilio incoming messages go")
	fs.StringVar(&o.ATUsername, "at-username", "sandbox", "Africa's Talking username required (any if empty)")
	fs.StringVar(&o.ATAPIKey, "at-api-key", "", "Africa's Talking apiKey required (any if empty)")
	fs.StringVar(&o.TwilioAccountSID, "twilio-account-sid", "", "Twilio account SID required (any if empty)")
	fs.StringVar(&o.TwilioAuthToken, "twilio-auth-token", "", "Twilio auth token required, and the key callbacks are signed with (any if empty)")
	fs.Uint64Var(&o.Seed, "seed", 0, "seed for every random choice (0: random)")
	fs.VisitAll(func(f *pflag.Flag) { f.Usage += " [" + envName(f.Name) + "]" })
	fs.Usage = func() {
		_, _ = io.WriteString(stdout, usage)
		fs.PrintDefaults()
	}

	if err := fs.Parse(args); err != nil {
		if errors.Is(err, pflag.ErrHelp) {
			return nil
		}
		return err
	}
	if fs.NArg() > 0 {
		return fmt.Errorf("sim: unexpected arguments %q", fs.Args())
	}
	var errs []error
	fs.VisitAll(func(f *pflag.Flag) {
		if f.Changed {
			return
		}
		if v, ok := lookupEnv(envName(f.Name)); ok {
			if err := fs.Set(f.Name, v); err != nil {
				errs = append(errs, fmt.Errorf("%s: %w", envName(f.Name), err))
			}
		}
	})
	for name, p := range map[string]float64{
		"accept-rate": o.AcceptRate, "permanent-rate": o.PermanentRate, "throttle-rate": o.ThrottleRate,
		"delivered-ratio": o.DeliveredRatio, "duplicate-receipts": o.DuplicateReceipts,
	} {
		if p < 0 || p > 1 {
			errs = append(errs, fmt.Errorf("--%s must be between 0 and 1, got %v", name, p))
		}
	}
	if port < 0 || port > 65535 {
		errs = append(errs, fmt.Errorf("--port must be between 0 and 65535, got %d", port))
	}
	if err := errors.Join(errs...); err != nil {
		return fmt.Errorf("sim: %w", err)
	}
	// On the command line 0 means none; in Options 0 means the default.
	if o.AcceptRate == 0 {
		o.AcceptRate = -1
	}
	if o.DeliveredRatio == 0 {
		o.DeliveredRatio = -1
	}
	o.Log = slog.New(slog.NewTextHandler(os.Stderr, nil))

	s := New(o)
	defer s.Close() // after the server has stopped taking sends
	ln, err := (&net.ListenConfig{}).Listen(ctx, "tcp", ":"+strconv.Itoa(port))
	if err != nil {
		return fmt.Errorf("sim: %w", err)
	}
	fmt.Fprintf(stdout, "sim listening on %s: africastalking POST /version1/messaging, "+
		"twilio POST /2010-04-01/Accounts/{AccountSid}/Messages.json, "+
		"GET /sim/stats, POST /sim/balance, POST /sim/inbound, GET /sim/health\n", ln.Addr())

	srv := &http.Server{Handler: s.Handler(), ReadHeaderTimeout: 10 * time.Second}
	served := make(chan error, 1)
	// Exits when Shutdown closes the listener, or when serving fails.
	go func() { served <- srv.Serve(ln) }()
	select {
	case err := <-served:
		return fmt.Errorf("sim: serve: %w", err)
	case <-ctx.Done():
	}
	sctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), shutdownTimeout)
	defer cancel()
	err = srv.Shutdown(sctx)
	<-served
	if err != nil {
		return fmt.Errorf("sim: shutdown: %w", err)
	}
	return nil
}

// envName is the environment variable for a flag: SIM_ and the name in
// upper snake case.
func envName(flag string) string {
	return "SIM_" + strings.ToUpper(strings.ReplaceAll(flag, "-", "_"))
}
