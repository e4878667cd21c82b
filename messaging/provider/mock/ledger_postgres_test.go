package mock

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"testing"
	"time"

	"github.com/jmoiron/sqlx"
	_ "github.com/lib/pq"

	"github.com/campaignd/dispatch/messaging/provider"
	"github.com/campaignd/dispatch/platform/errs"
	"github.com/campaignd/dispatch/platform/postgres/pgtest"
)

type ledgerRow struct {
	Key     int64  `db:"message_id"`
	Calls   int    `db:"calls"`
	Content string `db:"content"`
}

func ledgerRows(t *testing.T, db *sqlx.DB) map[int64]ledgerRow {
	t.Helper()
	var rows []ledgerRow
	if err := db.Select(&rows, `SELECT message_id, calls, content FROM mock_deliveries`); err != nil {
		t.Fatal(err)
	}
	out := map[int64]ledgerRow{}
	for _, r := range rows {
		out[r.Key] = r
	}
	return out
}

func seen(key int64) ledgerCall { return ledgerCall{key: key} }
func deliver(key int64, content string) ledgerCall {
	return ledgerCall{key: key, deliver: true, content: content}
}

// TestPostgresLedgerBatch writes one batch with one statement and checks
// each call's answer and the rows left against the calls made one by one.
func TestPostgresLedgerBatch(t *testing.T) {
	db := pgtest.New(t)
	for _, tc := range []struct {
		name    string
		before  []int64 // delivered before, with content "old" and calls 1
		calls   []ledgerCall
		want    []bool
		wantRow map[int64]ledgerRow // rows of the keys called, afterwards; absent: no row
	}{
		{name: "seen unknown", calls: []ledgerCall{seen(1)}, want: []bool{false}},
		{name: "seen unknown twice", calls: []ledgerCall{seen(1), seen(1)}, want: []bool{false, false}},
		{name: "seen delivered", before: []int64{1}, calls: []ledgerCall{seen(1)}, want: []bool{true},
			wantRow: map[int64]ledgerRow{1: {1, 2, "old"}}},
		{name: "seen delivered twice", before: []int64{1}, calls: []ledgerCall{seen(1), seen(1)},
			want: []bool{true, true}, wantRow: map[int64]ledgerRow{1: {1, 3, "old"}}},
		{name: "deliver new", calls: []ledgerCall{deliver(1, "a")}, want: []bool{true},
			wantRow: map[int64]ledgerRow{1: {1, 1, "a"}}},
		{name: "deliver delivered", before: []int64{1}, calls: []ledgerCall{deliver(1, "a")}, want: []bool{false},
			wantRow: map[int64]ledgerRow{1: {1, 2, "old"}}},
		{name: "same key delivered twice", calls: []ledgerCall{deliver(1, "a"), deliver(1, "b")},
			want: []bool{true, false}, wantRow: map[int64]ledgerRow{1: {1, 2, "a"}}},
		{name: "seen then deliver", calls: []ledgerCall{seen(1), deliver(1, "a")},
			want: []bool{false, true}, wantRow: map[int64]ledgerRow{1: {1, 1, "a"}}},
		{name: "deliver then seen", calls: []ledgerCall{deliver(1, "a"), seen(1)},
			want: []bool{true, true}, wantRow: map[int64]ledgerRow{1: {1, 2, "a"}}},
		{name: "seen deliver seen deliver", calls: []ledgerCall{seen(1), seen(1), deliver(1, "a"), seen(1), deliver(1, "b")},
			want: []bool{false, false, true, true, false}, wantRow: map[int64]ledgerRow{1: {1, 3, "a"}}},
		{name: "seen then deliver, delivered before", before: []int64{1},
			calls: []ledgerCall{seen(1), deliver(1, "a"), deliver(1, "b")},
			want:  []bool{true, false, false}, wantRow: map[int64]ledgerRow{1: {1, 4, "old"}}},
		{name: "keys mixed", before: []int64{2, 4},
			calls: []ledgerCall{deliver(3, "c"), seen(1), seen(2), deliver(4, "d"), seen(3), deliver(1, "a"), seen(5), deliver(2, "b")},
			want:  []bool{true, false, true, false, true, true, false, false},
			wantRow: map[int64]ledgerRow{1: {1, 1, "a"}, 2: {2, 3, "old"}, 3: {3, 2, "c"},
				4: {4, 2, "old"}}},
		{name: "content quoted", calls: []ledgerCall{deliver(1, `Hi "Bob", {x,y} \ NULL é`), deliver(2, "")},
			want: []bool{true, true}, wantRow: map[int64]ledgerRow{1: {1, 1, `Hi "Bob", {x,y} \ NULL é`}, 2: {2, 1, ""}}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if _, err := db.Exec(`TRUNCATE mock_deliveries`); err != nil {
				t.Fatal(err)
			}
			oracle := NewMemoryLedger()
			for _, k := range tc.before {
				if _, err := db.Exec(`INSERT INTO mock_deliveries (message_id, content) VALUES ($1, 'old')`, k); err != nil {
					t.Fatal(err)
				}
				_, _ = oracle.Deliver(context.Background(), k, "old")
			}
			l := NewPostgresLedger(db.DB)
			got, err := l.write(tc.calls)
			if err != nil {
				t.Fatal(err)
			}
			if fmt.Sprint(got) != fmt.Sprint(tc.want) {
				t.Errorf("answers %v, want %v", got, tc.want)
			}
			// The in-memory ledger, called one by one, must agree.
			for i, c := range tc.calls {
				var o bool
				if c.deliver {
					o, _ = oracle.Deliver(context.Background(), c.key, c.content)
				} else {
					o, _ = oracle.Seen(context.Background(), c.key)
				}
				if o != got[i] {
					t.Errorf("call %d (%+v): %v, memory ledger says %v", i, c, got[i], o)
				}
			}
			rows := ledgerRows(t, db.DB)
			for _, c := range tc.calls {
				row, ok := rows[c.key]
				want, wantOK := tc.wantRow[c.key]
				if ok != wantOK || row != want {
					t.Errorf("key %d: row %+v (present %v), want %+v (present %v)", c.key, row, ok, want, wantOK)
				}
				if ok && row.Calls != oracle.Calls(c.key) {
					t.Errorf("key %d: %d calls, memory ledger counts %d", c.key, row.Calls, oracle.Calls(c.key))
				}
			}
			if n := l.statements.Load(); n != 1 {
				t.Errorf("%d statements, want 1", n)
			}
		})
	}
}

