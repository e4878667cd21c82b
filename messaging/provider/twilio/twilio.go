// Package twilio sends SMS and WhatsApp messages through Twilio's Messages
// API and reads what Twilio posts back: delivery status callbacks, inbound
// messages, and the X-Twilio-Signature that authenticates both. It speaks
// the shapes in PROVIDERS.md §3–4 and turns every failure into a classified
// *provider.Error, because the worker pool decides between retrying,
// failing, opting out, waiting and braking the account from the class alone.
package twilio

import (
	"context"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"time"

	"github.com/campaignd/dispatch/messaging/provider"
	"github.com/campaignd/dispatch/platform/channel"
)

// Name is the provider's name in errors, receipts, configuration and
// metrics.
const Name = "twilio"

const (
	// maxBody bounds how much of a reply is read (and then drained), so a
	// misbehaving endpoint cannot make a worker buffer without limit. A real
	// Message resource or error is a few hundred bytes.
	maxBody = 64 << 10
	// maxText bounds provider text carried in errors, which end up in logs,
	// the database and API responses.
	maxText = 200
	// whatsappPrefix marks a WhatsApp address in Twilio's To and From.
	whatsappPrefix = "whatsapp:"
)

// Config is what the adapter needs to reach one Twilio account.
type Config struct {
	// BaseURL is the API root, "https://api.twilio.com"; configurable so
	// tests and local runs can point it at the simulator. A trailing slash
	// is ignored.
	BaseURL    string
	AccountSID string // "AC…"; goes in the path and is the Basic auth user
	AuthToken  string // the Basic auth password; never appears in an error
	// From is the SMS sender. MessagingServiceSID ("MG…"), when set, is sent
	// instead, so Twilio picks the sender from the service's pool.
	From                string
	MessagingServiceSID string
	// WhatsAppFrom is the WhatsApp sender's number, with or without the
	// "whatsapp:" prefix; empty means WhatsApp sends fail as Permanent.
	WhatsAppFrom string
	// StatusCallback is the full public URL of our /webhooks/twilio/status,
	// sent with every message; empty sends none (no delivery receipts).
	StatusCallback string
	// Client sends the requests; nil means provider.HTTPClient(100, 10s).
	Client *http.Client
}

// Client sends messages through one Twilio account. It holds no mutable
// state, so one Client serves every worker concurrently.
type Client struct {
	cfg      Config
	endpoint string
	http     *http.Client
	// basic is the encoded Authorization credential, kept so it can be
	// scrubbed from provider text as well as the raw token.
	basic string
}

// New checks cfg and returns a Client. The error lists every problem,
// naming the environment keys an operator has to set.
func New(cfg Config) (*Client, error) {
	cfg.BaseURL = strings.TrimRight(cfg.BaseURL, "/")
	var problems []string
	if u, err := url.Parse(cfg.BaseURL); err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
		problems = append(problems, "TWILIO_BASE_URL must be an absolute http(s) URL such as https://api.twilio.com")
	}
	if cfg.AccountSID == "" {
		problems = append(problems, "TWILIO_ACCOUNT_SID is required")
	}
	if cfg.AuthToken == "" {
		problems = append(problems, "TWILIO_AUTH_TOKEN is required")
	}
	if cfg.From == "" && cfg.MessagingServiceSID == "" {
		problems = append(problems, "TWILIO_FROM or TWILIO_MESSAGING_SERVICE_SID is required to send SMS")
	}
	if len(problems) > 0 {
		return nil, fmt.Errorf("twilio config: %s", strings.Join(problems, "; "))
	}
	hc := cfg.Client
	if hc == nil {
		hc = provider.HTTPClient(100, 10*time.Second)
	}
	// A copy, so redirects can be refused without changing the caller's
	// client: Go replays a redirected POST as a GET without the form, which
	// would at best list messages and at worst be taken for a reply to ours.
	c := *hc
	c.CheckRedirect = func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }
	return &Client{
		cfg:      cfg,
		endpoint: cfg.BaseURL + "/2010-04-01/Accounts/" + url.PathEscape(cfg.AccountSID) + "/Messages.json",
		http:     &c,
		basic:    base64.StdEncoding.EncodeToString([]byte(cfg.AccountSID + ":" + cfg.AuthToken)),
	}, nil
}

