package campaign

import (
	"context"

	"github.com/jmoiron/sqlx"

	"github.com/campaignd/dispatch/platform/outbox"
)

// StatusEvent is the data of the campaign.* webhook events.
type StatusEvent struct {
	CampaignID   int64   `json:"campaign_id"`
	Status       Status  `json:"status"`
	StatusReason *string `json:"status_reason"`
	// Stats are the final counts, on campaign.finished only.
	Stats *Stats `json:"stats,omitempty"`
}

// emitStatus writes the webhook event a move to status makes, in tx, the
// transaction that makes the move, so the event goes out if and only if
// the move commits: campaign.sending, campaign.paused, or campaign.finished
// (sent, failed or cancelled) with the final stats. Other statuses emit
// nothing.
func emitStatus(ctx context.Context, tx *sqlx.Tx, id int64, status Status, reason *string) error {
	ev := StatusEvent{CampaignID: id, Status: status, StatusReason: reason}
	var typ outbox.EventType
	switch status {
	case StatusSending:
		typ = outbox.CampaignSending
	case StatusPaused:
		typ = outbox.CampaignPaused
	case StatusSent, StatusFailed, StatusCancelled:
		typ = outbox.CampaignFinished
		st, err := statsOne(ctx, tx, id)
		if err != nil {
			return err
		}
		ev.Stats = &st
	default:
		return nil
	}
	return outbox.Emit(ctx, tx, typ, ev)
}