// TestPostgresLedgerConcurrent has many callers at once, each on a key of
// its own and all on one shared key, through the batching, with batches
// small enough that a run needs many.
func TestPostgresLedgerConcurrent(t *testing.T) {
	db := pgtest.New(t)
	for _, tc := range []struct {
		name     string
		maxBatch int
		callers  int
	}{
		{"default batch", ledgerMaxBatch, 300},
		{"small batches", 7, 200},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if _, err := db.Exec(`TRUNCATE mock_deliveries`); err != nil {
				t.Fatal(err)
			}
			l := NewPostgresLedger(db.DB)
			l.maxBatch = tc.maxBatch
			ctx := context.Background()
			const shared = int64(1 << 40)
			var (
				wg                      sync.WaitGroup
				mu                      sync.Mutex
				sharedFresh, sharedSeen int
				errsSeen                []error
			)
			for i := range tc.callers {
				wg.Go(func() {
					key := int64(i + 1)
					fail := func(err error) {
						mu.Lock()
						errsSeen = append(errsSeen, err)
						mu.Unlock()
					}
					if done, err := l.Seen(ctx, key); err != nil || done {
						fail(fmt.Errorf("seen %d: %v, %v", key, done, err))
					}
					if fresh, err := l.Deliver(ctx, key, fmt.Sprint("to ", key)); err != nil || !fresh {
						fail(fmt.Errorf("deliver %d: %v, %v", key, fresh, err))
					}
					if done, err := l.Seen(ctx, key); err != nil || !done {
						fail(fmt.Errorf("seen %d after delivery: %v, %v", key, done, err))
					}
					done, err := l.Seen(ctx, shared)
					if err != nil {
						fail(err)
					}
					fresh, err := l.Deliver(ctx, shared, "shared")
					if err != nil {
						fail(err)
					}
					mu.Lock()
					if done {
						sharedSeen++
					}
					if fresh {
						sharedFresh++
					}
					mu.Unlock()
				})
			}
			wg.Wait()
			for _, err := range errsSeen {
				t.Error(err)
			}
			if sharedFresh != 1 {
				t.Errorf("shared key delivered %d times, want once", sharedFresh)
			}
			rows := ledgerRows(t, db.DB)
			if len(rows) != tc.callers+1 {
				t.Errorf("%d rows, want %d", len(rows), tc.callers+1)
			}
			for i := range tc.callers {
				key := int64(i + 1)
				if r := rows[key]; r.Calls != 2 || r.Content != fmt.Sprint("to ", key) {
					t.Errorf("key %d: %+v, want 2 calls", key, r)
				}
			}
			// Every Deliver counts, and every Seen that found it delivered.
			if r := rows[shared]; r.Calls != tc.callers+sharedSeen {
				t.Errorf("shared key: %d calls, want %d", r.Calls, tc.callers+sharedSeen)
			}
			calls := int64(tc.callers * 5)
			n := l.statements.Load()
			t.Logf("%d calls in %d statements", calls, n)
			if n >= calls/2 {
				t.Errorf("%d calls took %d statements: not batched", calls, n)
			}
			if min := calls / int64(tc.maxBatch); n < min {
				t.Errorf("%d statements for %d calls: batches larger than %d", n, calls, tc.maxBatch)
			}
		})
	}
}

