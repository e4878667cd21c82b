package app

import (
	"context"
	"fmt"
	"net/http"
	"strconv"

	"github.com/labstack/echo/v4"
	"github.com/labstack/echo/v4/middleware"

	"github.com/campaignd/dispatch/campaign"
	"github.com/campaignd/dispatch/customer"
	"github.com/campaignd/dispatch/dashboard"
	"github.com/campaignd/dispatch/messaging"
	"github.com/campaignd/dispatch/messaging/template"
	"github.com/campaignd/dispatch/platform/auth"
	"github.com/campaignd/dispatch/platform/httpx"
	"github.com/campaignd/dispatch/platform/outbox"
	"github.com/campaignd/dispatch/platform/ratelimit"
)

// publicRoutes need no API key: probes, metrics, the published contract,
// and the providers' webhooks, which authenticate themselves.
var publicRoutes = func() map[string]bool {
	m := map[string]bool{
		"/health": true, "/livez": true, "/readyz": true, "/metrics": true,
		"/openapi.json": true, "/docs": true, "/docs/:asset": true,
	}
	for _, p := range messaging.WebhookPaths() {
		m[p] = true
	}
	return m
}()

// routes builds the Echo instance: middleware, the one error handler, and
// each feature's routes. A worker-only replica (api.enabled false) serves
// only the probes and metrics.
func (a *App) routes() (*echo.Echo, error) {
	bodyLimit, err := ParseBytes(a.cfg.API.BodyLimit)
	if err != nil {
		return nil, err
	}
	importLimit, err := ParseBytes(a.cfg.API.ImportBodyLimit)
	if err != nil {
		return nil, err
	}

	e := echo.New()
	e.HideBanner, e.HidePort = true, true
	answerHeadLikeGet(e)
	e.HTTPErrorHandler = httpx.ErrorHandler(a.log)
	e.IPExtractor = a.ipExtractor()
	e.Use(
		middleware.RequestIDWithConfig(httpx.RequestIDConfig()), // a client's id only if short and safe
		httpx.Logger(a.log),
		a.metrics.Middleware(), // inside Logger: it sees the status the client got
		httpx.Recover(),
		middleware.BodyLimitWithConfig(middleware.BodyLimitConfig{
			Limit: fmt.Sprintf("%dB", bodyLimit),
			// The import endpoint enforces its own, larger limit.
			Skipper: func(c echo.Context) bool {
				return c.Path() == "/customers/import" || c.Path() == dashboard.Prefix+"/customers/import"
			},
		}),
		// The dashboard's upload passes the file on to the import, so it
		// gets the import's limit (plus room for the multipart framing)
		// instead of being spooled to disk whatever its size.
		middleware.BodyLimitWithConfig(middleware.BodyLimitConfig{
			Limit:   fmt.Sprintf("%dB", importLimit+64<<10),
			Skipper: func(c echo.Context) bool { return c.Path() != dashboard.Prefix+"/customers/import" },
		}),
		auth.Middleware(a.authn, auth.MiddlewareOptions{
			// The dashboard checks its own session and calls the API with its key.
			Public:   func(c echo.Context) bool { return publicRoutes[c.Path()] || dashboard.IsRoute(c.Path()) },
			Disabled: a.cfg.Auth.Disabled,
		}),
		ratelimit.Middleware(a.apiRdb, ratelimit.Options{
			Rate:   a.cfg.API.RateLimit,
			Burst:  a.cfg.API.RateBurst,
			Prefix: a.cfg.Redis.KeyPrefix,
			Client: rateLimitClient,
			Log:    a.log,
		}),
	)

	e.GET("/health", a.health)
	e.GET("/metrics", echo.WrapHandler(a.metrics.Handler()))
	e.GET("/livez", a.livez)
	e.GET("/readyz", a.readyz)
	if !a.cfg.API.Enabled {
		return e, nil
	}
	if err := registerDocs(e); err != nil {
		return nil, err
	}
	auth.NewHandler(a.keys).Register(e)

	customer.NewHandler(a.customers, customer.HandlerOptions{
		ImportMaxBytes:    importLimit,
		ImportMaxRows:     a.cfg.API.ImportMaxRows,
		ImportConcurrency: a.cfg.API.ImportConcurrency,
	}).Register(e)
	campaign.NewHandler(a.campaigns).Register(e)
	messaging.NewHandler(a.messaging.Repo()).WithLogger(a.log.With("component", "messages")).Register(e)
	messaging.NewQueueHandler(a.messaging).Register(e)
	a.webhooks.Register(e)
	outbox.NewHandler(a.hooks).Register(e)
	if err := a.mountDashboard(e); err != nil {
		return nil, err
	}
	return e, nil
}

// answerHeadLikeGet makes every GET route registered on e from now on
// answer HEAD too, with the same handler and route middleware: net/http
// sends the status and headers (Content-Length included) and drops the
// body, the error envelope's included. HEAD is GET without a
// body by definition (RFC 9110, section 9.3.2), so it goes into the router
// only, not into e.Routes(): the route table stays the list of operations
// that app/openapi.yaml documents, where HEAD is stated once for all GETs.
// Authentication treats HEAD as a read.
func answerHeadLikeGet(e *echo.Echo) {
	e.OnAddRouteHandler = func(host string, r echo.Route, h echo.HandlerFunc, m []echo.MiddlewareFunc) {
		if r.Method != http.MethodGet || host != "" {
			return
		}
		for i := len(m) - 1; i >= 0; i-- {
			h = m[i](h)
		}
		e.Router().Add(http.MethodHead, r.Path, h)
	}
}

// rateLimitClient names the allowance a request draws on: its API key, or,
// with authentication disabled, its client address. Public routes are not
// limited.
func rateLimitClient(c echo.Context) (string, bool) {
	k, ok := auth.FromContext(c.Request().Context())
	switch {
	case !ok:
		return "", false
	case k.ID == 0:
		return "ip:" + c.RealIP(), true
	}
	return "key:" + strconv.FormatInt(k.ID, 10), true
}

// ipExtractor decides the client address logged and limited: the socket's
// peer, unless it is a configured proxy, in which case the nearest untrusted
// address in X-Forwarded-For. Nothing is trusted by default, so a client
// cannot choose its own address with a header.
func (a *App) ipExtractor() echo.IPExtractor {
	nets, _ := a.cfg.TrustedProxies() // validated at load
	if len(nets) == 0 {
		return echo.ExtractIPDirect()
	}
	opts := []echo.TrustOption{echo.TrustLoopback(false), echo.TrustLinkLocal(false), echo.TrustPrivateNet(false)}
	for _, n := range nets {
		opts = append(opts, echo.TrustIPRange(n))
	}
	return echo.ExtractIPFromXFFHeader(opts...)
}

// contactFinder adapts the customer feature to campaign.CustomerFinder, so
// that neither feature imports the other.
type contactFinder struct{ svc *customer.Service }

func (f contactFinder) Contact(ctx context.Context, id int64) (campaign.Contact, error) {
	c, err := f.svc.Get(ctx, id)
	if err != nil {
		return campaign.Contact{}, err
	}
	return campaign.Contact{ID: c.ID, Fields: template.Fields{
		FirstName: c.FirstName, LastName: c.LastName, Location: c.Location,
		PreferredProduct: c.PreferredProduct, Phone: c.Phone,
	}}, nil
}