// Name returns Name.
func (c *Client) Name() string { return Name }

// Send creates one Message resource. Twilio takes no idempotency key, so a
// failure that may have been processed (a timeout after the request went
// out, a 5xx, an unreadable 201) is marked Uncertain; a 201 that already
// reports the message failed is classified by its error_code like a
// rejected request. The errors are *provider.Error; see classify for the
// code table.
func (c *Client) Send(ctx context.Context, m provider.Message) (provider.Accepted, error) {
	form, perr := c.form(m)
	if perr != nil {
		return provider.Accepted{}, perr
	}
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, c.endpoint, strings.NewReader(form.Encode()))
	if err != nil {
		return provider.Accepted{}, &provider.Error{Provider: Name, Class: provider.Transient, Code: "request", Message: c.clean(err.Error()), Err: err}
	}
	req.SetBasicAuth(c.cfg.AccountSID, c.cfg.AuthToken)
	req.Header.Set("Content-Type", "application/x-www-form-urlencoded")
	req.Header.Set("Accept", "application/json")

	resp, err := c.http.Do(req)
	if err != nil {
		return provider.Accepted{}, c.transportError(err)
	}
	body, err := readBody(resp)
	switch resp.StatusCode {
	case http.StatusCreated, http.StatusOK:
		if err != nil {
			// The reply was cut off: Twilio has most likely created the
			// message, but we cannot tell which one.
			return provider.Accepted{}, c.transportError(err)
		}
		return c.accepted(body)
	}
	// A failure reply cut short is still a failure; classify what arrived.
	return provider.Accepted{}, c.rejected(resp, body)
}

// form builds the request body: exactly the fields Twilio needs and no
// others, so nothing Twilio would bill or schedule differently slips in.
func (c *Client) form(m provider.Message) (url.Values, *provider.Error) {
	f := url.Values{}
	switch m.Channel {
	case channel.SMS, "":
		f.Set("To", m.To)
		if c.cfg.MessagingServiceSID != "" {
			f.Set("MessagingServiceSid", c.cfg.MessagingServiceSID)
		} else {
			f.Set("From", c.cfg.From)
		}
	case channel.WhatsApp:
		if c.cfg.WhatsAppFrom == "" {
			return nil, &provider.Error{Provider: Name, Class: provider.Permanent, Code: "not_configured", Message: "TWILIO_WHATSAPP_FROM not configured"}
		}
		f.Set("To", whatsapp(m.To))
		f.Set("From", whatsapp(c.cfg.WhatsAppFrom))
	default:
		return nil, &provider.Error{Provider: Name, Class: provider.Permanent, Code: "unsupported_channel", Message: fmt.Sprintf("channel %q is not sent through twilio", m.Channel)}
	}
	f.Set("Body", m.Body)
	if c.cfg.StatusCallback != "" {
		f.Set("StatusCallback", c.cfg.StatusCallback)
	}
	return f, nil
}

func whatsapp(addr string) string {
	if strings.HasPrefix(addr, whatsappPrefix) {
		return addr
	}
	return whatsappPrefix + addr
}

// readBody reads at most maxBody of the reply, then drains a bounded amount
// more and closes it, so the connection can go back to the pool.
func readBody(resp *http.Response) ([]byte, error) {
	defer resp.Body.Close()
	b, err := io.ReadAll(io.LimitReader(resp.Body, maxBody))
	_, _ = io.CopyN(io.Discard, resp.Body, maxBody)
	return b, err
}

