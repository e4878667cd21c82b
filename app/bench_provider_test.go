package app

import (
	"context"
	"fmt"
	"net/http"
	"testing"
	"time"

	"github.com/campaignd/dispatch/messaging/provider"
	"github.com/campaignd/dispatch/messaging/provider/sim"
)

// BenchmarkSimulatorThroughput delivers through Africa's Talking's protocol
// over HTTP, played by the simulator with 100 ms latency per send, at 200
// and 1,000 delivery goroutines: the ratio to the ideal C / 100 ms says what
// the real adapters, HTTP and the pipeline cost together. Receipts come back
// 0.5–1.5 s after each send; receipts_per_s is how fast they were applied,
// next to the delivery rate of the same run. The receipts=off runs hold
// the receipts back until after the run: the difference is what applying
// them costs delivery.
func BenchmarkSimulatorThroughput(b *testing.B) {
	const latency = 100 * time.Millisecond
	for _, run := range []struct {
		c        int
		receipts bool
	}{{200, true}, {200, false}, {1000, true}, {1000, false}} {
		c := run.c
		name := fmt.Sprintf("concurrency=%d", c)
		if !run.receipts {
			name += "/receipts=off"
		}
		b.Run(name, func(b *testing.B) {
			ideal := float64(c) / latency.Seconds()
			n := int(ideal * 6) // about 6 s of work at the ideal rate
			var delivered, receipted time.Duration
			var receiptSpan time.Duration
			for range b.N {
				b.StopTimer()
				receiptDelay := 500 * time.Millisecond
				if !run.receipts {
					receiptDelay = time.Hour
				}
				rig := startProviderRig(b, sim.Options{
					Latency: latency, ReceiptDelay: receiptDelay, ReceiptJitter: time.Second,
					DeliveredRatio: 0.95,
					HTTPClient:     provider.HTTPClient(256, 10*time.Second),
				}, func(cfg *Config) {
					productionPacing(b, cfg)
					cfg.WorkerConcurrency = c
				})
				ba := &benchApp{testApp: rig.testApp, db: rig.db}
				ids := ba.addCustomers(b, n)
				id := ba.newCampaign(b)
				body := sendBody(ids)
				b.StartTimer()
				start := time.Now()
				ba.send(b, id, body)
				ba.waitAllFinal(b, id, n, 5*time.Minute)
				delivered += time.Since(start)
				b.StopTimer()
				if !run.receipts {
					receipted += time.Since(start)
					continue
				}
				var firstReceipt time.Time
				pollUntil(b, "every receipt applied", 90*time.Second, func() bool {
					if firstReceipt.IsZero() && rig.sim.Stats().Receipts > 0 {
						firstReceipt = time.Now()
					}
					var sent int
					if err := rig.db.GetContext(context.Background(), &sent,
						`SELECT count(*) FROM outbound_messages WHERE campaign_id = $1 AND status = 'sent'`, id); err != nil {
						b.Fatal(err)
					}
					return sent == 0
				})
				receipted += time.Since(start)
				if firstReceipt.IsZero() {
					firstReceipt = start
				}
				receiptSpan += time.Since(firstReceipt)
				if d := ba.stats(b, id); d.Stats.Total != int64(n) {
					b.Fatalf("campaign %d: %+v", id, d.Stats)
				}
				if code := ba.do(b, http.MethodGet, "/health", nil, nil); code != http.StatusOK {
					b.Fatalf("/health %d after the run", code)
				}
			}
			got := float64(n*b.N) / delivered.Seconds()
			b.ReportMetric(got, "msgs/s")
			b.ReportMetric(got/ideal, "ratio")
			if run.receipts {
				b.ReportMetric(float64(n*b.N)/receiptSpan.Seconds(), "receipts_per_s")
			}
			b.ReportMetric(float64(n), "msgs")
			b.ReportMetric(loadAvg(), "loadavg")
		})
	}
}

// productionPacing gives cfg the background loops' and pools' production
// settings (config.yaml), as benchConfig does, keeping the test database,
// Redis prefix and key.
func productionPacing(b *testing.B, cfg *Config) {
	b.Helper()
	def, err := Load(nil)
	if err != nil {
		b.Fatal(err)
	}
	cfg.Sweeper = def.Sweeper
	cfg.Database.MaxOpenConns, cfg.Database.MaxIdleConns = def.Database.MaxOpenConns, def.Database.MaxIdleConns
	cfg.RetryBackoffBase = def.RetryBackoffBase
}
