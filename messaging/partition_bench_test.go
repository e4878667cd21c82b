package messaging

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"math"
	mrand "math/rand/v2"
	"net/url"
	"os"
	"strconv"
	"testing"
	"time"

	"github.com/jmoiron/sqlx"

	"github.com/campaignd/dispatch/db/migrations"
	"github.com/campaignd/dispatch/platform/postgres"
	"github.com/campaignd/dispatch/platform/postgres/pgtest"
)

// BenchmarkPartitionProbe is the figure behind the partitioning scheme of
// migration 00015 (RANGE on campaign_id): the queue carries message ids
// only, so the claim, the recorder and GET /messages/{id} cannot prune and
// probe every partition. It runs the real Repo.Claim + Repo.Record of
// 100-message batches and Repo.GetMessage on the same messages (100
// campaigns, PARTITION_BENCH_MESSAGES messages, default 200,000) in five
// schemas: migrated to 00014 (one plain table; its attempts given 00015's
// campaign_id) and to 00015 with 1, 4, 12 and 50 partitions, interleaved in
// rounds so the shared host's noise falls on all alike, and reports µs per
// operation and each layout's ratio to the plain table:
//
//	go test -run='^$' -bench=PartitionProbe -benchtime=1x -timeout 30m ./messaging/
func BenchmarkPartitionProbe(b *testing.B) {
	n := 200_000
	if s := os.Getenv("PARTITION_BENCH_MESSAGES"); s != "" {
		v, err := strconv.Atoi(s)
		if err != nil || v < 100_000 {
			b.Fatalf("PARTITION_BENCH_MESSAGES=%q: want a number of at least 100000", s)
		}
		n = v
	}
	const campaigns = 100
	ctx := context.Background()
	type layout struct {
		name       string
		partitions int // 0: the plain table of 00014
		repo       *Repo
		cursor     []int64 // per campaign, the next pending message id
		end        []int64 // per campaign, past its last message id
		claim      time.Duration
		claims     int
		read       time.Duration
		reads      int
	}
	layouts := []*layout{{name: "plain"}, {name: "p1", partitions: 1}, {name: "p4", partitions: 4}, {name: "p12", partitions: 12}, {name: "p50", partitions: 50}}
	for _, l := range layouts {
		db := benchSchema(b, l.partitions)
		fillPartitionBench(b, db, l.partitions, campaigns, n)
		l.repo = NewRepo(db)
		if err := db.Select(&l.cursor, `SELECT min(id) FROM outbound_messages GROUP BY campaign_id ORDER BY campaign_id`); err != nil {
			b.Fatal(err)
		}
		if err := db.Select(&l.end, `SELECT max(id) + 1 FROM outbound_messages GROUP BY campaign_id ORDER BY campaign_id`); err != nil {
			b.Fatal(err)
		}
	}
	rng := mrand.New(mrand.NewPCG(1, 2))
	b.ResetTimer()
	for range b.N {
		for round := 0; round < 5; round++ {
			for _, l := range layouts {
				for range 40 {
					c := rng.IntN(campaigns)
					first := l.cursor[c]
					if first+100 > l.end[c] { // this campaign is used up
						continue
					}
					l.cursor[c] += 100
					ids := make([]int64, 100)
					for i := range ids {
						ids[i] = first + int64(i)
					}
					start := time.Now()
					jobs, _, err := l.repo.Claim(ctx, ids, time.Minute, false)
					if err != nil || len(jobs) != 100 {
						b.Fatalf("%s: claimed %d of 100: %v", l.name, len(jobs), err)
					}
					outs := make([]Outcome, len(jobs))
					for i, j := range jobs {
						outs[i] = Outcome{ID: j.ID, Status: StatusSent, Content: "Hi", Attempted: true, StartedAt: start, AttemptResult: "sent"}
					}
					if _, err := l.repo.Record(ctx, outs); err != nil {
						b.Fatalf("%s: record: %v", l.name, err)
					}
					l.claim += time.Since(start)
					l.claims++
					start = time.Now()
					for _, id := range ids[:20] {
						if _, err := l.repo.GetMessage(ctx, id); err != nil {
							b.Fatalf("%s: get message %d: %v", l.name, id, err)
						}
					}
					l.read += time.Since(start)
					l.reads += 20
				}
			}
		}
	}
	b.StopTimer()
	base := layouts[0]
	us := func(d time.Duration, k int) float64 { return float64(d.Microseconds()) / float64(max(k, 1)) }
	for _, l := range layouts {
		claim, read := us(l.claim, l.claims), us(l.read, l.reads)
		b.ReportMetric(math.Round(claim), l.name+"_claim+record_us")
		b.ReportMetric(math.Round(read), l.name+"_get_message_us")
		if l != base {
			b.ReportMetric(math.Round(100*claim/us(base.claim, base.claims))/100, l.name+"/plain_claim+record")
			b.ReportMetric(math.Round(100*read/us(base.read, base.reads))/100, l.name+"/plain_get_message")
		}
		b.Logf("%-5s claim+record of 100: %7.0f µs (%d batches); GetMessage: %6.0f µs (%d reads)", l.name, claim, l.claims, read, l.reads)
	}
}

