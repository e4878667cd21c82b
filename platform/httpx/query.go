package httpx

import (
	"net/url"
	"strings"

	"github.com/labstack/echo/v4"

	"github.com/campaignd/dispatch/platform/errs"
)

// Query returns the request's query parameters, or a VALIDATION_ERROR when
// the query string cannot be decoded (a malformed escape such as %zz, or a
// ';' separator), naming the parameter where it can. Echo's QueryParams and
// url.URL.Query drop such pairs silently, so "?page=%zz" would be served as
// page 1; handlers read their parameters through Query instead.
func Query(c echo.Context) (url.Values, error) {
	raw := c.Request().URL.RawQuery
	q, err := url.ParseQuery(raw)
	if err == nil {
		return q, nil
	}
	for pair := range strings.SplitSeq(raw, "&") {
		if strings.Contains(pair, ";") {
			return nil, errs.Validation("query", "the query string separates parameters with ';'; use '&'")
		}
		k, v, _ := strings.Cut(pair, "=")
		key, kerr := url.QueryUnescape(k)
		if kerr != nil {
			return nil, errs.Validation("query", "the query string has a malformed parameter name %s: %s",
				errs.Quote(k), escapeProblem(kerr))
		}
		if _, verr := url.QueryUnescape(v); verr != nil {
			return nil, errs.Validation(errs.Clip(key), "query parameter %s is malformed: %s",
				errs.Quote(key), escapeProblem(verr))
		}
	}
	return nil, errs.Validation("query", "the query string is malformed: %s", errs.Clip(err.Error()))
}

// escapeProblem describes an unescaping error without repeating more of the
// client's text than the bad escape itself.
func escapeProblem(err error) string {
	if e, ok := err.(url.EscapeError); ok {
		return "invalid escape " + errs.Quote(string(e)) + " (a % must be followed by two hex digits; write %25 for %)"
	}
	return errs.Clip(err.Error())
}
