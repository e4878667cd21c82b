package campaign

import (
	"context"
	"fmt"
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

// statsOfSQL reads the counters of each campaign in $1: campaign_stats,
// at most 8 rows per campaign, kept by triggers on outbound_messages in the
// same transactions that change messages (migration 00012), so a read costs
// the same at 10 messages and at 10 million. Messaging owns the messages;
// campaign only reads their counts. Test sends are not counted.
//
// The second part adds the recipients of an audience send that was
// cancelled before their messages were created (messaging's
// dispatch_batches, indexed by campaign): the send counted them, so the
// stats count them, cancelled.
const statsOfSQL = `
SELECT campaign_id, sum(pending)::bigint, sum(sending)::bigint, sum(sent)::bigint,
       sum(delivered)::bigint, sum(undelivered)::bigint, sum(failed)::bigint, sum(cancelled)::bigint
FROM (
    SELECT campaign_id, pending, sending, sent, delivered, undelivered, failed, cancelled
    FROM campaign_stats
    WHERE campaign_id = ANY($1::bigint[])
    UNION ALL
    SELECT campaign_id, 0, 0, 0, 0, 0, 0, cancelled_unmaterialised
    FROM dispatch_batches
    WHERE campaign_id = ANY($1::bigint[]) AND cancelled_unmaterialised > 0
) AS counts
GROUP BY campaign_id`

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
// the last rateWindow, read so that it stays cheap whatever the campaign's
// size: no index has a message's finishing time, and counting every final
// message's updated_at would read the whole campaign from the heap on each
// detail read. Instead, for each final status, the rateSample messages with
// the highest ids are read backwards along (campaign_id, status, id) (the
// feeder sends in id order, so those are the ones that finished last): at
// most 5 × rateSample index entries and heap rows, a few milliseconds. Their
// finishing time is sent_at (which a later receipt does not move) or, for
// messages never sent, updated_at.
//
// If fewer than rateSample finished within the window, the rate is their
// number over the window (or over the time since the campaign started, when
// that is shorter). If more did, the window is cut to the rateSample most
// recent, and the rate is rateSample over the time they span, which is as
// accurate and needs no more rows.
//
// The status is written as a range (BETWEEN 'sent' AND 'sent') and the
// order as (status, id) on purpose. Written as status = 'sent' ORDER BY id,
// the status is a constant, so the primary key (and (campaign_id, id))
// offers the same order, and PostgreSQL, assuming the statuses are spread
// evenly over ids, walks it backwards through every pending message at the
// top of a half-sent campaign (hundreds of ms for 300,000). As a range only
// the (campaign_id, status, id) index yields that order. Keep it so.
const (
	rateWindow = 60 * time.Second
	rateSample = 2000
)

const rateSQL = `
WITH recent AS (
    (SELECT coalesce(sent_at, updated_at) AS t FROM outbound_messages
     WHERE campaign_id = $1 AND status BETWEEN 'sent' AND 'sent' AND NOT test
     ORDER BY status DESC, id DESC LIMIT $2)
    UNION ALL
    (SELECT coalesce(sent_at, updated_at) FROM outbound_messages
     WHERE campaign_id = $1 AND status BETWEEN 'delivered' AND 'delivered' AND NOT test
     ORDER BY status DESC, id DESC LIMIT $2)
    UNION ALL
    (SELECT coalesce(sent_at, updated_at) FROM outbound_messages
     WHERE campaign_id = $1 AND status BETWEEN 'undelivered' AND 'undelivered' AND NOT test
     ORDER BY status DESC, id DESC LIMIT $2)
    UNION ALL
    (SELECT coalesce(sent_at, updated_at) FROM outbound_messages
     WHERE campaign_id = $1 AND status BETWEEN 'failed' AND 'failed' AND NOT test
     ORDER BY status DESC, id DESC LIMIT $2)
    UNION ALL
    (SELECT coalesce(sent_at, updated_at) FROM outbound_messages
     WHERE campaign_id = $1 AND status BETWEEN 'cancelled' AND 'cancelled' AND NOT test
     ORDER BY status DESC, id DESC LIMIT $2)
), latest AS (
    SELECT t FROM recent WHERE t > now() - $3::interval ORDER BY t DESC LIMIT $2
)
SELECT count(*), coalesce(min(t), now()), now() FROM latest`

// Rate returns the campaign's messages finished per second lately (see
// rateSQL), rounded to two decimals; startedAt, when known and recent,
// shortens the window to the time the campaign has been sending.
func (r *Repo) Rate(ctx context.Context, id int64, startedAt *time.Time) (float64, error) {
	var (
		n           int64
		oldest, now time.Time
	)
	err := r.db.QueryRowxContext(ctx, rateSQL, id, rateSample, fmt.Sprintf("%d seconds", int(rateWindow.Seconds()))).
		Scan(&n, &oldest, &now)
	if err != nil {
		return 0, postgres.Classify(err, fmt.Sprintf("rate of campaign %d", id))
	}
	return rate(n, oldest, now, startedAt), nil
}

// rate turns rateSQL's answer into messages per second: n finished since
// the window began (now - rateWindow, or startedAt if later), or, when the
// sample is full, since the oldest of them. Spans under a second count as a
// second, so a burst does not read as a huge rate.
func rate(n int64, oldest, now time.Time, startedAt *time.Time) float64 {
	if n == 0 {
		return 0
	}
	span := rateWindow
	if startedAt != nil && now.Sub(*startedAt) < span {
		span = now.Sub(*startedAt)
	}
	if n >= rateSample {
		span = now.Sub(oldest)
	}
	span = max(span, time.Second)
	return math.Round(float64(n)/span.Seconds()*100) / 100
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
