package redistest

import (
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/campaignd/dispatch/platform/logging/logtest"
)

// Cluster is a Redis Cluster of three masters (no replicas) on loopback
// ports, run from the redis-server binary on PATH, without persistence.
// Each master owns a third of the slots.
type Cluster struct {
	Addrs []string // host:port of each master

	dir   string
	nodes []*node
}

type node struct {
	cmd  *exec.Cmd
	out  *logtest.Buffer
	done chan struct{}
}

// clusterMasters is how many masters a Cluster has.
const clusterMasters = 3

// NewCluster starts a Cluster for t and stops it when t ends. It skips t
// in -short mode and when redis-server is not on PATH.
func NewCluster(t testing.TB) *Cluster {
	t.Helper()
	if testing.Short() {
		t.Skip("needs redis-server for a local Redis Cluster; skipped in -short mode")
	}
	if _, err := exec.LookPath("redis-server"); err != nil {
		t.Skip("redis-server is not on PATH: cannot run a local Redis Cluster (apt-get install redis-server)")
	}
	c, err := StartCluster(t.TempDir())
	if err != nil {
		t.Fatalf("start a local Redis Cluster: %v", err)
	}
	t.Cleanup(c.Stop)
	return c
}

var shared struct {
	once sync.Once
	c    *Cluster
	err  error
	dir  string
}

// SharedCluster returns one Cluster for the whole test binary, started on
// first use, so a package's tests need not start one each. The package's
// TestMain must call StopSharedCluster after m.Run. It skips as NewCluster
// does.
func SharedCluster(t testing.TB) *Cluster {
	t.Helper()
	if testing.Short() {
		t.Skip("needs redis-server for a local Redis Cluster; skipped in -short mode")
	}
	if _, err := exec.LookPath("redis-server"); err != nil {
		t.Skip("redis-server is not on PATH: cannot run a local Redis Cluster (apt-get install redis-server)")
	}
	shared.once.Do(func() {
		shared.dir, shared.err = os.MkdirTemp("", "redistest-cluster-")
		if shared.err == nil {
			shared.c, shared.err = StartCluster(shared.dir)
		}
	})
	if shared.err != nil {
		t.Fatalf("start a local Redis Cluster: %v", shared.err)
	}
	return shared.c
}

// StopSharedCluster stops the cluster SharedCluster started, if any.
func StopSharedCluster() {
	if shared.c != nil {
		shared.c.Stop()
	}
	if shared.dir != "" {
		os.RemoveAll(shared.dir)
	}
}

