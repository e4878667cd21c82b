package messaging

import (
	"context"
	"database/sql/driver"
	"encoding/json"
	"fmt"
	"strings"

	"github.com/jmoiron/sqlx"
	"github.com/lib/pq"

	"github.com/campaignd/dispatch/platform/postgres"
)

// Audience selects the customers a send creates messages for: explicit ids,
// or every customer (All), or those matching Location and/or
// PreferredProduct (exact, case-insensitive).
type Audience struct {
	CustomerIDs      []int64
	All              bool
	Location         string
	PreferredProduct string
}

// Created is what CreateMessages did.
type Created struct {
	BatchID         int64
	Messages        int64
	SkippedOptedOut int64
}

// insertByIDsSQL creates the messages of an id send: one set-based statement
// whatever the send's size, reading customers and customer_opt_outs (owned
// by the customer feature) in the statement that writes outbound_messages,
// so there is no window between choosing the recipients and creating their
// messages. An id that names no customer gets no message; createByIDs
// tells those from opted-out ones afterwards, and only when some id got no
// message.
//
// The customers it reads are locked FOR KEY SHARE until commit: the lock
// the foreign key's check took before 00018 dropped it, and what keeps a
// concurrent erasure (customer.Erase locks the row FOR UPDATE, then
// deletes it) from leaving a message addressed to a customer who is gone.
// If the erasure came first, the lock waits for it and then skips the
// deleted row, and the id is reported unknown. The ORDER BY gives message
// ids in customer order. customers.phone is unique, so no phone gets two
// messages in one campaign.
//
// It is a plain INSERT ... SELECT on purpose: the same insert through a
// CTE of the customers found, counted for the caller, took 870-900 ms for
// 100,000 ids against 700-720 ms (alternating, one database), the CTE's
// rows being stored and read twice.
const insertByIDsSQL = `
INSERT INTO outbound_messages (campaign_id, customer_id)
SELECT $1, c.id
FROM unnest($3::bigint[]) AS u(id)
JOIN customers c ON c.id = u.id
WHERE NOT EXISTS (SELECT 1 FROM customer_opt_outs o WHERE o.customer_id = c.id AND o.channel = $2)
ORDER BY c.id
FOR KEY SHARE OF c`

// countOptedOutSQL counts the ids that opted out of the channel. Every
// opt-out is a customer's (customer_opt_outs references customers).
const countOptedOutSQL = `
SELECT count(*) FROM customer_opt_outs WHERE channel = $1 AND customer_id = ANY ($2::bigint[])`

// countByFilterSQL sizes an audience send at request time; the messages
// themselves are created by the materialiser (see RunMaterializer).
const countByFilterSQL = `
SELECT count(*) - count(o.customer_id) AS messages,
       count(o.customer_id)            AS skipped,
       coalesce(max(c.id), 0)          AS max_id
FROM customers c
LEFT JOIN customer_opt_outs o ON o.customer_id = c.id AND o.channel = $1
WHERE ($2 = '' OR lower(c.location) = lower($2))
  AND ($3 = '' OR lower(c.preferred_product) = lower($3))`

// CreateMessages creates, inside tx (the caller's transaction, which also
// moves the campaign to sending), the messages of a send: one pending message
// per customer of a who has not opted out of channel, recorded as an unpushed
// dispatch batch. Unknown ids give ErrUnknownCustomers listing them.
//
// Explicit ids (at most 100,000) are inserted at once with one statement.
// An audience filter can match millions, so it is only counted here, with
// the highest matching customer id as the snapshot's bound, and the
// materialiser inserts and pushes the messages in chunks right after commit.
// Messages then counts what will be created: customers who opt out in the
// meantime are left out, and are skipped at delivery anyway.
func (s *Service) CreateMessages(ctx context.Context, tx *sqlx.Tx, campaignID int64, channel string, a Audience) (Created, error) {
	if len(a.CustomerIDs) > 0 {
		return s.createByIDs(ctx, tx, campaignID, channel, a.CustomerIDs)
	}
	f := filter{Location: strings.TrimSpace(a.Location), PreferredProduct: strings.TrimSpace(a.PreferredProduct)}
	if a.All {
		f = filter{}
	}
	var out struct {
		Messages int64 `db:"messages"`
		Skipped  int64 `db:"skipped"`
		MaxID    int64 `db:"max_id"`
	}
	if err := tx.GetContext(ctx, &out, countByFilterSQL, channel, f.Location, f.PreferredProduct); err != nil {
		return Created{}, postgres.Classify(err, "size audience")
	}
	c := Created{Messages: out.Messages, SkippedOptedOut: out.Skipped}
	if c.Messages == 0 {
		return c, nil
	}
	err := tx.GetContext(ctx, &c.BatchID, `
INSERT INTO dispatch_batches (campaign_id, messages, filter, channel, max_customer_id)
VALUES ($1, $2, $3, $4, $5) RETURNING id`, campaignID, c.Messages, f, channel, out.MaxID)
	return c, postgres.Classify(err, "insert dispatch batch")
}

