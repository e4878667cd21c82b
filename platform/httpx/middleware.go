package httpx

import (
	"fmt"
	"log/slog"
	"net/http"
	"runtime/debug"
	"time"

	"github.com/labstack/echo/v4"

	"github.com/campaignd/dispatch/platform/errs"
	"github.com/campaignd/dispatch/platform/logging"
)

// RequestID returns the request's ID, set by Echo's RequestID middleware.
func RequestID(c echo.Context) string {
	if id := c.Response().Header().Get(echo.HeaderXRequestID); id != "" {
		return id
	}
	return c.Request().Header.Get(echo.HeaderXRequestID)
}

// Logger logs one structured line per request after it completes, and puts
// the request ID into the request's context so that every line logged while
// serving it carries the ID (see logging.ContextHandler). Client errors are
// logged at info (they are the client's to fix), server errors at error.
func Logger(log *slog.Logger) echo.MiddlewareFunc {
	return func(next echo.HandlerFunc) echo.HandlerFunc {
		return func(c echo.Context) error {
			start := time.Now()
			c.SetRequest(c.Request().WithContext(logging.WithRequestID(c.Request().Context(), RequestID(c))))
			var extra []slog.Attr
			c.Set(logAttrsKey, &extra)
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
			}
			if isProbe(req.URL.Path) && status < 400 {
				level = slog.LevelDebug // probes every few seconds would drown the log
			}
			attrs := append([]slog.Attr{
				slog.String("method", req.Method),
				slog.String("path", errs.Clip(req.URL.Path)), // a client chooses it: keep lines short
				slog.Int("status", status),
				slog.Int64("bytes_out", c.Response().Size),
				slog.Float64("duration_ms", float64(time.Since(start).Microseconds())/1000),
				slog.String("remote_ip", c.RealIP()),
			}, extra...)
			log.LogAttrs(req.Context(), level, "http request", attrs...)
			return nil
		}
	}
}

const logAttrsKey = "httpx.log_attrs"

// AddLogAttrs adds attributes to the request's log line (e.g. which API key
// made it). Without the Logger middleware it does nothing.
func AddLogAttrs(c echo.Context, attrs ...slog.Attr) {
	if p, ok := c.Get(logAttrsKey).(*[]slog.Attr); ok {
		*p = append(*p, attrs...)
	}
}

func isProbe(path string) bool {
	switch path {
	case "/health", "/livez", "/readyz", "/metrics":
		return true
	}
	return false
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
