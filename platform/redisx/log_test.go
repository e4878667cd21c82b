package redisx

import (
	"context"
	"encoding/json"
	"log/slog"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/campaignd/dispatch/platform/logging/logtest"
)

// TestSetLoggerRoutesClientLines: what go-redis logs by itself (here its
// notice that a sub-second expiry is rounded up, and its failure to dial a
// server that is not there) arrives as JSON warnings of the given logger,
// not as plain lines on stderr, each kind once however often it repeats.
func TestSetLoggerRoutesClientLines(t *testing.T) {
	buf := &logtest.Buffer{}
	SetLogger(slog.New(slog.NewJSONHandler(buf, nil)))
	t.Cleanup(func() { SetLogger(slog.New(slog.DiscardHandler)) })

	// Port 1 on loopback: nothing listens, the dial is refused at once.
	c := redis.NewClient(&redis.Options{Addr: "127.0.0.1:1", DialTimeout: 200 * time.Millisecond,
		DialerRetries: 1, MaxRetries: -1})
	defer c.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	_ = c.Expire(ctx, "k", 500*time.Millisecond).Err()
	// The same notice again, and again a failed dial: repeats within 30s
	// are counted, not written.
	for range 5 {
		_ = c.Expire(ctx, "k", 500*time.Millisecond).Err()
	}

	out := strings.TrimSpace(buf.String())
	if out == "" {
		t.Fatal("nothing logged through slog")
	}
	var msgs []string
	for _, line := range strings.Split(out, "\n") {
		var rec struct {
			Level string `json:"level"`
			Msg   string `json:"msg"`
		}
		if err := json.Unmarshal([]byte(line), &rec); err != nil {
			t.Fatalf("line is not JSON: %q", line)
		}
		if rec.Level != "WARN" || !strings.HasPrefix(rec.Msg, "redis client: ") {
			t.Errorf("line %q: want a WARN starting \"redis client: \"", line)
		}
		msgs = append(msgs, rec.Msg)
	}
	if len(msgs) != 2 {
		t.Errorf("%d lines, want 2 (one per kind, repeats held back):\n%s", len(msgs), out)
	}
	joined := strings.Join(msgs, "\n")
	for _, want := range []string{"truncating to 1s", "failed to dial"} {
		if !strings.Contains(joined, want) {
			t.Errorf("no line mentions %q; got:\n%s", want, joined)
		}
	}
}

// TestClientLoggerCountsRepeats: the line after a quiet spell says how many
// repeats were held back.
func TestClientLoggerCountsRepeats(t *testing.T) {
	t.Parallel()
	buf := &logtest.Buffer{}
	l := &clientLogger{log: slog.New(slog.NewJSONHandler(buf, nil)), every: 50 * time.Millisecond, seen: map[string]*repeat{}}
	ctx := context.Background()
	for range 3 {
		l.Printf(ctx, "redis: connection pool: failed to dial after %d attempts: %v", 5, "refused")
	}
	time.Sleep(60 * time.Millisecond)
	l.Printf(ctx, "redis: connection pool: failed to dial after %d attempts: %v", 5, "refused")

	var got []string
	for _, line := range strings.Split(strings.TrimSpace(buf.String()), "\n") {
		var rec struct {
			Msg      string `json:"msg"`
			Repeated int    `json:"repeated"`
		}
		if err := json.Unmarshal([]byte(line), &rec); err != nil {
			t.Fatalf("line is not JSON: %q", line)
		}
		got = append(got, rec.Msg+" repeated="+strconv.Itoa(rec.Repeated))
	}
	const msg = "redis client: connection pool: failed to dial after 5 attempts: refused"
	want := []string{msg + " repeated=0", msg + " repeated=2"}
	if strings.Join(got, "|") != strings.Join(want, "|") {
		t.Errorf("lines = %q, want %q", got, want)
	}
}
