package app

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"regexp"
	"sort"
	"strconv"
	"strings"
	"sync"
	"testing"

	"github.com/getkin/kin-openapi/openapi3"
	"github.com/getkin/kin-openapi/openapi3filter"
	"github.com/getkin/kin-openapi/routers"
	"github.com/getkin/kin-openapi/routers/legacy"
	"github.com/labstack/echo/v4"

	"github.com/campaignd/dispatch/platform/httpx"
)

// publicOperations need no API key (API.md, "Authentication, scopes and
// rate limits"); the document marks them with security: [].
var publicOperations = map[string]bool{
	"GET /livez":        true,
	"GET /readyz":       true,
	"GET /health":       true,
	"GET /metrics":      true,
	"GET /openapi.json": true,
	"GET /docs":         true,
	"GET /docs/{asset}": true,
	// The providers' webhooks authenticate themselves (signature, secret).
	"POST /webhooks/twilio/status":           true,
	"POST /webhooks/twilio/inbound":          true,
	"POST /webhooks/africastalking/delivery": true,
	"POST /webhooks/africastalking/inbound":  true,
}

// TestOpenAPIDocumentIsValid checks the contract itself: it parses and
// validates, every operation is named, summarised and tagged, exactly the
// public operations opt out of the bearer requirement, every protected one
// documents 401, 403 and 429, and every error response uses the one error
// envelope.
func TestOpenAPIDocumentIsValid(t *testing.T) {
	doc, spec, err := loadOpenAPI()
	if err != nil {
		t.Fatal(err)
	}
	if err := doc.Validate(context.Background()); err != nil {
		t.Fatalf("document does not validate: %v", err)
	}
	var head struct {
		OpenAPI string `json:"openapi"`
	}
	if err := json.Unmarshal(spec, &head); err != nil || head.OpenAPI != "3.0.3" {
		t.Errorf("JSON encoding: openapi = %q, err %v; want 3.0.3", head.OpenAPI, err)
	}
	if len(doc.Security) != 1 || doc.Security[0]["bearerAuth"] == nil {
		t.Errorf("global security = %v, want bearerAuth", doc.Security)
	}

	envelope := doc.Components.Schemas["Error"]
	for path, item := range doc.Paths.Map() {
		for method, op := range item.Operations() {
			name := method + " " + path
			if op.OperationID == "" || op.Summary == "" || len(op.Tags) != 1 {
				t.Errorf("%s: operationId %q, summary %q, tags %v; want all three (one tag)", name, op.OperationID, op.Summary, op.Tags)
			}
			public := op.Security != nil && len(*op.Security) == 0
			if public != publicOperations[name] {
				t.Errorf("%s: public = %v, want %v", name, public, publicOperations[name])
			}
			if !public {
				for _, status := range []string{"401", "403", "429"} {
					if op.Responses.Value(status) == nil {
						t.Errorf("%s: protected but does not document %s", name, status)
					}
				}
			}
			for status, ref := range op.Responses.Map() {
				// The probes answer 503 with their own body, which names the
				// failing check; every other failure is the envelope.
				code, _ := strconv.Atoi(status)
				probe503 := code == 503 && (name == "GET /health" || name == "GET /readyz")
				if code < 400 || probe503 {
					continue
				}
				mt := ref.Value.Content.Get("application/json")
				if mt == nil || mt.Schema == nil || mt.Schema.Value != envelope.Value {
					t.Errorf("%s: %s does not answer with the Error envelope", name, status)
				}
			}
		}
	}
	ops := openAPIOperations(doc)
	for name := range publicOperations {
		if i := sort.SearchStrings(ops, name); i == len(ops) || ops[i] != name {
			t.Errorf("public operation %s is not in the document", name)
		}
	}
	t.Logf("%d paths, %d operations", doc.Paths.Len(), len(ops))
}

