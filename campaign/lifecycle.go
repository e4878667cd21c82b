package campaign

import (
	"context"
	"database/sql"
	"encoding/json"
	"errors"
	"fmt"
	"time"

	"github.com/jmoiron/sqlx"

	"github.com/campaignd/dispatch/platform/errs"
	"github.com/campaignd/dispatch/platform/httpx"
	"github.com/campaignd/dispatch/platform/postgres"
	"github.com/campaignd/dispatch/platform/window"
)

// ActionResult is the body of pause, resume, cancel and retry-failed.
type ActionResult struct {
	CampaignID int64  `json:"campaign_id"`
	Status     Status `json:"status"`
	// MessagesCancelled is set by cancel: pending messages that will not be sent.
	MessagesCancelled *int64 `json:"messages_cancelled,omitempty"`
	// MessagesRequeued is set by retry-failed: failed messages given fresh attempts.
	MessagesRequeued *int64 `json:"messages_requeued,omitempty"`
}

// transition locks campaign id inside tx and checks that its status is one
// of from. Otherwise it returns conflict (ErrInvalidTransition,
// ErrNotSendable, ErrNotEditable) naming action and the current status.
//
// Campaign rows are locked FOR NO KEY UPDATE, never FOR UPDATE: that still
// serialises transitions, but does not block the key-share lock that the
// statements creating a campaign's messages take on it (the materialiser,
// test sends; before 00018, the messages' foreign key). With FOR UPDATE, a
// cancel (campaign row, then the dispatch batch) and the materialiser
// (batch row, then the campaign) would deadlock. A DELETE of the campaign
// still waits for it.
func (r *Repo) transition(ctx context.Context, tx *sqlx.Tx, id int64, conflict *errs.Error, action string, from ...Status) (Campaign, error) {
	var c Campaign
	err := tx.GetContext(ctx, &c, `SELECT `+campaignColumns+` FROM campaigns WHERE id = $1 FOR NO KEY UPDATE`, id)
	if errors.Is(err, sql.ErrNoRows) {
		return c, ErrNotFound.Withf("campaign %d not found", id)
	}
	if err != nil {
		return c, postgres.Classify(err, fmt.Sprintf("lock campaign %d", id))
	}
	for _, f := range from {
		if c.Status == f {
			return c.utc(), nil
		}
	}
	return c, conflict.Withf("campaign %d is %s; %s needs it to be %s", id, c.Status, action, joinStatuses(from)).
		WithDetail("status", string(c.Status))
}

func joinStatuses(ss []Status) string {
	out := ""
	for i, s := range ss {
		switch {
		case i == 0:
		case i == len(ss)-1:
			out += " or "
		default:
			out += ", "
		}
		out += string(s)
	}
	return out
}

// Pause stops a sending campaign: workers leave its messages pending (the
// jobs they pop are dropped, and Resume queues them again), messages already
// being delivered finish. sending → paused.
func (s *Service) Pause(ctx context.Context, id int64) (ActionResult, error) {
	return s.pause(ctx, id, nil)
}

// AutoPause pauses a sending campaign for reason, kept as its
// status_reason until it is resumed: the error-rate brake uses it.
func (s *Service) AutoPause(ctx context.Context, id int64, reason string) error {
	_, err := s.pause(ctx, id, &reason)
	return err
}

func (s *Service) pause(ctx context.Context, id int64, reason *string) (ActionResult, error) {
	err := postgres.InTx(ctx, s.repo.db, func(tx *sqlx.Tx) error {
		if _, err := s.repo.transition(ctx, tx, id, ErrInvalidTransition, "pause", StatusSending); err != nil {
			return err
		}
		return s.repo.setStatus(ctx, tx, id, StatusPaused, reason)
	})
	if err != nil {
		return ActionResult{}, err
	}
	s.log.InfoContext(ctx, "campaign paused", "campaign_id", id, "reason", reason)
	return ActionResult{CampaignID: id, Status: StatusPaused}, nil
}

