package messaging

import (
	"context"
	"sync"
	"time"
)

// campaignStatuses answers the check each delivery makes just before it
// sends: is the campaign still sending? Every answer comes from a read that
// began after the delivery asked, so a pause or cancel that committed before
// a delivery starts always stops it. Reads of one campaign are coalesced:
// while one is in flight, every delivery that asks meanwhile waits for the
// single next read, so a pool of a thousand goroutines costs a handful of
// primary-key lookups per millisecond, not one per message.
type campaignStatuses struct {
	repo *Repo

	mu    sync.Mutex
	reads map[int64]*campaignReads
	// windows holds the send window of each sending campaign that has one,
	// parsed once per read (see setWindow and windowClosed).
	windows map[int64]windowEntry
	// generations holds each sending campaign's updated_at as last read: it
	// changes when the campaign is paused and resumed, which is how the
	// error-rate brake knows a resumed campaign starts a fresh window.
	generations map[int64]time.Time
}

// campaignReads is the in-flight read of one campaign and the one queued
// behind it.
type campaignReads struct {
	inflight, next *statusRead
}

type statusRead struct {
	done    chan struct{}
	sending bool
}

func newCampaignStatuses(repo *Repo) *campaignStatuses {
	return &campaignStatuses{repo: repo, reads: map[int64]*campaignReads{}, windows: map[int64]windowEntry{},
		generations: map[int64]time.Time{}}
}

// sending reports whether campaign id is sending. If the status cannot be
// read it says yes: the claim checked it moments ago, and a delivery must
// not stall on a database hiccup.
func (c *campaignStatuses) sending(ctx context.Context, id int64) bool {
	c.mu.Lock()
	cr := c.reads[id]
	if cr == nil {
		cr = &campaignReads{}
		c.reads[id] = cr
	}
	var r *statusRead
	switch {
	case cr.inflight == nil:
		r = &statusRead{done: make(chan struct{})}
		cr.inflight = r
		go c.read(id, cr, r)
	case cr.next != nil:
		r = cr.next
	default:
		// The read in flight may have begun before this delivery asked:
		// wait for the next one, started when it ends.
		r = &statusRead{done: make(chan struct{})}
		cr.next = r
	}
	c.mu.Unlock()
	select {
	case <-r.done:
		return r.sending
	case <-ctx.Done():
		return false
	}
}

// campaignStatusSQL reads what a delivery checks; campaigns is the campaign
// feature's table, which the pool only reads.
const campaignStatusSQL = `SELECT status, send_window, updated_at FROM campaigns WHERE id = $1`

// campaignStatus runs campaignStatusSQL prepared. Each delivery waits for
// one of these reads to start and end after it asked, so its latency is
// part of every message's time in a worker: unprepared, it was two round
// trips (parse, then execute) and a plan each time.
func (r *Repo) campaignStatus(id int64, status *string, sendWindow *[]byte, updatedAt *time.Time) error {
	st, err := r.stmts.Get(context.Background(), campaignStatusSQL)
	if err != nil {
		return err
	}
	return st.QueryRow(id).Scan(status, sendWindow, updatedAt)
}

// read runs one status read for id, then starts the queued one, if any.
func (c *campaignStatuses) read(id int64, cr *campaignReads, r *statusRead) {
	for r != nil {
		var (
			status     string
			sendWindow []byte // jsonb; NULL for none
			updatedAt  time.Time
		)
		err := c.repo.campaignStatus(id, &status, &sendWindow, &updatedAt)
		r.sending = err != nil || status == "sending"
		if err == nil {
			// Recorded before done is closed, so the delivery that asked
			// sees this read's window (or a later one's).
			c.setWindow(id, status == "sending", sendWindow)
			c.mu.Lock()
			if status == "sending" {
				c.generations[id] = updatedAt
			} else {
				delete(c.generations, id)
			}
			c.mu.Unlock()
		}
		close(r.done)

		c.mu.Lock()
		r, cr.inflight, cr.next = cr.next, cr.next, nil
		if r == nil {
			delete(c.reads, id) // idle campaigns leave nothing behind
		}
		c.mu.Unlock()
	}
}

// generation returns campaign id's updated_at as last read while it was
// sending (zero if never read).
func (c *campaignStatuses) generation(id int64) time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.generations[id]
}