// TestOpenAPIValidatorCatchesDrift checks the response validator itself:
// conforming answers pass, and each kind of drift is reported.
func TestOpenAPIValidatorCatchesDrift(t *testing.T) {
	v := sharedOpenAPIValidator(t)
	errEnvelope := `{"error":{"code":"NOT_FOUND","message":"no such route"}}`
	for _, tc := range []struct {
		name, method, path string
		status             int
		header             http.Header
		body               string
		wantErr            string // "" for conforming
	}{
		{"conforming", "GET", "/livez", 200, jsonHeader(), `{"status":"ok"}`, ""},
		{"unknown route", "GET", "/nope", 404, jsonHeader(), errEnvelope, ""},
		{"wrong method", "DELETE", "/campaigns", 405, jsonHeader(),
			`{"error":{"code":"METHOD_NOT_ALLOWED","message":"method not allowed on this route"}}`, ""},
		{"HEAD is not checked", "HEAD", "/livez", 405, http.Header{}, "", ""},
		{"wrong enum", "GET", "/livez", 200, jsonHeader(), `{"status":"fine"}`, "doesn't match schema"},
		{"undocumented status", "GET", "/livez", 500, jsonHeader(), errEnvelope, "status is not supported"},
		{"undocumented route", "GET", "/nope", 200, jsonHeader(), `{}`, "not in the OpenAPI document"},
		{"404 that is not the envelope", "GET", "/nope", 404, jsonHeader(), `{"message":"Not Found"}`, "not in the OpenAPI document"},
		{"missing required field", "GET", "/campaigns/1", 200, jsonHeader(), `{"id":1}`, "doesn't match schema"},
		{"missing required header", "GET", "/campaigns", 401, jsonHeader(),
			`{"error":{"code":"UNAUTHENTICATED","message":"a valid API key is required"}}`, `"WWW-Authenticate" missing`},
		{"wrong content type", "GET", "/livez", 200, http.Header{"Content-Type": {"text/html"}}, `ok`, "Content-Type"},
		{"metrics as text", "GET", "/metrics", 200,
			http.Header{"Content-Type": {"text/plain; version=0.0.4; charset=utf-8"}}, "# HELP x y\nx 1\n", ""},
		{"no content", "DELETE", "/api-keys/7", 204, http.Header{}, "", ""},
	} {
		t.Run(tc.name, func(t *testing.T) {
			req := httptest.NewRequest(tc.method, "http://127.0.0.1:1"+tc.path, nil)
			err := v.check(req, tc.status, tc.header, []byte(tc.body))
			switch {
			case tc.wantErr == "" && err != nil:
				t.Errorf("conforming response rejected: %v", err)
			case tc.wantErr != "" && err == nil:
				t.Errorf("drift not reported, want an error containing %q", tc.wantErr)
			case tc.wantErr != "" && !strings.Contains(err.Error(), tc.wantErr):
				t.Errorf("error %q, want one containing %q", err, tc.wantErr)
			}
		})
	}
}

func jsonHeader() http.Header { return http.Header{"Content-Type": {"application/json"}} }

