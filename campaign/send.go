package campaign

import (
	"context"
	"crypto/sha256"
	"database/sql"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"strconv"
	"time"
	"unicode"

	"github.com/jmoiron/sqlx"

	"github.com/campaignd/dispatch/platform/channel"
	"github.com/campaignd/dispatch/platform/errs"
	"github.com/campaignd/dispatch/platform/loop"
	"github.com/campaignd/dispatch/platform/postgres"
	"github.com/campaignd/dispatch/platform/text"
)

// MaxSendIDs caps customer_ids in one send request (about 1 MB of JSON).
const MaxSendIDs = 100_000

// IdempotencyTTL is how long a send's Idempotency-Key is remembered.
const IdempotencyTTL = 24 * time.Hour

// ErrIdempotencyKeyReused is a key replayed with a different request.
var ErrIdempotencyKeyReused = errs.New(errs.KindConflict, "IDEMPOTENCY_KEY_REUSED",
	"this Idempotency-Key was used with a different request")

// Dispatcher creates and queues messages; the messaging feature implements
// it (through an adapter in app). The methods that take a tx run inside the
// campaign's own transaction, so the messages and the campaign's status
// change commit together. Nothing is pushed in the request: Enqueue runs
// after commit and wakes messaging's feeder, which queues the campaign's
// pending messages in turn with the other sending campaigns; a failure there
// loses nothing (the messages are pending, the feeder finds them), so
// callers report success regardless.
type Dispatcher interface {
	// CreateMessages inserts one pending message per customer of a who has
	// not opted out of channel. It returns an UNKNOWN_CUSTOMERS error when
	// ids in a do not exist.
	CreateMessages(ctx context.Context, tx *sqlx.Tx, campaignID int64, channel channel.Channel, a Audience) (Created, error)
	// CheckCustomers makes CreateMessages' check of customer ids on their
	// own, for an audience stored to be sent later: an UNKNOWN_CUSTOMERS
	// error listing the ids that name no customer, or nil.
	CheckCustomers(ctx context.Context, ids []int64) error
	// CancelPending marks the campaign's pending messages cancelled.
	CancelPending(ctx context.Context, tx *sqlx.Tx, campaignID int64) (int64, error)
	// ResetFailed gives the campaign's failed messages fresh attempts
	// (pending, retry_count 0) and returns their ids.
	ResetFailed(ctx context.Context, tx *sqlx.Tx, campaignID int64) (batchID int64, ids []int64, err error)
	// MarkForPush records that the campaign's active messages need pushing.
	MarkForPush(ctx context.Context, tx *sqlx.Tx, campaignID int64) (batchID int64, err error)
	// Enqueue removes forgetDead from the dead-letter list and asks for the
	// campaign's pending messages to be queued.
	Enqueue(ctx context.Context, campaignID, batchID int64, messageIDs, forgetDead []int64) error
}

// Created is what CreateMessages did.
type Created struct {
	BatchID         int64
	Messages        int64
	SkippedOptedOut int64
}

// SendInput is the body of POST /campaigns/{id}/send: customer_ids, or an
// audience, or neither to use the audience stored with the campaign.
type SendInput struct {
	CustomerIDs []int64   `json:"customer_ids"`
	Audience    *Audience `json:"audience"`
}

// SendResult is the 202 body of a send.
type SendResult struct {
	CampaignID        int64  `json:"campaign_id"`
	MessagesQueued    int64  `json:"messages_queued"`
	Status            Status `json:"status"`
	DuplicatesRemoved int    `json:"duplicates_removed"`
	SkippedOptedOut   int64  `json:"skipped_opted_out"`
}

// Replay is a stored response returned again for a repeated Idempotency-Key.
type Replay struct {
	StatusCode int
	Body       []byte
}

// WithDispatch enables Send and the lifecycle controls: d creates and queues
// messages, log records what no request returns (a deferred queue push, a
// scheduled dispatch).
func (s *Service) WithDispatch(d Dispatcher, log *slog.Logger) *Service {
	s.dispatcher, s.log = d, log
	return s
}

