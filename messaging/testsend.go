package messaging

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"log/slog"
	"sync"
	"time"

	"github.com/campaignd/dispatch/messaging/provider"
	"github.com/campaignd/dispatch/messaging/template"
	"github.com/campaignd/dispatch/platform/channel"
	"github.com/campaignd/dispatch/platform/errs"
	"github.com/campaignd/dispatch/platform/loop"
	"github.com/campaignd/dispatch/platform/postgres"
	"github.com/campaignd/dispatch/platform/sms"
)

// ErrRecipientOptedOut is a test send to a phone whose customer opted out
// of the campaign's channel (422): a STOP is honoured for tests too.
var ErrRecipientOptedOut = errs.New(errs.KindUnprocessable, "RECIPIENT_OPTED_OUT",
	"the phone belongs to a customer who opted out of this channel")

// TestSend is one test message to deliver: Template rendered with Fields,
// to Phone. campaign.TestSend has the same fields (app converts one into
// the other).
type TestSend struct {
	CampaignID int64
	Channel    channel.Channel
	Template   string
	Phone      string          // E.164, normalised by the caller
	Fields     template.Fields // a customer's, or none; Fields.Phone is replaced by Phone
}

// testMessageColumns is a MessageView's columns of outbound_messages m
// (messageColumns, for a row just inserted: the phone is the message's
// own, and the channel, %s, is given).
const testMessageColumns = `m.id, m.campaign_id, m.customer_id, m.phone, %s AS channel, m.status, m.attempts,
       m.last_error, m.rendered_content, m.provider, m.provider_message_id, m.encoding, m.segments,
       m.cost::text AS cost, m.currency, m.test, m.created_at, m.sent_at, m.delivered_at, m.updated_at`

// A test message is created already in sending and is never pending, so
// the feeder never queues it. Its id reaches the queue only if the sweeper
// re-pushes the messages in sending (Redis lost its data) or requeues a
// stale one, and the claim leaves test messages alone (NOT m.test in
// claimSQL; UnqueueStale skips them). This process delivers it and records
// the outcome; FailAbandonedTests ends it if the process dies first. A
// phone whose customer opted out of the channel gets no message. The
// campaign's row is locked FOR KEY SHARE, as every statement that creates
// messages locks what they reference (00018).
var insertTestSQL = `
INSERT INTO outbound_messages AS m (campaign_id, customer_id, test, phone, status, rendered_content, provider, encoding, segments)
SELECT k.id, NULL, true, $2, 'sending', $4, nullif($5, ''), nullif($6, ''), nullif($7::int, 0)
FROM campaigns k
WHERE k.id = $1
  AND NOT EXISTS (SELECT 1 FROM customers c JOIN customer_opt_outs o ON o.customer_id = c.id AND o.channel = $3
                  WHERE c.phone = $2)
FOR KEY SHARE OF k
RETURNING ` + fmt.Sprintf(testMessageColumns, "$3::text")

// abandonedTestError is the last error of a test message whose delivery
// was cut off: like the pool's reclaim under UNCERTAIN_POLICY=fail, and for
// the same reason (the provider may have taken it), it is not sent again.
const abandonedTestError = "uncertain: the test send was interrupted (the process delivering it stopped) after the provider may have accepted it; test sends are never resent"

// failAbandonedTestsSQL fails test messages left in sending longer than
// $1, with an 'uncertain' attempt, as the claim records a reclaimed one.
// It reads outbound_messages_test_sending_idx (00016), which holds only test
// messages in flight, so its cost does not grow with the campaigns' messages.
var failAbandonedTestsSQL = `
WITH stale AS (
    SELECT id FROM outbound_messages
    WHERE test AND status = 'sending' AND updated_at < now() - $1::interval
), upd AS (
    UPDATE outbound_messages m
    SET status = 'failed', attempts = m.attempts + 1, last_error = $2, updated_at = now()
    FROM stale s
    WHERE m.id = s.id AND m.status = 'sending' AND m.updated_at < now() - $1::interval
    RETURNING m.id, m.campaign_id, m.attempts, m.updated_at
), hist AS (
    INSERT INTO message_attempts (campaign_id, message_id, attempt, started_at, duration_ms, outcome, error)
    SELECT campaign_id, id, attempts, updated_at, 0, 'uncertain', $2 FROM upd
    ON CONFLICT (campaign_id, message_id, attempt) DO NOTHING
)
SELECT count(*) FROM upd`

