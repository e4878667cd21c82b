package sim

import (
	"context"
	"encoding/json"
	"io"
	"net/http"
	"net/http/httptest"
	"net/url"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"go.uber.org/goleak"

	"github.com/campaignd/dispatch/messaging/provider/twilio"
)

// Every test closes what it starts, so nothing may be left running.
func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

const (
	atUser    = "sandbox"
	atKey     = "at-key"
	twSID     = "AC0123456789abcdef0123456789abcdef"
	twToken   = "tw-token"
	phone     = "+254711000001"
	otherPhon = "+254711000002"
)

// newSim starts a simulator behind an httptest server, both closed when the
// test ends.
func newSim(t *testing.T, o Options) (*Server, *httptest.Server) {
	t.Helper()
	return newSimRetry(t, o, callbackBackoff)
}

// newSimRetry is newSim with the first callback retry after retryBase. It
// is set before the server starts, so no request can race with it.
func newSimRetry(t *testing.T, o Options, retryBase time.Duration) (*Server, *httptest.Server) {
	t.Helper()
	s := New(o)
	s.retryBase = retryBase
	ts := httptest.NewServer(s.Handler())
	t.Cleanup(func() {
		ts.Close()
		s.Close()
	})
	return s, ts
}

// receiver records the callbacks posted to it. Its first failFirst requests
// are answered 500.
type receiver struct {
	srv       *httptest.Server
	mu        sync.Mutex
	failFirst int
	seen      int
	got       []callback
}

type callback struct {
	url    string // as the sender addressed it
	form   url.Values
	header http.Header
}

func newReceiver(t *testing.T, failFirst int) *receiver {
	t.Helper()
	rc := &receiver{failFirst: failFirst}
	rc.srv = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if err := r.ParseForm(); err != nil {
			http.Error(w, err.Error(), http.StatusBadRequest)
			return
		}
		rc.mu.Lock()
		defer rc.mu.Unlock()
		rc.seen++
		if rc.seen <= rc.failFirst {
			http.Error(w, "not now", http.StatusInternalServerError)
			return
		}
		rc.got = append(rc.got, callback{url: rc.srv.URL + r.URL.RequestURI(), form: r.PostForm, header: r.Header.Clone()})
	}))
	t.Cleanup(rc.srv.Close)
	return rc
}

func (rc *receiver) url(path string) string { return rc.srv.URL + path }

func (rc *receiver) callbacks() []callback {
	rc.mu.Lock()
	defer rc.mu.Unlock()
	return append([]callback(nil), rc.got...)
}

func (rc *receiver) attempts() int {
	rc.mu.Lock()
	defer rc.mu.Unlock()
	return rc.seen
}

// wait returns the callbacks once there are n of them.
func (rc *receiver) wait(t *testing.T, n int) []callback {
	t.Helper()
	eventually(t, "callbacks", func() bool { return len(rc.callbacks()) >= n })
	return rc.callbacks()
}

// eventually polls cond until it holds, failing the test after 5s.
func eventually(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(2 * time.Millisecond)
	}
}

type answer struct {
	status int
	header http.Header
	body   []byte
}

func do(t *testing.T, ts *httptest.Server, req *http.Request) answer {
	t.Helper()
	resp, err := ts.Client().Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatal(err)
	}
	return answer{resp.StatusCode, resp.Header, b}
}

func postForm(t *testing.T, ts *httptest.Server, path string, form url.Values) answer {
	t.Helper()
	req, err := http.NewRequest(http.MethodPost, ts.URL+path, strings.NewReader(form.Encode()))
	if err != nil {
		t.Fatal(err)
	}
	req.Header.Set("Content-Type", "application/x-www-form-urlencoded")
	return do(t, ts, req)
}

// sendAT posts to Africa's Talking's send API as the adapter does.
func sendAT(t *testing.T, ts *httptest.Server, user, key, to, message string) answer {
	t.Helper()
	form := url.Values{"username": {user}, "to": {to}, "message": {message}}
	req, err := http.NewRequest(http.MethodPost, ts.URL+"/version1/messaging", strings.NewReader(form.Encode()))
	if err != nil {
		t.Fatal(err)
	}
	req.Header.Set("Content-Type", "application/x-www-form-urlencoded")
	req.Header.Set("Accept", "application/json")
	req.Header.Set("apiKey", key)
	return do(t, ts, req)
}

