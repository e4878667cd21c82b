package queue

import (
	"context"
	"strconv"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/campaignd/dispatch/platform/redisx"
)

// What GET /queue shows beyond the depths: each consumer with its heartbeat
// and in-flight count, and per-minute outcome counters. Everything here is
// O(consumers + minutes) Redis commands, whatever the number of messages.

// ThroughputMinutes is how many minutes of outcome counters are kept.
const ThroughputMinutes = 15

// throughputKey names one minute's counters: a hash outcome → count.
func (q *Queue) throughputKey(minute int64) string {
	return q.keys.Ready + ":throughput:" + strconv.FormatInt(minute, 10)
}

// AddThroughput adds counts (outcome → n) to the minute holding at, in one
// pipeline. Each minute's hash expires a little after it leaves the window,
// so nothing needs cleaning up.
func (q *Queue) AddThroughput(ctx context.Context, at time.Time, counts map[string]int64) error {
	if len(counts) == 0 {
		return nil
	}
	key := q.throughputKey(at.Unix() / 60)
	_, err := q.rdb.Pipelined(ctx, func(p redis.Pipeliner) error {
		for outcome, n := range counts {
			p.HIncrBy(ctx, key, outcome, n)
		}
		p.Expire(ctx, key, (ThroughputMinutes+2)*time.Minute)
		return nil
	})
	return redisx.Classify(err, "count throughput")
}

// Minute is one minute's outcome counts.
type Minute struct {
	Start    time.Time        `json:"start"`
	Outcomes map[string]int64 `json:"outcomes"`
}

// Throughput returns the last ThroughputMinutes minutes up to now, oldest
// first, the current (partial) minute last; minutes without outcomes have
// an empty map.
func (q *Queue) Throughput(ctx context.Context, now time.Time) ([]Minute, error) {
	last := now.Unix() / 60
	cmds := make([]*redis.MapStringStringCmd, ThroughputMinutes)
	_, err := q.rdb.Pipelined(ctx, func(p redis.Pipeliner) error {
		for i := range cmds {
			cmds[i] = p.HGetAll(ctx, q.throughputKey(last-int64(ThroughputMinutes-1-i)))
		}
		return nil
	})
	if err != nil {
		return nil, redisx.Classify(err, "read throughput")
	}
	out := make([]Minute, len(cmds))
	for i, c := range cmds {
		m := Minute{Start: time.Unix((last-int64(ThroughputMinutes-1-i))*60, 0).UTC(), Outcomes: map[string]int64{}}
		for k, v := range c.Val() {
			if n, err := strconv.ParseInt(v, 10, 64); err == nil {
				m.Outcomes[k] = n
			}
		}
		out[i] = m
	}
	return out, nil
}

// Consumer is one worker pool as the queue sees it.
type Consumer struct {
	ID            string    `json:"id"`
	LastHeartbeat time.Time `json:"last_heartbeat"`
	InFlight      int64     `json:"in_flight"` // ids in its processing list
}

// Consumers lists the consumers with a heartbeat, most recent first, with
// the length of each one's processing list: two round trips.
func (q *Queue) Consumers(ctx context.Context) ([]Consumer, error) {
	zs, err := q.rdb.ZRevRangeWithScores(ctx, q.keys.Consumers, 0, -1).Result()
	if err != nil {
		return nil, redisx.Classify(err, "list consumers")
	}
	out := make([]Consumer, len(zs))
	if len(zs) == 0 {
		return out, nil
	}
	lens := make([]*redis.IntCmd, len(zs))
	_, err = q.rdb.Pipelined(ctx, func(p redis.Pipeliner) error {
		for i, z := range zs {
			lens[i] = p.LLen(ctx, q.keys.ProcessingPrefix+z.Member.(string))
		}
		return nil
	})
	if err != nil {
		return nil, redisx.Classify(err, "consumers' processing lists")
	}
	for i, z := range zs {
		out[i] = Consumer{ID: z.Member.(string), LastHeartbeat: time.UnixMilli(int64(z.Score)).UTC(), InFlight: lens[i].Val()}
	}
	return out, nil
}
