package auth

import (
	"context"
	"log/slog"
	"net/http"
	"strings"

	"github.com/labstack/echo/v4"

	"github.com/campaignd/dispatch/platform/httpx"
)

type contextKey struct{}

// FromContext returns the key that authenticated the request.
func FromContext(ctx context.Context) (Key, bool) {
	k, ok := ctx.Value(contextKey{}).(Key)
	return k, ok
}

// disabledKey stands in for a key when authentication is turned off.
var disabledKey = Key{Name: "auth-disabled", Scope: ScopeAdmin}

// MiddlewareOptions configure Middleware.
type MiddlewareOptions struct {
	// Public reports whether the request's route needs no key (probes,
	// metrics, the contract, webhooks that authenticate their own way).
	Public func(c echo.Context) bool
	// Disabled lets every request through as an admin. Only for local
	// experiments; the app logs a warning at every start.
	Disabled bool
}

// Middleware authenticates every non-public request with its bearer key and
// checks the scope its method needs: GET and HEAD need read, every other
// method write. Routes that need more add Require. The key's id and name go
// on the request's log line; the secret never does.
//
// No key, a malformed one, or an unknown or revoked one is 401 with
// WWW-Authenticate; a key whose scope falls short is 403.
func Middleware(a *Authenticator, o MiddlewareOptions) echo.MiddlewareFunc {
	return func(next echo.HandlerFunc) echo.HandlerFunc {
		return func(c echo.Context) error {
			if o.Public != nil && o.Public(c) {
				return next(c)
			}
			var k Key
			if o.Disabled {
				k = disabledKey
			} else {
				raw, ok := bearer(c.Request())
				if !ok {
					c.Response().Header().Set(echo.HeaderWWWAuthenticate, `Bearer realm="dispatch"`)
					return ErrUnauthenticated
				}
				var err error
				if k, err = a.Authenticate(c.Request().Context(), raw); err != nil {
					if err == ErrUnauthenticated {
						c.Response().Header().Set(echo.HeaderWWWAuthenticate, `Bearer realm="dispatch", error="invalid_token"`)
						return ErrUnauthenticated.Withf("the API key is unknown or revoked")
					}
					return err
				}
			}
			httpx.AddLogAttrs(c, slog.Int64("api_key_id", k.ID), slog.String("api_key_name", k.Name))
			c.SetRequest(c.Request().WithContext(context.WithValue(c.Request().Context(), contextKey{}, k)))
			need := ScopeWrite
			if m := c.Request().Method; m == http.MethodGet || m == http.MethodHead {
				need = ScopeRead
			}
			if !k.Scope.Allows(need) {
				return ErrForbidden.Withf("this request needs the %s scope; this key has %s", need, k.Scope)
			}
			return next(c)
		}
	}
}

// Require is route middleware for routes that need more than their method
// implies (key management needs admin).
func Require(need Scope) echo.MiddlewareFunc {
	return func(next echo.HandlerFunc) echo.HandlerFunc {
		return func(c echo.Context) error {
			k, ok := FromContext(c.Request().Context())
			if !ok {
				return ErrUnauthenticated
			}
			if !k.Scope.Allows(need) {
				return ErrForbidden.Withf("this request needs the %s scope; this key has %s", need, k.Scope)
			}
			return next(c)
		}
	}
}

// bearer returns the token of an "Authorization: Bearer <token>" header.
func bearer(r *http.Request) (string, bool) {
	h := r.Header.Get(echo.HeaderAuthorization)
	scheme, token, ok := strings.Cut(h, " ")
	if !ok || !strings.EqualFold(scheme, "Bearer") {
		return "", false
	}
	token = strings.TrimSpace(token)
	return token, token != ""
}
