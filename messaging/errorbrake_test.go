package messaging

import (
	"context"
	"strings"
	"testing"
	"time"
)

func TestErrorRates(t *testing.T) {
	t.Parallel()
	pause := func(context.Context, int64, string) error { return nil }
	gen1, gen2 := time.Unix(100, 0), time.Unix(200, 0)
	type step struct {
		gen  time.Time
		err  string // "" success
		trip bool
	}
	tests := []struct {
		name  string
		opts  ErrorBrakeOptions
		steps []step
	}{
		{"window not full yet", ErrorBrakeOptions{Window: 4, Threshold: 0.5, Pause: pause},
			[]step{{gen1, "x", false}, {gen1, "x", false}, {gen1, "x", false}}},
		{"over the threshold once full", ErrorBrakeOptions{Window: 4, Threshold: 0.5, Pause: pause},
			[]step{{gen1, "x", false}, {gen1, "", false}, {gen1, "x", false}, {gen1, "x", true}}},
		{"exactly the threshold does not trip", ErrorBrakeOptions{Window: 4, Threshold: 0.5, Pause: pause},
			[]step{{gen1, "x", false}, {gen1, "", false}, {gen1, "x", false}, {gen1, "", false}}},
		{"a sliding window forgets old failures", ErrorBrakeOptions{Window: 4, Threshold: 0.5, Pause: pause},
			[]step{{gen1, "x", false}, {gen1, "x", false}, {gen1, "", false}, {gen1, "", false}, {gen1, "", false}, {gen1, "x", false}}},
		{"in-flight failures after a trip are ignored", ErrorBrakeOptions{Window: 2, Threshold: 0.5, Pause: pause},
			[]step{{gen1, "x", false}, {gen1, "x", true}, {gen1, "x", false}, {gen1, "x", false}, {gen1, "x", false}}},
		{"a resumed campaign starts a fresh window", ErrorBrakeOptions{Window: 2, Threshold: 0.5, Pause: pause},
			[]step{{gen1, "x", false}, {gen1, "x", true}, {gen2, "x", false}, {gen2, "x", true}}},
		{"off without a window", ErrorBrakeOptions{Threshold: 0.5, Pause: pause},
			[]step{{gen1, "x", false}, {gen1, "x", false}}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			e := newErrorRates(tt.opts)
			for i, s := range tt.steps {
				reason := e.observe(7, s.gen, s.err)
				if (reason != "") != s.trip {
					t.Fatalf("step %d: reason %q, want trip=%v", i, reason, s.trip)
				}
			}
		})
	}
}

func TestErrorRatesReason(t *testing.T) {
	t.Parallel()
	e := newErrorRates(ErrorBrakeOptions{Window: 4, Threshold: 0.5, Pause: func(context.Context, int64, string) error { return nil }})
	var reason string
	for _, k := range []string{"twilio 21211: invalid", "twilio 30003: unreachable", "twilio 21211: invalid", "twilio 21211: invalid"} {
		reason = e.observe(1, time.Time{}, k)
	}
	for _, want := range []string{"100% of the last 4 attempts failed", "threshold 50%", "most common error: twilio 21211: invalid"} {
		if !strings.Contains(reason, want) {
			t.Errorf("reason %q lacks %q", reason, want)
		}
	}
}