// TestDocsServed serves the contract and Swagger UI from a bare Echo with
// the app's error handler, through the validating transport, so the docs
// routes are checked against the document they serve.
func TestDocsServed(t *testing.T) {
	e := echo.New()
	e.HTTPErrorHandler = httpx.ErrorHandler(slog.New(slog.NewTextHandler(io.Discard, nil)))
	if err := registerDocs(e); err != nil {
		t.Fatal(err)
	}
	srv := httptest.NewServer(e)
	t.Cleanup(srv.Close)
	client := &http.Client{Transport: validatingTransport(t, http.DefaultTransport)}

	get := func(path string, header ...string) (*http.Response, string) {
		t.Helper()
		req, err := http.NewRequest(http.MethodGet, srv.URL+path, nil)
		if err != nil {
			t.Fatal(err)
		}
		for i := 0; i+1 < len(header); i += 2 {
			req.Header.Set(header[i], header[i+1])
		}
		resp, err := client.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		body, err := io.ReadAll(resp.Body)
		if err != nil {
			t.Fatal(err)
		}
		return resp, string(body)
	}

	resp, body := get("/openapi.json")
	var spec struct {
		OpenAPI string         `json:"openapi"`
		Paths   map[string]any `json:"paths"`
	}
	if resp.StatusCode != http.StatusOK || !strings.HasPrefix(resp.Header.Get("Content-Type"), "application/json") {
		t.Fatalf("/openapi.json = %d %s", resp.StatusCode, resp.Header.Get("Content-Type"))
	}
	if err := json.Unmarshal([]byte(body), &spec); err != nil || spec.OpenAPI != "3.0.3" || spec.Paths["/campaigns/{id}/send"] == nil {
		t.Errorf("/openapi.json: openapi %q, %d paths, err %v", spec.OpenAPI, len(spec.Paths), err)
	}
	etag := resp.Header.Get("ETag")
	if resp, _ := get("/openapi.json", "If-None-Match", etag); etag == "" || resp.StatusCode != http.StatusNotModified {
		t.Errorf("/openapi.json revalidated with ETag %q = %d, want 304", etag, resp.StatusCode)
	}

	resp, body = get("/docs")
	if resp.StatusCode != http.StatusOK || !strings.HasPrefix(resp.Header.Get("Content-Type"), "text/html") {
		t.Errorf("/docs = %d %s", resp.StatusCode, resp.Header.Get("Content-Type"))
	}
	for _, want := range []string{`src="/docs/swagger-ui-bundle.js"`, `href="/docs/swagger-ui.css"`, `"/openapi.json"`} {
		if !strings.Contains(body, want) {
			t.Errorf("/docs does not contain %s", want)
		}
	}
	if urls := regexp.MustCompile(`(?i)(https?:)?//[a-z0-9.-]+`).FindAllString(body, -1); len(urls) > 0 {
		t.Errorf("/docs refers to other origins: %v", urls)
	}

	for path, wantType := range map[string]string{
		"/docs/swagger-ui-bundle.js": "text/javascript",
		"/docs/swagger-ui.css":       "text/css",
	} {
		resp, body := get(path)
		if resp.StatusCode != http.StatusOK || !strings.HasPrefix(resp.Header.Get("Content-Type"), wantType) || len(body) < 10_000 {
			t.Errorf("%s = %d %s, %d bytes", path, resp.StatusCode, resp.Header.Get("Content-Type"), len(body))
		}
	}

	for _, path := range []string{"/docs/nope", "/docs/README.md", "/docs/LICENSE", "/docs/..%2fopenapi.yaml"} {
		resp, body := get(path)
		var env struct {
			Error struct{ Code string } `json:"error"`
		}
		if err := json.Unmarshal([]byte(body), &env); resp.StatusCode != http.StatusNotFound || err != nil || env.Error.Code != "NOT_FOUND" {
			t.Errorf("%s = %d %s, want 404 NOT_FOUND", path, resp.StatusCode, body)
		}
	}
}

// openAPIValidator checks responses against the published contract. One is
// built per test binary (sharedOpenAPIValidator) and shared by every test:
// it is read-only after construction.
type openAPIValidator struct {
	router routers.Router
	opts   *openapi3filter.Options
}

var openAPIValidatorOnce = sync.OnceValues(func() (*openAPIValidator, error) {
	doc, _, err := loadOpenAPI()
	if err != nil {
		return nil, err
	}
	router, err := legacy.NewRouter(doc)
	if err != nil {
		return nil, err
	}
	// The docs assets and page are text; decode them as the strings their
	// schemas say. (text/plain and text/csv have decoders already.)
	for _, ct := range []string{"text/html", "text/javascript", "text/css"} {
		if openapi3filter.RegisteredBodyDecoder(ct) == nil {
			openapi3filter.RegisterBodyDecoder(ct, openapi3filter.PlainBodyDecoder)
		}
	}
	return &openAPIValidator{
		router: router,
		opts:   &openapi3filter.Options{IncludeResponseStatus: true, MultiError: true},
	}, nil
})

// sharedOpenAPIValidator returns the package's validator, failing t if the
// document cannot be loaded.
func sharedOpenAPIValidator(t testing.TB) *openAPIValidator {
	t.Helper()
	v, err := openAPIValidatorOnce()
	if err != nil {
		t.Fatalf("load the OpenAPI document: %v", err)
	}
	return v
}

