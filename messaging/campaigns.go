package messaging

import (
	"context"
	"sync"
	"time"

	"github.com/campaignd/dispatch/platform/postgres"
)

// campaignStatusTTL bounds how stale the pool's view of a campaign's status
// may be: a delivery that starts more than this after a pause or cancel sees
// it. One query per campaign per TTL, not one per message.
const campaignStatusTTL = 200 * time.Millisecond

// campaignStatuses caches campaign statuses for the check each delivery
// makes just before it sends.
type campaignStatuses struct {
	repo *Repo
	now  func() time.Time

	mu      sync.Mutex
	entries map[int64]campaignStatus
}

type campaignStatus struct {
	status     string
	at         time.Time
	refreshing bool // one delivery re-reads an expired status; the others use the old one meanwhile
}

// sending reports whether campaign id is still sending. If the status cannot
// be read it says yes: the claim already checked it moments ago, and a
// delivery must not stall on a database hiccup.
func (c *campaignStatuses) sending(ctx context.Context, id int64) bool {
	now := c.now()
	c.mu.Lock()
	e, ok := c.entries[id]
	if ok && (now.Sub(e.at) < campaignStatusTTL || e.refreshing) {
		c.mu.Unlock()
		return e.status == "sending"
	}
	if ok {
		e.refreshing = true
		c.entries[id] = e
	}
	c.mu.Unlock()

	status := "sending"
	// campaigns is the campaign feature's table; the pool only reads it.
	if err := c.repo.db.GetContext(ctx, &status, `SELECT status FROM campaigns WHERE id = $1`, id); err != nil {
		_ = postgres.Classify(err, "read campaign status")
		status = "sending"
	}
	c.mu.Lock()
	if len(c.entries) > 10_000 {
		c.entries = map[int64]campaignStatus{} // bounded: campaigns come and go
	}
	c.entries[id] = campaignStatus{status: status, at: c.now()}
	c.mu.Unlock()
	return status == "sending"
}