// probeCostSQL makes PostgreSQL price an index probe of customers as what
// it is here, a read of cached pages, for the rest of the send's
// transaction. At the default random_page_cost (4, a disk seek) it joined
// 10,000 ids to 100,000 customers by hashing the whole table (22 ms of a
// 90 ms insert) rather than merging with the primary key (3 ms); the
// 10,000-id send then cost 1.45-1.6 times its floor instead of about 1.2
// (BenchmarkSendFloor). 1.1 is the usual setting for SSDs and cached data.
// For 100,000 ids of 100,000 customers the plan stays the hash join.
const probeCostSQL = `SET LOCAL random_page_cost = 1.1`

func (s *Service) createByIDs(ctx context.Context, tx *sqlx.Tx, campaignID int64, channel string, ids []int64) (Created, error) {
	if _, err := tx.ExecContext(ctx, probeCostSQL); err != nil {
		return Created{}, postgres.Classify(err, "insert messages")
	}
	res, err := tx.ExecContext(ctx, insertByIDsSQL, campaignID, channel, pq.Array(ids))
	if err != nil {
		return Created{}, postgres.Classify(err, "insert messages")
	}
	n, err := res.RowsAffected()
	if err != nil {
		return Created{}, postgres.Classify(err, "insert messages")
	}
	c := Created{Messages: n}
	if n < int64(len(ids)) {
		// Some ids got no message: opted out, or no customer.
		if err := tx.GetContext(ctx, &c.SkippedOptedOut, countOptedOutSQL, channel, pq.Array(ids)); err != nil {
			return Created{}, postgres.Classify(err, "count opted-out customers")
		}
		switch {
		case n+c.SkippedOptedOut < int64(len(ids)):
			// The caller rolls back, messages and all.
			if err := checkCustomers(ctx, tx, ids); err != nil {
				return Created{}, err
			}
			fallthrough // every id names a customer now: one was created meanwhile
		case n+c.SkippedOptedOut > int64(len(ids)): // an opt-out came meanwhile
			// The insert's snapshot and a later statement's disagree:
			// the send runs again (InTxRetrying).
			return Created{}, fmt.Errorf("insert messages: %d messages and %d opt-outs for %d ids: %w",
				n, c.SkippedOptedOut, len(ids), postgres.ErrStaleRead)
		}
	}
	if c.Messages > 0 {
		if err := tx.GetContext(ctx, &c.BatchID, insertBatchSQL, campaignID, c.Messages); err != nil {
			return Created{}, postgres.Classify(err, "insert dispatch batch")
		}
	}
	return c, nil
}

// filter is an audience filter as a materialising batch stores it; empty
// fields do not filter.
type filter struct {
	Location         string `json:"location,omitempty"`
	PreferredProduct string `json:"preferred_product,omitempty"`
}

// Value stores f as JSON text (a []byte would be sent in binary format in
// the PgBouncer mode, which jsonb does not read).
func (f filter) Value() (driver.Value, error) {
	b, err := json.Marshal(f)
	return string(b), err
}

// Scan reads a filter stored by Value.
func (f *filter) Scan(src any) error {
	b, ok := src.([]byte)
	if !ok {
		return fmt.Errorf("scan filter: unexpected %T", src)
	}
	return json.Unmarshal(b, f)
}

