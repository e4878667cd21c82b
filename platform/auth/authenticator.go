package auth

import (
	"context"
	"errors"
	"sync"
	"time"

	"golang.org/x/sync/singleflight"
)

// Authenticator resolves bearer keys to stored keys through a short-lived
// in-process cache: a key is looked up (and its last_used_at stamped) at most
// once per TTL per replica, so authentication costs a map read per request.
// Unknown keys are cached too, so repeating a bad key does not reach the
// database either. The cost is that a key revoked on another replica still
// works here for up to TTL; a revocation through this replica is immediate.
type Authenticator struct {
	store *Store
	ttl   time.Duration
	now   func() time.Time
	group singleflight.Group

	mu    sync.Mutex
	cache map[string]cached // by hash(secret)
}

type cached struct {
	key     Key
	valid   bool
	expires time.Time
}

// maxCached bounds the cache: past it, expired entries are dropped, and if
// that is not enough (a flood of random keys), the whole cache is.
const maxCached = 10000

// NewAuthenticator returns an Authenticator over store that trusts a lookup
// for ttl.
func NewAuthenticator(store *Store, ttl time.Duration) *Authenticator {
	return &Authenticator{store: store, ttl: ttl, now: time.Now, cache: make(map[string]cached)}
}

// Authenticate returns the live key whose secret is raw, or
// ErrUnauthenticated. Errors reaching the database are returned as they are
// (UNAVAILABLE), so an outage is not reported as a bad key.
func (a *Authenticator) Authenticate(ctx context.Context, raw string) (Key, error) {
	if CheckFormat(raw) != nil {
		return Key{}, ErrUnauthenticated
	}
	h := string(hash(raw))
	now := a.now()
	a.mu.Lock()
	c, ok := a.cache[h]
	a.mu.Unlock()
	if ok && now.Before(c.expires) {
		if !c.valid {
			return Key{}, ErrUnauthenticated
		}
		return c.key, nil
	}
	// One lookup per key at a time, however many requests carry it.
	v, err, _ := a.group.Do(h, func() (any, error) {
		k, err := a.store.use(ctx, raw)
		if err != nil && !errors.Is(err, ErrUnauthenticated) {
			return nil, err
		}
		c := cached{key: k, valid: err == nil, expires: a.now().Add(a.ttl)}
		a.put(h, c)
		return c, nil
	})
	if err != nil {
		return Key{}, err
	}
	c = v.(cached)
	if !c.valid {
		return Key{}, ErrUnauthenticated
	}
	return c.key, nil
}

func (a *Authenticator) put(h string, c cached) {
	a.mu.Lock()
	defer a.mu.Unlock()
	if len(a.cache) >= maxCached {
		now := a.now()
		for k, v := range a.cache {
			if !now.Before(v.expires) {
				delete(a.cache, k)
			}
		}
		if len(a.cache) >= maxCached {
			clear(a.cache)
		}
	}
	a.cache[h] = c
}

// Forget drops the cached entry of key id, so its revocation takes effect
// on this replica at once.
func (a *Authenticator) Forget(id int64) {
	a.mu.Lock()
	defer a.mu.Unlock()
	for h, c := range a.cache {
		if c.valid && c.key.ID == id {
			delete(a.cache, h)
		}
	}
}
