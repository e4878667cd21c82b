package messaging

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"

	"github.com/campaignd/dispatch/messaging/provider"
	"github.com/campaignd/dispatch/platform/channel"
	"github.com/campaignd/dispatch/platform/errs"
	"github.com/campaignd/dispatch/platform/postgres/pgtest"
)

// receiptEnv is a fresh schema with Receipts running over it.
type receiptEnv struct {
	db *pgtest.DB
	r  *Receipts
}

// newReceiptEnv starts Receipts with opts (RetryInterval 20ms unless set)
// and stops it when the test ends.
func newReceiptEnv(t *testing.T, opts ReceiptOptions) *receiptEnv {
	t.Helper()
	return startReceipts(t, pgtest.New(t), opts)
}

// startReceipts is newReceiptEnv over an existing schema.
func startReceipts(t *testing.T, db *pgtest.DB, opts ReceiptOptions) *receiptEnv {
	t.Helper()
	if opts.RetryInterval == 0 {
		opts.RetryInterval = 20 * time.Millisecond
	}
	r := NewReceipts(db.DB, opts, quiet)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { // returns when cancel is called
		defer close(done)
		r.Run(ctx)
	}()
	// Registered after pgtest's, so it runs before the schema is dropped.
	t.Cleanup(func() {
		cancel()
		<-done
	})
	return &receiptEnv{db: db, r: r}
}

func (e *receiptEnv) exec(t *testing.T, query string, args ...any) {
	t.Helper()
	if _, err := e.db.Exec(query, args...); err != nil {
		t.Fatalf("%s: %v", query, err)
	}
}

// customer inserts a customer with phone.
func (e *receiptEnv) customer(t *testing.T, phone string) int64 {
	t.Helper()
	var id int64
	if err := e.db.Get(&id, `INSERT INTO customers (phone) VALUES ($1) RETURNING id`, phone); err != nil {
		t.Fatal(err)
	}
	return id
}

// campaign inserts a sending campaign on ch.
func (e *receiptEnv) campaign(t *testing.T, ch channel.Channel) int64 {
	t.Helper()
	var id int64
	if err := e.db.Get(&id, `
INSERT INTO campaigns (name, channel, status, base_template) VALUES ('t', $1, 'sending', 'Hi') RETURNING id`, ch); err != nil {
		t.Fatal(err)
	}
	return id
}

// message inserts a message with status and, unless providerID is "", the
// provider's id.
func (e *receiptEnv) message(t *testing.T, campaignID, customerID int64, status, prov, providerID string) int64 {
	t.Helper()
	var id int64
	if err := e.db.Get(&id, `
INSERT INTO outbound_messages (campaign_id, customer_id, status, provider, provider_message_id)
VALUES ($1, $2, $3, nullif($4, ''), nullif($5, '')) RETURNING id`, campaignID, customerID, status, prov, providerID); err != nil {
		t.Fatal(err)
	}
	return id
}

// sentMessage inserts a customer, an SMS campaign and a sent message to
// them with the given provider id.
func (e *receiptEnv) sentMessage(t *testing.T, phone, prov, providerID string) int64 {
	t.Helper()
	return e.message(t, e.campaign(t, channel.SMS), e.customer(t, phone), "sent", prov, providerID)
}

type messageState struct {
	Status      string     `db:"status"`
	LastError   *string    `db:"last_error"`
	DeliveredAt *time.Time `db:"delivered_at"`
	UpdatedAt   time.Time  `db:"updated_at"`
}

func (e *receiptEnv) state(t *testing.T, id int64) messageState {
	t.Helper()
	var s messageState
	if err := e.db.Get(&s, `SELECT status, last_error, delivered_at, updated_at FROM outbound_messages WHERE id = $1`, id); err != nil {
		t.Fatal(err)
	}
	return s
}

type receiptRow struct {
	Status  string `db:"status"`
	Applied bool   `db:"applied"`
	OptOut  bool   `db:"opt_out"`
}

// receipts returns the inbox's rows for a provider id, by status.
func (e *receiptEnv) receipts(t *testing.T, prov, providerID string) []receiptRow {
	t.Helper()
	rows := []receiptRow{}
	if err := e.db.Select(&rows, `
SELECT status, applied_at IS NOT NULL AS applied, opt_out FROM provider_receipts
WHERE provider = $1 AND provider_message_id = $2 ORDER BY status`, prov, providerID); err != nil {
		t.Fatal(err)
	}
	return rows
}

