package messaging

import (
	"cmp"
	"context"
	"fmt"
	"log/slog"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"github.com/jmoiron/sqlx"
	"github.com/lib/pq"

	"github.com/campaignd/dispatch/messaging/provider"
	"github.com/campaignd/dispatch/platform/channel"
	"github.com/campaignd/dispatch/platform/errs"
	"github.com/campaignd/dispatch/platform/loop"
	"github.com/campaignd/dispatch/platform/outbox"
	"github.com/campaignd/dispatch/platform/postgres"
)

// ReceiptOptions tune Receipts. Zero values take the defaults.
type ReceiptOptions struct {
	// BatchSize is the most receipts one transaction stores (500).
	BatchSize int
	// FlushInterval is how long a batch waits for more receipts after its
	// first one before it is committed (5ms): the latency every receipt
	// pays for sharing one commit with the others that arrive meanwhile.
	FlushInterval time.Duration
	// RetryInterval is how often receipts that matched no sent message yet
	// are tried again (1s).
	RetryInterval time.Duration
	// RetryUnmatchedFor is how long such a receipt is tried again before it
	// is given up (1h): by then its message was either recorded long ago or
	// was never ours.
	RetryUnmatchedFor time.Duration
	// OnOptOut, if set, is called for each (phone, channel) whose receipt
	// says the recipient blocked the sender (provider.Receipt.OptOut),
	// after the receipt is committed and outside any transaction. It may
	// be called more than once for one receipt (a provider's retry), so it
	// must be idempotent; it logs its own failures. OptOutHook builds one.
	OnOptOut func(ctx context.Context, phone string, ch channel.Channel)
	// OnApplied, if set, is told how many messages of a channel and
	// provider receipts moved to outcome (delivered or undelivered), for
	// the metrics.
	OnApplied func(ch, provider, outcome string, n int)
	// EventTypes lists the webhook event types some endpoint receives
	// (outbox.Subscriptions.Types); nil: none. A receipt's move writes its
	// message.delivered or message.undelivered event when listed.
	EventTypes func() []string
}

func (o *ReceiptOptions) defaults() {
	if o.BatchSize <= 0 {
		o.BatchSize = 500
	}
	if o.FlushInterval <= 0 {
		o.FlushInterval = 5 * time.Millisecond
	}
	if o.RetryInterval <= 0 {
		o.RetryInterval = time.Second
	}
	if o.RetryUnmatchedFor <= 0 {
		o.RetryUnmatchedFor = time.Hour
	}
}

// receiptChunk bounds the receipts one step of the periodic pass reads,
// and the receipts one give-up statement closes.
const receiptChunk = 5000

// batchTimeout bounds one batch's transaction, so a database that hangs
// fails the waiting webhooks (the providers retry) instead of holding them.
const batchTimeout = 10 * time.Second

// retryPassTimeout bounds one periodic pass; the next one continues.
const retryPassTimeout = 30 * time.Second

// ErrReceiptsStopped is returned by Add when Receipts is not running (the
// service is shutting down): 503, so the provider retries later.
var ErrReceiptsStopped = errs.New(errs.KindUnavailable, errs.CodeUnavailable,
	"delivery receipts are not being accepted right now, retry later")

// Receipts stores providers' delivery receipts in the provider_receipts
// inbox and applies them to their messages: a sent message becomes
// delivered or undelivered. A message that is already final keeps its
// status (providers post out of order; a repeat changes nothing); a
// receipt whose message is not yet recorded as sent waits in the inbox and
// is applied by the periodic pass once it is, or given up after
// RetryUnmatchedFor.
//
// Concurrent receipts are committed together (group commit): Add hands the
// receipt to Run's batcher and returns once the transaction holding it has
// committed, so the webhook answers 2xx only for a durable receipt. It is
// safe for concurrent use; Run must be running for Add to return nil.
type Receipts struct {
	db   *sqlx.DB
	opts ReceiptOptions
	log  *slog.Logger

	in      chan *receiptWaiter // unbuffered: a receipt sent is one the batcher holds
	stopped chan struct{}       // closed when the batcher has exited
	stop    sync.Once

	received, stored, duplicates, applied, givenUp atomic.Int64
}

// receiptWaiter is one Add waiting for its batch.
type receiptWaiter struct {
	r    provider.Receipt
	done chan error // buffered 1: the batcher never blocks on it
}

// NewReceipts returns Receipts over db. Call Run to start it.
func NewReceipts(db *sqlx.DB, opts ReceiptOptions, log *slog.Logger) *Receipts {
	opts.defaults()
	return &Receipts{db: db, opts: opts, log: log, in: make(chan *receiptWaiter), stopped: make(chan struct{})}
}