// TestPostgresLedgerThroughMock sends the same message twice: the second
// send is answered from the ledger, whatever the weather.
func TestPostgresLedgerThroughMock(t *testing.T) {
	db := pgtest.New(t)
	l := NewPostgresLedger(db.DB)
	ctx := context.Background()
	m := New(Options{SuccessRate: 1, Seed: 1}, l)
	msg := provider.Message{ID: 42, Body: "hello"}
	if _, err := m.Send(ctx, msg); err != nil {
		t.Fatal(err)
	}
	m.opts.SuccessRate = 0
	acc, err := m.Send(ctx, msg)
	if err != nil || acc.MessageID != "mock-42" {
		t.Fatalf("resend: %+v, %v", acc, err)
	}
	if r := ledgerRows(t, db.DB)[42]; r.Calls != 2 || r.Content != "hello" {
		t.Errorf("row %+v, want 2 calls of hello", r)
	}
}

// TestPostgresLedgerErrors: an unreachable database is infrastructure
// (UNAVAILABLE), and a caller whose context ends stops waiting.
func TestPostgresLedgerErrors(t *testing.T) {
	t.Run("unreachable", func(t *testing.T) {
		db, err := sqlx.Open("postgres", "postgres://postgres@127.0.0.1:1/none?sslmode=disable&connect_timeout=2")
		if err != nil {
			t.Fatal(err)
		}
		defer db.Close()
		l := NewPostgresLedger(db)
		for name, call := range map[string]func() (bool, error){
			"seen":    func() (bool, error) { return l.Seen(context.Background(), 1) },
			"deliver": func() (bool, error) { return l.Deliver(context.Background(), 1, "x") },
		} {
			if _, err := call(); errs.KindOf(err) != errs.KindUnavailable {
				t.Errorf("%s: %v (kind %v), want unavailable", name, err, errs.KindOf(err))
			}
		}
		m := New(Options{SuccessRate: 1}, l)
		if _, err := m.Send(context.Background(), provider.Message{ID: 1}); errs.KindOf(err) != errs.KindUnavailable {
			t.Errorf("send: %v, want unavailable", err)
		}
	})
	t.Run("cancelled", func(t *testing.T) {
		db := pgtest.New(t)
		l := NewPostgresLedger(db.DB)
		ctx, cancel := context.WithCancel(context.Background())
		cancel()
		if _, err := l.Deliver(ctx, 1, "x"); !errors.Is(err, context.Canceled) {
			t.Errorf("deliver with a cancelled context: %v", err)
		}
		// A caller leaving while its batch waits for a write slot.
		for range cap(l.slots) {
			l.slots <- struct{}{}
		}
		defer func() {
			for range cap(l.slots) {
				<-l.slots
			}
		}()
		ctx, cancel = context.WithTimeout(context.Background(), 20*time.Millisecond)
		defer cancel()
		start := time.Now()
		if _, err := l.Seen(ctx, 2); !errors.Is(err, context.DeadlineExceeded) {
			t.Errorf("seen: %v, want deadline exceeded", err)
		}
		if d := time.Since(start); d > 500*time.Millisecond {
			t.Errorf("seen returned after %v", d)
		}
	})
}
