package metrics

import (
	"bytes"
	"context"
	"errors"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"github.com/labstack/echo/v4"
	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/campaignd/dispatch/platform/errs"
	"github.com/campaignd/dispatch/platform/httpx"
)

// newEcho builds Echo as the app does: the one error handler, the request
// logger, then the metrics middleware.
func newEcho(t *testing.T, r *Registry, logs *bytes.Buffer) *echo.Echo {
	t.Helper()
	log := slog.New(slog.NewTextHandler(logs, nil))
	e := echo.New()
	e.HTTPErrorHandler = httpx.ErrorHandler(log)
	e.Use(httpx.Logger(log), r.Middleware())
	e.GET("/campaigns/:id", func(c echo.Context) error {
		switch c.Param("id") {
		case "404":
			return errs.New(errs.KindNotFound, "CAMPAIGN_NOT_FOUND", "no such campaign")
		case "500":
			return errors.New("database on fire")
		}
		return c.JSON(http.StatusOK, map[string]string{"id": c.Param("id")})
	})
	e.POST("/campaigns", func(c echo.Context) error { return c.NoContent(http.StatusCreated) })
	return e
}

func TestMiddlewareLabels(t *testing.T) {
	t.Parallel()
	r := New(Options{})
	var logs bytes.Buffer
	e := newEcho(t, r, &logs)

	type series struct{ method, route, status string }
	requests := []struct {
		method, path string
		want         series
		wantCode     string // the error envelope's code, when an error
	}{
		{"GET", "/campaigns/1", series{"GET", "/campaigns/:id", "200"}, ""},
		{"GET", "/campaigns/2", series{"GET", "/campaigns/:id", "200"}, ""},
		{"GET", "/campaigns/404", series{"GET", "/campaigns/:id", "404"}, "CAMPAIGN_NOT_FOUND"},
		{"GET", "/campaigns/500", series{"GET", "/campaigns/:id", "500"}, "INTERNAL_ERROR"},
		{"POST", "/campaigns", series{"POST", "/campaigns", "201"}, ""},
		{"DELETE", "/campaigns/1", series{"DELETE", "/campaigns/:id", "405"}, "METHOD_NOT_ALLOWED"},
		{"BREW", "/campaigns/1", series{"OTHER", "/campaigns/:id", "405"}, "METHOD_NOT_ALLOWED"},
		{"GET", "/wp-admin/../../etc/passwd", series{"GET", "unmatched", "404"}, "NOT_FOUND"},
		{"GET", "/customers/1", series{"GET", "unmatched", "404"}, "NOT_FOUND"},
	}
	want := map[series]float64{}
	for _, req := range requests {
		rec := httptest.NewRecorder()
		e.ServeHTTP(rec, httptest.NewRequest(req.method, req.path, nil))
		if got := rec.Code; statusLabel(got) != req.want.status {
			t.Errorf("%s %s: status %d, want %s", req.method, req.path, got, req.want.status)
		}
		if req.wantCode != "" && !strings.Contains(rec.Body.String(), `"code":"`+req.wantCode+`"`) {
			t.Errorf("%s %s: body %s, want the envelope with %s", req.method, req.path, rec.Body, req.wantCode)
		}
		want[req.want]++
	}

	got := map[series]float64{}
	for s := range want {
		got[s] = testutil.ToFloat64(r.requests.WithLabelValues(s.method, s.route, s.status))
	}
	if diff := cmp.Diff(want, got); diff != "" {
		t.Errorf("dispatch_http_requests_total (-want +got):\n%s", diff)
	}
	if n := testutil.CollectAndCount(r.requests); n != len(want) {
		t.Errorf("%d request series, want %d", n, len(want))
	}
	// One duration series per method and route: GET, POST, DELETE and
	// OTHER on their routes, and GET unmatched.
	if n := testutil.CollectAndCount(r.requestDuration); n != 5 {
		t.Errorf("%d duration series, want 5", n)
	}
	// The logger, outside the middleware, logs the status that was counted.
	for _, s := range []string{"status=404", "status=500", "status=405"} {
		if !strings.Contains(logs.String(), s) {
			t.Errorf("log lacks %s:\n%s", s, logs.String())
		}
	}
}

