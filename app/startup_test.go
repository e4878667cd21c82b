package app

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/url"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"go.uber.org/goleak"

	"github.com/campaignd/dispatch/platform/postgres"
)

// The start-up tests that check for leaked goroutines do not call
// t.Parallel: goleak compares the goroutines before and after New, which
// only means something while no other test is running. Go runs them before
// the parallel tests resume.

// TestStartupPostgresDown: with nothing listening at PostgreSQL's address,
// New waits STARTUP_TIMEOUT, says so once, then fails with an error naming
// postgres, its address and the cause, leaving nothing running.
func TestStartupPostgresDown(t *testing.T) {
	cfg, err := Load(nil)
	if err != nil {
		t.Fatal(err)
	}
	port := closedPort(t)
	cfg.Database.URL = fmt.Sprintf("postgres://postgres:pw-7f3a9c@127.0.0.1:%d/campaigns?sslmode=disable", port)
	cfg.StartupTimeout = 1500 * time.Millisecond
	cfg.API.Port = 0
	defer goleak.VerifyNone(t, goleak.IgnoreCurrent())

	log := newStartupLog()
	a, took, err := tryNew(t, context.Background(), cfg, log.logger())
	if a != nil {
		a.Close()
		t.Fatal("New succeeded with PostgreSQL down")
	}
	want := fmt.Sprintf("postgres at 127.0.0.1:%d not reachable after 1.5s: ", port)
	if err == nil || !strings.HasPrefix(err.Error(), want) || !errors.Is(err, syscall.ECONNREFUSED) {
		t.Errorf("error = %v\nwant it to start with %q and wrap ECONNREFUSED", err, want)
	}
	if took < cfg.StartupTimeout || took > cfg.StartupTimeout+3*time.Second {
		t.Errorf("New returned after %v, want about STARTUP_TIMEOUT (%v)", took, cfg.StartupTimeout)
	}
	log.checkWaitLine(t, "postgres", fmt.Sprintf("127.0.0.1:%d", port))
	if strings.Contains(log.String(), "pw-7f3a9c") {
		t.Errorf("the log shows the database password:\n%s", log)
	}
}

// TestStartupRedisDown: PostgreSQL is fine, Redis is not there.
func TestStartupRedisDown(t *testing.T) {
	cfg := testConfig(t) // before the goroutine snapshot: its helpers keep clients open
	port := closedPort(t)
	cfg.Redis.URL = fmt.Sprintf("redis://:pw-7f3a9c@127.0.0.1:%d/0", port)
	cfg.StartupTimeout = 1500 * time.Millisecond
	// Only Redis may be what the wait is about: create the database first,
	// as CREATE DATABASE on a loaded server can take longer than the timeout.
	db, err := postgres.Open(context.Background(), cfg.Database.URL, postgres.Options{CreateDatabase: true, MaxOpenConns: 1})
	if err != nil {
		t.Fatal(err)
	}
	db.Close()
	defer goleak.VerifyNone(t, goleak.IgnoreCurrent())

	log := newStartupLog()
	a, took, err := tryNew(t, context.Background(), cfg, log.logger())
	if a != nil {
		a.Close()
		t.Fatal("New succeeded with Redis down")
	}
	want := fmt.Sprintf("redis at 127.0.0.1:%d not reachable after 1.5s: ", port)
	if err == nil || !strings.HasPrefix(err.Error(), want) || !errors.Is(err, syscall.ECONNREFUSED) {
		t.Errorf("error = %v\nwant it to start with %q and wrap ECONNREFUSED", err, want)
	}
	if took > cfg.StartupTimeout+10*time.Second { // the database is created and migrated first
		t.Errorf("New returned after %v (STARTUP_TIMEOUT %v)", took, cfg.StartupTimeout)
	}
	log.checkWaitLine(t, "redis", fmt.Sprintf("127.0.0.1:%d", port))
	if n := log.count("waiting for postgres"); n != 0 {
		t.Errorf("%d \"waiting for postgres\" lines with PostgreSQL up", n)
	}
	if strings.Contains(log.String(), "pw-7f3a9c") {
		t.Errorf("the log shows the Redis password:\n%s", log)
	}
}

