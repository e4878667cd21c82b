package messaging

import (
	"context"
	"database/sql"
	"errors"
	"time"

	"github.com/jmoiron/sqlx"

	"github.com/campaignd/dispatch/platform/loop"
	"github.com/campaignd/dispatch/platform/postgres"
)

// materializeChunk is how many customers one materialising transaction
// scans: large enough that a million recipients take few round trips, small
// enough that each transaction stays short, since sends take turns a chunk
// at a time (a 5,000-row chunk is about 0.2 s here; 20,000 made a small send
// wait most of a second per other send in progress). The first chunk of a
// send is smaller, so the workers have jobs within milliseconds of the 202
// instead of after a full chunk.
const (
	materializeChunk      = 5_000
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
}

// SKIP LOCKED lets every replica run the materialiser: each batch is worked
// by one transaction at a time, and the cursor moves in the same
// transaction as the chunk's inserts, so a crash repeats at most a chunk,
// which ON CONFLICT makes harmless. A send not started yet goes first (its
// first chunk is small), then batches take turns a chunk at a time: the next
// one after $1 (the batch worked last), wrapping around. So a small audience
// sent while a million-customer one is being materialised gets its messages
// at once, not after the million.
const nextMaterializationSQL = `
SELECT id, campaign_id, filter, channel, cursor, max_customer_id
FROM dispatch_batches
WHERE filter IS NOT NULL
ORDER BY cursor > 0, id <= $1, id
LIMIT 1
FOR UPDATE SKIP LOCKED`

// The chunk reads customers and customer_opt_outs (the customer feature's)
// in the statement that writes outbound_messages, as the id send does, and
// locks what the messages will reference as the id send does (see
// insertByIDsSQL): the customers FOR KEY SHARE, so an erasure cannot
// interleave (LIMIT counts the rows left after the lock skipped any
// deleted meanwhile, so a short chunk still means the range is done), and
// the campaign FOR KEY SHARE, so it cannot be deleted between
// campaigns_keep_messages' check and this commit (00018). The insert
// returns nothing: only the scan's extent moves the cursor, and a
// RETURNING list would be buffered and counted for every row.
const materializeChunkSQL = `
WITH campaign AS (
    SELECT id FROM campaigns WHERE id = $1 FOR KEY SHARE
), chunk AS (
    SELECT c.id,
           EXISTS (SELECT 1 FROM customer_opt_outs o WHERE o.customer_id = c.id AND o.channel = $2) AS opted_out
    FROM customers c
    WHERE c.id > $3 AND c.id <= $4
      AND ($5 = '' OR lower(c.location) = lower($5))
      AND ($6 = '' OR lower(c.preferred_product) = lower($6))
    ORDER BY c.id
    LIMIT $7
    FOR KEY SHARE OF c
), ins AS (
    INSERT INTO outbound_messages (campaign_id, customer_id)
    SELECT k.id, c.id FROM chunk c CROSS JOIN campaign k WHERE NOT c.opted_out ORDER BY c.id
    ON CONFLICT (campaign_id, customer_id) WHERE NOT test DO NOTHING
)
SELECT coalesce(max(id), 0) AS last_customer, count(*) AS scanned FROM chunk`

// wakeMaterializer asks the materialiser to look for work now.
func (s *Service) wakeMaterializer() {
	select {
	case s.wake <- struct{}{}:
	default:
	}
}

// RunMaterializer turns pending audience sends into messages, chunk by
// chunk, waking the feeder as each chunk commits, until ctx ends. It wakes on
// every audience send in this process and every interval otherwise (for
// sends accepted by other replicas, and after a restart), backing off while
// PostgreSQL is down (loop.Every).
func (s *Service) RunMaterializer(ctx context.Context, interval time.Duration) {
	loop.Every(ctx, interval, "materialiser", s.log, func(ctx context.Context) error {
		for {
			worked, err := s.materializeStep(ctx)
			if err != nil || !worked {
				return err
			}
		}
	}, loop.WakeOn(s.wake))
}

// materializeStep does one step of one batch and reports whether there was
// one: create the next chunk's messages (pending, unqueued: the feeder
// queues them in turn with other campaigns'), or, once every customer up to
// the snapshot's bound has a message, mark the batch done (filter NULL).
func (s *Service) materializeStep(ctx context.Context) (bool, error) {
	var m materialization
	err := postgres.InTx(ctx, s.repo.db, func(tx *sqlx.Tx) error {
		err := tx.GetContext(ctx, &m, nextMaterializationSQL, s.materialized.Load())
		if errors.Is(err, sql.ErrNoRows) {
			return nil
		}
		if err != nil {
			return postgres.Classify(err, "find audience to materialise")
		}
		if m.Cursor >= m.MaxCustomerID {
			_, err := tx.ExecContext(ctx, `UPDATE dispatch_batches SET filter = NULL WHERE id = $1`, m.ID)
			if err == nil {
				s.log.Info("audience materialised", "campaign_id", m.CampaignID, "batch_id", m.ID)
			}
			return postgres.Classify(err, "finish materialisation")
		}
		var out struct {
			Last    int64 `db:"last_customer"`
			Scanned int   `db:"scanned"`
		}
		limit := materializeChunk
		if m.Cursor == 0 {
			limit = materializeFirstChunk
		}
		if err := tx.GetContext(ctx, &out, materializeChunkSQL, m.CampaignID, m.Channel, m.Cursor, m.MaxCustomerID,
			m.Filter.Location, m.Filter.PreferredProduct, limit); err != nil {
			return postgres.Classify(err, "materialise chunk")
		}
		upTo := max(out.Last, m.Cursor)
		if out.Scanned < limit {
			upTo = m.MaxCustomerID // nothing matches beyond the last row scanned
		}
		_, err = tx.ExecContext(ctx, `UPDATE dispatch_batches SET cursor = $2 WHERE id = $1`, m.ID, upTo)
		return postgres.Classify(err, "advance materialisation")
	})
	if err != nil || m.ID == 0 {
		return false, err
	}
	s.materialized.Store(m.ID)
	s.WakeFeeder()
	return true, nil
}
