package app

import (
	"io"
	"net/http"
	"net/http/cookiejar"
	"net/url"
	"regexp"
	"strconv"
	"strings"
	"testing"
)

// The dashboard's handlers without a browser: sessions, CSRF and scopes.

// uiClient is a browser-like client of the dashboard: a cookie jar, no
// redirects followed, and the CSRF token of the last page read.
type uiClient struct {
	ta   *testApp
	http *http.Client
	csrf string
}

var csrfInput = regexp.MustCompile(`name="csrf" value="([^"]+)"`)

func newUIClient(t *testing.T, ta *testApp) *uiClient {
	t.Helper()
	jar, _ := cookiejar.New(nil)
	return &uiClient{ta: ta, http: &http.Client{Jar: jar, CheckRedirect: func(*http.Request, []*http.Request) error {
		return http.ErrUseLastResponse
	}}}
}

// get reads a page and remembers its CSRF token.
func (u *uiClient) get(t *testing.T, path string) (int, string) {
	t.Helper()
	resp, err := u.http.Get(u.ta.base + path)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	if m := csrfInput.FindSubmatch(b); m != nil {
		u.csrf = string(m[1])
	}
	return resp.StatusCode, string(b)
}

// post sends a form; the token is added unless withToken is false.
func (u *uiClient) post(t *testing.T, path string, form url.Values, withToken bool) (int, string, string) {
	t.Helper()
	if withToken {
		form.Set("csrf", u.csrf)
	}
	resp, err := u.http.PostForm(u.ta.base+path, form)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, resp.Header.Get("Location"), string(b)
}

func (u *uiClient) signIn(t *testing.T, key string) {
	t.Helper()
	u.get(t, "/ui/login")
	if st, loc, body := u.post(t, "/ui/login", url.Values{"api_key": {key}}, true); st != http.StatusSeeOther || loc != "/ui/campaigns" {
		t.Fatalf("sign in: %d %s %.300s", st, loc, body)
	}
}

func TestDashboardSessionsCSRFAndScopes(t *testing.T) {
	t.Parallel()
	ta := startApp(t, testConfig(t))
	id, _ := mustCreateCampaign(t, ta, nil)
	action := "/ui/campaigns/" + strconv.FormatInt(id, 10) + "/action/cancel"

	t.Run("pages need a session", func(t *testing.T) {
		u := newUIClient(t, ta)
		if st, _ := u.get(t, "/ui/campaigns"); st != http.StatusSeeOther {
			t.Errorf("without a session: %d, want 303 to the sign-in page", st)
		}
		if st, _, _ := u.post(t, action, url.Values{}, false); st != http.StatusUnauthorized {
			t.Errorf("a post without a session: %d, want 401", st)
		}
	})

	t.Run("a wrong key is refused", func(t *testing.T) {
		u := newUIClient(t, ta)
		u.get(t, "/ui/login")
		if st, _, body := u.post(t, "/ui/login", url.Values{"api_key": {"dsp_not_a_key_0123456789abcdefghijklmnopq"}}, true); st != http.StatusUnauthorized || !strings.Contains(body, "not valid") {
			t.Errorf("wrong key: %d %.200s", st, body)
		}
	})

	t.Run("sign-in without the token is refused", func(t *testing.T) {
		u := newUIClient(t, ta)
		u.get(t, "/ui/login")
		if st, _, _ := u.post(t, "/ui/login", url.Values{"api_key": {testAPIKey}}, false); st != http.StatusForbidden {
			t.Errorf("sign-in without CSRF token: %d, want 403", st)
		}
	})

	t.Run("a form post without the CSRF token is refused", func(t *testing.T) {
		u := newUIClient(t, ta)
		u.signIn(t, testAPIKey)
		u.get(t, "/ui/campaigns")
		if st, _, _ := u.post(t, action, url.Values{}, false); st != http.StatusForbidden {
			t.Errorf("without the token: %d, want 403", st)
		}
		if st, _, _ := u.post(t, action, url.Values{"csrf": {"forged"}}, false); st != http.StatusForbidden {
			t.Errorf("with a wrong token: %d, want 403", st)
		}
		if got := readCampaign(t, ta, id).Status; got != "draft" {
			t.Fatalf("a refused post changed the campaign: %s", got)
		}
	})

	t.Run("a read key sees everything and changes nothing", func(t *testing.T) {
		u := newUIClient(t, ta)
		u.signIn(t, ta.createKey(t, "viewer", "read").Key)
		for _, p := range []string{"/ui/campaigns", "/ui/campaigns/" + strconv.FormatInt(id, 10), "/ui/customers", "/ui/queue"} {
			if st, body := u.get(t, p); st != http.StatusOK || strings.Contains(body, `id="new-campaign"`) {
				t.Errorf("%s as read key: %d (new-campaign form shown: %v)", p, st, strings.Contains(body, `id="new-campaign"`))
			}
		}
		// The buttons are hidden, but a post is the API's to refuse.
		st, _, body := u.post(t, action, url.Values{}, true)
		if st != http.StatusForbidden || !strings.Contains(body, "FORBIDDEN") || !strings.Contains(body, "read key") {
			t.Errorf("read key's cancel: %d %.300s", st, body)
		}
		if st, _, _ := u.post(t, "/ui/campaigns/new", url.Values{"name": {"x"}, "channel": {"sms"}}, true); st != http.StatusForbidden {
			t.Errorf("read key's new campaign: %d, want 403", st)
		}
		if got := readCampaign(t, ta, id).Status; got != "draft" {
			t.Fatalf("a read key changed the campaign: %s", got)
		}
	})

	t.Run("sign-out ends the session everywhere", func(t *testing.T) {
		u := newUIClient(t, ta)
		u.signIn(t, testAPIKey)
		u.get(t, "/ui/campaigns")
		base, _ := url.Parse(ta.base + "/ui/")
		stolen := u.http.Jar.Cookies(base)
		if st, loc, _ := u.post(t, "/ui/logout", url.Values{}, true); st != http.StatusSeeOther || !strings.HasPrefix(loc, "/ui/login") {
			t.Fatalf("sign out: %d %s", st, loc)
		}
		thief := newUIClient(t, ta)
		thief.http.Jar.SetCookies(base, stolen)
		if st, _ := thief.get(t, "/ui/campaigns"); st != http.StatusSeeOther {
			t.Errorf("a cookie copied before sign-out: %d, want 303 to sign-in", st)
		}
	})
}

// TestDashboardImportUploadIsLimited refuses an upload larger than the
// import's own limit before anything reads it, signed in or not: the file is
// never spooled to disk whatever its size.
func TestDashboardImportUploadIsLimited(t *testing.T) {
	t.Parallel()
	cfg := testConfig(t)
	cfg.API.ImportBodyLimit = "1KB"
	ta := startApp(t, cfg)
	body := strings.NewReader(strings.Repeat("x", 200<<10))
	req, err := http.NewRequest("POST", ta.base+"/ui/customers/import", body)
	if err != nil {
		t.Fatal(err)
	}
	req.Header.Set("Content-Type", "multipart/form-data; boundary=b")
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusRequestEntityTooLarge {
		t.Errorf("200 KiB upload with a 1 KB import limit = %d, want 413", resp.StatusCode)
	}
}
