// Package redisx opens the service's Redis client and names its keys.
package redisx

import (
	"context"
	"errors"
	"fmt"
	"net"
	"syscall"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/campaignd/dispatch/platform/errs"
)

// Options tune a client. Zero fields keep go-redis's defaults.
type Options struct {
	// PoolSize caps the client's connections, its pipelines' included
	// (go-redis's default: ten per CPU, and up to ten more for pipelines).
	PoolSize int
}

// Open parses url, connects and pings. A server that cannot be reached
// yields the client's error as it is, with no url in it (a url may hold a
// password): the caller says which server, with Addr, and can test the error
// with IsUnavailable to decide to wait.
func Open(ctx context.Context, url string) (*redis.Client, error) {
	return OpenWith(ctx, url, Options{})
}

// OpenWith is Open with options.
func OpenWith(ctx context.Context, url string, o Options) (*redis.Client, error) {
	opt, err := redis.ParseURL(url)
	if err != nil {
		return nil, fmt.Errorf("parse redis url: %w", err)
	}
	if o.PoolSize > 0 {
		opt.PoolSize = o.PoolSize
		opt.PipelinePoolSize = -1 // pipelines share the pool
	}
	// Blocking pops use their own short timeouts; keep the socket reads
	// above them so a pop is never cut off by the client.
	opt.ReadTimeout = 5 * time.Second
	opt.WriteTimeout = 5 * time.Second
	opt.DialTimeout = 3 * time.Second
	// Let a caller's deadline or cancellation cut a call short, so shutdown
	// and request timeouts are not held up by a slow or absent Redis.
	opt.ContextTimeoutEnabled = true
	// One plain dial first, so that a server that is not up (yet) is
	// reported at once: the client would retry the dial and the command on
	// its own for seconds, printing each failure to stderr.
	dctx, cancel := context.WithTimeout(ctx, opt.DialTimeout)
	conn, err := new(net.Dialer).DialContext(dctx, opt.Network, opt.Addr)
	cancel()
	if err != nil {
		return nil, err
	}
	conn.Close()
	c := redis.NewClient(opt)
	pctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	if err := c.Ping(pctx).Err(); err != nil {
		c.Close()
		return nil, err
	}
	return c, nil
}

// Addr returns the host:port url connects to, for logs and errors: no
// user, password or database number.
func Addr(url string) string {
	opt, err := redis.ParseURL(url)
	if err != nil {
		return "(unparseable redis url)"
	}
	return opt.Addr
}

// Keys prefixes every key the service uses, so that tests (and several
// deployments sharing one Redis) never see each other's keys.
type Keys struct{ Prefix string }

// Key returns Prefix + name.
func (k Keys) Key(name string) string { return k.Prefix + name }

// IsUnavailable reports whether err means Redis cannot be reached or is not
// serving yet (loading its data set, or out of client slots), as opposed to
// a refused command or credentials.
func IsUnavailable(err error) bool {
	if err == nil || errors.Is(err, redis.Nil) {
		return false
	}
	var ne net.Error
	return errors.As(err, &ne) || errors.Is(err, syscall.ECONNREFUSED) ||
		errors.Is(err, syscall.ECONNRESET) || errors.Is(err, redis.ErrClosed) ||
		redis.IsLoadingError(err) || redis.IsMaxClientsError(err)
}

// Classify maps an unreachable Redis to UNAVAILABLE and wraps other errors.
func Classify(err error, what string) error {
	if err == nil {
		return nil
	}
	if IsUnavailable(err) {
		return errs.Unavailable("redis", fmt.Errorf("%s: %w", what, err))
	}
	return fmt.Errorf("%s: %w", what, err)
}
