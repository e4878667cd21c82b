package africastalking

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"net/url"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"

	"github.com/campaignd/dispatch/messaging/provider"
	"github.com/campaignd/dispatch/platform/channel"
)

// Distinctive credentials, so a leak into an error string is unmistakable.
const (
	testUser = "acme_user_7c1"
	testKey  = "atsk_0123456789abcdef0123456789abcdef"
	testTo   = "+254711000111"
	testBody = "Hello & welcome: 50% off=today"
)

func sms() provider.Message {
	return provider.Message{ID: 42, Channel: channel.SMS, To: testTo, Body: testBody}
}

// checkRequest asserts the exact request PROVIDERS.md §1 describes. It
// runs in the server's goroutine, so it reports with Errorf.
func checkRequest(t *testing.T, r *http.Request, senderID string) {
	t.Helper()
	if r.Method != http.MethodPost {
		t.Errorf("method = %s, want POST", r.Method)
	}
	if r.URL.Path != "/version1/messaging" || r.URL.RawQuery != "" {
		t.Errorf("URL = %s, want /version1/messaging without a query", r.URL.RequestURI())
	}
	for name, want := range map[string]string{
		"apiKey":       testKey,
		"Accept":       "application/json",
		"Content-Type": "application/x-www-form-urlencoded",
	} {
		if got := r.Header.Values(name); len(got) != 1 || got[0] != want {
			t.Errorf("header %s = %q, want [%q]", name, got, want)
		}
	}
	if r.Header.Get("Authorization") != "" {
		t.Errorf("unexpected Authorization header: Africa's Talking uses apiKey only")
	}
	raw, err := io.ReadAll(r.Body)
	if err != nil {
		t.Errorf("read body: %v", err)
		return
	}
	got, err := url.ParseQuery(string(raw))
	if err != nil {
		t.Errorf("body %q is not a form: %v", raw, err)
		return
	}
	want := url.Values{"username": {testUser}, "to": {testTo}, "message": {testBody}}
	if senderID != "" {
		want.Set("from", senderID)
	}
	if diff := cmp.Diff(want, got); diff != "" {
		t.Errorf("form (-want +got):\n%s", diff)
	}
}

// answer is one canned reply from the fake provider.
type answer struct {
	status int
	header map[string]string
	body   string
}

// newFake starts a fake Africa's Talking that checks every request and
// answers a.
func newFake(t *testing.T, senderID string, a answer) *httptest.Server {
	t.Helper()
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		checkRequest(t, r, senderID)
		for k, v := range a.header {
			w.Header().Set(k, v)
		}
		w.WriteHeader(a.status)
		io.WriteString(w, a.body)
	}))
	t.Cleanup(srv.Close)
	return srv
}

func newClient(t *testing.T, baseURL, senderID string, hc *http.Client) *Client {
	t.Helper()
	c, err := New(Config{BaseURL: baseURL, Username: testUser, APIKey: testKey, SenderID: senderID, Client: hc})
	if err != nil {
		t.Fatalf("New: %v", err)
	}
	return c
}

// failure is the part of a *provider.Error the pool acts on.
type failure struct {
	Class      provider.Class
	Code       string
	Message    string
	RetryAfter time.Duration
	Uncertain  bool
}

// asFailure unwraps err to a *provider.Error and checks it leaks no
// credential.
func asFailure(t *testing.T, err error) failure {
	t.Helper()
	var pe *provider.Error
	if !errors.As(err, &pe) {
		t.Fatalf("error %v (%T) is not a *provider.Error", err, err)
	}
	if pe.Provider != Name {
		t.Errorf("Provider = %q, want %q", pe.Provider, Name)
	}
	noSecrets(t, err.Error())
	return failure{pe.Class, pe.Code, pe.Message, pe.RetryAfter, pe.Uncertain}
}

func noSecrets(t *testing.T, s string) {
	t.Helper()
	for _, secret := range []string{testKey, testUser} {
		if strings.Contains(s, secret) {
			t.Errorf("error %q contains a credential", s)
		}
	}
}

