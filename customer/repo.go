package customer

import (
	"context"
	"database/sql"
	"errors"
	"strconv"
	"strings"

	"github.com/jmoiron/sqlx"
	"github.com/lib/pq"

	"github.com/campaignd/dispatch/platform/channel"
	"github.com/campaignd/dispatch/platform/outbox"
	"github.com/campaignd/dispatch/platform/postgres"
)

// Repo is the customers and customer_opt_outs tables. It is their only
// writer. Every method translates driver errors at this boundary: a missing
// row (or an opt-out for a missing customer) is ErrNotFound, a duplicate
// phone ErrPhoneTaken, an unreachable database an UNAVAILABLE errs.Error (via
// postgres.Classify); anything else is wrapped with context.
type Repo struct {
	db *sqlx.DB
}

// NewRepo returns a Repo over db.
func NewRepo(db *sqlx.DB) *Repo { return &Repo{db: db} }

// phoneKey is the unique constraint on customers.phone (00001_init.sql).
const phoneKey = "customers_phone_key"

// columns is the column list every query that scans a Customer selects, in
// the order of the struct's db tags.
const columns = `id, phone, first_name, last_name, location, preferred_product, created_at, updated_at`

// getSQL reads the customer and its opt-outs in one statement. The ARRAY
// subquery runs once, for the one row, on customer_opt_outs' primary key.
const getSQL = `
SELECT ` + columns + `,
       ARRAY(SELECT o.channel FROM customer_opt_outs o WHERE o.customer_id = customers.id ORDER BY o.channel)
           AS opted_out_channels
FROM customers WHERE id = $1`

// customerRow is a Customer as getSQL (or updateSQL) returns it, opt-outs
// included.
type customerRow struct {
	Customer
	OptedOut pq.StringArray `db:"opted_out_channels"`
}

// customer returns the row as a Customer in UTC with its opt-outs.
func (row customerRow) customer() Customer {
	c := row.Customer.utc()
	c.OptedOutChannels = make([]channel.Channel, len(row.OptedOut))
	for i, ch := range row.OptedOut {
		c.OptedOutChannels[i] = channel.Channel(ch)
	}
	return c
}

// Get returns the customer with id, its opt-outs included, or ErrNotFound.
func (r *Repo) Get(ctx context.Context, id int64) (Customer, error) {
	var row customerRow
	if err := r.db.GetContext(ctx, &row, getSQL, id); err != nil {
		if errors.Is(err, sql.ErrNoRows) {
			return Customer{}, ErrNotFound.Withf("customer %d not found", id)
		}
		return Customer{}, postgres.Classify(err, "get customer "+strconv.FormatInt(id, 10))
	}
	return row.customer(), nil
}

const createSQL = `
INSERT INTO customers (phone, first_name, last_name, location, preferred_product)
VALUES ($1, $2, $3, $4, $5)
RETURNING ` + columns

// Create stores in, which must already be normalised, and returns the new
// customer, who has opted out of nothing. A phone that belongs to another
// customer is ErrPhoneTaken.
func (r *Repo) Create(ctx context.Context, in Input) (Customer, error) {
	var c Customer
	err := r.db.GetContext(ctx, &c, createSQL, in.Phone, in.FirstName, in.LastName, in.Location, in.PreferredProduct)
	if err != nil {
		if isPhoneTaken(err) {
			return Customer{}, r.phoneTaken(ctx, in.Phone)
		}
		return Customer{}, postgres.Classify(err, "create customer")
	}
	c = c.utc()
	c.OptedOutChannels = []channel.Channel{}
	return c, nil
}

const phoneOwnerSQL = `SELECT id FROM customers WHERE phone = $1`

