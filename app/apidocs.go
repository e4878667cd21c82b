package app

import (
	"bytes"
	"context"
	"crypto/sha256"
	"embed"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"net/http"
	"strings"
	"sync"

	"github.com/getkin/kin-openapi/openapi3"
	"github.com/labstack/echo/v4"
)

// openapiYAML is the service's published contract. It is embedded, not read
// at run time, so the binary always serves the contract it was built with.
//
//go:embed openapi.yaml
var openapiYAML []byte

// docsFiles holds the vendored Swagger UI (see docs/README.md). Serving it
// from the binary keeps /docs working without network access.
//
//go:embed docs/*
var docsFiles embed.FS

// loadedOpenAPI is the parsed contract and its JSON, built once: parsing
// and validating the document costs milliseconds, and every test that
// checks responses against it shares the result.
var loadedOpenAPI = sync.OnceValues(func() (openAPIDoc, error) {
	loader := openapi3.NewLoader()
	doc, err := loader.LoadFromData(openapiYAML)
	if err != nil {
		return openAPIDoc{}, fmt.Errorf("parse openapi.yaml: %w", err)
	}
	if err := doc.Validate(context.Background()); err != nil {
		return openAPIDoc{}, fmt.Errorf("validate openapi.yaml: %w", err)
	}
	var buf bytes.Buffer
	enc := json.NewEncoder(&buf)
	enc.SetEscapeHTML(false) // descriptions hold "<key>"; keep them readable
	if err := enc.Encode(doc); err != nil {
		return openAPIDoc{}, fmt.Errorf("encode openapi.yaml as JSON: %w", err)
	}
	return openAPIDoc{doc: doc, json: buf.Bytes()}, nil
})

type openAPIDoc struct {
	doc  *openapi3.T
	json []byte
}

// loadOpenAPI returns the embedded contract, validated, and its JSON
// encoding. Both are shared by every caller and must not be modified.
func loadOpenAPI() (*openapi3.T, []byte, error) {
	d, err := loadedOpenAPI()
	return d.doc, d.json, err
}

// docsPage renders /openapi.json with the vendored Swagger UI. It loads
// nothing from another origin; validatorUrl null stops Swagger UI from
// sending the document to validator.swagger.io for a badge.
const docsPage = `<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>Campaign dispatch API</title>
<link rel="stylesheet" href="/docs/swagger-ui.css">
</head>
<body>
<div id="swagger-ui"></div>
<script src="/docs/swagger-ui-bundle.js"></script>
<script>
window.ui = SwaggerUIBundle({url: "/openapi.json", dom_id: "#swagger-ui", deepLinking: true, validatorUrl: null});
</script>
</body>
</html>
`

// docsAsset is one file /docs/:asset serves.
type docsAsset struct {
	contentType string
	body        []byte
	etag        string
}

// registerDocs serves the contract: GET /openapi.json, the Swagger UI page
// GET /docs and its two assets under GET /docs/:asset. Any other asset name
// is a 404 through the app's error handler. The contract and the assets
// change only with the binary, so they are sent with a strong ETag and
// "no-cache": clients keep a copy and revalidate it (a 304) rather than
// show a stale contract after an upgrade.
func registerDocs(e *echo.Echo) error {
	_, spec, err := loadOpenAPI()
	if err != nil {
		return err
	}
	assets := make(map[string]docsAsset, 2)
	for name, contentType := range map[string]string{
		"swagger-ui-bundle.js": "text/javascript; charset=utf-8",
		"swagger-ui.css":       "text/css; charset=utf-8",
	} {
		body, err := docsFiles.ReadFile("docs/" + name)
		if err != nil {
			return fmt.Errorf("docs asset %s: %w", name, err)
		}
		assets[name] = docsAsset{contentType: contentType, body: body, etag: etagOf(body)}
	}
	specAsset := docsAsset{contentType: echo.MIMEApplicationJSON, body: spec, etag: etagOf(spec)}

	e.GET("/openapi.json", func(c echo.Context) error { return serveCached(c, specAsset) })
	e.GET("/docs", func(c echo.Context) error { return c.HTML(http.StatusOK, docsPage) })
	e.GET("/docs/:asset", func(c echo.Context) error {
		a, ok := assets[c.Param("asset")]
		if !ok {
			return echo.ErrNotFound
		}
		return serveCached(c, a)
	})
	return nil
}

func etagOf(body []byte) string {
	sum := sha256.Sum256(body)
	return `"` + hex.EncodeToString(sum[:16]) + `"`
}

// serveCached writes a, or 304 when the client's copy is current.
func serveCached(c echo.Context, a docsAsset) error {
	h := c.Response().Header()
	h.Set(echo.HeaderCacheControl, "no-cache")
	h.Set("ETag", a.etag)
	if etagMatches(c.Request().Header.Get("If-None-Match"), a.etag) {
		return c.NoContent(http.StatusNotModified)
	}
	return c.Blob(http.StatusOK, a.contentType, a.body)
}

// etagMatches implements If-None-Match's weak comparison (RFC 9110 13.1.2)
// against one strong tag.
func etagMatches(header, etag string) bool {
	for _, t := range strings.Split(header, ",") {
		t = strings.TrimPrefix(strings.TrimSpace(t), "W/")
		if t == "*" || t == etag {
			return true
		}
	}
	return false
}
