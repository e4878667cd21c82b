package dashboard

import (
	"context"
	"crypto/rand"
	"crypto/subtle"
	"encoding/base64"
	"encoding/json"
	"errors"
	"net"
	"net/http"
	"strings"

	"github.com/labstack/echo/v4"
	"github.com/redis/go-redis/v9"
)

const (
	sessionCookie = "dispatch_session"
	// loginCookie holds the sign-in form's CSRF token (double submit):
	// there is no session yet to bind it to.
	loginCookie = "dispatch_login"
	csrfField   = "csrf"
	csrfHeader  = "X-CSRF-Token"
)

// sess is what Redis holds for a session id.
type sess struct {
	Key   string `json:"key"`   // the API key signed in with
	Scope string `json:"scope"` // its scope when signed in, to hide what it may not do
	CSRF  string `json:"csrf"`
}

// canWrite reports whether the key may change things (the API decides; this
// only hides buttons a read key would be refused).
func (s sess) canWrite() bool { return s.Scope == "write" || s.Scope == "admin" }

type sessKey struct{}

func sessionOf(c echo.Context) sess {
	s, _ := c.Request().Context().Value(sessKey{}).(sess)
	return s
}

func randomToken() string {
	b := make([]byte, 32)
	_, _ = rand.Read(b)
	return base64.RawURLEncoding.EncodeToString(b)
}

func (d *Dashboard) redisKey(id string) string {
	return d.opts.KeyPrefix + "dashboard:session:" + id
}

// secure reports whether the client reached us over TLS: directly, or
// through a trusted proxy that says so.
func (d *Dashboard) secure(r *http.Request) bool {
	if r.TLS != nil {
		return true
	}
	host, _, err := net.SplitHostPort(r.RemoteAddr)
	return err == nil && d.opts.TrustedProxy(host) && strings.EqualFold(r.Header.Get("X-Forwarded-Proto"), "https")
}

func (d *Dashboard) setCookie(c echo.Context, name, value string, maxAge int) {
	http.SetCookie(c.Response(), &http.Cookie{
		Name: name, Value: value, Path: Prefix, MaxAge: maxAge,
		HttpOnly: true, Secure: d.secure(c.Request()), SameSite: http.SameSiteStrictMode,
	})
}

// session loads the session named by the cookie, or sends the browser to
// the sign-in page (a script request gets 401), and checks the CSRF token
// on every request that is not a GET or HEAD. Each request pushes the
// session's expiry back by the TTL.
func (d *Dashboard) session(next echo.HandlerFunc) echo.HandlerFunc {
	return func(c echo.Context) error {
		r := c.Request()
		s, ok, err := d.loadSession(r.Context(), r)
		if err != nil {
			return err
		}
		if !ok {
			if r.Header.Get("X-Requested-With") != "" || r.Method != http.MethodGet {
				return c.String(http.StatusUnauthorized, "signed out: sign in again")
			}
			return c.Redirect(http.StatusSeeOther, Prefix+"/login")
		}
		if r.Method != http.MethodGet && r.Method != http.MethodHead {
			token := r.Header.Get(csrfHeader)
			if token == "" {
				token = formValue(r, csrfField)
			}
			if subtle.ConstantTimeCompare([]byte(token), []byte(s.CSRF)) != 1 {
				return c.String(http.StatusForbidden, "this form has expired (CSRF token missing or wrong): reload the page and try again")
			}
		}
		c.SetRequest(r.WithContext(context.WithValue(r.Context(), sessKey{}, s)))
		c.Response().Header().Set("Cache-Control", "no-store")
		return next(c)
	}
}

// formValue reads a field of a urlencoded or multipart form.
func formValue(r *http.Request, name string) string {
	if strings.HasPrefix(r.Header.Get("Content-Type"), "multipart/form-data") {
		if err := r.ParseMultipartForm(32 << 20); err != nil {
			return ""
		}
	}
	return r.FormValue(name)
}

func (d *Dashboard) loadSession(ctx context.Context, r *http.Request) (sess, bool, error) {
	ck, err := r.Cookie(sessionCookie)
	if err != nil || len(ck.Value) != 43 {
		return sess{}, false, nil
	}
	key := d.redisKey(ck.Value)
	raw, err := d.opts.Redis.GetEx(ctx, key, d.opts.SessionTTL).Bytes()
	if errors.Is(err, redis.Nil) {
		return sess{}, false, nil
	}
	if err != nil {
		return sess{}, false, err
	}
	var s sess
	if err := json.Unmarshal(raw, &s); err != nil {
		return sess{}, false, nil
	}
	return s, true, nil
}

// loginPage shows the sign-in form with a fresh double-submit token.
func (d *Dashboard) loginPage(c echo.Context) error {
	token := randomToken()
	d.setCookie(c, loginCookie, token, 3600)
	data := map[string]any{"CSRF": token}
	if c.QueryParam("signed_out") != "" {
		data["Notice"] = "You are signed out."
	}
	return d.render(c, http.StatusOK, "login", data)
}

// login checks the key with the authenticator, stores a new session and
// sets its cookie.
func (d *Dashboard) login(c echo.Context) error {
	r := c.Request()
	ck, err := r.Cookie(loginCookie)
	if err != nil || subtle.ConstantTimeCompare([]byte(ck.Value), []byte(r.FormValue(csrfField))) != 1 {
		return c.String(http.StatusForbidden, "this form has expired (CSRF token missing or wrong): reload the page and try again")
	}
	key := strings.TrimSpace(r.FormValue("api_key"))
	scope, err := d.opts.Authenticate(r.Context(), key)
	if err != nil {
		token := randomToken()
		d.setCookie(c, loginCookie, token, 3600)
		return d.render(c, http.StatusUnauthorized, "login", map[string]any{"CSRF": token, "Error": "That key is not valid (unknown, revoked or mistyped)."})
	}
	id := randomToken()
	s := sess{Key: key, Scope: scope, CSRF: randomToken()}
	raw, _ := json.Marshal(s)
	if err := d.opts.Redis.Set(r.Context(), d.redisKey(id), raw, d.opts.SessionTTL).Err(); err != nil {
		return err
	}
	d.setCookie(c, loginCookie, "", -1)
	d.setCookie(c, sessionCookie, id, 0)
	return c.Redirect(http.StatusSeeOther, Prefix+"/campaigns")
}

// logout deletes the session in Redis (the cookie is then worth nothing,
// wherever a copy went) and clears the cookie.
func (d *Dashboard) logout(c echo.Context) error {
	if ck, err := c.Request().Cookie(sessionCookie); err == nil {
		if err := d.opts.Redis.Del(c.Request().Context(), d.redisKey(ck.Value)).Err(); err != nil {
			return err
		}
	}
	d.setCookie(c, sessionCookie, "", -1)
	return c.Redirect(http.StatusSeeOther, Prefix+"/login?signed_out=1")
}