// StartCluster starts three cluster-enabled redis-servers on free loopback
// ports, their node files in dir, assigns each a third of the slots, joins
// them and waits until every node reports cluster_state:ok. On error it
// stops what it started.
func StartCluster(dir string) (*Cluster, error) {
	bin, err := exec.LookPath("redis-server")
	if err != nil {
		return nil, err
	}
	c := &Cluster{dir: dir}
	ok := false
	defer func() {
		if !ok {
			c.Stop()
		}
	}()
	for i := range clusterMasters {
		n, addr, err := startNode(bin, dir, i)
		if err != nil {
			return nil, err
		}
		c.nodes = append(c.nodes, n)
		c.Addrs = append(c.Addrs, addr)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	clients := make([]*redis.Client, len(c.Addrs))
	for i, a := range c.Addrs {
		clients[i] = redis.NewClient(&redis.Options{Addr: a})
		defer clients[i].Close()
	}
	const slots = 16384
	for i, cl := range clients {
		lo, hi := i*slots/len(clients), (i+1)*slots/len(clients)-1
		if err := cl.ClusterAddSlotsRange(ctx, lo, hi).Err(); err != nil {
			return nil, fmt.Errorf("CLUSTER ADDSLOTS %d-%d on %s: %w", lo, hi, c.Addrs[i], err)
		}
	}
	for _, a := range c.Addrs[1:] {
		host, port, _ := net.SplitHostPort(a)
		if err := clients[0].ClusterMeet(ctx, host, port).Err(); err != nil {
			return nil, fmt.Errorf("CLUSTER MEET %s: %w", a, err)
		}
	}
	for {
		ready := 0
		for _, cl := range clients {
			info, err := cl.ClusterInfo(ctx).Result()
			if err == nil && strings.Contains(info, "cluster_state:ok") &&
				strings.Contains(info, "cluster_known_nodes:"+strconv.Itoa(clusterMasters)) {
				ready++
			}
		}
		if ready == len(clients) {
			break
		}
		select {
		case <-ctx.Done():
			return nil, fmt.Errorf("cluster not ok within 30s: %s", c.output())
		case <-time.After(50 * time.Millisecond):
		}
	}
	ok = true
	return c, nil
}

// startNode starts master i on a free port, retrying with another port if
// the one picked was taken meanwhile, and waits until it answers PING.
func startNode(bin, dir string, i int) (*node, string, error) {
	var lastErr error
	for range 3 {
		port, err := freePort()
		if err != nil {
			return nil, "", err
		}
		addr := net.JoinHostPort("127.0.0.1", strconv.Itoa(port))
		cmd := exec.Command(bin, "--port", strconv.Itoa(port), "--bind", "127.0.0.1",
			"--cluster-enabled", "yes", "--cluster-config-file", filepath.Join(dir, fmt.Sprintf("nodes-%d-%d.conf", i, port)),
			"--cluster-node-timeout", "5000", "--dir", dir,
			"--save", "", "--appendonly", "no", "--daemonize", "no")
		dieWithParent(cmd)
		n := &node{cmd: cmd, out: &logtest.Buffer{}, done: make(chan struct{})}
		cmd.Stdout, cmd.Stderr = n.out, n.out
		if err := cmd.Start(); err != nil {
			return nil, "", fmt.Errorf("start redis-server: %w", err)
		}
		go func() { _ = cmd.Wait(); close(n.done) }()
		if lastErr = waitPing(addr, n); lastErr == nil {
			return n, addr, nil
		}
		n.stop()
	}
	return nil, "", lastErr
}

func waitPing(addr string, n *node) error {
	c := redis.NewClient(&redis.Options{Addr: addr, MaxRetries: -1})
	defer c.Close()
	deadline := time.Now().Add(10 * time.Second)
	for {
		ctx, cancel := context.WithTimeout(context.Background(), time.Second)
		err := c.Ping(ctx).Err()
		cancel()
		if err == nil {
			return nil
		}
		select {
		case <-n.done:
			return fmt.Errorf("redis-server on %s exited: %s", addr, n.out.String())
		default:
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("redis-server on %s not answering after 10s: %v", addr, err)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

func (n *node) stop() {
	if n.cmd.Process != nil {
		_ = n.cmd.Process.Kill()
	}
	<-n.done
}

// Stop kills the cluster's servers and waits for them to exit.
func (c *Cluster) Stop() {
	for _, n := range c.nodes {
		n.stop()
	}
	c.nodes = nil
}

func (c *Cluster) output() string {
	var b strings.Builder
	for i, n := range c.nodes {
		fmt.Fprintf(&b, "\n---- node %d (%s) ----\n%s", i, c.Addrs[i], n.out.String())
	}
	return b.String()
}

// AddrList is Addrs comma-separated, as REDIS_CLUSTER_ADDRS takes them.
func (c *Cluster) AddrList() string { return strings.Join(c.Addrs, ",") }

// Client returns a cluster client and a fresh key prefix; the prefix's keys
// are deleted and the client closed when t ends.
func (c *Cluster) Client(t testing.TB) (*redis.ClusterClient, string) {
	t.Helper()
	rdb := redis.NewClusterClient(&redis.ClusterOptions{Addrs: c.Addrs, ReadTimeout: 5 * time.Second,
		WriteTimeout: 5 * time.Second, ContextTimeoutEnabled: true})
	prefix := NewPrefix()
	t.Cleanup(func() {
		defer rdb.Close()
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		if err := DeletePrefix(ctx, rdb, prefix); err != nil {
			t.Errorf("delete test keys on the cluster: %v", err)
		}
	})
	return rdb, prefix
}

// FlushAll runs FLUSHALL on every master: the whole cluster's data is gone,
// as after a restart of every node without persistence.
func (c *Cluster) FlushAll(ctx context.Context) error {
	var errs []error
	for _, a := range c.Addrs {
		cl := redis.NewClient(&redis.Options{Addr: a})
		if err := cl.FlushAll(ctx).Err(); err != nil {
			errs = append(errs, fmt.Errorf("FLUSHALL on %s: %w", a, err))
		}
		cl.Close()
	}
	return errors.Join(errs...)
}

func freePort() (int, error) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return 0, err
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port, nil
}