// TestStartupPortTaken: the HTTP port is held by another listener.
func TestStartupPortTaken(t *testing.T) {
	cfg := testConfig(t)
	taken, err := net.Listen("tcp", ":0")
	if err != nil {
		t.Fatal(err)
	}
	defer taken.Close()
	cfg.API.Port = taken.Addr().(*net.TCPAddr).Port
	defer goleak.VerifyNone(t, goleak.IgnoreCurrent())

	a, _, err := tryNew(t, context.Background(), cfg, newStartupLog().logger())
	if a != nil {
		a.Close()
		t.Fatal("New succeeded on a port in use")
	}
	want := fmt.Sprintf("listen on port %d: address already in use", cfg.API.Port)
	if err == nil || err.Error() != want || !errors.Is(err, syscall.EADDRINUSE) {
		t.Errorf("error = %v, want %q wrapping EADDRINUSE", err, want)
	}
}

// TestStartupPostgresLate: PostgreSQL becomes reachable while New waits (a
// compose start-order race): New succeeds, having said once that it waited
// and once how long.
func TestStartupPostgresLate(t *testing.T) {
	t.Parallel()
	cfg := testConfig(t)
	log := newStartupLog()
	// Until New has said it is waiting, the proxy resets every connection;
	// from then on it forwards to the real server.
	proxy := newLateProxy(t, cfg.Database.URL, log.waiting("postgres"))
	u, err := url.Parse(cfg.Database.URL)
	if err != nil {
		t.Fatal(err)
	}
	u.Host = proxy
	cfg.Database.URL = u.String()
	cfg.StartupTimeout = 30 * time.Second

	a, took, err := tryNew(t, context.Background(), cfg, log.logger())
	if err != nil {
		t.Fatalf("New: %v\nlog:\n%s", err, log)
	}
	a.Close()
	t.Logf("New succeeded after %v (wait, database creation, migrations)", took.Round(time.Millisecond))
	log.checkWaitLine(t, "postgres", proxy)
	if n := log.count("postgres reachable"); n != 1 {
		t.Errorf("%d \"postgres reachable\" lines, want 1:\n%s", n, log)
	}
}

// TestStartupCancelledWhileWaiting: SIGTERM (ctx cancelled) during the wait
// ends New at once.
func TestStartupCancelledWhileWaiting(t *testing.T) {
	cfg, err := Load(nil)
	if err != nil {
		t.Fatal(err)
	}
	cfg.Database.URL = fmt.Sprintf("postgres://postgres@127.0.0.1:%d/campaigns?sslmode=disable", closedPort(t))
	cfg.StartupTimeout = time.Minute
	defer goleak.VerifyNone(t, goleak.IgnoreCurrent())

	log := newStartupLog()
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	waiting := log.waiting("postgres")
	cancelledAt := make(chan time.Time, 1)
	go func() { // returns once New has said it waits
		<-waiting
		cancelledAt <- time.Now()
		cancel()
	}()
	a, _, err := tryNew(t, ctx, cfg, log.logger())
	if a != nil {
		a.Close()
		t.Fatal("New succeeded with PostgreSQL down")
	}
	select {
	case at := <-cancelledAt:
		if took := time.Since(at); took > time.Second {
			t.Errorf("New returned %v after ctx was cancelled", took)
		}
	default:
		t.Fatalf("New returned before it logged that it waits: %v", err)
	}
	if !errors.Is(err, context.Canceled) || !strings.HasPrefix(err.Error(), "postgres at 127.0.0.1:") {
		t.Errorf("error = %v, want one naming postgres and wrapping context.Canceled", err)
	}
}

// tryNew calls New, turning a panic into a test failure, and times it.
func tryNew(t *testing.T, ctx context.Context, cfg Config, log *slog.Logger) (a *App, took time.Duration, err error) {
	t.Helper()
	start := time.Now()
	func() {
		defer func() {
			if r := recover(); r != nil {
				t.Fatalf("New panicked: %v", r)
			}
		}()
		a, err = New(ctx, cfg, log)
	}()
	return a, time.Since(start), err
}