func (e *receiptEnv) add(t *testing.T, rc provider.Receipt) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := e.r.Add(ctx, rc); err != nil {
		t.Fatalf("Add(%+v) = %v", rc, err)
	}
}

func rcptDelivered(prov, id string) provider.Receipt {
	return provider.Receipt{Provider: prov, MessageID: id, Status: provider.Delivered, ProviderStatus: "delivered"}
}

func rcptUndelivered(prov, id, code string) provider.Receipt {
	return provider.Receipt{Provider: prov, MessageID: id, Status: provider.Undelivered, ProviderStatus: "undelivered", Error: code}
}

// TestReceiptMovesSentOnce applies a delivered receipt to a sent message;
// a repeat, and an undelivered receipt after it, change nothing but are
// stored and done with. An intermediate receipt is not stored at all.
func TestReceiptMovesSentOnce(t *testing.T) {
	t.Parallel()
	e := newReceiptEnv(t, ReceiptOptions{})
	id := e.sentMessage(t, "+14155550101", "twilio", "SM1")
	other := e.sentMessage(t, "+14155550102", "twilio", "SM2")

	e.add(t, provider.Receipt{Provider: "twilio", MessageID: "SM1", ProviderStatus: "queued"})
	if got := e.receipts(t, "twilio", "SM1"); len(got) != 0 {
		t.Fatalf("intermediate receipt stored: %+v", got)
	}

	e.add(t, rcptDelivered("twilio", "SM1")) // Add returns once the batch has committed
	first := e.state(t, id)
	if first.Status != "delivered" || first.DeliveredAt == nil || first.LastError != nil {
		t.Fatalf("after delivered: %+v, want delivered with delivered_at and no error", first)
	}

	e.add(t, rcptDelivered("twilio", "SM1"))
	e.add(t, rcptUndelivered("twilio", "SM1", "30003"))
	if got := e.state(t, id); !cmp.Equal(got, first) {
		t.Errorf("a repeat and a late undelivered changed the message:\n%s", cmp.Diff(first, got))
	}
	want := []receiptRow{{Status: "delivered", Applied: true}, {Status: "undelivered", Applied: true}}
	if diff := cmp.Diff(want, e.receipts(t, "twilio", "SM1")); diff != "" {
		t.Errorf("inbox (-want +got):\n%s", diff)
	}

	e.add(t, rcptUndelivered("twilio", "SM2", "30003"))
	if got := e.state(t, other); got.Status != "undelivered" || got.LastError == nil || *got.LastError != "30003" || got.DeliveredAt != nil {
		t.Errorf("after undelivered: status %s, last_error %v, delivered_at %v; want undelivered, 30003, nil",
			got.Status, deref(got.LastError), got.DeliveredAt)
	}
	e.add(t, rcptDelivered("twilio", "SM2"))
	if got := e.state(t, other); got.Status != "undelivered" {
		t.Errorf("delivered after undelivered moved the message to %s", got.Status)
	}

	want = []receiptRow{{Status: "delivered", Applied: true}, {Status: "undelivered", Applied: true}}
	if diff := cmp.Diff(want, e.receipts(t, "twilio", "SM2")); diff != "" {
		t.Errorf("inbox of SM2 (-want +got):\n%s", diff)
	}
	want0 := ReceiptStats{Received: 5, Stored: 4, Duplicates: 1, Applied: 2}
	if diff := cmp.Diff(want0, e.r.Stats()); diff != "" {
		t.Errorf("stats (-want +got):\n%s", diff)
	}
}

// TestReceiptSameBatchPrefersDelivered sends a delivered and an
// undelivered receipt of one message in one batch: delivered wins.
func TestReceiptSameBatchPrefersDelivered(t *testing.T) {
	t.Parallel()
	// The batch commits when it holds both, long before the interval ends.
	e := newReceiptEnv(t, ReceiptOptions{BatchSize: 2, FlushInterval: time.Minute})
	id := e.sentMessage(t, "+14155550101", "africastalking", "ATXid_1")
	var wg sync.WaitGroup
	for _, rc := range []provider.Receipt{rcptUndelivered("africastalking", "ATXid_1", "DeliveryFailure"), rcptDelivered("africastalking", "ATXid_1")} {
		wg.Go(func() { e.add(t, rc) })
	}
	wg.Wait()
	if got := e.state(t, id); got.Status != "delivered" {
		t.Errorf("status %s, want delivered", got.Status)
	}
	want := []receiptRow{{Status: "delivered", Applied: true}, {Status: "undelivered", Applied: true}}
	if diff := cmp.Diff(want, e.receipts(t, "africastalking", "ATXid_1")); diff != "" {
		t.Errorf("inbox (-want +got):\n%s", diff)
	}
}

