package outbox

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"net/url"
	"slices"
	"strconv"
	"sync"
	"time"

	"github.com/jmoiron/sqlx"
	"github.com/lib/pq"

	"github.com/campaignd/dispatch/platform/errs"
	"github.com/campaignd/dispatch/platform/loop"
	"github.com/campaignd/dispatch/platform/postgres"
	"github.com/campaignd/dispatch/platform/webhooksig"
)

// DefaultSchedule is the pause after each failed attempt, the Standard
// Webhooks example schedule: 10 attempts in all, the last about 75 hours
// after the first, so a receiver that is down for a day still gets every
// event.
var DefaultSchedule = []time.Duration{
	5 * time.Second, 5 * time.Minute, 30 * time.Minute, 2 * time.Hour, 5 * time.Hour,
	10 * time.Hour, 14 * time.Hour, 20 * time.Hour, 24 * time.Hour,
}

// NextRetry is the retry policy: after the attempt-th failed attempt (from
// 1), wait schedule[attempt-1]; past the end of schedule, give up (false).
func NextRetry(schedule []time.Duration, attempt int) (time.Duration, bool) {
	if attempt < 1 || attempt > len(schedule) {
		return 0, false
	}
	return schedule[attempt-1], true
}

// Defaults of DispatcherOptions.
const (
	DefaultConcurrency  = 16
	DefaultPerEndpoint  = 4
	DefaultTimeout      = 10 * time.Second
	DefaultDisableAfter = 72 * time.Hour
	DefaultPollInterval = time.Second
	DefaultFanOutBatch  = 1000
	DefaultRetention    = 7 * 24 * time.Hour
)

const (
	// prefetch is how many deliveries per slot a dispatcher claims ahead,
	// so that a claim serves several deliveries: an endpoint's queue holds
	// up to prefetch*PerEndpoint tasks, the process's prefetch*Concurrency.
	prefetch = 8
	// maxRecordBatch bounds the attempts recorded by one statement, and
	// recordLinger how long the recorder waits for more once it has one:
	// a statement per few attempts would cost more than the attempts.
	maxRecordBatch = 256
	recordLinger   = 20 * time.Millisecond
	// fanOutRounds bounds the fan-out statements of one step.
	fanOutRounds = 10
	// recordGrace is how long Run, once ctx has ended, still tries to
	// record the last attempts and release the unfinished ones.
	recordGrace = 5 * time.Second
	// recordTries is how often a batch that fails for a reason other than
	// an unreachable database is tried before it is dropped (its tasks
	// come due again when their lease ends).
	recordTries = 5
	// maxBodyRead is how much of a receiver's answer is read, so that the
	// connection can be reused; the rest is dropped.
	maxBodyRead = 64 << 10
	pruneEvery  = time.Hour
	pruneBatch  = 10000
)

// DispatcherOptions tune a Dispatcher; zero values take the defaults.
type DispatcherOptions struct {
	// Concurrency is how many deliveries this process has in flight at
	// most; PerEndpoint, how many of them go to one endpoint.
	Concurrency, PerEndpoint int
	// Timeout bounds one attempt: connect, send, and the answer's status.
	Timeout time.Duration
	// Schedule is the pause after each failed attempt (see NextRetry);
	// DefaultSchedule if nil. Tests use milliseconds.
	Schedule []time.Duration
	// DisableAfter: an endpoint whose every attempt failed for longer
	// than this is disabled, with a WARN line naming it.
	DisableAfter time.Duration
	// PollInterval is how often the dispatcher looks for new events and
	// for retries that came due when nothing wakes it sooner: the most a
	// new event waits for its first attempt on an idle dispatcher.
	PollInterval time.Duration
	// FanOutBatch is about how many events one fan-out statement makes
	// tasks of (whole outbox rows: at least one, however large its batch).
	FanOutBatch int
	// Retention is how long attempts are kept in webhook_deliveries;
	// negative keeps them forever.
	Retention time.Duration
	// Client sends the webhooks; by default one that follows no
	// redirects (a 3xx is a failed attempt) and keeps PerEndpoint idle
	// connections per host.
	Client *http.Client
}

