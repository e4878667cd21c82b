package httpx

import (
	"crypto/rand"

	"github.com/labstack/echo/v4"
	"github.com/labstack/echo/v4/middleware"
)

// MaxRequestIDLen is the longest X-Request-Id a client may choose.
const MaxRequestIDLen = 64

// RequestIDConfig configures Echo's RequestID middleware: a client's
// X-Request-Id is kept (echoed in the response and logged with every line
// of the request) only when it is a short, safe token, at most
// MaxRequestIDLen characters of [A-Za-z0-9._-]; anything else is replaced by
// a fresh id, so that a client cannot put half a megabyte, or a forged log
// line, into each of the service's log lines.
func RequestIDConfig() middleware.RequestIDConfig {
	return middleware.RequestIDConfig{
		Generator: NewRequestID,
		RequestIDHandler: func(c echo.Context, id string) {
			if !ValidRequestID(id) {
				id = NewRequestID()
				c.Request().Header.Set(echo.HeaderXRequestID, id)
				c.Response().Header().Set(echo.HeaderXRequestID, id)
			}
		},
	}
}

// NewRequestID returns a random request ID (26 characters of base32).
func NewRequestID() string { return rand.Text() }

// ValidRequestID reports whether a client-chosen request ID can be used as
// it is: 1 to MaxRequestIDLen characters of [A-Za-z0-9._-].
func ValidRequestID(id string) bool {
	if id == "" || len(id) > MaxRequestIDLen {
		return false
	}
	for i := range len(id) {
		c := id[i]
		if !('a' <= c && c <= 'z' || 'A' <= c && c <= 'Z' || '0' <= c && c <= '9' || c == '.' || c == '_' || c == '-') {
			return false
		}
	}
	return true
}
