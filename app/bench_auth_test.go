package app

import (
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"slices"
	"testing"
	"time"

	"github.com/labstack/echo/v4"
	"github.com/labstack/echo/v4/middleware"

	"github.com/campaignd/dispatch/campaign"
	"github.com/campaignd/dispatch/platform/httpx"
)

// BenchmarkRequestOverhead measures what authentication, the Redis rate
// limiter and the metrics middleware add to GET /campaigns/{id}:
//
//	go test -run='^$' -bench=RequestOverhead -benchtime=1x ./app/
//
// "with" is the app's own router; "without" is a router over the same
// services with only the middleware the API had before them (request ID,
// access log, recover, body limit). Requests alternate between the two, one
// at a time over kept-alive connections, so both see the same machine; the
// figures are p50/p99 of each and their difference.
func BenchmarkRequestOverhead(b *testing.B) {
	cfg := benchConfig(b)
	cfg.WorkerConcurrency = 0
	ta := startApp(b, cfg)
	id := (&benchApp{testApp: ta}).newCampaign(b)

	bare := echo.New()
	bare.HTTPErrorHandler = httpx.ErrorHandler(ta.log)
	bare.Use(middleware.RequestID(), httpx.Logger(ta.log), httpx.Recover(), middleware.BodyLimit("2M"))
	campaign.NewHandler(ta.campaigns).Register(bare)
	without := httptest.NewServer(bare)
	defer without.Close()

	client := &http.Client{Transport: &http.Transport{MaxIdleConnsPerHost: 4}}
	get := func(base string) time.Duration {
		req, _ := http.NewRequest("GET", fmt.Sprintf("%s/campaigns/%d", base, id), nil)
		req.Header.Set("Authorization", "Bearer "+testAPIKey)
		start := time.Now()
		resp, err := client.Do(req)
		if err != nil {
			b.Fatal(err)
		}
		_, _ = io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
		if resp.StatusCode != http.StatusOK {
			b.Fatalf("GET %s: %d", base, resp.StatusCode)
		}
		return time.Since(start)
	}
	const n = 3000
	for range 200 { // warm up: connections, the key cache, prepared plans
		get(ta.base)
		get(without.URL)
	}
	with, bareTimes := make([]time.Duration, 0, n), make([]time.Duration, 0, n)
	b.ResetTimer()
	for range b.N {
		for i := range n {
			if i%2 == 0 {
				with = append(with, get(ta.base))
				bareTimes = append(bareTimes, get(without.URL))
			} else {
				bareTimes = append(bareTimes, get(without.URL))
				with = append(with, get(ta.base))
			}
		}
	}
	b.StopTimer()
	p := func(d []time.Duration, q float64) float64 {
		slices.Sort(d)
		return float64(d[int(q*float64(len(d)-1))].Microseconds()) / 1000
	}
	w50, w99, o50, o99 := p(with, .5), p(with, .99), p(bareTimes, .5), p(bareTimes, .99)
	b.ReportMetric(w50, "with_p50_ms")
	b.ReportMetric(w99, "with_p99_ms")
	b.ReportMetric(o50, "without_p50_ms")
	b.ReportMetric(o99, "without_p99_ms")
	b.ReportMetric(w50-o50, "added_p50_ms")
	b.ReportMetric(w99-o99, "added_p99_ms")
}
