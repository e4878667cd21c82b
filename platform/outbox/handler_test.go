package outbox

import (
	"encoding/json"
	"net/http"
	"net/http/httptest"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/labstack/echo/v4"

	"github.com/campaignd/dispatch/platform/auth"
	"github.com/campaignd/dispatch/platform/httpx"
	"github.com/campaignd/dispatch/platform/postgres/pgtest"
	"github.com/campaignd/dispatch/platform/webhooksig"
)

// apiEnv serves the endpoints API as the app does: the error handler, key
// authentication, and Register's routes.
type apiEnv struct {
	db              *pgtest.DB
	e               *echo.Echo
	admin, write    string // keys
	readKey, noAuth string
}

func newAPIEnv(t *testing.T) *apiEnv {
	t.Helper()
	db := newDB(t)
	keys := auth.NewStore(db.DB)
	env := &apiEnv{db: db, admin: auth.NewSecret(), write: auth.NewSecret(), readKey: auth.NewSecret()}
	for secret, scope := range map[string]auth.Scope{env.admin: auth.ScopeAdmin, env.write: auth.ScopeWrite, env.readKey: auth.ScopeRead} {
		if _, err := keys.Create(t.Context(), string(scope), scope, secret); err != nil {
			t.Fatal(err)
		}
	}
	e := echo.New()
	e.HTTPErrorHandler = httpx.ErrorHandler(discardLog())
	e.Use(auth.Middleware(auth.NewAuthenticator(keys, time.Minute), auth.MiddlewareOptions{}))
	NewHandler(NewService(NewStore(db.DB), NewSubscriptions(db.DB, discardLog()), discardLog())).Register(e)
	env.e = e
	return env
}

// do sends a request with key (none if ""); a non-empty body is JSON.
func (env *apiEnv) do(key, method, target, body string) *httptest.ResponseRecorder {
	req := httptest.NewRequest(method, target, strings.NewReader(body))
	if body != "" {
		req.Header.Set(echo.HeaderContentType, echo.MIMEApplicationJSON)
	}
	if key != "" {
		req.Header.Set(echo.HeaderAuthorization, "Bearer "+key)
	}
	rec := httptest.NewRecorder()
	env.e.ServeHTTP(rec, req)
	return rec
}

func decode[T any](t testing.TB, rec *httptest.ResponseRecorder, status int) T {
	t.Helper()
	var v T
	if rec.Code != status {
		t.Fatalf("status %d, want %d; body %s", rec.Code, status, rec.Body)
	}
	if err := json.Unmarshal(rec.Body.Bytes(), &v); err != nil {
		t.Fatalf("decode %s: %v", rec.Body, err)
	}
	return v
}

func wantError(t testing.TB, rec *httptest.ResponseRecorder, status int, code, field string) {
	t.Helper()
	env := decode[httpx.Envelope](t, rec, status)
	if env.Error.Code != code {
		t.Errorf("code %s, want %s (%s)", env.Error.Code, code, env.Error.Message)
	}
	if field != "" && env.Error.Details["field"] != field {
		t.Errorf("details.field = %v, want %s (%s)", env.Error.Details["field"], field, env.Error.Message)
	}
}

