package campaign

import (
	"context"
	"fmt"

	"github.com/campaignd/dispatch/platform/postgres"
)

// StatsRepair is what RebuildStats found for one campaign: the counters as
// kept, and as counted from the messages. They differ only if something
// changed outbound_messages around its triggers (a TRUNCATE, a session with
// triggers disabled, a restore of one table without the other).
type StatsRepair struct {
	CampaignID int64 `json:"campaign_id"`
	Kept       Stats `json:"kept"`
	Counted    Stats `json:"counted"`
}

// Drifted reports whether the kept counters were wrong.
func (r StatsRepair) Drifted() bool { return r.Kept != r.Counted }

// recountSQL counts one campaign's messages by status, the slow way the
// counters replace. Test sends are not counted.
const recountSQL = `
SELECT count(*) FILTER (WHERE status = 'pending')     AS pending,
       count(*) FILTER (WHERE status = 'sending')     AS sending,
       count(*) FILTER (WHERE status = 'sent')        AS sent,
       count(*) FILTER (WHERE status = 'delivered')   AS delivered,
       count(*) FILTER (WHERE status = 'undelivered') AS undelivered,
       count(*) FILTER (WHERE status = 'failed')      AS failed,
       count(*) FILTER (WHERE status = 'cancelled')   AS cancelled
FROM outbound_messages
WHERE campaign_id = $1 AND NOT test`

// The recount lands in slot 0 and the other slots go: the sum is what reads
// see. Slot 0 is overwritten, not deleted and inserted again: the parts of
// one statement see the same snapshot, so an INSERT beside a DELETE of the
// same row would still find it there (a unique violation whenever the
// triggers had written slot 0).
const replaceStatsSQL = `
WITH gone AS (DELETE FROM campaign_stats WHERE campaign_id = $1 AND slot <> 0)
INSERT INTO campaign_stats (campaign_id, slot, pending, sending, sent, delivered, undelivered, failed, cancelled)
VALUES ($1, 0, $2, $3, $4, $5, $6, $7, $8)
ON CONFLICT (campaign_id, slot) DO UPDATE SET
    pending = excluded.pending, sending = excluded.sending, sent = excluded.sent,
    delivered = excluded.delivered, undelivered = excluded.undelivered,
    failed = excluded.failed, cancelled = excluded.cancelled`

// RebuildStats recounts campaign id's counters from its messages and, when
// they differ, replaces them; it returns both. It is a repair tool
// (`dispatch stats rebuild`), not part of normal operation.
//
// While it counts, it holds campaign_stats in SHARE ROW EXCLUSIVE mode, which
// waits for every transaction that has already applied a counter delta to
// commit and makes every other one wait to apply its own. So the count sees
// every committed change, and a change not yet committed adds its delta
// after the new counters are in place: nothing is counted twice or missed.
// Writers of every campaign wait for the length of one campaign's count (a
// few hundred milliseconds for a million messages).
func (r *Repo) RebuildStats(ctx context.Context, id int64) (StatsRepair, error) {
	out := StatsRepair{CampaignID: id}
	tx, err := r.db.BeginTxx(ctx, nil)
	if err != nil {
		return out, postgres.Classify(err, "rebuild stats: begin")
	}
	defer tx.Rollback()
	if _, err := tx.ExecContext(ctx, `LOCK TABLE campaign_stats IN SHARE ROW EXCLUSIVE MODE`); err != nil {
		return out, postgres.Classify(err, "rebuild stats: lock counters")
	}
	m, err := statsOf(ctx, tx, []int64{id})
	if err != nil {
		return out, err
	}
	// The kept stats include the cancelled-before-materialised recipients,
	// which are not messages: compare like with like.
	var unmaterialised int64
	if err := tx.GetContext(ctx, &unmaterialised,
		`SELECT coalesce(sum(cancelled_unmaterialised), 0) FROM dispatch_batches WHERE campaign_id = $1`, id); err != nil {
		return out, postgres.Classify(err, "rebuild stats: unmaterialised")
	}
	out.Kept = m[id]
	c := &out.Counted
	if err := tx.QueryRowxContext(ctx, recountSQL, id).Scan(
		&c.Pending, &c.Sending, &c.Sent, &c.Delivered, &c.Undelivered, &c.Failed, &c.Cancelled); err != nil {
		return out, postgres.Classify(err, fmt.Sprintf("rebuild stats: count campaign %d", id))
	}
	c.Cancelled += unmaterialised
	c.sum()
	if !out.Drifted() {
		return out, nil
	}
	if _, err := tx.ExecContext(ctx, replaceStatsSQL, id, c.Pending, c.Sending, c.Sent, c.Delivered,
		c.Undelivered, c.Failed, c.Cancelled-unmaterialised); err != nil {
		return out, postgres.Classify(err, fmt.Sprintf("rebuild stats: replace counters of campaign %d", id))
	}
	if err := tx.Commit(); err != nil {
		return out, postgres.Classify(err, "rebuild stats: commit")
	}
	return out, nil
}

// CampaignIDs returns every campaign's id, in order, for tools that walk
// them all.
func (r *Repo) CampaignIDs(ctx context.Context) ([]int64, error) {
	var ids []int64
	if err := r.db.SelectContext(ctx, &ids, `SELECT id FROM campaigns ORDER BY id`); err != nil {
		return nil, postgres.Classify(err, "list campaign ids")
	}
	return ids, nil
}
