package queue

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"strconv"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/campaignd/dispatch/platform/redisx"
)

// Queue is the job queue: message ids in Redis. PostgreSQL stays the
// source of truth; the queue only carries work, and everything it holds can
// be rebuilt from the outbound_messages table.
//
// Keys, with {Q} the hash tag of the configured prefix and queue name
// (redisx.Keys.Tag: "{" + prefix + name + "}"):
//
//	{Q}                     list: ids ready to deliver (LPUSH in, taken from the right: FIFO)
//	{Q}:processing:<id>     list: ids a consumer took and has not acknowledged yet
//	{Q}:consumers           zset: consumer id → last heartbeat (unix ms)
//	{Q}:delayed             zset: id → due time (unix ms), retries waiting for their backoff
//	{Q}:dead                list: ids that failed for good (dead letters)
//	{Q}:epoch               string: present while Redis still holds the queue's data
//
// The tag puts every key of one queue in one Redis Cluster slot: each Lua
// script, MULTI and BLMOVE here touches two or more of them, which a
// cluster refuses (CROSSSLOT) across slots. The keys were untagged before
// ("Q", "Q:epoch", ...): a binary with the tags finds no {Q}:epoch in a
// Redis the older one used, so its sweeper rebuilds the queue from
// PostgreSQL on first start (Service.Sweep), as after a flush; the old
// keys are left orphaned and may be deleted.
//
// A consumer moves ids atomically from Q into its own processing list, and
// removes them only after the database holds their outcome, so a consumer
// that dies loses nothing: once its heartbeat is older than the consumer TTL,
// any replica's reaper moves its processing list back onto Q.
type Queue struct {
	rdb  redis.UniversalClient
	keys Keys
}

// Keys names the queue's Redis keys (see Queue).
type Keys struct {
	Ready, Consumers, Delayed, Dead, Epoch string
	ProcessingPrefix                       string // + consumer id
}

// Keys returns the queue's key names, for tests and tools that inspect
// Redis directly.
func (q *Queue) Keys() Keys { return q.keys }

// New returns the queue named name under prefix. rdb may be one node, a
// Sentinel-managed primary or a cluster.
func New(rdb redis.UniversalClient, prefix, name string) *Queue {
	q := redisx.Keys{Prefix: prefix}.Tag(name)
	return &Queue{rdb: rdb, keys: Keys{
		Ready:            q,
		Consumers:        q + ":consumers",
		Delayed:          q + ":delayed",
		Dead:             q + ":dead",
		Epoch:            q + ":epoch",
		ProcessingPrefix: q + ":processing:",
	}}
}

// pushChunk bounds one LPUSH's arguments; chunks go out in one pipeline, so
// 100,000 ids cost one round trip.
const pushChunk = 1000

// Push appends ids to the ready list.
func (q *Queue) Push(ctx context.Context, ids []int64) error {
	if len(ids) == 0 {
		return nil
	}
	_, err := q.rdb.Pipelined(ctx, func(p redis.Pipeliner) error {
		for start := 0; start < len(ids); start += pushChunk {
			end := min(start+pushChunk, len(ids))
			args := make([]any, 0, end-start)
			for _, id := range ids[start:end] {
				args = append(args, id)
			}
			p.LPush(ctx, q.keys.Ready, args...)
		}
		return nil
	})
	return redisx.Classify(err, "push jobs")
}

// ReadyLen is the ready list's length.
func (q *Queue) ReadyLen(ctx context.Context) (int64, error) {
	n, err := q.rdb.LLen(ctx, q.keys.Ready).Result()
	return n, redisx.Classify(err, "ready list length")
}

// moveBatch moves up to ARGV[1] ids from the ready list into a processing
// list in one atomic step, oldest first.
var moveBatch = redis.NewScript(`
local out = {}
for i = 1, tonumber(ARGV[1]) do
  local v = redis.call('LMOVE', KEYS[1], KEYS[2], 'RIGHT', 'LEFT')
  if not v then break end
  out[#out + 1] = v
end
return out
`)

