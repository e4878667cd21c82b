// Package ratelimit limits API requests per client with a GCRA limiter kept in
// Redis (github.com/go-redis/redis_rate), so every replica draws on the same
// allowance, and answers the standard RateLimit-* and Retry-After headers.
package ratelimit

import (
	"log/slog"
	"math"
	"strconv"
	"time"

	"github.com/go-redis/redis_rate/v10"
	"github.com/labstack/echo/v4"
	"github.com/redis/go-redis/v9"

	"github.com/campaignd/dispatch/platform/errs"
)

// ErrLimited is the 429 a client gets beyond its allowance.
var ErrLimited = errs.New(errs.KindRateLimited, errs.CodeRateLimited, "rate limit exceeded; retry after the number of seconds in Retry-After")

// Options configure Middleware.
type Options struct {
	Rate  int // requests per second, sustained
	Burst int // requests allowed at once above the sustained rate
	// Prefix goes before every limiter key (the deployment's Redis key prefix).
	// redis_rate puts its own "rate:" in front; its keys expire by themselves
	// once the allowance is full again.
	Prefix string
	// Client names the allowance a request draws on, such as "key:12";
	// ok false leaves the request unlimited (public routes).
	Client func(c echo.Context) (id string, ok bool)
	Log    *slog.Logger
}

// Middleware admits a request when its client's allowance has room and
// answers 429 RATE_LIMITED otherwise. Every limited response, admitted or
// not, carries RateLimit-Limit, RateLimit-Remaining and RateLimit-Reset
// (seconds until the allowance is full again); a 429 adds Retry-After.
// If Redis cannot be reached the request is admitted and a warning logged:
// the limiter protects the service, and an outage of it should not take the
// whole API down with it.
func Middleware(rdb redis.UniversalClient, o Options) echo.MiddlewareFunc {
	limiter := redis_rate.NewLimiter(rdb)
	limit := redis_rate.Limit{Rate: o.Rate, Burst: o.Burst, Period: time.Second}
	return func(next echo.HandlerFunc) echo.HandlerFunc {
		return func(c echo.Context) error {
			id, ok := o.Client(c)
			if !ok {
				return next(c)
			}
			ctx := c.Request().Context()
			res, err := limiter.Allow(ctx, o.Prefix+"ratelimit:"+id, limit)
			if err != nil {
				o.Log.WarnContext(ctx, "rate limiter unavailable; request admitted", "client", id, "err", err)
				return next(c)
			}
			h := c.Response().Header()
			h.Set("RateLimit-Limit", strconv.Itoa(o.Burst))
			h.Set("RateLimit-Remaining", strconv.Itoa(res.Remaining))
			h.Set("RateLimit-Reset", strconv.Itoa(ceilSeconds(res.ResetAfter)))
			if res.Allowed == 0 {
				h.Set("Retry-After", strconv.Itoa(max(1, ceilSeconds(res.RetryAfter))))
				return ErrLimited
			}
			return next(c)
		}
	}
}

func ceilSeconds(d time.Duration) int {
	if d <= 0 {
		return 0
	}
	return int(math.Ceil(d.Seconds()))
}
