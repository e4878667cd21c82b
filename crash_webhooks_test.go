//go:build linux || darwin

package main

import (
	"encoding/json"
	"io"
	"net/http"
	"net/http/httptest"
	"sync"
	"testing"
	"time"

	"github.com/campaignd/dispatch/platform/webhooksig"
)

// TestCrashWebhooksOutboxSurvivesKill: events written while the endpoint
// is down wait in the outbox; the process is SIGKILLed with them there, and
// the next process delivers every one, once, signed, when the endpoint
// comes back.
func TestCrashWebhooksOutboxSurvivesKill(t *testing.T) {
	t.Parallel()
	// A short attempt timeout shortens the lease after which the killed
	// process's in-flight webhooks come due again (9 timeouts + 30 s).
	e := newCrashEnv(t, defaultRedisURL(), map[string]string{"SENDER_SUCCESS_RATE": "1", "WEBHOOKS_TIMEOUT": "1s"})

	var (
		mu      sync.Mutex
		secret  string
		up      bool
		refused int
		ok      int
		bad     int
		seen    = map[string]string{} // webhook-id → type
	)
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		body, _ := io.ReadAll(r.Body)
		mu.Lock()
		defer mu.Unlock()
		if !up {
			refused++
			w.WriteHeader(http.StatusServiceUnavailable)
			return
		}
		if err := webhooksig.Verify(secret, r.Header, body, time.Now(), 5*time.Minute); err != nil {
			bad++
			w.WriteHeader(http.StatusUnauthorized)
			return
		}
		var ev struct {
			Type string `json:"type"`
		}
		_ = json.Unmarshal(body, &ev)
		ok++
		seen[r.Header.Get("webhook-id")] = ev.Type
		w.WriteHeader(http.StatusOK)
	}))
	t.Cleanup(srv.Close)

	p := e.start("first")
	var created struct {
		Secret string `json:"secret"`
	}
	body, _ := json.Marshal(map[string]any{"url": srv.URL, "events": []string{"message.sent", "campaign.finished"}})
	p.do(t, "POST", "/webhook-endpoints", "application/json", body, http.StatusCreated, &created)
	mu.Lock()
	secret = created.Secret
	mu.Unlock()

	const n = 300
	e.setupCampaign(p, n)
	e.waitAllFinal(p)
	// The endpoint has refused the first attempts, so the events wait for
	// their retry (5 s) in the outbox.
	deadline := time.Now().Add(20 * time.Second)
	for {
		mu.Lock()
		r := refused
		mu.Unlock()
		if r > 0 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("no webhook attempt reached the endpoint within 20 s")
		}
		time.Sleep(20 * time.Millisecond)
	}
	p.kill(t)
	e.event("SIGKILL with the endpoint down and its events waiting in the outbox")

	mu.Lock()
	up = true
	mu.Unlock()
	p2 := e.start("after-kill")
	deadline = time.Now().Add(90 * time.Second)
	for {
		mu.Lock()
		got := len(seen)
		mu.Unlock()
		if got >= n+1 {
			break
		}
		if p2.exited() || time.Now().After(deadline) {
			t.Fatalf("%d of %d events delivered after the restart", got, n+1)
		}
		time.Sleep(50 * time.Millisecond)
	}
	time.Sleep(500 * time.Millisecond) // a duplicate would arrive now
	mu.Lock()
	defer mu.Unlock()
	types := map[string]int{}
	for _, typ := range seen {
		types[typ]++
	}
	e.event("delivered after the restart: %v (%d accepted requests, %d refused before the kill)", types, ok, refused)
	if types["message.sent"] != n || types["campaign.finished"] != 1 {
		t.Errorf("events delivered %v, want %d message.sent and 1 campaign.finished", types, n)
	}
	if ok != len(seen) {
		t.Errorf("%d accepted deliveries for %d events: some delivered twice", ok, len(seen))
	}
	if bad != 0 {
		t.Errorf("%d deliveries failed signature verification", bad)
	}
}
