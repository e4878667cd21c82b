package twilio

import (
	"context"
	"encoding/base64"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"net/url"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"

	"github.com/campaignd/dispatch/messaging/provider"
	"github.com/campaignd/dispatch/platform/channel"
)

const (
	testSID   = "AC0123456789abcdef0123456789abcdef"
	testToken = "tok-9f8e7d6c5b4a3f2e1d0c9b8a7f6e5d4c"
	testHook  = "https://dispatch.example.com/webhooks/twilio/status"
	msgPath   = "/2010-04-01/Accounts/" + testSID + "/Messages.json"
)

// sent is one request as the fake saw it.
type sent struct {
	Method, Path, User, Pass, ContentType, Accept string
	BasicOK                                       bool
	Form                                          url.Values
}

// fake is a Twilio Messages endpoint that records each request and answers
// with reply.
type fake struct {
	srv  *httptest.Server
	mu   sync.Mutex
	reqs []sent
}

func newFake(t *testing.T, reply http.HandlerFunc) *fake {
	t.Helper()
	f := &fake{}
	f.srv = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		body, _ := io.ReadAll(r.Body)
		form, err := url.ParseQuery(string(body))
		if err != nil {
			t.Errorf("request body is not a form: %v", err)
		}
		s := sent{Method: r.Method, Path: r.URL.Path, ContentType: r.Header.Get("Content-Type"), Accept: r.Header.Get("Accept"), Form: form}
		s.User, s.Pass, s.BasicOK = r.BasicAuth()
		f.mu.Lock()
		f.reqs = append(f.reqs, s)
		f.mu.Unlock()
		reply(w, r)
	}))
	t.Cleanup(f.srv.Close)
	return f
}

func (f *fake) requests() []sent {
	f.mu.Lock()
	defer f.mu.Unlock()
	return append([]sent(nil), f.reqs...)
}

func reply(status int, header map[string]string, body string) http.HandlerFunc {
	return func(w http.ResponseWriter, _ *http.Request) {
		for k, v := range header {
			w.Header().Set(k, v)
		}
		w.WriteHeader(status)
		io.WriteString(w, body)
	}
}

func jsonReply(status int, body string) http.HandlerFunc {
	return reply(status, map[string]string{"Content-Type": "application/json"}, body)
}

// messageJSON is a Message resource as Twilio returns it on create.
func messageJSON(status, segments, price, errorCode, errorMessage string) string {
	return fmt.Sprintf(`{"account_sid":%q,"api_version":"2010-04-01","body":"Hi","date_created":"Thu, 24 Aug 2023 05:01:45 +0000",
"date_sent":null,"date_updated":"Thu, 24 Aug 2023 05:01:45 +0000","direction":"outbound-api","error_code":%s,
"error_message":%s,"from":"+15017122661","messaging_service_sid":null,"num_media":"0","num_segments":%q,"price":%s,
"price_unit":"USD","sid":"SM1234567890abcdef1234567890abcdef","status":%q,"subresource_uris":{"media":"/x"},
"to":"+254712000001","uri":"/2010-04-01/Accounts/%s/Messages/SM1234567890abcdef1234567890abcdef.json"}`,
		testSID, errorCode, errorMessage, segments, price, status, testSID)
}

func okJSON() string { return messageJSON("queued", "1", "null", "null", "null") }

func testConfig(base string) Config {
	return Config{BaseURL: base, AccountSID: testSID, AuthToken: testToken, From: "+15017122661"}
}

func newClient(t *testing.T, cfg Config) *Client {
	t.Helper()
	c, err := New(cfg)
	if err != nil {
		t.Fatalf("New: %v", err)
	}
	return c
}

func smsTo(to string) provider.Message {
	return provider.Message{ID: 7, Channel: channel.SMS, To: to, Body: "Hello Ana, 20% off today"}
}

