-- +goose Up
-- When a message waiting for a retry is due; the worker defers a job that
-- arrives early (a job can be redelivered before its backoff ran out).
ALTER TABLE outbound_messages ADD COLUMN next_attempt_at timestamptz NULL;

-- One row per send: written in the send's transaction and marked pushed once
-- the message ids are in Redis. A row left unpushed (the process died between
-- commit and push, or Redis was down) tells the sweeper which campaign's
-- pending messages still need queueing.
CREATE TABLE dispatch_batches (
    id          bigserial PRIMARY KEY,
    campaign_id bigint      NOT NULL REFERENCES campaigns (id) ON DELETE CASCADE,
    messages    integer     NOT NULL,
    created_at  timestamptz NOT NULL DEFAULT now(),
    pushed_at   timestamptz NULL
);
CREATE INDEX dispatch_batches_unpushed_idx ON dispatch_batches (created_at) WHERE pushed_at IS NULL;

-- Replays of POST /campaigns/{id}/send carrying the same Idempotency-Key.
CREATE TABLE idempotency_keys (
    key          text        PRIMARY KEY,
    request_hash text        NOT NULL,
    status_code  integer     NOT NULL,
    response     jsonb       NOT NULL,
    created_at   timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX idempotency_keys_created_idx ON idempotency_keys (created_at);

-- The mock sender's delivery ledger: one row per idempotency key (message id)
-- it delivered, so a redelivered message is never delivered twice, across
-- restarts. calls counts every request it received for the key.
CREATE TABLE mock_deliveries (
    message_id   bigint      PRIMARY KEY,
    calls        integer     NOT NULL DEFAULT 1,
    delivered_at timestamptz NOT NULL DEFAULT now(),
    content      text        NOT NULL
);

-- +goose Down
DROP TABLE mock_deliveries;
DROP TABLE idempotency_keys;
DROP TABLE dispatch_batches;
ALTER TABLE outbound_messages DROP COLUMN next_attempt_at;
