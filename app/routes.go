package app

import (
	"context"
	"fmt"
	"net/http"
	"strings"
	"time"

	"github.com/labstack/echo/v4"
	"github.com/labstack/echo/v4/middleware"

	"github.com/campaignd/dispatch/campaign"
	"github.com/campaignd/dispatch/customer"
	"github.com/campaignd/dispatch/messaging"
	"github.com/campaignd/dispatch/platform/httpx"
)

// routes builds the Echo instance: middleware, the one error handler, and
// each feature's routes. A worker-only replica (api.enabled false) serves
// /health alone.
func (a *App) routes() (http.Handler, error) {
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
	e.HTTPErrorHandler = httpx.ErrorHandler(a.log)
	e.Use(
		middleware.RequestID(),
		httpx.Logger(a.log),
		httpx.Recover(),
		middleware.BodyLimitWithConfig(middleware.BodyLimitConfig{
			Limit: fmt.Sprintf("%dB", bodyLimit),
			// The import endpoint enforces its own, larger limit.
			Skipper: func(c echo.Context) bool { return c.Path() == "/customers/import" },
		}),
	)

	e.GET("/health", a.health)
	if !a.cfg.API.Enabled {
		return e, nil
	}

	customer.NewHandler(a.customers, customer.HandlerOptions{
		ImportMaxBytes: importLimit,
		ImportMaxRows:  a.cfg.API.ImportMaxRows,
	}).Register(e)
	campaign.NewHandler(a.campaigns).Register(e)
	return e, nil
}

// contactFinder adapts the customer feature to campaign.CustomerFinder, so
// that neither feature imports the other.
type contactFinder struct{ svc *customer.Service }

func (f contactFinder) Contact(ctx context.Context, id int64) (campaign.Contact, error) {
	c, err := f.svc.Get(ctx, id)
	if err != nil {
		return campaign.Contact{}, err
	}
	return campaign.Contact{
		ID:               c.ID,
		FirstName:        c.FirstName,
		LastName:         c.LastName,
		Location:         c.Location,
		PreferredProduct: c.PreferredProduct,
		Phone:            c.Phone,
	}, nil
}

// healthBody is the /health response.
type healthBody struct {
	Status string            `json:"status"`
	Checks map[string]string `json:"checks"`
	Queue  *messaging.Depths `json:"queue,omitempty"`
	Worker *workerInfo       `json:"worker,omitempty"`
}

type workerInfo struct {
	Concurrency int                 `json:"concurrency"`
	Processed   messaging.PoolStats `json:"processed"`
}

// health reports whether PostgreSQL and Redis answer, each within a second,
// with the queue's depths and this replica's worker counters.
func (a *App) health(c echo.Context) error {
	ctx, cancel := context.WithTimeout(c.Request().Context(), time.Second)
	defer cancel()
	body := healthBody{Status: "ok", Checks: map[string]string{"postgres": "ok", "redis": "ok"}}
	status := http.StatusOK
	if err := a.db.PingContext(ctx); err != nil {
		body.Checks["postgres"] = "unavailable: " + shortErr(err)
		status = http.StatusServiceUnavailable
	}
	if err := a.rdb.Ping(ctx).Err(); err != nil {
		body.Checks["redis"] = "unavailable: " + shortErr(err)
		status = http.StatusServiceUnavailable
	} else if d, err := a.messaging.QueueDepths(ctx); err == nil {
		body.Queue = &d
	}
	if a.pool != nil {
		body.Worker = &workerInfo{Concurrency: a.cfg.WorkerConcurrency, Processed: a.pool.Stats()}
	}
	if status != http.StatusOK {
		body.Status = "unavailable"
	}
	return c.JSON(status, body)
}

func shortErr(err error) string {
	s := err.Error()
	if i := strings.LastIndex(s, ": "); i >= 0 && i+2 < len(s) {
		s = s[i+2:]
	}
	return s
}