// ReceiptStats counts receipts since start, for metrics.
type ReceiptStats struct {
	Received   int64 // final receipts handed to Add (intermediate ones are not counted)
	Stored     int64 // new rows of the inbox
	Duplicates int64 // receipts the inbox already held (a provider's retry, a repeated report)
	Applied    int64 // messages moved to delivered or undelivered
	GivenUp    int64 // receipts closed unapplied after RetryUnmatchedFor
}

// Stats returns the counters.
func (r *Receipts) Stats() ReceiptStats {
	return ReceiptStats{
		Received:   r.received.Load(),
		Stored:     r.stored.Load(),
		Duplicates: r.duplicates.Load(),
		Applied:    r.applied.Load(),
		GivenUp:    r.givenUp.Load(),
	}
}

// Applied returns how many messages receipts have moved to delivered or
// undelivered since start.
func (r *Receipts) Applied() int64 { return r.applied.Load() }

// Add stores rc and applies it if its message is sent, returning once the
// batch holding it has committed. An intermediate receipt (Status "")
// changes nothing and returns nil at once. It returns ctx's error if ctx
// ends first (the receipt may still be committed; a repeat is harmless),
// ErrReceiptsStopped when Run is not running, and the batch's error
// (UNAVAILABLE when PostgreSQL is down) when the batch failed, in which
// case nothing of it was stored.
func (r *Receipts) Add(ctx context.Context, rc provider.Receipt) error {
	if rc.Status == "" {
		return nil
	}
	if rc.Status != provider.Delivered && rc.Status != provider.Undelivered {
		return fmt.Errorf("receipt %s/%s: unknown status %q", rc.Provider, rc.MessageID, rc.Status)
	}
	if rc.Provider == "" || rc.MessageID == "" {
		return fmt.Errorf("receipt without provider or message id")
	}
	r.received.Add(1)
	w := &receiptWaiter{r: rc, done: make(chan error, 1)}
	select {
	case r.in <- w:
	case <-r.stopped:
		return ErrReceiptsStopped
	case <-ctx.Done():
		return ctx.Err()
	}
	select {
	case err := <-w.done:
		return err
	case <-ctx.Done():
		return ctx.Err()
	}
}

// Run runs the batcher, which commits what Add hands it, and the periodic
// pass, which applies receipts that arrived before their message was
// recorded as sent and gives up on those older than RetryUnmatchedFor. It
// returns when ctx has ended and both have returned. The batch being
// collected when ctx ends is still committed (within batchTimeout); Adds
// made after that get ErrReceiptsStopped. Call it once, and end it after
// the HTTP server has stopped, so webhooks in flight are answered.
func (r *Receipts) Run(ctx context.Context) {
	var wg sync.WaitGroup
	// Returns when ctx ends (loop.Every).
	wg.Go(func() { loop.Every(ctx, r.opts.RetryInterval, "delivery receipt retry", r.log, r.retryUnapplied) })
	r.batcher(ctx)
	wg.Wait()
}

// batcher collects waiters into batches and commits each, until ctx ends.
// A batch is committed when it holds BatchSize receipts or FlushInterval
// after its first one arrived, whichever comes first.
func (r *Receipts) batcher(ctx context.Context) {
	defer r.stop.Do(func() { close(r.stopped) })
	timer := time.NewTimer(time.Hour)
	timer.Stop()
	defer timer.Stop()
	batch := make([]*receiptWaiter, 0, r.opts.BatchSize)
	for {
		batch = batch[:0]
		select {
		case <-ctx.Done():
			return
		case w := <-r.in:
			batch = append(batch, w)
		}
		timer.Reset(r.opts.FlushInterval)
	collect:
		for len(batch) < r.opts.BatchSize {
			select {
			case w := <-r.in:
				batch = append(batch, w)
			case <-timer.C:
				break collect
			case <-ctx.Done():
				r.commit(ctx, batch) // what is collected is committed all the same
				return
			}
		}
		timer.Stop() // since Go 1.23 a stopped timer delivers nothing stale
		r.commit(ctx, batch)
	}
}

func answerWaiters(batch []*receiptWaiter, err error) {
	for _, w := range batch {
		w.done <- err
	}
}

