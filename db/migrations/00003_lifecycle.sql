-- +goose Up
-- Lifecycle controls: paused and cancelled campaigns, cancelled messages.
ALTER TABLE campaigns DROP CONSTRAINT campaigns_status_check;
ALTER TABLE campaigns ADD CONSTRAINT campaigns_status_check
    CHECK (status IN ('draft', 'scheduled', 'sending', 'paused', 'sent', 'failed', 'cancelled'));
-- The audience a scheduled campaign is dispatched to, as given by the
-- client ({"customer_ids": [...]} or {"all": true} or a filter).
ALTER TABLE campaigns ADD COLUMN audience jsonb NULL;
-- Why a campaign ended as it did, when that is not obvious (too late to send).
ALTER TABLE campaigns ADD COLUMN status_reason text NULL;

ALTER TABLE outbound_messages DROP CONSTRAINT outbound_messages_status_check;
ALTER TABLE outbound_messages ADD CONSTRAINT outbound_messages_status_check
    CHECK (status IN ('pending', 'sending', 'sent', 'failed', 'cancelled'));
-- Streaming a campaign's active message ids to the queue (send, resume,
-- re-push) walks this index in id order.
CREATE INDEX outbound_messages_campaign_active_idx ON outbound_messages (campaign_id, id)
    WHERE status IN ('pending', 'sending');

-- Per-channel opt-outs. A customer listed here for a channel is never
-- messaged on it.
CREATE TABLE customer_opt_outs (
    customer_id bigint      NOT NULL REFERENCES customers (id) ON DELETE CASCADE,
    channel     text        NOT NULL,
    created_at  timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (customer_id, channel),
    CONSTRAINT customer_opt_outs_channel_check CHECK (channel IN ('sms', 'whatsapp'))
);

-- +goose Down
DROP TABLE customer_opt_outs;
DROP INDEX outbound_messages_campaign_active_idx;
UPDATE outbound_messages SET status = 'failed', last_error = coalesce(last_error, 'cancelled') WHERE status = 'cancelled';
ALTER TABLE outbound_messages DROP CONSTRAINT outbound_messages_status_check;
ALTER TABLE outbound_messages ADD CONSTRAINT outbound_messages_status_check
    CHECK (status IN ('pending', 'sending', 'sent', 'failed'));
ALTER TABLE campaigns DROP COLUMN status_reason;
ALTER TABLE campaigns DROP COLUMN audience;
UPDATE campaigns SET status = 'failed' WHERE status = 'cancelled';
UPDATE campaigns SET status = 'sending' WHERE status = 'paused';
ALTER TABLE campaigns DROP CONSTRAINT campaigns_status_check;
ALTER TABLE campaigns ADD CONSTRAINT campaigns_status_check
    CHECK (status IN ('draft', 'scheduled', 'sending', 'sent', 'failed'));
