package redistest

import (
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"testing"

	"github.com/campaignd/dispatch/platform/logging/logtest"
)

// Sentinel is a Redis primary watched by one Sentinel, both on loopback
// ports, run from the redis-server binary without persistence.
type Sentinel struct {
	Addrs  []string // the Sentinel's host:port
	Master string   // the name it knows the primary by

	nodes []*node
}

// NewSentinel starts a primary and a Sentinel for t and stops them when t
// ends. It skips t in -short mode and when redis-server is not on PATH.
func NewSentinel(t testing.TB) *Sentinel {
	t.Helper()
	if testing.Short() {
		t.Skip("needs redis-server for a local Sentinel; skipped in -short mode")
	}
	bin, err := exec.LookPath("redis-server")
	if err != nil {
		t.Skip("redis-server is not on PATH: cannot run a local Sentinel (apt-get install redis-server)")
	}
	s := &Sentinel{Master: "dispatch-test"}
	t.Cleanup(func() {
		for _, n := range s.nodes {
			n.stop()
		}
	})
	dir := t.TempDir()
	var primary string
	for attempt := 0; ; attempt++ {
		p, err := freePort()
		if err != nil {
			t.Fatal(err)
		}
		primary = net.JoinHostPort("127.0.0.1", strconv.Itoa(p))
		n, err := startServer(bin, dir, primary, "--port", strconv.Itoa(p), "--bind", "127.0.0.1",
			"--save", "", "--appendonly", "no", "--dir", dir)
		if err == nil {
			s.nodes = append(s.nodes, n)
			break
		}
		if attempt == 2 {
			t.Fatalf("start the primary: %v", err)
		}
	}
	host, port, _ := net.SplitHostPort(primary)
	for attempt := 0; ; attempt++ {
		p, err := freePort()
		if err != nil {
			t.Fatal(err)
		}
		// A Sentinel rewrites its configuration file: one of its own.
		conf := filepath.Join(dir, fmt.Sprintf("sentinel-%d.conf", p))
		body := fmt.Sprintf("port %d\nbind 127.0.0.1\ndir %s\nsentinel monitor %s %s %s 1\n", p, dir, s.Master, host, port)
		if err := os.WriteFile(conf, []byte(body), 0o600); err != nil {
			t.Fatal(err)
		}
		addr := net.JoinHostPort("127.0.0.1", strconv.Itoa(p))
		n, err := startServer(bin, dir, addr, conf, "--sentinel")
		if err == nil {
			s.nodes, s.Addrs = append(s.nodes, n), []string{addr}
			return s
		}
		if attempt == 2 {
			t.Fatalf("start the Sentinel: %v", err)
		}
	}
}

// startServer runs redis-server with args in dir and waits until it
// answers PING at addr, where args make it listen.
func startServer(bin, dir, addr string, args ...string) (*node, error) {
	cmd := exec.Command(bin, args...)
	cmd.Dir = dir
	dieWithParent(cmd)
	n := &node{cmd: cmd, out: &logtest.Buffer{}, done: make(chan struct{})}
	cmd.Stdout, cmd.Stderr = n.out, n.out
	if err := cmd.Start(); err != nil {
		return nil, err
	}
	go func() { _ = cmd.Wait(); close(n.done) }()
	if err := waitPing(addr, n); err != nil {
		n.stop()
		return nil, err
	}
	return n, nil
}

// NewServer starts a private Redis node (no persistence) for t, stops it
// when t ends, and returns its URL. Benchmarks compare it with a Cluster
// of the same binary, on an equal footing: the shared server carries
// every other test's load. It skips as NewCluster does.
func NewServer(t testing.TB) string {
	t.Helper()
	if testing.Short() {
		t.Skip("needs redis-server for a private Redis; skipped in -short mode")
	}
	bin, err := exec.LookPath("redis-server")
	if err != nil {
		t.Skip("redis-server is not on PATH: cannot run a private Redis (apt-get install redis-server)")
	}
	dir := t.TempDir()
	for attempt := 0; ; attempt++ {
		p, err := freePort()
		if err != nil {
			t.Fatal(err)
		}
		addr := net.JoinHostPort("127.0.0.1", strconv.Itoa(p))
		n, err := startServer(bin, dir, addr, "--port", strconv.Itoa(p), "--bind", "127.0.0.1",
			"--save", "", "--appendonly", "no", "--dir", dir)
		if err == nil {
			t.Cleanup(n.stop)
			return "redis://" + addr + "/0"
		}
		if attempt == 2 {
			t.Fatalf("start a private Redis: %v", err)
		}
	}
}
