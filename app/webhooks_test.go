package app

import (
	"encoding/json"
	"fmt"
	"io"
	"maps"
	"net/http"
	"net/http/httptest"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/campaignd/dispatch/platform/webhooksig"
)

// webhookReceiver is a customer's endpoint: it verifies every request with
// the Standard Webhooks algorithm and keeps each event once, by webhook-id.
type webhookReceiver struct {
	t      testing.TB
	secret string

	mu       sync.Mutex
	events   map[string]webhookEvent // by webhook-id
	requests int
	bad      int // requests whose signature did not verify
}

type webhookEvent struct {
	ID   string          `json:"id"`
	Type string          `json:"type"`
	Data json.RawMessage `json:"data"`
}

func (rc *webhookReceiver) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	body, _ := io.ReadAll(r.Body)
	rc.mu.Lock()
	defer rc.mu.Unlock()
	rc.requests++
	if err := webhooksig.Verify(rc.secret, r.Header, body, time.Now(), 5*time.Minute); err != nil {
		rc.bad++
		w.WriteHeader(http.StatusUnauthorized)
		return
	}
	var ev webhookEvent
	if err := json.Unmarshal(body, &ev); err != nil || ev.ID != r.Header.Get("webhook-id") {
		rc.bad++
		w.WriteHeader(http.StatusBadRequest)
		return
	}
	rc.events[ev.ID] = ev
	w.WriteHeader(http.StatusNoContent)
}

func (rc *webhookReceiver) count(typ string) int {
	rc.mu.Lock()
	defer rc.mu.Unlock()
	n := 0
	for _, ev := range rc.events {
		if ev.Type == typ {
			n++
		}
	}
	return n
}

// TestWebhooksEndToEnd subscribes an endpoint, sends a campaign and checks
// that the endpoint gets, signed, campaign.sending, one message.sent per
// message, and campaign.finished with the final stats, each once.
func TestWebhooksEndToEnd(t *testing.T) {
	t.Parallel()
	ta := startApp(t, testConfig(t))
	db := openAppDB(t, ta.cfg, false)

	rc := &webhookReceiver{t: t, events: map[string]webhookEvent{}}
	srv := httptest.NewServer(rc)
	t.Cleanup(srv.Close)
	var created struct {
		ID     int64  `json:"id"`
		Secret string `json:"secret"`
	}
	if code := ta.do(t, http.MethodPost, "/webhook-endpoints", map[string]any{
		"url":    srv.URL + "/hooks",
		"events": []string{"campaign.sending", "campaign.finished", "message.sent", "message.failed"},
	}, &created); code != http.StatusCreated || created.Secret == "" {
		t.Fatalf("create endpoint: %d %+v", code, created)
	}
	rc.mu.Lock()
	rc.secret = created.Secret
	rc.mu.Unlock()

	const n = 60
	ids := importCustomers(t, ta, db, slices.Repeat([]string{"Nairobi"}, n)...)
	id, _ := mustCreateCampaign(t, ta, map[string]any{"name": "hooks", "channel": "sms", "base_template": "Hi {first_name}"})
	sendTo(t, ta, id, ids)

	pollUntil(t, "every event delivered", 30*time.Second, func() bool {
		return rc.count("message.sent") == n && rc.count("campaign.finished") == 1 && rc.count("campaign.sending") == 1
	})
	rc.mu.Lock()
	bad, events := rc.bad, maps.Clone(rc.events)
	rc.mu.Unlock()
	if bad != 0 {
		t.Errorf("%d webhook requests failed verification", bad)
	}
	var finished struct {
		CampaignID int64  `json:"campaign_id"`
		Status     string `json:"status"`
		Stats      struct {
			Total int64 `json:"total"`
			Sent  int64 `json:"sent"`
		} `json:"stats"`
	}
	for _, ev := range events {
		if ev.Type == "campaign.finished" {
			if err := json.Unmarshal(ev.Data, &finished); err != nil {
				t.Fatal(err)
			}
		}
	}
	if finished.CampaignID != id || finished.Status != "sent" || finished.Stats.Total != n || finished.Stats.Sent != n {
		t.Errorf("campaign.finished data %+v, want campaign %d sent with %d of %d sent", finished, id, n, n)
	}
	// Every attempt is recorded (just after it is made).
	pollUntil(t, "every attempt listed under /deliveries", 10*time.Second, func() bool {
		var deliveries struct {
			Data []struct {
				Delivered bool `json:"delivered"`
			} `json:"data"`
		}
		code := ta.do(t, http.MethodGet, fmt.Sprintf("/webhook-endpoints/%d/deliveries?page_size=100", created.ID), nil, &deliveries)
		return code == http.StatusOK && len(deliveries.Data) == n+2 && deliveries.Data[0].Delivered
	})
}
