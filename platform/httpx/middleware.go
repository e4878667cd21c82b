package httpx

import (
	"fmt"
	"log/slog"
	"net/http"
	"runtime/debug"
	"time"

	"github.com/labstack/echo/v4"
)

// RequestID returns the request's ID, set by Echo's RequestID middleware.
func RequestID(c echo.Context) string {
	if id := c.Response().Header().Get(echo.HeaderXRequestID); id != "" {
		return id
	}
	return c.Request().Header.Get(echo.HeaderXRequestID)
}

// Logger logs one structured line per request after it completes.
func Logger(log *slog.Logger) echo.MiddlewareFunc {
	return func(next echo.HandlerFunc) echo.HandlerFunc {
		return func(c echo.Context) error {
			start := time.Now()
			err := next(c)
			if err != nil {
				// Let the error handler write the response now so the
				// logged status is the one the client sees.
				c.Error(err)
			}
			req := c.Request()
			level := slog.LevelInfo
			status := c.Response().Status
			if status >= 500 {
				level = slog.LevelError
			} else if status >= 400 {
				level = slog.LevelWarn
			}
			if req.URL.Path == "/health" && status < 400 {
				level = slog.LevelDebug // probes every few seconds would drown the log
			}
			log.LogAttrs(req.Context(), level, "http request",
				slog.String("request_id", RequestID(c)),
				slog.String("method", req.Method),
				slog.String("path", req.URL.Path),
				slog.Int("status", status),
				slog.Int64("bytes_out", c.Response().Size),
				slog.Duration("duration", time.Since(start)),
				slog.String("remote_ip", c.RealIP()),
			)
			return nil
		}
	}
}

// Recover turns a panic in a handler into an internal error carrying the
// stack, so the client gets the envelope and the log gets the trace.
func Recover() echo.MiddlewareFunc {
	return func(next echo.HandlerFunc) echo.HandlerFunc {
		return func(c echo.Context) (err error) {
			defer func() {
				if r := recover(); r != nil {
					if r == http.ErrAbortHandler {
						panic(r)
					}
					err = fmt.Errorf("panic: %v\n%s", r, debug.Stack())
				}
			}()
			return next(c)
		}
	}
}
