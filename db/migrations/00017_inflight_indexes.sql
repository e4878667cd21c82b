-- +goose Up
-- The stale sweep and its index follow the messages in flight, not the
-- backlog.
--
-- outbound_messages_active_idx, (updated_at) of every pending or sending
-- message, took an entry for each message at its insert, its feeder mark and
-- its claim, and served one reader: the stale sweep, every 5 s, looking for
-- messages untouched for SWEEPER_STALE_AFTER (10 min). Once a campaign's
-- backlog was older than that, the sweep read every one of its pending
-- messages at each run (never queued, so never stale, and never returned),
-- so a 10-million-message campaign cost a scan of millions of index entries
-- and rows every 5 s for as long as it delivered.
--
-- Two indexes replace it, each holding only what the sweep can find
-- (test sends, never requeued, aside):
--   outbound_messages_queued_idx: pending messages the feeder has queued (in
--   the ready list, or waiting for a retry), by when;
--   outbound_messages_sending_idx: messages being delivered, by claim time.
-- A message enters the first at its feeder mark and the second at its claim:
-- two entries where there were three.
--
-- Both leave test sends out (NOT test; they have 00016's index), and not
-- only because the sweep does: a partial index whose predicate a hot
-- statement implies is one PostgreSQL may scan whole. The recorder's update
-- is guarded by status = 'sending'; with an index on WHERE status =
-- 'sending', on a partition without statistics it read that index instead
-- of looking its 100 ids up by primary key (pinned by
-- TestMessageLookupsByIDUseTheIDIndexWithoutStatistics).
DROP INDEX outbound_messages_active_idx;
CREATE INDEX outbound_messages_queued_idx ON outbound_messages (queued_at)
    WHERE status = 'pending' AND queued_at IS NOT NULL AND NOT test;
CREATE INDEX outbound_messages_sending_idx ON outbound_messages (updated_at)
    WHERE status = 'sending' AND NOT test;

-- +goose Down
DROP INDEX outbound_messages_sending_idx;
DROP INDEX outbound_messages_queued_idx;
CREATE INDEX outbound_messages_active_idx ON outbound_messages (updated_at)
    WHERE status IN ('pending', 'sending');