func (o DispatcherOptions) withDefaults() DispatcherOptions {
	if o.Concurrency <= 0 {
		o.Concurrency = DefaultConcurrency
	}
	if o.PerEndpoint <= 0 {
		o.PerEndpoint = DefaultPerEndpoint
	}
	o.PerEndpoint = min(o.PerEndpoint, o.Concurrency)
	if o.Timeout <= 0 {
		o.Timeout = DefaultTimeout
	}
	if o.Schedule == nil {
		o.Schedule = DefaultSchedule
	}
	if o.DisableAfter <= 0 {
		o.DisableAfter = DefaultDisableAfter
	}
	if o.PollInterval <= 0 {
		o.PollInterval = DefaultPollInterval
	}
	if o.FanOutBatch <= 0 {
		o.FanOutBatch = DefaultFanOutBatch
	}
	if o.Retention == 0 {
		o.Retention = DefaultRetention
	}
	if o.Client == nil {
		tr := http.DefaultTransport.(*http.Transport).Clone()
		tr.MaxIdleConns = 2 * o.Concurrency
		tr.MaxIdleConnsPerHost = o.PerEndpoint
		o.Client = &http.Client{
			Transport:     tr,
			CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse },
		}
	}
	return o
}

// Dispatcher delivers the outbox's events. Several may run, in one process
// or in several replicas, on the same database: each claims its work with
// FOR UPDATE SKIP LOCKED and a lease. It never runs in the message delivery
// path, and a slow or dead receiver holds up only its own webhooks (at most
// PerEndpoint of the Concurrency slots).
type Dispatcher struct {
	db  *sqlx.DB
	o   DispatcherOptions
	log *slog.Logger

	// lease is how far a claim pushes a task's next_attempt_at: past the
	// wait in this process's queue (prefetch rounds of Timeout at most),
	// the attempt and its recording, so that only a dispatcher that died
	// (or a database that stayed unreachable) lets it come due again.
	// A task still queued after staleAfter is released instead of sent,
	// lest it be delivered here and by another dispatcher at once.
	lease, staleAfter time.Duration

	stmts *postgres.Statements // the statements run per batch, prepared once: planning their CTEs each time would cost more than running them
}

// NewDispatcher returns a Dispatcher over db; it does nothing until Run.
func NewDispatcher(db *sqlx.DB, o DispatcherOptions, log *slog.Logger) *Dispatcher {
	o = o.withDefaults()
	return &Dispatcher{
		db: db, o: o, log: log,
		lease:      (prefetch+1)*o.Timeout + 30*time.Second,
		staleAfter: prefetch*o.Timeout + 20*time.Second,
		stmts:      postgres.NewStatements(db),
	}
}

// Run delivers until ctx ends; call it once per Dispatcher.
//
// Each step (every PollInterval, or sooner when deliveries finish) claims
// the due tasks of the enabled endpoints, as many as their queues in this
// process have room for, and, when that leaves room, fans more of the
// outbox out into tasks: the outbox is split into tasks at the pace the
// endpoints take them, so a backlog of a million events stays a thousand
// compact outbox rows rather than a million tasks. Claimed tasks wait in
// per-endpoint queues; a goroutine per delivery sends them, PerEndpoint per
// endpoint and Concurrency in all; a recorder goroutine stores the attempts
// in batches. With Retention set, another goroutine prunes attempts hourly.
//
// Shutdown, once ctx ends: no more claims; queued tasks are released (due
// again at once, no attempt counted), and so are deliveries in flight,
// which are cancelled, except those that already had their answer, which
// are recorded; the recorder gets recordGrace to store all that, after
// which what is unrecorded comes due again when its lease ends. Run returns
// when every goroutine it started has returned.
func (d *Dispatcher) Run(ctx context.Context) {
	r := &run{
		d: d, ctx: ctx,
		results: make(chan result, maxRecordBatch),
		wake:    make(chan struct{}, 1),
		lanes:   make(map[int64]*lane),
	}
	defer d.stmts.Close()
	recordCtx, stopRecording := context.WithCancel(context.WithoutCancel(ctx))
	defer stopRecording()
	var recorder, pruner sync.WaitGroup
	recorder.Go(func() { d.record(recordCtx, r.results) }) // returns when results is closed and drained
	if d.o.Retention > 0 {
		pruner.Go(func() { // returns when ctx ends
			loop.Every(ctx, pruneEvery, "webhook retention", d.log, d.prune)
		})
	}

	loop.Every(ctx, d.o.PollInterval, "webhook dispatch", d.log, r.step, loop.WakeOn(r.wake))

	r.mu.Lock()
	r.stopped = true
	for _, l := range r.lanes {
		for _, t := range l.queue {
			r.release(t)
		}
		l.queue = nil
	}
	r.mu.Unlock()
	r.deliveries.Wait()
	close(r.results)
	grace := time.AfterFunc(recordGrace, stopRecording)
	defer grace.Stop()
	recorder.Wait()
	pruner.Wait()
	d.o.Client.CloseIdleConnections()
}

