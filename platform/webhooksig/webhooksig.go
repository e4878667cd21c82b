// Package webhooksig signs and verifies webhooks the Standard Webhooks way
// (github.com/standard-webhooks/standard-webhooks, PROVIDERS.md §5), which
// is how the service signs the events it posts to customers' endpoints:
// three headers, webhook-id, webhook-timestamp and webhook-signature, the
// last a space-separated list of "v1,<base64 HMAC-SHA256>" entries over
// "<id>.<timestamp>.<body>", keyed with the bytes of a "whsec_" secret.
// Verify is the receiving side, for tests and for customers' reference.
package webhooksig

import (
	"crypto/hmac"
	"crypto/rand"
	"crypto/sha256"
	"encoding/base64"
	"errors"
	"fmt"
	"net/http"
	"strconv"
	"strings"
	"time"
)

// Header names. http.Header canonicalises them ("Webhook-Id"); HTTP header
// names are case-insensitive, so receivers see the same header.
const (
	HeaderID        = "webhook-id"
	HeaderTimestamp = "webhook-timestamp"
	HeaderSignature = "webhook-signature"
)

// SecretPrefix starts every secret NewSecret makes. Sign and Verify accept a
// secret with or without it.
const SecretPrefix = "whsec_"

// secretBytes is the size of the key NewSecret makes; the spec allows 24 to
// 64 bytes.
const secretBytes = 32

var (
	// ErrInvalidSecret: the secret is not base64 (after any "whsec_"
	// prefix) or is empty.
	ErrInvalidSecret = errors.New("webhooksig: invalid secret")
	// ErrMissingHeaders: webhook-id, webhook-timestamp or
	// webhook-signature is absent or empty.
	ErrMissingHeaders = errors.New("webhooksig: missing webhook-id, webhook-timestamp or webhook-signature header")
	// ErrInvalidTimestamp: webhook-timestamp is not an integer number of
	// Unix seconds.
	ErrInvalidTimestamp = errors.New("webhooksig: invalid webhook-timestamp")
	// ErrTimestampTooOld: webhook-timestamp is more than the tolerance
	// before now; the message may be a replay.
	ErrTimestampTooOld = errors.New("webhooksig: webhook-timestamp too old")
	// ErrTimestampTooNew: webhook-timestamp is more than the tolerance after
	// now.
	ErrTimestampTooNew = errors.New("webhooksig: webhook-timestamp too new")
	// ErrNoMatchingSignature: no v1 entry of webhook-signature matches.
	ErrNoMatchingSignature = errors.New("webhooksig: no matching signature")
)

// NewSecret returns a new random secret, "whsec_" and the standard base64
// of 32 random bytes. It is shown to the endpoint's owner once and stored
// to sign with.
func NewSecret() (string, error) {
	key := make([]byte, secretBytes)
	if _, err := rand.Read(key); err != nil {
		return "", fmt.Errorf("webhooksig: new secret: %w", err)
	}
	return SecretPrefix + base64.StdEncoding.EncodeToString(key), nil
}

// Sign returns the webhook-signature header value for a message with this
// id, sent at ts (whole Unix seconds, as in webhook-timestamp) with exactly
// these body bytes: "v1," and the base64 HMAC-SHA256 of
// "<id>.<unix seconds>.<body>". Each delivery attempt has its own ts, so it
// is signed again. The error is ErrInvalidSecret.
func Sign(secret, id string, ts time.Time, body []byte) (string, error) {
	key, err := decodeSecret(secret)
	if err != nil {
		return "", err
	}
	mac := sum(key, id, strconv.FormatInt(ts.Unix(), 10), body)
	return "v1," + base64.StdEncoding.EncodeToString(mac), nil
}

// Verify checks a received webhook: the three headers are present, the
// timestamp is within tolerance of now either way (tolerance 0 skips the
// check; the reference libraries use 5 minutes), and one v1 entry of
// webhook-signature is the signature of the id, the timestamp as sent and
// body. Entries of other versions (v1a, ed25519) are skipped. The errors
// are ErrInvalidSecret, ErrMissingHeaders, ErrInvalidTimestamp,
// ErrTimestampTooOld, ErrTimestampTooNew and ErrNoMatchingSignature;
// compare with errors.Is.
func Verify(secret string, header http.Header, body []byte, now time.Time, tolerance time.Duration) error {
	key, err := decodeSecret(secret)
	if err != nil {
		return err
	}
	id, tsText, sigs := header.Get(HeaderID), header.Get(HeaderTimestamp), header.Get(HeaderSignature)
	if id == "" || tsText == "" || sigs == "" {
		return ErrMissingHeaders
	}
	if !isDigits(tsText) {
		return ErrInvalidTimestamp
	}
	secs, err := strconv.ParseInt(tsText, 10, 64)
	if err != nil {
		return ErrInvalidTimestamp
	}
	if tolerance > 0 {
		ts := time.Unix(secs, 0)
		if now.Sub(ts) > tolerance {
			return ErrTimestampTooOld
		}
		if ts.Sub(now) > tolerance {
			return ErrTimestampTooNew
		}
	}
	// The timestamp is signed as the sender wrote it.
	want := sum(key, id, tsText, body)
	for _, entry := range strings.Fields(sigs) {
		version, sig, ok := strings.Cut(entry, ",")
		if !ok || version != "v1" {
			continue
		}
		got, err := base64.StdEncoding.DecodeString(sig)
		if err != nil {
			continue
		}
		if hmac.Equal(got, want) {
			return nil
		}
	}
	return ErrNoMatchingSignature
}

func sum(key []byte, id, ts string, body []byte) []byte {
	h := hmac.New(sha256.New, key)
	h.Write([]byte(id))
	h.Write([]byte{'.'})
	h.Write([]byte(ts))
	h.Write([]byte{'.'})
	h.Write(body)
	return h.Sum(nil)
}

func decodeSecret(secret string) ([]byte, error) {
	key, err := base64.StdEncoding.DecodeString(strings.TrimPrefix(secret, SecretPrefix))
	if err != nil || len(key) == 0 {
		return nil, ErrInvalidSecret
	}
	return key, nil
}

func isDigits(s string) bool {
	for i := 0; i < len(s); i++ {
		if s[i] < '0' || s[i] > '9' {
			return false
		}
	}
	return true
}
