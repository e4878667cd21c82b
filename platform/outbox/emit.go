package outbox

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"log/slog"
	"strings"
	"sync/atomic"
	"time"

	"github.com/jmoiron/sqlx"

	"github.com/campaignd/dispatch/platform/loop"
	"github.com/campaignd/dispatch/platform/postgres"
)

// insertEvent writes a single event (items NULL: data is the event's).
const insertEvent = `INSERT INTO webhook_events (type, data) VALUES ($1, $2)`

// Emit writes one event of type typ with data (marshalled to JSON; an
// object by convention) through q, which is the caller's transaction: the
// event is delivered if and only if that transaction commits. It writes
// even when no endpoint is subscribed (the dispatcher then drops the
// event); hot paths check Subscriptions.Wants first. An unknown type or
// data that cannot be marshalled is an error and writes nothing.
func Emit(ctx context.Context, q sqlx.ExtContext, typ EventType, data any) error {
	if !typ.Valid() {
		return fmt.Errorf("emit webhook event: unknown type %q", typ)
	}
	b, err := json.Marshal(data)
	if err != nil {
		return fmt.Errorf("emit %s: marshal data: %w", typ, err)
	}
	if _, err := q.ExecContext(ctx, insertEvent, string(typ), string(b)); err != nil {
		return postgres.Classify(err, "emit "+string(typ))
	}
	return nil
}

// BatchItems is the most events one outbox row holds: EmitMany writes one
// row per BatchItems items.
const BatchItems = 1000

// insertEvents writes the elements of a JSON array as batch rows of at most
// $3 events each, in order, in one statement.
const insertEvents = `
INSERT INTO webhook_events (type, data, items)
SELECT $1, json_agg(d.data ORDER BY d.n), count(*)
FROM json_array_elements($2::json) WITH ORDINALITY AS d(data, n)
GROUP BY (d.n - 1) / $3
ORDER BY (d.n - 1) / $3`

// EmitMany writes one event of type typ per item, in order, with ONE
// statement through q (the caller's transaction), as batch rows of up to
// BatchItems events: a message-level batch costs one round trip and one
// outbox row per thousand messages; the dispatcher splits the rows into
// events when it fans them out, off the delivery path. No items writes
// nothing. Errors as Emit's.
func EmitMany(ctx context.Context, q sqlx.ExtContext, typ EventType, items []any) error {
	if !typ.Valid() {
		return fmt.Errorf("emit webhook events: unknown type %q", typ)
	}
	if len(items) == 0 {
		return nil
	}
	var buf bytes.Buffer
	buf.Grow(len(items) * 128)
	buf.WriteByte('[')
	enc := json.NewEncoder(&buf)
	enc.SetEscapeHTML(false)
	for i, it := range items {
		if i > 0 {
			buf.WriteByte(',')
		}
		if err := enc.Encode(it); err != nil {
			return fmt.Errorf("emit %s: marshal item %d: %w", typ, i, err)
		}
	}
	buf.WriteByte(']')
	if _, err := q.ExecContext(ctx, insertEvents, string(typ), buf.String(), BatchItems); err != nil {
		return postgres.Classify(err, fmt.Sprintf("emit %d %s", len(items), typ))
	}
	return nil
}

