package app

import (
	"context"

	"github.com/jmoiron/sqlx"

	"github.com/campaignd/dispatch/campaign"
	"github.com/campaignd/dispatch/messaging"
	"github.com/campaignd/dispatch/platform/channel"
)

// dispatcher adapts the messaging feature to campaign.Dispatcher, so that
// neither feature imports the other.
type dispatcher struct{ svc *messaging.Service }

func (d dispatcher) CreateMessages(ctx context.Context, tx *sqlx.Tx, campaignID int64, ch channel.Channel, a campaign.Audience) (campaign.Created, error) {
	// The two features' Audience and Created have the same fields, so they
	// convert directly; a field added to one only breaks this line.
	c, err := d.svc.CreateMessages(ctx, tx, campaignID, string(ch), messaging.Audience(a))
	return campaign.Created(c), err
}

func (d dispatcher) CheckCustomers(ctx context.Context, ids []int64) error {
	return d.svc.CheckCustomers(ctx, ids)
}

func (d dispatcher) CancelPending(ctx context.Context, tx *sqlx.Tx, campaignID int64) (int64, error) {
	return d.svc.CancelPending(ctx, tx, campaignID)
}

func (d dispatcher) ResetFailed(ctx context.Context, tx *sqlx.Tx, campaignID int64) (int64, []int64, error) {
	return d.svc.ResetFailed(ctx, tx, campaignID)
}

func (d dispatcher) MarkForPush(ctx context.Context, tx *sqlx.Tx, campaignID int64) (int64, error) {
	return d.svc.MarkForPush(ctx, tx, campaignID)
}

func (d dispatcher) Enqueue(ctx context.Context, campaignID, batchID int64, messageIDs, forgetDead []int64) error {
	return d.svc.Enqueue(ctx, campaignID, batchID, messageIDs, forgetDead)
}