func atOK(t *testing.T, ts *httptest.Server, to, message string) atMessageData {
	t.Helper()
	a := sendAT(t, ts, atUser, atKey, to, message)
	if a.status != http.StatusCreated {
		t.Fatalf("status %d, body %s", a.status, a.body)
	}
	var r atResponse
	if err := json.Unmarshal(a.body, &r); err != nil {
		t.Fatalf("%v in %s", err, a.body)
	}
	return r.SMSMessageData
}

// sendTwilio posts to Twilio's Messages API with Basic auth.
func sendTwilio(t *testing.T, ts *httptest.Server, sid, token string, form url.Values) answer {
	t.Helper()
	req, err := http.NewRequest(http.MethodPost, ts.URL+"/2010-04-01/Accounts/"+sid+"/Messages.json", strings.NewReader(form.Encode()))
	if err != nil {
		t.Fatal(err)
	}
	req.Header.Set("Content-Type", "application/x-www-form-urlencoded")
	if sid != "" || token != "" {
		req.SetBasicAuth(sid, token)
	}
	return do(t, ts, req)
}

func twilioOK(t *testing.T, ts *httptest.Server, form url.Values) map[string]any {
	t.Helper()
	a := sendTwilio(t, ts, twSID, twToken, form)
	if a.status != http.StatusCreated {
		t.Fatalf("status %d, body %s", a.status, a.body)
	}
	var m map[string]any
	if err := json.Unmarshal(a.body, &m); err != nil {
		t.Fatalf("%v in %s", err, a.body)
	}
	return m
}

func twilioCode(t *testing.T, a answer) int {
	t.Helper()
	var e twilioError
	if err := json.Unmarshal(a.body, &e); err != nil {
		t.Fatalf("%v in %s", err, a.body)
	}
	if e.Status != a.status {
		t.Errorf("body status %d, HTTP status %d", e.Status, a.status)
	}
	return e.Code
}

func creds() Options {
	return Options{ATUsername: atUser, ATAPIKey: atKey, TwilioAccountSID: twSID, TwilioAuthToken: twToken}
}

func TestATSendAndReceipt(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name  string
		ratio float64
		want  url.Values // without id
	}{
		{"delivered", 1, url.Values{"status": {"Success"}, "phoneNumber": {phone}, "networkCode": {"99999"}, "retryCount": {"0"}}},
		{"failed", -1, url.Values{"status": {"Failed"}, "failureReason": {"DeliveryFailure"}, "phoneNumber": {phone}, "networkCode": {"99999"}, "retryCount": {"0"}}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			rc := newReceiver(t, 0)
			o := creds()
			o.ATDeliveryURL = rc.url("/at/dlr?key=secret")
			o.DeliveredRatio = tt.ratio
			s, ts := newSim(t, o)

			data := atOK(t, ts, phone, "hello")
			if len(data.Recipients) != 1 {
				t.Fatalf("recipients: %+v", data.Recipients)
			}
			rec := data.Recipients[0]
			if !strings.HasPrefix(rec.MessageID, "ATXid_") || len(rec.MessageID) != len("ATXid_")+32 {
				t.Errorf("messageId %q", rec.MessageID)
			}
			wantData := atMessageData{
				Message: "Sent to 1/1 Total Cost: KES 0.8000",
				Recipients: []atRecipient{{StatusCode: 101, Number: phone, Status: "Success", Cost: "KES 0.8000",
					MessageID: rec.MessageID, MessageParts: 1}},
			}
			if d := cmp.Diff(wantData, data); d != "" {
				t.Errorf("response (-want +got):\n%s", d)
			}

			got := rc.wait(t, 1)
			want := tt.want
			want.Set("id", rec.MessageID)
			if d := cmp.Diff(want, got[0].form); d != "" {
				t.Errorf("receipt (-want +got):\n%s", d)
			}
			if got[0].url != o.ATDeliveryURL {
				t.Errorf("posted to %s, want %s", got[0].url, o.ATDeliveryURL)
			}
			eventually(t, "receipt counted", func() bool { return s.Stats().Receipts == 1 })
		})
	}
}

