package app

import (
	"fmt"
	"net/http"
	"strings"
	"testing"
	"time"
)

type apiError struct {
	Error struct {
		Code    string         `json:"code"`
		Message string         `json:"message"`
		Details map[string]any `json:"details"`
	} `json:"error"`
}

type campaignDetail struct {
	ID     int64  `json:"id"`
	Status string `json:"status"`
	Stats  struct {
		Total, Pending, Sending, Sent, Failed int64
	} `json:"stats"`
}

// TestEndToEnd boots the whole service against a database it creates itself
// and drives it over HTTP as a client would: customers in, a campaign
// created, previewed, sent, delivered and finished.
func TestEndToEnd(t *testing.T) {
	t.Parallel()
	ta := startApp(t, testConfig(t))

	var health struct {
		Status string            `json:"status"`
		Checks map[string]string `json:"checks"`
	}
	if code := ta.do(t, "GET", "/health", nil, &health); code != 200 || health.Checks["postgres"] != "ok" || health.Checks["redis"] != "ok" {
		t.Fatalf("health = %d %+v", code, health)
	}

	// Import customers as CSV, one with an empty last name.
	var csv strings.Builder
	csv.WriteString("phone,first_name,last_name,location,preferred_product\n")
	for i := range 50 {
		last := fmt.Sprintf("Last%d", i)
		if i == 0 {
			last = ""
		}
		fmt.Fprintf(&csv, "+25471200%04d,Name%d,%s,Nairobi,Shoes\n", i, i, last)
	}
	req, _ := http.NewRequest("POST", ta.base+"/customers/import", strings.NewReader(csv.String()))
	req.Header.Set("Content-Type", "text/csv")
	resp, err := ta.client.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusCreated {
		t.Fatalf("import: status %d", resp.StatusCode)
	}

	var customers struct {
		Data []struct {
			ID       int64  `json:"id"`
			LastName string `json:"last_name"`
		} `json:"data"`
		Pagination struct {
			TotalCount int64 `json:"total_count"`
		} `json:"pagination"`
	}
	if code := ta.do(t, "GET", "/customers?page_size=100&location=nairobi", nil, &customers); code != 200 || customers.Pagination.TotalCount != 50 {
		t.Fatalf("list customers = %d, total %d", code, customers.Pagination.TotalCount)
	}
	ids := make([]int64, 0, 50)
	var emptyLast int64
	for _, c := range customers.Data {
		ids = append(ids, c.ID)
		if c.LastName == "" {
			emptyLast = c.ID
		}
	}

	var camp struct {
		ID     int64  `json:"id"`
		Status string `json:"status"`
	}
	code := ta.do(t, "POST", "/campaigns", map[string]any{
		"name": "Launch 🚀", "channel": "whatsapp", "base_template": "Hi {first_name} {last_name}, {preferred_product} in {location}!",
	}, &camp)
	if code != http.StatusCreated || camp.Status != "draft" {
		t.Fatalf("create campaign = %d %+v", code, camp)
	}

	var preview struct {
		Rendered string `json:"rendered_message"`
	}
	if code := ta.do(t, "POST", fmt.Sprintf("/campaigns/%d/personalized-preview", camp.ID),
		map[string]any{"customer_id": emptyLast}, &preview); code != 200 || preview.Rendered != "Hi Name0 , Shoes in Nairobi!" {
		t.Fatalf("preview = %d %q", code, preview.Rendered)
	}

	// Send to everyone, with one duplicate.
	var sent struct {
		Queued     int    `json:"messages_queued"`
		Duplicates int    `json:"duplicates_removed"`
		Status     string `json:"status"`
	}
	code = ta.do(t, "POST", fmt.Sprintf("/campaigns/%d/send", camp.ID), map[string]any{"customer_ids": append(ids, ids[0])}, &sent)
	if code != http.StatusAccepted || sent.Queued != 50 || sent.Duplicates != 1 || sent.Status != "sending" {
		t.Fatalf("send = %d %+v", code, sent)
	}

	var d campaignDetail
	waitFor(t, "campaign sent", 20*time.Second, func() bool {
		ta.do(t, "GET", fmt.Sprintf("/campaigns/%d", camp.ID), nil, &d)
		return d.Status == "sent"
	})
	if d.Stats.Total != 50 || d.Stats.Sent != 50 {
		t.Errorf("stats = %+v, want 50 sent", d.Stats)
	}

	// A second send is refused, and the campaign list shows the result.
	var e apiError
	if code := ta.do(t, "POST", fmt.Sprintf("/campaigns/%d/send", camp.ID), map[string]any{"customer_ids": ids[:1]}, &e); code != 409 || e.Error.Code != "CAMPAIGN_NOT_SENDABLE" {
		t.Errorf("second send = %d %+v", code, e)
	}
	var list struct {
		Data []struct {
			ID     int64  `json:"id"`
			Status string `json:"status"`
		} `json:"data"`
	}
	if code := ta.do(t, "GET", "/campaigns?status=sent", nil, &list); code != 200 || len(list.Data) != 1 || list.Data[0].ID != camp.ID {
		t.Errorf("list sent campaigns = %d %+v", code, list)
	}

	// Errors share one envelope, including Echo's own 404 and 405.
	for _, tc := range []struct {
		method, path string
		status       int
		code         string
	}{
		{"GET", "/nope", 404, "NOT_FOUND"},
		{"DELETE", "/campaigns", 405, "METHOD_NOT_ALLOWED"},
		{"GET", "/campaigns/abc", 400, "VALIDATION_ERROR"},
		{"GET", "/campaigns/999999", 404, "CAMPAIGN_NOT_FOUND"},
		{"GET", "/customers/999999", 404, "CUSTOMER_NOT_FOUND"},
	} {
		var e apiError
		if got := ta.do(t, tc.method, tc.path, nil, &e); got != tc.status || e.Error.Code != tc.code || e.Error.Message == "" {
			t.Errorf("%s %s = %d %+v, want %d %s", tc.method, tc.path, got, e, tc.status, tc.code)
		}
	}
}

// TestBodyLimit checks the configured limit answers 413 in the envelope.
func TestBodyLimit(t *testing.T) {
	t.Parallel()
	cfg := testConfig(t)
	cfg.API.BodyLimit = "1KB"
	cfg.WorkerConcurrency = 0
	ta := startApp(t, cfg)
	var e apiError
	code := ta.do(t, "POST", "/campaigns", map[string]any{"name": strings.Repeat("x", 2000), "channel": "sms", "base_template": "hi"}, &e)
	if code != http.StatusRequestEntityTooLarge || e.Error.Code != "PAYLOAD_TOO_LARGE" {
		t.Errorf("oversized body = %d %+v", code, e)
	}
}

// TestWorkerOnlyReplica serves /health and nothing else.
func TestWorkerOnlyReplica(t *testing.T) {
	t.Parallel()
	cfg := testConfig(t)
	cfg.API.Enabled = false
	ta := startApp(t, cfg)
	if code := ta.do(t, "GET", "/health", nil, nil); code != 200 {
		t.Errorf("health = %d", code)
	}
	var e apiError
	if code := ta.do(t, "GET", "/campaigns", nil, &e); code != 404 || e.Error.Code != "NOT_FOUND" {
		t.Errorf("campaigns on a worker-only replica = %d %+v", code, e)
	}
}
