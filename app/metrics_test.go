package app

import (
	"fmt"
	"io"
	"net/http"
	"strings"
	"testing"
	"time"

	dto "github.com/prometheus/client_model/go"
	"github.com/prometheus/common/expfmt"
	"github.com/prometheus/common/model"
)

// TestMetricsAgreeWithCampaignStats sends a campaign through a mock
// provider that fails often, then checks that /metrics counts exactly the
// outcomes the campaign's stats show: the pool counts an outcome only once
// it is stored.
func TestMetricsAgreeWithCampaignStats(t *testing.T) {
	t.Parallel()
	cfg := testConfig(t)
	cfg.Sender.SuccessRate = 0.6
	cfg.Sender.PermanentFailureRate = 0.3
	cfg.Sender.Seed = 42
	cfg.MaxRetryCount = 2
	ta := startApp(t, cfg)

	const n = 200
	var csv strings.Builder
	csv.WriteString("phone,first_name,last_name,location,preferred_product\n")
	phones := make([]string, n)
	for i := range n {
		phones[i] = fmt.Sprintf("+25472300%04d", i)
		fmt.Fprintf(&csv, "%s,Name%d,Last%d,Nairobi,Shoes\n", phones[i], i, i)
	}
	ta.importCSV(t, csv.String())
	ids := customerIDs(t, ta.db, phones)

	var camp struct {
		ID int64 `json:"id"`
	}
	if code := ta.do(t, "POST", "/campaigns", map[string]any{
		"name": "Metrics", "channel": "sms", "base_template": "Hi {first_name}, {preferred_product} in {location}!",
	}, &camp); code != http.StatusCreated {
		t.Fatalf("create campaign = %d", code)
	}
	if code := ta.do(t, "POST", fmt.Sprintf("/campaigns/%d/send", camp.ID), map[string]any{"customer_ids": ids}, nil); code != http.StatusAccepted {
		t.Fatalf("send = %d", code)
	}

	var d struct {
		Status string `json:"status"`
		Stats  struct {
			Total, Sent, Failed int64
		} `json:"stats"`
	}
	waitFor(t, "campaign finished", 60*time.Second, func() bool {
		if code := ta.do(t, "GET", fmt.Sprintf("/campaigns/%d", camp.ID), nil, &d); code != http.StatusOK {
			t.Fatalf("get campaign = %d", code)
		}
		return d.Status == "sent" || d.Status == "failed"
	})
	if d.Stats.Total != n || d.Stats.Sent+d.Stats.Failed != n || d.Stats.Sent == 0 || d.Stats.Failed == 0 {
		t.Fatalf("stats = %+v, want %d messages, some sent and some failed", d.Stats, n)
	}

	// The campaign finishes once its outcomes are stored; the counters
	// follow a moment later, after the same flush.
	var mfs map[string]*dto.MetricFamily
	outcomes := func() map[string]float64 {
		mfs = scrape(t, ta)
		sum := map[string]float64{}
		for _, m := range mfs["dispatch_messages_total"].GetMetric() {
			if label(m, "channel") != "sms" || label(m, "provider") != "mock" {
				t.Errorf("message series with labels %v", m.GetLabel())
			}
			sum[label(m, "outcome")] += m.GetCounter().GetValue()
		}
		return sum
	}
	var got map[string]float64
	waitFor(t, "outcome counters", 10*time.Second, func() bool {
		got = outcomes()
		return got["sent"]+got["failed"] >= n
	})
	t.Logf("campaign stats %+v; dispatch_messages_total by outcome %v", d.Stats, got)
	if got["sent"] != float64(d.Stats.Sent) || got["failed"] != float64(d.Stats.Failed) {
		t.Errorf("dispatch_messages_total sent %v failed %v, campaign stats sent %d failed %d",
			got["sent"], got["failed"], d.Stats.Sent, d.Stats.Failed)
	}
	if got["retried"] == 0 {
		t.Errorf("no retried outcomes counted with a 60%% success rate: %v", got)
	}

	var getCampaign float64
	for _, m := range mfs["dispatch_http_requests_total"].GetMetric() {
		if label(m, "method") == "GET" && label(m, "route") == "/campaigns/:id" && label(m, "status") == "200" {
			getCampaign = m.GetCounter().GetValue()
		}
		if r := label(m, "route"); strings.Contains(r, fmt.Sprint(camp.ID)) {
			t.Errorf("raw path as route label: %q", r)
		}
	}
	if getCampaign == 0 {
		t.Errorf("no dispatch_http_requests_total{method=GET,route=/campaigns/:id,status=200}")
	}

	states := map[string]bool{}
	for _, m := range mfs["dispatch_queue_depth"].GetMetric() {
		states[label(m, "state")] = true
	}
	for _, s := range []string{"ready", "processing", "delayed", "dead"} {
		if !states[s] {
			t.Errorf("no dispatch_queue_depth{state=%q}", s)
		}
	}
	if v := mfs["dispatch_workers"].GetMetric(); len(v) != 1 || v[0].GetGauge().GetValue() != float64(cfg.WorkerConcurrency) {
		t.Errorf("dispatch_workers = %v, want %d", v, cfg.WorkerConcurrency)
	}
	for _, name := range []string{"dispatch_workers_busy", "dispatch_delivery_duration_seconds",
		"dispatch_http_request_duration_seconds", "go_goroutines", "go_sql_open_connections"} {
		if mfs[name] == nil {
			t.Errorf("no %s", name)
		}
	}
}

// scrape reads /metrics through the test client and parses it.
func scrape(t *testing.T, ta *testApp) map[string]*dto.MetricFamily {
	t.Helper()
	req, err := http.NewRequest(http.MethodGet, ta.base+"/metrics", nil)
	if err != nil {
		t.Fatal(err)
	}
	resp, err := ta.client.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		body, _ := io.ReadAll(resp.Body)
		t.Fatalf("GET /metrics = %d: %.500s", resp.StatusCode, body)
	}
	parser := expfmt.NewTextParser(model.UTF8Validation)
	mfs, err := parser.TextToMetricFamilies(resp.Body)
	if err != nil {
		t.Fatalf("parse /metrics: %v", err)
	}
	return mfs
}

func label(m *dto.Metric, name string) string {
	for _, l := range m.GetLabel() {
		if l.GetName() == name {
			return l.GetValue()
		}
	}
	return ""
}
