package messaging

import (
	"context"
	"errors"
	"io"
	"log/slog"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"github.com/jmoiron/sqlx"

	"github.com/campaignd/dispatch/messaging/provider"
	"github.com/campaignd/dispatch/messaging/template"
	"github.com/campaignd/dispatch/platform/channel"
	"github.com/campaignd/dispatch/platform/postgres/pgtest"
)

// testSendFake is a provider.Sender that records every call and answers
// err, or accepts; with block set it waits for block (or ctx) first.
type testSendFake struct {
	mu    sync.Mutex
	calls []provider.Message
	err   error
	block chan struct{}
}

func (f *testSendFake) Send(ctx context.Context, m provider.Message) (provider.Accepted, error) {
	f.mu.Lock()
	f.calls = append(f.calls, m)
	f.mu.Unlock()
	if f.block != nil {
		select {
		case <-f.block:
		case <-ctx.Done():
			return provider.Accepted{}, &provider.Error{Provider: "fake", Class: provider.Transient, Code: "timeout", Uncertain: true, Err: ctx.Err()}
		}
	}
	if f.err != nil {
		return provider.Accepted{}, f.err
	}
	return provider.Accepted{MessageID: "fake-1", Status: "queued", Cost: "0.8000", Currency: "KES"}, nil
}

func (f *testSendFake) recorded() []provider.Message {
	f.mu.Lock()
	defer f.mu.Unlock()
	return append([]provider.Message(nil), f.calls...)
}

var testSendLog = slog.New(slog.NewTextHandler(io.Discard, nil))

// getTestMessage reads a message as the messages API shows it.
func getTestMessage(ctx context.Context, repo *Repo, id int64) (MessageView, error) {
	d, err := repo.GetMessage(ctx, id)
	return d.MessageView, err
}

// testSendCampaign inserts a campaign and returns its id.
func testSendCampaign(t *testing.T, db *sqlx.DB, ch channel.Channel, status, tmpl string) int64 {
	t.Helper()
	var id int64
	if err := db.GetContext(context.Background(), &id, `
INSERT INTO campaigns (name, channel, status, base_template) VALUES ('t', $1, $2, $3) RETURNING id`, ch, status, tmpl); err != nil {
		t.Fatal(err)
	}
	return id
}

type testAttempt struct {
	Attempt int    `db:"attempt"`
	Outcome string `db:"outcome"`
}

func testSendAttempts(t *testing.T, db *sqlx.DB, id int64) []testAttempt {
	t.Helper()
	var out []testAttempt
	if err := db.SelectContext(context.Background(), &out,
		`SELECT attempt, outcome FROM message_attempts WHERE message_id = $1 ORDER BY attempt`, id); err != nil {
		t.Fatal(err)
	}
	return out
}

func TestTestSendDelivers(t *testing.T) {
	t.Parallel()
	db := pgtest.New(t)
	ctx := context.Background()
	repo := NewRepo(db.DB)
	fake := &testSendFake{}
	ts := NewTestSender(repo, fake, TestSendOptions{Timeout: time.Second, Provider: "fake"}, testSendLog)
	camp := testSendCampaign(t, db.DB, channel.SMS, "draft", "Hi {first_name} at {phone} in {location}")

	got, err := ts.Send(ctx, TestSend{CampaignID: camp, Channel: channel.SMS, Template: "Hi {first_name} at {phone} in {location}",
		Phone: "+254712000001", Fields: template.Fields{FirstName: "Zoë", Location: "Nairobi", Phone: "+15550000000"}})
	if err != nil {
		t.Fatal(err)
	}
	body := "Hi Zoë at +254712000001 in Nairobi" // {phone} is the phone sent to; ë is not GSM-7
	if got.Status != StatusSending || !got.Test || got.CustomerID != nil || *got.Phone != "+254712000001" ||
		*got.RenderedContent != body || *got.Encoding != "UCS-2" || *got.Segments != 1 || *got.Provider != "fake" {
		t.Errorf("202 body: %+v", got)
	}
	ts.Wait()
	if diff := cmp.Diff([]provider.Message{{ID: got.ID, Channel: channel.SMS, To: "+254712000001", Body: body}}, fake.recorded()); diff != "" {
		t.Errorf("provider calls (-want +got):\n%s", diff)
	}
	m, err := getTestMessage(ctx, repo, got.ID)
	if err != nil {
		t.Fatal(err)
	}
	if m.Status != StatusSent || m.Attempts != 1 || *m.ProviderMessageID != "fake-1" || m.SentAt == nil ||
		*m.Cost != "0.80" || *m.Currency != "KES" || m.Channel != "sms" || !m.Test || m.LastError != nil {
		t.Errorf("recorded: %+v", m)
	}
	if diff := cmp.Diff([]testAttempt{{1, "sent"}}, testSendAttempts(t, db.DB, got.ID)); diff != "" {
		t.Errorf("attempts (-want +got):\n%s", diff)
	}
}