// run is the state of one Run.
type run struct {
	d          *Dispatcher
	ctx        context.Context // Run's: deliveries are cut short when it ends
	results    chan result
	wake       chan struct{}
	deliveries sync.WaitGroup // a goroutine per delivery or release

	mu      sync.Mutex
	lanes   map[int64]*lane // by endpoint
	held    int             // tasks claimed and not yet finished
	running int             // deliveries in flight
	stopped bool
}

// lane is one endpoint's tasks in this process.
type lane struct {
	queue   []task
	running int
}

func (l *lane) held() int { return len(l.queue) + l.running }

const enabledSQL = `SELECT id FROM webhook_endpoints WHERE enabled`

// step claims due tasks while there is room, fanning the outbox out when
// the due tasks run short.
func (r *run) step(ctx context.Context) error {
	var endpoints []int64
	st, err := r.d.stmts.Get(ctx, enabledSQL)
	if err == nil {
		err = st.SelectContext(ctx, &endpoints)
	}
	if err != nil {
		return postgres.Classify(err, "list enabled webhook endpoints")
	}
	r.forget(endpoints)
	for fanned := 0; ; {
		ids, room, want := r.room(endpoints)
		if want > 0 {
			tasks, err := r.d.claim(ctx, want, ids, room)
			if err != nil {
				return err
			}
			r.add(tasks)
			if len(tasks) == want {
				continue // maybe more
			}
		} else if len(endpoints) > 0 {
			return nil // every queue is full: the outbox waits
		}
		// The endpoints with room have nothing due: split more of the
		// outbox into tasks (or, with no endpoint, just empty it).
		if fanned == fanOutRounds {
			return nil
		}
		n, err := r.d.fanOut(ctx)
		if err != nil {
			return err
		}
		fanned++
		if n == 0 {
			return nil
		}
	}
}

// forget releases the queued tasks of endpoints that are no longer enabled
// (disabled or deleted since they were claimed), so they are not sent.
func (r *run) forget(enabled []int64) {
	r.mu.Lock()
	defer r.mu.Unlock()
	for id, l := range r.lanes {
		if len(l.queue) == 0 || slices.Contains(enabled, id) {
			continue
		}
		for _, t := range l.queue {
			r.release(t)
		}
		l.queue = nil
		if l.running == 0 {
			delete(r.lanes, id)
		}
	}
}

// room returns, for the endpoints whose queue here has room, how many tasks
// each may take, and how many to claim in all.
func (r *run) room(endpoints []int64) (ids, room []int64, want int) {
	r.mu.Lock()
	defer r.mu.Unlock()
	laneCap := prefetch * r.d.o.PerEndpoint
	free := prefetch*r.d.o.Concurrency - r.held
	sum := 0
	for _, id := range endpoints {
		n := laneCap
		if l := r.lanes[id]; l != nil {
			n -= l.held()
		}
		if n > 0 {
			ids, room = append(ids, id), append(room, int64(n))
			sum += n
		}
	}
	return ids, room, max(0, min(free, sum))
}

// add queues claimed tasks and starts what the limits allow.
func (r *run) add(tasks []task) {
	now := time.Now()
	r.mu.Lock()
	defer r.mu.Unlock()
	for _, t := range tasks {
		t.claimedAt = now
		l := r.lanes[t.EndpointID]
		if l == nil {
			l = &lane{}
			r.lanes[t.EndpointID] = l
		}
		l.queue = append(l.queue, t)
		r.held++
	}
	r.pumpLocked()
}

// pumpLocked starts queued deliveries while the limits allow, visiting the
// endpoints in random order (map order) so that none has precedence for
// the shared slots.
func (r *run) pumpLocked() {
	if r.stopped {
		return
	}
	for id, l := range r.lanes {
		for r.running < r.d.o.Concurrency && l.running < r.d.o.PerEndpoint && len(l.queue) > 0 {
			t := l.queue[0]
			l.queue = l.queue[1:]
			if time.Since(t.claimedAt) > r.d.staleAfter {
				r.release(t)
				continue
			}
			l.running++
			r.running++
			r.deliveries.Go(func() { // returns when the attempt is handed to the recorder
				res := r.d.deliver(r.ctx, t)
				r.results <- res
				r.finished(t.EndpointID)
			})
		}
		if l.held() == 0 {
			delete(r.lanes, id)
		}
	}
}

