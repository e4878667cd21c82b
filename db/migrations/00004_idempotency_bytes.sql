-- +goose Up
-- A replayed response must be byte-identical to the first; jsonb would
-- reorder keys and change spacing, so keep the exact bytes.
ALTER TABLE idempotency_keys ALTER COLUMN response TYPE bytea USING convert_to(response::text, 'UTF8');

-- +goose Down
ALTER TABLE idempotency_keys ALTER COLUMN response TYPE jsonb USING convert_from(response, 'UTF8')::jsonb;
