package app

import (
	"fmt"
	"log/slog"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/labstack/echo/v4"

	"github.com/campaignd/dispatch/dashboard"
	"github.com/campaignd/dispatch/platform/logging/logtest"
)

type createdKey struct {
	ID     int64  `json:"id"`
	Name   string `json:"name"`
	Scope  string `json:"scope"`
	Prefix string `json:"prefix"`
	Key    string `json:"key"`
}

// createKey makes a key through the API with the test admin key.
func (ta *testApp) createKey(t *testing.T, name, scope string) createdKey {
	t.Helper()
	var k createdKey
	if code := ta.do(t, "POST", "/api-keys", map[string]string{"name": name, "scope": scope}, &k); code != http.StatusCreated {
		t.Fatalf("create %s key: status %d", scope, code)
	}
	if !strings.HasPrefix(k.Key, "dsp_") || len(k.Key) < 36 || !strings.HasPrefix(k.Key, k.Prefix) {
		t.Fatalf("created key %+v: want dsp_ and at least 32 characters, starting with its prefix", k)
	}
	return k
}

// withKey returns the header pair that makes ta.do send key ("" sends none).
func withKey(key string) []string {
	if key == "" {
		return []string{"Authorization", ""}
	}
	return []string{"Authorization", "Bearer " + key}
}

// concretePath fills a route template's parameters.
func concretePath(route string) string {
	return strings.NewReplacer(":id", "1", ":asset", "swagger-ui.css").Replace(route)
}

