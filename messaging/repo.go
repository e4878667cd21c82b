package messaging

import (
	"context"
	"database/sql"
	"fmt"
	"time"

	"github.com/jmoiron/sqlx"
	"github.com/lib/pq"

	"github.com/campaignd/dispatch/platform/outbox"
	"github.com/campaignd/dispatch/platform/postgres"
)

// Repo is the outbound_messages table's only writer.
type Repo struct {
	db *sqlx.DB
	// eventTypes lists the webhook event types some endpoint receives
	// (outbox.Subscriptions.Types); nil: none.
	eventTypes func() []string

	stmts *postgres.Statements // the worker's per-batch statements (claim, record), prepared once
}

// NewRepo returns a Repo over db.
func NewRepo(db *sqlx.DB) *Repo { return &Repo{db: db, stmts: postgres.NewStatements(db)} }

// WithEventTypes makes the recorder write message.sent and message.failed
// webhook events, in the statement that records the outcomes, when types
// (the event types some endpoint receives) lists them.
func (r *Repo) WithEventTypes(types func() []string) *Repo {
	r.eventTypes = types
	return r
}

// wantedEvents is the text[] parameter of the statements that emit
// message events.
func (r *Repo) wantedEvents() any {
	if r.eventTypes == nil {
		return pq.StringArray{}
	}
	return pq.StringArray(r.eventTypes())
}

const insertBatchSQL = `
INSERT INTO dispatch_batches (campaign_id, messages) VALUES ($1, $2) RETURNING id`

// Batch is a dispatch batch: one send (or resume, or retry) whose messages
// must reach the queue.
type Batch struct {
	ID         int64 `db:"id"`
	CampaignID int64 `db:"campaign_id"`
}

// The claim takes pending messages that are due, and messages left in
// sending for longer than the lease (their worker died mid-delivery), of
// campaigns that are sending, and loads everything delivery needs in the
// same statement. Messages of a cancelled campaign, or whose customer opted
// out of the channel, become cancelled instead. It reads campaigns,
// customers and customer_opt_outs (owned by other features) in a join
// because it runs once per batch on the hottest path.
//
// The guard is written as a CASE on purpose. Written as
// (status = 'pending' AND ...) OR (status = 'sending' AND ...) it implied
// the predicate of the partial index on active messages
// (status IN ('pending', 'sending'): outbound_messages_campaign_active_idx,
// dropped by 00019; the same holds for any such index), and PostgreSQL,
// with no statistics
// yet on a freshly filled table, ANDs a scan of such a whole index (every
// active message, and every dead entry of one) with the primary-key lookup:
// each 100-row claim then read the whole backlog, so a campaign's claims
// cost O(n²). As a CASE the predicate is not provable and the claim reads
// the batch's ids through the primary key only. Keep it so when changing it.
//
// The update takes its rows in id order (cand is ordered, and the update
// joins each cand row to its message in turn), as a campaign's cancel does,
// so a claim and a cancel over the same pending messages cannot deadlock.
const claimSQL = `
WITH cand AS (
    SELECT m.id, m.campaign_id, k.channel, m.status AS was, m.attempts, m.updated_at AS last_touch,
           (k.status = 'cancelled' OR o.customer_id IS NOT NULL OR (m.customer_id IS NULL AND m.phone IS NULL)) AS skip,
           CASE WHEN m.customer_id IS NULL AND m.phone IS NULL THEN 'not sent: customer erased'
                WHEN o.customer_id IS NOT NULL THEN 'not sent: customer opted out of ' || k.channel
                ELSE 'not sent: campaign cancelled' END AS reason
    FROM outbound_messages m
    JOIN campaigns k ON k.id = m.campaign_id
    LEFT JOIN customer_opt_outs o ON o.customer_id = m.customer_id AND o.channel = k.channel
    WHERE m.id = ANY($1::bigint[]) AND k.status IN ('sending', 'cancelled') AND NOT m.test
    ORDER BY m.id -- upd locks in this order: see cancelPendingSQL
), upd AS (
    -- One pass claims the batch: a message to deliver moves to sending; one
    -- whose customer opted out after the send, or whose campaign was
    -- cancelled meanwhile, ends cancelled, unsent. A message reclaimed from
    -- sending (its worker died mid-delivery) had an attempt whose fate is
    -- unknown: it is counted, and with $3 (fail uncertain) the message
    -- fails for manual review instead of being sent again.
    UPDATE outbound_messages m
    SET status = CASE WHEN c.skip THEN 'cancelled'
                      WHEN m.status = 'sending' AND $3::bool THEN 'failed'
                      ELSE 'sending' END,
        last_error = CASE WHEN c.skip THEN c.reason
                          WHEN m.status = 'sending' AND $3::bool THEN 'uncertain: delivery was interrupted after the provider may have accepted it; not resent (UNCERTAIN_POLICY=fail)'
                          ELSE m.last_error END,
        attempts = m.attempts + CASE WHEN m.status = 'sending' THEN 1 ELSE 0 END,
        updated_at = now()
    FROM cand c
    WHERE m.id = c.id
      AND CASE m.status
            WHEN 'pending' THEN c.skip OR m.next_attempt_at IS NULL OR m.next_attempt_at <= now()
            WHEN 'sending' THEN m.updated_at < now() - $2::interval
            ELSE false
          END
    RETURNING m.id, m.campaign_id, m.customer_id, m.retry_count, m.status
), lost AS (
    INSERT INTO message_attempts (campaign_id, message_id, attempt, started_at, duration_ms, outcome, error)
    SELECT c.campaign_id, c.id, c.attempts + 1, c.last_touch, 0, 'uncertain',
           'the process delivering it stopped; the provider may have accepted it'
    FROM cand c JOIN upd u ON u.id = c.id
    WHERE c.was = 'sending'
    ON CONFLICT (campaign_id, message_id, attempt) DO NOTHING
)
-- Rows with status cancelled or failed are messages this claim finished:
-- Claim reports them (for metrics) and does not deliver them.
SELECT c.id, c.campaign_id, coalesce(c.customer_id, 0) AS customer_id, c.retry_count, c.status, k.channel, k.base_template,
       coalesce(u.phone, '') AS phone, coalesce(u.first_name, '') AS first_name, coalesce(u.last_name, '') AS last_name,
       coalesce(u.location, '') AS location, coalesce(u.preferred_product, '') AS preferred_product
FROM upd c
JOIN campaigns k ON k.id = c.campaign_id
LEFT JOIN customers u ON u.id = c.customer_id`