func TestTestSendFailures(t *testing.T) {
	t.Parallel()
	db := pgtest.New(t)
	ctx := context.Background()
	repo := NewRepo(db.DB)

	t.Run("a provider's rejection fails it, without retry", func(t *testing.T) {
		fake := &testSendFake{err: &provider.Error{Provider: "fake", Class: provider.Permanent, Code: "21211", Message: "invalid number"}}
		ts := NewTestSender(repo, fake, TestSendOptions{Timeout: time.Second}, testSendLog)
		camp := testSendCampaign(t, db.DB, channel.WhatsApp, "sent", "Hello")
		got, err := ts.Send(ctx, TestSend{CampaignID: camp, Channel: channel.WhatsApp, Template: "Hello", Phone: "+254712000002"})
		if err != nil {
			t.Fatal(err)
		}
		if got.Encoding != nil || got.Segments != nil {
			t.Errorf("WhatsApp test: encoding %v, segments %v; want null", got.Encoding, got.Segments)
		}
		ts.Wait()
		m, err := getTestMessage(ctx, repo, got.ID)
		if err != nil {
			t.Fatal(err)
		}
		if m.Status != StatusFailed || m.Attempts != 1 || !strings.Contains(*m.LastError, "invalid number") {
			t.Errorf("recorded: %+v", m)
		}
		if n := len(fake.recorded()); n != 1 {
			t.Errorf("%d provider calls, want 1", n)
		}
	})

	t.Run("a message too long for the channel fails at once, unsent", func(t *testing.T) {
		fake := &testSendFake{}
		ts := NewTestSender(repo, fake, TestSendOptions{Limits: Limits{SMS: 10}}, testSendLog)
		camp := testSendCampaign(t, db.DB, channel.SMS, "draft", "x")
		got, err := ts.Send(ctx, TestSend{CampaignID: camp, Channel: channel.SMS, Template: "Hello {phone}", Phone: "+254712000003"})
		if err != nil {
			t.Fatal(err)
		}
		if got.Status != StatusFailed || !strings.Contains(*got.LastError, "sms allows 10") || len(fake.recorded()) != 0 {
			t.Errorf("got %+v, %d calls", got, len(fake.recorded()))
		}
	})

	t.Run("a phone whose customer opted out gets nothing", func(t *testing.T) {
		if _, err := db.ExecContext(ctx, `
WITH c AS (INSERT INTO customers (phone) VALUES ('+254712000004') RETURNING id)
INSERT INTO customer_opt_outs (customer_id, channel) SELECT id, 'sms' FROM c`); err != nil {
			t.Fatal(err)
		}
		fake := &testSendFake{}
		ts := NewTestSender(repo, fake, TestSendOptions{}, testSendLog)
		camp := testSendCampaign(t, db.DB, channel.SMS, "draft", "x")
		_, err := ts.Send(ctx, TestSend{CampaignID: camp, Channel: channel.SMS, Template: "Hi", Phone: "+254712000004"})
		if !errors.Is(err, ErrRecipientOptedOut) {
			t.Errorf("err = %v, want RECIPIENT_OPTED_OUT", err)
		}
		var n int
		if err := db.GetContext(ctx, &n, `SELECT count(*) FROM outbound_messages WHERE campaign_id = $1`, camp); err != nil || n != 0 {
			t.Errorf("%d messages (%v), want none", n, err)
		}
	})
}