// TestAuthOnEveryRoute walks every route the app registers: without a key
// each protected one is 401 with the envelope and WWW-Authenticate; with a
// read key each change is 403; key management needs admin; the right key
// gets through; a revoked key is 401; and no secret is ever logged or
// returned after creation.
func TestAuthOnEveryRoute(t *testing.T) {
	t.Parallel()
	logs := &logtest.Buffer{}
	ta := startAppWithLog(t, testConfig(t), slog.New(slog.NewJSONHandler(logs, &slog.HandlerOptions{Level: slog.LevelDebug})))

	read := ta.createKey(t, "dashboard", "read")
	write := ta.createKey(t, "crm sync", "write")

	routes := ta.server.Handler.(*echo.Echo).Routes()
	protected := 0
	for _, r := range routes {
		if publicRoutes[r.Path] || dashboard.IsRoute(r.Path) {
			continue // the dashboard has its own sign-in (dashboard_test.go)
		}
		protected++
		path := concretePath(r.Path)
		t.Run(r.Method+" "+r.Path, func(t *testing.T) {
			var e apiError
			req, _ := http.NewRequest(r.Method, ta.base+path, strings.NewReader(`{}`))
			req.Header.Set("Content-Type", "application/json")
			req.Header["Authorization"] = []string{""}
			resp, err := ta.client.Do(req)
			if err != nil {
				t.Fatal(err)
			}
			resp.Body.Close()
			if resp.StatusCode != http.StatusUnauthorized || !strings.HasPrefix(resp.Header.Get("WWW-Authenticate"), "Bearer") {
				t.Errorf("no key: status %d, WWW-Authenticate %q; want 401 and Bearer", resp.StatusCode, resp.Header.Get("WWW-Authenticate"))
			}
			if code := ta.do(t, r.Method, path, nil, &e, withKey("dsp_thisKeyWasNeverIssued_0123456789abcdefgh")...); code != 401 || e.Error.Code != "UNAUTHENTICATED" {
				t.Errorf("unknown key: %d %s, want 401 UNAUTHENTICATED", code, e.Error.Code)
			}
			// Key management and webhook endpoints (which post data to any
			// URL and hold signing secrets) need admin.
			admin := strings.HasPrefix(r.Path, "/api-keys") || strings.HasPrefix(r.Path, "/webhook-endpoints")
			code := ta.do(t, r.Method, path, nil, &e, withKey(read.Key)...)
			switch {
			case r.Method != http.MethodGet || admin:
				if code != http.StatusForbidden || e.Error.Code != "FORBIDDEN" {
					t.Errorf("read key: %d %s, want 403 FORBIDDEN", code, e.Error.Code)
				}
			case code == http.StatusUnauthorized || code == http.StatusForbidden:
				t.Errorf("read key on a read route: %d", code)
			}
			if admin {
				if code := ta.do(t, r.Method, path, nil, &e, withKey(write.Key)...); code != http.StatusForbidden {
					t.Errorf("write key on an admin route: %d, want 403", code)
				}
			} else if code := ta.do(t, r.Method, path, nil, nil, withKey(write.Key)...); code == 401 || code == 403 {
				t.Errorf("write key: %d", code)
			}
		})
	}
	if protected < 15 {
		t.Fatalf("only %d protected routes found; is the route table wired?", protected)
	}

	// The right key gets through.
	if code := ta.do(t, "GET", "/campaigns", nil, nil, withKey(read.Key)...); code != http.StatusOK {
		t.Errorf("read key GET /campaigns: %d", code)
	}
	body := map[string]string{"name": "by write key", "channel": "sms", "base_template": "Hi {first_name}"}
	if code := ta.do(t, "POST", "/campaigns", body, nil, withKey(write.Key)...); code != http.StatusCreated {
		t.Errorf("write key POST /campaigns: %d", code)
	}

	// The list shows prefixes and last use, never secrets.
	var list struct {
		Data []map[string]any `json:"data"`
	}
	if code := ta.do(t, "GET", "/api-keys", nil, &list); code != http.StatusOK || len(list.Data) != 3 {
		t.Fatalf("list keys: %d, %d keys, want 3 (bootstrap, read, write)", code, len(list.Data))
	}
	for _, k := range list.Data {
		if _, ok := k["key"]; ok {
			t.Errorf("key list carries a secret: %v", k)
		}
		if k["last_used_at"] == nil {
			t.Errorf("key %v: last_used_at not set after use", k["name"])
		}
	}

	// A revoked key stops working at once.
	if code := ta.do(t, "DELETE", fmt.Sprintf("/api-keys/%d", write.ID), nil, nil); code != http.StatusNoContent {
		t.Fatalf("revoke: %d", code)
	}
	var e apiError
	if code := ta.do(t, "GET", "/campaigns", nil, &e, withKey(write.Key)...); code != 401 || e.Error.Code != "UNAUTHENTICATED" {
		t.Errorf("revoked key: %d %s, want 401 UNAUTHENTICATED", code, e.Error.Code)
	}
	if code := ta.do(t, "DELETE", "/api-keys/999999", nil, &e); code != 404 || e.Error.Code != "API_KEY_NOT_FOUND" {
		t.Errorf("revoke unknown key: %d %s", code, e.Error.Code)
	}
	for _, bad := range []string{"Basic dXNlcjpwYXNz", "Bearer", "Bearer dsp_short", "Bearer " + read.Key + "x"} {
		if code := ta.do(t, "GET", "/campaigns", nil, nil, "Authorization", bad); code != 401 {
			t.Errorf("Authorization %q: %d, want 401", bad, code)
		}
	}

	ta.stop(t)
	out := logs.String()
	for _, secret := range []string{read.Key, write.Key, testAPIKey} {
		if strings.Contains(out, secret) {
			t.Errorf("a key's secret appears in the logs")
		}
	}
	if !strings.Contains(out, `"api_key_name":"dashboard"`) || !strings.Contains(out, `"api_key_id":`) {
		t.Errorf("request log lines do not name the key")
	}
}