func successBody(code int, status, extra string) string {
	return fmt.Sprintf(`{"SMSMessageData":{"Message":"Sent to 1/1 Total Cost: KES 0.8000","Recipients":[`+
		`{"statusCode":%d,"number":"%s","status":"%s","messageId":"ATXid_abc123"%s}]}}`, code, testTo, status, extra)
}

func failureBody(code int, status string) string {
	return fmt.Sprintf(`{"SMSMessageData":{"Message":"Sent to 0/1 Total Cost: 0","Recipients":[`+
		`{"statusCode":%d,"number":"%s","status":"%s","cost":"0","messageId":"None"}]}}`, code, testTo, status)
}

func TestSendAccepted(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name     string
		senderID string
		body     string
		want     provider.Accepted
	}{
		{
			name: "100 processed", body: successBody(100, "Processed", `,"cost":"KES 0.8000","messageParts":1`),
			want: provider.Accepted{MessageID: "ATXid_abc123", Status: "Processed", Segments: 1, Cost: "0.8000", Currency: "KES"},
		},
		{
			name: "101 sent with sender id", senderID: "ACME", body: successBody(101, "Success", `,"cost":"KES 1.6000","messageParts":2`),
			want: provider.Accepted{MessageID: "ATXid_abc123", Status: "Success", Segments: 2, Cost: "1.6000", Currency: "KES"},
		},
		{
			name: "102 queued without parts", body: successBody(102, "Queued", `,"cost":"UGX 25.0000"`),
			want: provider.Accepted{MessageID: "ATXid_abc123", Status: "Queued", Cost: "25.0000", Currency: "UGX"},
		},
		{
			name: "cost zero", body: successBody(101, "Success", `,"cost":"0"`),
			want: provider.Accepted{MessageID: "ATXid_abc123", Status: "Success", Cost: "0"},
		},
		{
			name: "cost missing, parts quoted", body: successBody(101, "Success", `,"messageParts":"3"`),
			want: provider.Accepted{MessageID: "ATXid_abc123", Status: "Success", Segments: 3},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			srv := newFake(t, tt.senderID, answer{status: http.StatusCreated, body: tt.body})
			// The trailing slash must not double the path separator.
			c := newClient(t, srv.URL+"/", tt.senderID, nil)
			got, err := c.Send(context.Background(), sms())
			if err != nil {
				t.Fatalf("Send: %v", err)
			}
			if diff := cmp.Diff(tt.want, got); diff != "" {
				t.Errorf("Accepted (-want +got):\n%s", diff)
			}
		})
	}
}

func TestSendRecipientStatus(t *testing.T) {
	t.Parallel()
	tests := []struct {
		code  int
		name  string
		class provider.Class
	}{
		{401, "RiskHold", provider.Account},
		{402, "InvalidSenderId", provider.Account},
		{403, "InvalidPhoneNumber", provider.Permanent},
		{404, "UnsupportedNumberType", provider.Permanent},
		{405, "InsufficientBalance", provider.Account},
		{406, "UserInBlacklist", provider.OptedOut},
		{407, "CouldNotRoute", provider.Transient},
		{409, "DoNotDisturbRejection", provider.OptedOut},
		{500, "InternalServerError", provider.Transient},
		{501, "GatewayError", provider.Transient},
		{502, "RejectedByGateway", provider.Transient},
		{408, "SomethingNew", provider.Permanent},
		{999, "Unheard", provider.Permanent},
	}
	for _, tt := range tests {
		t.Run(fmt.Sprintf("%d %s", tt.code, tt.name), func(t *testing.T) {
			t.Parallel()
			srv := newFake(t, "", answer{status: http.StatusCreated, body: failureBody(tt.code, tt.name)})
			c := newClient(t, srv.URL, "", nil)
			_, err := c.Send(context.Background(), sms())
			want := failure{Class: tt.class, Code: fmt.Sprint(tt.code), Message: tt.name}
			if diff := cmp.Diff(want, asFailure(t, err)); diff != "" {
				t.Errorf("failure (-want +got):\n%s", diff)
			}
		})
	}
}