// message is the part of Twilio's Message resource we keep.
type message struct {
	SID          string `json:"sid"`
	Status       string `json:"status"`
	NumSegments  text   `json:"num_segments"`
	Price        text   `json:"price"`
	PriceUnit    string `json:"price_unit"`
	ErrorCode    text   `json:"error_code"`
	ErrorMessage string `json:"error_message"`
}

// text is a JSON scalar kept as its text. Twilio quotes some numbers
// (num_segments, price) and not others (error_code), and fakes differ, so a
// string, a number and null (as "") are all accepted.
type text string

func (t *text) UnmarshalJSON(b []byte) error {
	if string(b) == "null" {
		*t = ""
		return nil
	}
	if len(b) > 0 && b[0] == '"' {
		var s string
		if err := json.Unmarshal(b, &s); err != nil {
			return err
		}
		*t = text(s)
		return nil
	}
	var n json.Number
	if err := json.Unmarshal(b, &n); err != nil {
		return err
	}
	*t = text(n)
	return nil
}

func (c *Client) accepted(body []byte) (provider.Accepted, error) {
	var msg message
	if err := json.Unmarshal(body, &msg); err != nil || msg.SID == "" {
		// Twilio answered success, so the message probably exists, but
		// without its sid no receipt can ever be matched to it.
		return provider.Accepted{}, &provider.Error{
			Provider: Name, Class: provider.Transient, Code: "malformed_response", Uncertain: true,
			Message: c.clean("success reply without a message sid: " + string(body)),
		}
	}
	switch strings.ToLower(msg.Status) {
	case "failed", "undelivered":
		// Created and already dead (Twilio reports some 3xxxx and 63016
		// failures this way): the message will not be delivered, so it is
		// a failed send, not an acceptance.
		e := &provider.Error{Provider: Name, Class: provider.Permanent, Code: msg.Status, Message: c.clean(msg.ErrorMessage)}
		if msg.ErrorCode != "" {
			e.Code = string(msg.ErrorCode)
			if class, ok := codeClass[e.Code]; ok {
				e.Class = class
			}
		}
		if e.Message == "" {
			e.Message = "message " + msg.Status
		}
		if e.Class == provider.Throttled {
			e.RetryAfter = time.Second
		}
		return provider.Accepted{}, e
	}
	segments, err := strconv.Atoi(strings.TrimSpace(string(msg.NumSegments)))
	if err != nil || segments < 0 {
		segments = 0 // cosmetic: never fail a send Twilio took over it
	}
	return provider.Accepted{
		MessageID: msg.SID,
		Status:    msg.Status,
		Segments:  segments,
		// Twilio quotes what it charges as a negative amount; we record
		// cost as what we pay.
		Cost:     strings.TrimPrefix(strings.TrimSpace(string(msg.Price)), "-"),
		Currency: msg.PriceUnit,
	}, nil
}

// apiError is Twilio's error body.
type apiError struct {
	Code    text   `json:"code"`
	Message string `json:"message"`
}

// codeClass is our policy for Twilio's error codes (PROVIDERS.md §3). The
// 2xxxx codes come back synchronously with an HTTP error; the 3xxxx codes
// and 63016 normally come later, in a status callback, but are classified
// the same wherever they appear.
var codeClass = map[string]provider.Class{
	"20003": provider.Account,   // authentication failed
	"20429": provider.Throttled, // too many concurrent requests; unprocessed
	"21211": provider.Permanent, // invalid To
	"21408": provider.Account,   // destination disabled in Geo Permissions
	"21610": provider.OptedOut,  // recipient sent STOP to this sender
	"21612": provider.Permanent, // To not reachable from this From
	"21614": provider.Permanent, // To not a mobile number
	"30001": provider.Transient, // queue overflow
	"30003": provider.Transient, // unreachable handset
	"30004": provider.Permanent, // message blocked
	"30005": provider.Permanent, // unknown destination handset
	"30006": provider.Permanent, // landline or unreachable carrier
	"30007": provider.Account,   // filtered as spam: the content or sender, not this recipient
	"30008": provider.Transient, // unknown error
	"63016": provider.Permanent, // WhatsApp free-form outside the 24 h window
}

