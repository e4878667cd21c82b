package auth

import (
	"context"
	"database/sql"
	"errors"
	"time"

	"github.com/jmoiron/sqlx"

	"github.com/campaignd/dispatch/platform/postgres"
)

// Store keeps API keys in PostgreSQL (table api_keys).
type Store struct{ db *sqlx.DB }

// NewStore returns a Store over db.
func NewStore(db *sqlx.DB) *Store { return &Store{db: db} }

const keyColumns = `id, name, scope, prefix, created_at, last_used_at, revoked_at`

const insertKey = `
INSERT INTO api_keys (name, scope, prefix, key_hash)
VALUES ($1, $2, $3, $4)
RETURNING ` + keyColumns

// Create stores a new key with the given secret.
func (s *Store) Create(ctx context.Context, name string, scope Scope, secret string) (Key, error) {
	var k Key
	if err := s.db.GetContext(ctx, &k, insertKey, name, scope, prefixOf(secret), hash(secret)); err != nil {
		return Key{}, postgres.Classify(err, "create api key")
	}
	return k, nil
}

// ensureKey inserts the key unless one with that secret exists. A bootstrap
// key that was revoked stays revoked across restarts.
const ensureKey = `
INSERT INTO api_keys (name, scope, prefix, key_hash)
VALUES ($1, $2, $3, $4)
ON CONFLICT (key_hash) DO NOTHING`

// Ensure makes secret a key with name and scope if it is not one already.
// It reports whether it created the key.
func (s *Store) Ensure(ctx context.Context, name string, scope Scope, secret string) (bool, error) {
	res, err := s.db.ExecContext(ctx, ensureKey, name, scope, prefixOf(secret), hash(secret))
	if err != nil {
		return false, postgres.Classify(err, "ensure api key")
	}
	n, _ := res.RowsAffected()
	return n == 1, nil
}

// CountLive returns how many keys are not revoked.
func (s *Store) CountLive(ctx context.Context) (int, error) {
	var n int
	err := s.db.GetContext(ctx, &n, `SELECT count(*) FROM api_keys WHERE revoked_at IS NULL`)
	return n, postgres.Classify(err, "count api keys")
}

// List returns every key, newest first, revoked ones included.
func (s *Store) List(ctx context.Context) ([]Key, error) {
	keys := []Key{}
	if err := s.db.SelectContext(ctx, &keys, `SELECT `+keyColumns+` FROM api_keys ORDER BY id DESC`); err != nil {
		return nil, postgres.Classify(err, "list api keys")
	}
	return keys, nil
}

// Revoke marks the key revoked. Revoking a revoked key changes nothing and
// succeeds; an unknown id is ErrNotFound.
func (s *Store) Revoke(ctx context.Context, id int64) error {
	var revoked time.Time
	err := s.db.GetContext(ctx, &revoked,
		`UPDATE api_keys SET revoked_at = coalesce(revoked_at, now()) WHERE id = $1 RETURNING revoked_at`, id)
	if errors.Is(err, sql.ErrNoRows) {
		return ErrNotFound.Withf("API key %d not found", id)
	}
	return postgres.Classify(err, "revoke api key")
}

// useKey finds a live key by its hash and stamps last_used_at in the same
// statement. It runs once per key per cache period, which is also how
// precise last_used_at is.
const useKey = `
UPDATE api_keys SET last_used_at = now()
WHERE key_hash = $1 AND revoked_at IS NULL
RETURNING ` + keyColumns

// use returns the live key with that secret, or ErrUnauthenticated.
func (s *Store) use(ctx context.Context, secret string) (Key, error) {
	var k Key
	err := s.db.GetContext(ctx, &k, useKey, hash(secret))
	if errors.Is(err, sql.ErrNoRows) {
		return Key{}, ErrUnauthenticated
	}
	if err != nil {
		return Key{}, postgres.Classify(err, "look up api key")
	}
	return k, nil
}