func TestSendHTTPFailure(t *testing.T) {
	t.Parallel()
	long := strings.Repeat("x", 5000)
	tests := []struct {
		name string
		ans  answer
		want failure
	}{
		{
			name: "401 bad credentials",
			ans:  answer{status: 401, header: map[string]string{"Content-Type": "text/plain"}, body: "The supplied authentication is invalid"},
			want: failure{Class: provider.Account, Code: "http_401", Message: "The supplied authentication is invalid"},
		},
		{
			name: "201 InvalidSenderId with no recipients",
			ans:  answer{status: 201, body: `{"SMSMessageData":{"Message":"InvalidSenderId","Recipients":[]}}`},
			want: failure{Class: provider.Account, Code: "InvalidSenderId", Message: "InvalidSenderId"},
		},
		{
			name: "201 unknown word with no recipients",
			ans:  answer{status: 201, body: `{"SMSMessageData":{"Message":"SomethingAccountWide","Recipients":[]}}`},
			want: failure{Class: provider.Account, Code: "no_recipients", Message: "SomethingAccountWide"},
		},
		{
			name: "400 InvalidSenderId as JSON",
			ans:  answer{status: 400, body: `{"SMSMessageData":{"Message":"InvalidSenderId","Recipients":[]}}`},
			want: failure{Class: provider.Account, Code: "InvalidSenderId", Message: "InvalidSenderId"},
		},
		{
			name: "429 retry after seconds",
			ans:  answer{status: 429, header: map[string]string{"Retry-After": "7"}, body: "Too Many Requests"},
			want: failure{Class: provider.Throttled, Code: "http_429", Message: "Too Many Requests", RetryAfter: 7 * time.Second},
		},
		{
			name: "429 without retry after",
			ans:  answer{status: 429},
			want: failure{Class: provider.Throttled, Code: "http_429", RetryAfter: time.Second},
		},
		{
			name: "400 text",
			ans:  answer{status: 400, body: "Request is missing required form field 'to'"},
			want: failure{Class: provider.Permanent, Code: "http_400", Message: "Request is missing required form field 'to'"},
		},
		{
			name: "404 html",
			ans:  answer{status: 404, body: "<html>not found</html>"},
			want: failure{Class: provider.Permanent, Code: "http_404", Message: "<html>not found</html>"},
		},
		{
			name: "500",
			ans:  answer{status: 500, body: "Internal Server Error"},
			want: failure{Class: provider.Transient, Code: "http_500", Message: "Internal Server Error", Uncertain: true},
		},
		{
			name: "503 with retry after and a long body",
			ans:  answer{status: 503, header: map[string]string{"Retry-After": "30"}, body: long},
			want: failure{Class: provider.Transient, Code: "http_503", Message: strings.Repeat("x", maxText) + "…", RetryAfter: 30 * time.Second, Uncertain: true},
		},
		{
			name: "201 malformed body",
			ans:  answer{status: 201, body: `{"SMSMessageData":{"Recipients":[{"statusCode":`},
			want: failure{Class: provider.Transient, Code: "malformed_response", Message: `HTTP 201 with an unreadable body: {"SMSMessageData":{"Recipients":[{"statusCode":`, Uncertain: true},
		},
		{
			name: "201 XML body",
			ans:  answer{status: 201, body: `<AfricasTalkingResponse/>`},
			want: failure{Class: provider.Transient, Code: "malformed_response", Message: "HTTP 201 with an unreadable body: <AfricasTalkingResponse/>", Uncertain: true},
		},
		{
			name: "201 recipient without statusCode",
			ans:  answer{status: 201, body: `{"SMSMessageData":{"Message":"?","Recipients":[{"number":"+254711000111","status":"Odd"}]}}`},
			want: failure{Class: provider.Transient, Code: "malformed_response", Message: "recipient without statusCode: Odd", Uncertain: true},
		},
		{
			name: "400 echoing the credentials",
			ans:  answer{status: 400, body: "bad request for username=" + testUser + " apiKey=" + testKey + " encoded=" + url.QueryEscape(testKey)},
			want: failure{Class: provider.Permanent, Code: "http_400", Message: "bad request for username=[redacted] apiKey=[redacted] encoded=[redacted]"},
		},
		{
			// Redacted before clipping: no half key survives the cut.
			name: "500 with the key across the clip",
			ans:  answer{status: 500, body: strings.Repeat("x", 190) + testKey},
			want: failure{Class: provider.Transient, Code: "http_500", Message: strings.Repeat("x", 190) + "[redacted]", Uncertain: true},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			srv := newFake(t, "", tt.ans)
			c := newClient(t, srv.URL, "", nil)
			_, err := c.Send(context.Background(), sms())
			if diff := cmp.Diff(tt.want, asFailure(t, err)); diff != "" {
				t.Errorf("failure (-want +got):\n%s", diff)
			}
		})
	}
}

