package campaign

import (
	"net/http"

	"github.com/labstack/echo/v4"

	"github.com/campaignd/dispatch/platform/httpx"
)

// estimate serves POST /campaigns/{id}/estimate: 200 with what a send of
// the same body would create and cost. It creates nothing.
func (h *Handler) estimate(c echo.Context) error {
	id, err := httpx.PathID(c, "id")
	if err != nil {
		return err
	}
	var in SendInput
	if err := httpx.BindJSON(c, &in); err != nil {
		return err
	}
	est, err := h.svc.Estimate(c.Request().Context(), id, in)
	if err != nil {
		return err
	}
	return c.JSON(http.StatusOK, est)
}

// testSend serves POST /campaigns/{id}/test-send: 202 with the test message,
// stored and being delivered.
func (h *Handler) testSend(c echo.Context) error {
	id, err := httpx.PathID(c, "id")
	if err != nil {
		return err
	}
	var in TestSendInput
	if err := httpx.BindJSON(c, &in); err != nil {
		return err
	}
	m, err := h.svc.TestSend(c.Request().Context(), id, in)
	if err != nil {
		return err
	}
	return c.JSON(http.StatusAccepted, m)
}
