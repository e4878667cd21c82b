package messaging

import (
	"context"
	"strconv"

	"github.com/jmoiron/sqlx"

	"github.com/campaignd/dispatch/platform/postgres"
)

// Erasing a customer (DELETE /customers/{id}) is the customer feature's
// decision. This is messaging's part of it, which the customer feature runs
// first, before it deletes the customer's row: a crash between the two
// leaves a customer whose messages are already anonymised, never messages
// still addressed to a customer who is gone. The row's deletion then sets
// customer_id NULL on every message (the customers_release_messages
// trigger, 00018; the foreign key's ON DELETE SET NULL before it).

// cancelErasedSQL cancels the customer's messages not yet claimed, with the
// claim's wording for a message it does not send ("not sent: ..."). Their
// ids may still be queued in Redis: the claim finds them final and drops
// them. The messages are locked in id order first, as a campaign's cancel
// locks its own (cancelPendingSQL), so it cannot deadlock with a claim.
//
// Messages in sending are left alone: a worker holds each one and the
// provider may already have accepted it, so calling it cancelled could be
// false; the worker's record (guarded by status = 'sending') stores what
// really happened, and a message whose worker died is reclaimed after its
// lease like any other. See EraseCustomer for what that guard does not yet
// cover.
const cancelErasedSQL = `
UPDATE outbound_messages
SET status = 'cancelled', last_error = 'not sent: customer erased', updated_at = now()
WHERE id IN (SELECT id FROM outbound_messages WHERE customer_id = $1 AND status = 'pending' ORDER BY id FOR UPDATE)
  AND status = 'pending'`

// anonymiseSQL removes the recipient from every message of the customer,
// whatever its status: the text rendered for them (which may hold their
// name) and the phone a message may carry. Status, counts, costs, provider
// ids and times stay, so the campaign's stats do not change. updated_at is
// left alone: the lease of a message in sending is measured from it.
const anonymiseSQL = `
UPDATE outbound_messages
SET rendered_content = NULL, phone = NULL
WHERE customer_id = $1 AND (rendered_content IS NOT NULL OR phone IS NOT NULL)`

// forgetMockContentSQL clears the text the mock provider's ledger kept for
// the customer's messages (mock_deliveries, messaging/provider/mock).
const forgetMockContentSQL = `
UPDATE mock_deliveries d SET content = ''
FROM outbound_messages m
WHERE m.id = d.message_id AND m.customer_id = $1 AND d.content <> ''`

// EraseCustomer cancels customer customerID's pending messages (status
// cancelled, last_error "not sent: customer erased") and removes the
// customer's phone and rendered text from all their messages, in one
// transaction, and returns how many messages it cancelled. It is the
// customer feature's MessageEraser, run before the customer's row is
// deleted. It is idempotent: run again, it cancels and changes nothing more,
// and for an unknown customer it does nothing.
//
// Messages in sending are not cancelled (see cancelErasedSQL). Two gaps
// remain for them, outside this statement: the record stores the rendered
// text of a message that ends sent, so a message in flight during the
// erasure gets its text back; and the claim joins customers to load the
// recipient, so a message of an erased customer that goes back to pending
// (a retry) or is reclaimed after its lease is claimed without being
// delivered, lease after lease. Both need the claim and the record to treat
// a message without customer and phone as erased.
func (r *Repo) EraseCustomer(ctx context.Context, customerID int64) (cancelled int64, err error) {
	what := "erase customer " + strconv.FormatInt(customerID, 10) + " from their messages"
	err = postgres.InTx(ctx, r.db, func(tx *sqlx.Tx) error {
		res, err := tx.ExecContext(ctx, cancelErasedSQL, customerID)
		if err != nil {
			return postgres.Classify(err, what)
		}
		if cancelled, err = res.RowsAffected(); err != nil {
			return postgres.Classify(err, what)
		}
		if _, err := tx.ExecContext(ctx, anonymiseSQL, customerID); err != nil {
			return postgres.Classify(err, what)
		}
		if _, err := tx.ExecContext(ctx, forgetMockContentSQL, customerID); err != nil {
			return postgres.Classify(err, what)
		}
		return nil
	})
	if err != nil {
		return 0, err
	}
	return cancelled, nil
}
