package app

import (
	"net/http"
	"testing"
	"time"
)

// GET /queue and GET /queue/dead-letters, checked against the contract by
// the test client: a campaign whose every message fails leaves dead
// letters with their errors and per-minute failure counts.
func TestQueueHealthAndDeadLetters(t *testing.T) {
	t.Parallel()
	cfg := testConfig(t)
	cfg.Sender.SuccessRate = 0
	cfg.MaxRetryCount = 1
	ta := startApp(t, cfg)
	ids := importCustomers(t, ta, openAppDB(t, cfg, false), "Nairobi", "Mombasa", "Kisumu")
	id, _ := mustCreateCampaign(t, ta, nil)
	sendTo(t, ta, id, ids)
	var dead struct {
		Total int64 `json:"total"`
		Items []struct {
			CampaignID int64   `json:"campaign_id"`
			LastError  *string `json:"last_error"`
		} `json:"items"`
	}
	waitFor(t, "three dead letters", 20*time.Second, func() bool {
		ta.do(t, http.MethodGet, "/queue/dead-letters", nil, &dead)
		return dead.Total == 3 && len(dead.Items) == 3
	})
	for _, m := range dead.Items {
		if m.CampaignID != id || m.LastError == nil || *m.LastError == "" {
			t.Errorf("dead letter without its campaign or error: %+v", m)
		}
	}
	var h struct {
		Dead       int64 `json:"dead_letter"`
		Throughput []struct {
			Outcomes map[string]int64 `json:"outcomes"`
		} `json:"throughput"`
		ConsumerList []struct {
			HeartbeatAgeMS int64 `json:"heartbeat_age_ms"`
		} `json:"consumer_list"`
	}
	waitFor(t, "the failures counted per minute", 10*time.Second, func() bool {
		ta.do(t, http.MethodGet, "/queue", nil, &h)
		var failed int64
		for _, m := range h.Throughput {
			failed += m.Outcomes["failed"]
		}
		return failed == 3
	})
	if h.Dead != 3 || len(h.Throughput) != 15 || len(h.ConsumerList) != 1 {
		t.Errorf("queue health: %+v", h)
	}
	if st := ta.do(t, http.MethodGet, "/queue/dead-letters?limit=0", nil, nil); st != http.StatusBadRequest {
		t.Errorf("limit=0: %d, want 400", st)
	}
}