// commit stores and applies one batch in one transaction, calls OnOptOut
// for its opt-outs, and then answers its waiters. Opt-outs come first: if
// the process dies before they are applied, no waiter was answered, so the
// provider sends the receipt again, and the repeat (a duplicate, but found
// by its message all the same) reports the opt-out again. A batch already
// collected is committed even if ctx ends meanwhile (shutdown), within
// batchTimeout, so its waiters are answered with the truth.
func (r *Receipts) commit(ctx context.Context, batch []*receiptWaiter) {
	ctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), batchTimeout)
	defer cancel()
	rows := make([]provider.Receipt, len(batch))
	for i, w := range batch {
		rows[i] = w.r
	}
	// The same order in every transaction: two replicas inserting the same
	// receipts (a provider retrying across them) cannot deadlock on the
	// unique index.
	slices.SortFunc(rows, func(a, b provider.Receipt) int {
		return cmp.Or(cmp.Compare(a.Provider, b.Provider), cmp.Compare(a.MessageID, b.MessageID),
			cmp.Compare(a.Status, b.Status))
	})
	var (
		inserted int64
		res      applyResult
	)
	err := postgres.InTx(ctx, r.db, func(tx *sqlx.Tx) error {
		var err error
		if inserted, err = insertReceipts(ctx, tx, rows); err != nil {
			return err
		}
		res, err = applyReceipts(ctx, tx, rows, r.wantedEvents())
		return err
	})
	if err == nil {
		r.stored.Add(inserted)
		r.duplicates.Add(int64(len(rows)) - inserted)
		r.applied.Add(res.moved)
		r.observe(res.tallies)
		r.optOut(ctx, res.optOuts)
	}
	answerWaiters(batch, err)
}

// insertReceiptsSQL writes a batch to the inbox; a receipt it already holds
// (same provider, id and status) is skipped, within the batch too.
const insertReceiptsSQL = `
INSERT INTO provider_receipts (provider, provider_message_id, status, provider_status, error, opt_out)
SELECT provider, provider_message_id, status, provider_status, nullif(error, ''), opt_out
FROM unnest($1::text[], $2::text[], $3::text[], $4::text[], $5::text[], $6::bool[])
     AS v(provider, provider_message_id, status, provider_status, error, opt_out)
ON CONFLICT ON CONSTRAINT provider_receipts_once DO NOTHING`

func insertReceipts(ctx context.Context, tx *sqlx.Tx, rows []provider.Receipt) (int64, error) {
	n := len(rows)
	providers, ids, statuses, words, errTexts := make([]string, n), make([]string, n), make([]string, n), make([]string, n), make([]string, n)
	optOuts := make([]bool, n)
	for i, rc := range rows {
		providers[i], ids[i], statuses[i], words[i], errTexts[i], optOuts[i] =
			rc.Provider, rc.MessageID, string(rc.Status), rc.ProviderStatus, rc.Error, rc.OptOut
	}
	res, err := tx.ExecContext(ctx, insertReceiptsSQL, pq.Array(providers), pq.Array(ids), pq.Array(statuses),
		pq.Array(words), pq.Array(errTexts), pq.Array(optOuts))
	if err != nil {
		return 0, postgres.Classify(err, "store delivery receipts")
	}
	n64, err := res.RowsAffected()
	return n64, postgres.Classify(err, "store delivery receipts")
}

