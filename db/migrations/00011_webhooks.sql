-- +goose Up
-- Outbound webhooks (platform/outbox): the customer's endpoints, the outbox
-- that features write in the same transaction as the change each event
-- reports, the deliveries still to make, and one row per delivery attempt.

-- events is the set of event types the endpoint receives (EventType.Valid);
-- enabled turns false when the endpoint has failed for longer than the
-- dispatcher's DisableAfter (disabled_at and disabled_reason say when and
-- why). failing_since is the time of the first failure since the last
-- success.
CREATE TABLE webhook_endpoints (
    id              bigserial   PRIMARY KEY,
    url             text        NOT NULL CHECK (char_length(url) BETWEEN 1 AND 2048),
    events          text[]      NOT NULL CHECK (
        cardinality(events) > 0 AND
        events <@ ARRAY['campaign.sending', 'campaign.paused', 'campaign.finished', 'message.sent',
                        'message.delivered', 'message.undelivered', 'message.failed',
                        'customer.opted_out']::text[]),
    description     text        NOT NULL DEFAULT '' CHECK (char_length(description) <= 500),
    -- The signing secret ("whsec_" + base64 of 32 random bytes) is stored as
    -- it is, unlike an API key, which is kept only as a hash: every delivery
    -- is signed with HMAC-SHA256 keyed by the secret itself. It is shown to
    -- the client once, in the response that creates the endpoint, and never
    -- listed.
    secret          text        NOT NULL,
    enabled         boolean     NOT NULL DEFAULT true,
    disabled_at     timestamptz NULL,
    disabled_reason text        NULL,
    failing_since   timestamptz NULL,
    created_at      timestamptz NOT NULL DEFAULT now(),
    updated_at      timestamptz NOT NULL DEFAULT now()
);

-- The outbox. A row is one event (items NULL, data its data) or, for the
-- message-level batches of the delivery path, a batch of items events of one
-- type (data the array of their data), so that a recorder statement of 100
-- outcomes writes one row, not 100. event_id ("evt_" + 26 random hex
-- digits) is the row's; an event's id, the webhook-id its deliveries carry,
-- is event_id followed by its index in the batch as 6 hex digits (000000 for
-- a single event): "evt_" + 32 hex digits, unique by construction. The
-- dispatcher deletes each row when it fans it out into webhook_tasks, so the
-- table holds only the backlog. data is json, not jsonb: the writer's text is
-- kept as it is (it is what the receiver gets) and costs the writer's
-- statement no conversion.
CREATE TABLE webhook_events (
    id         bigserial   PRIMARY KEY,
    event_id   text        NOT NULL UNIQUE DEFAULT ('evt_' || left(replace(gen_random_uuid()::text, '-', ''), 26)),
    type       text        NOT NULL CHECK (type IN ('campaign.sending', 'campaign.paused', 'campaign.finished',
                                                    'message.sent', 'message.delivered', 'message.undelivered',
                                                    'message.failed', 'customer.opted_out')),
    data       json        NOT NULL,
    items      int         NULL CHECK (items BETWEEN 1 AND 16777216),
    created_at timestamptz NOT NULL DEFAULT now()
);

-- One row per (event, endpoint) still to deliver: made by the fan-out with
-- the event's id, type, data and time, deleted once delivered or given up.
-- next_attempt_at is also the claim's lease: a dispatcher that claims a task
-- pushes it past the time the attempt can take, so the task of a dispatcher
-- that died comes due again by itself. The index serves the per-endpoint
-- claim and the cascade from webhook_endpoints.
CREATE TABLE webhook_tasks (
    id               bigserial   PRIMARY KEY,
    endpoint_id      bigint      NOT NULL REFERENCES webhook_endpoints (id) ON DELETE CASCADE,
    event_id         text        NOT NULL,
    type             text        NOT NULL,
    data             json        NOT NULL,
    event_created_at timestamptz NOT NULL,
    attempts         int         NOT NULL DEFAULT 0,
    next_attempt_at  timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX webhook_tasks_endpoint_due_idx ON webhook_tasks (endpoint_id, next_attempt_at);

-- Every delivery attempt, for GET /webhook-endpoints/{id}/deliveries (newest
-- first by id). status_code is null when no response came (timeout, refused
-- connection); next_retry_at is null on success and on the last attempt.
-- The BRIN index serves the retention prune at almost no cost to inserts.
CREATE TABLE webhook_deliveries (
    id            bigserial   PRIMARY KEY,
    endpoint_id   bigint      NOT NULL REFERENCES webhook_endpoints (id) ON DELETE CASCADE,
    event_id      text        NOT NULL,
    event_type    text        NOT NULL,
    attempt       int         NOT NULL CHECK (attempt >= 1),
    status_code   int         NULL,
    duration_ms   int         NOT NULL CHECK (duration_ms >= 0),
    error         text        NULL,
    next_retry_at timestamptz NULL,
    delivered     boolean     NOT NULL,
    created_at    timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX webhook_deliveries_endpoint_id_idx ON webhook_deliveries (endpoint_id, id);
CREATE INDEX webhook_deliveries_created_at_brin ON webhook_deliveries USING brin (created_at);

-- +goose Down
DROP TABLE webhook_deliveries;
DROP TABLE webhook_tasks;
DROP TABLE webhook_events;
DROP TABLE webhook_endpoints;
