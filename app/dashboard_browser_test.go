package app

import (
	"context"
	"fmt"
	"net/http"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/chromedp/cdproto/network"
	"github.com/chromedp/chromedp"
)

// The dashboard in a real browser: headless Chromium (Debian's chromium
// package, which .ci/run installs) driven by chromedp against the whole app
// on a free port. Each step saves a screenshot under the test's temp dir
// (and under DASHBOARD_SCREENSHOTS when set, to look at them) and logs its
// path when the step fails.

const chromiumPath = "/usr/bin/chromium"

// browser starts a headless Chromium for the test, or skips the test when
// it is not installed.
func browser(t *testing.T) context.Context {
	t.Helper()
	path := chromiumPath
	if p := os.Getenv("CHROMIUM_PATH"); p != "" {
		path = p
	}
	if _, err := os.Stat(path); err != nil {
		t.Skipf("browser tests need Chromium at %s (Debian package chromium; .ci/run installs it): %v", path, err)
	}
	// chromedp's defaults are headless, no first run and no background
	// networking, among others.
	opts := append(chromedp.DefaultExecAllocatorOptions[:],
		chromedp.ExecPath(path),
		chromedp.NoSandbox,
		chromedp.DisableGPU,
		chromedp.Flag("disable-quic", true),
		chromedp.Flag("disable-component-update", true),
		chromedp.Flag("disable-sync", true),
		chromedp.UserDataDir(t.TempDir()),
		chromedp.WindowSize(1280, 900),
	)
	actx, cancelA := chromedp.NewExecAllocator(context.Background(), opts...)
	ctx, cancelB := chromedp.NewContext(actx)
	t.Cleanup(func() { cancelB(); cancelA() })
	if err := chromedp.Do(ctx); err != nil {
		t.Skipf("cannot start Chromium at %s: %v", path, err)
	}
	return ctx
}

// step runs actions with a timeout, then saves a screenshot named name; if
// the actions fail, the test fails with the screenshot's path.
func step(t *testing.T, ctx context.Context, name string, timeout time.Duration, actions ...chromedp.Action[chromedp.Void]) {
	t.Helper()
	sctx, cancel := context.WithTimeout(ctx, timeout)
	err := chromedp.Do(sctx, actions...)
	cancel()
	path := screenshot(t, ctx, name)
	if err != nil {
		t.Fatalf("%s: %v (screenshot: %s)", name, err, path)
	}
}

func screenshot(t *testing.T, ctx context.Context, name string) string {
	t.Helper()
	sctx, cancel := context.WithTimeout(ctx, 15*time.Second)
	defer cancel()
	png, err := chromedp.Run(sctx, chromedp.FullScreenshot(100))
	if err != nil {
		t.Logf("screenshot %s: %v", name, err)
		return ""
	}
	path := filepath.Join(t.TempDir(), name+".png")
	if err := os.WriteFile(path, png, 0o644); err != nil {
		t.Logf("screenshot %s: %v", name, err)
	}
	if dir := os.Getenv("DASHBOARD_SCREENSHOTS"); dir != "" {
		_ = os.WriteFile(filepath.Join(dir, name+".png"), png, 0o644)
	}
	return path
}

// signIn signs in through the form with key.
func signIn(base, key string) chromedp.Action[chromedp.Void] {
	return chromedp.Steps(
		chromedp.Navigate(base+"/ui/login"),
		chromedp.WaitVisible(chromedp.ID("api_key")),
		chromedp.SendKeys(chromedp.ID("api_key"), key),
		chromedp.Submit(chromedp.ID("login")),
		chromedp.WaitVisible(chromedp.ID("campaign-list")),
	)
}

// until waits until the JavaScript expression is true. It evaluates it
// afresh every 50 ms and rides over navigations (an evaluation whose page
// is being replaced fails, and the next one runs on the new page); the
// step's timeout bounds the wait.
func until(expr string) chromedp.Action[chromedp.Void] {
	return chromedp.Func(func(ctx context.Context, t *chromedp.Target) error {
		var last error
		for {
			ok, err := chromedp.Evaluate[bool]("!!("+expr+")")(ctx, t)
			if err == nil && ok {
				return nil
			}
			if err != nil {
				last = err
			}
			select {
			case <-ctx.Done():
				return fmt.Errorf("waiting for %s: %w (last error: %v)", expr, ctx.Err(), last)
			case <-time.After(50 * time.Millisecond):
			}
		}
	})
}

