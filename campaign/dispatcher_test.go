package campaign

import (
	"context"

	"github.com/jmoiron/sqlx"

	"github.com/campaignd/dispatch/messaging"
	"github.com/campaignd/dispatch/platform/channel"
)

// messagingDispatcher wires the real messaging feature into campaign tests,
// as app does in production (app cannot be imported here: it imports campaign).
type messagingDispatcher struct{ *messaging.Service }

func (d messagingDispatcher) CreateMessages(ctx context.Context, tx *sqlx.Tx, campaignID int64, ch channel.Channel, a Audience) (Created, error) {
	c, err := d.Service.CreateMessages(ctx, tx, campaignID, string(ch), messaging.Audience(a))
	return Created(c), err
}
