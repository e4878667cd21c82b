package messaging

import (
	"context"
	"slices"
	"time"

	"github.com/jmoiron/sqlx"

	"github.com/campaignd/dispatch/platform/loop"
	"github.com/campaignd/dispatch/platform/postgres"
)

// The feeder keeps the ready list short and fair. Sends, resumes and
// retry-failed do not push whole campaigns; they commit their messages as
// pending and wake the feeder. The feeder moves unqueued, due, pending
// messages into the ready list in chunks, a turn per sending campaign, only
// while the list holds less than about a third of a second of work. So:
//   - a small campaign (or a test send) started while a million-message
//     campaign is delivering waits behind about that much work, not
//     behind the million;
//   - nothing is pushed twice while it is queued: a message is marked
//     queued_at in the same transaction that pushes it, and only unmarked
//     messages are fed, so a storm of pause/resume calls adds nothing;
//   - Redis holds at most the target plus what is being delivered or
//     waiting for a retry, whatever the backlog in PostgreSQL.
//
// Every replica runs a feeder. Two feeders never feed the same message:
// the chunk is locked FOR UPDATE SKIP LOCKED and marked before commit. The
// length check is not atomic across replicas, so with R replicas the list
// can exceed the target by R chunks at most.

// Feeding bounds.
const (
	// feedInterval is how often the feeder looks for work without being
	// woken; a send in this process wakes it at once.
	feedInterval = 100 * time.Millisecond
	// readyMin and readyMax bound the ready list's target length, which
	// is otherwise about readyTargetSeconds of the measured drain rate.
	readyMin           = 100
	readyMax           = 20_000
	readyTargetSeconds = 0.3
	// feedChunkMax bounds one campaign's turn; each turn is one short
	// transaction and one LPUSH.
	feedChunkMax = 1_000
	feedChunkMin = 20
	// feedRescanInterval is how often a campaign's feed looks from its
	// first message again, rather than after the last one it fed: for
	// messages unqueued behind it (see feedMark).
	feedRescanInterval = 5 * time.Second
)

// feedSQL marks up to $2 of the campaign's due, unqueued pending messages
// with ids above $3 queued and returns their ids, oldest first. It runs in
// the transaction that pushes them: if the push fails the marks roll back.
const feedSQL = `
WITH next AS (
    SELECT id FROM outbound_messages
    WHERE campaign_id = $1 AND status = 'pending' AND queued_at IS NULL AND id > $3
      AND (next_attempt_at IS NULL OR next_attempt_at <= now())
    ORDER BY id
    LIMIT $2
    FOR UPDATE SKIP LOCKED
)
UPDATE outbound_messages m SET queued_at = now()
FROM next WHERE m.id = next.id
RETURNING m.id`

// The feeder reads which campaigns are sending from the campaign feature's
// table: a small indexed read (campaigns_status_idx) per round. A campaign
// whose send window is closed is not fed until it opens (openCampaigns).
const sendingCampaignsSQL = `SELECT id, send_window FROM campaigns WHERE status = 'sending' ORDER BY id`

// feeder is the state of one replica's feeding loop.
type feeder struct {
	s *Service
	// after is the last campaign served: the next round starts after it,
	// so every sending campaign gets its turn in order.
	after int64
	// rate is the ready list's drain rate (ids/s), smoothed; lastLen and
	// lastAt are the previous round's reading, pushed what it pushed.
	rate    float64
	lastLen int64
	lastAt  time.Time
	pushed  int64
	// marks is where each sending campaign's next feed starts.
	marks map[int64]feedMark
}

// feedMark is where a campaign's next feed looks from. The feed index
// (outbound_messages_feed_idx: pending, unqueued) keeps an entry for every
// message the feeder has marked queued until vacuum removes it, so a feed
// that started from the campaign's first message walked every message fed
// so far (10 ms a feed at 500,000 fed, EXPLAIN ANALYZE), several times a
// second, for as long as the campaign delivered. A feed starts
// after the last id this feeder fed instead (after), and from the first
// again every feedRescanInterval (rescanAt), which finds the messages that
// became unqueued behind it: those a concurrent transaction held locked
// when the feed went past (SKIP LOCKED), and those the stale sweep or a
// Redis loss unqueued (this process's sweeper also asks its feeder to
// rescan at once: Service.rescan; other replicas' find them within the
// interval). A campaign that stops sending loses its mark, so
// after a pause or a retry-failed its feed starts from the first message
// at once: a paused campaign's queued messages are unqueued as the workers
// drop them. Messages are created in id order within a campaign (one send,
// or one materialiser chunk after another), so none appears behind a mark.
type feedMark struct {
	after    int64
	rescanAt time.Time
}

// WakeFeeder asks the feeder to look for work now (after a send, resume or
// retry-failed committed in this process).
func (s *Service) WakeFeeder() {
	select {
	case s.feed <- struct{}{}:
	default:
	}
}

