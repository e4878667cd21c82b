package africastalking

import (
	"encoding/json"
	"fmt"
	"net/http"
	"strconv"
	"strings"
	"time"

	"github.com/campaignd/dispatch/messaging/provider"
)

// reply is the JSON answer to a send (PROVIDERS.md §1).
type reply struct {
	SMSMessageData *struct {
		Message    string      `json:"Message"`
		Recipients []recipient `json:"Recipients"`
	} `json:"SMSMessageData"`
}

type recipient struct {
	StatusCode   flexInt `json:"statusCode"`
	Number       string  `json:"number"`
	Status       string  `json:"status"`
	Cost         string  `json:"cost"`
	MessageID    string  `json:"messageId"`
	MessageParts flexInt `json:"messageParts"` // undocumented; optional
}

// flexInt takes a JSON number or a numeric string: the SDKs have seen both
// for these undocumented-in-detail fields, and a quoted number must not
// turn an accepted message into a malformed reply.
type flexInt int

func (f *flexInt) UnmarshalJSON(b []byte) error {
	s := strings.Trim(string(b), `"`)
	if s == "" || s == "null" {
		*f = 0
		return nil
	}
	n, err := strconv.Atoi(s)
	if err != nil {
		return fmt.Errorf("not an integer: %s", b)
	}
	*f = flexInt(n)
	return nil
}

// statusClass is the class of each per-recipient statusCode that is not an
// acceptance. Where it differs from PROVIDERS.md (407, 502) the product's
// decision wins: a route or gateway refusal is worth the pool's bounded
// retries, which end in a permanent failure anyway.
var statusClass = map[int]provider.Class{
	401: provider.Account,   // RiskHold
	402: provider.Account,   // InvalidSenderId
	403: provider.Permanent, // InvalidPhoneNumber
	404: provider.Permanent, // UnsupportedNumberType
	405: provider.Account,   // InsufficientBalance
	406: provider.OptedOut,  // UserInBlacklist
	407: provider.Transient, // CouldNotRoute
	409: provider.OptedOut,  // DoNotDisturbRejection
	500: provider.Transient, // InternalServerError
	501: provider.Transient, // GatewayError
	502: provider.Transient, // RejectedByGateway
}

// statusNames maps the status words to their codes, for answers that carry
// only a word (an empty Recipients list with SMSMessageData.Message
// "InvalidSenderId").
var statusNames = map[string]int{
	"riskhold": 401, "invalidsenderid": 402, "invalidphonenumber": 403,
	"unsupportednumbertype": 404, "insufficientbalance": 405, "userinblacklist": 406,
	"couldnotroute": 407, "donotdisturbrejection": 409, "internalservererror": 500,
	"gatewayerror": 501, "rejectedbygateway": 502,
}

// accepted reports whether a per-recipient statusCode means Africa's
// Talking took the message (Processed, Sent, Queued).
func accepted(code int) bool { return code >= 100 && code <= 102 }

// defaultRetryAfter is the wait for a 429 that does not say how long.
const defaultRetryAfter = time.Second

// classify turns an HTTP answer into an acceptance or a classified error.
// now dates a Retry-After given as an HTTP date. Messages are left whole:
// Send redacts credentials and only then clips, so a clip cannot leave
// half a secret behind.
func classify(status int, h http.Header, body []byte, now time.Time) (provider.Accepted, *provider.Error) {
	fail := func(class provider.Class, code, msg string) *provider.Error {
		return &provider.Error{Provider: Name, Class: class, Code: code, Message: msg}
	}
	httpCode := "http_" + strconv.Itoa(status)
	switch {
	case status == http.StatusUnauthorized:
		// Bad username or key, and also seen for an unregistered sender:
		// nothing from this account will go until a human fixes it.
		return provider.Accepted{}, fail(provider.Account, httpCode, string(body))
	case status == http.StatusTooManyRequests:
		e := fail(provider.Throttled, httpCode, string(body))
		e.RetryAfter = retryAfter(h.Get("Retry-After"), now)
		if e.RetryAfter <= 0 {
			e.RetryAfter = defaultRetryAfter
		}
		return provider.Accepted{}, e
	case status >= 500:
		// No idempotency key: the provider may have sent it before failing.
		e := fail(provider.Transient, httpCode, string(body))
		e.Uncertain = true
		e.RetryAfter = retryAfter(h.Get("Retry-After"), now)
		return provider.Accepted{}, e
	}

	var r reply
	parsed := json.Unmarshal(body, &r) == nil && r.SMSMessageData != nil
	if status/100 == 2 {
		if !parsed {
			e := fail(provider.Transient, "malformed_response", fmt.Sprintf("HTTP %d with an unreadable body: %s", status, body))
			e.Uncertain = true
			return provider.Accepted{}, e
		}
		return fromData(r)
	}
	if parsed && (len(r.SMSMessageData.Recipients) > 0 || r.SMSMessageData.Message != "") {
		// A 4xx that still speaks SMSMessageData says more than its status.
		return fromData(r)
	}
	return provider.Accepted{}, fail(provider.Permanent, httpCode, string(body))
}

