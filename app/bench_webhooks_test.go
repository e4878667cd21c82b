package app

import (
	"fmt"
	"net/http"
	"net/http/httptest"
	"sync/atomic"
	"testing"
	"time"
)

// BenchmarkWebhooksOnVsOff delivers the same campaign twice in one run,
// with no webhook endpoint and with one subscribed to every message event
// (a local receiver answering 204 at once), at 200 workers with the default
// mock latency: the ratio says what the outbox costs delivery (goal: at
// least 0.9). The off run goes first and they alternate per iteration.
func BenchmarkWebhooksOnVsOff(b *testing.B) {
	const c = 200
	ideal := float64(c) / meanMockLatency.Seconds()
	n := int(ideal * 8)
	var received atomic.Int64
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		received.Add(1)
		w.WriteHeader(http.StatusNoContent)
	}))
	b.Cleanup(srv.Close)
	var off, on time.Duration
	for range b.N {
		for _, hooks := range []bool{false, true} {
			b.StopTimer()
			cfg := benchConfig(b)
			cfg.WorkerConcurrency = c
			cfg.Sender.SuccessRate = 1
			ba := startBenchApp(b, cfg)
			if hooks {
				code := ba.do(b, http.MethodPost, "/webhook-endpoints", map[string]any{
					"url":    srv.URL,
					"events": []string{"message.sent", "message.failed", "message.delivered", "campaign.finished"},
				}, nil)
				if code != http.StatusCreated {
					b.Fatalf("create endpoint: %d", code)
				}
				if err := ba.subscriptions.Refresh(b.Context()); err != nil {
					b.Fatal(err)
				}
			}
			ids := ba.addCustomers(b, n)
			id := ba.newCampaign(b)
			body := sendBody(ids)
			b.StartTimer()
			start := time.Now()
			ba.send(b, id, body)
			ba.waitAllFinal(b, id, n, 5*time.Minute)
			if hooks {
				on += time.Since(start)
			} else {
				off += time.Since(start)
			}
			b.StopTimer()
			if hooks {
				pollUntil(b, "the webhooks delivered", 2*time.Minute, func() bool { return ba.outboxEmpty(b) })
			}
		}
	}
	offRate := float64(n*b.N) / off.Seconds()
	onRate := float64(n*b.N) / on.Seconds()
	b.ReportMetric(offRate, "off_msgs/s")
	b.ReportMetric(onRate, "on_msgs/s")
	b.ReportMetric(onRate/offRate, "on/off")
	b.ReportMetric(float64(received.Load())/float64(b.N), "webhooks/op")
	b.Logf("webhooks on: %.0f msgs/s, off: %.0f msgs/s (%s)", onRate, offRate, fmt.Sprintf("%.2f", onRate/offRate))
}

// outboxEmpty reports whether every webhook event was fanned out and
// delivered.
func (ba *benchApp) outboxEmpty(b *testing.B) bool {
	var n int
	if err := ba.db.Get(&n, `SELECT (SELECT count(*) FROM webhook_events) + (SELECT count(*) FROM webhook_tasks)`); err != nil {
		b.Fatal(err)
	}
	return n == 0
}
