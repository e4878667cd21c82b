package dashboard

import (
	"bytes"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/url"

	"github.com/labstack/echo/v4"
)

// apiError is the API's error envelope, shown to the user as it is: its
// message is written for people.
type apiError struct {
	Status  int
	Code    string         `json:"code"`
	Message string         `json:"message"`
	Details map[string]any `json:"details"`
}

func (e *apiError) Error() string { return fmt.Sprintf("%s: %s", e.Code, e.Message) }

// recorder is the in-process response: headers, status and body.
type recorder struct {
	header http.Header
	status int
	body   bytes.Buffer
}

func (r *recorder) Header() http.Header { return r.header }
func (r *recorder) Write(b []byte) (int, error) {
	if r.status == 0 {
		r.status = http.StatusOK
	}
	return r.body.Write(b)
}
func (r *recorder) WriteHeader(s int) {
	if r.status == 0 {
		r.status = s
	}
}

// apiRequest builds a request to the API on behalf of the session, keeping
// the browser request's context, client address and request id (so the
// API's log lines join the page's).
func (d *Dashboard) apiRequest(c echo.Context, method, path, contentType string, body io.Reader) *http.Request {
	in := c.Request()
	req, _ := http.NewRequestWithContext(in.Context(), method, path, body)
	req.RemoteAddr = in.RemoteAddr
	req.Header.Set("Authorization", "Bearer "+sessionOf(c).Key)
	if contentType != "" {
		req.Header.Set("Content-Type", contentType)
	}
	if id := c.Response().Header().Get(echo.HeaderXRequestID); id != "" {
		req.Header.Set(echo.HeaderXRequestID, id)
	}
	return req
}

// call sends method path (with a JSON body unless in is nil) to the API and
// decodes a 2xx answer into out. Any other answer is an *apiError.
func (d *Dashboard) call(c echo.Context, method, path string, in, out any) error {
	var body io.Reader
	ct := ""
	if in != nil {
		b, err := json.Marshal(in)
		if err != nil {
			return err
		}
		body, ct = bytes.NewReader(b), "application/json"
	}
	return d.callRaw(c, method, path, ct, body, out)
}

func (d *Dashboard) callRaw(c echo.Context, method, path, contentType string, body io.Reader, out any) error {
	rec := &recorder{header: http.Header{}}
	d.opts.API.ServeHTTP(rec, d.apiRequest(c, method, path, contentType, body))
	if rec.status >= 200 && rec.status < 300 {
		if out == nil {
			return nil
		}
		return json.Unmarshal(rec.body.Bytes(), out)
	}
	var env struct {
		Error apiError `json:"error"`
	}
	if err := json.Unmarshal(rec.body.Bytes(), &env); err != nil || env.Error.Code == "" {
		env.Error = apiError{Code: http.StatusText(rec.status), Message: rec.body.String()}
	}
	env.Error.Status = rec.status
	return &env.Error
}

// query encodes the non-empty values of kv (name, value, name, value...).
func query(kv ...string) string {
	v := url.Values{}
	for i := 0; i+1 < len(kv); i += 2 {
		if kv[i+1] != "" {
			v.Set(kv[i], kv[i+1])
		}
	}
	if len(v) == 0 {
		return ""
	}
	return "?" + v.Encode()
}