// Send moves campaign id from draft or scheduled to sending and creates one
// message per distinct customer of the audience, all in one transaction,
// then queues them.
//
// Errors: VALIDATION_ERROR for a bad audience or key, CAMPAIGN_NOT_FOUND,
// CAMPAIGN_NOT_SENDABLE when the campaign is in any other status (so of
// concurrent sends exactly one succeeds), UNKNOWN_CUSTOMERS, EMPTY_AUDIENCE
// (nothing is created for either), IDEMPOTENCY_KEY_REUSED. With a non-empty
// key, a repeat of a successful request returns the first response as a
// Replay instead.
func (s *Service) Send(ctx context.Context, id int64, in SendInput, key string) (SendResult, *Replay, error) {
	if err := validateIdempotencyKey(key); err != nil {
		return SendResult{}, nil, err
	}
	var (
		res     SendResult
		replay  *Replay
		created Created
	)
	err := postgres.InTxRetrying(ctx, s.repo.db, func(tx *sqlx.Tx) error {
		if key != "" {
			// Taking the key first makes a concurrent request with the same
			// key wait here for this transaction, then replay its answer.
			r, err := claimIdempotencyKey(ctx, tx, key, sendHash(id, in))
			if err != nil || r != nil {
				replay = r
				return err
			}
		}
		c, err := s.repo.transition(ctx, tx, id, ErrNotSendable, "send", StatusDraft, StatusScheduled)
		if err != nil {
			return err
		}
		a, dups, err := resolveAudience(in, c.Audience)
		if err != nil {
			return err
		}
		created, err = s.dispatch(ctx, tx, c, a)
		if err != nil {
			return err
		}
		res = SendResult{CampaignID: id, MessagesQueued: created.Messages, Status: StatusSending,
			DuplicatesRemoved: dups, SkippedOptedOut: created.SkippedOptedOut}
		if key != "" {
			return storeIdempotentResponse(ctx, tx, key, http.StatusAccepted, res)
		}
		return nil
	})
	if err != nil || replay != nil {
		return SendResult{}, replay, err
	}
	s.enqueue(ctx, id, created.BatchID, nil, nil)
	return res, nil, nil
}

// dispatch moves the locked campaign c to sending and creates its messages
// for audience a, inside tx.
func (s *Service) dispatch(ctx context.Context, tx *sqlx.Tx, c Campaign, a Audience) (Created, error) {
	if err := s.repo.setStatus(ctx, tx, c.ID, StatusSending, nil); err != nil {
		return Created{}, err
	}
	created, err := s.dispatcher.CreateMessages(ctx, tx, c.ID, c.Channel, a)
	if err != nil {
		return Created{}, fmt.Errorf("send campaign %d: %w", c.ID, err)
	}
	if created.Messages == 0 {
		return Created{}, ErrEmptyAudience.
			Withf("the audience of campaign %d matches no customer who may be messaged on %s (%d opted out); nothing was sent",
				c.ID, c.Channel, created.SkippedOptedOut).
			WithDetail("skipped_opted_out", created.SkippedOptedOut)
	}
	return created, nil
}

// enqueue asks for the messages to be queued after commit; a failure is
// logged, not returned: the messages are stored and the feeder queues them.
func (s *Service) enqueue(ctx context.Context, id, batchID int64, messageIDs, forgetDead []int64) {
	// The push should finish even if the client hangs up now.
	ctx = context.WithoutCancel(ctx)
	if err := s.dispatcher.Enqueue(ctx, id, batchID, messageIDs, forgetDead); err != nil {
		s.log.WarnContext(ctx, "committed, but the dead-letter list could not be updated; the messages are queued anyway",
			"campaign_id", id, "batch_id", batchID, "err", err)
	}
}

// validateSendIDs checks customer_ids and removes duplicates, keeping the
// first occurrence's order.
func validateSendIDs(ids []int64) ([]int64, int, error) {
	if len(ids) == 0 {
		return nil, 0, errs.Validation("customer_ids", "customer_ids must be a non-empty array of customer ids")
	}
	if len(ids) > MaxSendIDs {
		return nil, 0, errs.Validation("customer_ids", "customer_ids has %d ids; at most %d are allowed per request", len(ids), MaxSendIDs)
	}
	seen := make(map[int64]struct{}, len(ids))
	out := make([]int64, 0, len(ids))
	for i, id := range ids {
		if id <= 0 {
			return nil, 0, errs.Validation("customer_ids", "customer_ids[%d] is %d; ids are positive integers", i, id)
		}
		if _, dup := seen[id]; dup {
			continue
		}
		seen[id] = struct{}{}
		out = append(out, id)
	}
	return out, len(ids) - len(out), nil
}