func TestCreateListDelete(t *testing.T) {
	t.Parallel()
	env := newAPIEnv(t)
	rec := env.do(env.admin, http.MethodPost, "/webhook-endpoints",
		`{"url":"https://hooks.example.com/dispatch?x=1","events":["campaign.finished","message.failed","campaign.finished"],"description":"CRM sync"}`)
	created := decode[map[string]any](t, rec, http.StatusCreated)
	secret, _ := created["secret"].(string)
	if !strings.HasPrefix(secret, "whsec_") {
		t.Fatalf("secret = %q, want whsec_...", secret)
	}
	if _, err := webhooksig.Sign(secret, "evt_x", time.Now(), []byte("{}")); err != nil {
		t.Errorf("the secret does not sign: %v", err)
	}
	if created["url"] != "https://hooks.example.com/dispatch?x=1" || created["description"] != "CRM sync" || created["enabled"] != true {
		t.Errorf("created = %v", created)
	}
	if ev, _ := json.Marshal(created["events"]); string(ev) != `["campaign.finished","message.failed"]` {
		t.Errorf("events = %s, want the two types once each", ev)
	}
	for _, k := range []string{"id", "created_at", "updated_at", "disabled_at", "disabled_reason", "failing_since"} {
		if _, ok := created[k]; !ok {
			t.Errorf("created has no %s", k)
		}
	}
	id := int64(created["id"].(float64))

	// Without a description.
	decode[map[string]any](t, env.do(env.admin, http.MethodPost, "/webhook-endpoints",
		`{"url":"http://127.0.0.1:8080/h","events":["message.sent"],"description":null}`), http.StatusCreated)

	// The list never shows a secret.
	rec = env.do(env.admin, http.MethodGet, "/webhook-endpoints", "")
	if strings.Contains(rec.Body.String(), "whsec_") || strings.Contains(rec.Body.String(), `"secret"`) {
		t.Errorf("the list shows a secret: %s", rec.Body)
	}
	list := decode[struct{ Data []Endpoint }](t, rec, http.StatusOK)
	if len(list.Data) != 2 || list.Data[1].ID != id || list.Data[0].Description != "" {
		t.Errorf("list = %+v, want 2 endpoints newest first", list.Data)
	}

	path := "/webhook-endpoints/" + strconv.FormatInt(id, 10)
	if rec := env.do(env.admin, http.MethodDelete, path, ""); rec.Code != http.StatusNoContent || rec.Body.Len() != 0 {
		t.Errorf("DELETE: %d %s, want 204 and no body", rec.Code, rec.Body)
	}
	wantError(t, env.do(env.admin, http.MethodDelete, path, ""), http.StatusNotFound, "WEBHOOK_ENDPOINT_NOT_FOUND", "")
	wantError(t, env.do(env.admin, http.MethodGet, path+"/deliveries", ""), http.StatusNotFound, "WEBHOOK_ENDPOINT_NOT_FOUND", "")
	wantError(t, env.do(env.admin, http.MethodDelete, "/webhook-endpoints/abc", ""), http.StatusBadRequest, "VALIDATION_ERROR", "id")
	wantError(t, env.do(env.admin, http.MethodGet, "/webhook-endpoints/0/deliveries", ""), http.StatusBadRequest, "VALIDATION_ERROR", "id")
}

