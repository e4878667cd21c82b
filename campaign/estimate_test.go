package campaign

import (
	"context"
	"fmt"
	"net/http"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"github.com/nyaruka/phonenumbers"

	"github.com/campaignd/dispatch/messaging"
	"github.com/campaignd/dispatch/messaging/provider"
	"github.com/campaignd/dispatch/messaging/queue"
	"github.com/campaignd/dispatch/platform/channel"
	"github.com/campaignd/dispatch/platform/sms"
)

// estimateAdapter and testSendAdapter wire the messaging feature into
// campaign tests, as app does in production.
type estimateAdapter struct{ *messaging.Estimator }

func (e estimateAdapter) Estimate(ctx context.Context, ch channel.Channel, tmpl string, a Audience, dups int) (any, error) {
	est, err := e.Estimator.Estimate(ctx, ch, tmpl, messaging.Audience(a))
	est.DuplicatesRemoved = dups
	if err != nil {
		return nil, err
	}
	return est, nil
}

type testSendAdapter struct{ *messaging.TestSender }

func (t testSendAdapter) TestSend(ctx context.Context, m TestSend) (any, error) {
	msg, err := t.Send(ctx, messaging.TestSend(m))
	if err != nil {
		return nil, err
	}
	return msg, nil
}

// estimatePricing is the price list of these tests: KES, with US
// segments at a fraction of a cent.
func estimatePricing(t testing.TB) messaging.Pricing {
	t.Helper()
	p, err := messaging.NewPricing("KES", "0.80", map[string]string{"254": "0.80", "255": "1.10", "1": "0.0079"})
	if err != nil {
		t.Fatal(err)
	}
	return p
}

// estimateLimits are the channel limits of these tests, the estimate's and
// the pool's: 300 characters, so a long name makes a message too long.
var estimateLimits = messaging.Limits{SMS: 300}

// newEstimateEnv is a send environment whose service also estimates and
// test-sends, through the real messaging feature; tests is the provider
// test sends go through.
func newEstimateEnv(t *testing.T, tests provider.Sender) (*sendEnv, *messaging.TestSender) {
	t.Helper()
	se := newSendEnv(t)
	ts := messaging.NewTestSender(messaging.NewRepo(se.db.DB), tests,
		messaging.TestSendOptions{Timeout: 2 * time.Second, Provider: "fake", Limits: estimateLimits}, sendLog)
	t.Cleanup(ts.Wait)
	se.svc.WithEstimates(estimateAdapter{messaging.NewEstimator(se.db.DB, estimateLimits, estimatePricing(t))}).
		WithTestSend(testSendAdapter{ts}, testPhone)
	se.e = newEcho(se.svc)
	return se, ts
}

// testPhone reads a phone as E.164, national numbers as Kenyan.
func testPhone(raw string) (string, error) {
	n, err := phonenumbers.Parse(raw, "KE")
	if err != nil || !phonenumbers.IsValidNumber(n) {
		return "", fmt.Errorf("phone %q is not a valid phone number", raw)
	}
	return phonenumbers.Format(n, phonenumbers.E164), nil
}

// acceptAll is a provider that accepts every message and quotes nothing,
// so the pool stores the segments it counts itself.
type acceptAll struct {
	mu    sync.Mutex
	calls []provider.Message
}

func (a *acceptAll) Send(_ context.Context, m provider.Message) (provider.Accepted, error) {
	a.mu.Lock()
	defer a.mu.Unlock()
	a.calls = append(a.calls, m)
	return provider.Accepted{MessageID: fmt.Sprintf("acc-%d", m.ID)}, nil
}

