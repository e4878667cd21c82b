//go:build linux || darwin

package main

import (
	"fmt"
	"os"
	"strconv"
	"strings"
	"testing"
	"time"
)

// Latency-bound settings of BenchmarkReplicas: each replica can deliver at
// most benchWorkers / benchLatency messages a second, so n replicas that
// share PostgreSQL and Redis well reach n times that.
const (
	benchWorkers         = 200
	benchLatency         = 100 * time.Millisecond
	benchMessagesPerRepl = 6000 // about 3 s of work at the ideal rate, whatever the replica count
)

// BenchmarkReplicas runs 1, 2 and 3 replicas of the binary against one
// PostgreSQL database and one Redis prefix, each with WORKER_CONCURRENCY=200
// and a mock provider answering in 100 ms (every attempt succeeds, with the
// default PostgreSQL ledger), and measures delivery from the send's 202 to
// the last message final. It reports messages/s per replica count, the
// share of the ideal (replicas × 200 / 0.1 s), the throughput against one
// replica's in the same run, and the replicas' CPU time per message (on
// Linux), which tells a CPU-bound run from a latency-bound one.
//
//	go test -run='^$' -bench=Replicas -benchtime=1x -timeout 15m .
func BenchmarkReplicas(b *testing.B) {
	var one float64 // one replica's rate, for the others' ratio
	for _, n := range []int{1, 2, 3} {
		b.Run(fmt.Sprintf("replicas=%d", n), func(b *testing.B) {
			rate := benchReplicas(b, n)
			if n == 1 {
				one = rate
			}
			if one > 0 {
				b.ReportMetric(rate/one, "vs_1_replica")
			}
		})
	}
}

func idealRate(replicas int) float64 {
	return float64(replicas*benchWorkers) / benchLatency.Seconds()
}

// benchReplicas runs b.N campaigns of benchMessagesPerRepl × n messages on
// n replicas and returns the mean delivery rate.
func benchReplicas(b *testing.B, n int) float64 {
	e := newCrashEnv(b, defaultRedisURL(), map[string]string{
		"WORKER_CONCURRENCY":  strconv.Itoa(benchWorkers),
		"SENDER_SUCCESS_RATE": "1",
		"SENDER_MIN_LATENCY":  benchLatency.String(),
		"SENDER_MAX_LATENCY":  benchLatency.String(),
		"LOG_LEVEL":           "warn",
		// Three replicas stay well under max_connections on a server the
		// tests share (the claim, record and ledger take a few each).
		"DATABASE_MAX_OPEN_CONNS": "16",
		"DATABASE_MAX_IDLE_CONNS": "16",
	})
	procs := []*dispatchProc{e.start("replica-1")}
	for i := 2; i <= n; i++ {
		procs = append(procs, e.startReplica("replica-"+strconv.Itoa(i), nil))
	}
	first := procs[0]
	ids := e.importCustomers(first, benchMessagesPerRepl*n)

	var total, cpu time.Duration
	b.ResetTimer()
	for range b.N {
		b.StopTimer()
		e.createCampaign(first)
		b.StartTimer()
		cpuBefore := cpuTime(procs)
		e.sendCampaign(first, ids)
		accepted := time.Now()
		for e.anyActive() {
			if time.Since(accepted) > 5*time.Minute {
				b.Fatalf("campaign not delivered within 5 minutes: %v", e.counts())
			}
			time.Sleep(20 * time.Millisecond)
		}
		total += time.Since(accepted)
		cpu += cpuTime(procs) - cpuBefore
	}
	b.StopTimer()
	rate := float64(b.N*len(ids)) / total.Seconds()
	b.ReportMetric(rate, "msgs/s")
	b.ReportMetric(rate/idealRate(n), "of_ideal")
	if cpu > 0 {
		b.ReportMetric(float64(cpu.Microseconds())/float64(b.N*len(ids)), "replica_cpu_us/msg")
	}
	b.ReportMetric(0, "ns/op")
	return rate
}

// anyActive reports whether a message of the campaign is pending or
// sending: one index probe, cheap enough to poll every 20 ms without
// loading the server the benchmark measures.
func (e *crashEnv) anyActive() bool {
	e.t.Helper()
	var active bool
	if err := e.db.Get(&active, `
SELECT EXISTS (SELECT 1 FROM outbound_messages WHERE campaign_id = $1 AND status IN ('pending', 'sending'))`, e.campaignID); err != nil {
		e.t.Fatalf("poll the campaign: %v", err)
	}
	return active
}

// cpuTime is the user and system CPU time the processes have used so far,
// read from /proc (0 where there is none).
func cpuTime(procs []*dispatchProc) time.Duration {
	var ticks int64
	for _, p := range procs {
		b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", p.pid()))
		if err != nil {
			return 0
		}
		// The fields after the command's closing parenthesis: state is
		// the 1st, utime the 12th and stime the 13th.
		s := string(b)
		fields := strings.Fields(s[strings.LastIndexByte(s, ')')+1:])
		if len(fields) < 13 {
			return 0
		}
		for _, f := range fields[11:13] {
			n, _ := strconv.ParseInt(f, 10, 64)
			ticks += n
		}
	}
	return time.Duration(ticks) * time.Second / clockTicks
}

// clockTicks is Linux's USER_HZ, the unit of /proc's CPU times: 100 on
// every common architecture.
const clockTicks = 100