func TestCreateValidation(t *testing.T) {
	t.Parallel()
	env := newAPIEnv(t)
	long := "https://example.com/" + strings.Repeat("a", MaxURLLength-len("https://example.com/")+1)
	tests := []struct {
		name, body, code, field string
		status                  int
	}{
		{"no url", `{"events":["message.sent"]}`, "VALIDATION_ERROR", "url", 400},
		{"relative url", `{"url":"/hooks","events":["message.sent"]}`, "VALIDATION_ERROR", "url", 400},
		{"ftp url", `{"url":"ftp://example.com/x","events":["message.sent"]}`, "VALIDATION_ERROR", "url", 400},
		{"no host", `{"url":"https:///x","events":["message.sent"]}`, "VALIDATION_ERROR", "url", 400},
		{"not a url", `{"url":"http://exa mple.com","events":["message.sent"]}`, "VALIDATION_ERROR", "url", 400},
		{"bad port", `{"url":"http://example.com:99999/","events":["message.sent"]}`, "VALIDATION_ERROR", "url", 400},
		{"fragment", `{"url":"https://example.com/h#frag","events":["message.sent"]}`, "VALIDATION_ERROR", "url", 400},
		{"control character", `{"url":"https://example.com/\u0007","events":["message.sent"]}`, "VALIDATION_ERROR", "url", 400},
		{"url too long", `{"url":"` + long + `","events":["message.sent"]}`, "VALIDATION_ERROR", "url", 400},
		{"no events", `{"url":"https://example.com/h"}`, "VALIDATION_ERROR", "events", 400},
		{"empty events", `{"url":"https://example.com/h","events":[]}`, "VALIDATION_ERROR", "events", 400},
		{"unknown event", `{"url":"https://example.com/h","events":["message.sent","message.exploded"]}`, "VALIDATION_ERROR", "events", 400},
		{"wildcard event", `{"url":"https://example.com/h","events":["message.*"]}`, "VALIDATION_ERROR", "events", 400},
		{"description too long", `{"url":"https://example.com/h","events":["message.sent"],"description":"` + strings.Repeat("é", 501) + `"}`, "VALIDATION_ERROR", "description", 400},
		{"description line break", `{"url":"https://example.com/h","events":["message.sent"],"description":"a\nb"}`, "VALIDATION_ERROR", "description", 400},
		{"events not an array", `{"url":"https://example.com/h","events":"message.sent"}`, "INVALID_JSON", "events", 400},
		{"unknown field", `{"url":"https://example.com/h","events":["message.sent"],"secret":"whsec_mine"}`, "INVALID_JSON", "secret", 400},
		{"not JSON", `{"url":`, "INVALID_JSON", "", 400},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			wantError(t, env.do(env.admin, http.MethodPost, "/webhook-endpoints", tt.body), tt.status, tt.code, tt.field)
		})
	}
	// Exactly at the limits is fine.
	atLimit := "https://example.com/" + strings.Repeat("a", MaxURLLength-len("https://example.com/"))
	decode[map[string]any](t, env.do(env.admin, http.MethodPost, "/webhook-endpoints",
		`{"url":"`+atLimit+`","events":["message.sent"],"description":"`+strings.Repeat("é", 500)+`"}`), http.StatusCreated)

	req := httptest.NewRequest(http.MethodPost, "/webhook-endpoints", strings.NewReader(`url=x`))
	req.Header.Set(echo.HeaderContentType, "application/x-www-form-urlencoded")
	req.Header.Set(echo.HeaderAuthorization, "Bearer "+env.admin)
	rec := httptest.NewRecorder()
	env.e.ServeHTTP(rec, req)
	wantError(t, rec, http.StatusUnsupportedMediaType, "UNSUPPORTED_MEDIA_TYPE", "")

	if n := count(t, env.db.DB, `SELECT count(*) FROM webhook_endpoints`); n != 1 {
		t.Errorf("%d endpoints stored, want 1", n)
	}
}

// TestAdminScope: every route needs an admin key.
func TestAdminScope(t *testing.T) {
	t.Parallel()
	env := newAPIEnv(t)
	body := `{"url":"https://example.com/h","events":["message.sent"]}`
	routes := []struct{ method, path, body string }{
		{http.MethodPost, "/webhook-endpoints", body},
		{http.MethodGet, "/webhook-endpoints", ""},
		{http.MethodDelete, "/webhook-endpoints/1", ""},
		{http.MethodGet, "/webhook-endpoints/1/deliveries", ""},
	}
	for _, r := range routes {
		wantError(t, env.do("", r.method, r.path, r.body), http.StatusUnauthorized, "UNAUTHENTICATED", "")
		wantError(t, env.do(env.write, r.method, r.path, r.body), http.StatusForbidden, "FORBIDDEN", "")
		wantError(t, env.do(env.readKey, r.method, r.path, r.body), http.StatusForbidden, "FORBIDDEN", "")
	}
	if n := count(t, env.db.DB, `SELECT count(*) FROM webhook_endpoints`); n != 0 {
		t.Errorf("%d endpoints stored by keys without admin", n)
	}
}