// fromData reads the one recipient we sent to, or the request-level word
// when Africa's Talking refused the request as a whole.
func fromData(r reply) (provider.Accepted, *provider.Error) {
	d := r.SMSMessageData
	if len(d.Recipients) == 0 {
		// Nothing was sent to anyone, so the refusal is about the request
		// or the account (InvalidSenderId is the one observed): brake the
		// provider unless the word names a narrower class.
		word := strings.TrimSpace(d.Message)
		class, code := provider.Account, "no_recipients"
		if n, ok := statusNames[strings.ToLower(word)]; ok {
			class, code = statusClass[n], word
		}
		return provider.Accepted{}, &provider.Error{Provider: Name, Class: class, Code: code, Message: word}
	}
	rc := d.Recipients[0]
	code := int(rc.StatusCode)
	switch {
	case accepted(code):
		cost, currency := parseCost(rc.Cost)
		return provider.Accepted{
			MessageID: rc.MessageID,
			Status:    rc.Status,
			Segments:  int(rc.MessageParts),
			Cost:      cost,
			Currency:  currency,
		}, nil
	case code == 0:
		// A recipient without a code tells us neither way; it may be sent.
		return provider.Accepted{}, &provider.Error{
			Provider: Name, Class: provider.Transient, Code: "malformed_response", Uncertain: true,
			Message: "recipient without statusCode: " + rc.Status,
		}
	}
	class, ok := statusClass[code]
	if !ok {
		class = provider.Permanent
	}
	return provider.Accepted{}, &provider.Error{Provider: Name, Class: class, Code: strconv.Itoa(code), Message: rc.Status}
}

// parseCost splits "KES 0.8000" into ("0.8000", "KES"). A bare decimal
// ("0") has no currency; anything else is treated as not quoted, since a
// price we cannot read must not fail a message that was accepted.
func parseCost(s string) (cost, currency string) {
	f := strings.Fields(s)
	switch {
	case len(f) == 1 && isDecimal(f[0]):
		return f[0], ""
	case len(f) == 2 && isCurrency(f[0]) && isDecimal(f[1]):
		return f[1], f[0]
	}
	return "", ""
}

func isDecimal(s string) bool {
	whole, frac, hasDot := strings.Cut(s, ".")
	if !isDigits(whole) {
		return false
	}
	return !hasDot || isDigits(frac)
}

func isCurrency(s string) bool {
	if len(s) != 3 {
		return false
	}
	for i := 0; i < 3; i++ {
		if s[i] < 'A' || s[i] > 'Z' {
			return false
		}
	}
	return true
}

// maxRetryAfterSeconds bounds a Retry-After (a day): larger values are a
// broken header, and the pool asks again after the wait anyway.
const maxRetryAfterSeconds = 24 * 60 * 60

// retryAfter reads a Retry-After header, delay-seconds or HTTP-date; 0 when
// absent, unreadable or already past.
func retryAfter(v string, now time.Time) time.Duration {
	v = strings.TrimSpace(v)
	if v == "" {
		return 0
	}
	if n, err := strconv.Atoi(v); err == nil {
		if n <= 0 {
			return 0
		}
		// Bound it so an absurd value cannot overflow into a negative wait.
		return time.Duration(min(n, maxRetryAfterSeconds)) * time.Second
	}
	if t, err := http.ParseTime(v); err == nil {
		if d := t.Sub(now); d > 0 {
			return d
		}
	}
	return 0
}