// Unclaimed explains why a fetched job was not claimed.
type Unclaimed struct {
	ID int64
	// RetryAt is when the job may be claimed (a retry not yet due, or a
	// message another worker is delivering); zero means there is nothing
	// left to do (final, or the message no longer exists).
	RetryAt time.Time
	// Cancelled: this claim ended the message cancelled (its campaign was
	// cancelled, or its customer opted out of Channel).
	Cancelled bool
	// Failed: this claim failed the message, reclaimed after an interrupted
	// attempt, under the fail-uncertain policy.
	Failed  bool
	Channel string
}

// claimRow is a row of the claim: a job, or a message the claim cancelled.
type claimRow struct {
	Job
	Status Status `db:"status"`
}

// A job of a campaign that is not sending (paused) is dropped, and its
// message marked unqueued in the same statement, so the feeder queues it
// again once the campaign resumes.
const unclaimedSQL = `
WITH info AS (
    SELECT u.id, m.status, m.next_attempt_at, m.updated_at, k.status AS campaign_status
    FROM unnest($1::bigint[]) AS u(id)
    LEFT JOIN outbound_messages m ON m.id = u.id
    LEFT JOIN campaigns k ON k.id = m.campaign_id
), dropped AS (
    UPDATE outbound_messages m SET queued_at = NULL
    FROM info i
    WHERE m.id = i.id AND i.campaign_status IS DISTINCT FROM 'sending' AND m.status = 'pending'
)
SELECT id,
       CASE
         WHEN campaign_status IS DISTINCT FROM 'sending' THEN NULL
         WHEN status = 'pending' THEN coalesce(next_attempt_at, now())
         WHEN status = 'sending' THEN updated_at + $2::interval
       END AS retry_at
FROM info`

