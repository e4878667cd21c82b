package migrations_test

import (
	"context"
	"errors"
	"testing"
	"time"

	"github.com/jmoiron/sqlx"
	"github.com/lib/pq"
	"github.com/pressly/goose/v3"

	"github.com/campaignd/dispatch/db/migrations"
	"github.com/campaignd/dispatch/platform/postgres"
	"github.com/campaignd/dispatch/platform/postgres/pgtest"
)

// partitionVersion is 00015_partitioned_messages.sql; the migrations before
// it are applied with UpTo(partitionVersion-1).
const partitionVersion = 15

// messagesDigest fingerprints every column of every message and attempt,
// so a move that loses, changes or reorders anything shows.
const messagesDigest = `
SELECT (SELECT md5(coalesce(string_agg(m::text, '|' ORDER BY m.id), '')) FROM (
            SELECT id, campaign_id, customer_id, status, rendered_content, last_error, retry_count, created_at,
                   updated_at, next_attempt_at, queued_at, provider, provider_message_id, segments, encoding, cost,
                   currency, sent_at, delivered_at, attempts, test, phone
            FROM outbound_messages) m)
    || (SELECT md5(coalesce(string_agg(a::text, '|' ORDER BY a.message_id, a.attempt), '')) FROM (
            SELECT message_id, attempt, started_at, duration_ms, outcome, error, provider_status
            FROM message_attempts) a)`

