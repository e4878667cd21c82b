package messaging

import (
	"context"
	"database/sql"
	"errors"
	"time"

	"github.com/jmoiron/sqlx"
	"github.com/lib/pq"

	"github.com/campaignd/dispatch/platform/postgres"
)

// materializeChunk is how many customers one materialising transaction
// scans: large enough that a million recipients take few round trips, small
// enough that each transaction and each push stays short. The first chunk
// of a send is smaller, so the workers have jobs within milliseconds of the
// 202 instead of after a full chunk.
const (
	materializeChunk      = 20_000
	materializeFirstChunk = 1_000
)

// materialization is a dispatch batch whose audience is still being turned
// into messages.
type materialization struct {
	ID            int64  `db:"id"`
	CampaignID    int64  `db:"campaign_id"`
	Filter        filter `db:"filter"`
	Channel       string `db:"channel"`
	Cursor        int64  `db:"cursor"`
	MaxCustomerID int64  `db:"max_customer_id"`
	PushedThrough int64  `db:"pushed_through"`
}

// SKIP LOCKED lets every replica run the materialiser: each batch is worked
// by one transaction at a time, and the cursor moves in the same
// transaction as the chunk's inserts, so a crash repeats at most a chunk,
// which ON CONFLICT makes harmless.
const nextMaterializationSQL = `
SELECT id, campaign_id, filter, channel, cursor, max_customer_id, pushed_through
FROM dispatch_batches
WHERE filter IS NOT NULL
ORDER BY id
LIMIT 1
FOR UPDATE SKIP LOCKED`

// The chunk reads customers and customer_opt_outs (the customer feature's)
// in the statement that writes outbound_messages, as the id send does.
const materializeChunkSQL = `
WITH chunk AS (
    SELECT c.id,
           EXISTS (SELECT 1 FROM customer_opt_outs o WHERE o.customer_id = c.id AND o.channel = $2) AS opted_out
    FROM customers c
    WHERE c.id > $3 AND c.id <= $4
      AND ($5 = '' OR lower(c.location) = lower($5))
      AND ($6 = '' OR lower(c.preferred_product) = lower($6))
    ORDER BY c.id
    LIMIT $7
), ins AS (
    INSERT INTO outbound_messages (campaign_id, customer_id)
    SELECT $1, id FROM chunk WHERE NOT opted_out ORDER BY id
    ON CONFLICT (campaign_id, customer_id) DO NOTHING
    RETURNING id
)
SELECT (SELECT coalesce(max(id), 0) FROM chunk) AS last_customer,
       (SELECT count(*) FROM chunk)             AS scanned,
       (SELECT coalesce(array_agg(id), '{}') FROM ins) AS message_ids`

// wakeMaterializer asks the materialiser to look for work now.
func (s *Service) wakeMaterializer() {
	select {
	case s.wake <- struct{}{}:
	default:
	}
}

// RunMaterializer turns pending audience sends into messages, chunk by
// chunk, pushing each chunk's ids as it commits, until ctx ends. It wakes on
// every audience send in this process and every interval otherwise (for
// sends accepted by other replicas, and after a restart).
func (s *Service) RunMaterializer(ctx context.Context, interval time.Duration) {
	t := time.NewTicker(interval)
	defer t.Stop()
	for {
		for {
			worked, err := s.materializeStep(ctx)
			if err != nil {
				if ctx.Err() == nil {
					s.log.Warn("materialising an audience failed; will retry", "err", err)
				}
				break
			}
			if !worked {
				break
			}
		}
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		case <-s.wake:
		}
	}
}

// materializeStep does one step of one batch and reports whether there was
// one. A step is one of: re-push a chunk whose push never happened; create
// and push the next chunk; or, once every customer up to the snapshot's
// bound has been created and pushed, mark the batch done (filter NULL) and
// pushed in the same statement, so the sweeper never sees a finished batch
// that looks unpushed.
func (s *Service) materializeStep(ctx context.Context) (bool, error) {
	var (
		m    materialization
		ids  []int64
		upTo int64
	)
	err := postgres.InTx(ctx, s.repo.db, func(tx *sqlx.Tx) error {
		err := tx.GetContext(ctx, &m, nextMaterializationSQL)
		if errors.Is(err, sql.ErrNoRows) {
			return nil
		}
		if err != nil {
			return postgres.Classify(err, "find audience to materialise")
		}
		switch {
		case m.PushedThrough < m.Cursor:
			// A chunk committed but its push never happened (crash, Redis
			// down): push it before going on.
			return s.repushRange(ctx, tx, m)
		case m.Cursor >= m.MaxCustomerID:
			_, err := tx.ExecContext(ctx, `UPDATE dispatch_batches SET filter = NULL, pushed_at = now() WHERE id = $1`, m.ID)
			if err == nil {
				s.log.Info("audience materialised", "campaign_id", m.CampaignID, "batch_id", m.ID)
			}
			return postgres.Classify(err, "finish materialisation")
		}
		var out struct {
			Last    int64         `db:"last_customer"`
			Scanned int           `db:"scanned"`
			IDs     pq.Int64Array `db:"message_ids"`
		}
		limit := materializeChunk
		if m.Cursor == 0 {
			limit = materializeFirstChunk
		}
		if err := tx.GetContext(ctx, &out, materializeChunkSQL, m.CampaignID, m.Channel, m.Cursor, m.MaxCustomerID,
			m.Filter.Location, m.Filter.PreferredProduct, limit); err != nil {
			return postgres.Classify(err, "materialise chunk")
		}
		ids, upTo = out.IDs, max(out.Last, m.Cursor)
		if out.Scanned < limit {
			upTo = m.MaxCustomerID // nothing matches beyond the last row scanned
		}
		_, err = tx.ExecContext(ctx, `UPDATE dispatch_batches SET cursor = $2 WHERE id = $1`, m.ID, upTo)
		return postgres.Classify(err, "advance materialisation")
	})
	if err != nil || m.ID == 0 {
		return false, err
	}
	if upTo == 0 {
		return true, nil // a re-push or finishing step
	}
	if err := s.queue.Push(ctx, ids); err != nil {
		// pushed_through stays behind cursor: the next step re-pushes it.
		return false, err
	}
	_, err = s.repo.db.ExecContext(ctx, `UPDATE dispatch_batches SET pushed_through = greatest(pushed_through, $2) WHERE id = $1`,
		m.ID, upTo)
	return true, postgres.Classify(err, "record materialised push")
}

// repushRange pushes the pending messages of customers in
// (pushed_through, cursor] and records them pushed, inside the batch's tx.
func (s *Service) repushRange(ctx context.Context, tx *sqlx.Tx, m materialization) error {
	var ids []int64
	if err := tx.SelectContext(ctx, &ids, `
SELECT id FROM outbound_messages
WHERE campaign_id = $1 AND customer_id > $2 AND customer_id <= $3 AND status IN ('pending', 'sending')`,
		m.CampaignID, m.PushedThrough, m.Cursor); err != nil {
		return postgres.Classify(err, "read unpushed chunk")
	}
	if err := s.queue.Push(ctx, ids); err != nil {
		return err
	}
	_, err := tx.ExecContext(ctx, `UPDATE dispatch_batches SET pushed_through = cursor WHERE id = $1`, m.ID)
	return postgres.Classify(err, "record re-push")
}
