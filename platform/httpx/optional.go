package httpx

import (
	"bufio"
	"errors"
	"io"
	"net/http"

	"github.com/labstack/echo/v4"

	"github.com/campaignd/dispatch/platform/errs"
)

// BindEmptyJSON checks the body of a route that takes none (a lifecycle
// action): no body, or an empty JSON object. A body of anything else, or a
// request that declares any content type but application/json, is refused
// (415 UNSUPPORTED_MEDIA_TYPE, or 400 INVALID_JSON for JSON that is not {}).
//
// Declaring a type is refused even with an empty body because a form is how
// a page on another site makes a browser post here without a CORS preflight:
// forms always declare one (application/x-www-form-urlencoded,
// multipart/form-data or text/plain), while a JSON request from another
// origin needs a preflight that this API never grants.
func BindEmptyJSON(c echo.Context) error {
	var fields map[string]rawJSON
	sent, err := BindOptionalJSON(c, &fields)
	switch {
	case err != nil:
		return err
	case !sent:
		return nil
	case fields == nil:
		return errs.InvalidJSON("request body must be an empty JSON object, {}, or no body at all")
	}
	for name := range fields {
		return errs.InvalidJSON("unknown field %s; this request takes no fields", errs.Quote(name)).
			WithDetail("field", errs.Clip(name))
	}
	return nil
}

// rawJSON holds a value BindEmptyJSON only needs to know exists.
type rawJSON struct{}

func (*rawJSON) UnmarshalJSON([]byte) error { return nil }

// BindOptionalJSON is BindJSON for a body that may be left out: no body, or
// one of only white space, leaves dst alone and reports false. A request
// with a body, or one that declares a content type, must declare
// application/json (415 otherwise), so that leaving the body out never lets
// another media type through.
func BindOptionalJSON(c echo.Context, dst any) (bool, error) {
	if c.Request().Header.Get(echo.HeaderContentType) != "" {
		if err := RequireContentType(c, "application/json"); err != nil {
			return false, err
		}
	}
	sent, err := HasBody(c.Request())
	if err != nil {
		if tooLarge(err) {
			return false, errs.New(errs.KindTooLarge, errs.CodeTooLarge, "request body is larger than the configured limit")
		}
		return false, errs.Validation("body", "reading the request body failed: %v", err)
	}
	if !sent {
		return false, nil
	}
	return true, BindJSON(c, dst)
}

// HasBody reports whether r carries a body with anything but white space in
// it. Reading stops at the first other byte, which is left for the decoder:
// r.Body is replaced by a reader that starts with it. An error is the body
// limit's 413 or a broken connection.
func HasBody(r *http.Request) (bool, error) {
	if r.Body == nil || r.Body == http.NoBody {
		return false, nil
	}
	br := bufio.NewReader(r.Body)
	for {
		b, err := br.ReadByte()
		if errors.Is(err, io.EOF) {
			return false, nil
		}
		if err != nil {
			return false, err
		}
		if b != ' ' && b != '\t' && b != '\r' && b != '\n' {
			_ = br.UnreadByte() // cannot fail straight after ReadByte
			break
		}
	}
	r.Body = struct {
		io.Reader
		io.Closer
	}{br, r.Body}
	return true, nil
}
