package app

import (
	"testing"
	"time"

	"github.com/campaignd/dispatch/platform/redisx/redistest"
)

// BenchmarkRedisCluster delivers the same campaign through a private Redis
// node and through a local three-master Redis Cluster
// (REDIS_CLUSTER_ADDRS), alternating in the same run, and reports both
// rates and cluster/single. With zero sender latency Redis round trips
// weigh most (the pipeline's ceiling); at the default latency (mean 125 ms)
// the pool's concurrency sets the pace. One queue's keys share a hash tag,
// so all of its traffic goes to one master: a cluster buys room for other
// keys and failover, not a faster queue.
//
//	go test -run='^$' -bench=RedisCluster -benchtime=1x ./app/
func BenchmarkRedisCluster(b *testing.B) {
	// A private node of the same binary, not the shared one: that one
	// carries every other test's load, which would flatter the cluster.
	node := redistest.NewServer(b)
	cluster := redistest.NewCluster(b)
	for _, v := range []struct {
		name    string
		latency bool // the default mock latency; else zero
		n       int
		workers int
	}{
		{name: "latency=0", n: 20_000, workers: 200},
		{name: "latency=default", latency: true, n: 8_000, workers: 200},
	} {
		b.Run(v.name, func(b *testing.B) {
			var elapsed [2]time.Duration // single, cluster
			var load float64
			var cpu [2]cpuUsage
			for iter := range b.N {
				// Which goes first alternates, so a drift in the shared
				// host's load does not always favour the same one.
				order := []int{0, 1}
				if iter%2 == 1 {
					order = []int{1, 0}
				}
				for _, i := range order {
					onCluster := i == 1
					cfg := benchConfig(b)
					cfg.WorkerConcurrency = v.workers
					cfg.Sender.SuccessRate = 1
					if !v.latency {
						cfg.Sender.MinLatency, cfg.Sender.MaxLatency = 0, 0
					}
					cfg.Redis.URL = node
					if onCluster {
						cfg.Redis.URL = ""
						cfg.Redis.ClusterAddrs = cluster.AddrList()
					}
					r := runDelivery(b, cfg, v.n, false)
					elapsed[i] += r.elapsed
					load = max(load, r.load)
					cpu[i].goProc += r.cpu.goProc
					cpu[i].postgres += r.cpu.postgres
				}
			}
			msgs := float64(v.n * b.N)
			single, onCluster := msgs/elapsed[0].Seconds(), msgs/elapsed[1].Seconds()
			b.ReportMetric(single, "single_msgs/s")
			b.ReportMetric(onCluster, "cluster_msgs/s")
			b.ReportMetric(onCluster/single, "cluster/single")
			b.ReportMetric(float64(cpu[0].goProc.Microseconds())/msgs, "single_go_cpu_us/msg")
			b.ReportMetric(float64(cpu[1].goProc.Microseconds())/msgs, "cluster_go_cpu_us/msg")
			b.ReportMetric(float64(v.n), "msgs")
			b.ReportMetric(load, "loadavg")
			if v.latency {
				ideal := float64(v.workers) / meanMockLatency.Seconds()
				b.Logf("ideal %.0f msgs/s: single %.2f, cluster %.2f of it", ideal, single/ideal, onCluster/ideal)
			}
		})
	}
}
