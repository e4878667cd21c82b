package app

import (
	"context"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"net/http/httptest"
	"regexp"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"github.com/jmoiron/sqlx"

	"github.com/campaignd/dispatch/messaging/provider"
	"github.com/campaignd/dispatch/messaging/provider/sim"
)

// The provider end-to-end tests run the whole service against the provider
// simulator (messaging/provider/sim) over real HTTP: the app's Africa's
// Talking and Twilio adapters send to the simulator, and the simulator
// posts delivery receipts and inbound messages back to the app's webhooks.

// Credentials the simulator demands and the app is configured with.
const (
	e2eATUsername   = "dispatch-e2e"
	e2eATAPIKey     = "atsk_e2e_0123456789abcdef0123456789abcdef"
	e2eATSecret     = "at-callback-secret-e2e-0123456789abcdef"
	e2eTwilioSID    = "AC0123456789abcdef0123456789abcdef"
	e2eTwilioToken  = "twilio-auth-token-e2e-0123456789abcdef"
	e2eTwilioFrom   = "+15005550006"
	e2eWhatsAppFrom = "+14155238886"
)

// pollUntil checks cond every 100ms until it holds, failing the test after
// timeout. The interval is coarser than waitFor's: several of these tests
// run at once on a small machine, and each poll costs a stats query.
func pollUntil(t testing.TB, what string, timeout time.Duration, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out after %v waiting for %s", timeout, what)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// waitProvCampaign polls campaign id until cond holds and returns it.
func waitProvCampaign(t testing.TB, ta *testApp, id int64, what string, timeout time.Duration, cond func(campaignState) bool) campaignState {
	t.Helper()
	var c campaignState
	start := time.Now()
	deadline := start.Add(timeout)
	for {
		c = readCampaign(t, ta, id)
		if cond(c) {
			t.Logf("campaign %d %s after %v: %s %+v", id, what, time.Since(start).Round(time.Millisecond), c.Status, c.Stats)
			return c
		}
		if time.Now().After(deadline) {
			t.Fatalf("timed out after %v waiting for campaign %d %s: %s %+v", timeout, id, what, c.Status, c.Stats)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// providerRig is an app whose providers are a simulator, and the
// simulator, each calling the other.
type providerRig struct {
	*testApp
	sim *sim.Server
	cfg Config
	db  *sqlx.DB
}

// freePort returns a TCP port that was free a moment ago. The app must know
// its public address before it starts (the Twilio adapter builds its
// StatusCallback when the app is wired), and the simulator its callback
// URLs when it is built, so the port is chosen here rather than by the app.
func freePort(t testing.TB) int {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	port := l.Addr().(*net.TCPAddr).Port
	if err := l.Close(); err != nil {
		t.Fatal(err)
	}
	return port
}

// startProviderRig starts a simulator with opts (credentials and callback
// URLs filled in) and an app that sends SMS through Africa's Talking and
// WhatsApp through Twilio, both at the simulator; configure may change the
// app's configuration before it starts. The app stops before the simulator.
func startProviderRig(t testing.TB, opts sim.Options, configure func(*Config)) *providerRig {
	t.Helper()
	port := freePort(t)
	public := fmt.Sprintf("http://127.0.0.1:%d", port)

	opts.ATUsername, opts.ATAPIKey = e2eATUsername, e2eATAPIKey
	opts.TwilioAccountSID, opts.TwilioAuthToken = e2eTwilioSID, e2eTwilioToken
	opts.ATDeliveryURL = public + "/webhooks/africastalking/delivery?key=" + e2eATSecret
	opts.ATInboundURL = public + "/webhooks/africastalking/inbound?key=" + e2eATSecret
	opts.TwilioInboundURL = public + "/webhooks/twilio/inbound"
	if testing.Verbose() {
		// Abandoned receipts are logged at warn: the webhook refused them.
		opts.Log = slog.New(slog.NewTextHandler(testWriter{t}, &slog.HandlerOptions{Level: slog.LevelWarn}))
	}
	s := sim.New(opts)
	srv := httptest.NewServer(s.Handler())
	// Registered before the app's cleanup, so it runs after it: the app
	// drains its in-flight sends against a simulator still answering.
	t.Cleanup(func() {
		s.Close()
		srv.Close()
	})

	cfg := testConfig(t)
	cfg.API.Port = port
	cfg.PublicBaseURL = public
	cfg.Providers.SMS, cfg.Providers.WhatsApp = "africastalking", "twilio"
	cfg.AfricasTalking.BaseURL = srv.URL
	cfg.AfricasTalking.Username, cfg.AfricasTalking.APIKey = e2eATUsername, e2eATAPIKey
	cfg.AfricasTalking.CallbackSecret = e2eATSecret
	cfg.Twilio.BaseURL = srv.URL
	cfg.Twilio.AccountSID, cfg.Twilio.AuthToken = e2eTwilioSID, e2eTwilioToken
	cfg.Twilio.From, cfg.Twilio.WhatsAppFrom = e2eTwilioFrom, e2eWhatsAppFrom
	if configure != nil {
		configure(&cfg)
	}
	ta := startApp(t, cfg)
	if ta.base != public && !strings.HasSuffix(ta.base, fmt.Sprintf(":%d", port)) {
		t.Fatalf("app listens on %s, not on port %d", ta.base, port)
	}
	return &providerRig{testApp: ta, sim: s, cfg: cfg, db: openAppDB(t, cfg, false)}
}

// maxRetryCount is the highest retry_count among campaign id's messages:
// the attempts any of them used up.
func maxRetryCount(t testing.TB, db *sqlx.DB, id int64) int64 {
	t.Helper()
	return queryInt(t, db, `SELECT coalesce(max(retry_count), 0) FROM outbound_messages WHERE campaign_id = $1`, id)
}

// TestProviderE2EReceipts sends 5,000 SMS through Africa's Talking and
// 5,000 WhatsApp messages through Twilio while the simulator posts late,
// jittered, duplicated and (for Twilio) out-of-order receipts: every
// message ends delivered or undelivered in the share the simulator chose,
// and no message reached the provider twice.
func TestProviderE2EReceipts(t *testing.T) {
	t.Parallel()
	const n = 5000
	rig := startProviderRig(t, sim.Options{
		Latency: 5 * time.Millisecond, LatencyJitter: 5 * time.Millisecond,
		ReceiptDelay: 200 * time.Millisecond, ReceiptJitter: 300 * time.Millisecond,
		DuplicateReceipts: 0.3,
		OutOfOrder:        true,
		DeliveredRatio:    0.9,
		// Thousands of receipts are posted at once.
		HTTPClient: provider.HTTPClient(128, 5*time.Second),
	}, func(cfg *Config) {
		cfg.WorkerConcurrency = 50
	})
	start := time.Now()
	ids := importCustomers(t, rig.testApp, rig.db, slices.Repeat([]string{"Nairobi"}, n)...)
	t.Logf("imported %d customers in %v", n, time.Since(start).Round(time.Millisecond))

	smsID, _ := mustCreateCampaign(t, rig.testApp, map[string]any{"name": "receipts sms", "channel": "sms",
		"base_template": "Hi {first_name}, new {preferred_product} in {location}"})
	waID, _ := mustCreateCampaign(t, rig.testApp, map[string]any{"name": "receipts whatsapp", "channel": "whatsapp",
		"base_template": "Hello {first_name}! {preferred_product} are back in {location} 👟"})
	start = time.Now()
	sendTo(t, rig.testApp, smsID, ids)
	sendTo(t, rig.testApp, waID, ids)

	final := map[int64]campaignState{}
	// A bound, not a target: 10,000 messages and their receipts under -race
	// on a CI machine running other packages alongside can take minutes.
	pollUntil(t, "every message delivered or undelivered", 3*time.Minute, func() bool {
		for _, id := range []int64{smsID, waID} {
			c := readCampaign(t, rig.testApp, id)
			final[id] = c
			if !c.settled() {
				return false
			}
		}
		return true
	})
	t.Logf("10,000 messages sent and receipted in %v; simulator %+v", time.Since(start).Round(time.Millisecond), rig.sim.Stats())

	for name, id := range map[string]int64{"sms (africastalking)": smsID, "whatsapp (twilio)": waID} {
		c := final[id]
		s := c.Stats
		if s.Total != n || s.Delivered+s.Undelivered != n || s.Failed != 0 || s.Cancelled != 0 {
			t.Errorf("%s campaign: %s %+v, want all %d delivered or undelivered", name, c.Status, s, n)
			continue
		}
		if ratio := float64(s.Delivered) / n; ratio < 0.87 || ratio > 0.93 {
			t.Errorf("%s campaign: %.1f%% delivered, want 90%% ± 3%%", name, 100*ratio)
		}
		t.Logf("%s campaign %d: %s, %d delivered, %d undelivered", name, id, c.Status, s.Delivered, s.Undelivered)
	}

	st := rig.sim.Stats()
	if st.Duplicates != 0 {
		t.Errorf("the simulator accepted %d duplicate sends (same provider, number and text)", st.Duplicates)
	}
	if st.Accepted != 2*n {
		t.Errorf("the simulator accepted %d sends, want %d", st.Accepted, 2*n)
	}
	if st.ReceiptFailures != 0 {
		t.Errorf("%d receipts were refused by the app's webhooks after every retry", st.ReceiptFailures)
	}

	// Duplicate finals and Twilio's late "sent" keep arriving for up to a
	// receipt delay after the last final one: none may move a message back.
	settled := map[int64]campaignStats{smsID: final[smsID].Stats, waID: final[waID].Stats}
	holdsFor(t, "final statuses unchanged by late and repeated receipts", time.Second, func() bool {
		for id, want := range settled {
			if got := readCampaign(t, rig.testApp, id).Stats; got != want {
				t.Logf("campaign %d stats moved from %+v to %+v", id, want, got)
				return false
			}
		}
		return true
	})
	if n := queryInt(t, rig.db, `
SELECT count(*) FROM outbound_messages
WHERE campaign_id = ANY(ARRAY[$1, $2]::bigint[]) AND (provider_message_id IS NULL OR provider_message_id = '')`, smsID, waID); n != 0 {
		t.Errorf("%d messages have no provider_message_id", n)
	}

	// dispatch_messages_total counts the receipts' outcomes per channel and
	// provider, as the stats do.
	got := map[string]int64{}
	for _, m := range scrape(t, rig.testApp)["dispatch_messages_total"].GetMetric() {
		if o := label(m, "outcome"); o == "delivered" || o == "undelivered" {
			got[label(m, "channel")+" "+label(m, "provider")+" "+o] += int64(m.GetCounter().GetValue())
		}
	}
	want := map[string]int64{
		"sms africastalking delivered": settled[smsID].Delivered, "sms africastalking undelivered": settled[smsID].Undelivered,
		"whatsapp twilio delivered": settled[waID].Delivered, "whatsapp twilio undelivered": settled[waID].Undelivered,
	}
	if diff := cmp.Diff(want, got); diff != "" {
		t.Errorf("dispatch_messages_total receipts outcomes (-stats +metrics):\n%s", diff)
	}
	requireStatsMatchMessages(t, rig.db, smsID)
	requireStatsMatchMessages(t, rig.db, waID)
}

// TestProviderE2EStopReply has a recipient answer STOP while the campaign
// is being delivered: their pending message is cancelled, never sent, and
// they are opted out of SMS.
func TestProviderE2EStopReply(t *testing.T) {
	t.Parallel()
	const n = 400
	rig := startProviderRig(t, sim.Options{
		Latency:      50 * time.Millisecond,
		ReceiptDelay: 20 * time.Millisecond,
	}, func(cfg *Config) {
		cfg.Providers.SMS = "twilio"
		cfg.WorkerConcurrency = 5
		// Few messages claimed ahead: the recipient's message stays pending.
		cfg.Worker.BatchSize = 10
	})
	ids := importCustomers(t, rig.testApp, rig.db, slices.Repeat([]string{"Nairobi"}, n)...)
	const body = "Flash sale today only. Reply STOP to opt out"
	id, _ := mustCreateCampaign(t, rig.testApp, map[string]any{"name": "stop reply", "channel": "sms", "base_template": body})
	sendTo(t, rig.testApp, id, ids)
	pollUntil(t, "first messages accepted", 20*time.Second, func() bool { return rig.sim.Stats().Accepted >= 20 })

	// The message queued last is still far from being sent.
	var target struct {
		MessageID  int64  `db:"id"`
		CustomerID int64  `db:"customer_id"`
		Phone      string `db:"phone"`
	}
	if err := rig.db.Get(&target, `
SELECT m.id, m.customer_id, u.phone FROM outbound_messages m JOIN customers u ON u.id = m.customer_id
WHERE m.campaign_id = $1 AND m.status = 'pending' ORDER BY m.id DESC LIMIT 1`, id); err != nil {
		t.Fatalf("find a pending message: %v", err)
	}
	if c := rig.sim.Count(sim.Twilio, target.Phone, body); c != 0 {
		t.Fatalf("pending message %d was already sent %d times", target.MessageID, c)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := rig.sim.SendInbound(ctx, sim.Twilio, "sms", target.Phone, "STOP"); err != nil {
		t.Fatalf("STOP from %s: %v", target.Phone, err)
	}
	var status string
	if err := rig.db.Get(&status, `SELECT status FROM outbound_messages WHERE id = $1`, target.MessageID); err != nil {
		t.Fatal(err)
	}
	t.Logf("STOP from customer %d acknowledged; their message %d is %s", target.CustomerID, target.MessageID, status)

	c := waitProvCampaign(t, rig.testApp, id, "settled", 30*time.Second, campaignState.settled)
	if err := rig.db.Get(&status, `SELECT status FROM outbound_messages WHERE id = $1`, target.MessageID); err != nil {
		t.Fatal(err)
	}
	if status != "cancelled" {
		t.Errorf("message %d to the customer who sent STOP ended %s, want cancelled", target.MessageID, status)
	}
	if s := c.Stats; s.Total != n || s.Cancelled != 1 || s.Delivered != n-1 || s.Failed != 0 {
		t.Errorf("campaign %s %+v, want %d delivered and 1 cancelled", c.Status, s, n-1)
	}
	if got := rig.sim.Count(sim.Twilio, target.Phone, body); got != 0 {
		t.Errorf("the simulator received %d messages to %s after the STOP was acknowledged", got, target.Phone)
	}
	var cust struct {
		OptedOut []string `json:"opted_out_channels"`
	}
	if code := rig.do(t, "GET", fmt.Sprintf("/customers/%d", target.CustomerID), nil, &cust); code != http.StatusOK ||
		!slices.Contains(cust.OptedOut, "sms") {
		t.Errorf("GET /customers/%d = %d, opted_out_channels %v, want sms among them", target.CustomerID, code, cust.OptedOut)
	}
	if st := rig.sim.Stats(); st.Duplicates != 0 || st.Accepted != n-1 {
		t.Errorf("simulator %+v, want %d accepted and no duplicates", st, n-1)
	}
	requireStatsMatchMessages(t, rig.db, id)
}

// TestProviderE2EThrottleStorm has the provider answer half the sends 429:
// throttling costs no attempt, so with a single attempt allowed per message
// every message still goes out and none fails.
//
// It is the slowest of these tests (about 15-25 s): each 429 holds the
// provider for a second, and a throttled message comes back 1-2 s later
// (Retry-After plus jitter), so it is tried at about every other opening
// and the last few dozen messages trickle out over many openings.
func TestProviderE2EThrottleStorm(t *testing.T) {
	t.Parallel()
	const n = 300
	rig := startProviderRig(t, sim.Options{
		// Every 429 holds the provider for a second (Retry-After: 1) from
		// the moment it is answered: the more sends go out before the first
		// answer of each opening, the sooner the storm is through.
		Latency:      100 * time.Millisecond,
		ThrottleRate: 0.5,
		ReceiptDelay: 20 * time.Millisecond,
	}, func(cfg *Config) {
		cfg.MaxRetryCount = 1 // an attempt burned by a 429 would fail the message
		cfg.WorkerConcurrency = 100
	})
	ids := importCustomers(t, rig.testApp, rig.db, slices.Repeat([]string{"Nairobi"}, n)...)
	id, _ := mustCreateCampaign(t, rig.testApp, map[string]any{"name": "throttle storm", "channel": "sms"})
	sendTo(t, rig.testApp, id, ids)

	c := waitProvCampaign(t, rig.testApp, id, "final", 45*time.Second, campaignState.final)
	s := c.Stats
	if s.Total != n || s.Failed != 0 || s.Cancelled != 0 || s.Sent+s.Delivered+s.Undelivered != n {
		t.Errorf("campaign %s %+v, want all %d sent, delivered or undelivered and none failed", c.Status, s, n)
	}
	if m := maxRetryCount(t, rig.db, id); m != 0 {
		t.Errorf("a message used %d attempts: a 429 burned one", m)
	}
	st := rig.sim.Stats()
	t.Logf("simulator %+v", st)
	if st.Throttled == 0 {
		t.Error("the simulator throttled no request")
	}
	if st.Duplicates != 0 || st.Accepted != n {
		t.Errorf("simulator accepted %d (%d duplicates), want %d once each", st.Accepted, st.Duplicates, n)
	}
}

// TestProviderE2EBalanceBrake runs out of balance at Africa's Talking before
// a campaign is sent: nothing goes out and nothing fails while the provider
// is braked; once the balance is back every message is delivered, none
// having used an attempt on the refusals.
func TestProviderE2EBalanceBrake(t *testing.T) {
	t.Parallel()
	const n = 200
	rig := startProviderRig(t, sim.Options{
		Latency:      5 * time.Millisecond,
		ReceiptDelay: 20 * time.Millisecond,
	}, func(cfg *Config) {
		cfg.Providers.Brake = time.Second
		// Brakes in a row double; capped, the recovery below is prompt.
		cfg.Providers.MaxBrake = 2 * time.Second
	})
	rig.sim.SetInsufficientBalance(sim.AfricasTalking, true)
	ids := importCustomers(t, rig.testApp, rig.db, slices.Repeat([]string{"Nairobi"}, n)...)
	id, _ := mustCreateCampaign(t, rig.testApp, map[string]any{"name": "no balance", "channel": "sms"})
	sendTo(t, rig.testApp, id, ids)

	// For two seconds nothing is sent or failed; meanwhile /health should
	// show the provider braked.
	var (
		healthKey   bool // /health has a providers key
		sawBraked   bool
		brakeReason string
	)
	for deadline := time.Now().Add(2 * time.Second); time.Now().Before(deadline); time.Sleep(100 * time.Millisecond) {
		c := readCampaign(t, rig.testApp, id)
		if s := c.Stats; s.Sent != 0 || s.Delivered != 0 || s.Undelivered != 0 || s.Failed != 0 || s.Cancelled != 0 {
			t.Fatalf("while the balance is out: campaign %s %+v, want nothing sent and nothing failed", c.Status, s)
		}
		if st := rig.sim.Stats(); st.Accepted != 0 {
			t.Fatalf("while the balance is out the simulator accepted %d sends", st.Accepted)
		}
		var health struct {
			Providers map[string]struct {
				Braked bool   `json:"braked"`
				Reason string `json:"reason"`
			} `json:"providers"`
		}
		rig.do(t, "GET", "/health", nil, &health)
		if health.Providers != nil {
			healthKey = true
			if p := health.Providers["africastalking"]; p.Braked {
				sawBraked, brakeReason = true, p.Reason
			}
		}
	}
	st := rig.sim.Stats()
	if st.Rejected == 0 {
		t.Fatalf("no send reached the simulator in 2s: simulator %+v", st)
	}
	switch {
	case !healthKey:
		t.Log("GET /health has no providers key: the brake's visibility is not checked")
	case !sawBraked:
		t.Error("GET /health never showed africastalking braked while its balance was out")
	default:
		t.Logf("GET /health showed africastalking braked: %q", brakeReason)
	}
	t.Logf("while out of balance: simulator %+v", st)

	rig.sim.SetInsufficientBalance(sim.AfricasTalking, false)
	c := waitProvCampaign(t, rig.testApp, id, "settled", 30*time.Second, campaignState.settled)
	if s := c.Stats; s.Total != n || s.Delivered != n {
		t.Errorf("after the balance came back: campaign %s %+v, want all %d delivered", c.Status, s, n)
	}
	if m := maxRetryCount(t, rig.db, id); m != 0 {
		t.Errorf("a message used %d attempts on the balance refusals", m)
	}
	if st := rig.sim.Stats(); st.Accepted != n || st.Duplicates != 0 {
		t.Errorf("simulator %+v, want %d accepted once each", st, n)
	}
}

// TestProviderE2EErrorRateBrake has the provider reject every send for
// good: the error-rate brake pauses the campaign after its window of
// attempts, saying why, instead of failing the whole audience; resume
// starts a fresh window.
func TestProviderE2EErrorRateBrake(t *testing.T) {
	t.Parallel()
	const (
		n      = 500
		window = 50
	)
	rig := startProviderRig(t, sim.Options{
		Latency:       5 * time.Millisecond,
		AcceptRate:    -1, // none accepted
		PermanentRate: 1,  // every refusal permanent: 403 InvalidPhoneNumber
	}, func(cfg *Config) {
		cfg.ErrorBrake.Window, cfg.ErrorBrake.Threshold = window, 0.5
	})
	ids := importCustomers(t, rig.testApp, rig.db, slices.Repeat([]string{"Nairobi"}, n)...)
	id, _ := mustCreateCampaign(t, rig.testApp, map[string]any{"name": "all rejected", "channel": "sms"})
	sendTo(t, rig.testApp, id, ids)

	c := waitProvCampaign(t, rig.testApp, id, "paused", 20*time.Second, func(c campaignState) bool {
		if c.Status != "sending" && c.Status != "paused" {
			t.Fatalf("campaign ended %s %+v without being paused by the error-rate brake", c.Status, c.Stats)
		}
		return c.Status == "paused"
	})
	c = waitProvCampaign(t, rig.testApp, id, "in-flight attempts finished", 10*time.Second, func(c campaignState) bool {
		return c.Stats.Sending == 0
	})
	if c.Status != "paused" {
		t.Fatalf("campaign %s %+v after pausing, want paused", c.Status, c.Stats)
	}
	reason := ""
	if c.StatusReason != nil {
		reason = *c.StatusReason
	}
	t.Logf("status_reason: %q", reason)
	if !regexp.MustCompile(`\d+(\.\d+)?%`).MatchString(reason) || !strings.Contains(reason, "403") {
		t.Errorf("status_reason %q, want the failure rate and the provider's error code (403)", reason)
	}
	first := c.Stats
	if first.Failed < window || first.Failed >= n/2 || first.Pending == 0 || first.Sent+first.Delivered != 0 {
		t.Errorf("paused with %+v, want at least %d failed and most of the %d still pending", first, window, n)
	}

	if res := campaignAction(t, rig.testApp, id, "resume"); res.Status != "sending" {
		t.Fatalf("resume = %+v, want sending", res)
	}
	// Resumed, the campaign is attempted again, and with every attempt
	// still failing the brake trips again, after a fresh window: failures
	// of attempts in flight when it first tripped do not count towards it.
	c = waitProvCampaign(t, rig.testApp, id, "paused again", 20*time.Second, func(c campaignState) bool {
		if c.final() {
			t.Fatalf("resumed campaign ended %s %+v without being paused again", c.Status, c.Stats)
		}
		return c.Status == "paused" && c.Stats.Failed > first.Failed && c.Stats.Sending == 0
	})
	t.Logf("paused again after %d more failed attempts: %q", c.Stats.Failed-first.Failed, deref(c.StatusReason))
	if more := c.Stats.Failed - first.Failed; more < 50 {
		t.Errorf("paused again after %d more failed attempts, want a fresh window of at least 50", more)
	}
	if c.StatusReason == nil || !strings.Contains(*c.StatusReason, "403") {
		t.Errorf("second pause: status_reason %q, want the provider's error code (403)", deref(c.StatusReason))
	}
	if st := rig.sim.Stats(); st.Accepted != 0 || st.Rejected < int(c.Stats.Failed) {
		t.Errorf("simulator %+v, want no send accepted and at least %d refused", st, c.Stats.Failed)
	}
}

func deref(s *string) string {
	if s == nil {
		return "<nil>"
	}
	return *s
}
