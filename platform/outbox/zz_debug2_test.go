package outbox

import (
	"fmt"
	"github.com/lib/pq"
	"slices"
	"testing"
	"time"
)

func TestZZVariants(t *testing.T) {
	db := newDB(t)
	mustExec(t, db, `CREATE TABLE bench_messages (
		id bigserial PRIMARY KEY, campaign_id bigint NOT NULL, customer_id bigint, status text NOT NULL,
		provider text NOT NULL DEFAULT 'mock', provider_message_id text, attempts int NOT NULL DEFAULT 0,
		sent_at timestamptz, created_at timestamptz NOT NULL DEFAULT now(), updated_at timestamptz NOT NULL DEFAULT now())`)
	mustExec(t, db, `CREATE INDEX ON bench_messages (campaign_id, status, id)`)
	mustExec(t, db, `CREATE INDEX ON bench_messages (campaign_id, id)`)
	mustExec(t, db, `CREATE TABLE ev_lz4 (LIKE webhook_events INCLUDING ALL)`)
	mustExec(t, db, `ALTER TABLE ev_lz4 ALTER COLUMN data SET COMPRESSION lz4`)
	mustExec(t, db, `CREATE TABLE ev_json (id bigserial primary key, event_id text NOT NULL UNIQUE DEFAULT ('evt_' || left(replace(gen_random_uuid()::text, '-', ''), 26)), type text not null, data json not null, items int, created_at timestamptz not null default now())`)
	mustExec(t, db, `ALTER TABLE ev_json ALTER COLUMN data SET COMPRESSION lz4`)
	mustExec(t, db, `CREATE TABLE ev_jpg (id bigserial primary key, event_id text NOT NULL UNIQUE DEFAULT ('evt_' || left(replace(gen_random_uuid()::text, '-', ''), 26)), type text not null, data json not null, items int, created_at timestamptz not null default now())`)
	mustExec(t, db, `CREATE TABLE ev_ext (LIKE webhook_events INCLUDING ALL)`)
	mustExec(t, db, `ALTER TABLE ev_ext ALTER COLUMN data SET STORAGE EXTERNAL`)
	base := `
WITH v AS (
    SELECT * FROM unnest($1::bigint[], $2::text[], $3::text[]) AS v(id, status, provider_id)
), upd AS (
    UPDATE bench_messages m
    SET status = v.status, provider_message_id = v.provider_id, attempts = m.attempts + 1,
        sent_at = now(), updated_at = now()
    FROM v
    WHERE m.id = v.id AND m.status = 'sending'
    RETURNING m.id, m.campaign_id, m.customer_id, m.status, m.provider, m.provider_message_id, m.sent_at
)`
	data := benchEventData
	variants := map[string]string{
		"plain":     base + ` SELECT count(*) FROM upd`,
		"jsonb":     base + `, events AS (` + EmitSQL("upd", "'message.' || upd.status", data, "$4") + `) SELECT count(*) FROM upd`,
		"jsonb_lz4": base + `, events AS (INSERT INTO ev_lz4 (type, data, items) SELECT ev.type, jsonb_agg(ev.data), count(*) FROM (SELECT ('message.' || upd.status)::text AS type, (` + data + `)::jsonb AS data FROM upd) ev WHERE ev.type = ANY($4::text[]) GROUP BY ev.type) SELECT count(*) FROM upd`,
		"jsonb_ext": base + `, events AS (INSERT INTO ev_ext (type, data, items) SELECT ev.type, jsonb_agg(ev.data), count(*) FROM (SELECT ('message.' || upd.status)::text AS type, (` + data + `)::jsonb AS data FROM upd) ev WHERE ev.type = ANY($4::text[]) GROUP BY ev.type) SELECT count(*) FROM upd`,
		"json_lz4": base + `, events AS (INSERT INTO ev_json (type, data, items) SELECT ev.type, json_agg(ev.data), count(*) FROM (SELECT ('message.' || upd.status)::text AS type, json_build_object('message_id', upd.id, 'campaign_id', upd.campaign_id,
    'customer_id', upd.customer_id, 'status', upd.status, 'provider', upd.provider,
    'provider_message_id', upd.provider_message_id, 'sent_at', upd.sent_at) AS data FROM upd) ev WHERE ev.type = ANY($4::text[]) GROUP BY ev.type) SELECT count(*) FROM upd`,
		"json_pglz": base + `, events AS (INSERT INTO ev_jpg (type, data, items) SELECT ev.type, json_agg(ev.data), count(*) FROM (SELECT ('message.' || upd.status)::text AS type, json_build_object('message_id', upd.id, 'campaign_id', upd.campaign_id,
    'customer_id', upd.customer_id, 'status', upd.status, 'provider', upd.provider,
    'provider_message_id', upd.provider_message_id, 'sent_at', upd.sent_at) AS data FROM upd) ev WHERE ev.type = ANY($4::text[]) GROUP BY ev.type) SELECT count(*) FROM upd`,
		"json_rowagg": base + `, events AS (INSERT INTO ev_json (type, data, items) SELECT 'message.sent', json_agg(d), count(*) FROM (SELECT upd.id AS message_id, upd.campaign_id, upd.customer_id, upd.status, upd.provider, upd.provider_message_id, upd.sent_at FROM upd WHERE ('message.' || upd.status) = ANY($4::text[])) d HAVING count(*) > 0) SELECT count(*) FROM upd`,
		"json_lz4_arrays": base + `, events AS (INSERT INTO ev_json (type, data, items) SELECT ev.type, json_agg(ev.data), count(*) FROM (SELECT ('message.' || upd.status)::text AS type, json_build_array(upd.id, upd.campaign_id,
    upd.customer_id, upd.status, upd.provider, upd.provider_message_id, upd.sent_at) AS data FROM upd) ev WHERE ev.type = ANY($4::text[]) GROUP BY ev.type) SELECT count(*) FROM upd`,
	}
	names := []string{"plain", "jsonb", "json_rowagg", "json_lz4", "json_lz4_arrays", "plain"}
	const n = 40000
	mustExec(t, db, `INSERT INTO bench_messages (campaign_id, customer_id, status) SELECT g % 6, g, 'sending' FROM generate_series(1, $1) g`, n*6)
	mustExec(t, db, `ANALYZE bench_messages`)
	idsBy := map[int][]int64{}
	for c := 0; c < 6; c++ {
		var ids []int64
		db.SelectContext(t.Context(), &ids, `SELECT id FROM bench_messages WHERE campaign_id = $1 ORDER BY id`, c)
		idsBy[c] = ids
	}
	times := map[string][]time.Duration{}
	for i := 0; i < n; i += 100 {
		for c, name := range names {
			chunk := idsBy[c][i : i+100]
			st, pid := make([]string, 100), make([]string, 100)
			for j := range chunk {
				st[j], pid[j] = "sent", fmt.Sprint("mock-", chunk[j])
			}
			args := []any{pq.Array(chunk), pq.Array(st), pq.Array(pid)}
			if name != "plain" {
				args = append(args, pq.Array([]string{"message.sent"}))
			}
			var cnt int
			began := time.Now()
			if err := db.GetContext(t.Context(), &cnt, variants[name], args...); err != nil {
				t.Fatal(name, err)
			}
			if c == 5 {
				name = "plain2"
			}
			times[name] = append(times[name], time.Since(began))
		}
	}
	for _, name := range append(names[:5:5], "plain2") {
		ts := times[name]
		slices.Sort(ts)
		var sum time.Duration
		for _, d := range ts {
			sum += d
		}
		t.Logf("%-16s median %s p25 %s mean %s", name, ts[len(ts)/2], ts[len(ts)/4], sum/time.Duration(len(ts)))
	}
	var sz []string
	db.SelectContext(t.Context(), &sz, `SELECT c || ': ' || pg_size_pretty(pg_total_relation_size(c)) FROM unnest(ARRAY['webhook_events','ev_jpg','ev_json']) c`)
	t.Log(sz)
}