func TestSendRetryAfterDate(t *testing.T) {
	t.Parallel()
	at := time.Now().Add(30 * time.Second).UTC().Format(http.TimeFormat)
	srv := newFake(t, "", answer{status: 429, header: map[string]string{"Retry-After": at}})
	c := newClient(t, srv.URL, "", nil)
	_, err := c.Send(context.Background(), sms())
	f := asFailure(t, err)
	if f.Class != provider.Throttled || f.RetryAfter < 25*time.Second || f.RetryAfter > 31*time.Second {
		t.Errorf("got %+v, want Throttled with RetryAfter about 30s", f)
	}
}

// The request is on the wire when the deadline passes: Africa's Talking
// may have sent it, so the failure is uncertain.
func TestSendTimeout(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name    string
		timeout time.Duration // client timeout; 0 uses a context deadline
	}{
		{"client timeout", 100 * time.Millisecond},
		{"context deadline", 0},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
				checkRequest(t, r, "")
				// Deliberately slower than the client: answer only after
				// it has given up (or, as a backstop, much later).
				select {
				case <-r.Context().Done():
				case <-time.After(10 * time.Second):
				}
				w.WriteHeader(http.StatusCreated)
			}))
			t.Cleanup(srv.Close)
			hc := provider.HTTPClient(4, 10*time.Second)
			ctx := context.Background()
			if tt.timeout > 0 {
				hc.Timeout = tt.timeout
			} else {
				var cancel context.CancelFunc
				ctx, cancel = context.WithTimeout(ctx, 100*time.Millisecond)
				defer cancel()
			}
			c := newClient(t, srv.URL, "", hc)
			_, err := c.Send(ctx, sms())
			f := asFailure(t, err)
			f.Message = ""
			if diff := cmp.Diff(failure{Class: provider.Transient, Code: "timeout", Uncertain: true}, f); diff != "" {
				t.Errorf("failure (-want +got):\n%s", diff)
			}
		})
	}
}

// A refused connection never reached the provider: safe to retry.
func TestSendRefused(t *testing.T) {
	t.Parallel()
	srv := httptest.NewServer(http.NotFoundHandler())
	base := srv.URL
	srv.Close()
	c := newClient(t, base, "", nil)
	_, err := c.Send(context.Background(), sms())
	f := asFailure(t, err)
	f.Message = ""
	if diff := cmp.Diff(failure{Class: provider.Transient, Code: "network"}, f); diff != "" {
		t.Errorf("failure (-want +got):\n%s", diff)
	}
}

// Messages Africa's Talking cannot or must not carry fail before any request.
func TestSendRejectedLocally(t *testing.T) {
	t.Parallel()
	var hits atomic.Int32
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { hits.Add(1) }))
	t.Cleanup(srv.Close)
	c := newClient(t, srv.URL, "", nil)
	tests := []struct {
		name string
		msg  provider.Message
		code string
	}{
		{"whatsapp", provider.Message{Channel: channel.WhatsApp, To: testTo, Body: "hi"}, "unsupported_channel"},
		{"no channel", provider.Message{To: testTo, Body: "hi"}, "unsupported_channel"},
		{"two numbers", provider.Message{Channel: channel.SMS, To: testTo + ",+254711000222", Body: "hi"}, "invalid_number"},
		{"no plus", provider.Message{Channel: channel.SMS, To: "254711000111", Body: "hi"}, "invalid_number"},
		{"empty", provider.Message{Channel: channel.SMS, Body: "hi"}, "invalid_number"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			_, err := c.Send(context.Background(), tt.msg)
			f := asFailure(t, err)
			if f.Class != provider.Permanent || f.Code != tt.code {
				t.Errorf("got %+v, want Permanent %s", f, tt.code)
			}
		})
	}
	t.Run("whatsapp says why", func(t *testing.T) {
		t.Parallel()
		_, err := c.Send(context.Background(), provider.Message{Channel: channel.WhatsApp, To: testTo})
		if !strings.Contains(err.Error(), "SMS only") {
			t.Errorf("error %q does not say Africa's Talking carries SMS only", err)
		}
	})
	t.Cleanup(func() {
		if n := hits.Load(); n != 0 {
			t.Errorf("provider received %d requests, want 0", n)
		}
	})
}