// FailAbandonedTests fails the test messages that have been in sending for
// longer than lease, the process delivering them having died, and returns
// how many. A test message is never requeued: its delivery may have
// reached the provider, and the user can simply test again.
func (r *Repo) FailAbandonedTests(ctx context.Context, lease time.Duration) (int64, error) {
	var n int64
	err := r.db.GetContext(ctx, &n, failAbandonedTestsSQL, pgInterval(lease), abandonedTestError)
	return n, postgres.Classify(err, "fail abandoned test messages")
}

// TestSendOptions configure a TestSender.
type TestSendOptions struct {
	Timeout time.Duration // deadline of the delivery attempt (worker.send_timeout)
	// Lease is how long a test message may stay in sending before it is
	// presumed abandoned (worker.lease); it must exceed Timeout.
	Lease    time.Duration
	Provider string // the sender's name, when it does not name one per channel
	Limits   Limits // the longest message per channel, as the pool enforces it
	Gate     Gate   // paces and brakes providers as for the pool; nil admits at once
}

// TestSender delivers test messages: one message, now, to a phone of the
// user's choosing, through the provider the pool uses, outside the queue
// and the campaign's stats. It is safe for concurrent use.
type TestSender struct {
	repo   *Repo
	sender provider.Sender
	opts   TestSendOptions
	log    *slog.Logger
	now    func() time.Time

	inFlight sync.WaitGroup // background deliveries
}

// NewTestSender returns a TestSender delivering through sender.
func NewTestSender(repo *Repo, sender provider.Sender, opts TestSendOptions, log *slog.Logger) *TestSender {
	if opts.Timeout <= 0 {
		opts.Timeout = 10 * time.Second
	}
	if opts.Lease <= opts.Timeout {
		opts.Lease = 3 * opts.Timeout
	}
	return &TestSender{repo: repo, sender: sender, opts: opts, log: log, now: time.Now}
}

// Send renders m as delivery would, stores it as a test message in
// sending (test true, no customer) and returns it at once, as the messages
// API shows a message (customer_id null: the fields a test borrows from a
// customer are not that customer's message, and a receipt or STOP for the
// phone must not act on them); a background
// goroutine then delivers it, within Timeout, and records the outcome
// (sent, or failed: a test is never retried). A message longer than the
// channel takes is stored failed, as delivery would fail it, and not sent.
// Errors: ErrRecipientOptedOut, UNAVAILABLE, or internal ones.
func (t *TestSender) Send(ctx context.Context, m TestSend) (MessageView, error) {
	f := m.Fields
	f.Phone = m.Phone
	body, err := t.opts.Limits.Render(m.Channel, m.Template, f)
	var long *TooLongError
	if err != nil && !errors.As(err, &long) {
		// The template passed Check when it was stored.
		return MessageView{}, fmt.Errorf("test send: render: %w", err)
	}
	prov := t.providerFor(m.Channel)
	var info sms.Info
	if m.Channel == channel.SMS {
		info = sms.Analyze(body)
	}
	var msg MessageView
	err = t.repo.db.GetContext(ctx, &msg, insertTestSQL, m.CampaignID, m.Phone, string(m.Channel), body,
		prov, string(info.Encoding), info.Segments)
	if errors.Is(err, sql.ErrNoRows) {
		return MessageView{}, ErrRecipientOptedOut.Withf("%s belongs to a customer who opted out of %s; nothing was sent", m.Phone, m.Channel)
	}
	if err != nil {
		return MessageView{}, postgres.Classify(err, "create test message")
	}
	if long != nil {
		t.record(ctx, Outcome{ID: msg.ID, Status: StatusFailed, Error: long.Error(), Attempted: true,
			StartedAt: t.now(), AttemptResult: "failed"})
		d, err := t.repo.GetMessage(ctx, msg.ID)
		return d.MessageView, err
	}
	t.inFlight.Add(1)
	go func() { // exits after one attempt (at most Timeout) and its recording (at most recordTimeout)
		defer t.inFlight.Done()
		t.record(context.Background(), t.deliver(msg.ID, m.Channel, m.Phone, body, prov))
	}()
	return msg.normalized(), nil
}

