-- +goose Up
-- outbound_messages (and message_attempts with it) becomes a table
-- partitioned by RANGE (campaign_id), so that the messages of old, finished
-- campaigns go by dropping whole partitions (MESSAGE_RETENTION) instead of
-- deleting rows, and no single index has to hold every message ever sent.
--
-- Why campaign_id and not created_at or id: a unique index of a partitioned
-- table must contain the partition key, and the service relies on the
-- partial unique (campaign_id, customer_id) WHERE NOT test (sends and the
-- materialiser's ON CONFLICT DO NOTHING). Keyed by campaign_id it stays one
-- ordinary index; keyed by time it would need a second table written on
-- every send; keyed by id it could not hold at all. The price: a lookup by
-- message id alone (the claim, the recorder, GET /messages/{id}) probes
-- every partition: the claim and record of 100 messages cost 0.98, 1.12,
-- 2.9 and 6.0 times the plain table's with 1, 4, 12 and 50 partitions, GET
-- /messages/{id} 1.3, 2.0, 3.1 and 9.3 times (messaging
-- BenchmarkPartitionProbe, 100,000 messages, analysed).
-- So partitions are few and wide: each covers a range of campaign ids about
-- a month of campaigns wide (the campaigns created in the last 30 days when
-- it is made, at least 16), and with a retention of 90 days about four are
-- live.
--
-- message_partitions lists the ranges: [campaign_lo, campaign_hi) of
-- campaign ids, the partitions outbound_messages_c<lo> and
-- message_attempts_c<lo>. The partition keeper (messaging.Retention, a loop
-- in every replica) makes the next range ahead, once campaign ids are half
-- way through the newest, and retention drops the old ones.
--
-- A DEFAULT partition takes the messages of campaigns no range covers
-- (created faster than the keeper made ranges, or sent a test message after
-- their range was dropped), so an insert never fails for want of a
-- partition. Ranges are never made in the request that needs them: creating
-- a partition locks campaigns and customers (their foreign keys) in SHARE
-- ROW EXCLUSIVE mode, so two campaign inserts each making one would
-- deadlock; the keeper does it alone, with a short lock_timeout. The keeper
-- starts each new range above any campaign id in the DEFAULT partition, so
-- it never has rows to move, and its check of the DEFAULT partition stays a
-- scan of a table that is normally empty.
CREATE TABLE message_partitions (
    campaign_lo bigint      PRIMARY KEY,
    campaign_hi bigint      NOT NULL,
    created_at  timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT message_partitions_range_check CHECK (campaign_lo < campaign_hi)
);

-- The data moves: the old tables are renamed, the partitioned ones created
-- with the same columns in the same order, filled, and the old dropped; the
-- id sequence is kept, so ids continue where they were.
ALTER TABLE message_attempts RENAME TO message_attempts_old;
ALTER TABLE outbound_messages RENAME TO outbound_messages_old;
ALTER SEQUENCE outbound_messages_id_seq OWNED BY NONE;

-- LIKE copies the columns in their order, their defaults (the id's
-- nextval) and CHECK constraints, whatever earlier migrations made them.
CREATE TABLE outbound_messages (LIKE outbound_messages_old INCLUDING DEFAULTS INCLUDING CONSTRAINTS)
    PARTITION BY RANGE (campaign_id);

-- campaign_id is here so that an attempt lives in the partition of its
-- message and goes with it.
CREATE TABLE message_attempts (
    campaign_id bigint NOT NULL,
    LIKE message_attempts_old INCLUDING DEFAULTS INCLUDING CONSTRAINTS
) PARTITION BY RANGE (campaign_id);

-- message_partition_make is the one place a range's partitions are made
-- (here, by the partition keeper, and by the partition bench): the
-- messages' partition with its primary key on id alone, the attempts'
-- partition with its foreign key to the messages' partition, and the
-- range's row in message_partitions. Why those two: see "Lookups by message
-- id, and the attempts' foreign key" below.
-- +goose StatementBegin
CREATE FUNCTION message_partition_make(lo bigint, hi bigint) RETURNS void LANGUAGE plpgsql AS $$
DECLARE
    m text := 'outbound_messages_c' || lo;
    a text := 'message_attempts_c' || lo;
BEGIN
    EXECUTE format('CREATE TABLE %I PARTITION OF outbound_messages FOR VALUES FROM (%s) TO (%s)', m, lo, hi);
    EXECUTE format('ALTER TABLE %I ADD CONSTRAINT %I PRIMARY KEY (id)', m, m || '_pkey');
    EXECUTE format('CREATE TABLE %I PARTITION OF message_attempts FOR VALUES FROM (%s) TO (%s)', a, lo, hi);
    EXECUTE format('ALTER TABLE %I ADD CONSTRAINT %I FOREIGN KEY (message_id) REFERENCES %I (id) ON DELETE CASCADE',
                   a, a || '_message_id_fkey', m);
    INSERT INTO message_partitions (campaign_lo, campaign_hi) VALUES (lo, hi);
END $$;
-- +goose StatementEnd

-- The existing campaigns get one range per calendar month in which they
-- were created, the first from campaign id 1, the last up to the newest;
-- then one range ahead.
-- +goose StatementBegin
DO $$
DECLARE
    r          record;
    ahead_lo   bigint;
    ahead_hi   bigint;
BEGIN
    FOR r IN
        SELECT CASE WHEN row_number() OVER w = 1 THEN 1 ELSE lo END AS lo,
               coalesce(lead(lo) OVER w, (SELECT max(id) + 1 FROM campaigns)) AS hi
        FROM (SELECT min(id) AS lo FROM campaigns GROUP BY date_trunc('month', created_at)) m
        WINDOW w AS (ORDER BY lo)
    LOOP
        PERFORM message_partition_make(r.lo, r.hi);
    END LOOP;
    -- And the range ahead, for the next campaigns, as the keeper makes it.
    SELECT coalesce(max(campaign_hi), 1) INTO ahead_lo FROM message_partitions;
    SELECT ahead_lo + greatest(16, count(*)) INTO ahead_hi FROM campaigns WHERE created_at > now() - interval '30 days';
    PERFORM message_partition_make(ahead_lo, ahead_hi);
END $$;
-- +goose StatementEnd
-- The DEFAULT partitions are shaped as message_partition_make shapes a range.
CREATE TABLE outbound_messages_default PARTITION OF outbound_messages DEFAULT;
ALTER TABLE outbound_messages_default ADD CONSTRAINT outbound_messages_default_pkey PRIMARY KEY (id);
CREATE TABLE message_attempts_default PARTITION OF message_attempts DEFAULT;
ALTER TABLE message_attempts_default ADD CONSTRAINT message_attempts_default_message_id_fkey
    FOREIGN KEY (message_id) REFERENCES outbound_messages_default (id) ON DELETE CASCADE;

INSERT INTO outbound_messages SELECT * FROM outbound_messages_old;
INSERT INTO message_attempts
SELECT m.campaign_id, a.* FROM message_attempts_old a JOIN outbound_messages_old m ON m.id = a.message_id;
DROP TABLE message_attempts_old;
DROP TABLE outbound_messages_old;
ALTER SEQUENCE outbound_messages_id_seq OWNED BY outbound_messages.id;

-- Indexes built once, after the copy, under their old names. The provider
-- id index must contain campaign_id, as must any unique index of the
-- partitioned table; the primary key is each partition's own, on id alone
-- (below), and a message id is unique across partitions because one
-- sequence makes them.
CREATE UNIQUE INDEX outbound_messages_campaign_customer_key ON outbound_messages (campaign_id, customer_id)
    WHERE NOT test;
CREATE UNIQUE INDEX outbound_messages_provider_id_idx ON outbound_messages (provider, provider_message_id, campaign_id)
    WHERE provider_message_id IS NOT NULL;
CREATE INDEX outbound_messages_active_idx ON outbound_messages (updated_at) WHERE status IN ('pending', 'sending');
CREATE INDEX outbound_messages_campaign_active_idx ON outbound_messages (campaign_id, id)
    WHERE status IN ('pending', 'sending');
CREATE INDEX outbound_messages_campaign_id_idx ON outbound_messages (campaign_id, id);
CREATE INDEX outbound_messages_campaign_unsent_idx ON outbound_messages (campaign_id, id)
    WHERE status IN ('failed', 'undelivered', 'cancelled');
CREATE INDEX outbound_messages_customer_idx ON outbound_messages (customer_id);
CREATE INDEX outbound_messages_feed_idx ON outbound_messages (campaign_id, id)
    WHERE status = 'pending' AND queued_at IS NULL;
ALTER TABLE outbound_messages ADD CONSTRAINT outbound_messages_campaign_id_fkey
    FOREIGN KEY (campaign_id) REFERENCES campaigns (id) ON DELETE CASCADE;
ALTER TABLE outbound_messages ADD CONSTRAINT outbound_messages_customer_id_fkey
    FOREIGN KEY (customer_id) REFERENCES customers (id) ON DELETE SET NULL;

ALTER TABLE message_attempts ADD CONSTRAINT message_attempts_pkey PRIMARY KEY (message_id, attempt, campaign_id);

-- Lookups by message id, and the attempts' foreign key. A primary key of
-- the partitioned table would have to contain the partition key, (id,
-- campaign_id), and two things the plain table's key on id gave are lost
-- with it; each partition gets them back with a primary key of its own on
-- id alone (message_partition_make), which a partition may have:
-- * No index says a message id is one row. On a partition without column
--   statistics (a new one, until ANALYZE or autovacuum reaches it) the
--   planner then takes "id = x" for 1/200 of the partition's rows and
--   prefers reading a whole index that looks small: each of the recorder's
--   100 lookups scanned the partition's index of active messages (every
--   pending and sending message; status = 'sending' implies its predicate),
--   33,000 buffers and about 500 ms per batch instead of 1 ms, and the
--   claim read the whole partition. The partition's key on id tells the
--   planner one row, statistics or not.
-- * A foreign key to the partitioned table is checked, for every attempt
--   the recorder inserts, by a query that PostgreSQL plans anew each time (a
--   custom plan pruned to one partition looks cheaper than the generic plan
--   over all of them): about 60 µs of planning per message. Declared from
--   each attempts partition to its messages partition, plain tables, the
--   check is planned once per connection, as on the plain table: 20,000
--   attempts inserted in 0.15 s instead of 1.27 s. An attempt and its
--   message share the campaign id, so they always sit in partitions of the
--   same range, which message_partition_make makes together.
-- The partitioned table itself has no primary key: (id, campaign_id) would
-- be one more index to write on every insert and update, and one more to
-- lock in every statement, for nothing the partitions' keys do not give.
-- At 1,000 workers (app BenchmarkThroughput/concurrency=1000/ledger=postgres,
-- a fresh database, no ANALYZE) the partitioned table without them
-- delivered 868 to 1,206 messages/s where the plain one delivered 4,886 to
-- 5,793, with 1,052 to 1,354 µs of PostgreSQL CPU per message instead of
-- about 220. With the key on id only, 4,034 to 5,147 messages/s and 282 to
-- 308 µs (the per-attempt plans). With both, alternating with the plain
-- table three times in one run: 5,163, 6,764 and 6,708 against 5,870, 6,856
-- and 6,710 messages/s (0.96 of the plain table's), 198 to 203 against 193
-- to 196 µs per message; another run of three pairs gave 0.92. What is left,
-- by buffer and lock counts: every lookup by id also probes DEFAULT (about
-- 2 buffers a message: 2,137 against 1,934 per record of 100), and a record
-- takes 31 relation locks outside the 16 fast-path slots where the plain
-- table's takes none.

-- The stats counters' triggers (00012; they count finishes too since 00013)
-- went with the old table; the copy above ran without them, so
-- campaign_stats is still exact. On a partitioned table a statement trigger
-- with transition tables sees the rows of every partition.
CREATE TRIGGER outbound_messages_stats_insert AFTER INSERT ON outbound_messages
    REFERENCING NEW TABLE AS new_rows
    FOR EACH STATEMENT EXECUTE FUNCTION campaign_stats_on_insert();
CREATE TRIGGER outbound_messages_stats_update AFTER UPDATE ON outbound_messages
    REFERENCING OLD TABLE AS old_rows NEW TABLE AS new_rows
    FOR EACH STATEMENT EXECUTE FUNCTION campaign_stats_on_update();
CREATE TRIGGER outbound_messages_stats_delete AFTER DELETE ON outbound_messages
    REFERENCING OLD TABLE AS old_rows
    FOR EACH STATEMENT EXECUTE FUNCTION campaign_stats_on_delete();


-- +goose Down
ALTER TABLE message_attempts RENAME TO message_attempts_parted;
ALTER TABLE outbound_messages RENAME TO outbound_messages_parted;
ALTER SEQUENCE outbound_messages_id_seq OWNED BY NONE;

CREATE TABLE outbound_messages (LIKE outbound_messages_parted INCLUDING DEFAULTS INCLUDING CONSTRAINTS);
CREATE TABLE message_attempts (
    message_id      bigint      NOT NULL,
    attempt         integer     NOT NULL,
    started_at      timestamptz NOT NULL,
    duration_ms     integer     NOT NULL,
    outcome         text        NOT NULL,
    error           text        NULL,
    provider_status text        NULL,
    CONSTRAINT message_attempts_outcome_check CHECK (outcome IN ('sent', 'failed', 'retried', 'uncertain'))
);
INSERT INTO outbound_messages SELECT * FROM outbound_messages_parted;
INSERT INTO message_attempts
SELECT message_id, attempt, started_at, duration_ms, outcome, error, provider_status FROM message_attempts_parted;
DROP TABLE message_attempts_parted;
DROP TABLE outbound_messages_parted;
DROP TABLE message_partitions;
DROP FUNCTION message_partition_make(bigint, bigint);
ALTER SEQUENCE outbound_messages_id_seq OWNED BY outbound_messages.id;

ALTER TABLE outbound_messages ADD CONSTRAINT outbound_messages_pkey PRIMARY KEY (id);
CREATE UNIQUE INDEX outbound_messages_campaign_customer_key ON outbound_messages (campaign_id, customer_id)
    WHERE NOT test;
CREATE UNIQUE INDEX outbound_messages_provider_id_idx ON outbound_messages (provider, provider_message_id)
    WHERE provider_message_id IS NOT NULL;
CREATE INDEX outbound_messages_active_idx ON outbound_messages (updated_at) WHERE status IN ('pending', 'sending');
CREATE INDEX outbound_messages_campaign_active_idx ON outbound_messages (campaign_id, id)
    WHERE status IN ('pending', 'sending');
CREATE INDEX outbound_messages_campaign_id_idx ON outbound_messages (campaign_id, id);
CREATE INDEX outbound_messages_campaign_unsent_idx ON outbound_messages (campaign_id, id)
    WHERE status IN ('failed', 'undelivered', 'cancelled');
CREATE INDEX outbound_messages_customer_idx ON outbound_messages (customer_id);
CREATE INDEX outbound_messages_feed_idx ON outbound_messages (campaign_id, id)
    WHERE status = 'pending' AND queued_at IS NULL;
ALTER TABLE outbound_messages ADD CONSTRAINT outbound_messages_campaign_id_fkey
    FOREIGN KEY (campaign_id) REFERENCES campaigns (id) ON DELETE CASCADE;
ALTER TABLE outbound_messages ADD CONSTRAINT outbound_messages_customer_id_fkey
    FOREIGN KEY (customer_id) REFERENCES customers (id) ON DELETE SET NULL;
ALTER TABLE message_attempts ADD CONSTRAINT message_attempts_pkey PRIMARY KEY (message_id, attempt);
ALTER TABLE message_attempts ADD CONSTRAINT message_attempts_message_id_fkey
    FOREIGN KEY (message_id) REFERENCES outbound_messages (id) ON DELETE CASCADE;

-- The stats counters' triggers (00012) went with the partitioned table.
CREATE TRIGGER outbound_messages_stats_insert AFTER INSERT ON outbound_messages
    REFERENCING NEW TABLE AS new_rows
    FOR EACH STATEMENT EXECUTE FUNCTION campaign_stats_on_insert();
CREATE TRIGGER outbound_messages_stats_update AFTER UPDATE ON outbound_messages
    REFERENCING OLD TABLE AS old_rows NEW TABLE AS new_rows
    FOR EACH STATEMENT EXECUTE FUNCTION campaign_stats_on_update();
CREATE TRIGGER outbound_messages_stats_delete AFTER DELETE ON outbound_messages
    REFERENCING OLD TABLE AS old_rows
    FOR EACH STATEMENT EXECUTE FUNCTION campaign_stats_on_delete();
