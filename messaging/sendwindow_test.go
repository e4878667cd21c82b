package messaging

import (
	"context"
	"encoding/json"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"github.com/jmoiron/sqlx"
	"github.com/lib/pq"

	"github.com/campaignd/dispatch/messaging/provider"
	"github.com/campaignd/dispatch/platform/window"
)

// windowJSON is the stored form of a window from start to end (UTC wall
// clock, to the second).
func windowJSON(t *testing.T, start, end time.Time) string {
	t.Helper()
	b, err := json.Marshal(window.Window{Start: start.UTC().Format("15:04:05"), End: end.UTC().Format("15:04:05"), TimeZone: "UTC"})
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}

func setWindow(t *testing.T, db *sqlx.DB, campaignID int64, w string) {
	t.Helper()
	if _, err := db.Exec(`UPDATE campaigns SET send_window = $2 WHERE id = $1`, campaignID, w); err != nil {
		t.Fatal(err)
	}
}

func TestOpenCampaigns(t *testing.T) {
	t.Parallel()
	now := time.Date(2025, 5, 20, 12, 0, 0, 0, time.UTC)
	rows := []sendingCampaign{
		{ID: 1},
		{ID: 2, Window: []byte(`{"start":"08:00","end":"20:00","timezone":"UTC"}`)},
		{ID: 3, Window: []byte(`{"start":"13:00","end":"20:00","timezone":"UTC"}`)},
		{ID: 4, Window: []byte(`{"start":"14:00","end":"16:00","timezone":"Africa/Nairobi"}`)}, // 11:00–13:00 UTC
		{ID: 5, Window: []byte(`{"start":"08:00","end":"20:00","timezone":"America/New_York"}`)},
		{ID: 6, Window: []byte(`not json`)}, // cannot be stored, but must not hold a campaign forever
	}
	if diff := cmp.Diff([]int64{1, 2, 4, 5, 6}, openCampaigns(rows, now)); diff != "" {
		t.Errorf("open campaigns (-want +got):\n%s", diff)
	}
}

// TestFeederSkipsClosedWindow: a campaign whose window is closed is not
// fed; once it opens, it is.
func TestFeederSkipsClosedWindow(t *testing.T) {
	t.Parallel()
	se := newSweepEnv(t, MaintenanceOptions{})
	_, open := fixture(t, se.db, "Hi", fourCustomers[:2]...)
	closedID, closed := fixture(t, se.db, "Hi", fourCustomers[2:]...)
	now := time.Now()
	setWindow(t, se.db, closedID, windowJSON(t, now.Add(2*time.Hour), now.Add(3*time.Hour)))

	if diff := cmp.Diff(sortedIDs(open...), se.feedAll(t)); diff != "" {
		t.Errorf("fed while closed (-want +got):\n%s", diff)
	}
	setWindow(t, se.db, closedID, windowJSON(t, now.Add(-time.Hour), now.Add(time.Hour)))
	if diff := cmp.Diff(sortedIDs(append(open, closed...)...), se.feedAll(t)); diff != "" {
		t.Errorf("fed once open (-want +got):\n%s", diff)
	}
}

// TestPoolHoldsJobsWhileWindowClosed: jobs of a campaign whose window is
// closed (fed before it closed, or a retry come due) are claimed but not
// sent; they wait for the opening without using an attempt, then go out
// once each.
func TestPoolHoldsJobsWhileWindowClosed(t *testing.T) {
	t.Parallel()
	s := &countingSender{}
	fe := newFlowEnv(t, func(*sqlx.DB) provider.Sender { return s }, RetryPolicy{MaxAttempts: 3, Base: 10 * time.Millisecond})
	campaignID, ids := fixture(t, fe.db, "Hi {first_name}", fourCustomers...)
	opensAt := time.Now().Add(2 * time.Second).Truncate(time.Second)
	setWindow(t, fe.db, campaignID, windowJSON(t, opensAt, opensAt.Add(time.Hour)))
	fe.push(t, ids...)

	type state struct {
		Status   Status     `db:"status"`
		Attempts int        `db:"attempts"`
		Retries  int        `db:"retry_count"`
		Next     *time.Time `db:"next_attempt_at"`
	}
	states := func() []state {
		var out []state
		if err := fe.db.SelectContext(context.Background(), &out,
			`SELECT status, attempts, retry_count, next_attempt_at FROM outbound_messages WHERE id = ANY($1) ORDER BY id`, pq.Array(ids)); err != nil {
			t.Fatal(err)
		}
		return out
	}
	// Every job claimed and put back, waiting for the opening.
	waitFor(t, "jobs held for the window", 5*time.Second, func() bool {
		for _, st := range states() {
			if st.Status != StatusPending || st.Next == nil || !st.Next.Equal(opensAt) {
				return false
			}
		}
		return true
	})
	if time.Now().After(opensAt) {
		t.Skip("the window opened before the jobs were seen held")
	}
	for i, st := range states() {
		if st.Attempts != 0 || st.Retries != 0 {
			t.Errorf("message %d: %d attempts, %d retries while waiting for the window", ids[i], st.Attempts, st.Retries)
		}
		if n := s.callsFor(ids[i]); n != 0 {
			t.Errorf("message %d sent %d times before the window opened", ids[i], n)
		}
	}

	waitFor(t, "messages sent once the window opened", 15*time.Second, allFinal(t, fe.db, ids))
	if time.Now().Before(opensAt) {
		t.Fatalf("messages final before the window opened at %s", opensAt)
	}
	for i, st := range states() {
		if st.Status != StatusSent || st.Attempts != 1 || st.Retries != 0 || s.callsFor(ids[i]) != 1 {
			t.Errorf("message %d: %+v, %d sends; want sent with one attempt and one send", ids[i], st, s.callsFor(ids[i]))
		}
	}
	fe.waitSettled(t)
}

// TestWindowCacheFollowsReads: the pool's view of a campaign's window is
// the one its latest status read found, cleared when the window is removed
// or the campaign stops sending.
func TestWindowCacheFollowsReads(t *testing.T) {
	t.Parallel()
	se := newSweepEnv(t, MaintenanceOptions{})
	id, _ := fixture(t, se.db, "Hi", fourCustomers[:1]...)
	c := newCampaignStatuses(se.svc.Repo())
	ctx := context.Background()
	now := time.Now()

	if !c.sending(ctx, id) {
		t.Fatal("campaign not sending")
	}
	if _, closed := c.windowClosed(id, now); closed {
		t.Error("closed without a window")
	}
	setWindow(t, se.db, id, windowJSON(t, now.Add(2*time.Hour), now.Add(3*time.Hour)))
	c.sending(ctx, id)
	next, closed := c.windowClosed(id, now)
	if !closed || !next.Equal(now.Add(2*time.Hour).Truncate(time.Second)) {
		t.Errorf("windowClosed = %s, %v; want closed until %s", next, closed, now.Add(2*time.Hour).Truncate(time.Second))
	}
	if _, err := se.db.Exec(`UPDATE campaigns SET status = 'paused' WHERE id = $1`, id); err != nil {
		t.Fatal(err)
	}
	if c.sending(ctx, id) {
		t.Error("paused campaign reads as sending")
	}
	if _, closed := c.windowClosed(id, now); closed {
		t.Error("window kept for a campaign that is not sending")
	}
	if _, err := se.db.Exec(`UPDATE campaigns SET status = 'sending', send_window = NULL WHERE id = $1`, id); err != nil {
		t.Fatal(err)
	}
	c.sending(ctx, id)
	if _, closed := c.windowClosed(id, now); closed {
		t.Error("window kept after it was removed")
	}
}
