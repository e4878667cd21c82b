package messaging

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"log/slog"
	"strconv"
	"strings"
	"time"

	"github.com/jmoiron/sqlx"

	"github.com/campaignd/dispatch/platform/loop"
	"github.com/campaignd/dispatch/platform/postgres"
)

// ParseRetention reads MESSAGE_RETENTION: a number of days ("90d") or a Go
// duration ("2160h"); "" and "0" keep messages forever (zero).
func ParseRetention(s string) (time.Duration, error) {
	s = strings.TrimSpace(s)
	if s == "" || s == "0" {
		return 0, nil
	}
	if days, ok := strings.CutSuffix(s, "d"); ok {
		n, err := strconv.Atoi(days)
		if err != nil || n < 0 || n > 100*365 {
			return 0, fmt.Errorf("%q is not a number of days such as 90d", s)
		}
		return time.Duration(n) * 24 * time.Hour, nil
	}
	d, err := time.ParseDuration(s)
	if err != nil || d < 0 {
		return 0, fmt.Errorf("%q is neither a number of days (90d) nor a duration (2160h)", s)
	}
	return d, nil
}

// Partition is one range of campaign ids, [CampaignLo, CampaignHi), whose
// messages and attempts live in the partitions outbound_messages_c<lo> and
// message_attempts_c<lo> (migration 00015).
type Partition struct {
	CampaignLo int64 `db:"campaign_lo"`
	CampaignHi int64 `db:"campaign_hi"`
}

// Retention keeps the messages table's partitions (migration 00015): it
// makes the next range of campaign ids ahead of the campaigns that need it
// and, with a positive keep, drops whole ranges whose campaigns all
// finished longer than keep ago.
type Retention struct {
	db   *sqlx.DB
	keep time.Duration
	log  *slog.Logger
}

// NewRetention returns the partition keeper; keep 0 drops nothing.
func NewRetention(db *sqlx.DB, keep time.Duration, log *slog.Logger) *Retention {
	return &Retention{db: db, keep: keep, log: log}
}

// keeperLockKey makes one replica at a time change partitions. It is a
// transaction-scoped advisory lock (pg_try_advisory_xact_lock), never a
// session lock, so it works behind PgBouncer's transaction pooling. Its
// second half is the schema's, so deployments (and tests) in other schemas
// of the same database do not wait on each other.
const keeperLockKey = 7_401_013

// keeperLockTimeout bounds the wait for the table locks that DDL on a
// partitioned table takes (ACCESS EXCLUSIVE on outbound_messages and
// message_attempts; before 00018 also SHARE ROW EXCLUSIVE on campaigns and
// customers, which the messages' foreign keys referenced): while it waits,
// every statement on those tables queues behind it, so it gives up quickly
// and the next run tries again.
const keeperLockTimeout = "500ms"

// minRangeWidth is the narrowest range of campaign ids a partition covers.
const minRangeWidth = 16

// nextRangeSQL decides whether a range is due and where it goes: when no
// range exists, or the next campaign id is half way through the newest or
// past it. It starts at the newest range's end, or above any campaign id
// the DEFAULT partition holds (so the new partition never claims its
// rows), and is as wide as the campaigns created in the last 30 days (at
// least minRangeWidth), and wide enough to cover the next campaign id.
const nextRangeSQL = `
WITH n AS (SELECT coalesce(max(id), 0) + 1 AS next FROM campaigns),
     p AS (SELECT max(campaign_lo) AS lo, max(campaign_hi) AS hi FROM message_partitions),
     d AS (SELECT coalesce(max(campaign_id), 0) + 1 AS above FROM outbound_messages_default),
     w AS (SELECT greatest($1::bigint, count(*)) AS width FROM campaigns WHERE created_at > now() - interval '30 days'),
     r AS (SELECT greatest(coalesce(p.hi, 1), d.above) AS lo, w.width, n.next
           FROM n, p, d, w
           WHERE p.hi IS NULL OR n.next >= p.lo + (p.hi - p.lo) / 2)
SELECT lo AS campaign_lo, greatest(lo + width, next + width) AS campaign_hi FROM r`

// extend makes the next range if one is due and returns it (nil if none
// was due or another replica holds the lock).
func (r *Retention) extend(ctx context.Context) (*Partition, error) {
	var made *Partition
	err := r.keeperTx(ctx, func(tx *sqlx.Tx) error {
		var p Partition
		err := tx.GetContext(ctx, &p, nextRangeSQL, minRangeWidth)
		if errors.Is(err, sql.ErrNoRows) {
			return nil
		}
		if err != nil {
			return postgres.Classify(err, "plan the next message partition")
		}
		// message_partition_make (migration 00015) makes both tables'
		// partitions, the messages' primary key on id and the attempts'
		// foreign key to it, and lists the range.
		if _, err := tx.ExecContext(ctx, `SELECT message_partition_make($1, $2)`, p.CampaignLo, p.CampaignHi); err != nil {
			return postgres.Classify(err, "make message partition "+strconv.FormatInt(p.CampaignLo, 10))
		}
		made = &p
		return nil
	})
	return made, err
}

