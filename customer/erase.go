package customer

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"strconv"

	"github.com/jmoiron/sqlx"

	"github.com/campaignd/dispatch/platform/auth"
	"github.com/campaignd/dispatch/platform/postgres"
)

// MessageEraser removes a customer from the messages sent or to be sent to
// them. The messaging feature implements it; app passes it in (WithEraser).
type MessageEraser interface {
	// EraseCustomer cancels the customer's pending messages and removes
	// their phone and rendered text from every message of theirs, in one
	// transaction, and returns how many it cancelled. It must be
	// idempotent: Erase runs it again when a first erasure stopped between
	// the messages and the customer's row.
	EraseCustomer(ctx context.Context, customerID int64) (cancelled int64, err error)
}

// erasure is what Erase needs besides the Repo.
type erasure struct {
	eraser MessageEraser
	log    *slog.Logger
	// slot lets one erasure run at a time in this process. An erasure
	// holds a connection (the customer's row lock) while the eraser takes a
	// second one; without the slot, as many concurrent erasures as the pool
	// has connections would each hold one and wait for another forever.
	slot chan struct{}
}

// WithEraser enables Erase: e removes the customer from their messages
// first, and log records each erasure (nil: nowhere). Call it while wiring,
// before the Service is used; it returns s.
func (s *Service) WithEraser(e MessageEraser, log *slog.Logger) *Service {
	if log == nil {
		log = slog.New(slog.NewTextHandler(io.Discard, nil))
	}
	s.erase = erasure{eraser: e, log: log, slot: make(chan struct{}, 1)}
	return s
}

// Erase removes customer id: their messages keep their status and counts
// but lose the phone and the rendered text, their pending messages are
// cancelled (by the MessageEraser), and then the customer's row goes, with
// their opt-outs. It logs the erasure at info with the API key that asked
// (auth.FromContext). An unknown customer is an error matching ErrNotFound,
// and nothing is done.
//
// The customer's row is locked first, so no send can create a message for
// them while their messages are erased, and deleted after the eraser has
// committed. If the deletion fails or never happens (a crash), the
// customer remains with anonymised messages, and erasing again completes
// it; never is the row gone while a pending message is still addressed to
// them.
func (s *Service) Erase(ctx context.Context, id int64) error {
	e := s.erase
	if e.eraser == nil {
		return errors.New("customer erasure is not wired: the customer service has no MessageEraser (WithEraser)")
	}
	select {
	case e.slot <- struct{}{}:
		defer func() { <-e.slot }()
	case <-ctx.Done():
		return fmt.Errorf("erase customer %d: %w", id, ctx.Err())
	}
	tx, err := s.repo.lockForErase(ctx, id)
	if err != nil {
		return err
	}
	defer tx.rollback()
	cancelled, err := e.eraser.EraseCustomer(ctx, id)
	if err != nil {
		return fmt.Errorf("erase customer %d from their messages: %w", id, err)
	}
	if err := tx.delete(ctx); err != nil {
		return err
	}
	// Never the key itself: its id and name identify it.
	key, _ := auth.FromContext(ctx)
	e.log.InfoContext(ctx, "customer erased", "customer_id", id, "messages_cancelled", cancelled,
		"api_key_id", key.ID, "api_key_name", key.Name)
	return nil
}

// eraseTx is the transaction that holds a customer's row while their
// messages are erased, and deletes it. It is not safe for concurrent use.
type eraseTx struct {
	tx *sqlx.Tx
	id int64
}

// lockForEraseSQL takes the row lock a deletion takes. A statement that
// creates messages for the customer (a send, the materialiser) locks the
// row FOR KEY SHARE, which conflicts with it, so it waits, then finds the
// row gone (a send reports the id unknown) and creates nothing for it.
const lockForEraseSQL = `SELECT id FROM customers WHERE id = $1 FOR UPDATE`

// lockForErase starts the transaction that erases customer id, locking the
// row. An unknown id is ErrNotFound. The caller ends it with delete or
// rollback.
func (r *Repo) lockForErase(ctx context.Context, id int64) (*eraseTx, error) {
	what := "lock customer " + strconv.FormatInt(id, 10) + " to erase it"
	tx, err := r.db.BeginTxx(ctx, nil)
	if err != nil {
		return nil, postgres.Classify(err, what)
	}
	var got int64
	if err := tx.GetContext(ctx, &got, lockForEraseSQL, id); err != nil {
		_ = tx.Rollback()
		if errors.Is(err, sql.ErrNoRows) {
			return nil, ErrNotFound.Withf("customer %d not found", id)
		}
		return nil, postgres.Classify(err, what)
	}
	return &eraseTx{tx: tx, id: id}, nil
}

// deleteSQL removes the customer. Their opt-outs go with them (ON DELETE
// CASCADE, 00003); their messages stay with customer_id NULL (the
// customers_release_messages trigger, 00018).
const deleteSQL = `DELETE FROM customers WHERE id = $1`

// delete deletes the locked customer and commits.
func (t *eraseTx) delete(ctx context.Context) error {
	what := "delete customer " + strconv.FormatInt(t.id, 10)
	if _, err := t.tx.ExecContext(ctx, deleteSQL, t.id); err != nil {
		return postgres.Classify(err, what)
	}
	return postgres.Classify(t.tx.Commit(), what)
}

// rollback ends the transaction, deleting nothing. After delete it does
// nothing.
func (t *eraseTx) rollback() { _ = t.tx.Rollback() }