// Fetch moves up to max ids into consumer's processing list and returns
// them. When the ready list is empty it blocks for at most wait, then
// returns nothing; a short wait keeps shutdown prompt.
func (q *Queue) Fetch(ctx context.Context, consumer string, max int, wait time.Duration) ([]int64, error) {
	proc := q.keys.ProcessingPrefix + consumer
	vals, err := moveBatch.Run(ctx, q.rdb, []string{q.keys.Ready, proc}, max).StringSlice()
	if err != nil && !errors.Is(err, redis.Nil) {
		return nil, redisx.Classify(err, "fetch jobs")
	}
	if len(vals) == 0 {
		if wait < time.Millisecond {
			return nil, nil // no wait asked for (BLMOVE would read 0 as forever)
		}
		v, err := q.blockingMove(ctx, q.keys.Ready, proc, wait).Result()
		if errors.Is(err, redis.Nil) {
			return nil, nil
		}
		if err != nil {
			return nil, redisx.Classify(err, "wait for jobs")
		}
		vals = []string{v}
	}
	ids := make([]int64, 0, len(vals))
	for _, v := range vals {
		id, err := strconv.ParseInt(v, 10, 64)
		if err != nil {
			// Not ours; drop it so it cannot wedge the consumer.
			q.rdb.LRem(ctx, proc, 1, v)
			continue
		}
		ids = append(ids, id)
	}
	return ids, nil
}

// blockingMove is BLMOVE src→dst (oldest first) waiting at most wait (at
// least 1ms). go-redis's BLMove sends whole seconds only, rounding a 100ms
// wait up to 1s; Redis 6+ takes fractions, so a wait shorter than the
// client's read timeout (redisx: 5s) is sent as is, in milliseconds.
func (q *Queue) blockingMove(ctx context.Context, src, dst string, wait time.Duration) *redis.StringCmd {
	if wait >= 3*time.Second || wait%time.Second == 0 {
		return q.rdb.BLMove(ctx, src, dst, "RIGHT", "LEFT", wait)
	}
	cmd := redis.NewStringCmd(ctx, "blmove", src, dst, "RIGHT", "LEFT", strconv.FormatFloat(wait.Seconds(), 'f', 3, 64))
	_ = q.rdb.Process(ctx, cmd)
	return cmd
}

// Settlement is what to do with a batch of jobs once the database holds
// their outcome.
type Settlement struct {
	Done    []int64             // finished (sent, failed, or nothing to do): acknowledge
	Delay   map[int64]time.Time // come back at the given time (retry backoff, not yet due)
	Dead    []int64             // failed for good: acknowledge and record as dead letters
	Requeue []int64             // not attempted (shutdown): back to the front of the ready list
}

// Empty reports whether s settles nothing.
func (s Settlement) Empty() bool {
	return len(s.Done) == 0 && len(s.Delay) == 0 && len(s.Dead) == 0 && len(s.Requeue) == 0
}

// Settle applies s for consumer in one MULTI, so a job is never both
// acknowledged and lost: it leaves the processing list in the same step as
// it enters the delayed set, the dead-letter list or the ready list.
func (q *Queue) Settle(ctx context.Context, consumer string, s Settlement) error {
	if s.Empty() {
		return nil
	}
	proc := q.keys.ProcessingPrefix + consumer
	// LREM with count -1 removes one copy scanning from the tail, where the
	// oldest jobs are (Fetch pushes at the head), so settling a batch does
	// not walk the whole in-flight list once per job.
	_, err := q.rdb.TxPipelined(ctx, func(p redis.Pipeliner) error {
		for _, id := range s.Done {
			p.LRem(ctx, proc, -1, id)
		}
		for id, at := range s.Delay {
			p.ZAdd(ctx, q.keys.Delayed, redis.Z{Score: float64(at.UnixMilli()), Member: id})
			p.LRem(ctx, proc, -1, id)
		}
		for _, id := range s.Dead {
			p.LPush(ctx, q.keys.Dead, id)
			p.LRem(ctx, proc, -1, id)
		}
		for _, id := range s.Requeue {
			p.RPush(ctx, q.keys.Ready, id)
			p.LRem(ctx, proc, -1, id)
		}
		return nil
	})
	return redisx.Classify(err, "settle jobs")
}