// RunFeeder feeds the ready list until ctx ends; it returns when ctx ends.
// It runs every feedInterval, at once when woken, and backs off while
// PostgreSQL or Redis cannot be reached; nothing is lost meanwhile, as the
// messages stay pending.
func (s *Service) RunFeeder(ctx context.Context) {
	f := newFeeder(s)
	loop.Every(ctx, feedInterval, "feeder", s.log, func(ctx context.Context) error {
		for {
			// Go again at once while the list is still short and a campaign
			// had more than its share.
			if _, more, err := f.round(ctx); err != nil || !more {
				return err
			}
		}
	}, loop.WakeOn(s.feed))
}

// Feed queues what it can now, round after round, until the ready list
// reaches its target or nothing is left to queue, and returns how many ids
// it queued. RunFeeder is the loop that calls it; tests and tools call it
// directly.
func (s *Service) Feed(ctx context.Context) (int64, error) {
	f := newFeeder(s)
	total := int64(0)
	for {
		n, more, err := f.round(ctx)
		total += n
		if err != nil || !more || n == 0 {
			return total, err
		}
	}
}

func newFeeder(s *Service) *feeder {
	return &feeder{s: s, marks: make(map[int64]feedMark)}
}

// target is how long the ready list should be: about a third of a second of
// work at the rate it drains, at least the replica's FeedFloor (readyMin if
// none), at most readyMax.
func (f *feeder) target() int64 {
	floor := max(readyMin, int64(f.s.opts.FeedFloor))
	return min(max(int64(f.rate*readyTargetSeconds), floor), readyMax)
}

// observe updates the drain rate from the list's length now.
func (f *feeder) observe(length int64, now time.Time) {
	if !f.lastAt.IsZero() {
		if dt := now.Sub(f.lastAt).Seconds(); dt > 0 {
			drained := float64(f.lastLen + f.pushed - length)
			if drained >= 0 {
				// Smooth over about a second of rounds.
				alpha := min(dt, 1.0)
				f.rate += alpha * (drained/dt - f.rate)
			}
		}
	}
	f.lastLen, f.lastAt, f.pushed = length, now, 0
}

// round feeds one turn to each sending campaign while the ready list is
// below target. It returns how many ids it queued and whether it stopped
// with the list still short and work left (so the caller goes again at once).
func (f *feeder) round(ctx context.Context) (int64, bool, error) {
	length, err := f.s.queue.ReadyLen(ctx)
	if err != nil {
		return 0, false, err
	}
	f.observe(length, f.s.now())
	budget := f.target() - length
	if budget <= 0 {
		return 0, false, nil
	}
	var sending []sendingCampaign
	if err := f.s.repo.db.SelectContext(ctx, &sending, sendingCampaignsSQL); err != nil {
		return 0, false, postgres.Classify(err, "list sending campaigns")
	}
	campaigns := openCampaigns(sending, f.s.now())
	if f.s.rescan.Swap(false) {
		clear(f.marks)
	}
	// A campaign not sending now (finished, paused, cancelled, its window
	// closed) starts from its first message when it sends again.
	for id := range f.marks {
		if !slices.Contains(campaigns, id) {
			delete(f.marks, id)
		}
	}
	if len(campaigns) == 0 {
		return 0, false, nil
	}
	// Start after the campaign served last, wrapping around.
	start := 0
	for i, id := range campaigns {
		if id > f.after {
			start = i
			break
		}
	}
	share := min(max(budget/int64(len(campaigns)), feedChunkMin), feedChunkMax)
	fed, starved := int64(0), false
	for i := range campaigns {
		id := campaigns[(start+i)%len(campaigns)]
		n, err := f.feed(ctx, id, share)
		fed += n
		if err != nil {
			return fed, false, err
		}
		f.after = id
		starved = starved || n == share
		if fed >= budget {
			return fed, false, nil
		}
	}
	// Another round at once only if some campaign had more than its share
	// and the list is still below target.
	return fed, starved && fed < budget, nil
}

// feed moves up to n of the campaign's messages into the ready list.
func (f *feeder) feed(ctx context.Context, campaignID, n int64) (int64, error) {
	mark, now := f.marks[campaignID], f.s.now()
	if !now.Before(mark.rescanAt) {
		mark = feedMark{rescanAt: now.Add(feedRescanInterval)}
	}
	var ids []int64
	err := postgres.InTx(ctx, f.s.repo.db, func(tx *sqlx.Tx) error {
		if err := tx.SelectContext(ctx, &ids, feedSQL, campaignID, n, mark.after); err != nil {
			return postgres.Classify(err, "feed messages")
		}
		// Pushed before commit: if the push fails, the marks roll back and
		// the next round feeds these again. A crash between push and commit
		// leaves them in the list unmarked, so they may be fed once more:
		// harmless, the claim is guarded.
		return f.s.queue.Push(ctx, ids)
	})
	if err != nil {
		return 0, err
	}
	if len(ids) > 0 {
		mark.after = max(mark.after, slices.Max(ids))
	}
	f.marks[campaignID] = mark
	f.pushed += int64(len(ids))
	return int64(len(ids)), nil
}