// TestReceiptBeforeSentIsAppliedLater stores a receipt whose message is
// still being sent (its provider id not recorded yet): it waits, unapplied,
// and the periodic pass applies it once the message is recorded as sent.
func TestReceiptBeforeSentIsAppliedLater(t *testing.T) {
	t.Parallel()
	e := newReceiptEnv(t, ReceiptOptions{})
	id := e.message(t, e.campaign(t, channel.SMS), e.customer(t, "+14155550101"), "sending", "", "")

	e.add(t, rcptDelivered("twilio", "SM9"))
	if got := e.state(t, id); got.Status != "sending" {
		t.Fatalf("status %s before the message was recorded, want sending", got.Status)
	}
	if diff := cmp.Diff([]receiptRow{{Status: "delivered"}}, e.receipts(t, "twilio", "SM9")); diff != "" {
		t.Fatalf("inbox (-want +got):\n%s", diff)
	}

	e.exec(t, `UPDATE outbound_messages SET status = 'sent', provider = 'twilio', provider_message_id = 'SM9' WHERE id = $1`, id)
	waitFor(t, "the waiting receipt applied", 10*time.Second, func() bool { return e.state(t, id).Status == "delivered" })
	if diff := cmp.Diff([]receiptRow{{Status: "delivered", Applied: true}}, e.receipts(t, "twilio", "SM9")); diff != "" {
		t.Errorf("inbox (-want +got):\n%s", diff)
	}
	if got := e.r.Stats(); got.Applied != 1 || got.GivenUp != 0 {
		t.Errorf("stats %+v, want 1 applied, none given up", got)
	}
}

// TestReceiptUnknownIDGivenUp stores a receipt for an id no message has:
// Add succeeds (the webhook answers 200), nothing changes, and the receipt
// is given up after RetryUnmatchedFor.
func TestReceiptUnknownIDGivenUp(t *testing.T) {
	t.Parallel()
	e := newReceiptEnv(t, ReceiptOptions{RetryUnmatchedFor: 50 * time.Millisecond})
	id := e.sentMessage(t, "+14155550101", "twilio", "SM1")

	e.add(t, rcptDelivered("twilio", "SM-unknown"))
	waitFor(t, "the unknown receipt given up", 10*time.Second, func() bool { return e.r.Stats().GivenUp == 1 })
	if diff := cmp.Diff([]receiptRow{{Status: "delivered", Applied: true}}, e.receipts(t, "twilio", "SM-unknown")); diff != "" {
		t.Errorf("inbox (-want +got):\n%s", diff)
	}
	if got := e.state(t, id); got.Status != "sent" {
		t.Errorf("an unrelated message became %s", got.Status)
	}
	if got := e.r.Stats(); got.Applied != 0 {
		t.Errorf("stats %+v, want nothing applied", got)
	}
}

// TestReceiptOptOutCallsHook reports a receipt that says the recipient
// blocked the sender to OnOptOut, with the message's phone and channel,
// after it is committed; a repeat reports it again (the hook is
// idempotent), so an opt-out lost to a crash is not lost for good.
func TestReceiptOptOutCallsHook(t *testing.T) {
	t.Parallel()
	var (
		mu    sync.Mutex
		calls []string
	)
	e := newReceiptEnv(t, ReceiptOptions{OnOptOut: func(_ context.Context, phone string, ch channel.Channel) {
		mu.Lock()
		defer mu.Unlock()
		calls = append(calls, phone+" "+string(ch))
	}})
	id := e.message(t, e.campaign(t, channel.WhatsApp), e.customer(t, "+14155550101"), "sent", "twilio", "SM1")
	e.sentMessage(t, "+14155550102", "twilio", "SM2")

	rc := rcptUndelivered("twilio", "SM1", "21610")
	rc.OptOut = true
	e.add(t, rc)
	e.add(t, rcptUndelivered("twilio", "SM2", "30003")) // no opt-out
	e.add(t, rc)
	mu.Lock()
	got := append([]string(nil), calls...)
	mu.Unlock()
	if diff := cmp.Diff([]string{"+14155550101 whatsapp", "+14155550101 whatsapp"}, got); diff != "" {
		t.Errorf("OnOptOut calls (-want +got):\n%s", diff)
	}
	if got := e.state(t, id); got.Status != "undelivered" {
		t.Errorf("status %s, want undelivered", got.Status)
	}
}

