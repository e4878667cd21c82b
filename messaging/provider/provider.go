// Package provider is the boundary between the worker pool and the networks
// that carry messages: the Sender interface each adapter implements, the
// error classes that decide what the pool does with a failure, and the
// normalised delivery receipts and inbound messages that adapters parse from
// their providers' webhooks. The adapters live in sub-packages (mock,
// africastalking, twilio), with a simulator (sim) that speaks both real
// providers' protocols on loopback.
package provider

import (
	"context"
	"errors"
	"fmt"
	"net"
	"time"

	"github.com/campaignd/dispatch/platform/channel"
)

// Message is one message handed to a provider.
type Message struct {
	// ID is our message id. Real providers take no idempotency key; the mock
	// uses it as one.
	ID      int64
	Channel channel.Channel
	To      string // E.164, "+254712000001"; adapters add any channel prefix ("whatsapp:")
	Body    string
}

// Accepted is what a provider said when it took a message.
type Accepted struct {
	MessageID string // the provider's id (Twilio's sid, Africa's Talking's messageId)
	Status    string // the provider's own word for the state, e.g. "queued", "Success"
	Segments  int    // parts billed; 0 when the provider did not say
	Cost      string // decimal as quoted, e.g. "0.8000"; "" when not quoted
	Currency  string // ISO 4217, e.g. "KES"; "" when not quoted
}

// Sender delivers one message. Send returns the provider's acceptance, or an
// error: a *Error when the provider answered with a failure or could not be
// reached, classified so the pool knows what to do; an error for which
// IsInfrastructure holds when this service's own PostgreSQL or Redis failed
// (the mock's ledger); anything else is treated as transient. Send honours
// ctx's deadline and is safe for concurrent use.
type Sender interface {
	Send(ctx context.Context, m Message) (Accepted, error)
}

// Class says what a failed send means for the message and the provider.
type Class int

const (
	// Transient: worth retrying with backoff (timeouts, 5xx, queue overflow).
	Transient Class = iota + 1
	// Permanent: the message cannot be delivered (invalid or unsupported
	// number); it fails at once.
	Permanent
	// OptedOut: the recipient unsubscribed or blocked the sender; the message
	// fails and the customer is opted out of the channel.
	OptedOut
	// Throttled: the provider asked us to slow down; the message waits
	// RetryAfter without using an attempt.
	Throttled
	// Account: the provider refuses every message from this account
	// (insufficient balance, bad credentials, sender id not allowed); the
	// provider is braked for all replicas and no attempt is used.
	Account
)

func (c Class) String() string {
	switch c {
	case Transient:
		return "transient"
	case Permanent:
		return "permanent"
	case OptedOut:
		return "opted_out"
	case Throttled:
		return "throttled"
	case Account:
		return "account"
	}
	return fmt.Sprintf("class(%d)", int(c))
}

// Error is a failed send, classified.
type Error struct {
	Provider string // "twilio", "africastalking", "mock"
	Class    Class
	// Code is the provider's own code for the failure ("21211", "403"), or
	// "http_503", "timeout", "network" when the provider gave none.
	Code    string
	Message string // the provider's explanation, clipped; never credentials
	// RetryAfter is how long a Throttled (or Transient) failure asks us to
	// wait; 0 when the provider did not say.
	RetryAfter time.Duration
	// Uncertain: the provider may have accepted the message although we saw
	// a failure (a timeout after the request was sent, a 5xx). Neither real
	// provider takes an idempotency key, so retrying may repeat it.
	Uncertain bool
	// Err is the underlying transport error, if any.
	Err error
}

func (e *Error) Error() string {
	s := e.Provider + ": " + e.Class.String()
	if e.Code != "" {
		s += " " + e.Code
	}
	if e.Message != "" {
		s += ": " + e.Message
	}
	return s
}

func (e *Error) Unwrap() error { return e.Err }

// ClassOf returns err's class: its *Error's class, or Transient for any
// other non-nil error; 0 for nil.
func ClassOf(err error) Class {
	if err == nil {
		return 0
	}
	var pe *Error
	if errors.As(err, &pe) {
		return pe.Class
	}
	return Transient
}

// IsUncertain reports whether err leaves open that the provider accepted
// the message.
func IsUncertain(err error) bool {
	var pe *Error
	return errors.As(err, &pe) && pe.Uncertain
}

// TransportError classifies a failed HTTP round trip to provider: a refused
// or unresolvable connection never reached it (certain, transient); a
// timeout or a connection lost mid-request may have been processed
// (uncertain, transient). ctxErr is the send context's error, if any.
func TransportError(provider string, err error) *Error {
	e := &Error{Provider: provider, Class: Transient, Code: "network", Message: err.Error(), Err: err}
	var op *net.OpError
	if errors.As(err, &op) && op.Op == "dial" {
		return e
	}
	var dns *net.DNSError
	if errors.As(err, &dns) {
		return e
	}
	e.Uncertain = true
	var ne net.Error
	if errors.Is(err, context.DeadlineExceeded) || (errors.As(err, &ne) && ne.Timeout()) {
		e.Code = "timeout"
	}
	return e
}

// ReceiptStatus is the final state a delivery receipt reports.
type ReceiptStatus string

const (
	Delivered   ReceiptStatus = "delivered"
	Undelivered ReceiptStatus = "undelivered"
)

// Receipt is a provider's delivery report, normalised.
type Receipt struct {
	Provider  string
	MessageID string // the provider's id, as returned in Accepted
	// Status is Delivered or Undelivered for a final report; "" for an
	// intermediate one (queued, sent, buffered), which changes nothing.
	Status         ReceiptStatus
	ProviderStatus string // the provider's own word ("delivered", "Rejected")
	Error          string // the provider's failure code or reason, if any
	// OptOut: the failure says the recipient blocked this sender
	// (UserInBlackList), so the phone is opted out of the channel.
	OptOut bool
}

// Inbound is a message a recipient sent us.
type Inbound struct {
	Provider string
	Channel  channel.Channel
	From     string // E.164, any "whatsapp:" prefix removed
	Body     string
}