func validateIdempotencyKey(key string) error {
	// The service's text rule first: a header may carry any byte, and
	// invalid UTF-8 cannot be stored (range below would see it as U+FFFD,
	// which is printable).
	if err := text.Line("Idempotency-Key", key, 0, 200); err != nil {
		return err
	}
	for _, r := range key {
		if !unicode.IsPrint(r) {
			return errs.Validation("Idempotency-Key", "the Idempotency-Key header has a non-printable character")
		}
	}
	return nil
}

// sendHash fingerprints a send request: the same key with another campaign
// or another audience is a different request.
func sendHash(id int64, in SendInput) string {
	b, _ := json.Marshal(in) // cannot fail: plain types
	h := sha256.New()
	h.Write([]byte("send:" + strconv.FormatInt(id, 10) + ":"))
	h.Write(b)
	return hex.EncodeToString(h.Sum(nil))
}

// The insert takes the key, or takes over an expired one. It returns no row
// when a live row exists, which then decides replay or reuse.
const claimKeySQL = `
INSERT INTO idempotency_keys (key, request_hash, status_code, response)
VALUES ($1, $2, 0, '')
ON CONFLICT (key) DO UPDATE
    SET request_hash = EXCLUDED.request_hash, status_code = 0, response = '', created_at = now()
    WHERE idempotency_keys.created_at < now() - $3::interval
RETURNING key`

func claimIdempotencyKey(ctx context.Context, tx *sqlx.Tx, key, hash string) (*Replay, error) {
	var got string
	err := tx.GetContext(ctx, &got, claimKeySQL, key, hash, fmt.Sprintf("%d seconds", int(IdempotencyTTL.Seconds())))
	if err == nil {
		return nil, nil
	}
	if !errors.Is(err, sql.ErrNoRows) {
		return nil, postgres.Classify(err, "claim idempotency key")
	}
	var row struct {
		Hash     string `db:"request_hash"`
		Status   int    `db:"status_code"`
		Response []byte `db:"response"`
	}
	if err := tx.GetContext(ctx, &row, `SELECT request_hash, status_code, response FROM idempotency_keys WHERE key = $1`, key); err != nil {
		return nil, postgres.Classify(err, "read idempotency key")
	}
	if row.Hash != hash {
		return nil, ErrIdempotencyKeyReused
	}
	return &Replay{StatusCode: row.Status, Body: row.Response}, nil
}

func storeIdempotentResponse(ctx context.Context, tx *sqlx.Tx, key string, status int, body any) error {
	b, err := json.Marshal(body)
	if err != nil {
		return fmt.Errorf("encode idempotent response: %w", err)
	}
	_, err = tx.ExecContext(ctx, `UPDATE idempotency_keys SET status_code = $2, response = $3 WHERE key = $1`, key, status, b)
	return postgres.Classify(err, "store idempotent response")
}

// setStatus sets a locked campaign's status (and reason) inside tx. The
// first move to sending stamps started_at; a move to sent, failed or
// cancelled stamps finished_at, and a move back to sending (retry-failed)
// clears it.
func (r *Repo) setStatus(ctx context.Context, tx *sqlx.Tx, id int64, status Status, reason *string) error {
	_, err := tx.ExecContext(ctx, `
UPDATE campaigns
SET status = $2::text, status_reason = $3, updated_at = now(),
    started_at = CASE WHEN $2::text = 'sending' THEN coalesce(started_at, now()) ELSE started_at END,
    finished_at = CASE WHEN $2::text IN ('sent', 'failed', 'cancelled') THEN now()
                       WHEN $2::text = 'sending' THEN NULL
                       ELSE finished_at END
WHERE id = $1`,
		id, status, reason)
	if err != nil {
		return postgres.Classify(err, fmt.Sprintf("set campaign %d %s", id, status))
	}
	return emitStatus(ctx, tx, id, status, reason)
}

