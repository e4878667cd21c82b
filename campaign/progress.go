package campaign

import (
	"context"
	"math"
	"time"

	"github.com/jmoiron/sqlx"
	"github.com/lib/pq"

	"github.com/campaignd/dispatch/platform/postgres"
)

// sum sets Total. It is the sum rather than a separate count so the contract
// "they sum to total" holds even if messaging ever adds a status this code
// does not know yet (the CHECK constraint rules that out today).
func (s *Stats) sum() {
	s.Total = s.Pending + s.Sending + s.Sent + s.Delivered + s.Undelivered + s.Failed + s.Cancelled
}

// statsSQL reads the counters of each campaign in the bigint[] expression
// ids: campaign_stats, at most 8 rows per campaign, kept by triggers on
// outbound_messages in the same transactions that change messages
// (migration 00012), so a read costs the same at 10 messages and at 10
// million. Messaging owns the messages; campaign only reads their counts.
// Test sends are not counted.
//
// The second part adds the recipients of an audience send that was
// cancelled before their messages were created (messaging's
// dispatch_batches, indexed by campaign): the send counted them, so the
// stats count them, cancelled.
func statsSQL(ids string) string {
	return `
SELECT campaign_id, sum(pending)::bigint AS pending, sum(sending)::bigint AS sending, sum(sent)::bigint AS sent,
       sum(delivered)::bigint AS delivered, sum(undelivered)::bigint AS undelivered, sum(failed)::bigint AS failed,
       sum(cancelled)::bigint AS cancelled
FROM (
    SELECT campaign_id, pending, sending, sent, delivered, undelivered, failed, cancelled
    FROM campaign_stats
    WHERE campaign_id = ANY(` + ids + `)
    UNION ALL
    SELECT campaign_id, 0, 0, 0, 0, 0, 0, cancelled_unmaterialised
    FROM dispatch_batches
    WHERE campaign_id = ANY(` + ids + `) AND cancelled_unmaterialised > 0
) AS counts
GROUP BY campaign_id`
}

// statsOfSQL reads the stats of the campaigns in $1.
var statsOfSQL = statsSQL("$1::bigint[]")

// statsOf reads the stats of each campaign in ids. A campaign without
// messages is absent from the map (its zero Stats is right).
func statsOf(ctx context.Context, q sqlx.QueryerContext, ids []int64) (map[int64]Stats, error) {
	out := make(map[int64]Stats, len(ids))
	if len(ids) == 0 {
		return out, nil
	}
	rows, err := q.QueryContext(ctx, statsOfSQL, pq.Array(ids))
	if err != nil {
		return nil, postgres.Classify(err, "stats of campaigns")
	}
	defer rows.Close()
	for rows.Next() {
		var (
			id int64
			s  Stats
		)
		if err := rows.Scan(&id, &s.Pending, &s.Sending, &s.Sent, &s.Delivered, &s.Undelivered, &s.Failed, &s.Cancelled); err != nil {
			return nil, postgres.Classify(err, "scan stats of campaigns")
		}
		s.sum()
		out[id] = s
	}
	if err := rows.Err(); err != nil {
		return nil, postgres.Classify(err, "stats of campaigns")
	}
	return out, nil
}

// Rate measurement. The rate is how many of a campaign's messages became
// final (sent, delivered, undelivered, failed, cancelled) per second over
// the last rateWindow. It is read from campaign_finishes (migration 00013):
// per campaign and per second of finishing time, the number of messages
// final, kept by the triggers that keep campaign_stats, for the last two
// minutes. A read sums at most 60 seconds × 8 slots of one campaign, so it
// costs the same whatever the campaign's size (reading the messages
// themselves cost seconds for a large campaign that PostgreSQL had no
// statistics on yet: see the migration).
//
// If fewer than rateSample finished within the window, the rate is their
// number over the window (or over the time since the campaign started, when
// that is shorter). If more did, the window is cut at the second in which
// the rateSample-th most recent finished, and the rate is what finished
// since that second began over the time since: a fast campaign's rate
// follows its last seconds instead of its last minute.
const (
	rateWindow = 60 * time.Second
	rateSample = 2000
)

// rateSQL is the campaign's ($1) finish counts per second over the last
// $2 (an interval), newest first.
const rateSQL = `
SELECT at, sum(n)::bigint AS n
FROM campaign_finishes
WHERE campaign_id = $1 AND at > now() - $2::interval
GROUP BY at
HAVING sum(n) > 0`

// finishes is what finished in one second of finishing time.
type finishes struct {
	At time.Time
	N  int64
}

// rate turns rateSQL's answer, newest second first, into messages per
// second: what finished since the window began (now - rateWindow, or
// startedAt if later) over that time, or, once rateSample are counted,
// what finished since the start of the second that reached it over the
// time since. Spans under a second count as a second, so a burst does not
// read as a huge rate.
func rate(seconds []finishes, now time.Time, startedAt *time.Time) float64 {
	span := rateWindow
	if startedAt != nil && now.Sub(*startedAt) < span {
		span = now.Sub(*startedAt)
	}
	var n int64
	for _, s := range seconds {
		n += s.N
		if n >= rateSample {
			span = now.Sub(s.At)
			break
		}
	}
	if n <= 0 {
		return 0
	}
	span = max(span, time.Second)
	return math.Round(float64(n)/span.Seconds()*100) / 100
}

// ExpireFinishes deletes the per-second finish counts older than anything
// a rate reads, and returns how many it deleted.
func (r *Repo) ExpireFinishes(ctx context.Context) (int64, error) {
	res, err := r.db.ExecContext(ctx, `DELETE FROM campaign_finishes WHERE at < now() - interval '2 minutes'`)
	if err != nil {
		return 0, postgres.Classify(err, "expire campaign finishes")
	}
	return res.RowsAffected()
}

// progress is the campaign's rate and, while it is sending with its window
// open and a positive rate, the time it should finish at that rate. The ETA
// assumes the rate holds: it does not foresee the send window closing
// meanwhile, nor recipients of an audience still being materialised.
func progress(c Campaign, st Stats, rate float64, windowClosed bool, now time.Time) Progress {
	p := Progress{RatePerSecond: rate}
	if c.Status != StatusSending || rate <= 0 || windowClosed {
		return p
	}
	remaining := float64(st.Pending + st.Sending)
	eta := now.Add(time.Duration(math.Ceil(remaining/rate)) * time.Second).UTC().Truncate(time.Second)
	p.ETA = &eta
	return p
}

// ended reports whether a campaign in status s will send nothing more
// unless asked again (retry-failed).
func (s Status) ended() bool {
	return s == StatusSent || s == StatusFailed || s == StatusCancelled
}