// keeperTx runs fn in a transaction holding the keeper's lock, with a
// short lock_timeout; without the lock (another replica has it) fn does
// not run.
func (r *Retention) keeperTx(ctx context.Context, fn func(tx *sqlx.Tx) error) error {
	return postgres.InTx(ctx, r.db, func(tx *sqlx.Tx) error {
		var locked bool
		if err := tx.GetContext(ctx, &locked, `SELECT pg_try_advisory_xact_lock($1, hashtext(current_schema()))`, keeperLockKey); err != nil {
			return postgres.Classify(err, "take the partition keeper's lock")
		}
		if !locked {
			return nil
		}
		if _, err := tx.ExecContext(ctx, `SET LOCAL lock_timeout = '`+keeperLockTimeout+`'`); err != nil {
			return postgres.Classify(err, "set lock_timeout")
		}
		return fn(tx)
	})
}

// expiredSQL finds the oldest partition that may go: a later campaign
// exists (no new campaign can fall in its range), and every campaign in the
// range is finished (sent, failed or cancelled) and finished more than $1
// ago. A draft, scheduled, sending or paused campaign keeps its partition,
// and with it the messages of every campaign in the range. It reads
// campaigns (the campaign feature's) because the partition's fate is the
// campaigns' state.
const expiredSQL = `
SELECT p.campaign_lo, p.campaign_hi
FROM message_partitions p
WHERE p.campaign_hi <= (SELECT coalesce(max(id), 0) FROM campaigns)
  AND NOT EXISTS (
      SELECT 1 FROM campaigns k
      WHERE k.id >= p.campaign_lo AND k.id < p.campaign_hi
        AND (k.status NOT IN ('sent', 'failed', 'cancelled')
             OR coalesce(k.finished_at, k.updated_at) > now() - $1::interval))
ORDER BY p.campaign_lo
LIMIT 1`

// Run keeps the partitions every interval until ctx ends (it returns then).
// Every replica runs it; the advisory lock makes the changes one at a time.
func (r *Retention) Run(ctx context.Context, interval time.Duration) {
	loop.Every(ctx, interval, "partition keeper", r.log, func(ctx context.Context) error {
		_, err := r.Step(ctx)
		return err
	})
}

// Step makes the next range of campaign ids if it is due and, with a
// positive keep, drops every expired range, one per transaction (each
// holds the tables' locks only for its own catalog changes), and returns
// those it dropped.
func (r *Retention) Step(ctx context.Context) ([]Partition, error) {
	made, err := r.extend(ctx)
	if err != nil {
		return nil, err
	}
	if made != nil {
		r.log.Info("made a message partition", "campaign_id_from", made.CampaignLo, "campaign_id_to", made.CampaignHi-1)
	}
	if r.keep <= 0 {
		return nil, nil
	}
	var dropped []Partition
	for {
		p, err := r.dropOne(ctx)
		if err != nil || p == nil {
			return dropped, err
		}
		r.log.Info("dropped the messages of finished campaigns (MESSAGE_RETENTION)",
			"campaign_id_from", p.CampaignLo, "campaign_id_to", p.CampaignHi-1, "retention", r.keep.String())
		dropped = append(dropped, *p)
	}
}

// dropOne drops the oldest expired range and returns it, or nil when there
// is none or another replica holds the lock.
func (r *Retention) dropOne(ctx context.Context) (*Partition, error) {
	var dropped *Partition
	err := r.keeperTx(ctx, func(tx *sqlx.Tx) error {
		var p Partition
		err := tx.GetContext(ctx, &p, expiredSQL, pgInterval(r.keep))
		if errors.Is(err, sql.ErrNoRows) {
			return nil
		}
		if err != nil {
			return postgres.Classify(err, "find expired message partitions")
		}
		// The attempts go first: their partition's foreign key references
		// the messages' partition, which can be neither detached nor
		// dropped while it does.
		suffix := "_c" + strconv.FormatInt(p.CampaignLo, 10)
		for _, stmt := range []string{
			`DROP TABLE message_attempts` + suffix,
			`ALTER TABLE outbound_messages DETACH PARTITION outbound_messages` + suffix,
			`DROP TABLE outbound_messages` + suffix,
		} {
			if _, err := tx.ExecContext(ctx, stmt); err != nil {
				return postgres.Classify(err, "drop message partition "+suffix)
			}
		}
		if _, err := tx.ExecContext(ctx, `DELETE FROM message_partitions WHERE campaign_lo = $1`, p.CampaignLo); err != nil {
			return postgres.Classify(err, "forget message partition "+suffix)
		}
		dropped = &p
		return nil
	})
	return dropped, err
}