func TestPartitionMigrationMovesMessagesAndGoesBack(t *testing.T) {
	t.Parallel()
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	db, p := newMigrationDB(ctx, t)
	if _, err := p.UpTo(ctx, partitionVersion-1); err != nil {
		t.Fatal(err)
	}

	// Campaigns created in three months (two in March), messages with
	// every kind of row: sent with provider data, pending, a test send
	// repeated, one whose customer was erased, and attempts.
	mustExec(t, db, `INSERT INTO customers (phone) SELECT '+1415555' || lpad(g::text, 4, '0') FROM generate_series(1, 50) g`)
	mustExec(t, db, `INSERT INTO campaigns (name, channel, status, base_template, created_at, finished_at) VALUES
    ('jan', 'sms', 'sent', 'Hi', '2026-01-10Z', '2026-01-11Z'),
    ('mar1', 'sms', 'sent', 'Hi', '2026-03-02Z', '2026-03-03Z'),
    ('mar2', 'whatsapp', 'cancelled', 'Hi', '2026-03-20Z', '2026-03-21Z'),
    ('may', 'sms', 'sending', 'Hi', '2026-05-05Z', NULL)`)
	mustExec(t, db, `INSERT INTO outbound_messages (campaign_id, customer_id, status, rendered_content, provider,
    provider_message_id, segments, encoding, cost, currency, sent_at, attempts)
SELECT k.id, c.id, CASE WHEN k.status = 'sending' THEN 'pending' ELSE 'sent' END, 'Hi ' || c.id, 'mock',
       'pm-' || k.id || '-' || c.id, 1, 'GSM-7', 0.0075, 'USD', k.finished_at, 1
FROM campaigns k, customers c`)
	mustExec(t, db, `INSERT INTO outbound_messages (campaign_id, test, phone, status) VALUES
    (2, true, '+14155559999', 'sent'), (2, true, '+14155559999', 'failed')`)
	mustExec(t, db, `UPDATE outbound_messages SET customer_id = NULL WHERE campaign_id = 1 AND customer_id = 7`)
	mustExec(t, db, `INSERT INTO message_attempts (message_id, attempt, started_at, duration_ms, outcome, provider_status)
SELECT id, 1, coalesce(sent_at, now()), 80, 'sent', 'Success' FROM outbound_messages WHERE status = 'sent'`)
	before := digest(t, db)
	var lastID int64
	if err := db.Get(&lastID, `SELECT max(id) FROM outbound_messages`); err != nil {
		t.Fatal(err)
	}

	if _, err := p.UpTo(ctx, partitionVersion); err != nil {
		t.Fatal(err)
	}
	if got := relkind(t, db, "outbound_messages") + relkind(t, db, "message_attempts"); got != "pp" {
		t.Fatalf("after Up, relkinds %q, want partitioned tables", got)
	}
	if got := digest(t, db); got != before {
		t.Fatal("after Up, the messages or attempts differ from before")
	}
	var ranges []struct {
		Lo int64 `db:"campaign_lo"`
		Hi int64 `db:"campaign_hi"`
	}
	if err := db.Select(&ranges, `SELECT campaign_lo, campaign_hi FROM message_partitions ORDER BY 1`); err != nil {
		t.Fatal(err)
	}
	if len(ranges) != 4 || ranges[0].Lo != 1 || ranges[0].Hi != 2 || ranges[1].Hi != 4 || ranges[2].Hi != 5 || ranges[3].Hi != 21 {
		t.Fatalf("partitions %+v: want one per month of creation, [1,2) [2,4) [4,5), and [5,21) ahead", ranges)
	}
	// Every partition, DEFAULT too, has its primary key on id alone, so the
	// planner knows a message id is one row: without that, lookups by id on
	// a partition without statistics read whole indexes.
	var withoutIDKey []string
	if err := db.Select(&withoutIDKey, `
SELECT c.relname::text FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid
WHERE i.inhparent = 'outbound_messages'::regclass
  AND NOT EXISTS (SELECT 1 FROM pg_index x JOIN pg_attribute a ON a.attrelid = x.indrelid AND a.attnum = x.indkey[0]
                  WHERE x.indrelid = c.oid AND x.indisprimary AND x.indnkeyatts = 1 AND a.attname = 'id')`); err != nil {
		t.Fatal(err)
	}
	if len(withoutIDKey) != 0 {
		t.Fatalf("after Up, partitions whose primary key is not id alone: %v", withoutIDKey)
	}
	var inPartition int
	if err := db.Get(&inPartition, `SELECT count(*) FROM outbound_messages_c2`); err != nil || inPartition != 102 {
		t.Fatalf("March's partition holds %d messages (%v), want 102", inPartition, err)
	}

	// The guarantee holds, ids continue from the same sequence, and a new
	// campaign's messages have a place.
	_, err := db.Exec(`INSERT INTO outbound_messages (campaign_id, customer_id) VALUES (1, 1)`)
	if pe, ok := errors.AsType[*pq.Error](err); !ok || pe.Code != "23505" {
		t.Fatalf("second message for (campaign 1, customer 1): %v, want unique_violation", err)
	}
	mustExec(t, db, `INSERT INTO campaigns (name, channel, base_template) VALUES ('new', 'sms', 'Hi')`)
	var newID int64
	if err := db.Get(&newID, `INSERT INTO outbound_messages (campaign_id, customer_id) VALUES (5, 1) RETURNING id`); err != nil {
		t.Fatal(err)
	}
	if newID <= lastID {
		t.Fatalf("new message id %d, want more than %d (the sequence carries on)", newID, lastID)
	}
	mustExec(t, db, `INSERT INTO message_attempts (campaign_id, message_id, attempt, started_at, duration_ms, outcome)
VALUES (5, $1, 1, now(), 3, 'failed')`, newID)
	var where string
	if err := db.Get(&where, `SELECT tableoid::regclass::text FROM outbound_messages WHERE id = $1`, newID); err != nil {
		t.Fatal(err)
	}
	if where != "outbound_messages_c5" {
		t.Fatalf("campaign 5's message is in %s, want the range made ahead, outbound_messages_c5", where)
	}
	after := digest(t, db)

	if _, err := p.DownTo(ctx, partitionVersion-1); err != nil {
		t.Fatal(err)
	}
	if got := relkind(t, db, "outbound_messages") + relkind(t, db, "message_attempts"); got != "rr" {
		t.Fatalf("after Down, relkinds %q, want plain tables", got)
	}
	if got := digest(t, db); got != after {
		t.Fatal("after Down, the messages or attempts differ from before it")
	}
	_, err = db.Exec(`INSERT INTO outbound_messages (campaign_id, customer_id) VALUES (5, 1)`)
	if pe, ok := errors.AsType[*pq.Error](err); !ok || pe.Code != "23505" {
		t.Fatalf("after Down, second message for (campaign 5, customer 1): %v, want unique_violation", err)
	}
	var fk int
	if err := db.Get(&fk, `SELECT count(*) FROM pg_constraint WHERE conname = 'message_attempts_message_id_fkey'
AND conrelid = 'message_attempts'::regclass`); err != nil || fk != 1 {
		t.Fatalf("after Down, attempts' foreign key: %d (%v), want 1", fk, err)
	}
	// And up again, as a redeploy would.
	if _, err := p.UpTo(ctx, partitionVersion); err != nil {
		t.Fatal(err)
	}
	if got := digest(t, db); got != after {
		t.Fatal("after Up again, the messages or attempts differ")
	}
}

// newMigrationDB creates a database of the test's own, with no migration
// applied, and a goose provider over it.
func newMigrationDB(ctx context.Context, t *testing.T) (*sqlx.DB, *goose.Provider) {
	t.Helper()
	db, err := postgres.Open(ctx, pgtest.NewDatabase(t), postgres.Options{CreateDatabase: true, MaxOpenConns: 2})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { db.Close() })
	p, err := migrations.Provider(db.DB)
	if err != nil {
		t.Fatal(err)
	}
	return db, p
}

func mustExec(t *testing.T, db *sqlx.DB, q string, args ...any) {
	t.Helper()
	if _, err := db.Exec(q, args...); err != nil {
		t.Fatalf("%s: %v", q, err)
	}
}

func digest(t *testing.T, db *sqlx.DB) string {
	t.Helper()
	var d string
	if err := db.Get(&d, messagesDigest); err != nil {
		t.Fatal(err)
	}
	return d
}

func relkind(t *testing.T, db *sqlx.DB, table string) string {
	t.Helper()
	var k string
	if err := db.Get(&k, `SELECT relkind::text FROM pg_class WHERE oid = $1::regclass`, table); err != nil {
		t.Fatal(err)
	}
	return k
}
