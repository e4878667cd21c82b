// Package redisx opens the service's Redis client and names its keys.
package redisx

import (
	"context"
	"errors"
	"fmt"
	"net"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/campaignd/dispatch/platform/errs"
)

// Options tune a client. Zero fields keep go-redis's defaults.
type Options struct {
	// PoolSize caps the client's connections, its pipelines' included
	// (go-redis's default: ten per CPU, and up to ten more for pipelines).
	// On a cluster the cap holds per node.
	PoolSize int
}

// Target says which Redis the service uses: one node (URL), a Redis Cluster
// (ClusterAddrs), or the primary a set of Sentinels names (SentinelAddrs
// and SentinelMaster). Exactly one of URL, ClusterAddrs and SentinelAddrs
// is meant to be set; Mode says which one Open uses when several are.
type Target struct {
	URL string // redis:// or rediss:// URL of one node (it carries its own credentials)

	// ClusterAddrs are host:port seeds of a cluster: any reachable one
	// tells the client the others.
	ClusterAddrs []string

	// SentinelAddrs are host:port addresses of Sentinels watching the
	// primary named SentinelMaster; the client follows it across
	// failovers.
	SentinelAddrs  []string
	SentinelMaster string

	// Username and Password authenticate to the cluster's nodes or the
	// Sentinel-managed primary (a URL carries its own); SentinelPassword
	// to the Sentinels themselves.
	Username, Password, SentinelPassword string
}

// Target modes, as Mode returns them.
const (
	ModeSingle   = "single"
	ModeCluster  = "cluster"
	ModeSentinel = "sentinel"
)

// Mode is ModeCluster when cluster seeds are given, else ModeSentinel when
// Sentinels are, else ModeSingle.
func (t Target) Mode() string {
	switch {
	case len(t.ClusterAddrs) > 0:
		return ModeCluster
	case len(t.SentinelAddrs) > 0:
		return ModeSentinel
	default:
		return ModeSingle
	}
}

// Addr names the servers t connects to, for logs and errors: addresses and
// the mode, never a user or password. "127.0.0.1:6379";
// "cluster 10.0.0.1:7000,10.0.0.2:7000"; "sentinel master mymaster via
// 10.0.0.1:26379,10.0.0.2:26379".
func (t Target) Addr() string {
	switch t.Mode() {
	case ModeCluster:
		return "cluster " + strings.Join(t.ClusterAddrs, ",")
	case ModeSentinel:
		return "sentinel master " + t.SentinelMaster + " via " + strings.Join(t.SentinelAddrs, ",")
	default:
		return Addr(t.URL)
	}
}

// SplitAddrs reads a comma-separated list of host:port addresses
// (REDIS_CLUSTER_ADDRS, REDIS_SENTINEL_ADDRS), ignoring blanks; the error
// names each entry that is not host:port with a numeric port.
func SplitAddrs(s string) ([]string, error) {
	var addrs, bad []string
	for _, f := range strings.Split(s, ",") {
		f = strings.TrimSpace(f)
		if f == "" {
			continue
		}
		host, port, err := net.SplitHostPort(f)
		if n, perr := strconv.Atoi(port); err != nil || host == "" || perr != nil || n < 1 || n > 65535 {
			bad = append(bad, strconv.Quote(f))
			continue
		}
		addrs = append(addrs, f)
	}
	if len(bad) > 0 {
		return addrs, fmt.Errorf("%s: not host:port", strings.Join(bad, ", "))
	}
	return addrs, nil
}

// Open connects to one node at url and pings it. A server that cannot be
// reached yields the client's error as it is, with no url in it (a url may
// hold a password): the caller says which server, with Addr, and can test
// the error with IsUnavailable to decide to wait.
func Open(ctx context.Context, url string) (*redis.Client, error) {
	c, err := OpenWith(ctx, Target{URL: url}, Options{})
	if err != nil {
		return nil, err
	}
	return c.(*redis.Client), nil
}

