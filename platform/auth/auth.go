// Package auth authenticates API requests with bearer keys and checks their
// scope. A key is "dsp_" followed by 43 URL-safe characters (32 random bytes);
// it is shown once, when created, and only its SHA-256 is stored. Keys are
// cached in the process for a short time, so a request costs no database
// round trip, and a revocation reaches every replica within that time.
package auth

import (
	"crypto/rand"
	"crypto/sha256"
	"encoding/base64"
	"fmt"
	"strings"
	"time"

	"github.com/campaignd/dispatch/platform/errs"
)

// Scope is what a key may do. Each scope includes the ones below it.
type Scope string

const (
	ScopeRead  Scope = "read"  // every GET
	ScopeWrite Scope = "write" // read, and every change except key management
	ScopeAdmin Scope = "admin" // everything
)

var scopeRank = map[Scope]int{ScopeRead: 1, ScopeWrite: 2, ScopeAdmin: 3}

// Valid reports whether s is a known scope (mirrored by a CHECK constraint).
func (s Scope) Valid() bool { return scopeRank[s] > 0 }

// Allows reports whether a key with scope s may do what need requires.
func (s Scope) Allows(need Scope) bool { return s.Valid() && scopeRank[s] >= scopeRank[need] }

// Key is a stored API key, without its secret.
type Key struct {
	ID         int64      `db:"id" json:"id"`
	Name       string     `db:"name" json:"name"`
	Scope      Scope      `db:"scope" json:"scope"`
	Prefix     string     `db:"prefix" json:"prefix"`
	CreatedAt  time.Time  `db:"created_at" json:"created_at"`
	LastUsedAt *time.Time `db:"last_used_at" json:"last_used_at"`
	RevokedAt  *time.Time `db:"revoked_at" json:"revoked_at"`
}

const (
	keyMarker = "dsp_"
	// minSecret is the shortest secret accepted after the marker: API.md asks
	// for at least 32 random URL-safe characters.
	minSecret = 32
	maxKeyLen = 200
	// prefixLen is how much of a key is stored in clear to tell keys apart.
	prefixLen = len(keyMarker) + 8
)

// Errors a client may see.
var (
	ErrUnauthenticated = errs.New(errs.KindUnauthenticated, errs.CodeUnauthenticated, "a valid API key is required: send Authorization: Bearer <key>")
	ErrForbidden       = errs.New(errs.KindForbidden, errs.CodeForbidden, "this API key's scope does not allow this request")
	ErrNotFound        = errs.New(errs.KindNotFound, "API_KEY_NOT_FOUND", "API key not found")
)

// NewSecret returns a fresh key: "dsp_" and 32 random bytes, base64url.
func NewSecret() string {
	b := make([]byte, 32)
	_, _ = rand.Read(b) // crypto/rand.Read never fails (Go 1.24+)
	return keyMarker + base64.RawURLEncoding.EncodeToString(b)
}

// CheckFormat reports whether raw is shaped like a key, without any lookup,
// so garbage is rejected before it costs a query.
func CheckFormat(raw string) error {
	secret, ok := strings.CutPrefix(raw, keyMarker)
	if !ok || len(secret) < minSecret || len(raw) > maxKeyLen {
		return fmt.Errorf("an API key is %q followed by at least %d URL-safe characters", keyMarker, minSecret)
	}
	for _, r := range secret {
		if !(r >= 'a' && r <= 'z' || r >= 'A' && r <= 'Z' || r >= '0' && r <= '9' || r == '-' || r == '_') {
			return fmt.Errorf("an API key holds only URL-safe characters (A-Z a-z 0-9 - _)")
		}
	}
	return nil
}

// hash is what is stored and looked up instead of the key.
func hash(raw string) []byte {
	h := sha256.Sum256([]byte(raw))
	return h[:]
}

func prefixOf(raw string) string { return raw[:prefixLen] }