func TestATSeveralRecipientsAndParts(t *testing.T) {
	t.Parallel()
	_, ts := newSim(t, creds())
	data := atOK(t, ts, phone+", "+otherPhon+",12", strings.Repeat("a", 161))
	if data.Message != "Sent to 2/3 Total Cost: KES 3.2000" {
		t.Errorf("Message %q", data.Message)
	}
	var got []string
	for _, r := range data.Recipients {
		got = append(got, r.Number+" "+r.Status+" "+r.Cost)
		if r.StatusCode == 101 && r.MessageParts != 2 {
			t.Errorf("%s: messageParts %d, want 2", r.Number, r.MessageParts)
		}
	}
	want := []string{phone + " Success KES 1.6000", otherPhon + " Success KES 1.6000", "12 InvalidPhoneNumber 0"}
	if d := cmp.Diff(want, got); d != "" {
		t.Errorf("recipients (-want +got):\n%s", d)
	}

	// One character outside GSM-7 makes the whole text UCS-2: 71 units, 2 parts.
	data = atOK(t, ts, phone, strings.Repeat("a", 70)+"ç")
	if p := data.Recipients[0].MessageParts; p != 2 {
		t.Errorf("UCS-2 messageParts %d, want 2", p)
	}
}

func TestTwilioSendAndSignedReceipt(t *testing.T) {
	t.Parallel()
	rc := newReceiver(t, 0)
	o := creds()
	s, ts := newSim(t, o)
	cb := rc.url("/twilio/status?key=1")

	m := twilioOK(t, ts, url.Values{"To": {phone}, "From": {"+15551234567"}, "Body": {"hello"}, "StatusCallback": {cb}})
	sid, _ := m["sid"].(string)
	if !strings.HasPrefix(sid, "SM") || len(sid) != 34 {
		t.Errorf("sid %q", sid)
	}
	if _, err := time.Parse(time.RFC1123Z, m["date_created"].(string)); err != nil {
		t.Errorf("date_created: %v", err)
	}
	for _, k := range []string{"sid", "date_created", "date_updated", "subresource_uris"} {
		delete(m, k)
	}
	want := map[string]any{
		"account_sid": twSID, "api_version": "2010-04-01", "body": "hello", "date_sent": nil,
		"direction": "outbound-api", "error_code": nil, "error_message": nil, "from": "+15551234567",
		"messaging_service_sid": nil, "num_media": "0", "num_segments": "1", "price": nil, "price_unit": "USD",
		"status": "queued", "to": phone, "uri": "/2010-04-01/Accounts/" + twSID + "/Messages/" + sid + ".json",
	}
	if d := cmp.Diff(want, m); d != "" {
		t.Errorf("message resource (-want +got):\n%s", d)
	}

	got := rc.wait(t, 1)[0]
	if !twilio.ValidSignature(twToken, cb, got.form, got.header.Get("X-Twilio-Signature")) {
		t.Errorf("receipt signature does not verify")
	}
	if got.form.Get("RawDlrDoneDate") == "" {
		t.Errorf("no RawDlrDoneDate")
	}
	got.form.Del("RawDlrDoneDate")
	wantForm := url.Values{
		"MessageSid": {sid}, "SmsSid": {sid}, "MessageStatus": {"delivered"}, "SmsStatus": {"delivered"},
		"AccountSid": {twSID}, "From": {"+15551234567"}, "To": {phone}, "ApiVersion": {"2010-04-01"},
	}
	if d := cmp.Diff(wantForm, got.form); d != "" {
		t.Errorf("receipt (-want +got):\n%s", d)
	}
	eventually(t, "receipt counted", func() bool { return s.Stats().Receipts == 1 })
}

