-- +goose Up
-- Test sends: a message sent to a phone of the user's choosing, outside the
-- campaign's audience and its stats. It may have no customer (a bare phone),
-- so customer_id becomes nullable, and its phone is kept on the message.
ALTER TABLE outbound_messages
    ADD COLUMN test  boolean NOT NULL DEFAULT false,
    ADD COLUMN phone text    NULL;
ALTER TABLE outbound_messages ALTER COLUMN customer_id DROP NOT NULL;
-- A campaign sends to each customer once; test sends may repeat.
ALTER TABLE outbound_messages DROP CONSTRAINT outbound_messages_campaign_customer_key;
CREATE UNIQUE INDEX outbound_messages_campaign_customer_key ON outbound_messages (campaign_id, customer_id)
    WHERE NOT test;
-- Erasing a customer keeps their messages (status and counts) without them.
ALTER TABLE outbound_messages DROP CONSTRAINT outbound_messages_customer_id_fkey;
ALTER TABLE outbound_messages ADD CONSTRAINT outbound_messages_customer_id_fkey
    FOREIGN KEY (customer_id) REFERENCES customers (id) ON DELETE SET NULL;

-- The messages API pages a campaign's messages newest first, optionally by
-- status; this index serves both and the stats' GROUP BY status.
CREATE INDEX outbound_messages_campaign_status_id_idx ON outbound_messages (campaign_id, status, id);
CREATE INDEX outbound_messages_campaign_id_idx ON outbound_messages (campaign_id, id);
DROP INDEX outbound_messages_campaign_status_idx;

-- Send windows and progress.
ALTER TABLE campaigns
    ADD COLUMN send_window jsonb       NULL,
    ADD COLUMN started_at  timestamptz NULL,
    ADD COLUMN finished_at timestamptz NULL;

-- +goose Down
ALTER TABLE campaigns DROP COLUMN send_window, DROP COLUMN started_at, DROP COLUMN finished_at;
CREATE INDEX outbound_messages_campaign_status_idx ON outbound_messages (campaign_id, status);
DROP INDEX outbound_messages_campaign_id_idx;
DROP INDEX outbound_messages_campaign_status_id_idx;
DELETE FROM outbound_messages WHERE test OR customer_id IS NULL;
ALTER TABLE outbound_messages DROP CONSTRAINT outbound_messages_customer_id_fkey;
ALTER TABLE outbound_messages ADD CONSTRAINT outbound_messages_customer_id_fkey
    FOREIGN KEY (customer_id) REFERENCES customers (id) ON DELETE RESTRICT;
DROP INDEX outbound_messages_campaign_customer_key;
ALTER TABLE outbound_messages ADD CONSTRAINT outbound_messages_campaign_customer_key UNIQUE (campaign_id, customer_id);
ALTER TABLE outbound_messages ALTER COLUMN customer_id SET NOT NULL;
ALTER TABLE outbound_messages DROP COLUMN test, DROP COLUMN phone;
