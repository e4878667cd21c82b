package campaign

import (
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"strconv"

	"github.com/labstack/echo/v4"

	"github.com/campaignd/dispatch/platform/httpx"
	"github.com/campaignd/dispatch/platform/page"
)

// Handler serves the campaign routes. Handlers return errors; the app's
// httpx.ErrorHandler turns them into the JSON envelope.
type Handler struct {
	svc *Service
}

// NewHandler returns a Handler over svc.
func NewHandler(svc *Service) *Handler {
	return &Handler{svc: svc}
}

// Register mounts the campaign routes on e.
func (h *Handler) Register(e *echo.Echo) {
	e.POST("/campaigns", h.create)
	e.GET("/campaigns", h.list)
	e.GET("/campaigns/:id", httpx.ByID(http.StatusOK, h.svc.Get))
	e.POST("/campaigns/:id/personalized-preview", httpx.ByIDWithBody(http.StatusOK, h.svc.Preview))
	e.PATCH("/campaigns/:id", h.update)
	if h.svc.dispatcher != nil {
		e.POST("/campaigns/:id/send", h.send)
		e.POST("/campaigns/:id/pause", h.action(h.svc.Pause))
		e.POST("/campaigns/:id/resume", h.action(h.svc.Resume))
		e.POST("/campaigns/:id/cancel", h.action(h.svc.Cancel))
		e.POST("/campaigns/:id/retry-failed", h.action(h.svc.RetryFailed))
	}
	if h.svc.estimator != nil {
		// 200 with what a send of the same body would create and cost; it
		// creates nothing.
		e.POST("/campaigns/:id/estimate", httpx.ByIDWithBody(http.StatusOK, h.svc.Estimate))
	}
	if h.svc.testSends.sender != nil {
		// 202 with the test message, stored and being delivered.
		e.POST("/campaigns/:id/test-send", httpx.ByIDWithBody(http.StatusAccepted, h.svc.TestSend))
	}
}

// update serves PATCH /campaigns/{id}: 200 with the edited campaign.
func (h *Handler) update(c echo.Context) error {
	id, err := httpx.PathID(c, "id")
	if err != nil {
		return err
	}
	var in UpdateInput
	if err := httpx.BindJSON(c, &in); err != nil {
		return err
	}
	camp, err := h.svc.Update(c.Request().Context(), id, in)
	if err != nil {
		return err
	}
	return c.JSON(http.StatusOK, camp)
}

// action serves the bodiless lifecycle routes (pause, resume, cancel,
// retry-failed): 200 with the campaign's new status. They take no body, or
// an empty JSON object; anything else, and any content type but JSON, is
// refused before the action runs, so that an HTML form on another site
// cannot make a browser post one.
func (h *Handler) action(do func(ctx context.Context, id int64) (ActionResult, error)) echo.HandlerFunc {
	return func(c echo.Context) error {
		id, err := httpx.PathID(c, "id")
		if err != nil {
			return err
		}
		if err := httpx.BindEmptyJSON(c); err != nil {
			return err
		}
		res, err := do(c.Request().Context(), id)
		if err != nil {
			return err
		}
		return c.JSON(http.StatusOK, res)
	}
}

// send serves POST /campaigns/{id}/send: 202 once the messages are stored
// and queued. A repeated Idempotency-Key replays the first response.
func (h *Handler) send(c echo.Context) error {
	id, err := httpx.PathID(c, "id")
	if err != nil {
		return err
	}
	var in SendInput
	if err := httpx.BindJSON(c, &in); err != nil {
		return err
	}
	res, replay, err := h.svc.Send(c.Request().Context(), id, in, c.Request().Header.Get("Idempotency-Key"))
	if err != nil {
		return err
	}
	if replay != nil {
		c.Response().Header().Set("Idempotent-Replayed", "true")
		return c.JSONBlob(replay.StatusCode, replay.Body)
	}
	// JSONBlob, not JSON: the bytes must equal those stored for a replay.
	body, err := json.Marshal(res)
	if err != nil {
		return fmt.Errorf("encode send result: %w", err)
	}
	return c.JSONBlob(http.StatusAccepted, body)
}

// create serves POST /campaigns: 201 with the campaign and its Location.
func (h *Handler) create(c echo.Context) error {
	var in CreateInput
	if err := httpx.BindJSON(c, &in); err != nil {
		return err
	}
	camp, err := h.svc.Create(c.Request().Context(), in)
	if err != nil {
		return err
	}
	c.Response().Header().Set(echo.HeaderLocation, "/campaigns/"+strconv.FormatInt(camp.ID, 10))
	return c.JSON(http.StatusCreated, camp)
}

// list serves GET /campaigns?page=&page_size=&cursor=&channel=&status=.
func (h *Handler) list(c echo.Context) error {
	q, err := httpx.Query(c)
	if err != nil {
		return err
	}
	f, err := parseFilter(q.Get("channel"), q.Get("status"))
	if err != nil {
		return err
	}
	// The filters, in a fixed order, are bound into the cursor so that it
	// cannot be replayed against a different list.
	req, err := page.Parse(q, string(f.Channel), string(f.Status))
	if err != nil {
		return err
	}
	list, err := h.svc.List(c.Request().Context(), f, req)
	if err != nil {
		return err
	}
	return c.JSON(http.StatusOK, list)
}