// release hands a task back unattempted (r.mu held): it is due again at
// once, for any dispatcher.
func (r *run) release(t task) {
	r.held--
	r.deliveries.Go(func() { r.results <- result{task: t, released: true} }) // returns once handed over
}

// finished frees a delivery's slot, starts the next queued ones, and wakes
// the claims when the endpoint's queue or the process's falls to half its
// size, so that claims come in batches rather than one per delivery.
func (r *run) finished(endpoint int64) {
	r.mu.Lock()
	l := r.lanes[endpoint]
	l.running--
	r.running--
	r.held--
	wake := l.held() == prefetch*r.d.o.PerEndpoint/2 || r.held == prefetch*r.d.o.Concurrency/2
	r.pumpLocked()
	r.mu.Unlock()
	if wake {
		select {
		case r.wake <- struct{}{}:
		default:
		}
	}
}

// fanOutSQL splits outbox rows into one task per event and enabled
// endpoint subscribed to its type, and deletes the rows, in one statement:
// the oldest rows up to $2 events (at least one row), among $1 rows locked
// with SKIP LOCKED, so several dispatchers share the backlog. A row whose
// transaction has not committed is invisible until it has, and then taken
// by a later step, whatever its id. A batch row (items not null) holds an
// array of data; a single event is split as a batch of one. An event's id
// is its row's event_id and its index as 6 hex digits. Events nobody is
// subscribed to are dropped.
const fanOutSQL = `
WITH locked AS (
    SELECT id, coalesce(items, 1) AS items FROM webhook_events
    ORDER BY id
    LIMIT $1
    FOR UPDATE SKIP LOCKED
), pick AS (
    SELECT id FROM (SELECT id, items, sum(items) OVER (ORDER BY id) AS upto FROM locked) x
    WHERE upto - items < $2
), ev AS (
    DELETE FROM webhook_events w USING pick WHERE w.id = pick.id
    RETURNING w.event_id, w.type, w.data, w.items, w.created_at
), tasks AS (
    INSERT INTO webhook_tasks (endpoint_id, event_id, type, data, event_created_at)
    SELECT e.id, ev.event_id || lpad(to_hex(a.n - 1), 6, '0'), ev.type, a.data, ev.created_at
    FROM ev
    CROSS JOIN LATERAL json_array_elements(CASE WHEN ev.items IS NULL THEN json_build_array(ev.data) ELSE ev.data END)
        WITH ORDINALITY AS a(data, n)
    JOIN webhook_endpoints e ON e.enabled AND ev.type = ANY (e.events)
    RETURNING 1
)
SELECT (SELECT count(*) FROM ev) AS events, (SELECT count(*) FROM tasks) AS tasks`

// fanOut runs fanOutSQL once and returns how many outbox rows it took.
func (d *Dispatcher) fanOut(ctx context.Context) (int, error) {
	var n struct {
		Events int `db:"events"`
		Tasks  int `db:"tasks"`
	}
	st, err := d.stmts.Get(ctx, fanOutSQL)
	if err == nil {
		err = st.GetContext(ctx, &n, d.o.FanOutBatch, d.o.FanOutBatch)
	}
	if err != nil {
		return 0, postgres.Classify(err, "fan out webhook events")
	}
	return n.Events, nil
}

// claimSQL takes up to $1 due tasks, at most $3[i] of endpoint $2[i],
// oldest due first, and leases them for $4 seconds. The lateral subquery
// reads each endpoint's due tasks from webhook_tasks_endpoint_due_idx, so
// one endpoint's backlog cannot crowd out the others; SKIP LOCKED leaves
// what another dispatcher is claiming to it.
const claimSQL = `
WITH pick AS (
    SELECT t.id
    FROM unnest($2::bigint[], $3::int[]) AS r(endpoint_id, n)
    CROSS JOIN LATERAL (
        SELECT t.id, t.next_attempt_at
        FROM webhook_tasks t
        WHERE t.endpoint_id = r.endpoint_id AND t.next_attempt_at <= now()
        ORDER BY t.next_attempt_at
        LIMIT r.n
        FOR UPDATE SKIP LOCKED
    ) t
    ORDER BY t.next_attempt_at
    LIMIT $1
)
UPDATE webhook_tasks t
SET next_attempt_at = now() + make_interval(secs => $4)
FROM pick, webhook_endpoints e
WHERE t.id = pick.id AND e.id = t.endpoint_id AND e.enabled
RETURNING t.id, t.endpoint_id, t.attempts, t.event_id, t.type, t.data, t.event_created_at, e.url, e.secret`

