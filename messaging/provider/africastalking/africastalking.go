// Package africastalking is the provider adapter for Africa's Talking SMS:
// it sends one message per request to the form-encoded
// /version1/messaging endpoint, classifies every answer into the provider
// error classes the worker pool acts on, and parses the delivery-report
// and incoming-message callbacks the dashboard is set to POST to us.
//
// The shapes follow /work/shared/design/PROVIDERS.md §1–2. Africa's Talking
// takes no idempotency key, so any failure after the request may have
// reached it (a timeout, a 5xx, an unreadable 201) is reported as
// Uncertain: the pool decides whether a possible duplicate is worth it.
package africastalking

import (
	"context"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"strings"
	"time"

	"github.com/campaignd/dispatch/messaging/provider"
	"github.com/campaignd/dispatch/platform/channel"
)

// Name identifies this provider in errors, receipts and configuration.
const Name = "africastalking"

// sendPath is appended to Config.BaseURL; the live and sandbox hosts share it.
const sendPath = "/version1/messaging"

// maxBody bounds what we read of any response: a success for one recipient
// is a few hundred bytes, and a misbehaving proxy must not make a worker
// buffer megabytes.
const maxBody = 64 << 10

// Config is what the adapter needs to reach an Africa's Talking account.
type Config struct {
	// BaseURL is the API host without the endpoint path, e.g.
	// "https://api.africastalking.com" or the sandbox host; a trailing slash
	// is ignored. (AFRICASTALKING_BASE_URL)
	BaseURL string
	// Username is the app's username ("sandbox" on the sandbox).
	// (AFRICASTALKING_USERNAME)
	Username string
	// APIKey authenticates every request; it never appears in an error.
	// (AFRICASTALKING_API_KEY)
	APIKey string
	// SenderID is the registered short code or alphanumeric sender; empty
	// lets Africa's Talking use the account default.
	SenderID string
	// Client sends the requests; nil means provider.HTTPClient(100, 10s).
	Client *http.Client
}

// Client sends SMS through Africa's Talking. It is safe for concurrent use.
type Client struct {
	endpoint string
	username string
	apiKey   string
	senderID string
	http     *http.Client
}

var _ provider.Sender = (*Client)(nil)

// New checks cfg and returns a Client. The errors name the environment
// keys to fix, so a misconfigured deployment fails at start-up rather than
// on the first message.
func New(cfg Config) (*Client, error) {
	var problems []string
	base := strings.TrimRight(strings.TrimSpace(cfg.BaseURL), "/")
	if msg := checkBaseURL(base); msg != "" {
		problems = append(problems, msg)
	}
	if strings.TrimSpace(cfg.Username) == "" {
		problems = append(problems, "AFRICASTALKING_USERNAME is required")
	}
	if strings.TrimSpace(cfg.APIKey) == "" {
		problems = append(problems, "AFRICASTALKING_API_KEY is required")
	}
	if len(problems) > 0 {
		return nil, fmt.Errorf("%s config: %s", Name, strings.Join(problems, "; "))
	}
	hc := cfg.Client
	if hc == nil {
		hc = provider.HTTPClient(100, 10*time.Second)
	}
	return &Client{
		endpoint: base + sendPath,
		username: cfg.Username,
		apiKey:   cfg.APIKey,
		senderID: cfg.SenderID,
		http:     hc,
	}, nil
}

// checkBaseURL returns what is wrong with base, or "". It never echoes
// user info, which would be a credential in the wrong place.
func checkBaseURL(base string) string {
	if base == "" {
		return "AFRICASTALKING_BASE_URL is required"
	}
	u, err := url.Parse(base)
	if err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
		return "AFRICASTALKING_BASE_URL must be an absolute http(s) URL such as https://api.africastalking.com"
	}
	if u.User != nil {
		return "AFRICASTALKING_BASE_URL must not carry credentials; set AFRICASTALKING_USERNAME and AFRICASTALKING_API_KEY"
	}
	if u.RawQuery != "" || u.Fragment != "" {
		return fmt.Sprintf("AFRICASTALKING_BASE_URL %q must not have a query or fragment", u.Redacted())
	}
	return ""
}

// Name returns Name.
func (c *Client) Name() string { return Name }

