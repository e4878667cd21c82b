package campaign

import (
	"context"
	"fmt"
	"sync"
	"testing"

	"github.com/jmoiron/sqlx"

	"github.com/campaignd/dispatch/platform/postgres/pgtest"
)

// statsFixture makes n customers and two campaigns in db and returns the
// campaigns' ids.
func statsFixture(t *testing.T, db *sqlx.DB, n int) (a, b int64) {
	t.Helper()
	ctx := context.Background()
	if _, err := db.ExecContext(ctx, `
INSERT INTO customers (phone) SELECT '+1415555' || lpad(g::text, 4, '0') FROM generate_series(1, $1) g`, n); err != nil {
		t.Fatal(err)
	}
	if err := db.GetContext(ctx, &a, `INSERT INTO campaigns (name, channel, base_template) VALUES ('a', 'sms', 'x') RETURNING id`); err != nil {
		t.Fatal(err)
	}
	if err := db.GetContext(ctx, &b, `INSERT INTO campaigns (name, channel, base_template) VALUES ('b', 'sms', 'x') RETURNING id`); err != nil {
		t.Fatal(err)
	}
	return a, b
}

// recount is the truth the counters must equal.
func recount(t *testing.T, db *sqlx.DB, id int64) Stats {
	t.Helper()
	var s Stats
	if err := db.QueryRowxContext(context.Background(), recountSQL, id).Scan(
		&s.Pending, &s.Sending, &s.Sent, &s.Delivered, &s.Undelivered, &s.Failed, &s.Cancelled); err != nil {
		t.Fatal(err)
	}
	s.sum()
	return s
}

// TestStatsCountersFollowEveryStatement changes messages with every kind of
// statement the features use (multi-row inserts across campaigns, updates
// that change status, updates that do not, deletes, test sends) and checks
// after each that the counters equal a recount.
func TestStatsCountersFollowEveryStatement(t *testing.T) {
	t.Parallel()
	db := pgtest.New(t)
	repo := NewRepo(db.DB)
	ctx := context.Background()
	a, b := statsFixture(t, db.DB, 300)

	steps := []struct {
		name string
		sql  string
	}{
		{"insert into two campaigns in one statement", fmt.Sprintf(`
INSERT INTO outbound_messages (campaign_id, customer_id)
SELECT CASE WHEN c.id %% 3 = 0 THEN %d ELSE %d END, c.id FROM customers c`, b, a)},
		{"test sends are not counted", fmt.Sprintf(`
INSERT INTO outbound_messages (campaign_id, customer_id, phone, test) VALUES (%d, NULL, '+14155550000', true), (%d, 1, NULL, true)`, a, a)},
		{"claim", fmt.Sprintf(`UPDATE outbound_messages SET status = 'sending' WHERE campaign_id = %d AND id %% 2 = 0`, a)},
		{"record outcomes", `UPDATE outbound_messages SET status = CASE WHEN id % 4 = 0 THEN 'sent' ELSE 'failed' END WHERE status = 'sending'`},
		{"receipts", `UPDATE outbound_messages SET status = CASE WHEN id % 8 = 0 THEN 'delivered' ELSE 'undelivered' END WHERE status = 'sent' AND id % 3 <> 0`},
		{"a change that is not a status", `UPDATE outbound_messages SET updated_at = now(), last_error = 'x'`},
		{"retry failed", fmt.Sprintf(`UPDATE outbound_messages SET status = 'pending' WHERE campaign_id = %d AND status = 'failed'`, a)},
		{"cancel", `UPDATE outbound_messages SET status = 'cancelled' WHERE status = 'pending'`},
		{"test sends finish", `UPDATE outbound_messages SET status = 'sent' WHERE test`},
		{"delete", fmt.Sprintf(`DELETE FROM outbound_messages WHERE campaign_id = %d AND id %% 5 = 0`, b)},
		{"erasure keeps the messages", `DELETE FROM customers WHERE id <= 10`},
	}
	for _, st := range steps {
		if _, err := db.ExecContext(ctx, st.sql); err != nil {
			t.Fatalf("%s: %v", st.name, err)
		}
		for _, id := range []int64{a, b} {
			kept, err := repo.Stats(ctx, id)
			if err != nil {
				t.Fatal(err)
			}
			if want := recount(t, db.DB, id); kept != want {
				t.Fatalf("after %q, campaign %d: counters %+v, messages %+v", st.name, id, kept, want)
			}
		}
	}
	if got, _ := repo.Stats(ctx, a); got.Total != 200 {
		t.Errorf("campaign a total = %d, want 200 (test sends not counted)", got.Total)
	}
}