func TestTwilioUndeliveredDuplicateOutOfOrder(t *testing.T) {
	t.Parallel()
	rc := newReceiver(t, 0)
	o := creds()
	o.DeliveredRatio = -1
	o.DuplicateReceipts = 1
	o.OutOfOrder = true
	s, ts := newSim(t, o)
	cb := rc.url("/status")

	m := twilioOK(t, ts, url.Values{"To": {"whatsapp:" + phone}, "From": {"whatsapp:+15551234567"}, "Body": {"hi"}, "StatusCallback": {cb}})
	var got []string
	for _, c := range rc.wait(t, 3) {
		if !twilio.ValidSignature(twToken, cb, c.form, c.header.Get("X-Twilio-Signature")) {
			t.Errorf("%s: signature does not verify", c.form.Get("MessageStatus"))
		}
		if c.form.Get("MessageSid") != m["sid"] {
			t.Errorf("MessageSid %q, want %q", c.form.Get("MessageSid"), m["sid"])
		}
		got = append(got, c.form.Get("MessageStatus")+" "+c.form.Get("ErrorCode")+" "+c.form.Get("To"))
	}
	to := "whatsapp:" + phone
	want := []string{"undelivered 30003 " + to, "undelivered 30003 " + to, "sent  " + to}
	if d := cmp.Diff(want, got); d != "" {
		t.Errorf("callbacks in order (-want +got):\n%s", d)
	}
	eventually(t, "receipts counted", func() bool { return s.Stats().Receipts == 3 })
}

func TestTwilioMessagingService(t *testing.T) {
	t.Parallel()
	_, ts := newSim(t, creds())
	m := twilioOK(t, ts, url.Values{"To": {phone}, "MessagingServiceSid": {"MG01"}, "Body": {"hi"}})
	got := []any{m["status"], m["from"], m["messaging_service_sid"], m["num_segments"]}
	if d := cmp.Diff([]any{"accepted", nil, "MG01", "0"}, got); d != "" {
		t.Errorf("status, from, service, segments (-want +got):\n%s", d)
	}
}

func TestBadCredentials(t *testing.T) {
	t.Parallel()
	s, ts := newSim(t, creds())

	for _, c := range []struct{ name, user, key string }{
		{"AT wrong key", atUser, "nope"},
		{"AT wrong username", "someone", atKey},
		{"AT no key", atUser, ""},
	} {
		a := sendAT(t, ts, c.user, c.key, phone, "hello")
		got := []string{a.header.Get("Content-Type"), string(a.body)}
		if a.status != http.StatusUnauthorized {
			t.Errorf("%s: status %d", c.name, a.status)
		}
		if d := cmp.Diff([]string{"text/plain; charset=utf-8", "The supplied authentication is invalid"}, got); d != "" {
			t.Errorf("%s (-want +got):\n%s", c.name, d)
		}
	}

	form := url.Values{"To": {phone}, "From": {"+15551234567"}, "Body": {"hi"}}
	for _, c := range []struct{ name, pathSID, user, token string }{
		{"Twilio wrong token", twSID, twSID, "nope"},
		{"Twilio wrong user", twSID, "ACother", twToken},
		{"Twilio path sid differs", "ACother", twSID, twToken},
		{"Twilio no auth", twSID, "", ""},
	} {
		req, err := http.NewRequest(http.MethodPost, ts.URL+"/2010-04-01/Accounts/"+c.pathSID+"/Messages.json", strings.NewReader(form.Encode()))
		if err != nil {
			t.Fatal(err)
		}
		req.Header.Set("Content-Type", "application/x-www-form-urlencoded")
		if c.user != "" {
			req.SetBasicAuth(c.user, c.token)
		}
		a := do(t, ts, req)
		var body map[string]any
		if err := json.Unmarshal(a.body, &body); err != nil {
			t.Fatalf("%s: %v in %s", c.name, err, a.body)
		}
		want := map[string]any{"code": 20003.0, "message": "Authenticate", "more_info": "https://www.twilio.com/docs/errors/20003", "status": 401.0}
		if a.status != http.StatusUnauthorized {
			t.Errorf("%s: status %d", c.name, a.status)
		}
		if d := cmp.Diff(want, body); d != "" {
			t.Errorf("%s (-want +got):\n%s", c.name, d)
		}
	}
	if st := s.Stats(); st.Rejected != 7 || st.Accepted != 0 {
		t.Errorf("stats %+v, want 7 rejected", st)
	}
}