// click clicks the element with id in the page's own script, so that a
// click that navigates does not leave chromedp waiting on the old page.
func click(id string) chromedp.Action[chromedp.Void] {
	return eval(fmt.Sprintf("document.getElementById(%q).click(); true", id))
}

// textIs waits until the element's text is want.
func textIs(sel, want string) chromedp.Action[chromedp.Void] {
	return until(fmt.Sprintf(`(function(){var e=document.querySelector(%q);return !!e && e.textContent.trim()===%q})()`, sel, want))
}

// acceptConfirms makes the page's confirmation questions (send, cancel)
// answer yes.
func acceptConfirms() chromedp.Action[chromedp.Void] {
	return eval("window.confirm = function () { return true }; true")
}

func eval(expr string) chromedp.Action[chromedp.Void] {
	return chromedp.Func(func(ctx context.Context, t *chromedp.Target) error {
		_, err := chromedp.Evaluate[any](expr)(ctx, t)
		return err
	})
}

// js evaluates expr in the page and returns its value.
func js[T any](t *testing.T, ctx context.Context, expr string) T {
	t.Helper()
	v, err := chromedp.Run(ctx, chromedp.Evaluate[T](expr))
	if err != nil {
		t.Fatalf("%s: %v", expr, err)
	}
	return v
}

