package outbox

import (
	"context"
	"encoding/json"
	"errors"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"github.com/jmoiron/sqlx"
	"github.com/lib/pq"

	"github.com/campaignd/dispatch/platform/postgres"
)

func TestEventTypeValid(t *testing.T) {
	t.Parallel()
	for _, typ := range EventTypes() {
		if !typ.Valid() {
			t.Errorf("%s: not Valid", typ)
		}
	}
	for _, typ := range []EventType{"", "message.*", "message.retrying", "Campaign.Finished", "campaign.finished "} {
		if typ.Valid() {
			t.Errorf("%q: Valid", typ)
		}
	}
	if n := len(EventTypes()); n != 8 {
		t.Errorf("%d event types, want 8", n)
	}
}

// TestEmitIsTransactional: an event exists if and only if the transaction
// that wrote it committed.
func TestEmitIsTransactional(t *testing.T) {
	t.Parallel()
	db := newDB(t)
	ctx := t.Context()
	rollback := errors.New("roll back")
	err := postgres.InTx(ctx, db.DB, func(tx *sqlx.Tx) error {
		if err := Emit(ctx, tx, CampaignPaused, map[string]int{"campaign_id": 1}); err != nil {
			return err
		}
		return rollback
	})
	if !errors.Is(err, rollback) {
		t.Fatal(err)
	}
	if n := count(t, db.DB, `SELECT count(*) FROM webhook_events`); n != 0 {
		t.Fatalf("%d events after a rollback, want 0", n)
	}
	if err := postgres.InTx(ctx, db.DB, func(tx *sqlx.Tx) error {
		return Emit(ctx, tx, CampaignPaused, map[string]int{"campaign_id": 2})
	}); err != nil {
		t.Fatal(err)
	}
	var ev struct {
		EventID string `db:"event_id"`
		Type    string `db:"type"`
		Data    string `db:"data"`
		Single  bool   `db:"single"`
	}
	if err := db.GetContext(ctx, &ev, `SELECT event_id, type, data::text AS data, items IS NULL AS single FROM webhook_events`); err != nil {
		t.Fatal(err)
	}
	if ev.Type != "campaign.paused" || ev.Data != `{"campaign_id":2}` || !ev.Single || len(ev.EventID) != 4+26 {
		t.Errorf("event = %+v", ev)
	}
	if ids := eventIDs(t, db.DB); len(ids) != 1 || ids[0] != ev.EventID+"000000" {
		t.Errorf("event ids = %v, want the row's id + 000000", ids)
	}

	if err := Emit(ctx, db.DB, "campaign.exploded", nil); err == nil {
		t.Error("Emit of an unknown type succeeded")
	}
	if err := Emit(ctx, db.DB, CampaignPaused, func() {}); err == nil {
		t.Error("Emit of unmarshallable data succeeded")
	}
	if err := EmitMany(ctx, db.DB, "nope", []any{1}); err == nil {
		t.Error("EmitMany of an unknown type succeeded")
	}
	if err := EmitMany(ctx, db.DB, MessageSent, nil); err != nil {
		t.Errorf("EmitMany of nothing: %v", err)
	}
	if n := count(t, db.DB, `SELECT count(*) FROM webhook_events`); n != 1 {
		t.Errorf("%d events, want 1", n)
	}
}

// TestEmitManyOneStatement: 10,000 events in one statement, in order, well
// under a second.
func TestEmitManyOneStatement(t *testing.T) {
	t.Parallel()
	db := newDB(t)
	ctx := t.Context()
	const n = 10000
	items := make([]any, n)
	for i := range items {
		items[i] = map[string]any{"message_id": i + 1, "campaign_id": 42, "status": "sent", "provider": "mock", "to": "+254700000001"}
	}
	began := time.Now()
	err := postgres.InTx(ctx, db.DB, func(tx *sqlx.Tx) error { return EmitMany(ctx, tx, MessageSent, items) })
	took := time.Since(began)
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("EmitMany of %d events in one statement (and its transaction): %s", n, took.Round(time.Millisecond))
	if took > time.Second {
		t.Errorf("EmitMany of %d events took %s, want well under a second", n, took)
	}
	// Batch rows of BatchItems events.
	if got := count(t, db.DB, `SELECT sum(items) FROM webhook_events WHERE type = 'message.sent' AND json_array_length(data) = items`); got != n {
		t.Fatalf("%d events, want %d", got, n)
	}
	if rows := count(t, db.DB, `SELECT count(*) FROM webhook_events`); rows != n/BatchItems {
		t.Errorf("%d outbox rows, want %d", rows, n/BatchItems)
	}
	// The events keep the items' order.
	if bad := count(t, db.DB, `
		SELECT count(*) FROM (
		    SELECT (a.data->>'message_id')::int AS m, row_number() OVER (ORDER BY w.id, a.n) AS r
		    FROM webhook_events w CROSS JOIN LATERAL json_array_elements(w.data) WITH ORDINALITY AS a(data, n)) x
		WHERE m <> r`); bad != 0 {
		t.Errorf("%d events out of order", bad)
	}
	ids := eventIDs(t, db.DB)
	seen := map[string]bool{}
	for _, id := range ids {
		if len(id) != 4+32 {
			t.Fatalf("event id %q, want evt_ + 32 hex digits", id)
		}
		seen[id] = true
	}
	if len(seen) != n {
		t.Errorf("%d distinct event ids, want %d", len(seen), n)
	}
}