func TestBadRequests(t *testing.T) {
	t.Parallel()
	_, ts := newSim(t, creds())
	if a := sendAT(t, ts, atUser, atKey, "", "hi"); a.status != http.StatusBadRequest {
		t.Errorf("AT without to: %d %s", a.status, a.body)
	}
	if a := sendAT(t, ts, atUser, atKey, phone, ""); a.status != http.StatusBadRequest {
		t.Errorf("AT without message: %d %s", a.status, a.body)
	}
	tests := []struct {
		name string
		form url.Values
		code int
	}{
		{"no To", url.Values{"From": {"+15551234567"}, "Body": {"hi"}}, 21604},
		{"no From", url.Values{"To": {phone}, "Body": {"hi"}}, 21603},
		{"no Body", url.Values{"To": {phone}, "From": {"+15551234567"}}, 21602},
		{"Body too long", url.Values{"To": {phone}, "From": {"+15551234567"}, "Body": {strings.Repeat("a", 1601)}}, 21617},
		{"invalid To", url.Values{"To": {"hello"}, "From": {"+15551234567"}, "Body": {"hi"}}, 21211},
	}
	for _, tt := range tests {
		a := sendTwilio(t, ts, twSID, twToken, tt.form)
		if a.status != http.StatusBadRequest {
			t.Errorf("%s: status %d", tt.name, a.status)
		}
		if got := twilioCode(t, a); got != tt.code {
			t.Errorf("%s: code %d, want %d", tt.name, got, tt.code)
		}
	}
}

func TestThrottle(t *testing.T) {
	t.Parallel()
	o := creds()
	o.ThrottleRate = 1
	s, ts := newSim(t, o)

	// Throttling comes before anything else, credentials included.
	a := sendAT(t, ts, atUser, "wrong", phone, "hi")
	if a.status != http.StatusTooManyRequests || a.header.Get("Retry-After") != "1" {
		t.Errorf("AT: status %d, Retry-After %q", a.status, a.header.Get("Retry-After"))
	}
	a = sendTwilio(t, ts, twSID, twToken, url.Values{"To": {phone}, "From": {"+15551234567"}, "Body": {"hi"}})
	if a.status != http.StatusTooManyRequests || a.header.Get("Retry-After") != "1" {
		t.Errorf("Twilio: status %d, Retry-After %q", a.status, a.header.Get("Retry-After"))
	}
	if code := twilioCode(t, a); code != 20429 {
		t.Errorf("Twilio code %d, want 20429", code)
	}
	if d := cmp.Diff(Stats{Throttled: 2}, s.Stats()); d != "" {
		t.Errorf("stats (-want +got):\n%s", d)
	}
}

func TestRejections(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name         string
		permanent    float64
		atCode       int
		atStatus     string
		twilioHTTP   int
		twilioCode   int
		twilioHeader string
	}{
		{"permanent", 1, 403, "InvalidPhoneNumber", http.StatusBadRequest, 21211, "application/json"},
		{"transient", 0, 500, "InternalServerError", http.StatusServiceUnavailable, 20503, "application/json"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			rc := newReceiver(t, 0)
			o := creds()
			o.AcceptRate = -1
			o.PermanentRate = tt.permanent
			o.ATDeliveryURL = rc.url("/dlr")
			s, ts := newSim(t, o)

			data := atOK(t, ts, phone, "hi")
			want := atMessageData{
				Message:    "Sent to 0/1 Total Cost: 0",
				Recipients: []atRecipient{{StatusCode: tt.atCode, Number: phone, Status: tt.atStatus, Cost: "0", MessageID: "None"}},
			}
			if d := cmp.Diff(want, data); d != "" {
				t.Errorf("AT (-want +got):\n%s", d)
			}
			a := sendTwilio(t, ts, twSID, twToken, url.Values{"To": {phone}, "From": {"+15551234567"}, "Body": {"hi"}, "StatusCallback": {rc.url("/s")}})
			if a.status != tt.twilioHTTP || a.header.Get("Content-Type") != tt.twilioHeader {
				t.Errorf("Twilio: status %d, Content-Type %q", a.status, a.header.Get("Content-Type"))
			}
			if code := twilioCode(t, a); code != tt.twilioCode {
				t.Errorf("Twilio code %d, want %d", code, tt.twilioCode)
			}
			if d := cmp.Diff(Stats{Rejected: 2}, s.Stats()); d != "" {
				t.Errorf("stats (-want +got):\n%s", d)
			}
			s.mu.Lock()
			pending := s.pending
			s.mu.Unlock()
			if pending != 0 {
				t.Errorf("%d receipts scheduled for rejected sends", pending)
			}
		})
	}
}