// wantError checks err is a *provider.Error of the given shape and that it
// carries no credentials.
func wantError(t *testing.T, err error, class provider.Class, code string, uncertain bool, retryAfter time.Duration) *provider.Error {
	t.Helper()
	var pe *provider.Error
	if !errors.As(err, &pe) {
		t.Fatalf("error %v (%T) is not a *provider.Error", err, err)
	}
	if pe.Provider != Name || pe.Class != class || pe.Code != code || pe.Uncertain != uncertain || pe.RetryAfter != retryAfter {
		t.Errorf("error = {%s %s %q uncertain=%v retry=%v}, want {%s %s %q uncertain=%v retry=%v} (%v)",
			pe.Provider, pe.Class, pe.Code, pe.Uncertain, pe.RetryAfter, Name, class, code, uncertain, retryAfter, err)
	}
	noSecret(t, err.Error())
	return pe
}

func noSecret(t *testing.T, s string) {
	t.Helper()
	basic := base64.StdEncoding.EncodeToString([]byte(testSID + ":" + testToken))
	if strings.Contains(s, testToken) || strings.Contains(s, basic) {
		t.Errorf("error text carries the auth token: %q", s)
	}
}

func TestNew(t *testing.T) {
	t.Parallel()
	valid := testConfig("https://api.twilio.com/")
	tests := []struct {
		name string
		edit func(*Config)
		want []string // substrings of the error; none means success
	}{
		{"valid", func(*Config) {}, nil},
		{"service instead of from", func(c *Config) { c.From, c.MessagingServiceSID = "", "MG123" }, nil},
		{"plain http for a simulator", func(c *Config) { c.BaseURL = "http://127.0.0.1:9000" }, nil},
		{"no base url", func(c *Config) { c.BaseURL = "" }, []string{"TWILIO_BASE_URL"}},
		{"relative base url", func(c *Config) { c.BaseURL = "api.twilio.com" }, []string{"TWILIO_BASE_URL"}},
		{"other scheme", func(c *Config) { c.BaseURL = "ftp://api.twilio.com" }, []string{"TWILIO_BASE_URL"}},
		{"no account", func(c *Config) { c.AccountSID = "" }, []string{"TWILIO_ACCOUNT_SID"}},
		{"no token", func(c *Config) { c.AuthToken = "" }, []string{"TWILIO_AUTH_TOKEN"}},
		{"no sender", func(c *Config) { c.From = "" }, []string{"TWILIO_FROM", "TWILIO_MESSAGING_SERVICE_SID"}},
		{"everything missing", func(c *Config) { *c = Config{} }, []string{
			"TWILIO_BASE_URL", "TWILIO_ACCOUNT_SID", "TWILIO_AUTH_TOKEN", "TWILIO_FROM",
		}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			cfg := valid
			tt.edit(&cfg)
			c, err := New(cfg)
			if len(tt.want) == 0 {
				if err != nil {
					t.Fatalf("New: %v", err)
				}
				if c.Name() != "twilio" {
					t.Errorf("Name() = %q", c.Name())
				}
				return
			}
			if err == nil {
				t.Fatal("New accepted the config")
			}
			for _, w := range tt.want {
				if !strings.Contains(err.Error(), w) {
					t.Errorf("error %q does not name %s", err, w)
				}
			}
			noSecret(t, err.Error())
		})
	}
}