// deliver makes the one attempt and returns its outcome. It never panics.
func (t *TestSender) deliver(id int64, ch channel.Channel, to, body, prov string) (o Outcome) {
	start := t.now()
	o = Outcome{ID: id, Status: StatusFailed, Provider: prov, StartedAt: start, AttemptResult: "failed"}
	defer func() {
		if v := recover(); v != nil {
			t.log.Error("test delivery panicked", "message_id", id, "panic", v)
			o.Error, o.Attempted = fmt.Sprintf("panic during delivery: %v", v), true
		}
	}()
	ctx, cancel := context.WithTimeout(context.Background(), t.opts.Timeout)
	defer cancel()
	if t.opts.Gate != nil {
		wait, err := t.opts.Gate.Admit(ctx, prov, maxGateWait)
		if err != nil || wait > 0 {
			o.Error = fmt.Sprintf("not sent: %s is braked or over its rate; try the test send again later", prov)
			if err != nil {
				o.Error = "not sent: " + err.Error()
			}
			return o
		}
	}
	acc, err := t.sender.Send(ctx, provider.Message{ID: id, Channel: ch, To: to, Body: body})
	o.Duration = time.Since(start)
	if err == nil {
		o.Status, o.Content, o.Attempted, o.AttemptResult = StatusSent, body, true, "sent"
		o.ProviderMessageID, o.Segments, o.Cost, o.Currency, o.ProviderStatus = acc.MessageID, acc.Segments, acc.Cost, acc.Currency, acc.Status
		if ch == channel.SMS {
			info := sms.Analyze(body)
			o.Encoding = string(info.Encoding)
			if o.Segments == 0 {
				o.Segments = info.Segments
			}
		}
		return o
	}
	o.Error = truncate(err.Error(), 1000)
	// Our own PostgreSQL or Redis failing (the mock's ledger) is no
	// attempt at the provider; a test is not retried either way.
	o.Attempted = !IsInfrastructure(err)
	if provider.IsUncertain(err) {
		o.AttemptResult = "uncertain"
	}
	var pe *provider.Error
	if errors.As(err, &pe) {
		o.ProviderStatus = pe.Code
		if t.opts.Gate != nil {
			// What the provider said about the account holds for the pool too.
			switch pe.Class {
			case provider.Throttled:
				t.opts.Gate.Throttled(ctx, prov, max(pe.RetryAfter, time.Second))
			case provider.Account:
				t.opts.Gate.Brake(ctx, prov, err.Error())
			}
		}
	}
	return o
}

// recordTimeout bounds the recording of a test's outcome, retried while
// PostgreSQL is unreachable; past it the message stays in sending and
// FailAbandonedTests ends it.
const recordTimeout = 15 * time.Second

func (t *TestSender) record(ctx context.Context, o Outcome) {
	ctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), recordTimeout)
	defer cancel()
	err := loop.Retry(ctx, "recording a test message", t.log, func(ctx context.Context) error {
		_, err := t.repo.Record(ctx, []Outcome{o})
		return err
	})
	if err != nil {
		t.log.Error("could not record a test message's outcome; it will be failed as abandoned",
			"message_id", o.ID, "status", o.Status, "err", err)
	}
}

// providerFor names the provider that carries ch.
func (t *TestSender) providerFor(ch channel.Channel) string {
	if r, ok := t.sender.(interface{ ProviderFor(channel.Channel) string }); ok {
		if name := r.ProviderFor(ch); name != "" {
			return name
		}
	}
	return t.opts.Provider
}

// Run fails abandoned test messages (FailAbandonedTests) every interval
// until ctx ends, backing off while PostgreSQL is down (loop.Every); then
// it waits for the deliveries in flight, each bounded by Timeout and
// recordTimeout, and returns. Every replica runs it: the update is guarded.
func (t *TestSender) Run(ctx context.Context, interval time.Duration) {
	loop.Every(ctx, interval, "test-send recovery", t.log, func(ctx context.Context) error {
		n, err := t.repo.FailAbandonedTests(ctx, t.opts.Lease)
		if n > 0 {
			t.log.Warn("failed test messages whose delivery was interrupted", "messages", n, "lease", t.opts.Lease)
		}
		return err
	})
	t.Wait()
}

// Wait returns once every background delivery started so far is recorded.
func (t *TestSender) Wait() { t.inFlight.Wait() }