// Claim moves the given messages to sending and returns them as jobs, plus
// what to do with the ids it could not claim, among them the ones it
// cancelled. Claiming is a guarded update, so a job delivered twice
// (redelivery after a crash, a sweep) is claimed by one worker only.
//
// failUncertain is the UNCERTAIN_POLICY: a message reclaimed from sending
// fails instead of being delivered again.
func (r *Repo) Claim(ctx context.Context, ids []int64, lease time.Duration, failUncertain bool) ([]Job, []Unclaimed, error) {
	var claimed []claimRow
	st, err := r.stmts.Get(ctx, claimSQL)
	if err != nil {
		return nil, nil, postgres.Classify(err, "prepare claim")
	}
	if err := st.SelectContext(ctx, &claimed, pq.Array(ids), pgInterval(lease), failUncertain); err != nil {
		return nil, nil, postgres.Classify(err, "claim messages")
	}
	jobs := make([]Job, 0, len(claimed))
	var out []Unclaimed
	for _, c := range claimed {
		if c.Status == StatusCancelled || c.Status == StatusFailed {
			out = append(out, Unclaimed{ID: c.ID, Cancelled: c.Status == StatusCancelled, Failed: c.Status == StatusFailed, Channel: c.Channel})
			continue
		}
		jobs = append(jobs, c.Job)
	}
	if len(claimed) == len(ids) {
		return jobs, out, nil
	}
	got := make(map[int64]bool, len(claimed))
	for _, c := range claimed {
		got[c.ID] = true
	}
	rest := make([]int64, 0, len(ids)-len(claimed))
	for _, id := range ids {
		if !got[id] {
			rest = append(rest, id)
		}
	}
	rows, err := r.db.QueryContext(ctx, unclaimedSQL, pq.Array(rest), pgInterval(lease))
	if err != nil {
		return nil, nil, postgres.Classify(err, "inspect unclaimed messages")
	}
	defer rows.Close()
	for rows.Next() {
		var u Unclaimed
		var at sql.NullTime
		if err := rows.Scan(&u.ID, &at); err != nil {
			return nil, nil, postgres.Classify(err, "scan unclaimed message")
		}
		if at.Valid {
			u.RetryAt = at.Time
		}
		out = append(out, u)
	}
	return jobs, out, postgres.Classify(rows.Err(), "read unclaimed messages")
}

// Outcome is the result of one delivery attempt.
type Outcome struct {
	ID int64
	// Status is sent, failed (for good), or pending (retry at NextAttemptAt,
	// or, with Attempted false, not attempted: abandoned at shutdown,
	// throttled, braked, or our own infrastructure failed).
	Status        Status
	Content       string // rendered text; stored when sent
	Error         string
	Attempted     bool // a send was made: attempts + 1, and retry_count + 1 unless sent
	NextAttemptAt time.Time

	// What the provider said, stored when sent.
	Provider          string
	ProviderMessageID string
	Segments          int
	Encoding          string // "GSM-7" or "UCS-2" for SMS; "" otherwise
	Cost              string // decimal; "" unknown
	Currency          string

	// The attempt's history row, written when Attempted.
	StartedAt      time.Time
	Duration       time.Duration
	AttemptResult  string // sent, failed, retried, uncertain
	ProviderStatus string
}

