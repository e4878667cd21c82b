//go:build linux || darwin

package main

import (
	"context"
	"encoding/json"
	"net"
	"os/exec"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"
)

// crashRedisOutage is how long TestCrashRedisDownMidRun keeps Redis down:
// past the consumer TTL, the client's dial retries and several backoff
// steps of every loop.
const crashRedisOutage = 8 * time.Second

// TestCrashRedisDownMidRun stops the service's Redis mid-run (SHUTDOWN
// NOSAVE: connections are refused, as while Redis restarts) and starts a
// fresh, empty one on the same port a few seconds later. While Redis is
// down:
//   - outcomes of the deliveries in flight must still reach PostgreSQL:
//     recording never waits for Redis, so no message stays in sending;
//   - the log stays JSON (go-redis's own lines go through slog) and short:
//     every loop backs off and logs its failure once, not once per tick.
//
// Once Redis is back, the sweeper rebuilds the lost queue, every message
// ends final and none is delivered twice.
func TestCrashRedisDownMidRun(t *testing.T) {
	t.Parallel()
	requireBinary(t)
	url, rdb := startPrivateRedis(t)
	e := newCrashEnv(t, url, nil)
	p := e.start("first")
	e.setupCampaign(p, crashMessages)

	before := e.waitSentAbove(p, 0.10)
	restart := stopRedis(t, url, rdb)
	downAt, logFrom := time.Now(), len(p.out.String())
	e.event("redis stopped with %v", before)

	// Outcomes keep reaching PostgreSQL: what was in flight is recorded
	// within a send timeout or two, Redis or not.
	var c msgCounts
	for {
		c = e.counts()
		if c.Sending == 0 {
			break
		}
		if p.exited() {
			t.Fatalf("process exited while redis was down: %v", p.state)
		}
		if time.Since(downAt) > crashRedisOutage {
			t.Fatalf("%d messages still in sending %v after redis went down: recording waits for redis (%v)",
				c.Sending, crashRedisOutage, c)
		}
		time.Sleep(50 * time.Millisecond)
	}
	e.event("no message in sending %v after redis went down: %v", time.Since(downAt).Round(time.Millisecond), c)
	time.Sleep(time.Until(downAt.Add(crashRedisOutage)))
	if p.exited() {
		t.Fatalf("process exited while redis was down: %v", p.state)
	}
	outage := p.out.String()[logFrom:]
	restart()
	e.event("redis restarted, empty, after %v", time.Since(downAt).Round(time.Millisecond))

	final := e.waitAllFinal(p)
	e.verifyExactlyOnce(final)

	// The whole log is JSON, and the outage cost few lines: each loop's
	// failure once (plus its recovery, later), not one line per attempt.
	for _, line := range strings.Split(strings.TrimSpace(p.out.String()), "\n") {
		if !json.Valid([]byte(line)) {
			t.Errorf("log line is not JSON: %q", line)
		}
	}
	perMsg := map[string]int{}
	total := 0
	for _, line := range strings.Split(strings.TrimSpace(outage), "\n") {
		var rec struct {
			Level     string `json:"level"`
			Msg       string `json:"msg"`
			MessageID int64  `json:"message_id"`
		}
		if json.Unmarshal([]byte(line), &rec) != nil || rec.Level == "INFO" || rec.MessageID != 0 {
			continue
		}
		perMsg[rec.Msg]++
		total++
	}
	e.event("%d warnings in %v of redis outage: %v", total, crashRedisOutage, perMsg)
	for msg, n := range perMsg {
		// Several fetchers or flushers may each report once; a loop that
		// does not back off reports dozens of times.
		if n > 4 {
			t.Errorf("%q logged %d times during a %v outage: not backing off or not throttled", msg, n, crashRedisOutage)
		}
	}
}

// stopRedis shuts down the private redis-server at url without saving
// (nothing listens on its port until restart is called) and returns
// restart, which starts a fresh, empty redis-server on the same port, as a
// Redis without persistence comes back after a restart.
func stopRedis(t *testing.T, url string, rdb *redis.Client) (restart func()) {
	t.Helper()
	opts, err := redis.ParseURL(url)
	if err != nil {
		t.Fatal(err)
	}
	_, port, _ := net.SplitHostPort(opts.Addr)
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	_ = rdb.ShutdownNoSave(ctx).Err() // the server closes the connection: no reply
	deadline := time.Now().Add(10 * time.Second)
	for {
		c, err := net.DialTimeout("tcp", opts.Addr, 200*time.Millisecond)
		if err != nil {
			break
		}
		c.Close()
		if time.Now().After(deadline) {
			t.Fatalf("redis at %s still accepts connections 10s after SHUTDOWN", opts.Addr)
		}
		time.Sleep(20 * time.Millisecond)
	}
	return func() {
		t.Helper()
		bin, err := exec.LookPath("redis-server")
		if err != nil {
			t.Fatal(err)
		}
		p, _ := strconv.Atoi(port)
		if err := runRedisServer(t, bin, p, rdb); err != nil {
			t.Fatalf("restart redis: %v", err)
		}
	}
}
