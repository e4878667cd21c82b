package loop

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/campaignd/dispatch/platform/logging/logtest"
)

func TestBackoff(t *testing.T) {
	t.Parallel()
	const base, capped = 250 * time.Millisecond, 5 * time.Second
	for _, tc := range []struct {
		attempt  int
		jitter   float64
		min, max time.Duration
	}{
		{1, 0, 125 * time.Millisecond, 125 * time.Millisecond},
		{1, 0.999, 249 * time.Millisecond, 250 * time.Millisecond},
		{2, 0, 250 * time.Millisecond, 250 * time.Millisecond},
		{3, 0.5, 750 * time.Millisecond, 750 * time.Millisecond},
		{5, 0.999, 3990 * time.Millisecond, 4 * time.Second},
		{6, 0, 2500 * time.Millisecond, 2500 * time.Millisecond}, // capped
		{6, 0.999, 4990 * time.Millisecond, 5 * time.Second},
		{1000, 0.999, 4990 * time.Millisecond, 5 * time.Second}, // no overflow
		{0, 0, 125 * time.Millisecond, 125 * time.Millisecond},  // treated as the first
	} {
		t.Run(fmt.Sprintf("attempt %d jitter %v", tc.attempt, tc.jitter), func(t *testing.T) {
			if got := Backoff(tc.attempt, base, capped, tc.jitter); got < tc.min || got > tc.max {
				t.Errorf("Backoff(%d, %v, %v, %v) = %v, want %v to %v", tc.attempt, base, capped, tc.jitter, got, tc.min, tc.max)
			}
		})
	}
}

// logLine is one JSON log line.
type logLine struct {
	Level    string `json:"level"`
	Msg      string `json:"msg"`
	Failures int    `json:"failures"`
	Err      string `json:"err"`
}

func newLog() (*slog.Logger, *logtest.Buffer) {
	buf := &logtest.Buffer{}
	return slog.New(slog.NewJSONHandler(buf, nil)), buf
}

func lines(t *testing.T, buf *logtest.Buffer) []logLine {
	t.Helper()
	var out []logLine
	for _, l := range strings.Split(strings.TrimSpace(buf.String()), "\n") {
		if l == "" {
			continue
		}
		var ll logLine
		if err := json.Unmarshal([]byte(l), &ll); err != nil {
			t.Fatalf("log line is not JSON: %q", l)
		}
		out = append(out, ll)
	}
	return out
}

func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(2 * time.Millisecond)
	}
}

// run starts Every in a goroutine and returns a function that stops it and
// waits for it to return.
func run(t *testing.T, interval time.Duration, log *slog.Logger, step func(context.Context) error, opts ...Option) (stop func()) {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { Every(ctx, interval, "test loop", log, step, opts...); close(done) }()
	var once sync.Once
	stop = func() {
		once.Do(func() {
			cancel()
			select {
			case <-done:
			case <-time.After(5 * time.Second):
				t.Fatal("Every did not return within 5s of its context ending")
			}
		})
	}
	t.Cleanup(stop)
	return stop
}

// TestEveryBacksOff: a step that keeps failing is run ever less often (here
// capped at 40ms instead of every 2ms), is logged once, and its recovery
// is logged once.
func TestEveryBacksOff(t *testing.T) {
	t.Parallel()
	log, buf := newLog()
	var calls atomic.Int64
	var failing atomic.Bool
	failing.Store(true)
	boom := errors.New("redis down")
	stop := run(t, 2*time.Millisecond, log, func(context.Context) error {
		calls.Add(1)
		if failing.Load() {
			return boom
		}
		return nil
	}, MaxBackoff(40*time.Millisecond))

	time.Sleep(400 * time.Millisecond)
	n := calls.Load()
	// Without backoff: about 200 runs. With it: 2-4, 4-8, 8-16, 16-32,
	// then 20-40ms apart, so about 15.
	if n > 30 {
		t.Errorf("%d runs of a failing step in 400ms at a 2ms interval with a 40ms cap: it did not back off", n)
	}
	if n < 3 {
		t.Errorf("only %d runs in 400ms: the backoff is too slow", n)
	}
	failing.Store(false)
	waitFor(t, "the loop to recover", func() bool {
		for _, l := range lines(t, buf) {
			if l.Msg == "test loop recovered" {
				return true
			}
		}
		return false
	})
	// Back to its interval once it works.
	before := calls.Load()
	time.Sleep(100 * time.Millisecond)
	if after := calls.Load(); after-before < 10 {
		t.Errorf("%d runs in 100ms at a 2ms interval after recovering, want many more", after-before)
	}
	stop()

	var got []string
	for _, l := range lines(t, buf) {
		got = append(got, l.Level+" "+l.Msg)
	}
	want := []string{"WARN test loop failing; backing off", "INFO test loop recovered"}
	if strings.Join(got, "|") != strings.Join(want, "|") {
		t.Errorf("log lines = %q, want %q", got, want)
	}
	ls := lines(t, buf)
	if ls[0].Err != boom.Error() {
		t.Errorf("failure line err = %q, want %q", ls[0].Err, boom.Error())
	}
	if ls[1].Failures < 3 {
		t.Errorf("recovery line counts %d failures, want at least 3", ls[1].Failures)
	}
}

