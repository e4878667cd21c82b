package mock

import (
	"context"
	"fmt"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"github.com/jmoiron/sqlx"
	"github.com/lib/pq"

	"github.com/campaignd/dispatch/platform/postgres"
)

// Group-commit tuning of PostgresLedger.
const (
	ledgerMaxBatch   = 500              // calls written by one statement at most
	ledgerMaxFlushes = 2                // batches being written at once, per ledger
	ledgerTimeout    = 30 * time.Second // a batch's write gives up after this
	ledgerRetries    = 3                // attempts of a batch that hit a deadlock
	ledgerWhat       = "mock ledger"    // context of its errors
)

// PostgresLedger keeps the mock provider's deliveries in the mock_deliveries
// table, so they survive a restart and crash tests can count deliveries per
// message across process deaths.
//
// It group-commits: a call joins the batch being gathered, which is
// written, with one statement in its own transaction, as soon as fewer than
// ledgerMaxFlushes batches are being written; calls arriving while batches
// are being written gather in the next one, up to ledgerMaxBatch. An idle
// ledger writes a call at once; a busy one batches more the busier it is,
// and a batch waits for about one write's time at most. Each call returns
// only once its batch has committed, so a delivery the mock reports always
// has its row. A batch's writer is a goroutine that exits once the batch is
// written: the ledger holds no goroutine while idle and needs no Close.
type PostgresLedger struct {
	stmts    *postgres.Statements // ledgerSQL, prepared once per connection of its pool
	maxBatch int
	slots    chan struct{} // one token per batch being written

	mu   sync.Mutex
	open *ledgerBatch // the batch taking calls, nil if none

	statements atomic.Int64 // batch statements run, for tests
}

// NewPostgresLedger returns a ledger over db.
func NewPostgresLedger(db *sqlx.DB) *PostgresLedger {
	return &PostgresLedger{stmts: postgres.NewStatements(db), maxBatch: ledgerMaxBatch,
		slots: make(chan struct{}, ledgerMaxFlushes)}
}

// ledgerCall is one Seen (deliver false) or Deliver call.
type ledgerCall struct {
	key     int64
	deliver bool
	content string
}

// ledgerBatch is calls written together. calls is appended to under the
// ledger's mutex until the batch is detached from it; results and err are
// set before done is closed.
type ledgerBatch struct {
	calls   []ledgerCall
	done    chan struct{} // closed when the batch committed or failed
	results []bool        // per call: Seen's or Deliver's answer
	err     error
}

// Seen implements Ledger: it counts the call if key was delivered before.
func (l *PostgresLedger) Seen(ctx context.Context, key int64) (bool, error) {
	return l.call(ctx, ledgerCall{key: key})
}

// Deliver implements Ledger: the first call for a key inserts it; later
// calls only count themselves.
func (l *PostgresLedger) Deliver(ctx context.Context, key int64, content string) (bool, error) {
	return l.call(ctx, ledgerCall{key: key, deliver: true, content: content})
}

// call adds c to the open batch, starting one if there is none, and waits
// for the batch's commit. A caller whose ctx ends first gets an error while
// its call may still be written, as a statement cancelled mid-flight may
// have committed: the mock then reports no delivery, and a later Seen finds
// it.
func (l *PostgresLedger) call(ctx context.Context, c ledgerCall) (bool, error) {
	if err := ctx.Err(); err != nil {
		return false, postgres.Classify(err, ledgerWhat)
	}
	l.mu.Lock()
	b := l.open
	if b == nil {
		b = &ledgerBatch{done: make(chan struct{})}
		l.open = b
		go l.run(b)
	}
	i := len(b.calls)
	b.calls = append(b.calls, c)
	if len(b.calls) >= l.maxBatch {
		l.open = nil
	}
	l.mu.Unlock()

	select {
	case <-b.done:
		if b.err != nil {
			return false, b.err
		}
		return b.results[i], nil
	case <-ctx.Done():
		return false, postgres.Classify(ctx.Err(), ledgerWhat)
	}
}

// run writes b as soon as a write slot is free: at once if fewer than
// ledgerMaxFlushes batches are being written. Until then b keeps taking
// calls (up to maxBatch), so the busier the database, the larger the
// batches, and a batch waits at most about one write's time.
func (l *PostgresLedger) run(b *ledgerBatch) {
	l.slots <- struct{}{}
	l.mu.Lock()
	if l.open == b {
		l.open = nil
	}
	l.mu.Unlock()
	// Detached under the mutex: b.calls no longer changes.
	b.results, b.err = l.write(b.calls)
	<-l.slots
	close(b.done)
}

