package app

// BenchmarkSendFloor puts a send of 10,000 and of 100,000 customer ids next
// to the floor PostgreSQL and Redis set for the same work, measured in the
// same run, alternating, on the same table:
//
//	go test -run='^$' -bench=SendFloor -benchtime=5x ./app/
//
//   - send_ms: POST /campaigns/{id}/send {"customer_ids":[...]} over HTTP
//     until its 202, on an API-only replica (worker_concurrency 0). Over
//     HTTP because that is what a client waits for: JSON decoding of the
//     ids, authentication, the idempotency-free send transaction (guarded
//     status update, unknown-id check, opt-out check, the insert, the
//     dispatch batch) and the wake-up of the feeder. The send pushes
//     nothing itself: the feeder queues pending messages after commit, a
//     bounded amount at a time (see messaging/feeder.go), so the push is
//     not on the request path.
//   - floor_ms: one INSERT INTO outbound_messages (campaign_id,
//     customer_id) SELECT ... FROM unnest($ids) RETURNING id into a fresh
//     draft campaign, committed, then every returned id pushed with LPUSH
//     in one pipeline (chunks of 1,000 ids, as the queue pushes), to a key
//     of the benchmark's own.
//   - ratio: send_ms / floor_ms over all iterations; best_ratio: the
//     fastest send over the fastest floor (less sensitive to other tenants
//     of a shared host);
//   - cpu_ratio: the CPU both sides cost, this process (the app and the
//     benchmark's client) plus the PostgreSQL backends of the app's
//     database (send_*_cpu_ms, floor_*_cpu_ms), send over floor. Redis's
//     own CPU is not counted (the send pushes nothing). On a host shared
//     with other busy tenants every round trip can wait tens of
//     milliseconds for a core, so the wall-time ratio of a short request
//     mostly counts round trips; the CPU ratio counts the work.
//
// Each iteration creates two draft campaigns (untimed), so both sides insert
// into a table of the same size and with the same indexes, constraints and
// triggers. The floor checks nothing: the send also joins its ids to
// customers and locks them (the 422 for unknown ids, and what keeps an
// erasure out; see messaging's insertByIDsSQL), which the table's foreign
// keys did, for the floor too, before migration 00018.

import (
	"context"
	"fmt"
	"testing"
	"time"

	"github.com/lib/pq"
	"github.com/redis/go-redis/v9"

	"github.com/campaignd/dispatch/platform/redisx"
)

func BenchmarkSendFloor(b *testing.B) {
	ctx := context.Background()
	cfg := benchConfig(b)
	cfg.WorkerConcurrency = 0 // API-only replica: no deliveries compete with the request
	ba := startBenchApp(b, cfg)
	all := ba.addCustomers(b, 100_000)
	rdb, err := redisx.Open(ctx, cfg.Redis.URL)
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { rdb.Close() })
	floorKey := redisx.Keys{Prefix: cfg.Redis.KeyPrefix}.Key("bench_floor")
	b.Cleanup(func() { rdb.Del(ctx, floorKey) })

	floor := func(b *testing.B, campaignID int64, ids []int64) time.Duration {
		start := time.Now()
		var msgIDs []int64
		if err := ba.db.SelectContext(ctx, &msgIDs, `
INSERT INTO outbound_messages (campaign_id, customer_id)
SELECT $1, u.id FROM unnest($2::bigint[]) AS u(id)
RETURNING id`, campaignID, pq.Array(ids)); err != nil {
			b.Fatal(err)
		}
		if _, err := rdb.Pipelined(ctx, func(p redis.Pipeliner) error {
			for lo := 0; lo < len(msgIDs); lo += 1000 {
				chunk := msgIDs[lo:min(lo+1000, len(msgIDs))]
				args := make([]any, len(chunk))
				for i, id := range chunk {
					args[i] = id
				}
				p.LPush(ctx, floorKey, args...)
			}
			return nil
		}); err != nil {
			b.Fatal(err)
		}
		d := time.Since(start)
		if err := rdb.Del(ctx, floorKey).Err(); err != nil {
			b.Fatal(err)
		}
		return d
	}

	// Warm up the connection pools and the statements' plans.
	ba.send(b, ba.newCampaign(b), sendBody(all[:1000]))
	floor(b, ba.newCampaign(b), all[:1000])

	for _, n := range []int{10_000, 100_000} {
		body := sendBody(all[:n])
		b.Run(fmt.Sprintf("ids=%d", n), func(b *testing.B) {
			var send, flr, bestSend, bestFloor time.Duration
			var cpu, floorCPU cpuUsage
			load := loadAvg()
			for i := range b.N {
				d, c := ba.timedSend(b, body)
				cpu = cpu.add(c)
				floorID := ba.newCampaign(b)
				before := ba.cpu(b)
				f := floor(b, floorID, all[:n])
				floorCPU = floorCPU.add(ba.cpu(b).sub(before))
				b.StartTimer()
				send += d
				flr += f
				if i == 0 || d < bestSend {
					bestSend = d
				}
				if i == 0 || f < bestFloor {
					bestFloor = f
				}
			}
			ms := func(d time.Duration) float64 { return float64(d.Microseconds()) / 1000 }
			b.ReportMetric(ms(send)/float64(b.N), "send_ms")
			b.ReportMetric(ms(flr)/float64(b.N), "floor_ms")
			b.ReportMetric(send.Seconds()/flr.Seconds(), "ratio")
			b.ReportMetric(bestSend.Seconds()/bestFloor.Seconds(), "best_ratio")
			b.ReportMetric(ms(cpu.goProc)/float64(b.N), "send_go_cpu_ms")
			b.ReportMetric(ms(cpu.postgres)/float64(b.N), "send_pg_cpu_ms")
			b.ReportMetric(ms(floorCPU.goProc)/float64(b.N), "floor_go_cpu_ms")
			b.ReportMetric(ms(floorCPU.postgres)/float64(b.N), "floor_pg_cpu_ms")
			b.ReportMetric(float64(cpu.goProc+cpu.postgres)/float64(floorCPU.goProc+floorCPU.postgres), "cpu_ratio")
			b.ReportMetric(max(load, loadAvg()), "loadavg")
		})
	}
}
