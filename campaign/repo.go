package campaign

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"time"

	"github.com/jmoiron/sqlx"

	"github.com/campaignd/dispatch/platform/postgres"
)

// Repo stores campaigns in PostgreSQL. It is the only writer of the campaigns
// table. Its errors are ErrNotFound for an unknown id, an UNAVAILABLE
// errs.Error when the database cannot be reached, and otherwise wrapped
// internal errors; no driver error type escapes it. It is safe for
// concurrent use.
type Repo struct {
	db *sqlx.DB
}

// NewRepo returns a Repo over db.
func NewRepo(db *sqlx.DB) *Repo {
	return &Repo{db: db}
}

const insertSQL = `
INSERT INTO campaigns (name, channel, status, base_template, scheduled_at, audience, send_window)
VALUES ($1, $2, $3, $4, $5, $6, $7)
RETURNING ` + campaignColumns

// Create inserts c (already validated; ID and timestamps are ignored) and
// returns it as stored, with its id and timestamps.
func (r *Repo) Create(ctx context.Context, c Campaign) (Campaign, error) {
	var out Campaign
	err := r.db.GetContext(ctx, &out, insertSQL, c.Name, c.Channel, c.Status, c.BaseTemplate, c.ScheduledAt, c.Audience, c.SendWindow)
	if err != nil {
		return Campaign{}, postgres.Classify(err, "insert campaign")
	}
	return out.utc(), nil
}

// campaignColumns is every column a Campaign scans.
const campaignColumns = `id, name, channel, status, base_template, scheduled_at, audience, status_reason,
    send_window, started_at, finished_at, created_at, updated_at`

const getSQL = `SELECT ` + campaignColumns + ` FROM campaigns WHERE id = $1`

// Get returns the campaign id, or ErrNotFound.
func (r *Repo) Get(ctx context.Context, id int64) (Campaign, error) {
	var c Campaign
	err := r.db.GetContext(ctx, &c, getSQL, id)
	if errors.Is(err, sql.ErrNoRows) {
		return Campaign{}, ErrNotFound.Withf("campaign %d not found", id)
	}
	if err != nil {
		return Campaign{}, postgres.Classify(err, fmt.Sprintf("get campaign %d", id))
	}
	return c.utc(), nil
}

// An empty filter value (the empty string, or 0 for the cursor) disables its
// condition, so one statement serves every combination. lib/pq sends unnamed
// statements, which PostgreSQL plans with the actual values, so the disabled
// conditions fold away and the (channel, id) and (status, id) indexes apply.
const (
	countSQL = `
SELECT count(*)
FROM campaigns
WHERE ($1::text = '' OR channel = $1::text)
  AND ($2::text = '' OR status = $2::text)`

	listSQL = `
SELECT id, name, channel, status, scheduled_at, created_at
FROM campaigns
WHERE ($1::text = '' OR channel = $1::text)
  AND ($2::text = '' OR status = $2::text)
  AND ($3::bigint = 0 OR id < $3::bigint)
ORDER BY id DESC
LIMIT $4 OFFSET $5`
)

// ListQuery is one page of a list: at most Limit rows after skipping Offset,
// or, when AfterID is non-zero, the rows with an id below it (a keyset
// cursor, which stays correct while campaigns are created).
type ListQuery struct {
	Filter  Filter
	AfterID int64
	Offset  int64
	Limit   int
}

// List returns the total number of campaigns matching q.Filter and up to
// q.Limit of them, newest (highest id) first. Both come from one snapshot, so
// total agrees with the rows even while campaigns are being created.
func (r *Repo) List(ctx context.Context, q ListQuery) (items []Summary, total int64, err error) {
	tx, err := r.db.BeginTxx(ctx, &sql.TxOptions{Isolation: sql.LevelRepeatableRead, ReadOnly: true})
	if err != nil {
		return nil, 0, postgres.Classify(err, "list campaigns: begin")
	}
	defer tx.Rollback() // read-only: rolling back after the reads is as good as a commit

	ch, st := string(q.Filter.Channel), string(q.Filter.Status)
	if err := tx.GetContext(ctx, &total, countSQL, ch, st); err != nil {
		return nil, 0, postgres.Classify(err, "count campaigns")
	}
	items = make([]Summary, 0, q.Limit)
	if err := tx.SelectContext(ctx, &items, listSQL, ch, st, q.AfterID, q.Limit, q.Offset); err != nil {
		return nil, 0, postgres.Classify(err, "list campaigns")
	}
	ids := make([]int64, len(items))
	for i := range items {
		items[i] = items[i].utc()
		ids[i] = items[i].ID
	}
	// The page's stats in one grouped query, in the same snapshot.
	stats, err := statsOf(ctx, tx, ids)
	if err != nil {
		return nil, 0, err
	}
	for i := range items {
		items[i].Stats = stats[items[i].ID]
	}
	return items, total, nil
}

// Stats counts campaign id's messages by status. A campaign with no messages,
// or no campaign at all, has zero counts: callers check existence first.
func (r *Repo) Stats(ctx context.Context, id int64) (Stats, error) {
	return statsOne(ctx, r.db, id)
}

// statsOne is Stats through q, a transaction or the pool.
func statsOne(ctx context.Context, q sqlx.QueryerContext, id int64) (Stats, error) {
	m, err := statsOf(ctx, q, []int64{id})
	return m[id], err
}

// utc returns c with its times in UTC: lib/pq returns them in the session's
// time zone, and the API promises UTC.
func (c Campaign) utc() Campaign {
	c.CreatedAt = c.CreatedAt.UTC()
	c.UpdatedAt = c.UpdatedAt.UTC()
	c.ScheduledAt = utcPtr(c.ScheduledAt)
	c.StartedAt = utcPtr(c.StartedAt)
	c.FinishedAt = utcPtr(c.FinishedAt)
	return c
}

func (s Summary) utc() Summary {
	s.CreatedAt = s.CreatedAt.UTC()
	s.ScheduledAt = utcPtr(s.ScheduledAt)
	return s
}

func utcPtr(t *time.Time) *time.Time {
	if t == nil {
		return nil
	}
	u := t.UTC()
	return &u
}
