package campaign

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"strings"
	"time"

	"github.com/jmoiron/sqlx"
	"github.com/lib/pq"

	"github.com/campaignd/dispatch/platform/channel"
	"github.com/campaignd/dispatch/platform/postgres"
)

// Repo stores campaigns in PostgreSQL. It is the only writer of the campaigns
// table. Its errors are ErrNotFound for an unknown id, an UNAVAILABLE
// errs.Error when the database cannot be reached, and otherwise wrapped
// internal errors; no driver error type escapes it. It is safe for
// concurrent use.
type Repo struct {
	db    *sqlx.DB
	stmts *postgres.Statements // the reads' statements (detail, list pages), prepared once
}

// NewRepo returns a Repo over db.
func NewRepo(db *sqlx.DB) *Repo {
	return &Repo{db: db, stmts: postgres.NewStatements(db)}
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

// detailSQL reads campaign $1, its stats and its finish counts per second
// over the last $2 (an interval) in one prepared statement: a detail read
// is one round trip, planned once per connection, and every part of it
// costs the same whatever the campaign's size. No row: no such campaign.
var detailSQL = `
WITH stats AS (` + statsSQL("ARRAY[$1::bigint]") + `
), finished AS (
    SELECT coalesce(array_agg(extract(epoch FROM at)::bigint ORDER BY at DESC), '{}') AS ats,
           coalesce(array_agg(n ORDER BY at DESC), '{}') AS ns
    FROM (` + rateSQL + `) AS r
)
SELECT ` + campaignColumns + `,
       coalesce(s.pending, 0) AS pending, coalesce(s.sending, 0) AS sending, coalesce(s.sent, 0) AS sent,
       coalesce(s.delivered, 0) AS delivered, coalesce(s.undelivered, 0) AS undelivered,
       coalesce(s.failed, 0) AS failed, coalesce(s.cancelled, 0) AS cancelled,
       f.ats AS finished_ats, f.ns AS finished_ns, now() AS now
FROM campaigns c
CROSS JOIN finished f
LEFT JOIN stats s ON true
WHERE c.id = $1`

// statsColumns are a campaign's counters as detailSQL and listSQL return
// them, beside the campaign's own columns.
type statsColumns struct {
	Pending     int64 `db:"pending"`
	Sending     int64 `db:"sending"`
	Sent        int64 `db:"sent"`
	Delivered   int64 `db:"delivered"`
	Undelivered int64 `db:"undelivered"`
	Failed      int64 `db:"failed"`
	Cancelled   int64 `db:"cancelled"`
}

func (c statsColumns) stats() Stats {
	st := Stats{Pending: c.Pending, Sending: c.Sending, Sent: c.Sent, Delivered: c.Delivered,
		Undelivered: c.Undelivered, Failed: c.Failed, Cancelled: c.Cancelled}
	st.sum()
	return st
}

// detailRow is a row of detailSQL.
type detailRow struct {
	Campaign
	statsColumns
	FinishedAts pq.Int64Array `db:"finished_ats"` // unix seconds, newest first
	FinishedNs  pq.Int64Array `db:"finished_ns"`
	Now         time.Time     `db:"now"`
}

// Detail returns campaign id, its stats, its finish counts per second over
// the last rateWindow (newest first) and the database's now, or
// ErrNotFound.
func (r *Repo) Detail(ctx context.Context, id int64) (Campaign, Stats, []finishes, time.Time, error) {
	stmt, err := r.stmts.Get(ctx, detailSQL)
	if err != nil {
		return Campaign{}, Stats{}, nil, time.Time{}, postgres.Classify(err, "prepare campaign detail")
	}
	var row detailRow
	err = stmt.GetContext(ctx, &row, id, fmt.Sprintf("%d seconds", int(rateWindow.Seconds())))
	if errors.Is(err, sql.ErrNoRows) {
		return Campaign{}, Stats{}, nil, time.Time{}, ErrNotFound.Withf("campaign %d not found", id)
	}
	if err != nil {
		return Campaign{}, Stats{}, nil, time.Time{}, postgres.Classify(err, fmt.Sprintf("get campaign %d", id))
	}
	seconds := make([]finishes, len(row.FinishedAts))
	for i, at := range row.FinishedAts {
		seconds[i] = finishes{At: time.Unix(at, 0), N: row.FinishedNs[i]}
	}
	return row.Campaign.utc(), row.stats(), seconds, row.Now, nil
}

// An empty filter value (the empty string, or 0 for the cursor) disables its
// condition, so one statement serves every combination. lib/pq sends unnamed
// statements, which PostgreSQL plans with the actual values, so the disabled
// conditions fold away and the (channel, id) and (status, id) indexes apply.
// listSQL reads one page of campaigns, newest first, with their stats and
// the number of campaigns matching the filter, in one statement (one
// snapshot, one round trip). The total comes on every row, and on a row of
// its own with a NULL id when the page is empty. where filters the campaigns
// counted, page those listed; limit and offset are the page's parameters.
//
// Each combination of filters is its own statement, prepared once (see
// Repo.stmts): one statement with optional conditions ($1 = ” OR channel =
// $1) would be planned generically once prepared, and could use neither the
// (channel, id) nor the (status, id) index.
func listSQL(where, page, limit, offset string) string {
	return `
WITH matching AS (
    SELECT id, name, channel, status, scheduled_at, created_at
    FROM campaigns
    WHERE ` + where + `
), page AS (
    SELECT * FROM matching
    WHERE ` + page + `
    ORDER BY id DESC
    LIMIT ` + limit + ` OFFSET ` + offset + `
), total AS (
    SELECT count(*) AS total FROM matching
), stats AS (` + statsSQL("ARRAY(SELECT id FROM page)") + `
)
SELECT t.total, p.id, p.name, p.channel, p.status, p.scheduled_at, p.created_at,
       coalesce(s.pending, 0) AS pending, coalesce(s.sending, 0) AS sending, coalesce(s.sent, 0) AS sent,
       coalesce(s.delivered, 0) AS delivered, coalesce(s.undelivered, 0) AS undelivered,
       coalesce(s.failed, 0) AS failed, coalesce(s.cancelled, 0) AS cancelled
FROM total t
LEFT JOIN page p ON true
LEFT JOIN stats s ON s.campaign_id = p.id
ORDER BY p.id DESC`
}

// listStatement returns q's statement and its arguments.
func listStatement(q ListQuery) (string, []any) {
	var args []any
	param := func(v any) string {
		args = append(args, v)
		return fmt.Sprintf("$%d", len(args))
	}
	where := []string{"true"}
	if q.Filter.Channel != "" {
		where = append(where, "channel = "+param(string(q.Filter.Channel))+"::text")
	}
	if q.Filter.Status != "" {
		where = append(where, "status = "+param(string(q.Filter.Status))+"::text")
	}
	page := "true"
	if q.AfterID != 0 {
		page = "id < " + param(q.AfterID) + "::bigint"
	}
	limit, offset := param(q.Limit)+"::int", param(q.Offset)+"::bigint"
	return listSQL(strings.Join(where, " AND "), page, limit, offset), args
}

// ListQuery is one page of a list: at most Limit rows after skipping Offset,
// or, when AfterID is non-zero, the rows with an id below it (a keyset
// cursor, which stays correct while campaigns are created).
type ListQuery struct {
	Filter  Filter
	AfterID int64
	Offset  int64
	Limit   int
}

// listRow is a row of listSQL; ID is NULL on the row of an empty page.
type listRow struct {
	Total       int64          `db:"total"`
	ID          sql.NullInt64  `db:"id"`
	Name        sql.NullString `db:"name"`
	Channel     sql.NullString `db:"channel"`
	Status      sql.NullString `db:"status"`
	ScheduledAt *time.Time     `db:"scheduled_at"`
	CreatedAt   sql.NullTime   `db:"created_at"`
	statsColumns
}

// List returns the total number of campaigns matching q.Filter and up to
// q.Limit of them, newest (highest id) first, with their stats. All come
// from one snapshot, so total agrees with the rows even while campaigns
// are being created.
func (r *Repo) List(ctx context.Context, q ListQuery) (items []Summary, total int64, err error) {
	query, args := listStatement(q)
	stmt, err := r.stmts.Get(ctx, query)
	if err != nil {
		return nil, 0, postgres.Classify(err, "prepare list of campaigns")
	}
	var rows []listRow
	if err := stmt.SelectContext(ctx, &rows, args...); err != nil {
		return nil, 0, postgres.Classify(err, "list campaigns")
	}
	items = make([]Summary, 0, q.Limit)
	for _, row := range rows {
		total = row.Total
		if !row.ID.Valid {
			continue
		}
		items = append(items, Summary{
			ID: row.ID.Int64, Name: row.Name.String, Channel: channel.Channel(row.Channel.String),
			Status: Status(row.Status.String), ScheduledAt: row.ScheduledAt, CreatedAt: row.CreatedAt.Time,
			Stats: row.stats(),
		}.utc())
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
