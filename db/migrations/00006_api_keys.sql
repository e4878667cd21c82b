-- +goose Up
-- API keys. Only a SHA-256 of each key is kept: keys are 32 random bytes, so a
-- fast hash is as safe as a slow one and costs nothing per request. prefix
-- (the first characters of the key) lets a user tell keys apart in a list.
-- A revoked key keeps its row, so the list shows what was revoked and when.
CREATE TABLE api_keys (
    id           bigserial   PRIMARY KEY,
    name         text        NOT NULL CHECK (char_length(name) BETWEEN 1 AND 100),
    scope        text        NOT NULL CHECK (scope IN ('read', 'write', 'admin')),
    prefix       text        NOT NULL,
    key_hash     bytea       NOT NULL UNIQUE,
    created_at   timestamptz NOT NULL DEFAULT now(),
    last_used_at timestamptz NULL,
    revoked_at   timestamptz NULL
);

-- +goose Down
DROP TABLE api_keys;