// phoneTaken builds ErrPhoneTaken for phone, naming the customer that holds
// it. The lookup only runs after a conflict, so the happy path pays nothing;
// if it fails (or the holder was deleted meanwhile) the error just omits the
// id.
func (r *Repo) phoneTaken(ctx context.Context, phone string) error {
	var id int64
	if err := r.db.GetContext(ctx, &id, phoneOwnerSQL, phone); err != nil {
		return ErrPhoneTaken.Withf("phone %s already belongs to another customer", phone).
			WithDetail("field", "phone")
	}
	return ErrPhoneTaken.Withf("phone %s already belongs to customer %d", phone, id).
		WithDetail("field", "phone").WithDetail("customer_id", id)
}

func isPhoneTaken(err error) bool {
	return postgres.IsUniqueViolation(err) && postgres.ConstraintName(err) == phoneKey
}

// where returns the WHERE clause selecting f (empty when f selects all) and
// its arguments, numbered from $1. The lower(col) = lower($n) form is what
// the customers_location_idx and customers_product_idx indexes serve.
func where(f Filter) (string, []any) {
	var conds []string
	var args []any
	add := func(cond string, arg any) {
		args = append(args, arg)
		conds = append(conds, strings.ReplaceAll(cond, "$n", "$"+strconv.Itoa(len(args))))
	}
	if f.Location != "" {
		add(`lower(location) = lower($n)`, f.Location)
	}
	if f.PreferredProduct != "" {
		add(`lower(preferred_product) = lower($n)`, f.PreferredProduct)
	}
	if f.Search != "" {
		// The phone is the unique index; the names have none, so a search
		// by name reads the table (acceptable for an operator's search box;
		// a trigram index would serve it at scale).
		add(`(phone = $n OR lower(first_name) LIKE $m OR lower(last_name) LIKE $m
			OR lower(first_name || ' ' || last_name) LIKE $m)`, f.Search)
		args = append(args, likePrefix(f.Search))
		conds[len(conds)-1] = strings.ReplaceAll(conds[len(conds)-1], "$m", "$"+strconv.Itoa(len(args)))
	}
	if len(conds) == 0 {
		return "", nil
	}
	return " WHERE " + strings.Join(conds, " AND "), args
}

