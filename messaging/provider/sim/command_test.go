package sim

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"io"
	"net"
	"net/http"
	"net/url"
	"strings"
	"testing"
	"time"
)

func env(m map[string]string) func(string) (string, bool) {
	return func(k string) (string, bool) {
		v, ok := m[k]
		return v, ok
	}
}

func TestCommandServesUntilCancelled(t *testing.T) {
	t.Parallel()
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	pr, pw := io.Pipe()
	done := make(chan error, 1)
	go func() {
		// The environment sets what no flag does; a flag beats the
		// environment.
		done <- command(ctx, []string{"--port", "0", "--latency", "0", "--at-api-key", "k"}, pw,
			env(map[string]string{"SIM_ACCEPT_RATE": "0", "SIM_PERMANENT_RATE": "1", "SIM_AT_API_KEY": "ignored"}))
		pw.Close()
	}()

	line, err := bufio.NewReader(pr).ReadString('\n')
	if err != nil {
		t.Fatalf("reading the first line: %v", err)
	}
	go func() { _, _ = io.Copy(io.Discard, pr) }()
	_, rest, ok := strings.Cut(line, "sim listening on ")
	addr, _, ok2 := strings.Cut(rest, ": ")
	if !ok || !ok2 || !strings.Contains(line, "/version1/messaging") || !strings.Contains(line, "/Messages.json") {
		t.Fatalf("first line %q", line)
	}
	_, port, err := net.SplitHostPort(addr)
	if err != nil {
		t.Fatalf("address %q: %v", addr, err)
	}
	base := "http://127.0.0.1:" + port
	client := &http.Client{Transport: &http.Transport{}, Timeout: 5 * time.Second}
	defer client.CloseIdleConnections()

	req, err := http.NewRequest(http.MethodPost, base+"/version1/messaging",
		strings.NewReader(url.Values{"username": {"sandbox"}, "to": {phone}, "message": {"hi"}}.Encode()))
	if err != nil {
		t.Fatal(err)
	}
	req.Header.Set("Content-Type", "application/x-www-form-urlencoded")
	req.Header.Set("apiKey", "k")
	resp, err := client.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	var r atResponse
	err = json.NewDecoder(resp.Body).Decode(&r)
	resp.Body.Close()
	if err != nil || resp.StatusCode != http.StatusCreated || len(r.SMSMessageData.Recipients) != 1 {
		t.Fatalf("send: %d %+v %v", resp.StatusCode, r, err)
	}
	if rec := r.SMSMessageData.Recipients[0]; rec.StatusCode != 403 {
		t.Errorf("with SIM_ACCEPT_RATE=0 and SIM_PERMANENT_RATE=1: %+v, want 403", rec)
	}

	resp, err = client.Get(base + "/sim/stats")
	if err != nil {
		t.Fatal(err)
	}
	var st Stats
	err = json.NewDecoder(resp.Body).Decode(&st)
	resp.Body.Close()
	if err != nil || st != (Stats{Rejected: 1}) {
		t.Errorf("stats %+v, %v", st, err)
	}

	cancel()
	select {
	case err := <-done:
		if err != nil {
			t.Errorf("Command returned %v", err)
		}
	case <-time.After(15 * time.Second):
		t.Fatal("Command did not return after cancel")
	}
}

func TestCommandHelp(t *testing.T) {
	t.Parallel()
	var out bytes.Buffer
	if err := command(context.Background(), []string{"--help"}, &out, env(nil)); err != nil {
		t.Fatalf("--help: %v", err)
	}
	for _, want := range []string{"Usage: sim", "--receipt-delay", "SIM_RECEIPT_DELAY", "--twilio-auth-token", "SIM_TWILIO_AUTH_TOKEN"} {
		if !strings.Contains(out.String(), want) {
			t.Errorf("usage lacks %q:\n%s", want, out.String())
		}
	}
}

func TestCommandBadSettings(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name string
		args []string
		env  map[string]string
	}{
		{"rate above 1", []string{"--accept-rate", "2"}, nil},
		{"bad env duration", nil, map[string]string{"SIM_LATENCY": "soon"}},
		{"bad env rate", nil, map[string]string{"SIM_DELIVERED_RATIO": "-0.5"}},
		{"unknown flag", []string{"--nope"}, nil},
		{"stray argument", []string{"serve"}, nil},
	}
	for _, tt := range tests {
		var out bytes.Buffer
		if err := command(context.Background(), append([]string{"--port", "0"}, tt.args...), &out, env(tt.env)); err == nil {
			t.Errorf("%s: no error", tt.name)
		}
	}
}
