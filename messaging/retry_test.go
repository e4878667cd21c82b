package messaging

import (
	"testing"
	"time"
)

func TestRetryPolicyDecide(t *testing.T) {
	p := RetryPolicy{MaxAttempts: 3, Base: time.Second, Max: time.Minute}
	tests := []struct {
		name      string
		policy    RetryPolicy
		failed    int
		permanent bool
		jitter    float64
		want      Decision
	}{
		{"first failure, no jitter", p, 1, false, 0, Decision{Retry: true, After: 500 * time.Millisecond}},
		{"first failure, full jitter", p, 1, false, 0.999999999, Decision{Retry: true, After: time.Second - 1}},
		{"second failure doubles", p, 2, false, 0, Decision{Retry: true, After: time.Second}},
		{"second failure, half jitter", p, 2, false, 0.5, Decision{Retry: true, After: 1500 * time.Millisecond}},
		{"last allowed attempt failed", p, 3, false, 0.5, Decision{}},
		{"beyond the limit", p, 7, false, 0.5, Decision{}},
		{"permanent error on first attempt", p, 1, true, 0.5, Decision{}},
		{"single attempt allowed", RetryPolicy{MaxAttempts: 1, Base: time.Second}, 1, false, 0, Decision{}},
		{"capped at max", RetryPolicy{MaxAttempts: 20, Base: time.Second, Max: 10 * time.Second}, 15, false, 0,
			Decision{Retry: true, After: 5 * time.Second}},
		{"no cap", RetryPolicy{MaxAttempts: 20, Base: time.Second}, 5, false, 0,
			Decision{Retry: true, After: 8 * time.Second}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := tt.policy.Decide(tt.failed, tt.permanent, tt.jitter); got != tt.want {
				t.Errorf("Decide(%d, %v, %v) = %+v, want %+v", tt.failed, tt.permanent, tt.jitter, got, tt.want)
			}
		})
	}
}

func TestRetryPolicyDelaysGrow(t *testing.T) {
	p := RetryPolicy{MaxAttempts: 10, Base: 100 * time.Millisecond, Max: time.Hour}
	prevMax := time.Duration(0)
	for failed := 1; failed < 10; failed++ {
		lo := p.Decide(failed, false, 0).After
		hi := p.Decide(failed, false, 0.999).After
		if lo < prevMax/2 || hi <= lo {
			t.Fatalf("attempt %d: range [%v, %v] does not grow from previous max %v", failed, lo, hi, prevMax)
		}
		prevMax = hi
	}
}
