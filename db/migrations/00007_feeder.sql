-- +goose Up
-- The feeder moves work from PostgreSQL into the ready list in small chunks,
-- a turn per sending campaign, only while the list is short. queued_at marks
-- a message whose id is in Redis (the ready list, a processing list or the
-- delayed set), so nothing is pushed twice while it is queued; it is cleared
-- when the id leaves Redis without the message ending (a paused campaign's
-- job dropped, Redis flushed, a failed message given a fresh attempt).
ALTER TABLE outbound_messages ADD COLUMN queued_at timestamptz NULL;

-- Messages already in flight when this runs were pushed the old way: mark
-- them queued so the feeder does not push them again.
UPDATE outbound_messages SET queued_at = now() WHERE status IN ('pending', 'sending');

-- The feeder's scan: a campaign's unqueued pending messages in id order.
CREATE INDEX outbound_messages_feed_idx ON outbound_messages (campaign_id, id)
    WHERE status = 'pending' AND queued_at IS NULL;

-- Which sends had been pushed was how lost pushes were found; the feeder
-- finds unqueued messages by their state instead.
ALTER TABLE dispatch_batches DROP COLUMN pushed_at, DROP COLUMN pushed_through;

-- +goose Down
ALTER TABLE dispatch_batches
    ADD COLUMN pushed_at timestamptz NULL,
    ADD COLUMN pushed_through bigint NOT NULL DEFAULT 0;
CREATE INDEX dispatch_batches_unpushed_idx ON dispatch_batches (created_at) WHERE pushed_at IS NULL;
DROP INDEX outbound_messages_feed_idx;
ALTER TABLE outbound_messages DROP COLUMN queued_at;