// Resume continues a paused campaign from where it stopped: its pending
// messages are queued again; sent ones are never sent again. paused → sending.
func (s *Service) Resume(ctx context.Context, id int64) (ActionResult, error) {
	var batchID int64
	err := postgres.InTx(ctx, s.repo.db, func(tx *sqlx.Tx) error {
		if _, err := s.repo.transition(ctx, tx, id, ErrInvalidTransition, "resume", StatusPaused); err != nil {
			return err
		}
		if err := s.repo.setStatus(ctx, tx, id, StatusSending, nil); err != nil {
			return err
		}
		var err error
		batchID, err = s.dispatcher.MarkForPush(ctx, tx, id)
		return err
	})
	if err != nil {
		return ActionResult{}, err
	}
	s.enqueue(ctx, id, batchID, nil, nil)
	s.log.InfoContext(ctx, "campaign resumed", "campaign_id", id)
	return ActionResult{CampaignID: id, Status: StatusSending}, nil
}

// Cancel stops a campaign for good: its pending messages become cancelled
// and are never sent (a message already being delivered finishes).
// draft | scheduled | sending | paused → cancelled.
func (s *Service) Cancel(ctx context.Context, id int64) (ActionResult, error) {
	var n int64
	// Retried if PostgreSQL aborts it to break a deadlock: it changes every
	// pending message while the workers claim some of them (both lock in id
	// order, see messaging's cancelPendingSQL, so this is a safety net).
	err := postgres.InTxRetrying(ctx, s.repo.db, func(tx *sqlx.Tx) error {
		if _, err := s.repo.transition(ctx, tx, id, ErrInvalidTransition, "cancel",
			StatusDraft, StatusScheduled, StatusSending, StatusPaused); err != nil {
			return err
		}
		if err := s.repo.setStatus(ctx, tx, id, StatusCancelled, nil); err != nil {
			return err
		}
		var err error
		n, err = s.dispatcher.CancelPending(ctx, tx, id)
		return err
	})
	if err != nil {
		return ActionResult{}, err
	}
	s.log.InfoContext(ctx, "campaign cancelled", "campaign_id", id, "messages_cancelled", n)
	return ActionResult{CampaignID: id, Status: StatusCancelled, MessagesCancelled: &n}, nil
}

// RetryFailed gives a campaign's permanently failed messages fresh attempts:
// they go back to pending with retry_count 0, leave the dead-letter list and
// are queued; the campaign returns to sending. sent | failed | sending →
// sending. With no failed message it changes nothing and reports 0.
func (s *Service) RetryFailed(ctx context.Context, id int64) (ActionResult, error) {
	var (
		batchID int64
		ids     []int64
		status  Status
	)
	err := postgres.InTxRetrying(ctx, s.repo.db, func(tx *sqlx.Tx) error {
		c, err := s.repo.transition(ctx, tx, id, ErrInvalidTransition, "retry-failed", StatusSent, StatusFailed, StatusSending)
		if err != nil {
			return err
		}
		status = c.Status
		batchID, ids, err = s.dispatcher.ResetFailed(ctx, tx, id)
		if err != nil || len(ids) == 0 {
			return err
		}
		status = StatusSending
		return s.repo.setStatus(ctx, tx, id, StatusSending, nil)
	})
	if err != nil {
		return ActionResult{}, err
	}
	n := int64(len(ids))
	if n > 0 {
		s.enqueue(ctx, id, batchID, ids, ids)
		s.log.InfoContext(ctx, "failed messages requeued", "campaign_id", id, "messages", n)
	}
	return ActionResult{CampaignID: id, Status: status, MessagesRequeued: &n}, nil
}

// UpdateInput is the body of PATCH /campaigns/{id}. Each key is optional;
// scheduled_at, audience and send_window may be null to clear them.
type UpdateInput map[string]json.RawMessage

// Update edits a draft or scheduled campaign: name, base_template,
// scheduled_at (a future time makes it scheduled, null makes it draft) and
// audience (or customer_ids; null clears). Other statuses: CAMPAIGN_NOT_EDITABLE.
// New customer_ids that name no customer are UNKNOWN_CUSTOMERS, as at a send,
// and nothing changes.
func (s *Service) Update(ctx context.Context, id int64, in UpdateInput) (Campaign, error) {
	if len(in) == 0 {
		return Campaign{}, errs.Validation("body", "nothing to change: give name, base_template, scheduled_at, audience or send_window")
	}
	var out Campaign
	err := postgres.InTx(ctx, s.repo.db, func(tx *sqlx.Tx) error {
		c, err := s.repo.transition(ctx, tx, id, ErrNotEditable, "edit", StatusDraft, StatusScheduled)
		if err != nil {
			return err
		}
		if err := applyUpdate(&c, in, s.now(), s.tpl.Check); err != nil {
			return err
		}
		_, audience := in["audience"]
		_, ids := in["customer_ids"]
		if audience || ids {
			if err := s.checkAudience(ctx, c.Audience); err != nil {
				return err
			}
		}
		out, err = s.repo.update(ctx, tx, c)
		return err
	})
	return out, err
}

