-- +goose Up
-- The (campaign_id, id) index of a campaign's active messages gives way to
-- one of the messages being delivered only.
--
-- outbound_messages_campaign_active_idx (00003), every pending or sending
-- message, took three entries per message (its insert, the feeder's mark,
-- its claim), and a send of 100,000 ids spent 50-90 ms of its insert on it
-- (1,020-1,090 ms against 1,070-1,180 ms, alternating, on copies of one
-- database). Its readers, and what they read now:
-- * the message list filtered by status (GET /campaigns/{id}/messages
--   ?status=): for sending, outbound_messages_campaign_sending_idx below,
--   one entry per claim, written off the send's path; for pending, the
--   newest end of (campaign_id, id), where a campaign's pending messages
--   are (the feeder queues in id order);
-- * a campaign's cancel (cancelPendingSQL), which locks every pending
--   message of the campaign anyway: (campaign_id, id);
-- * the finisher's check that none of a campaign's messages is active,
--   which runs once the counters show none (campaign.finishSQL), about once
--   per campaign: (campaign_id, id).
-- Test sends are left out, as in 00017 and for the same reason: the
-- recorder's update is guarded by status = 'sending', and an index whose
-- predicate that guard implies is one PostgreSQL may scan whole instead of
-- the primary key.
DROP INDEX outbound_messages_campaign_active_idx;
CREATE INDEX outbound_messages_campaign_sending_idx ON outbound_messages (campaign_id, id)
    WHERE status = 'sending' AND NOT test;

-- +goose Down
DROP INDEX outbound_messages_campaign_sending_idx;
CREATE INDEX outbound_messages_campaign_active_idx ON outbound_messages (campaign_id, id)
    WHERE status IN ('pending', 'sending');
