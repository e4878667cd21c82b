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
// message_attempts_c<lo> (migration 00013).
type Partition struct {
	CampaignLo int64 `db:"campaign_lo"`
	CampaignHi int64 `db:"campaign_hi"`
}

// Retention keeps the messages table's partitions: it makes the next one
// before campaigns need it, and with a positive keep it drops whole
// partitions whose campaigns all finished longer than keep ago.
type Retention struct {
	db   *sqlx.DB
	keep time.Duration
	log  *slog.Logger
}

// NewRetention returns the partition keeper; keep 0 drops nothing.
func NewRetention(db *sqlx.DB, keep time.Duration, log *slog.Logger) *Retention {
	return &Retention{db: db, keep: keep, log: log}
}

// retentionLockKey makes one replica at a time drop partitions. It is a
// transaction-scoped advisory lock (pg_try_advisory_xact_lock), never a
// session lock, so it works behind PgBouncer's transaction pooling.
const retentionLockKey = 7_401_014

// ensureAheadSQL makes the partition after the newest once campaign ids
// are half way through the newest (or the partition of the next id, should
// it be missing), so the campaigns insert trigger, which makes it otherwise
// inside the request that creates the campaign, seldom has DDL to do.
const ensureAheadSQL = `
WITH n AS (SELECT coalesce(max(id), 0) + 1 AS next FROM campaigns),
     p AS (SELECT max(campaign_lo) AS lo, max(campaign_hi) AS hi FROM message_partitions)
SELECT message_partitions_ensure(CASE WHEN n.next < p.hi AND n.next >= p.lo + (p.hi - p.lo) / 2 THEN p.hi
                                      ELSE n.next END)
FROM n, p`

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
// Every replica runs it; the advisory lock makes the drops one at a time.
func (r *Retention) Run(ctx context.Context, interval time.Duration) {
	loop.Every(ctx, interval, "message retention", r.log, func(ctx context.Context) error {
		_, err := r.Step(ctx)
		return err
	})
}

// Step makes the next partition ahead when it is due and, with a positive keep,
// drops every expired partition, one per transaction (each drop holds the
// table's lock only for its own catalog changes), and returns those it
// dropped. Another replica dropping at the same time makes it stop early.
func (r *Retention) Step(ctx context.Context) ([]Partition, error) {
	if _, err := r.db.ExecContext(ctx, ensureAheadSQL); err != nil {
		return nil, postgres.Classify(err, "make the next message partition")
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

// dropOne drops the oldest expired partition and returns it, or nil when
// there is none or another replica holds the lock.
func (r *Retention) dropOne(ctx context.Context) (*Partition, error) {
	var dropped *Partition
	err := postgres.InTx(ctx, r.db, func(tx *sqlx.Tx) error {
		var locked bool
		if err := tx.GetContext(ctx, &locked, `SELECT pg_try_advisory_xact_lock($1)`, retentionLockKey); err != nil {
			return postgres.Classify(err, "take the retention lock")
		}
		if !locked {
			return nil
		}
		// DETACH and DROP take an exclusive lock on the parent: wait a
		// little for it, never queue every message statement behind a long
		// export. The next run tries again.
		if _, err := tx.ExecContext(ctx, `SET LOCAL lock_timeout = '5s'`); err != nil {
			return postgres.Classify(err, "set lock_timeout")
		}
		var p Partition
		err := tx.GetContext(ctx, &p, expiredSQL, pgInterval(r.keep))
		if errors.Is(err, sql.ErrNoRows) {
			return nil
		}
		if err != nil {
			return postgres.Classify(err, "find expired message partitions")
		}
		// The attempts go first: they reference the messages, and a
		// referenced partition can only be detached once nothing points
		// into it.
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