// TestStatsCountersUnderConcurrency has many connections change the same
// campaign's messages at once, as the pool's recorders do: no deadlock, no
// lost update.
func TestStatsCountersUnderConcurrency(t *testing.T) {
	t.Parallel()
	db := pgtest.New(t)
	repo := NewRepo(db.DB)
	ctx := context.Background()
	a, b := statsFixture(t, db.DB, 2000)
	if _, err := db.ExecContext(ctx, `
INSERT INTO outbound_messages (campaign_id, customer_id) SELECT $1::bigint, id FROM customers
UNION ALL SELECT $2::bigint, id FROM customers`, a, b); err != nil {
		t.Fatal(err)
	}
	// Each worker claims and settles its own slice of both campaigns, in
	// batches that span both, in opposite campaign orders.
	const workers = 8
	var wg sync.WaitGroup
	errc := make(chan error, workers)
	for w := range workers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for batch := range 10 {
				lo := w*250 + batch*25
				for _, q := range []string{
					`UPDATE outbound_messages SET status = 'sending' WHERE customer_id > $1 AND customer_id <= $1 + 25`,
					`UPDATE outbound_messages SET status = CASE WHEN customer_id % 2 = 0 THEN 'sent' ELSE 'failed' END
					 WHERE customer_id > $1 AND customer_id <= $1 + 25`,
				} {
					if _, err := db.ExecContext(ctx, q, lo); err != nil {
						errc <- err
						return
					}
				}
			}
		}()
	}
	wg.Wait()
	close(errc)
	for err := range errc {
		t.Fatal(err)
	}
	for _, id := range []int64{a, b} {
		kept, err := repo.Stats(ctx, id)
		if err != nil {
			t.Fatal(err)
		}
		want := Stats{Total: 2000, Sent: 1000, Failed: 1000}
		if kept != want || recount(t, db.DB, id) != want {
			t.Errorf("campaign %d: counters %+v, recount %+v, want %+v", id, kept, recount(t, db.DB, id), want)
		}
	}
	var slots int
	if err := db.GetContext(ctx, &slots, `SELECT count(*) FROM campaign_stats WHERE campaign_id = $1`, a); err != nil {
		t.Fatal(err)
	}
	if slots < 1 || slots > 8 {
		t.Errorf("campaign a has %d counter rows, want 1 to 8", slots)
	}
}

// TestRebuildStats corrects counters that were changed behind the
// triggers' back, and leaves right ones alone.
func TestRebuildStats(t *testing.T) {
	t.Parallel()
	db := pgtest.New(t)
	repo := NewRepo(db.DB)
	ctx := context.Background()
	a, b := statsFixture(t, db.DB, 50)
	if _, err := db.ExecContext(ctx, `
INSERT INTO outbound_messages (campaign_id, customer_id, status)
SELECT $1, id, CASE WHEN id % 2 = 0 THEN 'sent' ELSE 'pending' END FROM customers`, a); err != nil {
		t.Fatal(err)
	}
	// Drift: counters edited directly, as a bad restore would leave them.
	if _, err := db.ExecContext(ctx, `UPDATE campaign_stats SET sent = sent + 7, pending = 0 WHERE campaign_id = $1`, a); err != nil {
		t.Fatal(err)
	}
	r, err := repo.RebuildStats(ctx, a)
	if err != nil {
		t.Fatal(err)
	}
	want := Stats{Total: 50, Pending: 25, Sent: 25}
	if !r.Drifted() || r.Counted != want || r.Kept.Sent != 32 {
		t.Fatalf("repair = %+v, want drifted with counted %+v", r, want)
	}
	if got, _ := repo.Stats(ctx, a); got != want {
		t.Errorf("after rebuild: %+v, want %+v", got, want)
	}
	// Later changes still add up on the rebuilt counters.
	if _, err := db.ExecContext(ctx, `UPDATE outbound_messages SET status = 'failed' WHERE status = 'pending'`); err != nil {
		t.Fatal(err)
	}
	if got, want := mustStats(t, repo, a), recount(t, db.DB, a); got != want {
		t.Errorf("after a change: %+v, want %+v", got, want)
	}
	for _, id := range []int64{a, b} {
		if r, err := repo.RebuildStats(ctx, id); err != nil || r.Drifted() {
			t.Errorf("second rebuild of %d: %+v, %v; want no drift", id, r, err)
		}
	}
}

func mustStats(t *testing.T, r *Repo, id int64) Stats {
	t.Helper()
	s, err := r.Stats(context.Background(), id)
	if err != nil {
		t.Fatal(err)
	}
	return s
}