func TestDashboardBrowser(t *testing.T) {
	ctx := browser(t)
	cfg := testConfig(t)
	cfg.Sender.SuccessRate = 0.7 // failures for the message filter
	cfg.Sender.MinLatency, cfg.Sender.MaxLatency = 10*time.Millisecond, 30*time.Millisecond
	cfg.MaxRetryCount = 1
	ta := startApp(t, cfg)
	db := openAppDB(t, cfg, false)
	locs := make([]string, 1500)
	for i := range locs {
		locs[i] = "Nairobi"
	}
	importCustomers(t, ta, db, locs...)

	var campaignID int64
	t.Run("sign in", func(t *testing.T) {
		step(t, ctx, "01-signed-in", 30*time.Second, signIn(ta.base, testAPIKey))
	})

	t.Run("compose with live preview and segment count", func(t *testing.T) {
		var loc string
		step(t, ctx, "02-compose", 30*time.Second,
			chromedp.Navigate(ta.base+"/ui/campaigns"),
			chromedp.SendKeys(chromedp.ID("new-name"), "Spring sale"),
			chromedp.Submit(chromedp.ID("new-campaign")),
			chromedp.WaitVisible(chromedp.ID("preview-text")),
		)
		loc = js[string](t, ctx, "location.pathname")
		parts := strings.Split(loc, "/")
		campaignID, _ = strconv.ParseInt(parts[len(parts)-2], 10, 64)
		if campaignID == 0 {
			t.Fatalf("compose page at %s", loc)
		}
		long := strings.Repeat("Big spring deals on {preferred_product}. ", 8)
		step(t, ctx, "03-preview-gsm", 30*time.Second,
			eval("document.getElementById('base_template').value = ''; true"),
			chromedp.SendKeys(chromedp.ID("base_template"), "Hi {first_name}! "),
			textIs("#sms-segments", "1"),
			textIs("#sms-encoding", "GSM-7"),
			chromedp.SendKeys(chromedp.ID("base_template"), long),
			until(`+document.querySelector('#sms-segments').textContent >= 2`),
		)
		var preview string
		step(t, ctx, "04-preview-ucs2", 30*time.Second,
			chromedp.SendKeys(chromedp.ID("base_template"), "Café ☀"),
			textIs("#sms-encoding", "UCS-2"),
			chromedp.WaitVisible(chromedp.ID("ucs2-warning")),
		)
		preview = js[string](t, ctx, "document.querySelector('#preview-text').textContent")
		if !strings.Contains(preview, "Hi C") || !strings.Contains(preview, "Shoes") {
			t.Errorf("preview does not show the customer's fields: %q", preview)
		}
		step(t, ctx, "05-estimate", 30*time.Second,
			chromedp.Click(chromedp.ID("estimate-btn")),
			chromedp.WaitVisible(chromedp.ID("estimate-result")),
		)
	})

	t.Run("send and watch progress reach 100%", func(t *testing.T) {
		if campaignID == 0 {
			t.Skip("compose failed")
		}
		step(t, ctx, "06-sending", 30*time.Second,
			acceptConfirms(),
			click("send-now"),
			until("!location.pathname.endsWith('/compose') && !!document.getElementById('live')"),
		)
		step(t, ctx, "07-sent", 90*time.Second,
			textIs("#progress-pct", "100%"),
			textIs("#live .badge", "sent"),
		)
		got := map[string]string{}
		for k, v := range js[map[string]string](t, ctx, `Object.fromEntries(Array.from(document.querySelectorAll('#stats dd[data-stat]')).map(e => [e.dataset.stat, e.textContent]))`) {
			got[k] = strings.ReplaceAll(v, ",", "")
		}
		st := readCampaign(t, ta, campaignID)
		s := st.Stats
		want := map[string]string{}
		for k, v := range map[string]int64{"total": s.Total, "pending": s.Pending, "sending": s.Sending, "sent": s.Sent,
			"delivered": s.Delivered, "undelivered": s.Undelivered, "failed": s.Failed, "cancelled": s.Cancelled} {
			want[k] = strconv.FormatInt(v, 10)
		}
		for k, v := range want {
			if got[k] != v {
				t.Errorf("stat %s: page shows %q, API says %s (page %v, API %v)", k, got[k], v, got, want)
			}
		}
		if want["total"] != "1500" || want["failed"] == "0" {
			t.Errorf("stats: %v; want 1500 messages, some failed", want)
		}
		// Readable on a phone: the same page at 390 px wide.
		step(t, ctx, "07c-phone", 10*time.Second, chromedp.EmulateViewport(390, 844))
		step(t, ctx, "07d-desktop-again", 10*time.Second, chromedp.EmulateViewport(1280, 900))
	})

	t.Run("filter messages to failures", func(t *testing.T) {
		if campaignID == 0 {
			t.Skip("compose failed")
		}
		var badges []string
		step(t, ctx, "08-failures", 30*time.Second,
			chromedp.Navigate(fmt.Sprintf("%s/ui/campaigns/%d", ta.base, campaignID)),
			eval("document.getElementById('message-status').value = 'failed'; document.getElementById('message-status').form.submit(); true"),
			until("location.search.includes('status=failed') && document.readyState === 'complete'"),
			chromedp.WaitVisible(chromedp.CSS("#message-table tbody tr td .badge")),
			chromedp.Click(chromedp.CSS("#message-table tbody details summary")),
			chromedp.WaitVisible(chromedp.CSS("#message-table tbody details .hist-table")),
		)
		badges = js[[]string](t, ctx, `Array.from(document.querySelectorAll('#message-table tbody .badge')).map(e => e.textContent)`)
		if len(badges) == 0 {
			t.Fatal("no failed messages listed")
		}
		for _, b := range badges {
			if b != "failed" {
				t.Fatalf("filtered to failed, the table shows %v", badges)
			}
		}
	})

	t.Run("pause and resume", func(t *testing.T) {
		id, _ := mustCreateCampaign(t, ta, map[string]any{"name": "Pause me"})
		if st := ta.do(t, http.MethodPost, "/campaigns/"+strconv.FormatInt(id, 10)+"/send", map[string]any{"audience": map[string]any{"all": true}}, nil); st != http.StatusAccepted {
			t.Fatalf("send: %d", st)
		}
		step(t, ctx, "09-paused", 30*time.Second,
			chromedp.Navigate(fmt.Sprintf("%s/ui/campaigns/%d", ta.base, id)),
			until("!!document.getElementById('act-pause')"),
			acceptConfirms(),
			click("act-pause"),
			textIs("#live .badge", "paused"),
		)
		if st := readCampaign(t, ta, id); st.Status != "paused" {
			t.Fatalf("after pause the API says %s", st.Status)
		}
		step(t, ctx, "10-resumed", 60*time.Second,
			until("!!document.getElementById('act-resume')"),
			acceptConfirms(),
			click("act-resume"),
			until(`['sending','sent'].includes(document.querySelector('#live .badge').textContent)`),
		)
		waitStatus(t, ta, id, "sent", 60*time.Second)
	})

	t.Run("queue health", func(t *testing.T) {
		step(t, ctx, "11-queue", 30*time.Second,
			chromedp.Navigate(ta.base+"/ui/queue"),
			chromedp.WaitVisible(chromedp.CSS("#dead-letters tbody td.err")),
		)
	})

	t.Run("import CSV with a bad row", func(t *testing.T) {
		csv := filepath.Join(t.TempDir(), "customers.csv")
		body := "phone,first_name,last_name,location,preferred_product\n+254799000001,Ann,Lee,Kisumu,Bags\nnot-a-phone,Bob,Ray,Kisumu,Bags\n"
		if err := os.WriteFile(csv, []byte(body), 0o644); err != nil {
			t.Fatal(err)
		}
		var line, msg string
		step(t, ctx, "12-import-error", 30*time.Second,
			chromedp.Navigate(ta.base+"/ui/customers"),
			chromedp.SetUploadFiles(chromedp.ID("file"), []string{csv}),
			chromedp.Submit(chromedp.ID("import-form")),
			chromedp.WaitVisible(chromedp.ID("import-errors")),
		)
		line = js[string](t, ctx, `document.querySelector('#import-errors tbody tr td').textContent`)
		msg = js[string](t, ctx, `document.querySelector('#import-errors tbody tr td:nth-child(2)').textContent`)
		if line != "3" || msg != "phone" {
			t.Errorf("import error row: line %q field %q, want line 3, field phone", line, msg)
		}
	})

	t.Run("first paint of 10,000 campaigns after sign-in", func(t *testing.T) {
		if _, err := db.Exec(`INSERT INTO campaigns (name, channel, base_template, status)
			SELECT 'Bulk ' || g, 'sms', 'Hi {first_name}', 'draft' FROM generate_series(1, 10000) g`); err != nil {
			t.Fatal(err)
		}
		// Sign in again (a new session) and read the list page's first
		// contentful paint, which the browser measures from the start of
		// its navigation: the sign-in form's POST, whose redirect lands on
		// the list.
		// The machine is shared and noisy: sign in three times and log
		// each, and the median.
		var fcps []float64
		for i := range 3 {
			start := time.Now()
			step(t, ctx, "13-list-10k", 60*time.Second,
				signIn(ta.base, testAPIKey),
				until(`(performance.getEntriesByName('first-contentful-paint')[0]||{}).startTime > 0`),
			)
			wall := time.Since(start)
			fcp := js[float64](t, ctx, `performance.getEntriesByName('first-contentful-paint')[0].startTime`)
			total := js[string](t, ctx, `document.querySelector('h1 .count').textContent`)
			t.Logf("sign-in %d → first paint of the campaign list (%s campaigns): %.0f ms (the browser's first-contentful-paint, timed from the sign-in form's POST); %v wall clock from opening the sign-in page to the list shown",
				i+1, total, fcp, wall.Round(time.Millisecond))
			fcps = append(fcps, fcp)
		}
		slices.Sort(fcps)
		t.Logf("sign-in → first paint with 10,000 campaigns: median %.0f ms (min %.0f, max %.0f)", fcps[1], fcps[0], fcps[2])
	})

	t.Run("sign out and be refused", func(t *testing.T) {
		var cookies []*network.Cookie
		var loc string
		step(t, ctx, "14-signed-out", 30*time.Second,
			chromedp.Navigate(ta.base+"/ui/campaigns"),
			chromedp.Func(func(ctx context.Context, _ *chromedp.Target) error {
				res, err := chromedp.Call(ctx, network.GetCookies, network.GetCookiesParams{})
				cookies = res.Cookies
				return err
			}),
			eval("document.querySelector('.signout button').click(); true"),
			until("!!document.getElementById('api_key')"),
			chromedp.Navigate(ta.base+"/ui/campaigns"),
			chromedp.WaitVisible(chromedp.ID("api_key")),
		)
		loc = js[string](t, ctx, "location.pathname")
		if !strings.HasSuffix(loc, "/ui/login") {
			t.Errorf("after sign-out /ui/campaigns led to %s", loc)
		}
		// The cookie the browser held before signing out is worth nothing
		// now, wherever a copy went.
		var old string
		for _, c := range cookies {
			if c.Name == "dispatch_session" {
				old = c.Value
			}
		}
		if old == "" {
			t.Fatal("no session cookie before sign-out")
		}
		req, _ := http.NewRequest(http.MethodGet, ta.base+"/ui/campaigns", nil)
		req.AddCookie(&http.Cookie{Name: "dispatch_session", Value: old})
		resp, err := (&http.Client{CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }}).Do(req)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		if resp.StatusCode != http.StatusSeeOther || resp.Header.Get("Location") != "/ui/login" {
			t.Errorf("the signed-out cookie got %d %s, want 303 to /ui/login", resp.StatusCode, resp.Header.Get("Location"))
		}
	})
}