// promoteDue moves up to ARGV[2] delayed ids whose due time is at or before
// ARGV[1] onto the ready list, atomically, so several replicas promoting at
// once never push an id twice.
var promoteDue = redis.NewScript(`
local ids = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', ARGV[1], 'LIMIT', 0, tonumber(ARGV[2]))
if #ids > 0 then
  redis.call('LPUSH', KEYS[2], unpack(ids))
  redis.call('ZREM', KEYS[1], unpack(ids))
end
return #ids
`)

// PromoteDue moves retries that are due onto the ready list and returns how
// many it moved (at most 1,000 a call).
func (q *Queue) PromoteDue(ctx context.Context, now time.Time) (int, error) {
	n, err := promoteDue.Run(ctx, q.rdb, []string{q.keys.Delayed, q.keys.Ready}, now.UnixMilli(), 1000).Int()
	return n, redisx.Classify(err, "promote due retries")
}

// Heartbeat records that consumer is alive.
func (q *Queue) Heartbeat(ctx context.Context, consumer string, now time.Time) error {
	err := q.rdb.ZAdd(ctx, q.keys.Consumers, redis.Z{Score: float64(now.UnixMilli()), Member: consumer}).Err()
	return redisx.Classify(err, "heartbeat")
}

// reclaim moves a dead consumer's processing list back to the front of the
// ready list (its jobs were taken first, so they go first) and forgets the
// consumer, unless its heartbeat became fresh meanwhile.
var reclaim = redis.NewScript(`
local score = redis.call('ZSCORE', KEYS[1], ARGV[1])
if score and tonumber(score) > tonumber(ARGV[2]) then return -1 end
local n = 0
while redis.call('LMOVE', KEYS[2], KEYS[3], 'LEFT', 'RIGHT') do n = n + 1 end
redis.call('ZREM', KEYS[1], ARGV[1])
return n
`)

// ReapDead returns the jobs of every consumer whose last heartbeat is older
// than cutoff to the ready list. It returns how many jobs it moved.
func (q *Queue) ReapDead(ctx context.Context, cutoff time.Time) (int, error) {
	dead, err := q.rdb.ZRangeByScore(ctx, q.keys.Consumers, &redis.ZRangeBy{
		Min: "-inf", Max: strconv.FormatInt(cutoff.UnixMilli(), 10),
	}).Result()
	if err != nil {
		return 0, redisx.Classify(err, "list consumers")
	}
	moved := 0
	for _, c := range dead {
		n, err := q.release(ctx, c, cutoff)
		if err != nil {
			return moved, err
		}
		moved += n
	}
	return moved, nil
}

// Release returns everything consumer still holds to the ready list and
// forgets the consumer. A pool calls it as the last step of shutdown.
func (q *Queue) Release(ctx context.Context, consumer string) (int, error) {
	return q.release(ctx, consumer, time.Now().Add(time.Hour))
}

func (q *Queue) release(ctx context.Context, consumer string, cutoff time.Time) (int, error) {
	n, err := reclaim.Run(ctx, q.rdb,
		[]string{q.keys.Consumers, q.keys.ProcessingPrefix + consumer, q.keys.Ready},
		consumer, cutoff.UnixMilli()).Int()
	if err != nil {
		return 0, redisx.Classify(err, "reclaim jobs of consumer "+consumer)
	}
	return max(n, 0), nil
}