// task is one claimed (event, endpoint) pair with what its delivery needs.
type task struct {
	ID         int64           `db:"id"`
	EndpointID int64           `db:"endpoint_id"`
	Attempts   int             `db:"attempts"` // before this one
	EventID    string          `db:"event_id"`
	Type       EventType       `db:"type"`
	Data       json.RawMessage `db:"data"`
	CreatedAt  time.Time       `db:"event_created_at"`
	URL        string          `db:"url"`
	Secret     string          `db:"secret"`
	claimedAt  time.Time
}

func (d *Dispatcher) claim(ctx context.Context, n int, ids, room []int64) ([]task, error) {
	var tasks []task
	st, err := d.stmts.Get(ctx, claimSQL)
	if err == nil {
		err = st.SelectContext(ctx, &tasks, n, pq.Array(ids), pq.Array(room), d.lease.Seconds())
	}
	if err != nil {
		return nil, postgres.Classify(err, "claim webhook deliveries")
	}
	return tasks, nil
}

// result is the outcome of one attempt.
type result struct {
	task
	attempt   int
	status    int // 0: no response
	duration  time.Duration
	err       string
	delivered bool // a 2xx
	// released: not attempted, or cut short by shutdown; nothing is
	// recorded and the task is due again at once.
	released bool
}

// deliver makes one attempt: POST the event, signed, within Timeout. A
// panic is a failed attempt.
func (d *Dispatcher) deliver(ctx context.Context, t task) (r result) {
	r = result{task: t, attempt: t.Attempts + 1}
	began := time.Now()
	defer func() {
		if p := recover(); p != nil {
			r.status, r.delivered, r.released = 0, false, false
			r.err = fmt.Sprintf("internal error: %v", p)
			d.log.Error("webhook delivery panicked", "webhook_endpoint_id", t.EndpointID, "event_id", t.EventID, "panic", p)
		}
		r.duration = time.Since(began)
	}()
	body, err := json.Marshal(Event{ID: t.EventID, Type: t.Type, CreatedAt: t.CreatedAt.UTC(), Data: t.Data})
	if err != nil {
		r.err = "internal error: " + err.Error()
		return r
	}
	actx, cancel := context.WithTimeout(ctx, d.o.Timeout)
	defer cancel()
	req, err := http.NewRequestWithContext(actx, http.MethodPost, t.URL, bytes.NewReader(body))
	if err != nil {
		r.err = errs.Clip(err.Error())
		return r
	}
	now := time.Now()
	sig, err := webhooksig.Sign(t.Secret, t.EventID, now, body)
	if err != nil {
		r.err = "internal error: " + err.Error()
		return r
	}
	req.Header.Set("Content-Type", "application/json")
	req.Header.Set("User-Agent", "dispatch-webhooks/1")
	req.Header.Set(webhooksig.HeaderID, t.EventID)
	req.Header.Set(webhooksig.HeaderTimestamp, strconv.FormatInt(now.Unix(), 10))
	req.Header.Set(webhooksig.HeaderSignature, sig)
	resp, err := d.o.Client.Do(req)
	if err != nil {
		switch {
		case ctx.Err() != nil:
			r.released = true
		case errors.Is(actx.Err(), context.DeadlineExceeded):
			r.err = fmt.Sprintf("timed out after %s", d.o.Timeout)
		default:
			r.err = transportError(err)
		}
		return r
	}
	_, _ = io.Copy(io.Discard, io.LimitReader(resp.Body, maxBodyRead))
	resp.Body.Close()
	r.status = resp.StatusCode
	if resp.StatusCode >= 200 && resp.StatusCode <= 299 {
		r.delivered = true
	} else {
		r.err = fmt.Sprintf("HTTP %d %s", resp.StatusCode, http.StatusText(resp.StatusCode))
	}
	return r
}