// TestEmitSQLFragment splices EmitSQL into an UPDATE ... RETURNING statement
// as the messaging recorder does: one event per changed row whose type is
// wanted, none when nothing is, nothing at all when the statement's
// transaction rolls back.
func TestEmitSQLFragment(t *testing.T) {
	t.Parallel()
	db := newDB(t)
	ctx := t.Context()
	mustExec(t, db, `CREATE TABLE fake_messages (id bigint PRIMARY KEY, campaign_id bigint, status text)`)
	mustExec(t, db, `INSERT INTO fake_messages SELECT g, 9, 'sending' FROM generate_series(1, 6) g`)
	record := `
WITH v AS (
    SELECT * FROM unnest($1::bigint[], $2::text[]) AS v(id, status)
), upd AS (
    UPDATE fake_messages m SET status = v.status FROM v WHERE m.id = v.id AND m.status = 'sending'
    RETURNING m.id, m.campaign_id, m.status
), events AS (
    ` + EmitSQL("upd", "'message.' || upd.status",
		"json_build_object('message_id', upd.id, 'campaign_id', upd.campaign_id, 'status', upd.status)", "$3") + `
)
SELECT count(*) FROM upd`
	run := func(ids []int64, statuses []string, wanted []string) int {
		t.Helper()
		var n int
		if err := db.GetContext(ctx, &n, record, pq.Array(ids), pq.Array(statuses), pq.Array(wanted)); err != nil {
			t.Fatalf("record: %v", err)
		}
		return n
	}
	// Nobody subscribed: the rows change, no event is written.
	if n := run([]int64{1, 2}, []string{"sent", "failed"}, []string{}); n != 2 {
		t.Fatalf("updated %d rows, want 2", n)
	}
	if n := count(t, db.DB, `SELECT count(*) FROM webhook_events`); n != 0 {
		t.Fatalf("%d events with no subscriber, want 0", n)
	}
	// Only message.failed wanted; 'retrying' is never an event type.
	run([]int64{3, 4, 5}, []string{"sent", "failed", "retrying"}, []string{"message.failed", "campaign.finished"})
	type ev struct {
		Type   string           `db:"type"`
		Data   string           `db:"data"`
		Items  int              `db:"items"`
		Parsed []map[string]any `db:"-"`
	}
	var got []ev
	if err := db.SelectContext(ctx, &got, `SELECT type, data::text AS data, items FROM webhook_events ORDER BY id`); err != nil {
		t.Fatal(err)
	}
	for i := range got {
		if err := json.Unmarshal([]byte(got[i].Data), &got[i].Parsed); err != nil {
			t.Fatalf("data %s: %v", got[i].Data, err)
		}
		got[i].Data = ""
	}
	want := []ev{{Type: "message.failed", Items: 1, Parsed: []map[string]any{{"status": "failed", "message_id": 4.0, "campaign_id": 9.0}}}}
	if diff := cmp.Diff(want, got); diff != "" {
		t.Errorf("events (-want +got):\n%s", diff)
	}
	// The statement's transaction rolls back: no event either.
	tx, err := db.BeginTxx(ctx, nil)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := tx.ExecContext(ctx, record, pq.Array([]int64{6}), pq.Array([]string{"failed"}), pq.Array([]string{"message.failed"})); err != nil {
		t.Fatal(err)
	}
	_ = tx.Rollback()
	if n := count(t, db.DB, `SELECT count(*) FROM webhook_events`); n != 1 {
		t.Errorf("%d events after a rolled-back record, want 1", n)
	}
}