func TestInsufficientBalance(t *testing.T) {
	t.Parallel()
	s, ts := newSim(t, creds())
	balance := func(provider, on string) {
		t.Helper()
		a := postForm(t, ts, "/sim/balance?provider="+provider+"&insufficient="+on, nil)
		if a.status != http.StatusOK {
			t.Fatalf("balance %s %s: %d %s", provider, on, a.status, a.body)
		}
	}
	twForm := url.Values{"To": {phone}, "From": {"+15551234567"}, "Body": {"hi"}}

	s.SetInsufficientBalance(AfricasTalking, true)
	balance(Twilio, "true")
	rec := atOK(t, ts, phone, "hi").Recipients[0]
	if rec.StatusCode != 405 || rec.Status != "InsufficientBalance" {
		t.Errorf("AT recipient %+v, want 405 InsufficientBalance", rec)
	}
	a := sendTwilio(t, ts, twSID, twToken, twForm)
	if a.status != http.StatusUnauthorized || twilioCode(t, a) != 20003 {
		t.Errorf("Twilio: %d %s, want 401 code 20003", a.status, a.body)
	}

	balance(AfricasTalking, "false")
	s.SetInsufficientBalance(Twilio, false)
	if rec := atOK(t, ts, phone, "hi").Recipients[0]; rec.StatusCode != 101 {
		t.Errorf("AT after top-up: %+v", rec)
	}
	twilioOK(t, ts, twForm)

	if a := postForm(t, ts, "/sim/balance?provider=nexmo&insufficient=true", nil); a.status != http.StatusBadRequest {
		t.Errorf("unknown provider: %d", a.status)
	}
	if d := cmp.Diff(Stats{Accepted: 2, Rejected: 2}, s.Stats()); d != "" {
		t.Errorf("stats (-want +got):\n%s", d)
	}
}

func TestDuplicateCounting(t *testing.T) {
	t.Parallel()
	s, ts := newSim(t, creds())
	atOK(t, ts, phone, "hello")
	atOK(t, ts, phone, "hello")
	atOK(t, ts, phone, "other")
	twilioOK(t, ts, url.Values{"To": {phone}, "From": {"+15551234567"}, "Body": {"hello"}})

	counts := []int{
		s.Count(AfricasTalking, phone, "hello"), s.Count(AfricasTalking, phone, "other"),
		s.Count(Twilio, phone, "hello"), s.Count(Twilio, otherPhon, "hello"),
	}
	if d := cmp.Diff([]int{2, 1, 1, 0}, counts); d != "" {
		t.Errorf("counts (-want +got):\n%s", d)
	}

	req, err := http.NewRequest(http.MethodGet, ts.URL+"/sim/stats", nil)
	if err != nil {
		t.Fatal(err)
	}
	a := do(t, ts, req)
	var got map[string]int
	if err := json.Unmarshal(a.body, &got); err != nil {
		t.Fatalf("%v in %s", err, a.body)
	}
	want := map[string]int{"accepted": 4, "rejected": 0, "throttled": 0, "duplicates": 1, "receipts": 0, "receipt_failures": 0}
	if d := cmp.Diff(want, got); d != "" {
		t.Errorf("GET /sim/stats (-want +got):\n%s", d)
	}
}

