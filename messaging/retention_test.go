package messaging

import (
	"context"
	"encoding/json"
	"errors"
	"io"
	"log/slog"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"github.com/jmoiron/sqlx"
	"github.com/lib/pq"

	"github.com/campaignd/dispatch/platform/postgres/pgtest"
)

func TestParseRetention(t *testing.T) {
	for _, tc := range []struct {
		in   string
		want time.Duration
		bad  bool
	}{
		{in: "", want: 0},
		{in: "0", want: 0},
		{in: "90d", want: 90 * 24 * time.Hour},
		{in: " 7d ", want: 7 * 24 * time.Hour},
		{in: "36h", want: 36 * time.Hour},
		{in: "d", bad: true},
		{in: "-1d", bad: true},
		{in: "1.5d", bad: true},
		{in: "90 days", bad: true},
		{in: "-5h", bad: true},
	} {
		t.Run(tc.in, func(t *testing.T) {
			got, err := ParseRetention(tc.in)
			if (err != nil) != tc.bad || got != tc.want {
				t.Fatalf("ParseRetention(%q) = %v, %v; want %v, error %v", tc.in, got, err, tc.want, tc.bad)
			}
		})
	}
}

// retentionEnv is a schema with campaigns 1-40 in three partitions made
// by the keeper as they were created: A = [1, 17) (the first, 16 wide),
// B = [17, 33) (16 campaigns created in the last 30 days when it was made,
// once campaign ids were half way through A) and C = [33, 65); each
// campaign has two messages, each message an attempt.
type retentionEnv struct {
	db *sqlx.DB
}

func newRetentionEnv(t *testing.T) *retentionEnv {
	t.Helper()
	db := pgtest.New(t)
	e := &retentionEnv{db: db.DB}
	keeper := NewRetention(e.db, 0, quietLog())
	e.exec(t, `INSERT INTO customers (phone) VALUES ('+14155550101'), ('+14155550102')`)
	for _, upTo := range []int{16, 32, 40} {
		if _, err := keeper.Step(context.Background()); err != nil {
			t.Fatal(err)
		}
		e.exec(t, `INSERT INTO campaigns (name, channel, status, base_template, finished_at)
SELECT 'c', 'sms', 'sent', 'Hi', now() - interval '100 days'
FROM generate_series(coalesce((SELECT max(id) FROM campaigns), 0) + 1, $1)`, upTo)
	}
	e.exec(t, `INSERT INTO outbound_messages (campaign_id, customer_id, status)
SELECT k.id, u.id, 'sent' FROM campaigns k, customers u`)
	e.exec(t, `INSERT INTO message_attempts (campaign_id, message_id, attempt, started_at, duration_ms, outcome)
SELECT campaign_id, id, 1, now(), 5, 'sent' FROM outbound_messages`)
	if got, want := e.partitions(t), []Partition{{1, 17}, {17, 33}, {33, 65}}; !cmp.Equal(got, want) {
		t.Fatalf("partitions made by the keeper: %v, want %v", got, want)
	}
	if n := e.inDefault(t); n != 0 {
		t.Fatalf("%d messages in the DEFAULT partition, want none", n)
	}
	return e
}

func (e *retentionEnv) inDefault(t *testing.T) int {
	t.Helper()
	var n int
	if err := e.db.Get(&n, `SELECT count(*) FROM outbound_messages_default`); err != nil {
		t.Fatal(err)
	}
	return n
}

func (e *retentionEnv) exec(t *testing.T, q string, args ...any) {
	t.Helper()
	if _, err := e.db.Exec(q, args...); err != nil {
		t.Fatalf("%s: %v", q, err)
	}
}

func (e *retentionEnv) partitions(t *testing.T) []Partition {
	t.Helper()
	var ps []Partition
	if err := e.db.Select(&ps, `SELECT campaign_lo, campaign_hi FROM message_partitions ORDER BY campaign_lo`); err != nil {
		t.Fatal(err)
	}
	return ps
}