// When an id send names unknown customers, they are listed by reading the
// customers table (owned by the customer feature) in the send's own
// transaction: one set query, run only on that failure path. A campaign's
// create and edit run the same check on the customer_ids they store.
const missingCustomersSQL = `
SELECT u.id
FROM unnest($1::bigint[]) AS u(id)
WHERE NOT EXISTS (SELECT 1 FROM customers c WHERE c.id = u.id)
ORDER BY u.id
LIMIT 100`

// countMissing counts every unknown id when the first page was full, so the
// message can say "1,234 ids do not exist" rather than "at least 100".
func countMissing(ctx context.Context, q sqlx.QueryerContext, ids []int64, seen int) int {
	if seen < 100 {
		return seen
	}
	var n int
	err := sqlx.GetContext(ctx, q, &n, `
SELECT count(*) FROM unnest($1::bigint[]) AS u(id)
WHERE NOT EXISTS (SELECT 1 FROM customers c WHERE c.id = u.id)`, pq.Array(ids))
	if err != nil {
		return seen
	}
	return n
}

// checkCustomers returns ErrUnknownCustomers, with details.missing_ids
// listing the first 100 of ids that name no customer, or nil when they all
// exist. q is the send's transaction, or the pool.
func checkCustomers(ctx context.Context, q sqlx.QueryerContext, ids []int64) error {
	var missing []int64
	if err := sqlx.SelectContext(ctx, q, &missing, missingCustomersSQL, pq.Array(ids)); err != nil {
		return postgres.Classify(err, "check customers")
	}
	if len(missing) == 0 {
		return nil
	}
	return ErrUnknownCustomers.
		Withf("%d of the customer ids do not exist (first: %d)", countMissing(ctx, q, ids, len(missing)), missing[0]).
		WithDetail("missing_ids", missing)
}

// CheckCustomers is the send's check of customer ids, for a campaign that
// stores them to be sent later (its create and edit): ErrUnknownCustomers
// listing the first 100 ids that name no customer, or nil.
func (s *Service) CheckCustomers(ctx context.Context, ids []int64) error {
	return checkCustomers(ctx, s.repo.db, ids)
}

// lockMaterializingSQL locks the campaign's audience sends still being
// materialised; locking waits for a chunk being written to commit, and then
// reads its new cursor.
const lockMaterializingSQL = `
SELECT id, channel, cursor, max_customer_id,
       coalesce(filter->>'location', '')          AS location,
       coalesce(filter->>'preferred_product', '') AS preferred_product
FROM dispatch_batches
WHERE campaign_id = $1 AND filter IS NOT NULL
FOR UPDATE`

// countUnmaterializedSQL counts the recipients an audience send has not
// created messages for yet: the customers in (cursor, max_customer_id] who
// match the filter and have not opted out, whom the materialiser would
// have given messages. It has the shape of countByFilterSQL, the send's own
// count, and costs at most what that did.
const countUnmaterializedSQL = `
SELECT count(*) - count(o.customer_id)
FROM customers c
LEFT JOIN customer_opt_outs o ON o.customer_id = c.id AND o.channel = $5
WHERE c.id > $1 AND c.id <= $2
  AND ($3 = '' OR lower(c.location) = lower($3))
  AND ($4 = '' OR lower(c.preferred_product) = lower($4))`