// TestEveryStillFailingLines: a long failure writes one line per logEvery,
// each counting the failures since the previous line, so that every
// failure is accounted for.
func TestEveryStillFailingLines(t *testing.T) {
	t.Parallel()
	log, buf := newLog()
	var calls atomic.Int64
	stop := run(t, time.Millisecond, log, func(context.Context) error {
		calls.Add(1)
		return errors.New("down")
	}, MaxBackoff(4*time.Millisecond), func(o *options) { o.logEvery = 50 * time.Millisecond })
	time.Sleep(300 * time.Millisecond)
	stop()

	ls := lines(t, buf)
	if len(ls) < 3 || len(ls) > 8 {
		t.Fatalf("%d lines for 300ms of failures with a line per 50ms at most, want about 6: %+v", len(ls), ls)
	}
	counted := 1 // the first line stands for the first failure
	for _, l := range ls[1:] {
		if l.Msg != "test loop still failing" || l.Level != "WARN" {
			t.Errorf("line %+v, want a \"still failing\" warning", l)
		}
		counted += l.Failures
	}
	// Failures after the last line are not counted yet.
	if n := int(calls.Load()); counted > n || counted < n/2 {
		t.Errorf("lines count %d failures of %d", counted, n)
	}
}

// TestEveryWake: a wake-up runs the step at once instead of after the
// interval, and wake-ups sent during a run coalesce into one more run.
func TestEveryWake(t *testing.T) {
	t.Parallel()
	log, _ := newLog()
	wake := make(chan struct{}, 1)
	var calls atomic.Int64
	run(t, time.Hour, log, func(context.Context) error { calls.Add(1); return nil }, WakeOn(wake))
	waitFor(t, "the first run", func() bool { return calls.Load() == 1 })
	for want := int64(2); want <= 4; want++ {
		wake <- struct{}{}
		waitFor(t, fmt.Sprintf("run %d after a wake-up", want), func() bool { return calls.Load() == want })
	}
}

// TestEveryStopsDuringBackoff: cancelling the context ends the loop at
// once, even in a long pause after failures.
func TestEveryStopsDuringBackoff(t *testing.T) {
	t.Parallel()
	log, _ := newLog()
	var calls atomic.Int64
	stop := run(t, time.Hour, log, func(context.Context) error { calls.Add(1); return errors.New("down") })
	waitFor(t, "the first run", func() bool { return calls.Load() == 1 })
	start := time.Now()
	stop()
	if d := time.Since(start); d > time.Second {
		t.Errorf("Every took %v to return after cancel", d)
	}
}

func TestRetry(t *testing.T) {
	t.Parallel()
	t.Run("until it works", func(t *testing.T) {
		t.Parallel()
		log, buf := newLog()
		calls := 0
		err := Retry(context.Background(), "recording outcomes", log, func(context.Context) error {
			calls++
			if calls <= 3 {
				return errors.New("postgres down")
			}
			return nil
		}, MaxBackoff(10*time.Millisecond))
		if err != nil || calls != 4 {
			t.Fatalf("Retry = %v after %d calls, want nil after 4", err, calls)
		}
		var got []string
		for _, l := range lines(t, buf) {
			got = append(got, l.Level+" "+l.Msg)
		}
		want := []string{"WARN recording outcomes failing; backing off", "INFO recording outcomes recovered"}
		if strings.Join(got, "|") != strings.Join(want, "|") {
			t.Errorf("log lines = %q, want %q", got, want)
		}
	})
	t.Run("gives up when the context ends", func(t *testing.T) {
		t.Parallel()
		log, _ := newLog()
		ctx, cancel := context.WithCancel(context.Background())
		boom := errors.New("redis down")
		calls := 0
		err := Retry(ctx, "settling", log, func(context.Context) error {
			calls++
			if calls == 2 {
				cancel()
			}
			return boom
		}, MaxBackoff(time.Millisecond))
		if !errors.Is(err, boom) || calls != 2 {
			t.Errorf("Retry = %v after %d calls, want %v after 2", err, calls, boom)
		}
	})
	t.Run("calls once with an ended context", func(t *testing.T) {
		t.Parallel()
		log, buf := newLog()
		ctx, cancel := context.WithCancel(context.Background())
		cancel()
		calls := 0
		err := Retry(ctx, "claiming", log, func(context.Context) error { calls++; return nil })
		if err != nil || calls != 1 {
			t.Errorf("Retry = %v after %d calls, want nil after 1", err, calls)
		}
		if buf.String() != "" {
			t.Errorf("logged %q for a first-time success", buf.String())
		}
	})
}
