package messaging

import (
	"time"

	"github.com/campaignd/dispatch/platform/window"
)

// Send windows. A campaign may only deliver during its send window
// (campaigns.send_window, the campaign feature's column, which messaging
// only reads and parses with platform/window). Two places enforce it:
//   - the feeder does not feed a campaign while its window is closed, so
//     its pending messages stay in PostgreSQL until it opens;
//   - a delivery whose campaign's window is closed (fed just before it
//     closed, or a retry that came due outside it) is not attempted: the
//     message waits, retry_count and attempts unchanged, until the window
//     opens (NextAttemptAt), in the delayed set.

// sendingCampaign is a row of sendingCampaignsSQL.
type sendingCampaign struct {
	ID     int64  `db:"id"`
	Window []byte `db:"send_window"`
}

// openCampaigns returns the ids of the campaigns whose send window is open
// at now (or that have none), in the order given.
func openCampaigns(rows []sendingCampaign, now time.Time) []int64 {
	ids := make([]int64, 0, len(rows))
	for _, r := range rows {
		if w := parseWindow(r.Window); w == nil || w.Open(now) {
			ids = append(ids, r.ID)
		}
	}
	return ids
}

// parseWindow reads a stored send window; nil means none. The campaign
// feature validated it before storing it; one that does not parse counts
// as none, so that a bad row cannot hold a campaign back forever.
func parseWindow(raw []byte) *window.Window {
	w, err := window.Parse("send_window", raw)
	if err != nil {
		return nil
	}
	return w
}

// windowEntry is a campaign's send window as a status read found it.
type windowEntry struct {
	w  *window.Window
	at time.Time
}

// windowTTL is how long a window entry is kept without a read refreshing
// it. Only entries of campaigns that stopped being read (finished, or no
// longer delivering here) get that old, and dropping one is always safe:
// windowClosed is asked right after the read that sets it.
const windowTTL = time.Minute

// setWindow records what a status read of campaign id found: its window,
// kept only while it is sending and has one, so the map holds at most the
// sending campaigns with a window (plus stale entries, pruned once there
// are many). Called with c.mu not held.
func (c *campaignStatuses) setWindow(id int64, sending bool, raw []byte) {
	var w *window.Window
	if sending {
		w = parseWindow(raw)
	}
	now := time.Now()
	c.mu.Lock()
	defer c.mu.Unlock()
	if w == nil {
		delete(c.windows, id)
		return
	}
	c.windows[id] = windowEntry{w: w, at: now}
	if len(c.windows) > 256 {
		for k, e := range c.windows {
			if now.Sub(e.at) > windowTTL {
				delete(c.windows, k)
			}
		}
	}
}

// windowClosed reports whether campaign id's send window, as the latest
// status read found it, is closed at now, and if so when it opens next.
// Ask it right after sending, whose read it reflects.
func (c *campaignStatuses) windowClosed(id int64, now time.Time) (time.Time, bool) {
	c.mu.Lock()
	e, ok := c.windows[id]
	c.mu.Unlock()
	if !ok {
		return time.Time{}, false
	}
	next := e.w.NextOpen(now)
	return next, !next.Equal(now)
}
