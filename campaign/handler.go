package campaign

import (
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
	e.GET("/campaigns/:id", h.get)
	e.POST("/campaigns/:id/personalized-preview", h.preview)
	if h.svc.dispatcher != nil {
		e.POST("/campaigns/:id/send", h.send)
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
	q := c.QueryParams()
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

// get serves GET /campaigns/{id}: the campaign plus "stats".
func (h *Handler) get(c echo.Context) error {
	id, err := httpx.PathID(c, "id")
	if err != nil {
		return err
	}
	d, err := h.svc.Get(c.Request().Context(), id)
	if err != nil {
		return err
	}
	return c.JSON(http.StatusOK, d)
}

// preview serves POST /campaigns/{id}/personalized-preview.
func (h *Handler) preview(c echo.Context) error {
	id, err := httpx.PathID(c, "id")
	if err != nil {
		return err
	}
	var in PreviewInput
	if err := httpx.BindJSON(c, &in); err != nil {
		return err
	}
	p, err := h.svc.Preview(c.Request().Context(), id, in)
	if err != nil {
		return err
	}
	return c.JSON(http.StatusOK, p)
}