// applyReceiptsSQL applies every unapplied receipt of the messages the
// given provider ids name, in one statement:
//
//   - msg: those messages that have left delivery (a pending or sending one
//     cannot hold a receipt's id yet: the recorder stores the id with
//     sent), locked in id order, so that passes over overlapping messages
//     (the batcher, the periodic pass, other replicas) queue up per message
//     instead of deadlocking. A lock waited for returns the row as the
//     other pass left it.
//   - rcpt: their unapplied receipts, from this batch or waiting since an
//     earlier one.
//   - win: one receipt per message that is still sent; delivered beats
//     undelivered when both are there, then the oldest, so the choice is
//     deterministic. Only sent moves: a final status never moves back, and
//     a later receipt of a final message changes nothing.
//   - moved, marked: the message takes the winner's status; every receipt
//     of rcpt is applied (a losing or late receipt is done with too).
//
// The result is how many messages moved and the (phone, channel) of each
// opt-out: receipts applied here that carry one, and receipts given in $3
// that carry one and whose message exists, applied now or before (a
// provider's retry of a receipt whose opt-out was lost to a crash).
// Receipts whose id matches no such message stay unapplied, for the
// periodic pass.
var applyReceiptsSQL = `
WITH keys AS (
    SELECT provider, provider_message_id, bool_or(opt_out) AS opt_out
    FROM unnest($1::text[], $2::text[], $3::bool[]) AS k(provider, provider_message_id, opt_out)
    GROUP BY provider, provider_message_id
), msg AS (
    SELECT m.id, m.provider, m.provider_message_id, m.status, m.campaign_id, m.customer_id, k.opt_out
    FROM keys k
    JOIN outbound_messages m ON m.provider = k.provider AND m.provider_message_id = k.provider_message_id
    WHERE m.status NOT IN ('pending', 'sending')
    ORDER BY m.id
    FOR UPDATE OF m
), rcpt AS (
    SELECT r.id, r.status, r.provider_status, r.error, r.opt_out, r.received_at,
           msg.id AS message_id, msg.status AS message_status
    FROM msg
    JOIN provider_receipts r ON r.provider = msg.provider AND r.provider_message_id = msg.provider_message_id
    WHERE r.applied_at IS NULL
), win AS (
    SELECT DISTINCT ON (message_id) message_id, status, provider_status, error, received_at
    FROM rcpt
    WHERE message_status = 'sent'
    ORDER BY message_id, status = 'delivered' DESC, id
), moved AS (
    UPDATE outbound_messages m
    SET status = w.status,
        delivered_at = CASE WHEN w.status = 'delivered' THEN w.received_at ELSE m.delivered_at END,
        last_error = CASE WHEN w.status = 'undelivered' THEN coalesce(w.error, w.provider_status) ELSE m.last_error END,
        updated_at = now()
    FROM win w
    WHERE m.id = w.message_id AND m.status = 'sent'
    RETURNING m.id, m.provider, m.status, m.campaign_id, m.customer_id, m.provider_message_id, m.last_error,
              m.delivered_at
), events AS (
    -- message.delivered and message.undelivered for the webhook endpoints
    -- that want them ($4), committed with the moves.
    ` + receiptEventsSQL + `
), tally AS (
    SELECT mv.provider, k.channel, mv.status, count(*) AS n
    FROM moved mv JOIN campaigns k ON k.id = mv.campaign_id
    GROUP BY mv.provider, k.channel, mv.status
), marked AS (
    UPDATE provider_receipts r SET applied_at = now()
    FROM rcpt
    WHERE r.id = rcpt.id AND r.applied_at IS NULL
    RETURNING r.id
), opted AS (
    SELECT DISTINCT u.phone, k.channel
    FROM msg
    JOIN customers u ON u.id = msg.customer_id
    JOIN campaigns k ON k.id = msg.campaign_id
    WHERE msg.opt_out OR EXISTS (SELECT 1 FROM rcpt WHERE rcpt.message_id = msg.id AND rcpt.opt_out)
)
SELECT (SELECT count(*) FROM moved) AS moved,
       (SELECT count(*) FROM marked) AS marked,
       ARRAY(SELECT phone FROM opted ORDER BY phone, channel) AS phones,
       ARRAY(SELECT channel FROM opted ORDER BY phone, channel) AS channels,
       ARRAY(SELECT provider || ' ' || channel || ' ' || status || ' ' || n FROM tally) AS tallies`

// receiptEventsSQL writes the events of the messages moved, which returns
// the columns the data names, when $4 lists their type.
var receiptEventsSQL = outbox.EmitSQL("moved", "'message.' || moved.status",
	`json_build_object('message_id', moved.id, 'campaign_id', moved.campaign_id, 'customer_id', moved.customer_id,
        'status', moved.status, 'provider', moved.provider, 'provider_message_id', moved.provider_message_id,
        'error', moved.last_error, 'delivered_at', moved.delivered_at)`, "$4")

// applyResult is what one apply did.
type applyResult struct {
	moved   int64 // messages moved to delivered or undelivered
	marked  int64 // receipts applied
	optOuts []phoneOptOut
	tallies []string // "provider channel status n" per group of moved messages
}

type phoneOptOut struct {
	phone string
	ch    channel.Channel
}

// applyReceipts runs applyReceiptsSQL for rows' messages; only rows'
// Provider, MessageID and OptOut are read.
func applyReceipts(ctx context.Context, q sqlx.QueryerContext, rows []provider.Receipt, wanted []string) (applyResult, error) {
	n := len(rows)
	providers, ids, optOuts := make([]string, n), make([]string, n), make([]bool, n)
	for i, rc := range rows {
		providers[i], ids[i], optOuts[i] = rc.Provider, rc.MessageID, rc.OptOut
	}
	var (
		res              applyResult
		phones, channels pq.StringArray
	)
	err := q.QueryRowxContext(ctx, applyReceiptsSQL, pq.Array(providers), pq.Array(ids), pq.Array(optOuts), pq.StringArray(wanted)).
		Scan(&res.moved, &res.marked, &phones, &channels, (*pq.StringArray)(&res.tallies))
	if err != nil {
		return applyResult{}, postgres.Classify(err, "apply delivery receipts")
	}
	for i := range phones {
		res.optOuts = append(res.optOuts, phoneOptOut{phone: phones[i], ch: channel.Channel(channels[i])})
	}
	return res, nil
}

