package africastalking

import (
	"net/http"
	"testing"
	"time"
)

func TestParseCost(t *testing.T) {
	t.Parallel()
	tests := []struct {
		in, cost, currency string
	}{
		{"KES 0.8000", "0.8000", "KES"},
		{"  NGN   2.2000 ", "2.2000", "NGN"},
		{"0", "0", ""},
		{"", "", ""},
		{"KES", "", ""},
		{"kes 0.8", "", ""},
		{"KES 0.8.0", "", ""},
		{"KES -1", "", ""},
		{"KES 1e3", "", ""},
	}
	for _, tt := range tests {
		t.Run(tt.in, func(t *testing.T) {
			t.Parallel()
			cost, currency := parseCost(tt.in)
			if cost != tt.cost || currency != tt.currency {
				t.Errorf("parseCost(%q) = %q, %q; want %q, %q", tt.in, cost, currency, tt.cost, tt.currency)
			}
		})
	}
}

func TestRetryAfter(t *testing.T) {
	t.Parallel()
	now := time.Date(2026, 3, 1, 12, 0, 0, 0, time.UTC)
	tests := []struct {
		name string
		in   string
		want time.Duration
	}{
		{"absent", "", 0},
		{"seconds", "120", 2 * time.Minute},
		{"zero", "0", 0},
		{"negative", "-5", 0},
		{"huge", "99999999999999", 24 * time.Hour},
		{"http date", now.Add(45 * time.Second).Format(http.TimeFormat), 45 * time.Second},
		{"past date", now.Add(-time.Minute).Format(http.TimeFormat), 0},
		{"garbage", "soon", 0},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			if got := retryAfter(tt.in, now); got != tt.want {
				t.Errorf("retryAfter(%q) = %v, want %v", tt.in, got, tt.want)
			}
		})
	}
}

func TestClip(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name, in, want string
	}{
		{"short", " ok ", "ok"},
		{"exact", repeat("é", maxText), repeat("é", maxText)},
		{"long multibyte", repeat("é", maxText+1), repeat("é", maxText) + "…"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			if got := clip(tt.in); got != tt.want {
				t.Errorf("clip = %q, want %q", got, tt.want)
			}
		})
	}
}

func repeat(s string, n int) string {
	b := make([]byte, 0, len(s)*n)
	for range n {
		b = append(b, s...)
	}
	return string(b)
}
