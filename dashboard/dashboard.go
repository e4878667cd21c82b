// Package dashboard serves the web dashboard under /ui: server-rendered
// pages over the service's own API.
//
// The dashboard reads no database and holds no business rule. Each page
// handler calls the app's API http.Handler in-process with the signed-in
// session's key as a Bearer token and renders the JSON it gets back, so
// scopes (a read key's action is the API's 403), validation, errors and
// response shapes are exactly the API's and checked by the same contract
// tests. The cost is one extra pass through the API's middleware per call,
// microseconds next to the database.
//
// Sessions live in Redis: the browser holds only a random session id in an
// HttpOnly, SameSite=Strict cookie (Secure over TLS), so signing out (or the
// TTL) makes a stolen cookie worthless, and the API key never reaches the
// browser after the sign-in form. Every form and script request carries the
// session's CSRF token, checked on every non-GET.
package dashboard

import (
	"context"
	"embed"
	"html/template"
	"io/fs"
	"log/slog"
	"net/http"
	"time"

	"github.com/labstack/echo/v4"
	"github.com/redis/go-redis/v9"
)

//go:embed templates/*.html
var templateFS embed.FS

//go:embed static
var staticFS embed.FS

// Prefix is where the dashboard is served; "/" redirects here.
const Prefix = "/ui"

// Options configure a Dashboard.
type Options struct {
	// API is the service's own API handler (the Echo instance the dashboard
	// is mounted on); the dashboard's pages are its clients.
	API http.Handler
	// Authenticate returns the scope of an API key ("read", "write",
	// "admin"), or an error for an unknown or revoked key.
	Authenticate func(ctx context.Context, key string) (string, error)
	Redis        redis.Cmdable
	KeyPrefix    string        // Redis key prefix of the deployment
	SessionTTL   time.Duration // a session unused this long is gone
	// TrustedProxy reports whether a socket peer may set
	// X-Forwarded-Proto (the session cookie is Secure when it says https).
	TrustedProxy func(ip string) bool
	Log          *slog.Logger
}

// Dashboard serves the pages.
type Dashboard struct {
	opts  Options
	pages map[string]*template.Template
}

// New parses the templates; it fails only if they are broken.
func New(opts Options) (*Dashboard, error) {
	if opts.SessionTTL <= 0 {
		opts.SessionTTL = 12 * time.Hour
	}
	if opts.TrustedProxy == nil {
		opts.TrustedProxy = func(string) bool { return false }
	}
	pages, err := parseTemplates()
	if err != nil {
		return nil, err
	}
	return &Dashboard{opts: opts, pages: pages}, nil
}

// Register mounts the dashboard on e: "/" redirects to Prefix, the static
// assets are public, every page but the sign-in needs a session.
func (d *Dashboard) Register(e *echo.Echo) {
	e.GET("/", func(c echo.Context) error { return c.Redirect(http.StatusSeeOther, Prefix+"/") })
	static, _ := fs.Sub(staticFS, "static")
	e.GET(Prefix+"/static/*", echo.WrapHandler(http.StripPrefix(Prefix+"/static/", staticHandler(static))))
	e.GET(Prefix+"/login", d.loginPage)
	e.POST(Prefix+"/login", d.login)

	g := e.Group(Prefix, d.session)
	g.POST("/logout", d.logout)
	g.GET("/", func(c echo.Context) error { return c.Redirect(http.StatusSeeOther, Prefix+"/campaigns") })
	g.GET("/campaigns", d.campaigns)
	g.GET("/campaigns/row-progress", d.campaignsProgress)
	g.POST("/campaigns/new", d.newCampaign)
	g.GET("/campaigns/:id", d.campaign)
	g.GET("/campaigns/:id/live", d.campaignLive)
	g.GET("/campaigns/:id/compose", d.compose)
	g.POST("/campaigns/:id/compose", d.saveCompose)
	g.POST("/campaigns/:id/preview", d.preview)
	g.POST("/campaigns/:id/estimate", d.estimate)
	g.POST("/campaigns/:id/test-send", d.testSend)
	g.POST("/campaigns/:id/action/:action", d.action)
	g.GET("/campaigns/:id/messages.csv", d.exportCSV)
	g.GET("/messages/:id", d.message)
	g.GET("/customers", d.customers)
	g.GET("/customers/:id", d.customer)
	g.POST("/customers/:id/opt-out", d.optOut)
	g.POST("/customers/import", d.importCustomers)
	g.GET("/queue", d.queue)
	g.GET("/queue/live", d.queueLive)
}

// IsRoute reports whether an Echo route path is the dashboard's (not API):
// the auth middleware lets these through (the dashboard checks its own
// session) and the route table's OpenAPI test leaves them out.
func IsRoute(path string) bool {
	return path == "/" || path == Prefix || len(path) > len(Prefix) && path[:len(Prefix)+1] == Prefix+"/"
}

// staticHandler serves the embedded assets with a day of caching: they
// change only with the binary.
func staticHandler(fsys fs.FS) http.Handler {
	h := http.FileServerFS(fsys)
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Cache-Control", "public, max-age=86400")
		h.ServeHTTP(w, r)
	})
}
