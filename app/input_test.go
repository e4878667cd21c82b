package app

import (
	"encoding/json"
	"log/slog"
	"net/http"
	"strings"
	"testing"

	"github.com/campaignd/dispatch/campaign"
	"github.com/campaignd/dispatch/customer"
	"github.com/campaignd/dispatch/platform/httpx"
	"github.com/campaignd/dispatch/platform/logging"
	"github.com/campaignd/dispatch/platform/logging/logtest"
)

// TestClientInputStaysSmall: what a client sends is echoed and logged only
// in short, safe pieces. A request id that is long or unsafe is replaced
// (it was echoed and logged verbatim, 500 kB a line), and an error repeats a
// short prefix of a huge unknown key (a 1.9 MB key came back as 3.8 MB).
func TestClientInputStaysSmall(t *testing.T) {
	t.Parallel()
	logs := &logtest.Buffer{}
	log := slog.New(logging.NewContextHandler(slog.NewJSONHandler(logs, nil)))
	ta := startAppWithLog(t, testConfig(t), log)

	send := func(method, path, contentType, body string, headers ...string) (int, http.Header, []byte) {
		t.Helper()
		return ta.rawRequest(t, method, path, contentType, strings.NewReader(body), headers...)
	}

	t.Run("request id", func(t *testing.T) {
		for _, id := range []string{strings.Repeat("r", 500_000), `x","level":"ERROR","msg":"forged`, "a b", strings.Repeat("r", 65)} {
			_, header, _ := send("GET", "/campaigns/987654", "", "", "X-Request-Id", id)
			got := header.Get("X-Request-Id")
			if got == id || !httpx.ValidRequestID(got) {
				t.Errorf("X-Request-Id %.40q... answered with %.80q, want a fresh id", id, got)
			}
		}
		kept := "0b6c3c1e-7a0e-4c55-9d43-6a8f2f1f4e10"
		if _, header, _ := send("GET", "/campaigns/987654", "", "", "X-Request-Id", kept); header.Get("X-Request-Id") != kept {
			t.Errorf("a safe client id was not kept: %q", header.Get("X-Request-Id"))
		}
	})

	t.Run("unknown key", func(t *testing.T) {
		key := strings.Repeat("k", 1_900_000)
		status, _, body := send("POST", "/campaigns", "application/json", `{"`+key+`":1}`)
		if status != http.StatusBadRequest || len(body) > 1000 {
			t.Errorf("status %d with a %d-byte body, want a 400 under 1000 bytes", status, len(body))
		}
	})

	ta.stop(t)
	for line := range strings.SplitSeq(strings.TrimSpace(logs.String()), "\n") {
		if len(line) > 4000 {
			t.Errorf("a %d-byte log line: %.200s", len(line), line)
		}
	}
}

// TestMalformedQueryIs400: a query string that cannot be decoded is a 400
// naming the parameter (it was ignored: "?page=%zz" served page 1), and a
// filter no customer field could hold is a 400, not a 500 from PostgreSQL.
func TestMalformedQueryIs400(t *testing.T) {
	t.Parallel()
	ta := startApp(t, testConfig(t))
	for _, tt := range []struct{ path, field string }{
		{"/customers?page=%zz", "page"},
		{"/customers?cursor=%%%%", "cursor"},
		{"/campaigns?page=%zz", "page"},
		{"/campaigns?cursor=%%%%", "cursor"},
		{"/customers?location=%00", "location"},
		{"/customers?location=%ff", "location"},
		{"/customers?preferred_product=%C0%AF", "preferred_product"},
	} {
		var env struct {
			Error struct {
				Code    string         `json:"code"`
				Details map[string]any `json:"details"`
			} `json:"error"`
		}
		code := ta.do(t, "GET", tt.path, nil, &env)
		if code != http.StatusBadRequest || env.Error.Code != "VALIDATION_ERROR" || env.Error.Details["field"] != tt.field {
			b, _ := json.Marshal(env)
			t.Errorf("GET %s: %d %s, want 400 VALIDATION_ERROR naming %s", tt.path, code, b, tt.field)
		}
	}
}

// TestAudienceLimitIsCustomerFieldLimit: an audience filter can name any
// value a customer field can hold, and no longer one.
func TestAudienceLimitIsCustomerFieldLimit(t *testing.T) {
	if campaign.MaxFilterLen != customer.MaxFieldLen {
		t.Errorf("campaign.MaxFilterLen %d, customer.MaxFieldLen %d: they must agree", campaign.MaxFilterLen, customer.MaxFieldLen)
	}
}