func TestInbound(t *testing.T) {
	t.Parallel()
	atRC, twRC := newReceiver(t, 0), newReceiver(t, 0)
	o := creds()
	o.ATInboundURL = atRC.url("/at/inbound?key=k")
	o.TwilioInboundURL = twRC.url("/twilio/inbound")
	s, ts := newSim(t, o)
	ctx := context.Background()

	if err := s.SendInbound(ctx, AfricasTalking, "sms", phone, "STOP"); err != nil {
		t.Fatal(err)
	}
	at := atRC.wait(t, 1)[0].form
	if _, err := time.Parse(atDateLayout, at.Get("date")); err != nil {
		t.Errorf("date: %v", err)
	}
	if at.Get("id") == "" {
		t.Error("no id")
	}
	got := []string{at.Get("from"), at.Get("to"), at.Get("text")}
	if d := cmp.Diff([]string{phone, "12345", "STOP"}, got); d != "" {
		t.Errorf("AT inbound (-want +got):\n%s", d)
	}

	// Over HTTP, once as JSON (WhatsApp), once as a form (SMS).
	req, err := http.NewRequest(http.MethodPost, ts.URL+"/sim/inbound",
		strings.NewReader(`{"provider":"twilio","channel":"whatsapp","from":"`+otherPhon+`","body":"hi there"}`))
	if err != nil {
		t.Fatal(err)
	}
	req.Header.Set("Content-Type", "application/json")
	if a := do(t, ts, req); a.status != http.StatusNoContent {
		t.Fatalf("POST /sim/inbound JSON: %d %s", a.status, a.body)
	}
	a := postForm(t, ts, "/sim/inbound", url.Values{"provider": {"twilio"}, "from": {phone}, "body": {"STOP"}})
	if a.status != http.StatusNoContent {
		t.Fatalf("POST /sim/inbound form: %d %s", a.status, a.body)
	}
	tw := twRC.wait(t, 2)
	var summary [][]string
	for _, c := range tw {
		f := c.form
		if !twilio.ValidSignature(twToken, o.TwilioInboundURL, f, c.header.Get("X-Twilio-Signature")) {
			t.Errorf("inbound from %s: signature does not verify", f.Get("From"))
		}
		if sid := f.Get("MessageSid"); !strings.HasPrefix(sid, "SM") || f.Get("SmsSid") != sid {
			t.Errorf("MessageSid %q, SmsSid %q", sid, f.Get("SmsSid"))
		}
		summary = append(summary, []string{f.Get("From"), f.Get("To"), f.Get("Body"), f.Get("AccountSid"), f.Get("NumMedia"), f.Get("NumSegments")})
	}
	want := [][]string{
		{"whatsapp:" + otherPhon, "whatsapp:+14155238886", "hi there", twSID, "0", "1"},
		{phone, "+15005550006", "STOP", twSID, "0", "1"},
	}
	if d := cmp.Diff(want, summary); d != "" {
		t.Errorf("Twilio inbound (-want +got):\n%s", d)
	}

	for _, c := range []struct{ provider, channel string }{{AfricasTalking, "whatsapp"}, {"nexmo", "sms"}, {Twilio, "fax"}} {
		if err := s.SendInbound(ctx, c.provider, c.channel, phone, "hi"); err == nil {
			t.Errorf("%s %s: no error", c.provider, c.channel)
		}
	}
	if a := postForm(t, ts, "/sim/inbound", url.Values{"provider": {"nexmo"}, "from": {phone}}); a.status != http.StatusBadRequest {
		t.Errorf("unknown provider over HTTP: %d", a.status)
	}
	noURL := New(creds())
	defer noURL.Close()
	if err := noURL.SendInbound(ctx, Twilio, "sms", phone, "hi"); err == nil {
		t.Error("no inbound URL: no error")
	}
}