// OpenWith connects to t and pings it, as Open does: a *redis.Client for
// one node or a Sentinel-managed primary, a *redis.ClusterClient for a
// cluster. Every key the service puts in one Lua script or MULTI shares a
// hash tag (Keys.Tag), so all three serve the same code.
func OpenWith(ctx context.Context, t Target, o Options) (redis.UniversalClient, error) {
	var (
		newClient func() redis.UniversalClient
		network   = "tcp"
		dials     []string // addresses of which one must accept a connection
	)
	switch t.Mode() {
	case ModeCluster:
		opt := &redis.ClusterOptions{Addrs: t.ClusterAddrs, Username: t.Username, Password: t.Password}
		if o.PoolSize > 0 {
			opt.PoolSize = o.PoolSize
			opt.PipelinePoolSize = -1
		}
		opt.ReadTimeout, opt.WriteTimeout, opt.DialTimeout = readTimeout, writeTimeout, dialTimeout
		opt.ContextTimeoutEnabled = true
		dials = t.ClusterAddrs
		newClient = func() redis.UniversalClient { return redis.NewClusterClient(opt) }
	case ModeSentinel:
		opt := &redis.FailoverOptions{MasterName: t.SentinelMaster, SentinelAddrs: t.SentinelAddrs,
			SentinelPassword: t.SentinelPassword, Username: t.Username, Password: t.Password}
		if o.PoolSize > 0 {
			opt.PoolSize = o.PoolSize
			opt.PipelinePoolSize = -1
		}
		opt.ReadTimeout, opt.WriteTimeout, opt.DialTimeout = readTimeout, writeTimeout, dialTimeout
		opt.ContextTimeoutEnabled = true
		dials = t.SentinelAddrs
		newClient = func() redis.UniversalClient { return redis.NewFailoverClient(opt) }
	default:
		opt, err := redis.ParseURL(t.URL)
		if err != nil {
			return nil, fmt.Errorf("parse redis url: %w", err)
		}
		if o.PoolSize > 0 {
			opt.PoolSize = o.PoolSize
			opt.PipelinePoolSize = -1 // pipelines share the pool
		}
		opt.ReadTimeout, opt.WriteTimeout, opt.DialTimeout = readTimeout, writeTimeout, dialTimeout
		// Let a caller's deadline or cancellation cut a call short, so shutdown
		// and request timeouts are not held up by a slow or absent Redis.
		opt.ContextTimeoutEnabled = true
		network, dials = opt.Network, []string{opt.Addr}
		newClient = func() redis.UniversalClient { return redis.NewClient(opt) }
	}
	// One plain dial first, so that a server that is not up (yet) is
	// reported at once: the client would retry the dial and the command on
	// its own for seconds, printing each failure to stderr.
	if err := dialOne(ctx, network, dials); err != nil {
		return nil, err
	}
	client := newClient()
	pctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	if err := client.Ping(pctx).Err(); err != nil {
		client.Close()
		return nil, err
	}
	return client, nil
}

// Blocking pops use their own short timeouts; keep the socket reads above
// them so a pop is never cut off by the client.
const (
	readTimeout  = 5 * time.Second
	writeTimeout = 5 * time.Second
	dialTimeout  = 3 * time.Second
)

// dialOne returns nil as soon as one of addrs accepts a connection, else
// the last dial's error.
func dialOne(ctx context.Context, network string, addrs []string) error {
	var err error
	for _, a := range addrs {
		dctx, cancel := context.WithTimeout(ctx, dialTimeout)
		var conn net.Conn
		conn, err = new(net.Dialer).DialContext(dctx, network, a)
		cancel()
		if err == nil {
			conn.Close()
			return nil
		}
	}
	return err
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

// ForEachMaster calls fn with a client of each primary: every master of a
// cluster (concurrently), or the one node or Sentinel-managed primary
// otherwise. Whatever walks or wipes the whole key space (SCAN, FLUSHALL)
// must go through it: on a cluster each master holds only its own slots.
func ForEachMaster(ctx context.Context, c redis.UniversalClient, fn func(context.Context, *redis.Client) error) error {
	switch c := c.(type) {
	case *redis.ClusterClient:
		return c.ForEachMaster(ctx, fn)
	case *redis.Client:
		return fn(ctx, c)
	default:
		return fmt.Errorf("redisx: no masters known for a %T", c)
	}
}

// Keys prefixes every key the service uses, so that tests (and several
// deployments sharing one Redis) never see each other's keys.
type Keys struct{ Prefix string }

// Key returns Prefix + name.
func (k Keys) Key(name string) string { return k.Prefix + name }

// Tag returns "{" + Prefix + name + "}", a hash tag: on a Redis Cluster
// every key that starts with it lives in the same slot, which a Lua script,
// a MULTI or a BLMOVE touching several keys requires (else CROSSSLOT).
// Build each such group's keys as Tag(group) + ":suffix". The prefix stays
// inside the braces, so groups of different prefixes (tests, deployments)
// spread over the cluster instead of all landing in one slot. Prefix and
// name must hold no braces (app's configuration refuses them), or the tag
// would end early.
func (k Keys) Tag(name string) string { return "{" + k.Prefix + name + "}" }

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
		redis.IsLoadingError(err) || redis.IsMaxClientsError(err) ||
		// A cluster between failover and recovery, or a primary demoted
		// under us (Sentinel or cluster failover): it heals by itself.
		redis.IsClusterDownError(err) || redis.IsTryAgainError(err) ||
		redis.IsMasterDownError(err) || redis.IsReadOnlyError(err) ||
		// go-redis's own words when no Sentinel answers; the dial errors
		// it wraps are not always kept.
		strings.Contains(err.Error(), "all sentinels specified in configuration are unreachable")
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
