package outbox

import (
	"context"
	"database/sql"
	"errors"

	"github.com/jmoiron/sqlx"
	"github.com/lib/pq"

	"github.com/campaignd/dispatch/platform/postgres"
)

// Store keeps webhook endpoints and reads their deliveries (tables
// webhook_endpoints and webhook_deliveries). The dispatcher has its own
// statements, next to the code that runs them.
type Store struct{ db *sqlx.DB }

// NewStore returns a Store over db.
func NewStore(db *sqlx.DB) *Store { return &Store{db: db} }

const endpointColumns = `id, url, events, description, enabled, disabled_at, disabled_reason, failing_since, created_at, updated_at`

// endpointRow scans events, a text[], which sqlx cannot put into a []string.
type endpointRow struct {
	Endpoint
	Events pq.StringArray `db:"events"`
}

func (r endpointRow) endpoint() Endpoint {
	e := r.Endpoint
	e.Events = []string(r.Events)
	if e.Events == nil {
		e.Events = []string{}
	}
	return e
}

const insertEndpoint = `
INSERT INTO webhook_endpoints (url, events, description, secret)
VALUES ($1, $2, $3, $4)
RETURNING ` + endpointColumns

// Create stores an endpoint that signs with secret.
func (s *Store) Create(ctx context.Context, url string, events []string, description, secret string) (Endpoint, error) {
	var r endpointRow
	if err := s.db.GetContext(ctx, &r, insertEndpoint, url, pq.Array(events), description, secret); err != nil {
		return Endpoint{}, postgres.Classify(err, "create webhook endpoint")
	}
	return r.endpoint(), nil
}

// List returns every endpoint, newest first, disabled ones included.
func (s *Store) List(ctx context.Context) ([]Endpoint, error) {
	var rows []endpointRow
	if err := s.db.SelectContext(ctx, &rows, `SELECT `+endpointColumns+` FROM webhook_endpoints ORDER BY id DESC`); err != nil {
		return nil, postgres.Classify(err, "list webhook endpoints")
	}
	out := make([]Endpoint, len(rows))
	for i, r := range rows {
		out[i] = r.endpoint()
	}
	return out, nil
}

// Get returns endpoint id, or ErrEndpointNotFound.
func (s *Store) Get(ctx context.Context, id int64) (Endpoint, error) {
	var r endpointRow
	err := s.db.GetContext(ctx, &r, `SELECT `+endpointColumns+` FROM webhook_endpoints WHERE id = $1`, id)
	if errors.Is(err, sql.ErrNoRows) {
		return Endpoint{}, ErrEndpointNotFound.Withf("webhook endpoint %d not found", id)
	}
	if err != nil {
		return Endpoint{}, postgres.Classify(err, "get webhook endpoint")
	}
	return r.endpoint(), nil
}

// Delete removes endpoint id with its pending deliveries and their history
// (ON DELETE CASCADE); an attempt in flight is not recorded. An unknown id
// is ErrEndpointNotFound.
func (s *Store) Delete(ctx context.Context, id int64) error {
	res, err := s.db.ExecContext(ctx, `DELETE FROM webhook_endpoints WHERE id = $1`, id)
	if err != nil {
		return postgres.Classify(err, "delete webhook endpoint")
	}
	if n, _ := res.RowsAffected(); n == 0 {
		return ErrEndpointNotFound.Withf("webhook endpoint %d not found", id)
	}
	return nil
}

// listDeliveries pages one endpoint's attempts newest first: by offset, or
// after a cursor's id ($2 > 0), over webhook_deliveries_endpoint_id_idx.
const listDeliveries = `
SELECT id, event_id, event_type, attempt, status_code, duration_ms, error, next_retry_at, delivered, created_at
FROM webhook_deliveries
WHERE endpoint_id = $1 AND ($2 = 0 OR id < $2)
ORDER BY id DESC
LIMIT $3 OFFSET $4`

// Deliveries returns up to limit attempts of endpoint id, newest first,
// after skipping offset of them or, when afterID is not 0, those with an id
// of afterID or more. It does not check that the endpoint exists.
func (s *Store) Deliveries(ctx context.Context, id, afterID int64, limit, offset int) ([]Delivery, error) {
	rows := []Delivery{}
	if err := s.db.SelectContext(ctx, &rows, listDeliveries, id, afterID, limit, offset); err != nil {
		return nil, postgres.Classify(err, "list webhook deliveries")
	}
	return rows, nil
}