// optOut calls OnOptOut for each opt-out, if it is set.
func (r *Receipts) optOut(ctx context.Context, optOuts []phoneOptOut) {
	if r.opts.OnOptOut == nil {
		return
	}
	for _, o := range optOuts {
		r.opts.OnOptOut(ctx, o.phone, o.ch)
	}
}

// giveUpReceiptsSQL closes up to $2 receipts that have matched no sent
// message for longer than $1: applied_at is set, nothing else changes. A
// provider id we never recorded (not ours, or its message was deleted)
// ends here.
const giveUpReceiptsSQL = `
UPDATE provider_receipts SET applied_at = now()
WHERE id IN (
    SELECT id FROM provider_receipts
    WHERE applied_at IS NULL AND received_at < now() - $1::bigint * interval '1 microsecond'
    ORDER BY received_at
    LIMIT $2)
  AND applied_at IS NULL`

// unappliedReceiptsSQL pages through the unapplied receipts in arrival
// order (provider_receipts_unapplied_idx), after ($1, $2).
const unappliedReceiptsSQL = `
SELECT id, received_at, provider, provider_message_id
FROM provider_receipts
WHERE applied_at IS NULL AND (received_at, id) > ($1, $2)
ORDER BY received_at, id
LIMIT $3`

type unappliedReceipt struct {
	ID                int64     `db:"id"`
	ReceivedAt        time.Time `db:"received_at"`
	Provider          string    `db:"provider"`
	ProviderMessageID string    `db:"provider_message_id"`
}

// retryUnapplied is the periodic pass: it gives up on receipts older than
// RetryUnmatchedFor, then applies the rest whose message has been recorded
// as sent meanwhile, receiptChunk at a time. It returns the error that
// stopped it; the next pass starts over, so stopping half-way loses
// nothing.
func (r *Receipts) retryUnapplied(ctx context.Context) error {
	ctx, cancel := context.WithTimeout(ctx, retryPassTimeout)
	defer cancel()
	var gaveUp int64
	for {
		res, err := r.db.ExecContext(ctx, giveUpReceiptsSQL, r.opts.RetryUnmatchedFor.Microseconds(), receiptChunk)
		if err != nil {
			return postgres.Classify(err, "give up unmatched delivery receipts")
		}
		n, err := res.RowsAffected()
		if err != nil {
			return postgres.Classify(err, "give up unmatched delivery receipts")
		}
		gaveUp += n
		if n < receiptChunk {
			break
		}
	}
	if gaveUp > 0 {
		r.givenUp.Add(gaveUp)
		r.log.Info("gave up on delivery receipts that matched no sent message",
			"receipts", gaveUp, "after", r.opts.RetryUnmatchedFor.String())
	}

	var (
		afterAt time.Time
		afterID int64
	)
	for {
		var page []unappliedReceipt
		if err := r.db.SelectContext(ctx, &page, unappliedReceiptsSQL, afterAt, afterID, receiptChunk); err != nil {
			return postgres.Classify(err, "list unapplied delivery receipts")
		}
		if len(page) == 0 {
			return nil
		}
		rows := make([]provider.Receipt, len(page))
		for i, u := range page {
			rows[i] = provider.Receipt{Provider: u.Provider, MessageID: u.ProviderMessageID}
		}
		res, err := applyReceipts(ctx, r.db, rows, r.wantedEvents())
		if err != nil {
			return err
		}
		r.applied.Add(res.moved)
		r.observe(res.tallies)
		r.optOut(ctx, res.optOuts)
		if len(page) < receiptChunk {
			return nil
		}
		last := page[len(page)-1]
		afterAt, afterID = last.ReceivedAt, last.ID
	}
}

// observe reports an apply's tallies to OnApplied.
func (r *Receipts) observe(tallies []string) {
	if r.opts.OnApplied == nil {
		return
	}
	for _, t := range tallies {
		var prov, ch, status string
		var n int
		if _, err := fmt.Sscan(t, &prov, &ch, &status, &n); err == nil {
			r.opts.OnApplied(ch, prov, status, n)
		}
	}
}

// wantedEvents is the event types to write.
func (r *Receipts) wantedEvents() []string {
	if r.opts.EventTypes == nil {
		return nil
	}
	return r.opts.EventTypes()
}
