package queue

import (
	"context"

	"github.com/redis/go-redis/v9"

	"github.com/campaignd/dispatch/platform/redisx"
)

// ForgetDead removes ids from the dead-letter list (their messages were
// given fresh attempts), in one pipeline.
func (q *Queue) ForgetDead(ctx context.Context, ids []int64) error {
	if len(ids) == 0 {
		return nil
	}
	_, err := q.rdb.Pipelined(ctx, func(p redis.Pipeliner) error {
		for _, id := range ids {
			p.LRem(ctx, q.keys.Dead, 0, id)
		}
		return nil
	})
	return redisx.Classify(err, "forget dead letters")
}
