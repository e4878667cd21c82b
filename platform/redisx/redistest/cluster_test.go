package redistest

import (
	"context"
	"fmt"
	"sync"
	"testing"

	"github.com/redis/go-redis/v9"
)

// TestCluster starts a cluster, writes plain and hash-tagged keys through a
// cluster client, checks they spread over every master, and that
// DeletePrefix removes them all.
func TestCluster(t *testing.T) {
	t.Parallel()
	c := NewCluster(t)
	rdb, prefix := c.Client(t)
	ctx := context.Background()
	for i := range 30 {
		if err := rdb.Set(ctx, fmt.Sprintf("%s%d", prefix, i), i, 0).Err(); err != nil {
			t.Fatalf("SET: %v", err)
		}
		if err := rdb.Set(ctx, fmt.Sprintf("{%s%d}:x", prefix, i), i, 0).Err(); err != nil {
			t.Fatalf("SET tagged: %v", err)
		}
	}
	sizes := func() []int64 {
		var mu sync.Mutex
		var out []int64
		err := rdb.ForEachMaster(ctx, func(ctx context.Context, node *redis.Client) error {
			n, err := node.DBSize(ctx).Result()
			mu.Lock()
			out = append(out, n)
			mu.Unlock()
			return err
		})
		if err != nil {
			t.Fatal(err)
		}
		return out
	}
	before := sizes()
	if len(before) != 3 {
		t.Fatalf("%d masters, want 3", len(before))
	}
	for _, n := range before {
		if n == 0 {
			t.Fatalf("a master holds no key of 60 (%v): keys did not spread", before)
		}
	}
	if err := DeletePrefix(ctx, rdb, prefix); err != nil {
		t.Fatal(err)
	}
	for _, n := range sizes() {
		if n != 0 {
			t.Fatalf("keys left after DeletePrefix: %v", sizes())
		}
	}
	if err := c.FlushAll(ctx); err != nil {
		t.Fatal(err)
	}
}
