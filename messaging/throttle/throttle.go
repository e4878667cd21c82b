// Package throttle paces and brakes providers for every replica at once,
// through Redis: a shared rate per provider (GCRA, go-redis/redis_rate), a
// cool-down after a provider answers 429, and a brake after an account-level
// failure (insufficient balance, bad credentials) that stops all sends to
// that provider until it lifts. Waiting here is never a delivery attempt.
package throttle

import (
	"context"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/go-redis/redis_rate/v10"
	"github.com/redis/go-redis/v9"

	"github.com/campaignd/dispatch/platform/redisx"
)

// Options configure a Gate.
type Options struct {
	// Rates are each provider's messages per second across all replicas
	// (AFRICASTALKING_RATE, TWILIO_RATE, SENDER_RATE); a provider without a
	// positive rate is not paced.
	Rates map[string]int
	// Brake is how long an account-level failure stops a provider before a
	// send is tried again (PROVIDERS_BRAKE); each brake in a row doubles it,
	// up to MaxBrake.
	Brake, MaxBrake time.Duration
	// CacheFor is how long a replica trusts what it last read of a brake
	// (default 500ms), so the hot path reads Redis rarely.
	CacheFor time.Duration
}

// Gate implements the worker pool's gate over Redis.
type Gate struct {
	rdb     redis.UniversalClient
	limiter *redis_rate.Limiter
	keys    redisx.Keys
	opts    Options

	// lines admits one goroutine per provider at a time to the shared
	// limiter, so a thousand waiting deliveries poll Redis once per slot,
	// not once each.
	lines sync.Map // provider → *sync.Mutex

	mu    sync.Mutex
	cache map[string]brakeState // provider → what Redis said, and when
}

type brakeState struct {
	until  time.Time // zero: not braked
	reason string
	read   time.Time
}

// New returns a gate over rdb, its keys under prefix.
func New(rdb redis.UniversalClient, prefix string, opts Options) *Gate {
	if opts.Brake <= 0 {
		opts.Brake = 30 * time.Second
	}
	if opts.MaxBrake < opts.Brake {
		opts.MaxBrake = max(opts.Brake, 10*time.Minute)
	}
	if opts.CacheFor <= 0 {
		opts.CacheFor = 500 * time.Millisecond
	}
	return &Gate{rdb: rdb, limiter: redis_rate.NewLimiter(rdb), keys: redisx.Keys{Prefix: prefix},
		opts: opts, cache: map[string]brakeState{}}
}

// A provider's brake, strikes and cool-down keys share one hash tag
// ({<prefix>provider:<name>}): read reads brake and cool-down in one MGET,
// which a Redis Cluster serves only within one slot. The limiter's own key
// stands alone (one key per script).
func (g *Gate) brakeKey(provider string) string { return g.keys.Tag("provider:"+provider) + ":brake" }
func (g *Gate) strikesKey(provider string) string {
	return g.keys.Tag("provider:"+provider) + ":strikes"
}
func (g *Gate) cooldownKey(provider string) string {
	return g.keys.Tag("provider:"+provider) + ":cooldown"
}

// Admit implements the pool's Gate: 0 when provider may take a message
// now, else how long to wait.
func (g *Gate) Admit(ctx context.Context, provider string, maxWait time.Duration) (time.Duration, error) {
	st, err := g.state(ctx, provider)
	if err != nil {
		return 0, err
	}
	if wait := time.Until(st.until); wait > 0 {
		return wait, nil
	}
	rate := g.opts.Rates[provider]
	if rate <= 0 {
		return 0, nil
	}
	line, _ := g.lines.LoadOrStore(provider, &sync.Mutex{})
	mu := line.(*sync.Mutex)
	deadline := time.Now().Add(maxWait)
	mu.Lock()
	defer mu.Unlock()
	limit := redis_rate.Limit{Rate: rate, Burst: max(1, rate/10), Period: time.Second}
	for {
		res, err := g.limiter.Allow(ctx, g.keys.Key("provider:"+provider), limit)
		if err != nil {
			return 0, redisx.Classify(err, "provider rate")
		}
		if res.Allowed > 0 {
			return 0, nil
		}
		wait := res.RetryAfter
		if time.Now().Add(wait).After(deadline) {
			return wait, nil
		}
		t := time.NewTimer(wait)
		select {
		case <-ctx.Done():
			t.Stop()
			return 0, ctx.Err()
		case <-t.C:
		}
	}
}