// deliverAll runs the real pipeline (feeder, Redis queue, worker pool with
// sender) until campaign id has no pending or sending message and no
// audience left to materialise.
func deliverAll(t *testing.T, se *sendEnv, id int64, sender provider.Sender) {
	t.Helper()
	q := queue.New(se.rdb, se.prefix, sendQueueName)
	pool := messaging.NewPool(messaging.PoolOptions{
		Consumer: "estimate-test", Concurrency: 4, BatchSize: 20, Limits: estimateLimits,
		SendTimeout: time.Second, Lease: 5 * time.Second, PollWait: 50 * time.Millisecond,
		HeartbeatInterval: 100 * time.Millisecond, DrainTimeout: 2 * time.Second, Starved: se.msvc.WakeFeeder,
	}, q, se.msvc.Repo(), sender, messaging.RetryPolicy{MaxAttempts: 1, Base: 10 * time.Millisecond}, sendLog)
	ctx, cancel := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	wg.Go(func() { se.msvc.RunFeeder(ctx) })                            // returns when ctx ends
	wg.Go(func() { se.msvc.RunMaterializer(ctx, 50*time.Millisecond) }) // returns when ctx ends
	poolErr := make(chan error, 1)
	wg.Go(func() { poolErr <- pool.Run(ctx) }) // returns after draining, once ctx ends
	defer func() {
		cancel()
		wg.Wait()
		if err := <-poolErr; err != nil {
			t.Errorf("pool.Run: %v", err)
		}
	}()
	deadline := time.Now().Add(30 * time.Second)
	for {
		var active int
		if err := se.db.GetContext(ctx, &active, `
SELECT (SELECT count(*) FROM outbound_messages WHERE campaign_id = $1 AND status IN ('pending', 'sending'))
     + (SELECT count(*) FROM dispatch_batches WHERE campaign_id = $1 AND filter IS NOT NULL)`, id); err != nil {
			t.Fatal(err)
		}
		if active == 0 {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("%d messages of campaign %d still active", active, id)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// estimateFromMessages is the estimate that campaign id's stored messages
// make: every message a recipient; the segments and encoding the pool
// stored on those it sent, priced by the customer's calling code.
func estimateFromMessages(t *testing.T, se *sendEnv, id int64) messaging.Estimate {
	t.Helper()
	var rows []struct {
		Phone    string  `db:"phone"`
		Status   string  `db:"status"`
		Encoding *string `db:"encoding"`
		Segments *int    `db:"segments"`
		Error    *string `db:"last_error"`
	}
	if err := se.db.SelectContext(context.Background(), &rows, `
SELECT c.phone, m.status, m.encoding, m.segments, m.last_error
FROM outbound_messages m JOIN customers c ON c.id = m.customer_id
WHERE m.campaign_id = $1 AND NOT m.test`, id); err != nil {
		t.Fatal(err)
	}
	pricing := estimatePricing(t)
	est := messaging.Estimate{Segments: messaging.EstimateSegments{ByEncoding: map[string]int64{"GSM-7": 0, "UCS-2": 0}}}
	type country struct{ recipients, segments int64 }
	byCode := map[string]*country{}
	for _, r := range rows {
		est.Recipients++
		if r.Status != "sent" {
			if r.Error == nil || !strings.Contains(*r.Error, "sms allows 300") {
				t.Fatalf("message to %s: %s, %v; want sent, or failed as too long", r.Phone, r.Status, r.Error)
			}
			est.TooLong++
			continue
		}
		est.Segments.Total += int64(*r.Segments)
		est.Segments.ByEncoding[*r.Encoding] += int64(*r.Segments)
		est.Segments.MaxPerMessage = max(est.Segments.MaxPerMessage, *r.Segments)
		code := messaging.CallingCode(r.Phone)
		if byCode[code] == nil {
			byCode[code] = &country{}
		}
		byCode[code].recipients++
		byCode[code].segments += int64(*r.Segments)
	}
	var total int64
	est.Cost = messaging.EstimateCost{Currency: "KES", ByCountry: []messaging.EstimateCountry{}}
	for code, c := range byCode {
		m := c.segments * pricing.PerSegment(code)
		total += m
		est.Cost.ByCountry = append(est.Cost.ByCountry, messaging.EstimateCountry{CallingCode: code, Recipients: c.recipients,
			Segments: c.segments, Cost: messaging.FormatMoney(m)})
	}
	est.Cost.Total = messaging.FormatMoney(total)
	return est
}

// sortCountries orders by calling code, for comparing.
var sortCountries = cmp.Transformer("sortCountries", func(in []messaging.EstimateCountry) map[string]messaging.EstimateCountry {
	out := make(map[string]messaging.EstimateCountry, len(in))
	for _, c := range in {
		out[c.CallingCode] = c
	}
	return out
})

// TestEstimateMatchesSend estimates a send to a mixed audience (GSM-7 and
// UCS-2 names, some pushing a message past 160 septets or 70 units, one
// past the channel's limit; customers opted out of SMS; ids repeated),
// then sends the same body and delivers it through the real pipeline: the
// estimate is what the stored messages add up to.
func TestEstimateMatchesSend(t *testing.T) {
	t.Parallel()
	se, _ := newEstimateEnv(t, &acceptAll{})
	ctx := context.Background()
	tmpl := "Hi {first_name}! Your {preferred_product} is ready at our {location} store. Show this SMS at the till. Reply STOP to opt out."
	c := se.createCampaign(t, "mixed", channel.SMS, tmpl)

	type customer struct{ phone, name, location, product string }
	customers := []customer{
		{"+254712000001", "Amina", "Nairobi", "tea"},                       // GSM-7, 1 segment
		{"+254712000002", "Brian", "nairobi", "coffee"},                    // GSM-7, 1
		{"+255712000003", "Chloé", "Dar", "tea"},                           // é is GSM-7: 1
		{"+254712000004", strings.Repeat("Wanjiru", 10), "Nairobi", "tea"}, // GSM-7 past 160: 2
		{"+14155550105", "Zoë", "Austin", "tea"},                           // ë is not: UCS-2 past 70, 2
		{"+447911123406", "Ana 🌟", "Leeds", "tea"},                         // emoji: UCS-2, 2
		{"+255712000007", strings.Repeat("Łukasz", 10), "Dar", "tea"},      // UCS-2 past 134: 3
		{"+254712000008", "Opted", "Nairobi", "tea"},                       // opted out of SMS
		{"+254712000009", "Ölfa", "Nairobi", "tea"},                        // opted out of SMS (Ö is GSM-7)
		{"+254712000010", "Wapp", "Nairobi", "tea"},                        // opted out of WhatsApp only: a recipient
		{"+254712000011", strings.Repeat("x", 220), "Nairobi", "tea"},      // past 300 characters: fails, too long
	}
	var ids []int64
	for _, cu := range customers {
		var id int64
		if err := se.db.GetContext(ctx, &id, `
INSERT INTO customers (phone, first_name, location, preferred_product) VALUES ($1, $2, $3, $4) RETURNING id`,
			cu.phone, cu.name, cu.location, cu.product); err != nil {
			t.Fatal(err)
		}
		ids = append(ids, id)
	}
	if _, err := se.db.ExecContext(ctx, `
INSERT INTO customer_opt_outs (customer_id, channel) VALUES ($1, 'sms'), ($2, 'sms'), ($3, 'whatsapp')`, ids[7], ids[8], ids[9]); err != nil {
		t.Fatal(err)
	}
	body := sendBody(t, append(append([]int64{}, ids...), ids[0], ids[4], ids[0]))

	est := decodeJSON[messaging.Estimate](t, se.do(http.MethodPost, fmt.Sprintf("/campaigns/%d/estimate", c.ID), body), http.StatusOK)
	if est.Recipients != 9 || est.SkippedOptedOut != 2 || est.DuplicatesRemoved != 3 || est.TooLong != 1 {
		t.Errorf("estimate: %+v; want 9 recipients, 2 opted out, 3 duplicates, 1 too long", est)
	}
	if got := se.countMessages(t); got != 0 {
		t.Fatalf("the estimate created %d messages", got)
	}
	if st := se.campaignStatus(t, c.ID); st != StatusDraft {
		t.Fatalf("after the estimate the campaign is %s, want draft", st)
	}

	res := decodeJSON[SendResult](t, se.send(c.ID, body, ""), http.StatusAccepted)
	if res.MessagesQueued != est.Recipients || res.SkippedOptedOut != est.SkippedOptedOut || res.DuplicatesRemoved != est.DuplicatesRemoved {
		t.Errorf("send: %+v; the estimate said %d recipients, %d opted out, %d duplicates",
			res, est.Recipients, est.SkippedOptedOut, est.DuplicatesRemoved)
	}
	deliverAll(t, se, c.ID, &acceptAll{})

	want := estimateFromMessages(t, se, c.ID)
	want.SkippedOptedOut, want.DuplicatesRemoved = res.SkippedOptedOut, res.DuplicatesRemoved
	if diff := cmp.Diff(want, est, sortCountries); diff != "" {
		t.Errorf("estimate (-from the delivered messages +estimated):\n%s", diff)
	}
	// The figures themselves, worked by hand: segments 1+1+1+2+1 GSM-7
	// and 2+2+3 UCS-2; cost 254: 5 × 0.80, 255: 4 × 1.10, 1: 2 × 0.0079,
	// 44 (the default price): 2 × 0.80; 10.0158 in all.
	if est.Segments.Total != 13 || est.Segments.MaxPerMessage != 3 ||
		est.Segments.ByEncoding["GSM-7"] != 6 || est.Segments.ByEncoding["UCS-2"] != 7 || est.Cost.Total != "10.02" {
		t.Errorf("segments %+v, cost %s; want 13 (6 GSM-7, 7 UCS-2, at most 3), 10.02", est.Segments, est.Cost.Total)
	}
	if first := est.Cost.ByCountry[0]; first.CallingCode != "255" || first.Cost != "4.40" {
		t.Errorf("by_country starts with %+v; want the costliest, 255 at 4.40", first)
	}
	// The encodings are what the preview's counter says.
	for _, name := range []string{"Zoë", "Ana 🌟"} {
		if enc := sms.Analyze(name).Encoding; enc != sms.UCS2 {
			t.Errorf("%s is %s", name, enc)
		}
	}
}

// An audience filter is estimated as the send counts it, before the
// materialiser creates the messages.
func TestEstimateAudienceMatchesSend(t *testing.T) {
	t.Parallel()
	se, _ := newEstimateEnv(t, &acceptAll{})
	ctx := context.Background()
	ids := seedCustomers(t, se.db.DB, 40)
	if _, err := se.db.ExecContext(ctx, `
UPDATE customers SET location = CASE WHEN id % 2 = 0 THEN 'Nairobi' ELSE 'Mombasa' END;
INSERT INTO customer_opt_outs (customer_id, channel) SELECT id, 'sms' FROM customers WHERE id % 8 = 0`); err != nil {
		t.Fatal(err)
	}
	_ = ids
	c := se.createCampaign(t, "filter", channel.SMS, "Hi {first_name} in {location}")
	body := `{"audience":{"location":" nairobi "}}`
	est := decodeJSON[messaging.Estimate](t, se.do(http.MethodPost, fmt.Sprintf("/campaigns/%d/estimate", c.ID), body), http.StatusOK)
	res := decodeJSON[SendResult](t, se.send(c.ID, body, ""), http.StatusAccepted)
	if est.Recipients != 15 || est.SkippedOptedOut != 5 || res.MessagesQueued != est.Recipients || res.SkippedOptedOut != est.SkippedOptedOut {
		t.Errorf("estimate %d recipients, %d opted out; send %+v; want 15 and 5 both", est.Recipients, est.SkippedOptedOut, res)
	}
	deliverAll(t, se, c.ID, &acceptAll{})
	want := estimateFromMessages(t, se, c.ID)
	want.SkippedOptedOut = res.SkippedOptedOut
	if diff := cmp.Diff(want, est, sortCountries); diff != "" {
		t.Errorf("estimate (-from the delivered messages +estimated):\n%s", diff)
	}

	// WhatsApp: a message is a segment, with no encoding.
	w := se.createCampaign(t, "whatsapp", channel.WhatsApp, strings.Repeat("Hi {first_name}! ", 20))
	est = decodeJSON[messaging.Estimate](t, se.do(http.MethodPost, fmt.Sprintf("/campaigns/%d/estimate", w.ID), `{"audience":{"all":true}}`), http.StatusOK)
	if est.Recipients != 40 || est.Segments.Total != 40 || est.Segments.MaxPerMessage != 1 || len(est.Segments.ByEncoding) != 0 ||
		est.Cost.Total != "0.32" { // 40 × 0.0079 (+1 666...)
		t.Errorf("WhatsApp estimate: %+v", est)
	}
}

func TestEstimateErrors(t *testing.T) {
	t.Parallel()
	se, _ := newEstimateEnv(t, &acceptAll{})
	c := se.createCampaign(t, "errors", channel.SMS, "Hi {first_name}")
	ids := seedCustomers(t, se.db.DB, 3)
	url := fmt.Sprintf("/campaigns/%d/estimate", c.ID)

	wantError(t, se.do(http.MethodPost, "/campaigns/999999/estimate", sendBody(t, ids)), http.StatusNotFound, "CAMPAIGN_NOT_FOUND", "")
	wantError(t, se.do(http.MethodPost, "/campaigns/abc/estimate", sendBody(t, ids)), http.StatusBadRequest, "VALIDATION_ERROR", "id")
	wantError(t, se.do(http.MethodPost, url, `{"customer_ids":[]}`), http.StatusBadRequest, "VALIDATION_ERROR", "customer_ids")
	wantError(t, se.do(http.MethodPost, url, `{"customer_ids":[1,-2]}`), http.StatusBadRequest, "VALIDATION_ERROR", "customer_ids")
	wantError(t, se.do(http.MethodPost, url, `{}`), http.StatusBadRequest, "VALIDATION_ERROR", "customer_ids")
	wantError(t, se.do(http.MethodPost, url, `{"customer_ids":[1],"audience":{"all":true}}`), http.StatusBadRequest, "VALIDATION_ERROR", "audience")
	wantError(t, se.do(http.MethodPost, url, `{"customer_ids":"1"}`), http.StatusBadRequest, "INVALID_JSON", "")
	wantError(t, se.doCT(http.MethodPost, url, "text/plain", `{"customer_ids":[1]}`), http.StatusUnsupportedMediaType, "UNSUPPORTED_MEDIA_TYPE", "")
	wantError(t, se.do(http.MethodPost, url, sendBody(t, []int64{ids[0], 999_999})), http.StatusUnprocessableEntity, "UNKNOWN_CUSTOMERS", "")

	// An empty audience is an answer, not an error.
	est := decodeJSON[messaging.Estimate](t, se.do(http.MethodPost, url, `{"audience":{"location":"Atlantis"}}`), http.StatusOK)
	want := messaging.Estimate{Segments: messaging.EstimateSegments{ByEncoding: map[string]int64{"GSM-7": 0, "UCS-2": 0}},
		Cost: messaging.EstimateCost{Currency: "KES", Total: "0.00", ByCountry: []messaging.EstimateCountry{}}}
	if diff := cmp.Diff(want, est); diff != "" {
		t.Errorf("empty audience (-want +got):\n%s", diff)
	}
	// Any status: a sent campaign is estimated too, and left as it is.
	sent := se.insertCampaign(t, "sent", channel.SMS, StatusSent)
	est = decodeJSON[messaging.Estimate](t, se.do(http.MethodPost, fmt.Sprintf("/campaigns/%d/estimate", sent), sendBody(t, ids)), http.StatusOK)
	if est.Recipients != 3 || se.campaignStatus(t, sent) != StatusSent {
		t.Errorf("sent campaign: %+v, status %s", est, se.campaignStatus(t, sent))
	}
}

func TestPreviewSMSLength(t *testing.T) {
	t.Parallel()
	te := newTestEnv(t)
	smsCampaign := te.createCampaign(t, "sms", channel.SMS, "Hi {first_name} {last_name}, 20% off!")
	wa := te.createCampaign(t, "wa", channel.WhatsApp, "Hi {first_name}")

	p := decodeJSON[map[string]any](t, te.do(http.MethodPost, fmt.Sprintf("/campaigns/%d/personalized-preview", smsCampaign.ID),
		`{"customer_id":1}`), http.StatusOK)
	want := map[string]any{"encoding": "GSM-7", "characters": float64(24), "segments": float64(1), "non_gsm_characters": []any{}}
	if diff := cmp.Diff(want, p["sms"]); diff != "" {
		t.Errorf("sms of %q (-want +got):\n%s", p["rendered_message"], diff)
	}
	p = decodeJSON[map[string]any](t, te.do(http.MethodPost, fmt.Sprintf("/campaigns/%d/personalized-preview", smsCampaign.ID),
		`{"customer_id":3}`), http.StatusOK)
	want = map[string]any{"encoding": "UCS-2", "characters": float64(26), "segments": float64(1), "non_gsm_characters": []any{"ë", "🌟", "Ō"}}
	if diff := cmp.Diff(want, p["sms"]); diff != "" {
		t.Errorf("sms of %q (-want +got):\n%s", p["rendered_message"], diff)
	}
	p = decodeJSON[map[string]any](t, te.do(http.MethodPost, fmt.Sprintf("/campaigns/%d/personalized-preview", wa.ID),
		`{"customer_id":1}`), http.StatusOK)
	if _, ok := p["sms"]; ok {
		t.Errorf("WhatsApp preview has sms: %v", p["sms"])
	}
}
