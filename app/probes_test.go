package app

import (
	"bytes"
	"context"
	"encoding/json"
	"log/slog"
	"net/http"
	"strings"
	"testing"

	"github.com/campaignd/dispatch/platform/logging"
	"github.com/campaignd/dispatch/platform/logging/logtest"
	"github.com/campaignd/dispatch/platform/postgres"
)

// TestProbes: /livez answers while the process serves; /readyz and /health
// need no key; /readyz turns 503 naming the check when the schema lacks a
// migration this binary has, and 200 again once it is back.
func TestProbes(t *testing.T) {
	t.Parallel()
	cfg := testConfig(t)
	ta := startApp(t, cfg)

	var body struct {
		Status  string            `json:"status"`
		Version string            `json:"version"`
		Checks  map[string]string `json:"checks"`
	}
	for _, path := range []string{"/livez", "/readyz", "/health"} {
		if code := ta.do(t, "GET", path, nil, &body, withKey("")...); code != http.StatusOK || body.Status != "ok" {
			t.Errorf("%s without a key: %d %+v", path, code, body)
		}
	}
	if body.Version == "" {
		t.Errorf("/health has no version")
	}

	db, err := postgres.Open(context.Background(), cfg.Database.URL, postgres.Options{MaxOpenConns: 1})
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	var latest int64
	if err := db.Get(&latest, `DELETE FROM goose_db_version WHERE version_id = (SELECT max(version_id) FROM goose_db_version) RETURNING version_id`); err != nil {
		t.Fatal(err)
	}
	if code := ta.do(t, "GET", "/readyz", nil, &body); code != http.StatusServiceUnavailable || body.Checks["migrations"] == "ok" || body.Checks["postgres"] != "ok" {
		t.Errorf("readyz with a migration missing: %d %+v", code, body)
	}
	if code := ta.do(t, "GET", "/livez", nil, nil); code != http.StatusOK {
		t.Errorf("livez with a migration missing: %d, want 200 (liveness is not readiness)", code)
	}
	if _, err := db.Exec(`INSERT INTO goose_db_version (version_id, is_applied) VALUES ($1, true)`, latest); err != nil {
		t.Fatal(err)
	}
	if code := ta.do(t, "GET", "/readyz", nil, &body); code != http.StatusOK {
		t.Errorf("readyz after the migration is back: %d %+v", code, body)
	}
}

// TestLogLinesCarryRequestID: every line logged with the request's context,
// the access line and a 5xx's error line included, carries the request's ID;
// durations are in milliseconds; a 4xx is logged at info.
func TestLogLinesCarryRequestID(t *testing.T) {
	t.Parallel()
	logs := &logtest.Buffer{}
	log := slog.New(logging.NewContextHandler(slog.NewJSONHandler(logs, &slog.HandlerOptions{Level: slog.LevelDebug})))
	ta := startAppWithLog(t, testConfig(t), log)

	if code := ta.do(t, "GET", "/campaigns/987654", nil, nil, "X-Request-Id", "req-404"); code != http.StatusNotFound {
		t.Fatalf("status %d", code)
	}
	if code := ta.do(t, "POST", "/api-keys", map[string]string{"name": "ops", "scope": "read"}, nil, "X-Request-Id", "req-201"); code != http.StatusCreated {
		t.Fatalf("status %d", code)
	}
	ta.stop(t)

	byID := map[string][]map[string]any{}
	for line := range strings.SplitSeq(strings.TrimSpace(logs.String()), "\n") {
		var m map[string]any
		if err := json.Unmarshal([]byte(line), &m); err != nil {
			t.Fatalf("log line %q: %v", line, err)
		}
		if id, ok := m["request_id"].(string); ok {
			byID[id] = append(byID[id], m)
		}
	}
	access := func(id string) map[string]any {
		for _, m := range byID[id] {
			if m["msg"] == "http request" {
				return m
			}
		}
		t.Fatalf("no access line with request_id %s", id)
		return nil
	}
	if m := access("req-404"); m["level"] != "INFO" || m["status"] != float64(404) {
		t.Errorf("404 access line: %v; want level INFO", m)
	}
	m := access("req-201")
	if _, ok := m["duration_ms"].(float64); !ok {
		t.Errorf("access line has no duration_ms: %v", m)
	}
	if _, ok := m["duration"]; ok {
		t.Errorf("access line still logs duration in nanoseconds: %v", m)
	}
	// The service's own line about the new key carries the request's ID.
	found := false
	for _, m := range byID["req-201"] {
		found = found || m["msg"] == "api key created"
	}
	if !found {
		t.Errorf("the key service's line does not carry the request ID: %v", byID["req-201"])
	}
	if bytes.Contains([]byte(logs.String()), []byte(`"request_id":""`)) {
		t.Errorf("a line carries an empty request ID")
	}
}