// TestSendRequest pins the exact request Twilio receives for each sender
// set-up: no field more, no field less.
func TestSendRequest(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name string
		edit func(*Config)
		msg  provider.Message
		want url.Values
	}{
		{
			name: "sms from a number",
			edit: func(c *Config) { c.StatusCallback = testHook },
			msg:  smsTo("+254712000001"),
			want: url.Values{"To": {"+254712000001"}, "From": {"+15017122661"}, "Body": {"Hello Ana, 20% off today"}, "StatusCallback": {testHook}},
		},
		{
			name: "sms without a status callback",
			edit: func(*Config) {},
			msg:  smsTo("+254712000001"),
			want: url.Values{"To": {"+254712000001"}, "From": {"+15017122661"}, "Body": {"Hello Ana, 20% off today"}},
		},
		{
			name: "sms with no channel set",
			edit: func(*Config) {},
			msg:  provider.Message{To: "+254712000001", Body: "x"},
			want: url.Values{"To": {"+254712000001"}, "From": {"+15017122661"}, "Body": {"x"}},
		},
		{
			name: "sms through a messaging service",
			edit: func(c *Config) {
				c.MessagingServiceSID = "MG9752274e9e519418a7406176694466fa"
				c.StatusCallback = testHook
			},
			msg:  smsTo("+254712000001"),
			want: url.Values{"To": {"+254712000001"}, "MessagingServiceSid": {"MG9752274e9e519418a7406176694466fa"}, "Body": {"Hello Ana, 20% off today"}, "StatusCallback": {testHook}},
		},
		{
			name: "whatsapp",
			edit: func(c *Config) {
				c.WhatsAppFrom = "+14155238886"
				c.MessagingServiceSID = "MG9752274e9e519418a7406176694466fa"
				c.StatusCallback = testHook
			},
			msg:  provider.Message{ID: 8, Channel: channel.WhatsApp, To: "+254712000001", Body: "Habari 👋"},
			want: url.Values{"To": {"whatsapp:+254712000001"}, "From": {"whatsapp:+14155238886"}, "Body": {"Habari 👋"}, "StatusCallback": {testHook}},
		},
		{
			name: "whatsapp sender already prefixed",
			edit: func(c *Config) { c.WhatsAppFrom = "whatsapp:+14155238886" },
			msg:  provider.Message{Channel: channel.WhatsApp, To: "whatsapp:+254712000001", Body: "x"},
			want: url.Values{"To": {"whatsapp:+254712000001"}, "From": {"whatsapp:+14155238886"}, "Body": {"x"}},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			f := newFake(t, jsonReply(http.StatusCreated, okJSON()))
			cfg := testConfig(f.srv.URL + "/") // the trailing slash must not double up
			tt.edit(&cfg)
			if _, err := newClient(t, cfg).Send(context.Background(), tt.msg); err != nil {
				t.Fatalf("Send: %v", err)
			}
			reqs := f.requests()
			if len(reqs) != 1 {
				t.Fatalf("fake saw %d requests, want 1", len(reqs))
			}
			want := sent{
				Method: http.MethodPost, Path: msgPath, User: testSID, Pass: testToken, BasicOK: true,
				ContentType: "application/x-www-form-urlencoded", Accept: "application/json", Form: tt.want,
			}
			if diff := cmp.Diff(want, reqs[0]); diff != "" {
				t.Errorf("request (-want +got):\n%s", diff)
			}
		})
	}
}

func TestSendAccepted(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name   string
		status int
		body   string
		want   provider.Accepted
	}{
		{
			name:   "201 priced, two segments",
			status: http.StatusCreated,
			body:   messageJSON("sent", "2", `"-0.00750"`, "null", "null"),
			want:   provider.Accepted{MessageID: "SM1234567890abcdef1234567890abcdef", Status: "sent", Segments: 2, Cost: "0.00750", Currency: "USD"},
		},
		{
			name:   "201 through a service: price null, segments 0",
			status: http.StatusCreated,
			body:   messageJSON("accepted", "0", "null", "null", "null"),
			want:   provider.Accepted{MessageID: "SM1234567890abcdef1234567890abcdef", Status: "accepted", Currency: "USD"},
		},
		{
			name:   "200 accepted too",
			status: http.StatusOK,
			body:   messageJSON("queued", "1", "null", "null", "null"),
			want:   provider.Accepted{MessageID: "SM1234567890abcdef1234567890abcdef", Status: "queued", Segments: 1, Currency: "USD"},
		},
		{
			name:   "numbers unquoted",
			status: http.StatusCreated,
			body:   `{"sid":"SMabc","status":"queued","num_segments":3,"price":-0.04,"price_unit":"USD","error_code":null}`,
			want:   provider.Accepted{MessageID: "SMabc", Status: "queued", Segments: 3, Cost: "0.04", Currency: "USD"},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			f := newFake(t, jsonReply(tt.status, tt.body))
			got, err := newClient(t, testConfig(f.srv.URL)).Send(context.Background(), smsTo("+254712000001"))
			if err != nil {
				t.Fatalf("Send: %v", err)
			}
			if diff := cmp.Diff(tt.want, got); diff != "" {
				t.Errorf("Accepted (-want +got):\n%s", diff)
			}
		})
	}
}