// transportError describes a failed request without its URL, which may
// carry credentials.
func transportError(err error) string {
	var ue *url.Error
	if errors.As(err, &ue) {
		err = ue.Err
	}
	return errs.Clip(err.Error())
}

// record stores attempts in batches: what arrives within recordLinger of
// the first, up to maxRecordBatch, per statement. It returns when results
// is closed and drained.
func (d *Dispatcher) record(ctx context.Context, results <-chan result) {
	batch := make([]result, 0, maxRecordBatch)
	linger := time.NewTimer(recordLinger)
	defer linger.Stop()
	for r := range results {
		batch = append(batch[:0], r)
		linger.Reset(recordLinger)
	gather:
		for len(batch) < maxRecordBatch {
			select {
			case r, ok := <-results:
				if !ok {
					break gather
				}
				batch = append(batch, r)
			case <-linger.C:
				break gather
			}
		}
		d.recordBatch(ctx, batch)
	}
}

// recordBatch stores one batch, retrying while the database is
// unreachable; when it cannot, the batch's tasks come due again at the end
// of their lease (one more attempt, never a lost one).
func (d *Dispatcher) recordBatch(ctx context.Context, batch []result) {
	ctx, giveUp := context.WithCancel(ctx)
	defer giveUp()
	tries := 0
	err := loop.Retry(ctx, "recording webhook deliveries", d.log, func(ctx context.Context) error {
		actx, cancel := context.WithTimeout(ctx, 10*time.Second)
		defer cancel()
		err := d.store(actx, batch)
		if err != nil && !postgres.IsUnavailable(err) && actx.Err() == nil {
			if tries++; tries == recordTries {
				giveUp() // not a passing outage: stop retrying
			}
		}
		return err
	})
	if err != nil {
		d.log.Error("webhook deliveries not recorded; their events will be delivered again when their lease ends",
			"attempts", len(batch), "err", err)
	}
}

// recordSQL stores a batch of attempts: a history row for each (unless the
// endpoint is gone), the task deleted when delivered or given up, else
// moved to its next attempt (released tasks: due now, no attempt counted),
// and the endpoints' failing_since set at their first failure and cleared
// at a success ($12, $13: each endpoint's latest outcome, in id order). The
// unnest arrays $1-$11 are parallel, one element per attempt.
const recordSQL = `
WITH r AS (
    SELECT * FROM unnest($1::bigint[], $2::bigint[], $3::text[], $4::text[], $5::int[], $6::int[], $7::int[],
                         $8::text[], $9::bool[], $10::float8[], $11::bool[])
        AS r(task_id, endpoint_id, event_id, event_type, attempt, status_code, duration_ms,
             error, delivered, retry_in, released)
), hist AS (
    INSERT INTO webhook_deliveries (endpoint_id, event_id, event_type, attempt, status_code, duration_ms, error,
                                    next_retry_at, delivered)
    SELECT r.endpoint_id, r.event_id, r.event_type, r.attempt, nullif(r.status_code, 0), r.duration_ms,
           nullif(r.error, ''), CASE WHEN r.retry_in >= 0 THEN now() + make_interval(secs => r.retry_in) END,
           r.delivered
    FROM r
    WHERE NOT r.released AND EXISTS (SELECT 1 FROM webhook_endpoints e WHERE e.id = r.endpoint_id)
), done AS (
    DELETE FROM webhook_tasks t USING r
    WHERE t.id = r.task_id AND NOT r.released AND (r.delivered OR r.retry_in < 0)
), again AS (
    UPDATE webhook_tasks t
    SET attempts = CASE WHEN r.released THEN t.attempts ELSE r.attempt END,
        next_attempt_at = CASE WHEN r.released THEN now() ELSE now() + make_interval(secs => r.retry_in) END
    FROM r
    WHERE t.id = r.task_id AND (r.released OR (NOT r.delivered AND r.retry_in >= 0))
)
UPDATE webhook_endpoints e
SET failing_since = CASE WHEN h.ok THEN NULL ELSE now() END
FROM unnest($12::bigint[], $13::bool[]) AS h(id, ok)
WHERE e.id = h.id AND h.ok = (e.failing_since IS NOT NULL)`

