package migrations_test

import (
	"context"
	"errors"
	"testing"
	"time"

	"github.com/lib/pq"
)

// referencesVersion is 00018_messages_without_foreign_keys.sql.
const referencesVersion = 18

// TestMessageReferencesWithoutForeignKeys: after 00018 the database still
// does what the messages' foreign keys did on the referenced side: deleting
// customers releases their messages (customer_id NULL, the rest kept), and
// a campaign with messages cannot be deleted (23503, as the key's check
// would say), one without can. After Down the keys are back and hold.
func TestMessageReferencesWithoutForeignKeys(t *testing.T) {
	t.Parallel()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	db, p := newMigrationDB(ctx, t)
	if _, err := p.UpTo(ctx, referencesVersion); err != nil {
		t.Fatal(err)
	}
	mustExec(t, db, `INSERT INTO customers (phone) SELECT '+1415555' || lpad(g::text, 4, '0') FROM generate_series(1, 10) g`)
	mustExec(t, db, `INSERT INTO campaigns (name, channel, base_template) VALUES ('with', 'sms', 'Hi'), ('without', 'sms', 'Hi')`)
	mustExec(t, db, `INSERT INTO outbound_messages (campaign_id, customer_id, status, rendered_content)
SELECT 1, id, 'sent', 'Hi ' || id FROM customers`)

	mustExec(t, db, `DELETE FROM customers WHERE id IN (2, 3, 4)`)
	var released, kept int
	if err := db.Get(&released, `SELECT count(*) FROM outbound_messages WHERE customer_id IS NULL AND rendered_content IN ('Hi 2', 'Hi 3', 'Hi 4')`); err != nil {
		t.Fatal(err)
	}
	if err := db.Get(&kept, `SELECT count(*) FROM outbound_messages WHERE customer_id IS NOT NULL`); err != nil {
		t.Fatal(err)
	}
	if released != 3 || kept != 7 {
		t.Errorf("after deleting 3 of 10 customers: %d messages released, %d still addressed; want 3 and 7", released, kept)
	}

	_, err := db.Exec(`DELETE FROM campaigns WHERE id = 1`)
	if pe, ok := errors.AsType[*pq.Error](err); !ok || pe.Code != "23503" {
		t.Errorf("deleting a campaign with messages: %v, want foreign_key_violation", err)
	}
	mustExec(t, db, `DELETE FROM campaigns WHERE id = 2`)

	if _, err := p.Down(ctx); err != nil {
		t.Fatal(err)
	}
	_, err = db.Exec(`INSERT INTO outbound_messages (campaign_id, customer_id) VALUES (1, 999)`)
	if pe, ok := errors.AsType[*pq.Error](err); !ok || pe.Code != "23503" {
		t.Errorf("after Down, a message for an unknown customer: %v, want foreign_key_violation", err)
	}
	if _, err := p.UpTo(ctx, referencesVersion); err != nil {
		t.Fatal(err)
	}
}
