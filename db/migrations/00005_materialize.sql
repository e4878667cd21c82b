-- +goose Up
-- An audience send (all customers, or a filter) is materialised in chunks by
-- a background loop rather than in the request, so a million recipients are
-- accepted in well under a second and delivery starts after the first chunk.
-- While filter is not NULL the batch is still being materialised: customers
-- with ids in (cursor, max_customer_id] are still to get their messages, and
-- those up to pushed_through have had their ids pushed to the queue.
ALTER TABLE dispatch_batches
    ADD COLUMN filter          jsonb  NULL,
    ADD COLUMN channel         text   NULL,
    ADD COLUMN cursor          bigint NOT NULL DEFAULT 0,
    ADD COLUMN max_customer_id bigint NOT NULL DEFAULT 0,
    ADD COLUMN pushed_through  bigint NOT NULL DEFAULT 0;
CREATE INDEX dispatch_batches_materializing_idx ON dispatch_batches (id) WHERE filter IS NOT NULL;
CREATE INDEX dispatch_batches_campaign_idx ON dispatch_batches (campaign_id);

-- +goose Down
DROP INDEX dispatch_batches_campaign_idx;
DROP INDEX dispatch_batches_materializing_idx;
ALTER TABLE dispatch_batches
    DROP COLUMN filter, DROP COLUMN channel, DROP COLUMN cursor,
    DROP COLUMN max_customer_id, DROP COLUMN pushed_through;