// EnsureEpoch reports whether the queue's data was lost since the last
// call (Redis flushed, or restarted without persistence): it sets the epoch
// marker if it is missing and returns true when it had to. The first start
// against an empty Redis also returns true, which is right: nothing the
// database considers queued is in Redis.
func (q *Queue) EnsureEpoch(ctx context.Context) (bool, error) {
	ok, err := q.rdb.SetNX(ctx, q.keys.Epoch, time.Now().UTC().Format(time.RFC3339Nano), 0).Result()
	return ok, redisx.Classify(err, "check queue epoch")
}

// Depths counts the jobs in each part of the queue.
type Depths struct {
	Ready      int64 `json:"ready"`
	Processing int64 `json:"processing"`
	Delayed    int64 `json:"delayed"`
	Dead       int64 `json:"dead_letter"`
	Consumers  int64 `json:"consumers"`
}

// Depths reads the queue's sizes in one round trip plus one per consumer.
func (q *Queue) Depths(ctx context.Context) (Depths, error) {
	var d Depths
	var ready, delayed, dead *redis.IntCmd
	var consumers *redis.StringSliceCmd
	_, err := q.rdb.Pipelined(ctx, func(p redis.Pipeliner) error {
		ready = p.LLen(ctx, q.keys.Ready)
		delayed = p.ZCard(ctx, q.keys.Delayed)
		dead = p.LLen(ctx, q.keys.Dead)
		consumers = p.ZRange(ctx, q.keys.Consumers, 0, -1)
		return nil
	})
	if err != nil {
		return d, redisx.Classify(err, "queue depths")
	}
	d.Ready, d.Delayed, d.Dead = ready.Val(), delayed.Val(), dead.Val()
	d.Consumers = int64(len(consumers.Val()))
	if len(consumers.Val()) > 0 {
		cmds, err := q.rdb.Pipelined(ctx, func(p redis.Pipeliner) error {
			for _, c := range consumers.Val() {
				p.LLen(ctx, q.keys.ProcessingPrefix+c)
			}
			return nil
		})
		if err != nil {
			return d, redisx.Classify(err, "processing depth")
		}
		for _, c := range cmds {
			d.Processing += c.(*redis.IntCmd).Val()
		}
	}
	return d, nil
}

// DeadLetters returns up to n dead-letter ids, newest first.
func (q *Queue) DeadLetters(ctx context.Context, n int64) ([]int64, error) {
	vals, err := q.rdb.LRange(ctx, q.keys.Dead, 0, n-1).Result()
	if err != nil {
		return nil, redisx.Classify(err, "read dead letters")
	}
	ids := make([]int64, 0, len(vals))
	for _, v := range vals {
		if id, err := strconv.ParseInt(v, 10, 64); err == nil {
			ids = append(ids, id)
		}
	}
	return ids, nil
}

// NewConsumerID names one pool's processing list: unique per process start.
func NewConsumerID(host string) string {
	b := make([]byte, 4)
	_, _ = rand.Read(b)
	return fmt.Sprintf("%s-%s", host, hex.EncodeToString(b))
}

// Size is the number of ids s settles.
func (s Settlement) Size() int {
	return len(s.Done) + len(s.Delay) + len(s.Dead) + len(s.Requeue)
}

// AddDelay adds id, due at at, to s.Delay.
func (s *Settlement) AddDelay(id int64, at time.Time) {
	if s.Delay == nil {
		s.Delay = map[int64]time.Time{}
	}
	s.Delay[id] = at
}

// Merge returns s and o in one settlement. An id in both is settled twice,
// which is harmless: the second removal from the processing list finds
// nothing, and a second copy queued is claimed once.
func (s Settlement) Merge(o Settlement) Settlement {
	s.Done = append(s.Done, o.Done...)
	s.Dead = append(s.Dead, o.Dead...)
	s.Requeue = append(s.Requeue, o.Requeue...)
	if len(o.Delay) > 0 {
		d := make(map[int64]time.Time, len(s.Delay)+len(o.Delay))
		for id, at := range s.Delay {
			d[id] = at
		}
		for id, at := range o.Delay {
			d[id] = at
		}
		s.Delay = d
	}
	return s
}