// CancelPending cancels the campaign's messages that are not being
// delivered, inside tx (the campaign's cancel), and returns how many: its
// pending messages, and the recipients of an audience still being
// materialised whose messages were never created. Materialising stops; the
// latter are recorded on the dispatch batch (cancelled_unmaterialised),
// which the campaign's stats count as cancelled, so the send's
// messages_queued, the cancel's count and the stats add up. Their messages
// are not created: that would make a cancel as slow as the materialisation
// it stops. Messages being delivered right now finish.
func (s *Service) CancelPending(ctx context.Context, tx *sqlx.Tx, campaignID int64) (int64, error) {
	var batches []struct {
		ID               int64  `db:"id"`
		Channel          string `db:"channel"`
		Cursor           int64  `db:"cursor"`
		MaxCustomerID    int64  `db:"max_customer_id"`
		Location         string `db:"location"`
		PreferredProduct string `db:"preferred_product"`
	}
	if err := tx.SelectContext(ctx, &batches, lockMaterializingSQL, campaignID); err != nil {
		return 0, postgres.Classify(err, "lock materialising sends")
	}
	var total int64
	for _, b := range batches {
		var n int64
		if err := tx.GetContext(ctx, &n, countUnmaterializedSQL, b.Cursor, b.MaxCustomerID,
			b.Location, b.PreferredProduct, b.Channel); err != nil {
			return 0, postgres.Classify(err, "count unmaterialised recipients")
		}
		if _, err := tx.ExecContext(ctx, `
UPDATE dispatch_batches
SET filter = NULL, cancelled_unmaterialised = cancelled_unmaterialised + $2
WHERE id = $1`, b.ID, n); err != nil {
			return 0, postgres.Classify(err, "stop materialising")
		}
		total += n
	}
	res, err := tx.ExecContext(ctx, cancelPendingSQL, campaignID)
	if err != nil {
		return 0, postgres.Classify(err, "cancel pending messages")
	}
	pending, err := res.RowsAffected()
	return total + pending, postgres.Classify(err, "cancel pending messages")
}

// cancelPendingSQL cancels the campaign's pending messages, locking them in
// id order first. Claims lock theirs in id order too (claimSQL's cand), so
// the two cannot deadlock: one of them waits for the other. A single
// UPDATE locked the rows in the order it scanned them, and cancelling a
// 1,000,000-message campaign during delivery deadlocked (40P01) with the
// claims on every try.
const cancelPendingSQL = `
UPDATE outbound_messages SET status = 'cancelled', last_error = 'campaign cancelled', updated_at = now()
WHERE id IN (SELECT id FROM outbound_messages WHERE campaign_id = $1 AND status = 'pending' ORDER BY id FOR UPDATE)
  AND status = 'pending'`

// ResetFailed gives the campaign's failed messages fresh attempts, inside
// tx: pending, retry_count 0, no backoff. It records a dispatch batch and
// returns the ids, whose dead-letter entries Enqueue removes.
func (s *Service) ResetFailed(ctx context.Context, tx *sqlx.Tx, campaignID int64) (int64, []int64, error) {
	var ids []int64
	err := tx.SelectContext(ctx, &ids, `
UPDATE outbound_messages
SET status = 'pending', retry_count = 0, next_attempt_at = NULL, queued_at = NULL, updated_at = now()
WHERE campaign_id = $1 AND status = 'failed'
RETURNING id`, campaignID)
	if err != nil || len(ids) == 0 {
		return 0, nil, postgres.Classify(err, "reset failed messages")
	}
	batchID, err := s.MarkForPush(ctx, tx, campaignID)
	return batchID, ids, err
}

// MarkForPush records, inside tx, that the campaign's active messages need
// pushing (resume), so the sweeper pushes them if Enqueue never runs.
func (s *Service) MarkForPush(ctx context.Context, tx *sqlx.Tx, campaignID int64) (int64, error) {
	var id int64
	err := tx.GetContext(ctx, &id, insertBatchSQL, campaignID, 0)
	return id, postgres.Classify(err, "insert dispatch batch")
}

// Enqueue runs after the caller's commit: it removes forgetDead from the
// dead-letter list and wakes the feeder, which queues the campaign's pending
// messages in turn with every other sending campaign (and the materialiser,
// for an audience still to be turned into messages). Nothing is pushed here:
// a resume or retry-failed repeated a thousand times queues nothing twice.
// batchID and messageIDs are not needed: the feeder finds the messages by
// their state.
// On failure nothing is lost (the messages are pending and the feeder finds
// them); the error is for the caller's log.
func (s *Service) Enqueue(ctx context.Context, campaignID, batchID int64, messageIDs, forgetDead []int64) error {
	s.wakeMaterializer()
	s.WakeFeeder()
	return s.queue.ForgetDead(ctx, forgetDead)
}