func TestCallbackRetries(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name          string
		failFirst     int
		wantAttempts  int
		wantStats     Stats
		wantCallbacks int
	}{
		{"recovers", 2, 3, Stats{Accepted: 1, Receipts: 1}, 1},
		{"gives up", 100, callbackAttempts, Stats{Accepted: 1, ReceiptFailures: 1}, 0},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			rc := newReceiver(t, tt.failFirst)
			o := creds()
			o.ATDeliveryURL = rc.url("/dlr")
			s, ts := newSimRetry(t, o, time.Millisecond)

			atOK(t, ts, phone, "hi")
			eventually(t, "receipt settled", func() bool {
				st := s.Stats()
				return st.Receipts+st.ReceiptFailures == 1
			})
			if d := cmp.Diff(tt.wantStats, s.Stats()); d != "" {
				t.Errorf("stats (-want +got):\n%s", d)
			}
			if got := rc.attempts(); got != tt.wantAttempts {
				t.Errorf("%d attempts, want %d", got, tt.wantAttempts)
			}
			if got := len(rc.callbacks()); got != tt.wantCallbacks {
				t.Errorf("%d callbacks, want %d", got, tt.wantCallbacks)
			}
		})
	}
}

func TestLatency(t *testing.T) {
	t.Parallel()
	o := creds()
	o.Latency = 30 * time.Millisecond
	_, ts := newSim(t, o)
	start := time.Now()
	atOK(t, ts, phone, "hi")
	if d := time.Since(start); d < o.Latency {
		t.Errorf("answered after %v, want at least %v", d, o.Latency)
	}
}

func TestSeedRepeatsIDs(t *testing.T) {
	t.Parallel()
	o := creds()
	o.Seed = 42
	_, ts1 := newSim(t, o)
	_, ts2 := newSim(t, o)
	a, b := atOK(t, ts1, phone, "hi"), atOK(t, ts2, phone, "hi")
	if a.Recipients[0].MessageID != b.Recipients[0].MessageID {
		t.Errorf("same seed, different ids: %s, %s", a.Recipients[0].MessageID, b.Recipients[0].MessageID)
	}
}

func TestCloseDropsPendingReceipts(t *testing.T) {
	t.Parallel()
	rc := newReceiver(t, 0)
	failing := newReceiver(t, 1000)
	pending := func(s *Server) int {
		s.mu.Lock()
		defer s.mu.Unlock()
		return s.pending
	}
	// One simulator holds two receipts in their delay, the other one in its
	// retry backoff, when Close comes.
	o := creds()
	o.ATDeliveryURL = rc.url("/dlr")
	o.ReceiptDelay = time.Hour
	waiting, ts := newSim(t, o)
	retrying, ts2 := newSimRetry(t, creds(), time.Hour)

	atOK(t, ts, phone, "hi")
	twilioOK(t, ts, url.Values{"To": {phone}, "From": {"+15551234567"}, "Body": {"hi"}, "StatusCallback": {rc.url("/s")}})
	twilioOK(t, ts2, url.Values{"To": {phone}, "From": {"+15551234567"}, "Body": {"hi"}, "StatusCallback": {failing.url("/s")}})
	eventually(t, "first attempt", func() bool { return failing.attempts() == 1 })
	if got := []int{pending(waiting), pending(retrying)}; !cmp.Equal(got, []int{2, 1}) {
		t.Fatalf("receipts pending %v, want [2 1]", got)
	}

	for _, s := range []*Server{waiting, retrying} {
		closed := make(chan struct{})
		go func() {
			s.Close()
			close(closed)
		}()
		select {
		case <-closed:
		case <-time.After(5 * time.Second):
			t.Fatal("Close did not return")
		}
		s.Close() // idempotent

		// Close waited for every receipt goroutine, so nothing can arrive
		// later.
		if n := pending(s); n != 0 {
			t.Errorf("%d receipts pending after Close", n)
		}
		if st := s.Stats(); st.Receipts != 0 || st.ReceiptFailures != 0 {
			t.Errorf("dropped receipts counted: %+v", st)
		}
	}
	atOK(t, ts, phone, "after close")
	if n := pending(waiting); n != 0 {
		t.Errorf("a send after Close scheduled %d receipts", n)
	}
	if got := len(rc.callbacks()); got != 0 {
		t.Errorf("%d callbacks delivered", got)
	}
	if got := failing.attempts(); got != 1 {
		t.Errorf("%d attempts at the failing receiver, want 1", got)
	}
}