// TestRateLimitSharedByReplicas runs two replicas on one Redis: their
// requests draw on one allowance per key, and requests beyond it get 429
// with Retry-After and the RateLimit headers.
func TestRateLimitSharedByReplicas(t *testing.T) {
	t.Parallel()
	cfg := testConfig(t)
	cfg.API.RateLimit, cfg.API.RateBurst = 1, 5
	cfg.WorkerConcurrency = 0
	a := startApp(t, cfg)
	b := startApp(t, cfg) // same database, same Redis prefix

	allowed := 0
	limited := map[*testApp]int{}
	start := time.Now()
	for i := range 14 {
		ta := a
		if i%2 == 1 {
			ta = b
		}
		req, _ := http.NewRequest("GET", ta.base+"/campaigns", nil)
		resp, err := ta.client.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		switch resp.StatusCode {
		case http.StatusOK:
			allowed++
			if resp.Header.Get("RateLimit-Limit") != "5" || resp.Header.Get("RateLimit-Remaining") == "" {
				t.Errorf("200 without RateLimit headers: %v", resp.Header)
			}
		case http.StatusTooManyRequests:
			limited[ta]++
			if ra := resp.Header.Get("Retry-After"); ra == "" || ra == "0" {
				t.Errorf("429 with Retry-After %q", ra)
			}
			if resp.Header.Get("RateLimit-Remaining") != "0" {
				t.Errorf("429 with RateLimit-Remaining %q", resp.Header.Get("RateLimit-Remaining"))
			}
		default:
			t.Fatalf("status %d", resp.StatusCode)
		}
	}
	// Separate allowances would admit at least 2 × 5; one shared allowance
	// admits the burst of 5 plus what refills at 1/s while the loop runs.
	refilled := int(time.Since(start).Seconds()) + 1
	if refilled >= 5 {
		t.Fatalf("14 requests took %v: too slow to tell one shared allowance from two", time.Since(start))
	}
	if allowed < 5 || allowed > 5+refilled || limited[a] == 0 || limited[b] == 0 {
		t.Errorf("admitted %d of 14 (want 5 to %d), limited %d on a and %d on b (want some on each)",
			allowed, 5+refilled, limited[a], limited[b])
	}

	// Another key has its own allowance.
	other := a.createKeyAfterLimit(t)
	if code := b.do(t, "GET", "/campaigns", nil, nil, withKey(other)...); code != http.StatusOK {
		t.Errorf("another key: %d, want 200", code)
	}
}

// createKeyAfterLimit creates a read key once the admin key's allowance has
// room again (it was just spent).
func (ta *testApp) createKeyAfterLimit(t *testing.T) string {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for {
		var k createdKey
		code := ta.do(t, "POST", "/api-keys", map[string]string{"name": "other", "scope": "read"}, &k)
		if code == http.StatusCreated {
			return k.Key
		}
		if code != http.StatusTooManyRequests || time.Now().After(deadline) {
			t.Fatalf("create key: %d", code)
		}
		time.Sleep(200 * time.Millisecond)
	}
}

// TestClientAddress: X-Forwarded-For is believed only from configured proxies.
func TestClientAddress(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name, trusted, peer, xff, want string
	}{
		{"no proxies: header ignored", "", "203.0.113.9:5000", "1.2.3.4", "203.0.113.9"},
		{"loopback not trusted by default", "", "127.0.0.1:5000", "1.2.3.4", "127.0.0.1"},
		{"trusted proxy", "10.0.0.0/8", "10.1.2.3:5000", "1.2.3.4", "1.2.3.4"},
		{"nearest untrusted hop", "10.0.0.0/8", "10.1.2.3:5000", "9.9.9.9, 1.2.3.4, 10.0.0.7", "1.2.3.4"},
		{"untrusted peer", "10.0.0.0/8", "203.0.113.9:5000", "1.2.3.4", "203.0.113.9"},
		{"single address", "192.0.2.1", "192.0.2.1:5000", "1.2.3.4", "1.2.3.4"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var cfg Config
			cfg.API.TrustedProxies = tt.trusted
			req, _ := http.NewRequest("GET", "/", nil)
			req.RemoteAddr = tt.peer
			req.Header.Set("X-Forwarded-For", tt.xff)
			if got := (&App{cfg: cfg}).ipExtractor()(req); got != tt.want {
				t.Errorf("client address = %s, want %s", got, tt.want)
			}
		})
	}
}
