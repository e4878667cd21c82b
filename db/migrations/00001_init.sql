-- +goose Up
CREATE TABLE customers (
    id                bigserial PRIMARY KEY,
    phone             text        NOT NULL,
    first_name        text        NOT NULL DEFAULT '',
    last_name         text        NOT NULL DEFAULT '',
    location          text        NOT NULL DEFAULT '',
    preferred_product text        NOT NULL DEFAULT '',
    created_at        timestamptz NOT NULL DEFAULT now(),
    updated_at        timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT customers_phone_e164 CHECK (phone ~ '^\+[1-9][0-9]{6,14}$'),
    CONSTRAINT customers_phone_key UNIQUE (phone)
);
-- List filters are exact, case-insensitive matches; the id keeps the
-- id DESC keyset walk inside the index.
CREATE INDEX customers_location_idx ON customers (lower(location), id);
CREATE INDEX customers_product_idx ON customers (lower(preferred_product), id);

CREATE TABLE campaigns (
    id            bigserial PRIMARY KEY,
    name          text        NOT NULL,
    channel       text        NOT NULL,
    status        text        NOT NULL DEFAULT 'draft',
    base_template text        NOT NULL,
    scheduled_at  timestamptz NULL,
    created_at    timestamptz NOT NULL DEFAULT now(),
    updated_at    timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT campaigns_channel_check CHECK (channel IN ('sms', 'whatsapp')),
    CONSTRAINT campaigns_status_check CHECK (status IN ('draft', 'scheduled', 'sending', 'sent', 'failed')),
    CONSTRAINT campaigns_name_check CHECK (char_length(name) BETWEEN 1 AND 200),
    CONSTRAINT campaigns_template_check CHECK (char_length(base_template) BETWEEN 1 AND 4096)
);
CREATE INDEX campaigns_channel_idx ON campaigns (channel, id);
CREATE INDEX campaigns_status_idx ON campaigns (status, id);
-- The scheduler looks for due scheduled campaigns.
CREATE INDEX campaigns_due_idx ON campaigns (scheduled_at) WHERE status = 'scheduled';

CREATE TABLE outbound_messages (
    id               bigserial PRIMARY KEY,
    campaign_id      bigint      NOT NULL REFERENCES campaigns (id) ON DELETE CASCADE,
    customer_id      bigint      NOT NULL REFERENCES customers (id) ON DELETE RESTRICT,
    status           text        NOT NULL DEFAULT 'pending',
    rendered_content text        NULL,
    last_error       text        NULL,
    retry_count      integer     NOT NULL DEFAULT 0,
    created_at       timestamptz NOT NULL DEFAULT now(),
    updated_at       timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT outbound_messages_status_check CHECK (status IN ('pending', 'sending', 'sent', 'failed')),
    CONSTRAINT outbound_messages_retry_count_check CHECK (retry_count >= 0),
    CONSTRAINT outbound_messages_campaign_customer_key UNIQUE (campaign_id, customer_id)
);
-- Per-campaign stats group by status.
CREATE INDEX outbound_messages_campaign_status_idx ON outbound_messages (campaign_id, status);
-- The sweeper scans messages that should be moving (pending or sending) by age.
CREATE INDEX outbound_messages_active_idx ON outbound_messages (updated_at)
    WHERE status IN ('pending', 'sending');
-- Deleting a customer checks for their messages.
CREATE INDEX outbound_messages_customer_idx ON outbound_messages (customer_id);

-- +goose Down
DROP TABLE outbound_messages;
DROP TABLE campaigns;
DROP TABLE customers;