// store records batch with recordSQL, then, if the batch had a failure,
// disables the endpoints that have failed for too long.
func (d *Dispatcher) store(ctx context.Context, batch []result) error {
	n := len(batch)
	taskIDs, endpoints := make([]int64, n), make([]int64, n)
	eventIDs, types := make([]string, n), make([]string, n)
	attempts, statuses, durations := make([]int64, n), make([]int64, n), make([]int64, n)
	errTexts := make([]string, n)
	delivered, released := make([]bool, n), make([]bool, n)
	retryIn := make([]float64, n)
	latest := map[int64]bool{} // endpoint → its latest outcome in the batch
	failed := false
	for i, r := range batch {
		taskIDs[i], endpoints[i], eventIDs[i], types[i] = r.ID, r.EndpointID, r.EventID, string(r.Type)
		attempts[i], statuses[i], durations[i], errTexts[i] = int64(r.attempt), int64(r.status), r.duration.Milliseconds(), r.err
		delivered[i], released[i], retryIn[i] = r.delivered, r.released, -1
		if r.released {
			continue
		}
		if !r.delivered {
			failed = true
			if wait, ok := NextRetry(d.o.Schedule, r.attempt); ok {
				retryIn[i] = wait.Seconds()
			}
		}
		latest[r.EndpointID] = r.delivered
	}
	// The same lock order in every dispatcher.
	order := make([]int64, 0, len(latest))
	for id := range latest {
		order = append(order, id)
	}
	slices.Sort(order)
	oks := make([]bool, len(order))
	for i, id := range order {
		oks[i] = latest[id]
	}
	st, err := d.stmts.Get(ctx, recordSQL)
	if err != nil {
		return postgres.Classify(err, "prepare record webhook deliveries")
	}
	_, err = st.ExecContext(ctx, pq.Array(taskIDs), pq.Array(endpoints), pq.Array(eventIDs),
		pq.Array(types), pq.Array(attempts), pq.Array(statuses), pq.Array(durations), pq.Array(errTexts),
		pq.Array(delivered), pq.Array(retryIn), pq.Array(released), pq.Array(order), pq.Array(oks))
	if err != nil {
		return postgres.Classify(err, "record webhook deliveries")
	}
	if failed {
		return d.disableFailing(ctx)
	}
	return nil
}

// disableSQL disables the endpoints whose every attempt has failed for
// longer than $1 seconds and drops their pending tasks.
const disableSQL = `
WITH off AS (
    UPDATE webhook_endpoints
    SET enabled = false, disabled_at = now(), updated_at = now(),
        disabled_reason = 'every delivery attempt failed for longer than ' || $2 || ', since ' ||
                          to_char(failing_since AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS"Z"')
    WHERE enabled AND failing_since < now() - make_interval(secs => $1)
    RETURNING id, url, failing_since
), dropped AS (
    DELETE FROM webhook_tasks t USING off WHERE t.endpoint_id = off.id
)
SELECT id, url, failing_since FROM off`

func (d *Dispatcher) disableFailing(ctx context.Context) error {
	var off []struct {
		ID           int64     `db:"id"`
		URL          string    `db:"url"`
		FailingSince time.Time `db:"failing_since"`
	}
	if err := d.db.SelectContext(ctx, &off, disableSQL, d.o.DisableAfter.Seconds(), d.o.DisableAfter.String()); err != nil {
		return postgres.Classify(err, "disable failing webhook endpoints")
	}
	for _, e := range off {
		d.log.WarnContext(ctx, "webhook endpoint disabled: every delivery failed for longer than disable_after; its pending events are dropped",
			"webhook_endpoint_id", e.ID, "url", redact(e.URL), "failing_since", e.FailingSince.UTC(),
			"disable_after", d.o.DisableAfter.String())
	}
	return nil
}

// pruneSQL deletes up to $2 attempts older than $1.
const pruneSQL = `
DELETE FROM webhook_deliveries WHERE id IN (
    SELECT id FROM webhook_deliveries WHERE created_at < $1 LIMIT $2)`

// prune deletes the attempts older than Retention.
func (d *Dispatcher) prune(ctx context.Context) error {
	cutoff := time.Now().Add(-d.o.Retention)
	for {
		res, err := d.db.ExecContext(ctx, pruneSQL, cutoff, pruneBatch)
		if err != nil {
			return postgres.Classify(err, "prune webhook deliveries")
		}
		if n, _ := res.RowsAffected(); n < pruneBatch {
			return nil
		}
	}
}
