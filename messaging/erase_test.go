package messaging

import (
	"context"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"

	"github.com/campaignd/dispatch/platform/postgres/pgtest"
)

// erasedRow is what erasure may change of a message, and what must stay.
type erasedRow struct {
	ID         int64     `db:"id"`
	CampaignID int64     `db:"campaign_id"`
	CustomerID *int64    `db:"customer_id"`
	Status     string    `db:"status"`
	Content    *string   `db:"rendered_content"`
	Phone      *string   `db:"phone"`
	LastError  *string   `db:"last_error"`
	Test       bool      `db:"test"`
	UpdatedAt  time.Time `db:"updated_at"`
}

// TestEraseCustomer erases one of two customers as DELETE /customers/{id}
// does (EraseCustomer, then the customer's row): their pending message is
// cancelled; their sent and test messages keep their status but lose the
// rendered text and the phone, as the mock provider's ledger loses the
// text; the message being delivered is left to its worker; the row's
// deletion detaches every message from them; the other customer's messages
// do not change. Erasing again cancels nothing.
func TestEraseCustomer(t *testing.T) {
	t.Parallel()
	db := pgtest.New(t)
	repo := NewRepo(db.DB)
	ctx := context.Background()
	exec := func(query string, args ...any) {
		t.Helper()
		if _, err := db.Exec(query, args...); err != nil {
			t.Fatalf("%s: %v", query, err)
		}
	}
	insert := func(query string, args ...any) int64 {
		t.Helper()
		var id int64
		if err := db.Get(&id, query, args...); err != nil {
			t.Fatalf("%s: %v", query, err)
		}
		return id
	}
	customer := func(phone, name string) int64 {
		return insert(`INSERT INTO customers (phone, first_name) VALUES ($1, $2) RETURNING id`, phone, name)
	}
	campaign := func() int64 {
		return insert(`INSERT INTO campaigns (name, channel, status, base_template)
VALUES ('Erase', 'sms', 'sending', 'Hi {first_name}') RETURNING id`)
	}
	message := func(campaignID, customerID int64, status, content, phone string, test bool) int64 {
		return insert(`
INSERT INTO outbound_messages (campaign_id, customer_id, status, rendered_content, phone, test, updated_at)
VALUES ($1, $2, $3, nullif($4, ''), nullif($5, ''), $6, now() - interval '1 hour') RETURNING id`,
			campaignID, customerID, status, content, phone, test)
	}
	rows := func() map[int64]erasedRow {
		t.Helper()
		var rs []erasedRow
		if err := db.Select(&rs, `
SELECT id, campaign_id, customer_id, status, rendered_content, phone, last_error, test, updated_at
FROM outbound_messages ORDER BY id`); err != nil {
			t.Fatal(err)
		}
		out := make(map[int64]erasedRow, len(rs))
		for _, r := range rs {
			out[r.ID] = r
		}
		return out
	}
	ptr := func(s string) *string { return &s }

	alice, bob := customer("+254712000001", "Alice"), customer("+254712000002", "Bob")
	k1, k2, k3 := campaign(), campaign(), campaign()
	alicePending := message(k1, alice, "pending", "", "", false)
	aliceSent := message(k2, alice, "sent", "Hi Alice", "", false)
	aliceSending := message(k3, alice, "sending", "", "", false)
	aliceTest := message(k2, alice, "sent", "Hi Alice (test)", "+254712000001", true)
	bobPending := message(k1, bob, "pending", "", "", false)
	bobSent := message(k2, bob, "sent", "Hi Bob", "", false)
	exec(`INSERT INTO mock_deliveries (message_id, content) VALUES ($1, 'Hi Alice'), ($2, 'Hi Bob')`, aliceSent, bobSent)
	before := rows()

	cancelled, err := repo.EraseCustomer(ctx, alice)
	if err != nil {
		t.Fatal(err)
	}
	if cancelled != 1 {
		t.Errorf("cancelled %d messages, want 1", cancelled)
	}
	exec(`DELETE FROM customers WHERE id = $1`, alice) // the customer feature's part
	after := rows()

	want := map[int64]erasedRow{}
	for id, r := range before {
		want[id] = r
	}
	erased := func(id int64, change func(*erasedRow)) {
		r := want[id]
		r.CustomerID, r.Content, r.Phone = nil, nil, nil
		if change != nil {
			change(&r)
		}
		want[id] = r
	}
	erased(alicePending, func(r *erasedRow) {
		r.Status, r.LastError = "cancelled", ptr("not sent: customer erased")
		r.UpdatedAt = after[alicePending].UpdatedAt // now
	})
	erased(aliceSent, nil)
	erased(aliceSending, nil) // still sending, its lease untouched: its worker records the outcome
	erased(aliceTest, nil)
	if diff := cmp.Diff(want, after); diff != "" {
		t.Errorf("messages after the erasure (-want +got):\n%s", diff)
	}
	if !after[alicePending].UpdatedAt.After(before[alicePending].UpdatedAt) {
		t.Errorf("the cancelled message's updated_at did not move")
	}
	for _, id := range []int64{bobPending, bobSent} {
		if after[id].CustomerID == nil || *after[id].CustomerID != bob {
			t.Errorf("message %d lost its customer", id)
		}
	}

	var ledger map[int64]string
	func() {
		rs, err := db.Query(`SELECT message_id, content FROM mock_deliveries`)
		if err != nil {
			t.Fatal(err)
		}
		defer rs.Close()
		ledger = map[int64]string{}
		for rs.Next() {
			var id int64
			var content string
			if err := rs.Scan(&id, &content); err != nil {
				t.Fatal(err)
			}
			ledger[id] = content
		}
	}()
	if diff := cmp.Diff(map[int64]string{aliceSent: "", bobSent: "Hi Bob"}, ledger); diff != "" {
		t.Errorf("mock ledger (-want +got):\n%s", diff)
	}

	// Erasing again (a retried DELETE) finds nothing more to do.
	if n, err := repo.EraseCustomer(ctx, alice); err != nil || n != 0 {
		t.Errorf("second erasure: %d cancelled, %v; want 0, nil", n, err)
	}
	if n, err := repo.EraseCustomer(ctx, 999999); err != nil || n != 0 {
		t.Errorf("erasing nobody: %d cancelled, %v; want 0, nil", n, err)
	}
	if diff := cmp.Diff(after, rows()); diff != "" {
		t.Errorf("a repeated erasure changed messages (-before +after):\n%s", diff)
	}
}