func TestObserver(t *testing.T) {
	t.Parallel()
	r := New(Options{Workers: 8})
	r.Outcomes("sms", "mock", "sent", 3)
	r.Outcomes("sms", "mock", "sent", 2)
	r.Outcomes("sms", "mock", "failed", 1)
	r.Outcomes("whatsapp", "mock", "cancelled", 4)
	r.DeliveryTook("mock", 30*time.Millisecond)
	r.DeliveryTook("mock", 3*time.Second)
	r.Busy(1)
	r.Busy(1)
	r.Busy(-1)

	const messages = `
# HELP dispatch_messages_total Message outcomes stored by the workers: sent, failed (for good), retried (attempt failed, another scheduled), cancelled.
# TYPE dispatch_messages_total counter
dispatch_messages_total{channel="sms",outcome="failed",provider="mock"} 1
dispatch_messages_total{channel="sms",outcome="sent",provider="mock"} 5
dispatch_messages_total{channel="whatsapp",outcome="cancelled",provider="mock"} 4
# HELP dispatch_workers_busy Delivery goroutines delivering a message now.
# TYPE dispatch_workers_busy gauge
dispatch_workers_busy 1
# HELP dispatch_workers Configured delivery goroutines of this replica (0: API only).
# TYPE dispatch_workers gauge
dispatch_workers 8
`
	if err := testutil.GatherAndCompare(r.reg, strings.NewReader(messages),
		"dispatch_messages_total", "dispatch_workers_busy", "dispatch_workers"); err != nil {
		t.Error(err)
	}

	mfs, err := r.reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	var count uint64
	var sum float64
	for _, mf := range mfs {
		if mf.GetName() == "dispatch_delivery_duration_seconds" {
			h := mf.GetMetric()[0].GetHistogram()
			count, sum = h.GetSampleCount(), h.GetSampleSum()
		}
	}
	if count != 2 || sum < 3.02 || sum > 3.04 {
		t.Errorf("delivery duration: %d samples summing to %v, want 2 summing to 3.03", count, sum)
	}
}

type depths struct {
	m   map[string]int64
	err error
}

func (d *depths) Depths(ctx context.Context) (map[string]int64, error) {
	if _, ok := ctx.Deadline(); !ok {
		return nil, errors.New("no deadline")
	}
	return d.m, d.err
}

func TestQueueDepths(t *testing.T) {
	t.Parallel()
	src := &depths{m: map[string]int64{"ready": 3, "processing": 2, "delayed": 1, "dead": 0}}
	r := New(Options{Depths: src})
	const want = `
# HELP dispatch_queue_depth Jobs in each part of the queue: ready, processing, delayed, dead.
# TYPE dispatch_queue_depth gauge
dispatch_queue_depth{state="dead"} 0
dispatch_queue_depth{state="delayed"} 1
dispatch_queue_depth{state="processing"} 2
dispatch_queue_depth{state="ready"} 3
`
	if err := testutil.GatherAndCompare(r.reg, strings.NewReader(want), "dispatch_queue_depth"); err != nil {
		t.Error(err)
	}

	// While Redis is down a scrape still answers, without the depths.
	src.err = errors.New("redis: connection refused")
	rec := httptest.NewRecorder()
	r.Handler().ServeHTTP(rec, httptest.NewRequest("GET", "/metrics", nil))
	body := rec.Body.String()
	if rec.Code != http.StatusOK || strings.Contains(body, "dispatch_queue_depth{") || !strings.Contains(body, "dispatch_workers 0") {
		t.Errorf("scrape with failing depths = %d:\n%.2000s", rec.Code, body)
	}
}

// TestHandler serves the text format with the runtime and process
// collectors.
func TestHandler(t *testing.T) {
	t.Parallel()
	r := New(Options{})
	rec := httptest.NewRecorder()
	r.Handler().ServeHTTP(rec, httptest.NewRequest("GET", "/metrics", nil))
	if rec.Code != http.StatusOK || !strings.HasPrefix(rec.Header().Get("Content-Type"), "text/plain") {
		t.Fatalf("GET /metrics = %d %s", rec.Code, rec.Header().Get("Content-Type"))
	}
	for _, name := range []string{"go_goroutines", "process_start_time_seconds", "dispatch_workers_busy"} {
		if !strings.Contains(rec.Body.String(), "\n"+name+" ") {
			t.Errorf("no %s in:\n%.3000s", name, rec.Body)
		}
	}
}