// Bodies are drained and closed, so sequential sends share one connection
// whatever the answer.
func TestSendReusesConnection(t *testing.T) {
	t.Parallel()
	var conns, n atomic.Int32
	answers := []answer{
		{status: 201, body: successBody(101, "Success", `,"cost":"KES 0.8000"`)},
		{status: 400, body: strings.Repeat("e", 70<<10)}, // larger than we read
		{status: 201, body: failureBody(403, "InvalidPhoneNumber")},
		{status: 201, body: successBody(101, "Success", "")},
	}
	srv := httptest.NewUnstartedServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		checkRequest(t, r, "")
		a := answers[int(n.Add(1)-1)%len(answers)]
		w.WriteHeader(a.status)
		io.WriteString(w, a.body)
	}))
	srv.Config.ConnState = func(_ net.Conn, s http.ConnState) {
		if s == http.StateNew {
			conns.Add(1)
		}
	}
	srv.Start()
	t.Cleanup(srv.Close)
	c := newClient(t, srv.URL, "", nil)
	for range answers {
		c.Send(context.Background(), sms())
	}
	if got := conns.Load(); got != 1 {
		t.Errorf("opened %d connections for %d sequential sends, want 1", got, len(answers))
	}
}

func TestNew(t *testing.T) {
	t.Parallel()
	ok := Config{BaseURL: "https://api.africastalking.com", Username: testUser, APIKey: testKey}
	tests := []struct {
		name    string
		edit    func(*Config)
		wantErr []string // substrings; nil means success
	}{
		{"valid", func(*Config) {}, nil},
		{"trailing slash", func(c *Config) { c.BaseURL += "/" }, nil},
		{"sandbox over http", func(c *Config) { c.BaseURL = "http://api.sandbox.africastalking.com" }, nil},
		{"missing base", func(c *Config) { c.BaseURL = "" }, []string{"AFRICASTALKING_BASE_URL"}},
		{"relative base", func(c *Config) { c.BaseURL = "api.africastalking.com" }, []string{"AFRICASTALKING_BASE_URL", "absolute http(s)"}},
		{"ftp base", func(c *Config) { c.BaseURL = "ftp://api.africastalking.com" }, []string{"AFRICASTALKING_BASE_URL"}},
		{"base with query", func(c *Config) { c.BaseURL = "https://api.africastalking.com?x=1" }, []string{"AFRICASTALKING_BASE_URL"}},
		{"base with credentials", func(c *Config) { c.BaseURL = "https://" + testUser + ":" + testKey + "@api.africastalking.com" }, []string{"AFRICASTALKING_BASE_URL"}},
		{"missing username", func(c *Config) { c.Username = " " }, []string{"AFRICASTALKING_USERNAME"}},
		{"missing key", func(c *Config) { c.APIKey = "" }, []string{"AFRICASTALKING_API_KEY"}},
		{"all missing", func(c *Config) { *c = Config{} }, []string{"AFRICASTALKING_BASE_URL", "AFRICASTALKING_USERNAME", "AFRICASTALKING_API_KEY"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			cfg := ok
			tt.edit(&cfg)
			c, err := New(cfg)
			if tt.wantErr == nil {
				if err != nil {
					t.Fatalf("New: %v", err)
				}
				if c.Name() != Name {
					t.Errorf("Name() = %q, want %q", c.Name(), Name)
				}
				if c.http == nil {
					t.Error("no default HTTP client")
				}
				return
			}
			if err == nil {
				t.Fatal("New succeeded, want an error")
			}
			for _, s := range tt.wantErr {
				if !strings.Contains(err.Error(), s) {
					t.Errorf("error %q does not mention %q", err, s)
				}
			}
			noSecrets(t, err.Error())
		})
	}
}