// TestReceiptsConcurrent adds 5,000 receipts from 50 goroutines: every one
// is applied by the time its Add returns.
func TestReceiptsConcurrent(t *testing.T) {
	t.Parallel()
	const n, workers = 5000, 50
	e := newReceiptEnv(t, ReceiptOptions{})
	var campaignID int64
	if err := e.db.Get(&campaignID, `
INSERT INTO campaigns (name, channel, status, base_template) VALUES ('t', 'sms', 'sending', 'Hi') RETURNING id`); err != nil {
		t.Fatal(err)
	}
	e.exec(t, `INSERT INTO customers (phone) SELECT '+1415' || lpad(i::text, 7, '0') FROM generate_series(1, $1) i`, n)
	e.exec(t, `
INSERT INTO outbound_messages (campaign_id, customer_id, status, provider, provider_message_id)
SELECT $1, id, 'sent', 'twilio', 'SM' || id FROM customers`, campaignID)
	var ids []int64
	if err := e.db.Select(&ids, `SELECT id FROM customers ORDER BY id`); err != nil {
		t.Fatal(err)
	}

	start := time.Now()
	var wg sync.WaitGroup
	for w := range workers {
		wg.Go(func() {
			for i := w; i < n; i += workers {
				rc := rcptDelivered("twilio", fmt.Sprint("SM", ids[i]))
				if i%10 == 0 {
					rc = rcptUndelivered("twilio", fmt.Sprint("SM", ids[i]), "30005")
				}
				if err := e.r.Add(context.Background(), rc); err != nil {
					t.Errorf("Add: %v", err)
					return
				}
			}
		})
	}
	wg.Wait()
	took := time.Since(start)

	var got struct {
		Delivered   int `db:"delivered"`
		Undelivered int `db:"undelivered"`
		Unapplied   int `db:"unapplied"`
	}
	if err := e.db.Get(&got, `
SELECT count(*) FILTER (WHERE status = 'delivered') AS delivered,
       count(*) FILTER (WHERE status = 'undelivered') AS undelivered,
       (SELECT count(*) FROM provider_receipts WHERE applied_at IS NULL) AS unapplied
FROM outbound_messages`); err != nil {
		t.Fatal(err)
	}
	if got.Delivered != n*9/10 || got.Undelivered != n/10 || got.Unapplied != 0 {
		t.Errorf("delivered %d, undelivered %d, unapplied receipts %d; want %d, %d, 0",
			got.Delivered, got.Undelivered, got.Unapplied, n*9/10, n/10)
	}
	st := e.r.Stats()
	if st.Applied != n || st.Stored != n {
		t.Errorf("stats %+v, want %d stored and applied", st, n)
	}
	t.Logf("%d receipts from %d goroutines applied in %v (%.0f/s)", n, workers, took, float64(n)/took.Seconds())
}

// TestReceiptAddAfterStop checks Add fails fast with ErrReceiptsStopped (a
// 503, so the provider retries) once Run has returned, and honours its
// context while Run has not started.
func TestReceiptAddAfterStop(t *testing.T) {
	t.Parallel()
	db := pgtest.New(t)
	r := NewReceipts(db.DB, ReceiptOptions{}, quiet)

	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Millisecond)
	defer cancel()
	if err := r.Add(ctx, rcptDelivered("twilio", "SM1")); !errors.Is(err, context.DeadlineExceeded) {
		t.Errorf("Add before Run = %v, want the context's deadline", err)
	}

	stopped, stop := context.WithCancel(context.Background())
	stop()
	r.Run(stopped)
	err := r.Add(context.Background(), rcptDelivered("twilio", "SM1"))
	if !errors.Is(err, ErrReceiptsStopped) || errs.KindOf(err) != errs.KindUnavailable {
		t.Errorf("Add after Run = %v, want ErrReceiptsStopped (unavailable)", err)
	}
	if err := r.Add(context.Background(), provider.Receipt{Provider: "twilio", MessageID: "SM1", ProviderStatus: "sent"}); err != nil {
		t.Errorf("intermediate Add after Run = %v, want nil", err)
	}
}