// closedPort returns a local port nothing listens on.
func closedPort(t *testing.T) int {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	port := l.Addr().(*net.TCPAddr).Port
	l.Close()
	return port
}

// startupLog collects a JSON logger's lines and tells when one with a given
// message is written.
type startupLog struct {
	mu    sync.Mutex
	buf   bytes.Buffer
	waits map[string]chan struct{} // by message, closed once it is logged
}

func newStartupLog() *startupLog { return &startupLog{waits: map[string]chan struct{}{}} }

func (l *startupLog) logger() *slog.Logger {
	return slog.New(slog.NewJSONHandler(l, &slog.HandlerOptions{Level: slog.LevelDebug}))
}

// Write takes one record (the JSON handler writes each in one call).
func (l *startupLog) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	var rec struct{ Msg string }
	if json.Unmarshal(p, &rec) == nil {
		if ch, ok := l.waits[rec.Msg]; ok {
			close(ch)
			delete(l.waits, rec.Msg)
		}
	}
	return l.buf.Write(p)
}

func (l *startupLog) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.buf.String()
}

// waiting returns a channel closed when "waiting for <dep>" is logged.
func (l *startupLog) waiting(dep string) <-chan struct{} {
	l.mu.Lock()
	defer l.mu.Unlock()
	ch := make(chan struct{})
	l.waits["waiting for "+dep] = ch
	return ch
}

// records returns the records whose message is msg.
func (l *startupLog) records(msg string) []map[string]any {
	var out []map[string]any
	sc := bufio.NewScanner(strings.NewReader(l.String()))
	sc.Buffer(nil, 1<<20)
	for sc.Scan() {
		var rec map[string]any
		if json.Unmarshal(sc.Bytes(), &rec) == nil && rec["msg"] == msg {
			out = append(out, rec)
		}
	}
	return out
}

func (l *startupLog) count(msg string) int { return len(l.records(msg)) }

// checkWaitLine checks that "waiting for <dep>" was logged exactly once, as a
// warning with the address, the cause and the timeout.
func (l *startupLog) checkWaitLine(t *testing.T, dep, addr string) {
	t.Helper()
	recs := l.records("waiting for " + dep)
	if len(recs) != 1 {
		t.Errorf("%d \"waiting for %s\" lines, want 1; log:\n%s", len(recs), dep, l)
		return
	}
	r := recs[0]
	if r["level"] != "WARN" || r["addr"] != addr || r["err"] == nil || r["err"] == "" || r["timeout"] == nil {
		t.Errorf("waiting line = %v, want level WARN, addr %s, err and timeout", r, addr)
	}
}

// newLateProxy listens on a local port and returns its address. Until
// ready is closed it resets every connection, as a server that is not up
// yet would refuse it; then it forwards connections to dsn's server.
func newLateProxy(t *testing.T, dsn string, ready <-chan struct{}) string {
	t.Helper()
	u, err := url.Parse(dsn)
	if err != nil {
		t.Fatal(err)
	}
	target := u.Host
	if u.Port() == "" {
		target = net.JoinHostPort(u.Hostname(), strconv.Itoa(5432))
	}
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	var (
		wg    sync.WaitGroup
		mu    sync.Mutex
		conns []net.Conn
	)
	track := func(c net.Conn) {
		mu.Lock()
		conns = append(conns, c)
		mu.Unlock()
	}
	t.Cleanup(func() {
		l.Close()
		mu.Lock()
		for _, c := range conns {
			c.Close()
		}
		mu.Unlock()
		wg.Wait()
	})
	wg.Go(func() { // returns when the cleanup closes the listener
		for {
			c, err := l.Accept()
			if err != nil {
				return
			}
			select {
			case <-ready:
			default:
				c.(*net.TCPConn).SetLinger(0) // close with RST: "connection reset by peer"
				c.Close()
				continue
			}
			up, err := net.Dial("tcp", target)
			if err != nil {
				c.Close()
				continue
			}
			track(c)
			track(up)
			// Each copy returns when either side closes.
			wg.Go(func() { io.Copy(up, c); up.Close(); c.Close() })
			wg.Go(func() { io.Copy(c, up); up.Close(); c.Close() })
		}
	})
	return l.Addr().String()
}