// ledgerSQL applies a batch of calls, aggregated per key ($1, distinct), in
// one statement. A key with a Deliver ($2) is inserted with $3 as content
// and $5 as calls (its first Deliver and every call after it), or, if it is
// there already, counts all its calls ($4); the statement returns it with
// whether it was inserted. A key with only Seen calls counts them all ($4)
// if it is there, and is returned only then.
const ledgerSQL = `
WITH input AS (
    SELECT * FROM unnest($1::bigint[], $2::boolean[], $3::text[], $4::integer[], $5::integer[])
        AS t(key, deliver, content, total, fresh_calls)
), ins AS (
    INSERT INTO mock_deliveries AS d (message_id, content, calls)
    SELECT key, content, fresh_calls FROM input WHERE deliver ORDER BY key
    ON CONFLICT (message_id) DO UPDATE
        SET calls = d.calls + (SELECT i.total FROM input i WHERE i.key = EXCLUDED.message_id)
    RETURNING d.message_id, (d.xmax = 0) AS fresh
), upd AS (
    UPDATE mock_deliveries AS d SET calls = d.calls + i.total
    FROM input i
    WHERE NOT i.deliver AND d.message_id = i.key
    RETURNING d.message_id, false AS fresh
)
SELECT message_id, fresh FROM ins
UNION ALL
SELECT message_id, fresh FROM upd`

// keyCalls is a batch's calls for one key.
type keyCalls struct {
	deliver    bool   // some call is a Deliver
	content    string // the first Deliver's
	total      int32  // calls
	freshCalls int32  // calls from the first Deliver on
}

// write applies calls in one statement and returns each call's answer, as
// if the calls had been made one after another in their order.
func (l *PostgresLedger) write(calls []ledgerCall) ([]bool, error) {
	byKey := make(map[int64]*keyCalls, len(calls))
	for _, c := range calls {
		k := byKey[c.key]
		if k == nil {
			k = &keyCalls{}
			byKey[c.key] = k
		}
		k.total++
		if k.deliver {
			k.freshCalls++
		} else if c.deliver {
			k.deliver, k.content, k.freshCalls = true, c.content, 1
		}
	}
	n := len(byKey)
	keys := make([]int64, 0, n)
	for key := range byKey {
		keys = append(keys, key)
	}
	slices.Sort(keys) // lock rows in one order, as other batches do
	deliver, content := make([]bool, n), make([]string, n)
	total, fresh := make([]int32, n), make([]int32, n)
	for i, key := range keys {
		k := byKey[key]
		deliver[i], content[i], total[i], fresh[i] = k.deliver, k.content, k.total, k.freshCalls
	}

	ctx, cancel := context.WithTimeout(context.Background(), ledgerTimeout)
	defer cancel()
	var before map[int64]bool // key → delivered before this batch
	var err error
	for attempt := 1; ; attempt++ {
		before, err = l.exec(ctx, keys, deliver, content, total, fresh)
		if err == nil || attempt == ledgerRetries || !postgres.IsConflict(err) {
			break
		}
	}
	if err != nil {
		return nil, postgres.Classify(err, ledgerWhat)
	}

	// Replay the calls in order against each key's state before the batch.
	results := make([]bool, len(calls))
	for i, c := range calls {
		delivered := before[c.key]
		if c.deliver {
			results[i] = !delivered
			before[c.key] = true
		} else {
			results[i] = delivered
		}
	}
	return results, nil
}

// exec runs ledgerSQL and returns, for each key, whether it was delivered
// before the statement.
func (l *PostgresLedger) exec(ctx context.Context, keys []int64, deliver []bool, content []string,
	total, fresh []int32) (map[int64]bool, error) {
	l.statements.Add(1)
	st, err := l.stmts.Get(ctx, ledgerSQL)
	if err != nil {
		return nil, err
	}
	rows, err := st.QueryContext(ctx, pq.Array(keys), pq.Array(deliver), pq.Array(content),
		pq.Array(total), pq.Array(fresh))
	if err != nil {
		return nil, err
	}
	defer rows.Close()
	before := make(map[int64]bool, len(keys))
	for rows.Next() {
		var key int64
		var isNew bool
		if err := rows.Scan(&key, &isNew); err != nil {
			return nil, err
		}
		before[key] = !isNew
	}
	if err := rows.Err(); err != nil {
		return nil, err
	}
	for i, key := range keys {
		if _, ok := before[key]; deliver[i] && !ok {
			return nil, fmt.Errorf("key %d: no row after its delivery", key)
		}
	}
	return before, nil
}