// TestSendErrorCodes runs every documented code both as a rejected request
// (HTTP 400 with an error body) and as a 201 whose message already failed.
func TestSendErrorCodes(t *testing.T) {
	t.Parallel()
	tests := []struct {
		code  string
		class provider.Class
	}{
		{"20003", provider.Account},
		{"20429", provider.Throttled},
		{"21211", provider.Permanent},
		{"21408", provider.Account},
		{"21610", provider.OptedOut},
		{"21612", provider.Permanent},
		{"21614", provider.Permanent},
		{"30001", provider.Transient},
		{"30003", provider.Transient},
		{"30004", provider.Permanent},
		{"30005", provider.Permanent},
		{"30006", provider.Permanent},
		{"30007", provider.Account},
		{"30008", provider.Transient},
		{"63016", provider.Permanent},
		{"21999", provider.Permanent}, // unknown, on a 4xx or a failed message
	}
	for _, tt := range tests {
		var retry time.Duration
		if tt.class == provider.Throttled {
			retry = time.Second
		}
		t.Run("http_400/"+tt.code, func(t *testing.T) {
			t.Parallel()
			body := fmt.Sprintf(`{"code":%s,"message":"The message failed (%s)","more_info":"https://www.twilio.com/docs/errors/%s","status":400}`, tt.code, tt.code, tt.code)
			f := newFake(t, jsonReply(http.StatusBadRequest, body))
			_, err := newClient(t, testConfig(f.srv.URL)).Send(context.Background(), smsTo("+254712000001"))
			pe := wantError(t, err, tt.class, tt.code, false, retry)
			if want := "The message failed (" + tt.code + ")"; pe.Message != want {
				t.Errorf("Message = %q, want %q", pe.Message, want)
			}
		})
		t.Run("failed_201/"+tt.code, func(t *testing.T) {
			t.Parallel()
			f := newFake(t, jsonReply(http.StatusCreated, messageJSON("failed", "1", "null", tt.code, `"Delivery failed"`)))
			_, err := newClient(t, testConfig(f.srv.URL)).Send(context.Background(), smsTo("+254712000001"))
			wantError(t, err, tt.class, tt.code, false, retry)
		})
	}
}

func TestSendHTTPErrors(t *testing.T) {
	t.Parallel()
	long := strings.Repeat("x", 5000)
	tests := []struct {
		name       string
		reply      http.HandlerFunc
		class      provider.Class
		code       string
		uncertain  bool
		retryAfter time.Duration
		message    string // when not "", the exact Message
	}{
		{
			name:  "429 with Retry-After seconds",
			reply: reply(429, map[string]string{"Retry-After": "7"}, `{"code":20429,"message":"Too Many Requests","status":429}`),
			class: provider.Throttled, code: "20429", retryAfter: 7 * time.Second, message: "Too Many Requests",
		},
		{
			name:  "429 without Retry-After waits a second",
			reply: reply(429, nil, "Too Many Requests"),
			class: provider.Throttled, code: "http_429", retryAfter: time.Second, message: "Too Many Requests",
		},
		{
			name:  "429 with another code is still throttled",
			reply: reply(429, map[string]string{"Retry-After": "2"}, `{"code":21211,"message":"slow down","status":429}`),
			class: provider.Throttled, code: "21211", retryAfter: 2 * time.Second,
		},
		{
			name:  "401 with Twilio's body",
			reply: jsonReply(401, `{"code":20003,"detail":"Your AccountSid or AuthToken was incorrect.","message":"Authentication Error - invalid username","more_info":"https://www.twilio.com/docs/errors/20003","status":401}`),
			class: provider.Account, code: "20003", message: "Authentication Error - invalid username",
		},
		{
			name:  "401 without a body",
			reply: reply(401, nil, ""),
			class: provider.Account, code: "http_401", message: "Unauthorized",
		},
		{
			name:  "500 html",
			reply: reply(500, map[string]string{"Content-Type": "text/html"}, "<html>\n  <body>Internal   error</body>\n</html>"),
			class: provider.Transient, code: "http_500", uncertain: true, message: "<html> <body>Internal error</body> </html>",
		},
		{
			name:  "503 unknown code with Retry-After",
			reply: reply(503, map[string]string{"Retry-After": "5"}, `{"code":20500,"message":"Service Unavailable","status":503}`),
			class: provider.Transient, code: "20500", uncertain: true, retryAfter: 5 * time.Second,
		},
		{
			name:  "unknown 4xx",
			reply: reply(418, nil, `{"code":29999,"message":"teapot","status":418}`),
			class: provider.Permanent, code: "29999", message: "teapot",
		},
		{
			name:  "redirect is not followed",
			reply: reply(302, map[string]string{"Location": "/elsewhere"}, ""),
			class: provider.Transient, code: "http_302", uncertain: true,
		},
		{
			name:  "long message clipped",
			reply: jsonReply(400, `{"code":21211,"message":"`+long+`","status":400}`),
			class: provider.Permanent, code: "21211", message: long[:200] + "…",
		},
		{
			name:  "failed 201 without a code",
			reply: jsonReply(201, messageJSON("undelivered", "1", "null", "null", "null")),
			class: provider.Permanent, code: "undelivered", message: "message undelivered",
		},
		{
			name:  "malformed 201",
			reply: jsonReply(201, `{"sid": "SM123", "status"`),
			class: provider.Transient, code: "malformed_response", uncertain: true,
		},
		{
			name:  "201 without a sid",
			reply: jsonReply(201, `{"status":"queued"}`),
			class: provider.Transient, code: "malformed_response", uncertain: true,
		},
		{
			name:  "201 html",
			reply: reply(201, nil, "<html>OK</html>"),
			class: provider.Transient, code: "malformed_response", uncertain: true,
		},
		{
			name:  "201 too large",
			reply: jsonReply(201, `{"sid":"SM1","status":"queued","body":"`+strings.Repeat("y", maxBody)+`"}`),
			class: provider.Transient, code: "malformed_response", uncertain: true,
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			f := newFake(t, tt.reply)
			_, err := newClient(t, testConfig(f.srv.URL)).Send(context.Background(), smsTo("+254712000001"))
			pe := wantError(t, err, tt.class, tt.code, tt.uncertain, tt.retryAfter)
			if tt.message != "" && pe.Message != tt.message {
				t.Errorf("Message = %q, want %q", pe.Message, tt.message)
			}
			if n := len(f.requests()); n != 1 {
				t.Errorf("fake saw %d requests, want 1", n)
			}
		})
	}
}

