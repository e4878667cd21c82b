package throttle

import (
	"context"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/campaignd/dispatch/platform/redisx/redistest"
)

// TestSharedRateAcrossReplicas: two gates over one Redis, as two replicas
// would be, each with many delivery goroutines asking for slots, together
// get the shared rate and no more.
func TestSharedRateAcrossReplicas(t *testing.T) {
	if testing.Short() {
		t.Skip("needs Redis and 20 s")
	}
	t.Parallel()
	rdb, prefix := redistest.New(t)
	const rate = 200
	const run = 20 * time.Second
	opts := Options{Rates: map[string]int{"twilio": rate}}
	replicas := []*Gate{New(rdb, prefix, opts), New(rdb, prefix, opts)}

	ctx, cancel := context.WithTimeout(context.Background(), run)
	defer cancel()
	var admitted [2]atomic.Int64
	var wg sync.WaitGroup
	start := time.Now()
	for i, g := range replicas {
		for range 100 {
			wg.Go(func() {
				for ctx.Err() == nil {
					wait, err := g.Admit(ctx, "twilio", time.Second)
					if err != nil {
						return
					}
					if wait == 0 {
						admitted[i].Add(1)
						continue
					}
					// A job put back: it would come again later.
					select {
					case <-ctx.Done():
					case <-time.After(wait):
					}
				}
			})
		}
	}
	wg.Wait()
	elapsed := time.Since(start)
	total := admitted[0].Load() + admitted[1].Load()
	perSecond := float64(total) / elapsed.Seconds()
	t.Logf("admitted %d + %d in %v: %.1f/s (limit %d/s)", admitted[0].Load(), admitted[1].Load(), elapsed.Round(time.Millisecond), perSecond, rate)
	// The burst (rate/10) is allowed once on top of the rate.
	if perSecond < rate*0.95 || perSecond > rate*1.05 {
		t.Errorf("admitted %.1f messages/s across two replicas, want %d ± 5%%", perSecond, rate)
	}
	for i := range admitted {
		if admitted[i].Load() < int64(float64(total)*0.2) {
			t.Errorf("replica %d got %d of %d slots: one replica starved the other", i, admitted[i].Load(), total)
		}
	}
}

// TestBrakeHoldsForEveryReplica: a brake set by one replica stops the
// other, does not grow while it holds, and doubles when it strikes again;
// on one node and on a three-master cluster (brake and cool-down are read
// in one MGET, so they must share a slot).
func TestBrakeHoldsForEveryReplica(t *testing.T) {
	t.Parallel()
	t.Run("single", func(t *testing.T) {
		t.Parallel()
		rdb, prefix := redistest.New(t)
		testBrake(t, rdb, prefix)
	})
	t.Run("cluster", func(t *testing.T) {
		t.Parallel()
		rdb, prefix := redistest.NewCluster(t).Client(t)
		testBrake(t, rdb, prefix)
	})
}

func testBrake(t *testing.T, rdb redis.UniversalClient, prefix string) {
	opts := Options{Brake: 300 * time.Millisecond, MaxBrake: 5 * time.Second, CacheFor: time.Millisecond}
	a, b := New(rdb, prefix, opts), New(rdb, prefix, opts)
	ctx := context.Background()

	// A cool-down shorter than the brake: read takes the later of the two.
	a.Throttled(ctx, "africastalking", 100*time.Millisecond)
	d := a.Brake(ctx, "africastalking", "africastalking: account 405: InsufficientBalance")
	if d != 300*time.Millisecond {
		t.Fatalf("first brake = %v, want 300ms", d)
	}
	if again := b.Brake(ctx, "africastalking", "again"); again > d {
		t.Errorf("a failure during the brake extended it to %v", again)
	}
	wait, err := b.Admit(ctx, "africastalking", time.Second)
	if err != nil || wait <= 0 {
		t.Fatalf("other replica Admit = %v, %v; want a wait while braked", wait, err)
	}
	st, err := b.Status(ctx, "africastalking")
	if err != nil || !st.Braked || st.Reason != "africastalking: account 405: InsufficientBalance" {
		t.Errorf("Status = %+v, %v", st, err)
	}
	if wait, _ := b.Admit(ctx, "twilio", time.Second); wait != 0 {
		t.Errorf("an unbraked provider waits %v", wait)
	}
	deadline := time.Now().Add(5 * time.Second)
	for {
		wait, err := a.Admit(ctx, "africastalking", time.Second)
		if err != nil {
			t.Fatal(err)
		}
		if wait == 0 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("brake never lifted")
		}
		time.Sleep(wait)
	}
	if d := b.Brake(ctx, "africastalking", "still no balance"); d != 600*time.Millisecond {
		t.Errorf("second brake in a row = %v, want 600ms", d)
	}
}