// TestSubscriptions: the cache wants what enabled endpoints receive, after
// a refresh; everything before the first one.
func TestSubscriptions(t *testing.T) {
	t.Parallel()
	db := newDB(t)
	ctx := t.Context()
	subs := NewSubscriptions(db.DB, discardLog())
	if !subs.Wants(MessageSent) || !subs.Wants(CustomerOptedOut) || subs.Wants("message.retrying") {
		t.Error("before the first refresh: want every valid type")
	}
	var none *Subscriptions
	if !none.Wants(MessageSent) {
		t.Error("a nil *Subscriptions: want every type")
	}
	if err := subs.Refresh(ctx); err != nil {
		t.Fatal(err)
	}
	for _, typ := range EventTypes() {
		if subs.Wants(typ) {
			t.Errorf("no endpoint: Wants(%s) = true", typ)
		}
	}
	if diff := cmp.Diff([]string{}, subs.Types()); diff != "" {
		t.Errorf("Types with no endpoint (-want +got):\n%s", diff)
	}

	store := NewStore(db.DB)
	a, err := store.Create(ctx, "https://a.example/hook", []string{"campaign.finished", "message.failed"}, "", "whsec_AAAA")
	if err != nil {
		t.Fatal(err)
	}
	if _, err := store.Create(ctx, "https://b.example/hook", []string{"message.failed", "customer.opted_out"}, "", "whsec_AAAA"); err != nil {
		t.Fatal(err)
	}
	if err := subs.Refresh(ctx); err != nil {
		t.Fatal(err)
	}
	if diff := cmp.Diff([]string{"campaign.finished", "message.failed", "customer.opted_out"}, subs.Types()); diff != "" {
		t.Errorf("Types (-want +got):\n%s", diff)
	}
	if subs.Wants(MessageSent) || subs.Wants(MessageDelivered) || !subs.Wants(MessageFailed) {
		t.Error("Wants does not follow the endpoints' event types")
	}
	// A disabled endpoint's types are not wanted.
	mustExec(t, db, `UPDATE webhook_endpoints SET enabled = false WHERE id = $1`, a.ID)
	if err := subs.Refresh(ctx); err != nil {
		t.Fatal(err)
	}
	if subs.Wants(CampaignFinished) || !subs.Wants(CustomerOptedOut) {
		t.Errorf("after disabling an endpoint: Types = %v", subs.Types())
	}

	// Run refreshes by itself.
	runCtx, cancel := context.WithCancel(ctx)
	done := make(chan struct{})
	go func() { defer close(done); subs.Run(runCtx, 10*time.Millisecond) }() // returns when runCtx ends
	if _, err := store.Create(ctx, "https://c.example/hook", []string{"message.sent"}, "", "whsec_AAAA"); err != nil {
		t.Fatal(err)
	}
	waitFor(t, 5*time.Second, "Run to pick up message.sent", func() bool { return subs.Wants(MessageSent) })
	cancel()
	<-done
}

// TestServiceRefreshesSubscriptions: creating or deleting through the
// service updates this replica's cache at once.
func TestServiceRefreshesSubscriptions(t *testing.T) {
	t.Parallel()
	db := newDB(t)
	ctx := t.Context()
	subs := NewSubscriptions(db.DB, discardLog())
	svc := NewService(NewStore(db.DB), subs, discardLog())
	c, err := svc.Create(ctx, Input{URL: "https://x.example/h", Events: []string{"message.delivered"}})
	if err != nil {
		t.Fatal(err)
	}
	if !subs.Wants(MessageDelivered) || subs.Wants(MessageSent) {
		t.Errorf("after Create: Types = %v", subs.Types())
	}
	if err := svc.Delete(ctx, c.ID); err != nil {
		t.Fatal(err)
	}
	if subs.Wants(MessageDelivered) {
		t.Errorf("after Delete: Types = %v", subs.Types())
	}
}

// BenchmarkWants is the hot path's check.
func BenchmarkWants(b *testing.B) {
	s := &Subscriptions{}
	s.set.Store(loaded | CampaignFinished.bit())
	for b.Loop() {
		if s.Wants(MessageSent) {
			b.Fatal("wants")
		}
	}
}