// Send posts m to Africa's Talking and returns its acceptance, or a
// *provider.Error classified as documented in PROVIDERS.md §1 (with the
// product's overrides; see classify). It sends to exactly one number:
// m.To must be a single E.164 number, because the API would read a
// comma-separated list as several recipients.
func (c *Client) Send(ctx context.Context, m provider.Message) (provider.Accepted, error) {
	if m.Channel != channel.SMS {
		return provider.Accepted{}, &provider.Error{
			Provider: Name, Class: provider.Permanent, Code: "unsupported_channel",
			Message: fmt.Sprintf("Africa's Talking carries SMS only, not %q", clip(string(m.Channel))),
		}
	}
	if !isE164(m.To) {
		return provider.Accepted{}, &provider.Error{
			Provider: Name, Class: provider.Permanent, Code: "invalid_number",
			Message: fmt.Sprintf("recipient %q is not one E.164 number", clip(m.To)),
		}
	}
	form := url.Values{"username": {c.username}, "to": {m.To}, "message": {m.Body}}
	if c.senderID != "" {
		form.Set("from", c.senderID)
	}
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, c.endpoint, strings.NewReader(form.Encode()))
	if err != nil {
		// Only a malformed endpoint gets here, and New rejected those.
		return provider.Accepted{}, &provider.Error{Provider: Name, Class: provider.Permanent, Code: "bad_request", Message: clip(c.redact(err.Error()))}
	}
	req.Header.Set("Content-Type", "application/x-www-form-urlencoded")
	req.Header.Set("Accept", "application/json") // the default answer is XML
	req.Header.Set("apiKey", c.apiKey)

	resp, err := c.http.Do(req)
	if err != nil {
		e := provider.TransportError(Name, err)
		e.Message = clip(c.redact(e.Message))
		return provider.Accepted{}, e
	}
	body, readErr := readBody(resp.Body)
	if readErr != nil && resp.StatusCode/100 == 2 {
		// The provider answered success but we lost the details: it has
		// the message, we do not know its id.
		e := provider.TransportError(Name, readErr)
		e.Uncertain = true
		e.Message = clip(c.redact(e.Message))
		return provider.Accepted{}, e
	}
	acc, perr := classify(resp.StatusCode, resp.Header, body, time.Now())
	if perr != nil {
		perr.Message = clip(c.redact(perr.Message))
		return provider.Accepted{}, perr
	}
	return acc, nil
}

// readBody reads at most maxBody bytes, then drains a bounded remainder
// and closes, so the connection goes back to the pool when it can; a
// body larger still is abandoned and its connection closed.
func readBody(rc io.ReadCloser) ([]byte, error) {
	defer rc.Close()
	b, err := io.ReadAll(io.LimitReader(rc, maxBody))
	if err != nil {
		return b, err
	}
	_, _ = io.Copy(io.Discard, io.LimitReader(rc, maxBody))
	return b, nil
}

// redact removes the credentials from text that came from elsewhere (a
// provider body, a transport error), in case either was echoed back.
func (c *Client) redact(s string) string {
	for _, secret := range []string{c.apiKey, c.username, url.QueryEscape(c.apiKey), url.QueryEscape(c.username)} {
		if secret != "" {
			s = strings.ReplaceAll(s, secret, "[redacted]")
		}
	}
	return s
}

// isE164 reports whether s is "+" and 7 to 15 digits, the first not 0.
func isE164(s string) bool {
	if len(s) < 8 || len(s) > 16 || s[0] != '+' || s[1] == '0' {
		return false
	}
	return isDigits(s[1:])
}

func isDigits(s string) bool {
	if s == "" {
		return false
	}
	for i := 0; i < len(s); i++ {
		if s[i] < '0' || s[i] > '9' {
			return false
		}
	}
	return true
}

// maxText is how much provider-supplied text an error carries: enough to
// diagnose, not enough to flood logs or the message row.
const maxText = 200

// clip shortens s to maxText runes, marking the cut.
func clip(s string) string {
	s = strings.TrimSpace(s)
	n := 0
	for i := range s {
		if n == maxText {
			return s[:i] + "…"
		}
		n++
	}
	return s
}