// EmitSQL returns an INSERT that writes one event per row of from, for a
// statement that already has the rows, so that the events cost no extra
// round trip: the messaging recorder splices it into its single
// UPDATE ... RETURNING statement as one more data-modifying CTE, and the
// events commit (or not) with the change they report. The events of one
// type go into one batch row (see EmitMany), so a recorder batch of 100
// outcomes adds one or two rows, not 100.
//
//   - from is a FROM item of that statement, typically the CTE that
//     RETURNs the changed rows ("upd");
//   - typeExpr is a text expression over from's columns giving each row's
//     event type ("'message.' || upd.status");
//   - dataExpr a json expression giving its data
//     ("json_build_object('message_id', upd.id, ...)"; json rather than
//     jsonb, which costs about twice as much to build);
//   - wanted is the placeholder of a text[] parameter ("$17"), bound to
//     pq.Array(subs.Types()): rows whose type is not in it write nothing,
//     so with no endpoint subscribed to message.* the statement writes no
//     events, and the prepared statement is the same either way. A type
//     that is not an EventType (message.retrying) is never in it.
//
// For example, in messaging's recordSQL, with upd RETURNING the columns
// the data names:
//
//	), hist AS (
//	    ...
//	), events AS (
//	    ` + outbox.EmitSQL("upd",
//	        "'message.' || upd.status",
//	        "json_build_object('message_id', upd.id, 'campaign_id', upd.campaign_id, ...)",
//	        "$17") + `
//	)
//	SELECT id FROM upd
//
// The arguments are SQL written by the caller, never client input.
func EmitSQL(from, typeExpr, dataExpr, wanted string) string {
	return `INSERT INTO webhook_events (type, data, items)
    SELECT ev.type, json_agg(ev.data), count(*)
    FROM (SELECT (` + typeExpr + `)::text AS type, (` + dataExpr + `)::json AS data FROM ` + from + `) AS ev
    WHERE ev.type = ANY (` + wanted + `::text[])
    GROUP BY ev.type`
}

// Subscriptions is a per-process cache of the event types that at least
// one enabled endpoint receives, refreshed by Run, so that a hot path asks
// "does anyone want message.sent?" for the price of an atomic load.
//
// It may lag behind the endpoints table by one refresh interval: events of a
// type an endpoint subscribed to in the last few seconds may not be written
// (the subscription starts within the interval; the endpoint is created on
// this replica, Refresh runs at once). Until the first refresh succeeds it
// wants every type, so a database hiccup at start loses nothing.
type Subscriptions struct {
	db  *sqlx.DB
	log *slog.Logger
	// set is a bit per eventTypes index; loaded marks a set read from the
	// database. Zero: not loaded yet, everything wanted.
	set atomic.Uint32
}

const loaded = 1 << 31

// NewSubscriptions returns a cache over db's endpoints; it is filled by
// Refresh or Run.
func NewSubscriptions(db *sqlx.DB, log *slog.Logger) *Subscriptions {
	return &Subscriptions{db: db, log: log}
}

// Wants reports whether some enabled endpoint receives events of type t (as
// of the last refresh). A nil *Subscriptions wants everything.
func (s *Subscriptions) Wants(t EventType) bool {
	if s == nil {
		return t.Valid()
	}
	set := s.set.Load()
	return set&loaded == 0 && t.Valid() || set&t.bit() != 0
}

// Types returns the wanted types, for EmitSQL's parameter; empty when no
// endpoint is subscribed to anything.
func (s *Subscriptions) Types() []string {
	out := []string{}
	for _, t := range eventTypes {
		if s.Wants(t) {
			out = append(out, string(t))
		}
	}
	return out
}

const subscribedTypes = `SELECT DISTINCT unnest(events) FROM webhook_endpoints WHERE enabled`

// Refresh reads the subscribed types now.
func (s *Subscriptions) Refresh(ctx context.Context) error {
	var types []string
	if err := s.db.SelectContext(ctx, &types, subscribedTypes); err != nil {
		return postgres.Classify(err, "read webhook subscriptions")
	}
	set := uint32(loaded)
	for _, t := range types {
		set |= EventType(t).bit()
	}
	s.set.Store(set)
	return nil
}

// DefaultRefresh is how often Run refreshes: how long a new subscription
// may take to reach every replica's writers.
const DefaultRefresh = 3 * time.Second

// Run refreshes the cache every interval (DefaultRefresh if 0) until ctx
// ends, and then returns; while the database is down it keeps the last set.
func (s *Subscriptions) Run(ctx context.Context, interval time.Duration) {
	if interval <= 0 {
		interval = DefaultRefresh
	}
	loop.Every(ctx, interval, "webhook subscriptions refresh", s.log, s.Refresh)
}

// String lists the wanted types, for logs.
func (s *Subscriptions) String() string { return strings.Join(s.Types(), ",") }