// benchSchema is a new schema migrated to 00014 (partitions 0) or to 00015
// with that many partitions made before any campaign exists, dropped when
// the benchmark ends.
func benchSchema(b *testing.B, partitions int) *sqlx.DB {
	b.Helper()
	ctx := context.Background()
	admin, err := postgres.Open(ctx, pgtest.BaseURL(), postgres.Options{CreateDatabase: true, MaxOpenConns: 1})
	if err != nil {
		b.Fatalf("PostgreSQL: %v", err)
	}
	suffix := make([]byte, 6)
	_, _ = rand.Read(suffix)
	schema := "bench_" + hex.EncodeToString(suffix)
	if _, err := admin.Exec(`CREATE SCHEMA ` + schema); err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() {
		if _, err := admin.Exec(`DROP SCHEMA ` + schema + ` CASCADE`); err != nil {
			b.Errorf("drop schema %s: %v", schema, err)
		}
		admin.Close()
	})
	u, _ := url.Parse(pgtest.BaseURL())
	q := u.Query()
	q.Set("search_path", schema)
	u.RawQuery = q.Encode()
	db, err := postgres.Open(ctx, u.String(), postgres.Options{MaxOpenConns: 2})
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { db.Close() })
	p, err := migrations.Provider(db.DB)
	if err != nil {
		b.Fatal(err)
	}
	version := int64(14)
	if partitions > 0 {
		version = 15
	}
	if _, err := p.UpTo(ctx, version); err != nil {
		b.Fatal(err)
	}
	if partitions == 0 {
		// The attempts as 00015 shapes them, so the statements of this
		// code run unchanged: the plain layout differs in partitioning
		// alone.
		if _, err := db.Exec(`ALTER TABLE message_attempts ADD COLUMN campaign_id bigint NOT NULL,
    DROP CONSTRAINT message_attempts_pkey, ADD PRIMARY KEY (message_id, attempt, campaign_id)`); err != nil {
			b.Fatal(err)
		}
	}
	return db
}

// fillPartitionBench makes the partitions (equal ranges of the campaign
// ids), then the campaigns (sending), n/campaigns customers and a pending
// message for each pair, and analyses.
func fillPartitionBench(b *testing.B, db *sqlx.DB, partitions, campaigns, n int) {
	b.Helper()
	// The range the migration made ahead goes: the bench lays out its own.
	var made []int64
	if partitions > 0 {
		if err := db.Select(&made, `SELECT campaign_lo FROM message_partitions`); err != nil {
			b.Fatal(err)
		}
	}
	for _, lo := range made {
		for _, q := range []string{
			`DROP TABLE message_attempts_c` + strconv.FormatInt(lo, 10),
			`DROP TABLE outbound_messages_c` + strconv.FormatInt(lo, 10),
			`DELETE FROM message_partitions WHERE campaign_lo = ` + strconv.FormatInt(lo, 10),
		} {
			if _, err := db.Exec(q); err != nil {
				b.Fatalf("%s: %v", q, err)
			}
		}
	}
	width := (campaigns + partitions - 1) / max(partitions, 1)
	for i := range partitions {
		lo, hi := 1+i*width, 1+(i+1)*width
		if _, err := db.Exec(`SELECT message_partition_make($1, $2)`, lo, hi); err != nil {
			b.Fatal(err)
		}
	}
	for _, q := range []string{
		`INSERT INTO campaigns (name, channel, status, base_template) SELECT 'c' || g, 'sms', 'sending', 'Hi {first_name}' FROM generate_series(1, ` + strconv.Itoa(campaigns) + `) g`,
		`INSERT INTO customers (phone, first_name) SELECT '+1415' || lpad(g::text, 7, '0'), 'c' || g FROM generate_series(1, ` + strconv.Itoa(n/campaigns) + `) g`,
		// Campaign by campaign, as sends create them: a campaign's ids are
		// contiguous, as the feeder pushes them.
		`INSERT INTO outbound_messages (campaign_id, customer_id, queued_at) SELECT k.id, u.id, now() FROM campaigns k, customers u ORDER BY k.id, u.id`,
		`ANALYZE`,
	} {
		if _, err := db.Exec(q); err != nil {
			b.Fatalf("%s: %v", q, err)
		}
	}
	if partitions > 0 {
		var got int
		if err := db.Get(&got, `SELECT count(*) FROM message_partitions`); err != nil || got != partitions {
			b.Fatalf("%d partitions (%v), want %d", got, err, partitions)
		}
	}
}
