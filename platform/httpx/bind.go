package httpx

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"mime"
	"net/http"
	"strconv"
	"strings"

	"github.com/labstack/echo/v4"

	"github.com/campaignd/dispatch/platform/errs"
)

// BindJSON decodes the request body into dst strictly (see DecodeJSON): the
// content type must be JSON; unknown, repeated and wrongly-cased keys and
// trailing data are rejected; and every decoding problem becomes an
// INVALID_JSON error that names the offending field.
func BindJSON(c echo.Context, dst any) error {
	if err := RequireContentType(c, "application/json"); err != nil {
		return err
	}
	r := c.Request()
	buf := bytes.NewBuffer(make([]byte, 0, min(max(r.ContentLength, 0), 1<<20)+bytes.MinRead))
	if _, err := buf.ReadFrom(r.Body); err != nil {
		var he *echo.HTTPError
		if errors.As(err, &he) {
			return err // Echo's body limit: the error handler makes it a 413
		}
		return decodeError(err)
	}
	return DecodeJSON(buf.Bytes(), dst)
}

// RequireContentType rejects a request whose Content-Type is not one of want.
func RequireContentType(c echo.Context, want ...string) error {
	ct := c.Request().Header.Get(echo.HeaderContentType)
	mt, _, err := mime.ParseMediaType(ct)
	if err == nil {
		for _, w := range want {
			if strings.EqualFold(mt, w) {
				return nil
			}
		}
	}
	if ct == "" {
		ct = "none"
	}
	return errs.New(errs.KindUnsupportedMedia, errs.CodeUnsupportedMedia,
		fmt.Sprintf("content type %s is not supported here; send %s", errs.Clip(ct), strings.Join(want, " or ")))
}

func decodeError(err error) error {
	var syn *json.SyntaxError
	var typ *json.UnmarshalTypeError
	switch {
	case tooLarge(err):
		return errs.New(errs.KindTooLarge, errs.CodeTooLarge, "request body is larger than the configured limit")
	case errors.Is(err, io.EOF):
		return errs.InvalidJSON("request body is empty; a JSON object is required")
	case errors.Is(err, io.ErrUnexpectedEOF):
		return errs.InvalidJSON("request body is truncated JSON")
	case errors.As(err, &syn):
		return errs.InvalidJSON("malformed JSON at byte %d", syn.Offset)
	case errors.As(err, &typ):
		// Value is the JSON's kind, followed for numbers by the literal
		// itself, which may be a megabyte of digits.
		if typ.Field == "" {
			return errs.InvalidJSON("request body must be %s, not %s", jsonKind(typ.Type.Kind().String()), errs.Clip(typ.Value))
		}
		return errs.InvalidJSON("field %s must be %s, not %s", errs.Quote(typ.Field), jsonKind(typ.Type.Kind().String()), errs.Clip(typ.Value)).
			WithDetail("field", errs.Clip(typ.Field))
	case strings.HasPrefix(err.Error(), "json: unknown field "):
		field := strings.Trim(strings.TrimPrefix(err.Error(), "json: unknown field "), `"`)
		return errs.InvalidJSON("unknown field %s", errs.Quote(field)).WithDetail("field", errs.Clip(field))
	}
	return errs.InvalidJSON("invalid JSON: %s", errs.Clip(err.Error()))
}

// tooLarge reports whether err is a body limit's: net/http's MaxBytesReader,
// or Echo's BodyLimit middleware, whose reader returns
// echo.ErrStatusRequestEntityTooLarge (an *echo.HTTPError) from Read when a
// body without a Content-Length to refuse up front (chunked) runs over.
func tooLarge(err error) bool {
	var mbe *http.MaxBytesError
	var he *echo.HTTPError
	return errors.As(err, &mbe) || errors.As(err, &he) && he.Code == http.StatusRequestEntityTooLarge
}

func jsonKind(goKind string) string {
	switch goKind {
	case "int", "int8", "int16", "int32", "int64", "uint", "uint8", "uint16", "uint32", "uint64":
		return "an integer"
	case "float32", "float64":
		return "a number"
	case "string":
		return "a string"
	case "bool":
		return "a boolean"
	case "slice", "array":
		return "an array"
	case "struct", "map":
		return "an object"
	}
	return "a " + goKind
}

// PathID parses the positive integer path parameter name.
func PathID(c echo.Context, name string) (int64, error) {
	raw := c.Param(name)
	id, err := strconv.ParseInt(raw, 10, 64)
	if err != nil || id <= 0 || strings.TrimLeft(raw, "0123456789") != "" {
		return 0, errs.Validation(name, "%s must be a positive integer, got %s", name, errs.Quote(raw))
	}
	return id, nil
}

// IsJSON reports whether body looks like a JSON document (used to sniff
// endpoints that take JSON or CSV).
func IsJSON(body []byte) bool {
	b := bytes.TrimLeft(body, " \t\r\n\ufeff")
	return len(b) > 0 && (b[0] == '[' || b[0] == '{')
}