// recordSQL stores a batch of outcomes and, for the attempts among them,
// their history rows, and the webhook events of the sent and failed ones,
// in one statement. The unnest arrays are parallel: one
// element per outcome.
var recordSQL = `
WITH v AS (
    SELECT * FROM unnest($1::bigint[], $2::text[], $3::text[], $4::text[], $5::bool[], $6::timestamptz[],
                         $7::text[], $8::text[], $9::int[], $10::text[], $11::text[], $12::text[],
                         $13::timestamptz[], $14::int[], $15::text[], $16::text[])
        AS v(id, status, content, err, attempted, next_at,
             provider, provider_id, segments, encoding, cost, currency,
             started_at, duration_ms, result, provider_status)
), upd AS (
    UPDATE outbound_messages m
    SET status = v.status,
        rendered_content = CASE WHEN v.status = 'sent' AND (m.customer_id IS NOT NULL OR m.phone IS NOT NULL)
                                THEN v.content ELSE m.rendered_content END,
        last_error = CASE WHEN v.err = '' THEN m.last_error ELSE v.err END,
        retry_count = m.retry_count + CASE WHEN v.attempted AND v.status <> 'sent' THEN 1 ELSE 0 END,
        attempts = m.attempts + CASE WHEN v.attempted THEN 1 ELSE 0 END,
        next_attempt_at = v.next_at,
        provider = CASE WHEN v.provider = '' THEN m.provider ELSE v.provider END,
        provider_message_id = CASE WHEN v.status = 'sent' AND v.provider_id <> '' THEN v.provider_id ELSE m.provider_message_id END,
        segments = CASE WHEN v.segments > 0 THEN v.segments ELSE m.segments END,
        encoding = CASE WHEN v.encoding = '' THEN m.encoding ELSE v.encoding END,
        cost = CASE WHEN v.cost = '' THEN m.cost ELSE v.cost::numeric END,
        currency = CASE WHEN v.currency = '' THEN m.currency ELSE v.currency END,
        sent_at = CASE WHEN v.status = 'sent' THEN now() ELSE m.sent_at END,
        updated_at = now()
    FROM v
    WHERE m.id = v.id AND m.status = 'sending'
    RETURNING m.id, m.attempts, m.campaign_id, m.customer_id, m.status, m.provider, m.provider_message_id,
              m.segments, m.last_error, m.sent_at
), hist AS (
    INSERT INTO message_attempts (campaign_id, message_id, attempt, started_at, duration_ms, outcome, error, provider_status)
    SELECT u.campaign_id, u.id, u.attempts, v.started_at, v.duration_ms, v.result, nullif(v.err, ''), nullif(v.provider_status, '')
    FROM upd u JOIN v ON v.id = u.id
    WHERE v.attempted
    ON CONFLICT (campaign_id, message_id, attempt) DO NOTHING
), events AS (
    -- message.sent and message.failed for the webhook endpoints that want
    -- them ($17), committed with the outcomes: one outbox row per type.
    ` + messageEventsSQL + `
)
SELECT id FROM upd`

// messageEventsSQL writes the message.* events of the rows of upd, which
// returns the columns the data names, when $17 lists their type.
var messageEventsSQL = outbox.EmitSQL("upd", "'message.' || upd.status",
	`json_build_object('message_id', upd.id, 'campaign_id', upd.campaign_id, 'customer_id', upd.customer_id,
        'status', upd.status, 'provider', upd.provider, 'provider_message_id', upd.provider_message_id,
        'segments', upd.segments, 'error', upd.last_error, 'sent_at', upd.sent_at)`, "$17")

// Record stores a batch of outcomes with one statement. The update is
// guarded by status = 'sending', so an outcome for a message that was
// meanwhile finished elsewhere changes nothing; skipped lists those ids.
func (r *Repo) Record(ctx context.Context, outcomes []Outcome) (skipped []int64, err error) {
	n := len(outcomes)
	ids := make([]int64, n)
	statuses := make([]string, n)
	contents := make([]string, n)
	errsText := make([]string, n)
	attempted := make([]bool, n)
	next := make([]*time.Time, n)
	providers, providerIDs, encodings, costs, currencies := make([]string, n), make([]string, n), make([]string, n), make([]string, n), make([]string, n)
	segments, durations := make([]int64, n), make([]int64, n)
	started := make([]*time.Time, n)
	results, providerStatuses := make([]string, n), make([]string, n)
	for i, o := range outcomes {
		ids[i], statuses[i], contents[i], errsText[i], attempted[i] = o.ID, string(o.Status), o.Content, o.Error, o.Attempted
		if !o.NextAttemptAt.IsZero() {
			t := o.NextAttemptAt.UTC()
			next[i] = &t
		}
		providers[i], providerIDs[i], encodings[i], costs[i], currencies[i] = o.Provider, o.ProviderMessageID, o.Encoding, o.Cost, o.Currency
		segments[i], durations[i] = int64(o.Segments), o.Duration.Milliseconds()
		t := o.StartedAt.UTC()
		if o.StartedAt.IsZero() {
			t = time.Now().UTC()
		}
		started[i] = &t
		results[i], providerStatuses[i] = o.AttemptResult, o.ProviderStatus
		if o.Attempted && results[i] == "" {
			results[i] = string(o.Status)
		}
	}
	st, err := r.stmts.Get(ctx, recordSQL)
	if err != nil {
		return nil, postgres.Classify(err, "prepare record")
	}
	var stored []int64
	err = st.SelectContext(ctx, &stored, pq.Array(ids), pq.Array(statuses), pq.Array(contents),
		pq.Array(errsText), pq.Array(attempted), pq.Array(timeArray(next)),
		pq.Array(providers), pq.Array(providerIDs), pq.Array(segments), pq.Array(encodings), pq.Array(costs), pq.Array(currencies),
		pq.Array(timeArray(started)), pq.Array(durations), pq.Array(results), pq.Array(providerStatuses),
		r.wantedEvents())
	if err != nil || len(stored) == n {
		return nil, postgres.Classify(err, "record outcomes")
	}
	done := make(map[int64]bool, len(stored))
	for _, id := range stored {
		done[id] = true
	}
	for _, id := range ids {
		if !done[id] {
			skipped = append(skipped, id)
		}
	}
	return skipped, nil
}