// optOutCode is the error that means the recipient blocked our sender.
const optOutCode = "21610"

// rejected classifies a non-success reply: HTTP 429 is always Throttled, a
// known Twilio code decides next, then the HTTP status (401 Account, 5xx
// Transient, other 4xx Permanent). A 5xx, or a status Twilio never sends
// here, may have created the message, so it is Uncertain.
func (c *Client) rejected(resp *http.Response, body []byte) *provider.Error {
	status := resp.StatusCode
	e := &provider.Error{Provider: Name, Code: "http_" + strconv.Itoa(status), Uncertain: status >= 500}
	var ae apiError
	if json.Unmarshal(body, &ae) == nil && (ae.Code != "" || ae.Message != "") {
		if ae.Code != "" {
			e.Code = string(ae.Code)
		}
		e.Message = c.clean(ae.Message)
	} else {
		e.Message = c.clean(string(body))
	}
	if e.Message == "" {
		e.Message = c.clean(http.StatusText(status))
	}
	class, known := codeClass[string(ae.Code)]
	switch {
	case status == http.StatusTooManyRequests:
		e.Class = provider.Throttled
	case known:
		e.Class = class
	case status == http.StatusUnauthorized:
		e.Class = provider.Account
	case status >= 500:
		e.Class = provider.Transient
	case status >= 400:
		e.Class = provider.Permanent
	default:
		// 1xx, 3xx (redirects are not followed), an unexpected 2xx: we
		// cannot tell whether Twilio took the message.
		e.Class = provider.Transient
		e.Uncertain = true
	}
	e.RetryAfter = retryAfter(resp.Header.Get("Retry-After"), time.Now())
	if e.Class == provider.Throttled && e.RetryAfter == 0 {
		e.RetryAfter = time.Second
	}
	return e
}

// maxRetryAfter caps what a Retry-After can ask for, so a bad header cannot
// park a message indefinitely (or overflow a Duration).
const maxRetryAfter = time.Hour

// retryAfter reads a Retry-After header, delay-seconds or an HTTP date,
// relative to now; 0 when absent, unreadable or already past.
func retryAfter(v string, now time.Time) time.Duration {
	v = strings.TrimSpace(v)
	if v == "" {
		return 0
	}
	var d time.Duration
	if n, err := strconv.ParseInt(v, 10, 64); err == nil || errors.Is(err, strconv.ErrRange) {
		// Out of range means more digits than an int64 holds: the cap.
		if n <= 0 && err == nil {
			return 0
		}
		if err != nil || n >= int64(maxRetryAfter/time.Second) {
			return maxRetryAfter
		}
		d = time.Duration(n) * time.Second
	} else if t, err := http.ParseTime(v); err == nil {
		d = t.Sub(now)
	}
	return min(max(d, 0), maxRetryAfter)
}

// transportError classifies a failed round trip, scrubbing the message.
func (c *Client) transportError(err error) *provider.Error {
	e := provider.TransportError(Name, err)
	e.Message = c.redact(e.Message)
	return e
}

// clean makes provider text safe to carry: credentials removed, whitespace
// (HTML, JSON indentation) collapsed, clipped to maxText runes.
func (c *Client) clean(s string) string {
	s = strings.Join(strings.Fields(c.redact(s)), " ")
	if r := []rune(s); len(r) > maxText {
		s = string(r[:maxText]) + "…"
	}
	return s
}

// redact removes the auth token and the Basic credential built from it, in
// case a provider, proxy or fake echoes the request back.
func (c *Client) redact(s string) string {
	if c.cfg.AuthToken != "" {
		s = strings.ReplaceAll(s, c.basic, "[redacted]")
		s = strings.ReplaceAll(s, c.cfg.AuthToken, "[redacted]")
	}
	return s
}
