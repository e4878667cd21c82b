// Package redistest gives each test its own Redis key prefix on the real
// server and deletes the test's keys when it ends.
package redistest

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"os"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/campaignd/dispatch/platform/redisx"
)

// URL is the server tests use: TEST_REDIS_URL, or the local default.
func URL() string {
	if u := os.Getenv("TEST_REDIS_URL"); u != "" {
		return u
	}
	return "redis://127.0.0.1:6379/0"
}

// New returns a client and a unique key prefix ("test:<random>:").
func New(t testing.TB) (*redis.Client, string) {
	t.Helper()
	if testing.Short() {
		t.Skip("needs Redis; skipped in -short mode")
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	c, err := redisx.Open(ctx, URL())
	if err != nil {
		t.Fatalf("Redis is not reachable at %s: %v\n"+
			"start it (redis-server --daemonize yes, or docker compose up -d redis) or set TEST_REDIS_URL", URL(), err)
	}
	b := make([]byte, 6)
	_, _ = rand.Read(b)
	prefix := NewPrefix()
	t.Cleanup(func() {
		defer c.Close()
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		if err := DeletePrefix(ctx, c, prefix); err != nil {
			t.Errorf("delete test keys: %v", err)
		}
	})
	return c, prefix
}

// NewPrefix returns a fresh test key prefix, "test:<random>:".
func NewPrefix() string {
	b := make([]byte, 6)
	_, _ = rand.Read(b)
	return "test:" + hex.EncodeToString(b) + ":"
}

// DeletePrefix deletes every key under prefix, hash-tagged ones
// ("{<prefix>...}", redisx.Keys.Tag) included, on every master of c.
func DeletePrefix(ctx context.Context, c redis.UniversalClient, prefix string) error {
	return redisx.ForEachMaster(ctx, c, func(ctx context.Context, node *redis.Client) error {
		var keys []string
		for _, pattern := range []string{prefix + "*", "{" + prefix + "*"} {
			iter := node.Scan(ctx, 0, pattern, 500).Iterator()
			for iter.Next(ctx) {
				keys = append(keys, iter.Val())
			}
			if err := iter.Err(); err != nil {
				return err
			}
		}
		// One DEL per key: a cluster node refuses a DEL whose keys are in
		// different slots, even slots it owns.
		for len(keys) > 0 {
			n := min(len(keys), 500)
			_, err := node.Pipelined(ctx, func(p redis.Pipeliner) error {
				for _, k := range keys[:n] {
					p.Del(ctx, k)
				}
				return nil
			})
			if err != nil {
				return err
			}
			keys = keys[n:]
		}
		return nil
	})
}