func TestSendRetryAfterDate(t *testing.T) {
	t.Parallel()
	at := time.Now().Add(30 * time.Second).UTC().Format(http.TimeFormat)
	f := newFake(t, reply(429, map[string]string{"Retry-After": at}, ""))
	_, err := newClient(t, testConfig(f.srv.URL)).Send(context.Background(), smsTo("+254712000001"))
	var pe *provider.Error
	if !errors.As(err, &pe) || pe.Class != provider.Throttled {
		t.Fatalf("err = %v, want throttled", err)
	}
	if pe.RetryAfter < 28*time.Second || pe.RetryAfter > 31*time.Second {
		t.Errorf("RetryAfter = %v, want about 30s", pe.RetryAfter)
	}
}

func TestRetryAfter(t *testing.T) {
	t.Parallel()
	now := time.Date(2025, 3, 1, 12, 0, 0, 0, time.UTC)
	tests := []struct {
		in   string
		want time.Duration
	}{
		{"", 0},
		{"0", 0},
		{"-3", 0},
		{" 12 ", 12 * time.Second},
		{"99999999999999999999", maxRetryAfter},
		{"86400", maxRetryAfter},
		{"Sat, 01 Mar 2025 12:00:45 GMT", 45 * time.Second},
		{"Sat, 01 Mar 2025 11:59:00 GMT", 0},
		{"soon", 0},
	}
	for _, tt := range tests {
		if got := retryAfter(tt.in, now); got != tt.want {
			t.Errorf("retryAfter(%q) = %v, want %v", tt.in, got, tt.want)
		}
	}
}