// Throttled makes every replica hold sends to provider for d: the provider
// said it is overloaded, and hammering it makes it worse.
func (g *Gate) Throttled(ctx context.Context, provider string, d time.Duration) {
	if d <= 0 {
		return
	}
	until := time.Now().Add(d)
	// SET NX: the first 429 of a storm sets the pause; later ones within it
	// do not keep extending it.
	_ = g.rdb.SetNX(ctx, g.cooldownKey(provider), strconv.FormatInt(until.UnixMilli(), 10), d).Err()
	g.mu.Lock()
	if st := g.cache[provider]; st.until.Before(until) {
		g.cache[provider] = brakeState{until: until, reason: "throttled by the provider", read: time.Now()}
	}
	g.mu.Unlock()
}

// Brake stops sends to provider on every replica for the brake time and
// returns how long it holds. Failures during a brake (the sends already in
// flight when it began) do not extend it; the first failure after it lifts
// brakes again for twice as long, up to MaxBrake. The doubling resets once
// the provider has gone MaxBrake without a brake.
func (g *Gate) Brake(ctx context.Context, provider, reason string) time.Duration {
	strikes, _ := g.rdb.Get(ctx, g.strikesKey(provider)).Int64()
	d := g.opts.Brake
	for i := int64(0); i < strikes && d < g.opts.MaxBrake; i++ {
		d *= 2
	}
	d = min(d, g.opts.MaxBrake)
	until := time.Now().Add(d)
	set, err := g.rdb.SetNX(ctx, g.brakeKey(provider), strconv.FormatInt(until.UnixMilli(), 10)+" "+reason, d).Result()
	if err != nil {
		return d
	}
	if !set {
		st, err := g.read(ctx, provider)
		if err == nil && time.Until(st.until) > 0 {
			g.mu.Lock()
			g.cache[provider] = st
			g.mu.Unlock()
			return time.Until(st.until)
		}
		return d
	}
	pipe := g.rdb.TxPipeline()
	pipe.Incr(ctx, g.strikesKey(provider))
	pipe.Expire(ctx, g.strikesKey(provider), d+g.opts.MaxBrake)
	_, _ = pipe.Exec(ctx)
	g.mu.Lock()
	g.cache[provider] = brakeState{until: until, reason: reason, read: time.Now()}
	g.mu.Unlock()
	return d
}

// Status is a provider's brake as /health shows it.
type Status struct {
	Braked bool      `json:"braked"`
	Until  time.Time `json:"until,omitzero"`
	Reason string    `json:"reason,omitempty"`
}

// Status reads provider's brake from Redis.
func (g *Gate) Status(ctx context.Context, provider string) (Status, error) {
	st, err := g.read(ctx, provider)
	if err != nil {
		return Status{}, err
	}
	if time.Until(st.until) <= 0 {
		return Status{}, nil
	}
	return Status{Braked: true, Until: st.until.UTC(), Reason: st.reason}, nil
}

// state returns provider's brake, from the cache while it is fresh.
func (g *Gate) state(ctx context.Context, provider string) (brakeState, error) {
	g.mu.Lock()
	st, ok := g.cache[provider]
	g.mu.Unlock()
	if ok && time.Since(st.read) < g.opts.CacheFor {
		return st, nil
	}
	st, err := g.read(ctx, provider)
	if err != nil {
		return st, err
	}
	g.mu.Lock()
	g.cache[provider] = st
	g.mu.Unlock()
	return st, nil
}

// read reads provider's brake and cool-down from Redis; the later of the
// two holds.
func (g *Gate) read(ctx context.Context, provider string) (brakeState, error) {
	vals, err := g.rdb.MGet(ctx, g.brakeKey(provider), g.cooldownKey(provider)).Result()
	if err != nil {
		return brakeState{}, redisx.Classify(err, "provider brake")
	}
	st := brakeState{read: time.Now()}
	for i, v := range vals {
		s, ok := v.(string)
		if !ok {
			continue
		}
		ms, reason, _ := strings.Cut(s, " ")
		n, err := strconv.ParseInt(ms, 10, 64)
		if err != nil {
			continue
		}
		if until := time.UnixMilli(n); until.After(st.until) {
			st.until = until
			st.reason = reason
			if i == 1 {
				st.reason = "throttled by the provider"
			}
		}
	}
	return st, nil
}
