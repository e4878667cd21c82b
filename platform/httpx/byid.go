package httpx

import (
	"context"

	"github.com/labstack/echo/v4"
)

// ByID serves a route that names one resource by its :id path parameter
// (GET /campaigns/{id}): a malformed id is a VALIDATION_ERROR, and the
// answer is status with what do returns for the id, or do's error.
func ByID[T any](status int, do func(ctx context.Context, id int64) (T, error)) echo.HandlerFunc {
	return func(c echo.Context) error {
		id, err := PathID(c, "id")
		if err != nil {
			return err
		}
		out, err := do(c.Request().Context(), id)
		if err != nil {
			return err
		}
		return c.JSON(status, out)
	}
}

// ByIDWithBody is ByID for a route that also takes a JSON body, bound
// strictly into an In (POST /campaigns/{id}/estimate).
func ByIDWithBody[In, T any](status int, do func(ctx context.Context, id int64, in In) (T, error)) echo.HandlerFunc {
	return func(c echo.Context) error {
		id, err := PathID(c, "id")
		if err != nil {
			return err
		}
		var in In
		if err := BindJSON(c, &in); err != nil {
			return err
		}
		out, err := do(c.Request().Context(), id, in)
		if err != nil {
			return err
		}
		return c.JSON(status, out)
	}
}