// TestSendNeverLeaksToken has the fake echo the credentials back in every
// way a confused proxy might.
func TestSendNeverLeaksToken(t *testing.T) {
	t.Parallel()
	echo := func(status int) http.HandlerFunc {
		return func(w http.ResponseWriter, r *http.Request) {
			_, pass, _ := r.BasicAuth()
			w.WriteHeader(status)
			fmt.Fprintf(w, `{"code":20003,"message":"bad credentials %s / %s","status":%d}`, pass, r.Header.Get("Authorization"), status)
		}
	}
	for _, status := range []int{201, 400, 401, 429, 500, 502} {
		t.Run(fmt.Sprint(status), func(t *testing.T) {
			t.Parallel()
			f := newFake(t, echo(status))
			_, err := newClient(t, testConfig(f.srv.URL)).Send(context.Background(), smsTo("+254712000001"))
			if err == nil {
				t.Fatal("Send succeeded")
			}
			noSecret(t, err.Error())
			var pe *provider.Error
			if errors.As(err, &pe) {
				noSecret(t, pe.Message)
			}
		})
	}
}

func TestSendNotSent(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name string
		msg  provider.Message
		code string
	}{
		{"whatsapp without a sender", provider.Message{Channel: channel.WhatsApp, To: "+254712000001", Body: "x"}, "not_configured"},
		{"unknown channel", provider.Message{Channel: "telegram", To: "+254712000001", Body: "x"}, "unsupported_channel"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			f := newFake(t, jsonReply(http.StatusCreated, okJSON()))
			_, err := newClient(t, testConfig(f.srv.URL)).Send(context.Background(), tt.msg)
			pe := wantError(t, err, provider.Permanent, tt.code, false, 0)
			if tt.code == "not_configured" && !strings.Contains(pe.Message, "TWILIO_WHATSAPP_FROM") {
				t.Errorf("Message = %q, want it to name TWILIO_WHATSAPP_FROM", pe.Message)
			}
			if n := len(f.requests()); n != 0 {
				t.Errorf("fake saw %d requests, want none", n)
			}
		})
	}
}

func TestSendTransport(t *testing.T) {
	t.Parallel()
	// hang never answers; it returns when the client gives up or the test
	// ends, so the server can close.
	hang := func(t *testing.T) *httptest.Server {
		release := make(chan struct{})
		f := newFake(t, func(w http.ResponseWriter, r *http.Request) {
			select {
			case <-r.Context().Done():
			case <-release:
			}
		})
		t.Cleanup(func() { close(release) }) // runs before the server's Close
		return f.srv
	}
	tests := []struct {
		name      string
		setup     func(t *testing.T) (Config, context.Context)
		code      string
		uncertain bool
	}{
		{
			name: "client timeout",
			setup: func(t *testing.T) (Config, context.Context) {
				cfg := testConfig(hang(t).URL)
				cfg.Client = &http.Client{Timeout: 100 * time.Millisecond}
				return cfg, context.Background()
			},
			code: "timeout", uncertain: true,
		},
		{
			name: "context deadline",
			setup: func(t *testing.T) (Config, context.Context) {
				ctx, cancel := context.WithTimeout(context.Background(), 100*time.Millisecond)
				t.Cleanup(cancel)
				return testConfig(hang(t).URL), ctx
			},
			code: "timeout", uncertain: true,
		},
		{
			name: "connection refused",
			setup: func(t *testing.T) (Config, context.Context) {
				srv := httptest.NewServer(http.NotFoundHandler())
				srv.Close()
				return testConfig(srv.URL), context.Background()
			},
			code: "network", uncertain: false,
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			cfg, ctx := tt.setup(t)
			start := time.Now()
			_, err := newClient(t, cfg).Send(ctx, smsTo("+254712000001"))
			wantError(t, err, provider.Transient, tt.code, tt.uncertain, 0)
			if d := time.Since(start); d > 5*time.Second {
				t.Errorf("Send took %v; the deadline was not honoured", d)
			}
		})
	}
}

// TestSendConcurrent lets the race detector watch one Client shared by many
// workers.
func TestSendConcurrent(t *testing.T) {
	t.Parallel()
	f := newFake(t, jsonReply(http.StatusCreated, okJSON()))
	c := newClient(t, testConfig(f.srv.URL))
	var wg sync.WaitGroup
	for i := range 16 {
		wg.Go(func() {
			if _, err := c.Send(context.Background(), smsTo(fmt.Sprintf("+2547120000%02d", i))); err != nil {
				t.Errorf("Send: %v", err)
			}
		})
	}
	wg.Wait()
	if n := len(f.requests()); n != 16 {
		t.Errorf("fake saw %d requests, want 16", n)
	}
}
