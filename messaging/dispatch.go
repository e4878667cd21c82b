package messaging

import (
	"context"
	"database/sql/driver"
	"encoding/json"
	"fmt"
	"strings"
	"time"

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
	// MessageIDs are the new messages' ids when they were created at once
	// (an id send); nil when the materialiser creates them.
	MessageIDs []int64
}

// Both inserts read customers and customer_opt_outs (owned by the customer
// feature) in the statement that writes outbound_messages: one set-based
// statement per send, whatever its size, with no window between choosing
// the recipients and creating their messages. customers.phone is unique, so
// no phone gets two messages in one campaign.
const insertByIDsSQL = `
WITH target AS (
    SELECT c.id, o.customer_id IS NOT NULL AS opted_out
    FROM unnest($3::bigint[]) AS u(id)
    JOIN customers c ON c.id = u.id
    LEFT JOIN customer_opt_outs o ON o.customer_id = c.id AND o.channel = $2
), ins AS (
    INSERT INTO outbound_messages (campaign_id, customer_id)
    SELECT $1, id FROM target WHERE NOT opted_out ORDER BY id
    RETURNING id
)
SELECT (SELECT count(*) FROM target)                  AS known,
       (SELECT count(*) FROM target WHERE opted_out)  AS skipped,
       (SELECT coalesce(array_agg(id), '{}') FROM ins) AS message_ids`

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

func (s *Service) createByIDs(ctx context.Context, tx *sqlx.Tx, campaignID int64, channel string, ids []int64) (Created, error) {
	var out struct {
		Known   int           `db:"known"`
		Skipped int64         `db:"skipped"`
		IDs     pq.Int64Array `db:"message_ids"`
	}
	if err := tx.GetContext(ctx, &out, insertByIDsSQL, campaignID, channel, pq.Array(ids)); err != nil {
		return Created{}, postgres.Classify(err, "insert messages")
	}
	if out.Known < len(ids) {
		// Unknown ids were left out by the join; the caller rolls back.
		return Created{}, unknownCustomers(ctx, tx, ids)
	}
	c := Created{Messages: int64(len(out.IDs)), SkippedOptedOut: out.Skipped, MessageIDs: out.IDs}
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

// Value stores f as JSON.
func (f filter) Value() (driver.Value, error) { return json.Marshal(f) }

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
// transaction: one set query, run only on that failure path.
const missingCustomersSQL = `
SELECT u.id
FROM unnest($1::bigint[]) AS u(id)
WHERE NOT EXISTS (SELECT 1 FROM customers c WHERE c.id = u.id)
ORDER BY u.id
LIMIT 100`

// countMissing counts every unknown id when the first page was full, so the
// message can say "1,234 ids do not exist" rather than "at least 100".
func countMissing(ctx context.Context, tx *sqlx.Tx, ids []int64, seen int) int {
	if seen < 100 {
		return seen
	}
	var n int
	err := tx.GetContext(ctx, &n, `
SELECT count(*) FROM unnest($1::bigint[]) AS u(id)
WHERE NOT EXISTS (SELECT 1 FROM customers c WHERE c.id = u.id)`, pq.Array(ids))
	if err != nil {
		return seen
	}
	return n
}

// unknownCustomers builds the UNKNOWN_CUSTOMERS error for ids.
func unknownCustomers(ctx context.Context, tx *sqlx.Tx, ids []int64) error {
	var missing []int64
	if err := tx.SelectContext(ctx, &missing, missingCustomersSQL, pq.Array(ids)); err != nil {
		return postgres.Classify(err, "check customers")
	}
	if len(missing) == 0 {
		return fmt.Errorf("customers vanished during the send; retry")
	}
	return ErrUnknownCustomers.
		Withf("%d of the customer ids do not exist (first: %d); nothing was sent", countMissing(ctx, tx, ids, len(missing)), missing[0]).
		WithDetail("missing_ids", missing)
}

// CancelPending marks the campaign's pending messages cancelled and stops
// materialising its audience, inside tx (the campaign's cancel). Messages
// being delivered right now finish.
func (s *Service) CancelPending(ctx context.Context, tx *sqlx.Tx, campaignID int64) (int64, error) {
	if _, err := tx.ExecContext(ctx, `
UPDATE dispatch_batches SET filter = NULL, pushed_at = coalesce(pushed_at, now())
WHERE campaign_id = $1 AND filter IS NOT NULL`, campaignID); err != nil {
		return 0, postgres.Classify(err, "stop materialising")
	}
	res, err := tx.ExecContext(ctx, `
UPDATE outbound_messages SET status = 'cancelled', last_error = 'campaign cancelled', updated_at = now()
WHERE campaign_id = $1 AND status = 'pending'`, campaignID)
	if err != nil {
		return 0, postgres.Classify(err, "cancel pending messages")
	}
	return res.RowsAffected()
}

// ResetFailed gives the campaign's failed messages fresh attempts, inside
// tx: pending, retry_count 0, no backoff. It records a dispatch batch and
// returns the ids, whose dead-letter entries Enqueue removes.
func (s *Service) ResetFailed(ctx context.Context, tx *sqlx.Tx, campaignID int64) (int64, []int64, error) {
	var ids []int64
	err := tx.SelectContext(ctx, &ids, `
UPDATE outbound_messages
SET status = 'pending', retry_count = 0, next_attempt_at = NULL, updated_at = now()
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
// dead-letter list, pushes messageIDs (or, when nil, every active message of
// the campaign, paging by id so memory stays bounded) and marks the batch
// pushed. A batch still to be materialised is left to the materialiser,
// which is woken. On failure the batch stays unpushed and the sweeper pushes
// it later; the error is for the caller's log.
func (s *Service) Enqueue(ctx context.Context, campaignID, batchID int64, messageIDs, forgetDead []int64) error {
	if err := s.queue.ForgetDead(ctx, forgetDead); err != nil {
		return err
	}
	switch {
	case messageIDs != nil:
		if err := s.queue.Push(ctx, messageIDs); err != nil {
			return err
		}
	case batchID != 0:
		var materializing bool
		if err := s.repo.db.GetContext(ctx, &materializing,
			`SELECT filter IS NOT NULL FROM dispatch_batches WHERE id = $1`, batchID); err != nil {
			return postgres.Classify(err, "read dispatch batch")
		}
		if materializing {
			s.wakeMaterializer()
			return nil
		}
		fallthrough
	default:
		if _, err := s.requeueActive(ctx, campaignID); err != nil {
			return err
		}
	}
	if batchID == 0 {
		return nil
	}
	return s.repo.MarkPushed(ctx, batchID)
}

// unpushedBatches returns batches created before cutoff whose messages
// never reached the queue. Batches still materialising are the
// materialiser's to push.
func (s *Service) unpushedBatches(ctx context.Context, cutoff time.Time) ([]Batch, error) {
	var out []Batch
	err := s.repo.db.SelectContext(ctx, &out, `
SELECT id, campaign_id FROM dispatch_batches
WHERE pushed_at IS NULL AND filter IS NULL AND created_at < $1
ORDER BY id LIMIT 100`, cutoff)
	return out, postgres.Classify(err, "list unpushed batches")
}