// Finish moves every sending campaign whose messages are all final to sent
// (at least one sent) or failed (none sent) and returns how many it moved.
// While a campaign's counters (campaign_stats) show messages pending or
// sending, or its audience is still being materialised, it is skipped
// without reading its messages: the check that they are all final reads
// every message of the campaign (outbound_messages_campaign_id_idx, since
// 00019; the index of active messages it walked before held mostly dead
// versions for a campaign in flight, 55-73 ms a check at a million), and
// this runs every sweeper.finish_interval. So the check runs about once
// per campaign, when it is about to finish. The CASE keeps PostgreSQL
// from turning the NOT EXISTS into a join that reads before the cheap
// tests. Counters that showed none active while some are would not finish
// a campaign early: the messages are still checked. Counters that showed
// some active while none are would hold it open until `dispatch stats
// rebuild` corrects them.
// The update is guarded by status = 'sending', so several replicas running
// it at once finish each campaign exactly once. It reads outbound_messages
// and dispatch_batches (the messaging feature's tables): a campaign whose
// audience is still being materialised is not finished. Test sends are
// not the campaign's messages: one in flight does not hold the campaign
// open, nor does a sent one make it sent.
func (r *Repo) Finish(ctx context.Context) ([]Finished, error) {
	var out []Finished
	err := postgres.InTx(ctx, r.db, func(tx *sqlx.Tx) error {
		out = out[:0]
		if err := tx.SelectContext(ctx, &out, finishSQL); err != nil {
			return postgres.Classify(err, "finish campaigns")
		}
		// Each campaign.finished event commits with its campaign's change.
		for _, f := range out {
			if err := emitStatus(ctx, tx, f.ID, f.Status, nil); err != nil {
				return err
			}
		}
		return nil
	})
	return out, err
}

const finishSQL = `
UPDATE campaigns k
SET status = CASE WHEN EXISTS (SELECT 1 FROM outbound_messages m WHERE m.campaign_id = k.id AND m.status IN ('sent', 'delivered', 'undelivered') AND NOT m.test)
                  THEN 'sent' ELSE 'failed' END,
    updated_at = now(), finished_at = now()
WHERE k.status = 'sending'
  AND CASE WHEN (SELECT coalesce(sum(s.pending + s.sending), 0) FROM campaign_stats s WHERE s.campaign_id = k.id) > 0
           THEN false
           WHEN EXISTS (SELECT 1 FROM dispatch_batches b WHERE b.campaign_id = k.id AND b.filter IS NOT NULL)
           THEN false
           ELSE NOT EXISTS (SELECT 1 FROM outbound_messages m
                            WHERE m.campaign_id = k.id AND m.status IN ('pending', 'sending') AND NOT m.test)
      END
RETURNING k.id, k.status`

// Finished is a campaign Finish completed.
type Finished struct {
	ID     int64  `db:"id"`
	Status Status `db:"status"`
}

// ExpireIdempotencyKeys deletes keys older than IdempotencyTTL.
func (r *Repo) ExpireIdempotencyKeys(ctx context.Context) (int64, error) {
	res, err := r.db.ExecContext(ctx, `DELETE FROM idempotency_keys WHERE created_at < now() - $1::interval`,
		fmt.Sprintf("%d seconds", int(IdempotencyTTL.Seconds())))
	if err != nil {
		return 0, postgres.Classify(err, "expire idempotency keys")
	}
	return res.RowsAffected()
}

// RunFinisher completes finished campaigns every interval until ctx ends,
// drops the rates' old per-second counts twice a minute and expired
// idempotency keys once an hour, backing off while
// PostgreSQL is down (loop.Every). It returns when ctx ends.
func (s *Service) RunFinisher(ctx context.Context, interval time.Duration) {
	lastExpire, lastFinishes := time.Time{}, time.Time{}
	loop.Every(ctx, interval, "finisher", s.log, func(ctx context.Context) error {
		done, err := s.repo.Finish(ctx)
		for _, f := range done {
			s.log.Info("campaign finished", "campaign_id", f.ID, "status", f.Status)
		}
		if err != nil {
			return fmt.Errorf("finish campaigns: %w", err)
		}
		// The rates' per-second counts live two minutes; deleting them
		// twice a minute keeps the table at a few minutes of seconds.
		if time.Since(lastFinishes) > 30*time.Second {
			lastFinishes = time.Now()
			if _, err := s.repo.ExpireFinishes(ctx); err != nil {
				return fmt.Errorf("expire rate counts: %w", err)
			}
		}
		if time.Since(lastExpire) > time.Hour {
			lastExpire = time.Now() // a failure waits for the next hour too
			n, err := s.repo.ExpireIdempotencyKeys(ctx)
			if err != nil {
				return fmt.Errorf("expire idempotency keys: %w", err)
			}
			if n > 0 {
				s.log.Info("expired idempotency keys", "count", n)
			}
		}
		return nil
	})
}