// validatingTransport wraps next (http.DefaultTransport when nil) so that
// every response is checked against the OpenAPI document: its status must
// be documented for the operation, and its declared headers and body must
// match their schemas. A response that does not conform, or a request the
// document has no operation for, is reported with t.Errorf; the test goes
// on. The one exception is the router's own answer to a request a test
// sends on purpose to an unknown route or with a wrong method: 404
// NOT_FOUND or 405 METHOD_NOT_ALLOWED in the error envelope conforms
// whatever the path. HEAD responses have no body and are not checked.
//
// The body is read in full and put back, so the caller reads it as usual.
func validatingTransport(t testing.TB, next http.RoundTripper) http.RoundTripper {
	t.Helper()
	if next == nil {
		next = http.DefaultTransport
	}
	return &validatingRoundTripper{t: t, v: sharedOpenAPIValidator(t), next: next}
}

type validatingRoundTripper struct {
	t    testing.TB
	v    *openAPIValidator
	next http.RoundTripper
}

func (rt *validatingRoundTripper) RoundTrip(req *http.Request) (*http.Response, error) {
	resp, err := rt.next.RoundTrip(req)
	if err != nil {
		return nil, err
	}
	body, err := io.ReadAll(resp.Body)
	resp.Body.Close()
	if err != nil {
		return nil, fmt.Errorf("read the response to check it against the OpenAPI document: %w", err)
	}
	resp.Body = io.NopCloser(bytes.NewReader(body))
	if err := rt.v.check(req, resp.StatusCode, resp.Header, body); err != nil {
		rt.t.Errorf("OpenAPI contract: %s %s → %d: %v\nbody: %.500s", req.Method, req.URL.RequestURI(), resp.StatusCode, err, body)
	}
	return resp, nil
}

// check validates one response to req against the document.
func (v *openAPIValidator) check(req *http.Request, status int, header http.Header, body []byte) error {
	if req.Method == http.MethodHead {
		return nil
	}
	if isRouterError(status, body) {
		return nil
	}
	route, pathParams, err := v.router.FindRoute(req)
	if err != nil {
		var re *routers.RouteError
		if errors.As(err, &re) {
			return fmt.Errorf("not in the OpenAPI document: %s", re.Reason)
		}
		return fmt.Errorf("not in the OpenAPI document: %w", err)
	}
	in := &openapi3filter.ResponseValidationInput{
		RequestValidationInput: &openapi3filter.RequestValidationInput{
			Request:    req,
			PathParams: pathParams,
			Route:      route,
			Options:    v.opts,
		},
		Status:  status,
		Header:  header,
		Options: v.opts,
	}
	in.SetBodyBytes(body)
	return openapi3filter.ValidateResponse(req.Context(), in)
}

// isRouterError reports whether a response is Echo's answer to an unknown
// route (404 NOT_FOUND) or a wrong method (405 METHOD_NOT_ALLOWED) in the
// error envelope. Such answers are not operations of the document, and a
// worker-only replica gives them for documented routes too.
func isRouterError(status int, body []byte) bool {
	want := map[int]string{http.StatusNotFound: "NOT_FOUND", http.StatusMethodNotAllowed: "METHOD_NOT_ALLOWED"}[status]
	if want == "" {
		return false
	}
	var env struct {
		Error *struct {
			Code    string `json:"code"`
			Message string `json:"message"`
		} `json:"error"`
	}
	return json.Unmarshal(body, &env) == nil && env.Error != nil && env.Error.Code == want && env.Error.Message != ""
}

// openAPIOperations lists the document's operations as "METHOD /path",
// sorted, for tests that compare them with the routes the app serves.
func openAPIOperations(doc *openapi3.T) []string {
	var out []string
	for path, item := range doc.Paths.Map() {
		for method := range item.Operations() {
			out = append(out, method+" "+path)
		}
	}
	sort.Strings(out)
	return out
}
