// Package errs is the service's error vocabulary: every error a client can see
// carries a Kind, which decides the HTTP status, and a Code, the stable string
// of the API contract. Features declare their domain errors with New and return
// them (or wrap them); the single HTTP error handler in httpx turns them into
// the JSON envelope.
package errs

import (
	"errors"
	"fmt"
	"strconv"
)

// Kind classifies an error for the transport layer.
type Kind int

const (
	KindInternal Kind = iota
	KindValidation
	KindInvalidJSON
	KindNotFound
	KindMethodNotAllowed
	KindConflict
	KindTooLarge
	KindUnsupportedMedia
	KindUnprocessable
	KindUnavailable
	KindUnauthenticated
	KindForbidden
	KindRateLimited
)

// Codes shared by every feature. Features add their own (CAMPAIGN_NOT_FOUND, ...).
const (
	CodeValidation       = "VALIDATION_ERROR"
	CodeInvalidJSON      = "INVALID_JSON"
	CodeNotFound         = "NOT_FOUND"
	CodeMethodNotAllowed = "METHOD_NOT_ALLOWED"
	CodeTooLarge         = "PAYLOAD_TOO_LARGE"
	CodeUnsupportedMedia = "UNSUPPORTED_MEDIA_TYPE"
	CodeUnavailable      = "UNAVAILABLE"
	CodeInternal         = "INTERNAL_ERROR"
	CodeUnauthenticated  = "UNAUTHENTICATED"
	CodeForbidden        = "FORBIDDEN"
	CodeRateLimited      = "RATE_LIMITED"
)

// Error is an error a client may see. Message is shown to clients for every
// kind except KindInternal; Err is the cause, logged but never shown.
type Error struct {
	Kind    Kind
	Code    string
	Message string
	Details map[string]any
	Err     error
}

// New returns an error of the given kind and code.
func New(kind Kind, code, message string) *Error {
	return &Error{Kind: kind, Code: code, Message: message}
}

func (e *Error) Error() string {
	if e.Err != nil {
		return fmt.Sprintf("%s: %s: %v", e.Code, e.Message, e.Err)
	}
	return e.Code + ": " + e.Message
}

func (e *Error) Unwrap() error { return e.Err }

// Is makes errors.Is match on Code, so a sentinel such as campaign.ErrNotFound
// matches every "campaign N not found" produced from it with Withf.
func (e *Error) Is(target error) bool {
	var t *Error
	if !errors.As(target, &t) {
		return false
	}
	return t.Code == e.Code
}

// Withf returns a copy of e with a formatted message.
func (e *Error) Withf(format string, args ...any) *Error {
	c := *e
	c.Message = fmt.Sprintf(format, args...)
	return &c
}

// WithDetail returns a copy of e with details[key] = value added.
func (e *Error) WithDetail(key string, value any) *Error {
	c := *e
	c.Details = make(map[string]any, len(e.Details)+1)
	for k, v := range e.Details {
		c.Details[k] = v
	}
	c.Details[key] = value
	return &c
}

// Wrap returns a copy of e that carries cause.
func (e *Error) Wrap(cause error) *Error {
	c := *e
	c.Err = cause
	return &c
}

// Validation reports a bad field; the message names it and details.field holds it.
func Validation(field, format string, args ...any) *Error {
	return &Error{
		Kind:    KindValidation,
		Code:    CodeValidation,
		Message: fmt.Sprintf(format, args...),
		Details: map[string]any{"field": field},
	}
}

// InvalidJSON reports a body that cannot be decoded into the endpoint's shape.
func InvalidJSON(format string, args ...any) *Error {
	return &Error{Kind: KindInvalidJSON, Code: CodeInvalidJSON, Message: fmt.Sprintf(format, args...)}
}

// Unavailable reports that a dependency (PostgreSQL, Redis) cannot be reached.
func Unavailable(dependency string, cause error) *Error {
	return &Error{
		Kind:    KindUnavailable,
		Code:    CodeUnavailable,
		Message: dependency + " is unavailable, retry later",
		Details: map[string]any{"dependency": dependency},
		Err:     cause,
	}
}

// MaxEcho is how many characters of a client's value a message or detail
// repeats: enough to recognise the value, never enough to turn a 2 MB request
// into a 4 MB error response (or log line).
const MaxEcho = 64

// Quote returns s as a Go-quoted string for a message, cut to MaxEcho
// characters with "…" when longer. Every message that repeats a value the
// client sent uses it (or Clip), so a response never grows with the request.
func Quote(s string) string { return strconv.Quote(Clip(s)) }

// Clip returns s cut to MaxEcho characters, with "…" when it was longer: for
// details and for messages that show a value unquoted. Invalid UTF-8 bytes
// count as one character each.
func Clip(s string) string {
	n := 0
	for i := range s {
		if n == MaxEcho {
			return s[:i] + "…"
		}
		n++
	}
	return s
}

// KindOf returns the Kind of the first *Error in err's chain, KindInternal if none.
func KindOf(err error) Kind {
	var e *Error
	if errors.As(err, &e) {
		return e.Kind
	}
	return KindInternal
}