// TestDeliveriesPaging: newest first, with a cursor that walks every page
// once and is tied to its endpoint.
func TestDeliveriesPaging(t *testing.T) {
	t.Parallel()
	env := newAPIEnv(t)
	ctx := t.Context()
	store := NewStore(env.db.DB)
	ep, err := store.Create(ctx, "https://example.com/h", []string{"message.sent"}, "", "whsec_AAAA")
	if err != nil {
		t.Fatal(err)
	}
	other, err := store.Create(ctx, "https://example.com/o", []string{"message.sent"}, "", "whsec_AAAA")
	if err != nil {
		t.Fatal(err)
	}
	mustExec(t, env.db, `
		INSERT INTO webhook_deliveries (endpoint_id, event_id, event_type, attempt, status_code, duration_ms, error, next_retry_at, delivered)
		SELECT $1, 'evt_' || lpad(g::text, 32, '0'), 'message.sent', 1, CASE WHEN g % 2 = 0 THEN 200 ELSE 500 END, 12,
		       CASE WHEN g % 2 = 0 THEN NULL ELSE 'HTTP 500 Internal Server Error' END,
		       CASE WHEN g % 2 = 0 THEN NULL ELSE now() + interval '5 seconds' END, g % 2 = 0
		FROM generate_series(1, 25) g ORDER BY g`, ep.ID)
	mustExec(t, env.db, `INSERT INTO webhook_deliveries (endpoint_id, event_id, event_type, attempt, duration_ms, delivered)
		VALUES ($1, 'evt_x', 'message.sent', 1, 3, false)`, other.ID)

	base := "/webhook-endpoints/" + strconv.FormatInt(ep.ID, 10) + "/deliveries"
	type pageBody struct {
		Data       []Delivery `json:"data"`
		Pagination struct {
			Page       int     `json:"page"`
			PageSize   int     `json:"page_size"`
			NextCursor *string `json:"next_cursor"`
		} `json:"pagination"`
	}
	var all []Delivery
	target := base + "?page_size=10"
	for pages := 0; ; pages++ {
		if pages > 5 {
			t.Fatal("the cursor does not end")
		}
		p := decode[pageBody](t, env.do(env.admin, http.MethodGet, target, ""), http.StatusOK)
		if p.Pagination.Page != pages+1 || p.Pagination.PageSize != 10 {
			t.Errorf("pagination = %+v, want page %d of size 10", p.Pagination, pages+1)
		}
		all = append(all, p.Data...)
		if p.Pagination.NextCursor == nil {
			break
		}
		target = base + "?page_size=10&cursor=" + *p.Pagination.NextCursor
	}
	if len(all) != 25 {
		t.Fatalf("walked %d deliveries, want 25", len(all))
	}
	for i := 1; i < len(all); i++ {
		if all[i].ID >= all[i-1].ID {
			t.Fatalf("not newest first at %d", i)
		}
	}
	first := all[0]
	if first.EventType != MessageSent || !strings.HasPrefix(first.EventID, "evt_") || first.Attempt != 1 || first.DurationMS != 12 {
		t.Errorf("delivery = %+v", first)
	}
	for _, d := range all {
		if d.Delivered != (d.StatusCode != nil && *d.StatusCode == 200) || d.Delivered != (d.Error == nil) || d.Delivered != (d.NextRetryAt == nil) {
			t.Errorf("delivery fields disagree: %+v", d)
		}
	}
	// A cursor of one endpoint is refused on another.
	p := decode[pageBody](t, env.do(env.admin, http.MethodGet, base+"?page_size=10", ""), http.StatusOK)
	otherBase := "/webhook-endpoints/" + strconv.FormatInt(other.ID, 10) + "/deliveries"
	wantError(t, env.do(env.admin, http.MethodGet, otherBase+"?page_size=10&cursor="+*p.Pagination.NextCursor, ""), http.StatusBadRequest, "VALIDATION_ERROR", "cursor")
	wantError(t, env.do(env.admin, http.MethodGet, base+"?page_size=1000", ""), http.StatusBadRequest, "VALIDATION_ERROR", "page_size")
	// The raw JSON has the contract's field names.
	rec := env.do(env.admin, http.MethodGet, otherBase, "")
	for _, k := range []string{`"event_id"`, `"event_type"`, `"attempt"`, `"status_code":null`, `"duration_ms"`, `"error":null`, `"next_retry_at":null`, `"delivered":false`, `"created_at"`} {
		if !strings.Contains(rec.Body.String(), k) {
			t.Errorf("deliveries body lacks %s: %s", k, rec.Body)
		}
	}
}