// A test message is never claimed by the pool, even when its id reaches
// the queue (the sweeper re-pushes every message in sending after Redis
// loses its data): this process delivers it, and the claim would have no
// customer to render it for. If it was abandoned, FailAbandonedTests fails
// it, uncertain, and no other message.
func TestTestSendNeverClaimedAndFailedWhenAbandoned(t *testing.T) {
	t.Parallel()
	db := pgtest.New(t)
	ctx := context.Background()
	repo := NewRepo(db.DB)
	fake := &testSendFake{block: make(chan struct{})}
	ts := NewTestSender(repo, fake, TestSendOptions{Timeout: 5 * time.Second}, testSendLog)
	t.Cleanup(ts.Wait)
	t.Cleanup(func() { close(fake.block) })
	camp := testSendCampaign(t, db.DB, channel.SMS, "sending", "Hi")
	got, err := ts.Send(ctx, TestSend{CampaignID: camp, Channel: channel.SMS, Template: "Hi", Phone: "+254712000005"})
	if err != nil {
		t.Fatal(err)
	}
	// A campaign message in sending as long: abandoned, but not a test.
	var other int64
	if err := db.GetContext(ctx, &other, `
WITH c AS (INSERT INTO customers (phone) VALUES ('+254712000006') RETURNING id)
INSERT INTO outbound_messages (campaign_id, customer_id, status) SELECT $1, id, 'sending' FROM c RETURNING id`, camp); err != nil {
		t.Fatal(err)
	}

	jobs, _, err := repo.Claim(ctx, []int64{got.ID}, time.Hour, false)
	if err != nil || len(jobs) != 0 {
		t.Fatalf("claim: %d jobs, %v; want none", len(jobs), err)
	}
	if n, err := repo.FailAbandonedTests(ctx, time.Hour); err != nil || n != 0 {
		t.Fatalf("FailAbandonedTests before the lease: %d, %v; want 0", n, err)
	}
	if _, err := db.ExecContext(ctx, `UPDATE outbound_messages SET updated_at = now() - interval '1 minute'`); err != nil {
		t.Fatal(err)
	}
	// Past the lease the claim still leaves it alone (it would reclaim a
	// campaign message): no job, no attempt counted, still in sending.
	jobs, _, err = repo.Claim(ctx, []int64{got.ID}, time.Second, false)
	if err != nil || len(jobs) != 0 {
		t.Fatalf("claim past the lease: %d jobs, %v; want none: claimSQL must leave test messages alone (AND NOT m.test)", len(jobs), err)
	}
	if m, err := getTestMessage(ctx, repo, got.ID); err != nil || m.Status != StatusSending || m.Attempts != 0 {
		t.Fatalf("after the claim: %+v, %v; want untouched", m, err)
	}
	if _, err := db.ExecContext(ctx, `UPDATE outbound_messages SET updated_at = now() - interval '1 minute'`); err != nil {
		t.Fatal(err)
	}
	if n, err := repo.FailAbandonedTests(ctx, 30*time.Second); err != nil || n != 1 {
		t.Fatalf("FailAbandonedTests: %d, %v; want 1", n, err)
	}
	m, err := getTestMessage(ctx, repo, got.ID)
	if err != nil {
		t.Fatal(err)
	}
	if m.Status != StatusFailed || !strings.HasPrefix(*m.LastError, "uncertain: the test send was interrupted") {
		t.Errorf("abandoned test: %+v", m)
	}
	// One attempt, whose fate is unknown.
	if diff := cmp.Diff([]testAttempt{{1, "uncertain"}}, testSendAttempts(t, db.DB, got.ID)); diff != "" {
		t.Errorf("attempts (-want +got):\n%s", diff)
	}
	var status string
	if err := db.GetContext(ctx, &status, `SELECT status FROM outbound_messages WHERE id = $1`, other); err != nil || status != "sending" {
		t.Errorf("campaign message: %s, %v; want it left in sending", status, err)
	}
	// The delivery, unblocked now, finds the message final: its outcome
	// changes nothing.
}
