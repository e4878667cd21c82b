package app

import (
	"regexp"
	"sort"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"
	"github.com/labstack/echo/v4"

	"github.com/campaignd/dispatch/dashboard"
)

// TestRoutesMatchOpenAPI keeps the published contract and the router in
// step both ways: every route Echo serves is in app/openapi.yaml, and every
// operation there is served.
func TestRoutesMatchOpenAPI(t *testing.T) {
	t.Parallel()
	doc, _, err := loadOpenAPI()
	if err != nil {
		t.Fatal(err)
	}
	var documented []string
	for path, item := range doc.Paths.Map() {
		for method := range item.Operations() {
			documented = append(documented, method+" "+path)
		}
	}

	ta := startApp(t, testConfig(t))
	param := regexp.MustCompile(`:(\w+)`)
	var served []string
	for _, r := range ta.server.Handler.(*echo.Echo).Routes() {
		if dashboard.IsRoute(r.Path) {
			continue // the web dashboard's pages, not API
		}
		served = append(served, r.Method+" "+param.ReplaceAllString(r.Path, "{$1}"))
	}
	sort.Strings(documented)
	sort.Strings(served)
	if diff := cmp.Diff(documented, served); diff != "" {
		t.Errorf("routes in openapi.yaml (-) and served by Echo (+) differ:\n%s", diff)
	}
	if len(served) < 20 || !strings.Contains(strings.Join(served, ","), "GET /campaigns/{id}") {
		t.Errorf("served routes look wrong: %v", served)
	}
}