// timeArray renders nullable times as a text array PostgreSQL casts to
// timestamptz[] (pq.Array has no support for []*time.Time).
func timeArray(ts []*time.Time) []sql.NullString {
	out := make([]sql.NullString, len(ts))
	for i, t := range ts {
		if t != nil {
			out[i] = sql.NullString{String: t.Format(time.RFC3339Nano), Valid: true}
		}
	}
	return out
}

// SendingIDs pages through the ids of messages being delivered, in id
// order after afterID.
func (r *Repo) SendingIDs(ctx context.Context, afterID int64, limit int) ([]int64, error) {
	var ids []int64
	err := r.db.SelectContext(ctx, &ids, `
SELECT id FROM outbound_messages
WHERE status = 'sending' AND id > $1
ORDER BY id
LIMIT $2`, afterID, limit)
	return ids, postgres.Classify(err, "list messages being delivered")
}

// UnqueuePending marks every pending message unqueued, after Redis lost the
// queue: the feeder queues them again. The scan reads the partial index of
// queued messages (outbound_messages_queued_idx).
func (r *Repo) UnqueuePending(ctx context.Context) (int64, error) {
	res, err := r.db.ExecContext(ctx, `
UPDATE outbound_messages SET queued_at = NULL
WHERE status = 'pending' AND queued_at IS NOT NULL AND NOT test`)
	if err != nil {
		return 0, postgres.Classify(err, "unqueue pending messages")
	}
	return res.RowsAffected()
}

// UnqueueStale marks up to limit messages that were queued before cutoff,
// or are being delivered, and have not changed since cutoff as unqueued and touched now
// (a sending one, long past any lease, goes back to pending), so the feeder
// queues them again; the touch keeps the next sweep from taking them again
// at once. Pending messages never queued are not stale: they wait their turn.
// It looks at messages being delivered first, then at queued ones, each
// through its own partial index (00017), so its cost follows the messages in
// flight, not a campaign's backlog.
func (r *Repo) UnqueueStale(ctx context.Context, cutoff time.Time, limit int) (int64, error) {
	var total int64
	for _, q := range []string{unqueueStaleSendingSQL, unqueueStaleQueuedSQL} {
		if total >= int64(limit) {
			break
		}
		res, err := r.db.ExecContext(ctx, q, cutoff, int64(limit)-total)
		if err != nil {
			return total, postgres.Classify(err, "unqueue stale messages")
		}
		n, err := res.RowsAffected()
		if err != nil {
			return total, postgres.Classify(err, "unqueue stale messages")
		}
		total += n
	}
	return total, nil
}

// unqueueStaleSQL is UnqueueStale's statement for the messages that where
// selects, oldest first by order (outbound_messages_sending_idx or
// outbound_messages_queued_idx).
func unqueueStaleSQL(where, order string) string {
	return `
UPDATE outbound_messages SET updated_at = now(), status = 'pending', queued_at = NULL
WHERE id IN (
    SELECT id FROM outbound_messages
    WHERE ` + where + ` AND updated_at < $1 AND NOT test
      AND (next_attempt_at IS NULL OR next_attempt_at < $1)
    ORDER BY ` + order + `
    LIMIT $2
    FOR UPDATE SKIP LOCKED)
  AND status IN ('pending', 'sending')`
}

var (
	unqueueStaleSendingSQL = unqueueStaleSQL("status = 'sending'", "updated_at")
	unqueueStaleQueuedSQL  = unqueueStaleSQL("status = 'pending' AND queued_at < $1", "queued_at")
)

func pgInterval(d time.Duration) string {
	return fmt.Sprintf("%d milliseconds", d.Milliseconds())
}
