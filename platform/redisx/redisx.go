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

// Open parses url, connects and pings.
func Open(ctx context.Context, url string) (*redis.Client, error) {
	opt, err := redis.ParseURL(url)
	if err != nil {
		return nil, fmt.Errorf("parse redis url: %w", err)
	}
	// Blocking pops use their own short timeouts; keep the socket reads
	// above them so a pop is never cut off by the client.
	opt.ReadTimeout = 5 * time.Second
	opt.WriteTimeout = 5 * time.Second
	opt.DialTimeout = 3 * time.Second
	// Let a caller's deadline or cancellation cut a call short, so shutdown
	// and request timeouts are not held up by a slow or absent Redis.
	opt.ContextTimeoutEnabled = true
	c := redis.NewClient(opt)
	pctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	if err := c.Ping(pctx).Err(); err != nil {
		c.Close()
		return nil, fmt.Errorf("ping redis at %s:%d: %w", opt.Addr, opt.DB, err)
	}
	return c, nil
}

// Keys prefixes every key the service uses, so that tests (and several
// deployments sharing one Redis) never see each other's keys.
type Keys struct{ Prefix string }

// Key returns Prefix + name.
func (k Keys) Key(name string) string { return k.Prefix + name }

// IsUnavailable reports whether err means Redis cannot be reached.
func IsUnavailable(err error) bool {
	if err == nil || errors.Is(err, redis.Nil) {
		return false
	}
	var ne net.Error
	return errors.As(err, &ne) || errors.Is(err, syscall.ECONNREFUSED) ||
		errors.Is(err, syscall.ECONNRESET) || errors.Is(err, redis.ErrClosed)
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
