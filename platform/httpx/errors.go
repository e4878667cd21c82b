// Package httpx holds the HTTP plumbing every feature shares: the one Echo
// error handler that writes the JSON error envelope, strict JSON binding,
// parameter parsing and request logging.
package httpx

import (
	"errors"
	"log/slog"
	"net/http"

	"github.com/labstack/echo/v4"

	"github.com/campaignd/dispatch/platform/errs"
)

// Envelope is the body of every error response.
type Envelope struct {
	Error Body `json:"error"`
}

// Body is the inside of the error envelope.
type Body struct {
	Code    string         `json:"code"`
	Message string         `json:"message"`
	Details map[string]any `json:"details,omitempty"`
}

var statusByKind = map[errs.Kind]int{
	errs.KindInternal:         http.StatusInternalServerError,
	errs.KindValidation:       http.StatusBadRequest,
	errs.KindInvalidJSON:      http.StatusBadRequest,
	errs.KindNotFound:         http.StatusNotFound,
	errs.KindMethodNotAllowed: http.StatusMethodNotAllowed,
	errs.KindConflict:         http.StatusConflict,
	errs.KindTooLarge:         http.StatusRequestEntityTooLarge,
	errs.KindUnsupportedMedia: http.StatusUnsupportedMediaType,
	errs.KindUnprocessable:    http.StatusUnprocessableEntity,
	errs.KindUnavailable:      http.StatusServiceUnavailable,
	errs.KindUnauthenticated:  http.StatusUnauthorized,
	errs.KindForbidden:        http.StatusForbidden,
	errs.KindRateLimited:      http.StatusTooManyRequests,
}

// Status returns the HTTP status for kind.
func Status(kind errs.Kind) int {
	if s, ok := statusByKind[kind]; ok {
		return s
	}
	return http.StatusInternalServerError
}

// ErrorHandler returns the Echo error handler: the one place where errors
// become HTTP responses. It converts Echo's own errors (unknown route, wrong
// method, body too large) into the envelope, hides the cause of every 5xx from
// the client and logs each 5xx once with the request ID.
func ErrorHandler(log *slog.Logger) echo.HTTPErrorHandler {
	return func(err error, c echo.Context) {
		if c.Response().Committed {
			return
		}
		e := toError(err)
		status := Status(e.Kind)
		body := Body{Code: e.Code, Message: e.Message, Details: e.Details}
		if e.Kind == errs.KindInternal {
			body = Body{Code: errs.CodeInternal, Message: "internal error; the request ID is in the X-Request-Id header"}
		}
		if status >= 500 {
			log.ErrorContext(c.Request().Context(), "request failed", "method", c.Request().Method,
				"path", errs.Clip(c.Request().URL.Path), "status", status, "err", err)
		}
		// For HEAD too: net/http drops the body, and the headers (type,
		// length) are those GET would have.
		if err := c.JSON(status, Envelope{Error: body}); err != nil {
			log.WarnContext(c.Request().Context(), "write error response", "err", err)
		}
	}
}

func toError(err error) *errs.Error {
	var e *errs.Error
	if errors.As(err, &e) {
		return e
	}
	var he *echo.HTTPError
	if errors.As(err, &he) {
		switch he.Code {
		case http.StatusNotFound:
			return errs.New(errs.KindNotFound, errs.CodeNotFound, "no such route")
		case http.StatusMethodNotAllowed:
			return errs.New(errs.KindMethodNotAllowed, errs.CodeMethodNotAllowed, "method not allowed on this route")
		case http.StatusRequestEntityTooLarge:
			return errs.New(errs.KindTooLarge, errs.CodeTooLarge, "request body is larger than the configured limit")
		case http.StatusUnsupportedMediaType:
			return errs.New(errs.KindUnsupportedMedia, errs.CodeUnsupportedMedia, "unsupported content type")
		case http.StatusBadRequest:
			return errs.InvalidJSON("malformed request")
		case http.StatusServiceUnavailable:
			return errs.Unavailable("service", err)
		}
		if he.Code >= 400 && he.Code < 500 {
			return &errs.Error{Kind: errs.KindValidation, Code: errs.CodeValidation, Message: http.StatusText(he.Code)}
		}
	}
	return &errs.Error{Kind: errs.KindInternal, Code: errs.CodeInternal, Err: err}
}
