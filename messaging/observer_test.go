package messaging

import (
	"context"
	"errors"
	"sync"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"

	"github.com/campaignd/dispatch/platform/postgres/pgtest"
)

// recordingObserver keeps what the pool reports.
type recordingObserver struct {
	mu       sync.Mutex
	outcomes map[[3]string]int // channel, provider, outcome
	calls    int               // Outcomes calls
	took     map[string]int    // provider → provider calls timed
	busy     int
	maxBusy  int
}

func (o *recordingObserver) Outcomes(channel, provider, outcome string, n int) {
	o.mu.Lock()
	defer o.mu.Unlock()
	o.outcomes[[3]string{channel, provider, outcome}] += n
	o.calls++
}

func (o *recordingObserver) DeliveryTook(provider string, d time.Duration) {
	o.mu.Lock()
	defer o.mu.Unlock()
	if d >= 0 {
		o.took[provider]++
	}
}

func (o *recordingObserver) Busy(delta int) {
	o.mu.Lock()
	defer o.mu.Unlock()
	o.busy += delta
	o.maxBusy = max(o.maxBusy, o.busy)
}

// TestPoolObserver checks each outcome is reported once, with the message's
// channel and the pool's provider: sent, retried and failed after the
// outcome is stored, cancelled when the claim cancels a message (campaign
// cancelled, customer opted out).
func TestPoolObserver(t *testing.T) {
	t.Parallel()
	db := pgtest.New(t)
	_, ids := fixture(t, db.DB, "Hi {first_name}",
		[2]string{"Ann", ""}, // sent at once
		[2]string{"Ben", ""}, // retried once, then sent
		[2]string{"Cat", ""}, // permanent error: failed
		[2]string{"Dee", ""}, // opted out of sms after the send: cancelled
		[2]string{"Eve", ""}, // fails every attempt: retried twice, then failed
	)
	cancelledCampaign, cancelledIDs := fixture(t, db.DB, "Hi", [2]string{"Fay", ""}, [2]string{"Gus", ""})
	if _, err := db.Exec(`UPDATE campaigns SET channel = 'whatsapp', status = 'cancelled' WHERE id = $1`, cancelledCampaign); err != nil {
		t.Fatal(err)
	}
	if _, err := db.Exec(`
INSERT INTO customer_opt_outs (customer_id, channel)
SELECT customer_id, 'sms' FROM outbound_messages WHERE id = $1`, ids[3]); err != nil {
		t.Fatal(err)
	}
	s := newFakeSender()
	netErr := errors.New("network down")
	s.fail[ids[1]] = []error{netErr}
	s.fail[ids[2]] = []error{permanent("invalid number")}
	s.fail[ids[4]] = []error{netErr, netErr, netErr}

	obs := &recordingObserver{outcomes: map[[3]string]int{}, took: map[string]int{}}
	p := NewPool(PoolOptions{Consumer: "test", Concurrency: 4, BatchSize: 3, PollWait: 20 * time.Millisecond,
		Lease: time.Minute, SendTimeout: 2 * time.Second, Provider: "fake", Observer: obs},
		newMemQueue(append(ids, cancelledIDs...)...), NewRepo(db.DB), s,
		RetryPolicy{MaxAttempts: 3, Base: 10 * time.Millisecond, Max: 20 * time.Millisecond}, quiet)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- p.Run(ctx) }()
	all := append(append([]int64{}, ids...), cancelledIDs...)
	waitFor(t, "all messages final", 10*time.Second, allFinal(t, db.DB, all))
	cancel()
	if err := <-done; err != nil {
		t.Fatal(err)
	}

	want := map[[3]string]int{
		{"sms", "fake", OutcomeSent}:           2,
		{"sms", "fake", OutcomeRetried}:        3,
		{"sms", "fake", OutcomeFailed}:         2,
		{"sms", "fake", OutcomeCancelled}:      1,
		{"whatsapp", "fake", OutcomeCancelled}: 2,
	}
	obs.mu.Lock()
	defer obs.mu.Unlock()
	if diff := cmp.Diff(want, obs.outcomes); diff != "" {
		t.Errorf("outcomes (-want +got):\n%s", diff)
	}
	// Ann 1, Ben 2, Cat 1, Eve 3 provider calls.
	if diff := cmp.Diff(map[string]int{"fake": 7}, obs.took); diff != "" {
		t.Errorf("timed provider calls (-want +got):\n%s", diff)
	}
	if obs.busy != 0 || obs.maxBusy < 1 || obs.maxBusy > 4 {
		t.Errorf("busy ended at %d, peaked at %d; want 0, peak within 1..4", obs.busy, obs.maxBusy)
	}
	if st := p.Stats(); st.Sent != 2 || st.Failed != 2 || st.Retried != 3 {
		t.Errorf("pool stats = %+v, want 2 sent, 2 failed, 3 retried", st)
	}
}

// TestRecordReportsSkipped: an outcome for a message no longer in sending
// (finished by another worker) is not stored, and Record says so, so that
// it is not counted twice.
func TestRecordReportsSkipped(t *testing.T) {
	t.Parallel()
	db := pgtest.New(t)
	_, ids := fixture(t, db.DB, "Hi", [2]string{"A", ""}, [2]string{"B", ""})
	if _, err := db.Exec(`UPDATE outbound_messages SET status = 'sending' WHERE id = $1`, ids[0]); err != nil {
		t.Fatal(err)
	}
	repo := NewRepo(db.DB)
	outcomes := []Outcome{
		{ID: ids[0], Status: StatusSent, Content: "Hi", Attempted: true},
		{ID: ids[1], Status: StatusSent, Content: "Hi", Attempted: true},
	}
	skipped, err := repo.Record(context.Background(), outcomes)
	if err != nil {
		t.Fatal(err)
	}
	if diff := cmp.Diff([]int64{ids[1]}, skipped); diff != "" {
		t.Errorf("skipped (-want +got):\n%s", diff)
	}
	// Recorded again (a redelivery), both are skipped.
	skipped, err = repo.Record(context.Background(), outcomes)
	if err != nil {
		t.Fatal(err)
	}
	if diff := cmp.Diff(ids, skipped); diff != "" {
		t.Errorf("skipped on repeat (-want +got):\n%s", diff)
	}
}
