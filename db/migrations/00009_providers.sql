-- +goose Up
-- Real providers: a message accepted by a provider can later be delivered or
-- not (its receipt), and keeps what the provider said about it.
ALTER TABLE outbound_messages DROP CONSTRAINT outbound_messages_status_check;
ALTER TABLE outbound_messages ADD CONSTRAINT outbound_messages_status_check
    CHECK (status IN ('pending', 'sending', 'sent', 'delivered', 'undelivered', 'failed', 'cancelled'));
ALTER TABLE outbound_messages
    ADD COLUMN provider            text        NULL,
    ADD COLUMN provider_message_id text        NULL,
    ADD COLUMN segments            integer     NULL,
    ADD COLUMN encoding            text        NULL,
    ADD COLUMN cost                numeric(12, 5) NULL,
    ADD COLUMN currency            text        NULL,
    ADD COLUMN sent_at             timestamptz NULL,
    ADD COLUMN delivered_at        timestamptz NULL,
    ADD CONSTRAINT outbound_messages_encoding_check CHECK (encoding IN ('GSM-7', 'UCS-2'));
-- Receipts find their message by the provider's id.
CREATE UNIQUE INDEX outbound_messages_provider_id_idx ON outbound_messages (provider, provider_message_id)
    WHERE provider_message_id IS NOT NULL;

-- One row per delivery attempt, written by the recorder in the same
-- statement as the attempt's outcome. outcome: sent, failed, retried,
-- uncertain (the attempt's fate is unknown: the process died, or the
-- provider timed out, after the request may have reached it).
CREATE TABLE message_attempts (
    message_id      bigint      NOT NULL REFERENCES outbound_messages (id) ON DELETE CASCADE,
    attempt         integer     NOT NULL,
    started_at      timestamptz NOT NULL,
    duration_ms     integer     NOT NULL,
    outcome         text        NOT NULL,
    error           text        NULL,
    provider_status text        NULL,
    PRIMARY KEY (message_id, attempt),
    CONSTRAINT message_attempts_outcome_check CHECK (outcome IN ('sent', 'failed', 'retried', 'uncertain'))
);
ALTER TABLE outbound_messages ADD COLUMN attempts integer NOT NULL DEFAULT 0;

-- Delivery receipts as they arrive: the inbox that receipt batches are
-- written to before they are applied. A receipt may arrive before the
-- provider's id is recorded on its message; it stays unapplied until then.
-- Repeats (the same provider, id and status) are stored once.
CREATE TABLE provider_receipts (
    id                  bigserial   PRIMARY KEY,
    provider            text        NOT NULL,
    provider_message_id text        NOT NULL,
    status              text        NOT NULL,
    provider_status     text        NOT NULL,
    error               text        NULL,
    opt_out             boolean     NOT NULL DEFAULT false,
    received_at         timestamptz NOT NULL DEFAULT now(),
    applied_at          timestamptz NULL,
    CONSTRAINT provider_receipts_status_check CHECK (status IN ('delivered', 'undelivered')),
    CONSTRAINT provider_receipts_once UNIQUE (provider, provider_message_id, status)
);
CREATE INDEX provider_receipts_unapplied_idx ON provider_receipts (received_at) WHERE applied_at IS NULL;

-- +goose Down
DROP TABLE provider_receipts;
ALTER TABLE outbound_messages DROP COLUMN attempts;
DROP TABLE message_attempts;
DROP INDEX outbound_messages_provider_id_idx;
UPDATE outbound_messages SET status = 'sent' WHERE status IN ('delivered', 'undelivered');
ALTER TABLE outbound_messages
    DROP COLUMN provider, DROP COLUMN provider_message_id, DROP COLUMN segments, DROP COLUMN encoding,
    DROP COLUMN cost, DROP COLUMN currency, DROP COLUMN sent_at, DROP COLUMN delivered_at;
ALTER TABLE outbound_messages DROP CONSTRAINT outbound_messages_status_check;
ALTER TABLE outbound_messages ADD CONSTRAINT outbound_messages_status_check
    CHECK (status IN ('pending', 'sending', 'sent', 'failed', 'cancelled'));