// counts returns, per campaign id range [lo, hi), the messages and
// attempts left.
func (e *retentionEnv) counts(t *testing.T, lo, hi int64) (messages, attempts int) {
	t.Helper()
	if err := e.db.QueryRow(`SELECT (SELECT count(*) FROM outbound_messages WHERE campaign_id >= $1 AND campaign_id < $2),
       (SELECT count(*) FROM message_attempts WHERE campaign_id >= $1 AND campaign_id < $2)`, lo, hi).Scan(&messages, &attempts); err != nil {
		t.Fatal(err)
	}
	return messages, attempts
}

func quietLog() *slog.Logger { return slog.New(slog.NewTextHandler(io.Discard, nil)) }

func TestRetentionDropsOnlyOldFinishedPartitions(t *testing.T) {
	t.Parallel()
	e := newRetentionEnv(t)
	ctx := context.Background()
	r := NewRetention(e.db, 30*24*time.Hour, quietLog())

	// B holds a paused campaign: only A goes. C is the newest partition
	// (later campaigns may still fall in it): it stays although every
	// campaign in it finished long ago.
	e.exec(t, `UPDATE campaigns SET status = 'paused', finished_at = NULL WHERE id = 20`)
	dropped, err := r.Step(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if want := []Partition{{1, 17}}; !cmp.Equal(dropped, want) {
		t.Fatalf("dropped %v, want %v", dropped, want)
	}
	if m, a := e.counts(t, 1, 17); m != 0 || a != 0 {
		t.Fatalf("campaigns 1-16 kept %d messages and %d attempts, want none", m, a)
	}
	if m, a := e.counts(t, 17, 41); m != 48 || a != 48 {
		t.Fatalf("campaigns 17-40 have %d messages and %d attempts, want 48 and 48", m, a)
	}
	var tables int
	if err := e.db.Get(&tables, `SELECT count(*) FROM pg_class
WHERE relname IN ('outbound_messages_c1', 'message_attempts_c1') AND relnamespace = current_schema()::regnamespace`); err != nil {
		t.Fatal(err)
	}
	if tables != 0 {
		t.Fatalf("%d of the dropped partition's tables remain", tables)
	}
	// The campaigns keep their stats: the counters are not the messages.
	var sent int
	if err := e.db.Get(&sent, `SELECT coalesce(sum(sent), 0) FROM campaign_stats WHERE campaign_id BETWEEN 1 AND 16`); err != nil {
		t.Fatal(err)
	}
	if sent != 32 {
		t.Errorf("campaigns 1-16 count %d sent messages after their partition went, want 32 (2 each)", sent)
	}

	// Finished, but within the retention: B stays.
	e.exec(t, `UPDATE campaigns SET status = 'cancelled', finished_at = now() - interval '10 days' WHERE id = 20`)
	if dropped, err := r.Step(ctx); err != nil || len(dropped) != 0 {
		t.Fatalf("Step = %v, %v; want nothing dropped", dropped, err)
	}
	// A campaign with no finished_at counts from its last update.
	e.exec(t, `UPDATE campaigns SET finished_at = NULL, updated_at = now() - interval '40 days' WHERE id = 20`)
	dropped, err = r.Step(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if want := []Partition{{17, 33}}; !cmp.Equal(dropped, want) {
		t.Fatalf("dropped %v, want %v", dropped, want)
	}
	if got, want := e.partitions(t), []Partition{{33, 65}}; !cmp.Equal(got, want) {
		t.Fatalf("partitions left %v, want %v", got, want)
	}
	if m, a := e.counts(t, 33, 41); m != 16 || a != 16 {
		t.Fatalf("campaigns 33-40 have %d messages and %d attempts, want 16 and 16", m, a)
	}

	// The campaigns themselves stay; a message for one whose partition
	// went (a test send) lands in the DEFAULT partition.
	var n int
	if err := e.db.Get(&n, `SELECT count(*) FROM campaigns`); err != nil || n != 40 {
		t.Fatalf("campaigns left: %d, %v; want 40", n, err)
	}
	e.exec(t, `INSERT INTO outbound_messages (campaign_id, test, phone) VALUES (3, true, '+14155550199')`)
	if n := e.inDefault(t); n != 1 {
		t.Fatalf("%d messages in the DEFAULT partition, want the test message", n)
	}
}

func TestRetentionZeroKeepsEverythingAndMakesTheNextPartition(t *testing.T) {
	t.Parallel()
	e := newRetentionEnv(t)
	ctx := context.Background()
	// Campaign 89 is created and sent to before the keeper runs: no range
	// covers it, so its message goes to the DEFAULT partition, and the
	// next range starts above it.
	e.exec(t, `SELECT setval('campaigns_id_seq', 88)`)
	e.exec(t, `INSERT INTO campaigns (name, channel, status, base_template) VALUES ('c', 'sms', 'sending', 'Hi')`)
	e.exec(t, `INSERT INTO outbound_messages (campaign_id, customer_id) VALUES (89, 1)`)
	dropped, err := NewRetention(e.db, 0, quietLog()).Step(ctx)
	if err != nil || len(dropped) != 0 {
		t.Fatalf("Step = %v, %v; want nothing dropped", dropped, err)
	}
	if got, want := e.partitions(t), []Partition{{1, 17}, {17, 33}, {33, 65}, {90, 131}}; !cmp.Equal(got, want) {
		t.Fatalf("partitions %v, want %v (41 campaigns in the last 30 days)", got, want)
	}
	e.exec(t, `INSERT INTO campaigns (name, channel, status, base_template) VALUES ('c', 'sms', 'sending', 'Hi')`)
	e.exec(t, `INSERT INTO outbound_messages (campaign_id, customer_id) VALUES (90, 1)`)
	var where string
	if err := e.db.Get(&where, `SELECT tableoid::regclass::text FROM outbound_messages WHERE campaign_id = 90`); err != nil {
		t.Fatal(err)
	}
	if where != "outbound_messages_c90" {
		t.Fatalf("campaign 90's message is in %s, want outbound_messages_c90", where)
	}
	// The DEFAULT partition keeps the guarantee too.
	_, err = e.db.Exec(`INSERT INTO outbound_messages (campaign_id, customer_id) VALUES (89, 1)`)
	if pe, ok := errors.AsType[*pq.Error](err); !ok || pe.Code != "23505" {
		t.Fatalf("second message for (campaign 89, customer 1): %v, want unique_violation", err)
	}
	if m, a := e.counts(t, 1, 41); m != 80 || a != 80 {
		t.Fatalf("%d messages and %d attempts, want 80 and 80", m, a)
	}
}

func TestPartitionedMessagesKeepOneMessagePerCustomer(t *testing.T) {
	t.Parallel()
	e := newRetentionEnv(t)
	// Campaign 40, customer 1 has a message already (in partition C).
	_, err := e.db.Exec(`INSERT INTO outbound_messages (campaign_id, customer_id) VALUES (40, 1)`)
	if pe, ok := errors.AsType[*pq.Error](err); !ok || pe.Code != "23505" {
		t.Fatalf("second message for (campaign 40, customer 1): %v, want unique_violation", err)
	}
	res, err := e.db.Exec(`INSERT INTO outbound_messages (campaign_id, customer_id) VALUES (40, 1), (40, 2)
ON CONFLICT (campaign_id, customer_id) WHERE NOT test DO NOTHING`)
	if err != nil {
		t.Fatal(err)
	}
	if n, _ := res.RowsAffected(); n != 0 {
		t.Fatalf("ON CONFLICT DO NOTHING inserted %d rows, want 0", n)
	}
	// Test sends may repeat a customer.
	e.exec(t, `INSERT INTO outbound_messages (campaign_id, customer_id, test) VALUES (40, 1, true), (40, 1, true)`)
}

// withoutIDKeySQL lists the partitions of outbound_messages whose primary
// key is not id alone.
const withoutIDKeySQL = `
SELECT c.relname::text
FROM pg_inherits i
JOIN pg_class c ON c.oid = i.inhrelid
WHERE i.inhparent = 'outbound_messages'::regclass
  AND NOT EXISTS (
      SELECT 1 FROM pg_index x
      JOIN pg_attribute a ON a.attrelid = x.indrelid AND a.attnum = x.indkey[0]
      WHERE x.indrelid = c.oid AND x.indisprimary AND x.indnkeyatts = 1 AND a.attname = 'id')
ORDER BY 1`

func TestEveryMessagePartitionHasItsPrimaryKeyOnID(t *testing.T) {
	t.Parallel()
	// The migration's range, the keeper's two, and DEFAULT.
	e := newRetentionEnv(t)
	var missing []string
	if err := e.db.Select(&missing, withoutIDKeySQL); err != nil {
		t.Fatal(err)
	}
	if len(missing) != 0 {
		t.Fatalf("partitions whose primary key is not id alone: %v", missing)
	}
}

// The attempts' foreign key is declared from each attempts partition to
// its messages partition (migration 00015: checked as on a plain table); it
// must still refuse an attempt without its message and go with a deleted
// message, in a range and in DEFAULT.
func TestAttemptsNeedTheirMessageInEveryPartition(t *testing.T) {
	t.Parallel()
	e := newRetentionEnv(t)
	e.exec(t, `INSERT INTO campaigns (id, name, channel, status, base_template) VALUES (200, 'c', 'sms', 'sending', 'Hi')`)
	e.exec(t, `INSERT INTO outbound_messages (campaign_id, customer_id) VALUES (200, 1)`)
	if n := e.inDefault(t); n != 1 {
		t.Fatalf("%d messages in the DEFAULT partition, want campaign 200's", n)
	}
	for _, campaign := range []int64{3, 200} {
		_, err := e.db.Exec(`INSERT INTO message_attempts (campaign_id, message_id, attempt, started_at, duration_ms, outcome)
VALUES ($1, 999999, 1, now(), 5, 'sent')`, campaign)
		if pe, ok := errors.AsType[*pq.Error](err); !ok || pe.Code != "23503" {
			t.Fatalf("campaign %d: attempt of a message that does not exist: %v, want foreign_key_violation", campaign, err)
		}
		var id int64
		if err := e.db.Get(&id, `SELECT min(id) FROM outbound_messages WHERE campaign_id = $1`, campaign); err != nil {
			t.Fatal(err)
		}
		e.exec(t, `INSERT INTO message_attempts (campaign_id, message_id, attempt, started_at, duration_ms, outcome)
VALUES ($1, $2, 2, now(), 5, 'sent')`, campaign, id)
		e.exec(t, `DELETE FROM outbound_messages WHERE id = $1`, id)
		var left int
		if err := e.db.Get(&left, `SELECT count(*) FROM message_attempts WHERE message_id = $1`, id); err != nil || left != 0 {
			t.Fatalf("campaign %d: %d attempts left of deleted message %d (%v), want none", campaign, left, id, err)
		}
	}
}

// TestMessageLookupsByIDUseTheIDIndexWithoutStatistics guards what made
// the partitioned table 5 to 7 times slower than the plain one at 1,000
// workers: on a partition without column statistics (a new one, until
// ANALYZE), the planner took a lookup by message id alone for 1/200 of the
// partition's rows, since no index said an id is one row (the partitioned
// table's key was (id, campaign_id)), and the recorder's lookups each read
// the partition's whole index of active messages, the claim's the whole
// partition. The statements have the shapes of GET /messages/{id}, of the
// recorder (a CTE of unnest, joined on id, status = 'sending') and of the
// claim (id = ANY, then its update joined on id), and are planned as the
// workers' prepared statements are once PostgreSQL settles on a generic
// plan: each must read the partition only through its primary key on id,
// and a single id must be planned as one row.
func TestMessageLookupsByIDUseTheIDIndexWithoutStatistics(t *testing.T) {
	t.Parallel()
	db := pgtest.New(t).DB
	const n = 20_000
	for _, q := range []string{
		`INSERT INTO campaigns (name, channel, status, base_template) VALUES ('c', 'sms', 'sending', 'Hi')`,
		`INSERT INTO customers (phone) SELECT '+1415' || lpad(g::text, 7, '0') FROM generate_series(1, ` + strconv.Itoa(n) + `) g`,
		`INSERT INTO outbound_messages (campaign_id, customer_id, status) SELECT 1, id, 'sending' FROM customers`,
	} {
		if _, err := db.Exec(q); err != nil {
			t.Fatalf("%s: %v", q, err)
		}
	}
	var part string
	if err := db.Get(&part, `SELECT tableoid::regclass::text FROM outbound_messages LIMIT 1`); err != nil {
		t.Fatal(err)
	}
	var analyzed int
	if err := db.Get(&analyzed, `SELECT count(*) FROM pg_stats WHERE schemaname = current_schema() AND tablename = $1`, part); err != nil || analyzed != 0 {
		t.Fatalf("%s has statistics for %d columns (%v); the test needs a partition without them", part, analyzed, err)
	}
	for _, tc := range []struct {
		name   string
		query  string // prepared with these parameters
		args   string // EXECUTE's
		oneRow bool   // the partition's scan is planned as one row
	}{
		{"get", `(bigint) AS SELECT m.id FROM outbound_messages m WHERE m.id = $1`, `(5000)`, true},
		{"record", `(bigint[], text[]) AS
WITH v AS (SELECT * FROM unnest($1, $2) AS v(id, status))
UPDATE outbound_messages m SET status = v.status, updated_at = now()
FROM v
WHERE m.id = v.id AND m.status = 'sending'`, `('{5000,5001,5002}', '{sent,sent,sent}')`, false},
		{"claim", `(bigint[]) AS
WITH cand AS (SELECT m.id FROM outbound_messages m WHERE m.id = ANY($1) AND NOT m.test)
UPDATE outbound_messages m SET updated_at = now()
FROM cand c
WHERE m.id = c.id`, `('{5000,5001,5002}')`, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			out := genericPlan(t, db, tc.query, tc.args)
			var plan []struct{ Plan planNode }
			if err := json.Unmarshal(out, &plan); err != nil || len(plan) != 1 {
				t.Fatalf("%s: plan %s: %v", tc.name, out, err)
			}
			var used []string
			rows := -1.0
			plan[0].Plan.walk(func(p planNode) {
				if p.Relation == part {
					rows = p.Rows
					if p.Type != "Index Scan" && p.Type != "Index Only Scan" && p.Type != "Bitmap Heap Scan" {
						used = append(used, p.Type)
					}
				}
				if strings.HasPrefix(p.Index, part+"_") {
					used = append(used, p.Index)
				}
			})
			if len(used) == 0 {
				t.Fatalf("%s does not read %s; plan:\n%s", tc.name, part, out)
			}
			for _, u := range used {
				if u != part+"_pkey" {
					t.Fatalf("%s reads %s through %v, want only its primary key on id; plan:\n%s", tc.name, part, used, out)
				}
			}
			if tc.oneRow && rows != 1 {
				t.Fatalf("%s: %s planned as %v rows, want 1; plan:\n%s", tc.name, part, rows, out)
			}
		})
	}
}

// genericPlan prepares "PREPARE name" + query on one connection and returns
// EXPLAIN (FORMAT JSON) of its EXECUTE with args, planned generically, as a
// prepared statement is once PostgreSQL stops planning it for each run's
// values (PostgreSQL 15 has no EXPLAIN (GENERIC_PLAN)). Nothing is
// executed.
func genericPlan(t *testing.T, db *sqlx.DB, query, args string) []byte {
	t.Helper()
	ctx := context.Background()
	conn, err := db.Connx(ctx)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	var out []byte
	for _, q := range []string{`SET plan_cache_mode = force_generic_plan`, `PREPARE generic_plan_probe ` + query} {
		if _, err := conn.ExecContext(ctx, q); err != nil {
			t.Fatalf("%s: %v", q, err)
		}
	}
	err = conn.GetContext(ctx, &out, `EXPLAIN (FORMAT JSON) EXECUTE generic_plan_probe `+args)
	for _, q := range []string{`DEALLOCATE generic_plan_probe`, `RESET plan_cache_mode`} {
		if _, err := conn.ExecContext(ctx, q); err != nil {
			t.Fatalf("%s: %v", q, err)
		}
	}
	if err != nil {
		t.Fatalf("explain %s: %v", query, err)
	}
	return out
}

// planNode is a node of EXPLAIN (FORMAT JSON)'s plan.
type planNode struct {
	Type     string     `json:"Node Type"`
	Relation string     `json:"Relation Name"`
	Index    string     `json:"Index Name"`
	Rows     float64    `json:"Plan Rows"`
	Plans    []planNode `json:"Plans"`
}

func (p planNode) walk(fn func(planNode)) {
	fn(p)
	for _, c := range p.Plans {
		c.walk(fn)
	}
}
