package messaging

import (
	"context"
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

// Both inserts read customers and customer_opt_outs (owned by the customer
// feature) in the statement that writes outbound_messages: one set-based
// statement per send, whatever its size, with no window between choosing
// the recipients and creating their messages. customers.phone is unique, so
// no phone gets two messages in one campaign.
const insertByIDsSQL = `
WITH target AS (
    SELECT c.id,
           EXISTS (SELECT 1 FROM customer_opt_outs o WHERE o.customer_id = c.id AND o.channel = $2) AS opted_out
    FROM unnest($3::bigint[]) AS u(id)
    JOIN customers c ON c.id = u.id
), ins AS (
    INSERT INTO outbound_messages (campaign_id, customer_id)
    SELECT $1, id FROM target WHERE NOT opted_out ORDER BY id
    RETURNING 1
)
SELECT (SELECT count(*) FROM ins) AS messages, (SELECT count(*) FROM target WHERE opted_out) AS skipped`

const insertByFilterSQL = `
WITH target AS (
    SELECT c.id,
           EXISTS (SELECT 1 FROM customer_opt_outs o WHERE o.customer_id = c.id AND o.channel = $2) AS opted_out
    FROM customers c
    WHERE ($3 = '' OR lower(c.location) = lower($3))
      AND ($4 = '' OR lower(c.preferred_product) = lower($4))
), ins AS (
    INSERT INTO outbound_messages (campaign_id, customer_id)
    SELECT $1, id FROM target WHERE NOT opted_out ORDER BY id
    RETURNING 1
)
SELECT (SELECT count(*) FROM ins) AS messages, (SELECT count(*) FROM target WHERE opted_out) AS skipped`

// CreateMessages inserts, inside tx (the caller's transaction, which also
// moves the campaign to sending), one pending message per customer of a who
// has not opted out of channel, with one statement, and records the send as
// an unpushed dispatch batch. Unknown ids in a give ErrUnknownCustomers
// listing them and insert nothing.
func (s *Service) CreateMessages(ctx context.Context, tx *sqlx.Tx, campaignID int64, channel string, a Audience) (Created, error) {
	var out struct {
		Messages int64 `db:"messages"`
		Skipped  int64 `db:"skipped"`
	}
	var err error
	if len(a.CustomerIDs) > 0 {
		if err := checkCustomersExist(ctx, tx, a.CustomerIDs); err != nil {
			return Created{}, err
		}
		err = tx.GetContext(ctx, &out, insertByIDsSQL, campaignID, channel, pq.Array(a.CustomerIDs))
	} else {
		loc, prod := strings.TrimSpace(a.Location), strings.TrimSpace(a.PreferredProduct)
		if a.All {
			loc, prod = "", ""
		}
		err = tx.GetContext(ctx, &out, insertByFilterSQL, campaignID, channel, loc, prod)
	}
	if err != nil {
		return Created{}, postgres.Classify(err, "insert messages")
	}
	c := Created{Messages: out.Messages, SkippedOptedOut: out.Skipped}
	if c.Messages > 0 {
		if err := tx.GetContext(ctx, &c.BatchID, insertBatchSQL, campaignID, c.Messages); err != nil {
			return Created{}, postgres.Classify(err, "insert dispatch batch")
		}
	}
	return c, nil
}

func checkCustomersExist(ctx context.Context, tx *sqlx.Tx, ids []int64) error {
	var missing []int64
	if err := tx.SelectContext(ctx, &missing, missingCustomersSQL, pq.Array(ids)); err != nil {
		return postgres.Classify(err, "check customers")
	}
	if len(missing) == 0 {
		return nil
	}
	return ErrUnknownCustomers.
		Withf("%d of the customer ids do not exist (first: %d); nothing was sent", countMissing(ctx, tx, ids, len(missing)), missing[0]).
		WithDetail("missing_ids", missing)
}

// CancelPending marks the campaign's pending messages cancelled, inside tx
// (the campaign's cancel). Messages being delivered right now finish.
func (s *Service) CancelPending(ctx context.Context, tx *sqlx.Tx, campaignID int64) (int64, error) {
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
// dead-letter list, pushes every active message of the campaign (paging by
// id, so memory stays bounded for a million recipients) and marks the batch
// pushed. On failure the batch stays unpushed and the sweeper pushes it
// later; the error is for the caller's log.
func (s *Service) Enqueue(ctx context.Context, campaignID, batchID int64, forgetDead []int64) error {
	if err := s.queue.ForgetDead(ctx, forgetDead); err != nil {
		return err
	}
	if _, err := s.requeueActive(ctx, campaignID); err != nil {
		return err
	}
	if batchID == 0 {
		return nil
	}
	return s.repo.MarkPushed(ctx, batchID)
}