// likePrefix is s lower-cased as a LIKE prefix pattern, its wildcards
// escaped (the default escape character is the backslash).
func likePrefix(s string) string {
	r := strings.NewReplacer(`\`, `\\`, `%`, `\%`, `_`, `\_`)
	return r.Replace(strings.ToLower(s)) + "%"
}

const countSQL = `SELECT count(*) FROM customers`

// Count returns how many customers f selects.
func (r *Repo) Count(ctx context.Context, f Filter) (int64, error) {
	w, args := where(f)
	var n int64
	if err := r.db.GetContext(ctx, &n, countSQL+w, args...); err != nil {
		return 0, postgres.Classify(err, "count customers")
	}
	return n, nil
}

const listSQL = `SELECT ` + columns + ` FROM customers`

// List returns up to limit customers selected by f, newest (highest id)
// first, their opt-outs included. A non-zero beforeID is a keyset walk: only
// ids below it, and offset is ignored; otherwise offset rows are skipped.
//
// Opt-outs are read by a second query for the page's ids, not by a subquery
// in the select list: PostgreSQL evaluates the select list for the rows an
// OFFSET skips too, so a subquery would run once per skipped row.
func (r *Repo) List(ctx context.Context, f Filter, limit, offset int, beforeID int64) ([]Customer, error) {
	w, args := where(f)
	q := listSQL + w
	if beforeID > 0 {
		args = append(args, beforeID)
		if w == "" {
			q += " WHERE"
		} else {
			q += " AND"
		}
		q += " id < $" + strconv.Itoa(len(args))
		offset = 0
	}
	args = append(args, limit, offset)
	q += " ORDER BY id DESC LIMIT $" + strconv.Itoa(len(args)-1) + " OFFSET $" + strconv.Itoa(len(args))

	cs := []Customer{} // an empty page is [] in JSON, not null
	if err := r.db.SelectContext(ctx, &cs, q, args...); err != nil {
		return nil, postgres.Classify(err, "list customers")
	}
	for i := range cs {
		cs[i] = cs[i].utc()
	}
	if err := r.attachOptOuts(ctx, cs); err != nil {
		return nil, err
	}
	return cs, nil
}

const optOutsOfSQL = `
SELECT customer_id, channel FROM customer_opt_outs
WHERE customer_id = ANY($1::bigint[])
ORDER BY customer_id, channel`

// attachOptOuts sets the OptedOutChannels of every customer in cs (to an
// empty slice for those with none), sorted, in one query however many
// customers cs holds.
func (r *Repo) attachOptOuts(ctx context.Context, cs []Customer) error {
	if len(cs) == 0 {
		return nil
	}
	at := make(map[int64]int, len(cs)) // id → index in cs
	ids := make([]int64, len(cs))
	for i := range cs {
		cs[i].OptedOutChannels = []channel.Channel{}
		at[cs[i].ID] = i
		ids[i] = cs[i].ID
	}
	rows, err := r.db.QueryContext(ctx, optOutsOfSQL, pq.Array(ids))
	if err != nil {
		return postgres.Classify(err, "list opt-outs")
	}
	defer rows.Close()
	for rows.Next() {
		var id int64
		var ch channel.Channel
		if err := rows.Scan(&id, &ch); err != nil {
			return postgres.Classify(err, "scan opt-out")
		}
		if i, ok := at[id]; ok {
			cs[i].OptedOutChannels = append(cs[i].OptedOutChannels, ch)
		}
	}
	if err := rows.Err(); err != nil {
		return postgres.Classify(err, "list opt-outs")
	}
	return nil
}

// optOutCustomerFK is the foreign key from customer_opt_outs to customers
// (00003_lifecycle.sql, named by PostgreSQL's default).
const optOutCustomerFK = "customer_opt_outs_customer_id_fkey"

// optOutSQL does nothing when the opt-out exists, which makes OptOut
// idempotent without a read first. A new opt-out writes its
// customer.opted_out webhook event in the same statement.
var optOutSQL = `
WITH ins AS (
    INSERT INTO customer_opt_outs (customer_id, channel) VALUES ($1, $2)
    ON CONFLICT (customer_id, channel) DO NOTHING
    RETURNING customer_id, channel
)
` + optedOutEventSQL

// optedOutEventSQL writes a customer.opted_out event per row of ins, the
// opt-outs the statement inserted (an existing one emits nothing again).
var optedOutEventSQL = outbox.EmitSQL("ins", "'"+string(outbox.CustomerOptedOut)+"'",
	"json_build_object('customer_id', ins.customer_id, 'channel', ins.channel)",
	"ARRAY['"+string(outbox.CustomerOptedOut)+"']")

// OptOut records that customer id must not be messaged on ch, which must be
// valid. Opting out again is not an error and keeps the first created_at.
// An unknown customer is ErrNotFound.
func (r *Repo) OptOut(ctx context.Context, id int64, ch channel.Channel) error {
	if _, err := r.db.ExecContext(ctx, optOutSQL, id, ch); err != nil {
		if isUnknownCustomer(err) {
			return ErrNotFound.Withf("customer %d not found", id)
		}
		return postgres.Classify(err, "opt customer "+strconv.FormatInt(id, 10)+" out of "+string(ch))
	}
	return nil
}

const optInSQL = `DELETE FROM customer_opt_outs WHERE customer_id = $1 AND channel = $2`

// OptIn removes customer id's opt-out of ch, if there is one. It does not
// check that the customer exists: a missing customer has no opt-out, so
// there is nothing to do, and the caller reads the customer afterwards.
func (r *Repo) OptIn(ctx context.Context, id int64, ch channel.Channel) error {
	if _, err := r.db.ExecContext(ctx, optInSQL, id, ch); err != nil {
		return postgres.Classify(err, "opt customer "+strconv.FormatInt(id, 10)+" in to "+string(ch))
	}
	return nil
}

// isUnknownCustomer reports whether err is the foreign-key violation of an
// opt-out naming a customer that does not exist.
func isUnknownCustomer(err error) bool {
	return postgres.IsForeignKeyViolation(err) && postgres.ConstraintName(err) == optOutCustomerFK
}

const phoneOwnersSQL = `SELECT phone, id FROM customers WHERE phone = ANY($1::text[])`

// PhoneOwners returns, for each of phones that a customer already has, that
// customer's id. One query however many phones are asked about.
func (r *Repo) PhoneOwners(ctx context.Context, phones []string) (map[string]int64, error) {
	owners := make(map[string]int64)
	if len(phones) == 0 {
		return owners, nil
	}
	rows, err := r.db.QueryContext(ctx, phoneOwnersSQL, pq.Array(phones))
	if err != nil {
		return nil, postgres.Classify(err, "look up phones")
	}
	defer rows.Close()
	for rows.Next() {
		var phone string
		var id int64
		if err := rows.Scan(&phone, &id); err != nil {
			return nil, postgres.Classify(err, "scan phone owner")
		}
		owners[phone] = id
	}
	if err := rows.Err(); err != nil {
		return nil, postgres.Classify(err, "look up phones")
	}
	return owners, nil
}

// analyze refreshes the planner's statistics on customers (see
// analyzeAfterImport).
func (r *Repo) analyze(ctx context.Context) error {
	_, err := r.db.ExecContext(ctx, `ANALYZE customers`)
	return postgres.Classify(err, "analyze customers")
}

// copyCustomersSQL is the COPY that inserts a batch of an import: about a
// fifth faster than an INSERT of unnest(...) arrays (100,000 rows in batches
// of 5,000, eight runs of each side by side: 12.7 s against 16.6 s in all).
var copyCustomersSQL = pq.CopyIn("customers", "phone", "first_name", "last_name", "location", "preferred_product")

// importTx is the transaction that stores one import, batch by batch, so
// that the import is all or nothing however many batches it has. It is not
// safe for concurrent use.
type importTx struct {
	tx *sqlx.Tx
}

// beginImport starts an import's transaction. The caller ends it with
// commit or rollback.
func (r *Repo) beginImport(ctx context.Context) (*importTx, error) {
	tx, err := r.db.BeginTxx(ctx, nil)
	if err != nil {
		return nil, postgres.Classify(err, "begin import")
	}
	return &importTx{tx: tx}, nil
}

// insert adds rows, which must be normalised and hold phones distinct from
// each other and from the rows inserted before, in their order, with one
// COPY. A phone that a customer has is ErrPhoneTaken, after which the
// transaction can only be rolled back.
func (t *importTx) insert(ctx context.Context, rows []Input) error {
	stmt, err := t.tx.PrepareContext(ctx, copyCustomersSQL)
	if err != nil {
		return postgres.Classify(err, "import customers")
	}
	defer stmt.Close() // after the flush below, a no-op
	for _, in := range rows {
		// The COPY is streamed: an error may surface rows later, or at the flush.
		if _, err := stmt.ExecContext(ctx, in.Phone, in.FirstName, in.LastName, in.Location, in.PreferredProduct); err != nil {
			return importError(err)
		}
	}
	_, err = stmt.ExecContext(ctx) // ends the COPY
	return importError(err)
}

func importError(err error) error {
	if isPhoneTaken(err) {
		return ErrPhoneTaken.Withf("a phone of the import belongs to another customer").WithDetail("field", "phone")
	}
	return postgres.Classify(err, "import customers")
}

// commit stores every row inserted.
func (t *importTx) commit() error {
	return postgres.Classify(t.tx.Commit(), "commit import")
}

// rollback ends the transaction, storing nothing. After commit it does
// nothing.
func (t *importTx) rollback() { _ = t.tx.Rollback() }

// utc returns c with its times in UTC: lib/pq returns timestamptz in the
// session's time zone, and the API promises UTC.
func (c Customer) utc() Customer {
	c.CreatedAt = c.CreatedAt.UTC()
	c.UpdatedAt = c.UpdatedAt.UTC()
	return c
}