// applyUpdate validates in field by field and applies it to c.
func applyUpdate(c *Campaign, in UpdateInput, now time.Time, check func(string) error) error {
	for key, raw := range in {
		isNull := string(raw) == "null"
		switch key {
		case "name":
			var v string
			if err := json.Unmarshal(raw, &v); err != nil || isNull {
				return errs.InvalidJSON(`field "name" must be a string`).WithDetail("field", "name")
			}
			name, err := validateName(v)
			if err != nil {
				return err
			}
			c.Name = name
		case "base_template":
			var v string
			if err := json.Unmarshal(raw, &v); err != nil || isNull {
				return errs.InvalidJSON(`field "base_template" must be a string`).WithDetail("field", "base_template")
			}
			if err := validateTemplate("base_template", v, check); err != nil {
				return err
			}
			c.BaseTemplate = v
		case "scheduled_at":
			var v *string
			if err := json.Unmarshal(raw, &v); err != nil {
				return errs.InvalidJSON(`field "scheduled_at" must be an RFC 3339 string or null`).WithDetail("field", "scheduled_at")
			}
			at, status, err := parseSchedule(v, now)
			if err != nil {
				return err
			}
			c.ScheduledAt, c.Status = at, status
		case "audience", "customer_ids":
			if isNull {
				c.Audience = nil
				continue
			}
			var a *Audience
			var err error
			if key == "audience" {
				var v Audience
				if err := httpx.DecodeJSON(raw, &v); err != nil {
					return audienceJSONError(err)
				}
				a, err = optionalAudience(nil, &v)
			} else {
				var ids []int64
				if err := json.Unmarshal(raw, &ids); err != nil {
					return errs.InvalidJSON(`field "customer_ids" must be an array of integers`).WithDetail("field", key)
				}
				a, err = optionalAudience(ids, nil)
			}
			if err != nil {
				return err
			}
			c.Audience = a
		case "send_window":
			var w *window.Window
			if err := httpx.DecodeJSON(raw, &w); err != nil {
				return windowJSONError(err)
			}
			if w != nil {
				if err := w.Validate("send_window"); err != nil {
					return err
				}
			}
			c.SendWindow = w
		default:
			return errs.InvalidJSON("unknown field %s; editable: name, base_template, scheduled_at, audience, customer_ids, send_window", errs.Quote(key)).
				WithDetail("field", errs.Clip(key))
		}
	}
	if _, both := in["audience"]; both {
		if _, ids := in["customer_ids"]; ids {
			return errs.Validation("audience", "give customer_ids or audience, not both")
		}
	}
	return nil
}

// audienceJSONError places httpx.DecodeJSON's error about the audience
// field at it ("audience.location").
func audienceJSONError(err error) error {
	e := errs.InvalidJSON("field \"audience\" must be an audience object").WithDetail("field", "audience")
	var de *errs.Error
	if errors.As(err, &de) {
		e = errs.InvalidJSON("field \"audience\" must be an audience object: %s", de.Message).WithDetail("field", "audience")
		if f, ok := de.Details["field"].(string); ok {
			e = e.WithDetail("field", "audience."+f)
		}
	}
	return e
}

func (r *Repo) update(ctx context.Context, tx *sqlx.Tx, c Campaign) (Campaign, error) {
	var out Campaign
	err := tx.GetContext(ctx, &out, `
UPDATE campaigns
SET name = $2, base_template = $3, scheduled_at = $4, status = $5, audience = $6, send_window = $7, updated_at = now()
WHERE id = $1
RETURNING `+campaignColumns, c.ID, c.Name, c.BaseTemplate, c.ScheduledAt, c.Status, c.Audience, c.SendWindow)
	if err != nil {
		return out, postgres.Classify(err, fmt.Sprintf("update campaign %d", c.ID))
	}
	return out.utc(), nil
}
