package campaign

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"time"

	"github.com/jmoiron/sqlx"

	"github.com/campaignd/dispatch/platform/errs"
	"github.com/campaignd/dispatch/platform/loop"
	"github.com/campaignd/dispatch/platform/postgres"
)

// The scheduler takes one due campaign at a time, locked with SKIP LOCKED so
// replicas running it together pick different campaigns, and dispatches it
// in the same transaction as the guarded move to sending: each scheduled
// campaign is dispatched exactly once however many replicas run.
const dueSQL = `
SELECT ` + campaignColumns + `
FROM campaigns
WHERE status = 'scheduled' AND scheduled_at <= now() AND audience IS NOT NULL
ORDER BY scheduled_at, id
LIMIT 1
FOR NO KEY UPDATE SKIP LOCKED`

// DispatchDue dispatches every scheduled campaign whose time has come and
// returns how many it handled. A campaign due more than maxLateness ago (the
// service was down) is not sent; it becomes failed with a reason. One whose
// audience matches nobody, or names customers that no longer exist, also
// becomes failed with a reason.
func (s *Service) DispatchDue(ctx context.Context, maxLateness time.Duration) (int, error) {
	handled := 0
	for {
		var (
			c       Campaign
			created Created
			found   bool
		)
		err := postgres.InTxRetrying(ctx, s.repo.db, func(tx *sqlx.Tx) error {
			err := tx.GetContext(ctx, &c, dueSQL)
			if errors.Is(err, sql.ErrNoRows) {
				return nil
			}
			if err != nil {
				return postgres.Classify(err, "find due campaigns")
			}
			found, c = true, c.utc()
			if late := s.now().Sub(*c.ScheduledAt); late > maxLateness {
				reason := fmt.Sprintf("not sent: due at %s but picked up %s late, more than the allowed %s (SCHEDULE_MAX_LATENESS)",
					c.ScheduledAt.Format(time.RFC3339), late.Round(time.Second), maxLateness)
				c.Status = StatusFailed
				c.StatusReason = &reason
				return s.repo.setStatus(ctx, tx, c.ID, StatusFailed, &reason)
			}
			a, _, err := c.Audience.validate("audience")
			if err == nil {
				created, err = s.dispatch(ctx, tx, c, a)
			}
			var e *errs.Error
			if errors.As(err, &e) && e.Kind != errs.KindUnavailable && e.Kind != errs.KindInternal {
				// The audience cannot be sent (matches nobody, unknown ids):
				// retrying will not help. Record why, in a fresh statement,
				// since dispatch may have left the transaction mid-way.
				return errFailCampaign{reason: "not sent: " + e.Message}
			}
			return err
		})
		var fail errFailCampaign
		if errors.As(err, &fail) {
			if err := s.repo.failScheduled(ctx, c.ID, fail.reason); err != nil {
				return handled, err
			}
			s.log.WarnContext(ctx, "scheduled campaign could not be sent", "campaign_id", c.ID, "reason", fail.reason)
			handled++
			continue
		}
		if err != nil || !found {
			return handled, err
		}
		handled++
		if c.Status == StatusFailed {
			s.log.WarnContext(ctx, "scheduled campaign came due too late; not sent", "campaign_id", c.ID, "reason", *c.StatusReason)
			continue
		}
		s.log.InfoContext(ctx, "scheduled campaign dispatched", "campaign_id", c.ID, "messages", created.Messages,
			"skipped_opted_out", created.SkippedOptedOut)
		s.enqueue(ctx, c.ID, created.BatchID, nil, nil)
	}
}

type errFailCampaign struct{ reason string }

func (e errFailCampaign) Error() string { return e.reason }

// failScheduled marks a still-scheduled campaign failed with reason, and
// emits its campaign.finished event in the same transaction.
func (r *Repo) failScheduled(ctx context.Context, id int64, reason string) error {
	return postgres.InTx(ctx, r.db, func(tx *sqlx.Tx) error {
		res, err := tx.ExecContext(ctx, `
UPDATE campaigns SET status = 'failed', status_reason = $2, finished_at = now(), updated_at = now()
WHERE id = $1 AND status = 'scheduled'`, id, reason)
		if err != nil {
			return postgres.Classify(err, fmt.Sprintf("fail campaign %d", id))
		}
		if n, _ := res.RowsAffected(); n == 0 {
			return nil
		}
		return emitStatus(ctx, tx, id, StatusFailed, &reason)
	})
}

// RunScheduler dispatches due campaigns at once and then every interval
// until ctx ends, backing off while PostgreSQL is down (loop.Every). It
// returns when ctx ends.
func (s *Service) RunScheduler(ctx context.Context, interval, maxLateness time.Duration) {
	loop.Every(ctx, interval, "scheduler", s.log, func(ctx context.Context) error {
		_, err := s.DispatchDue(ctx, maxLateness)
		return err
	})
}
