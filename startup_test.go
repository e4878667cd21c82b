//go:build linux || darwin

package main

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"net"
	"os/exec"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/campaignd/dispatch/platform/postgres"
)

// TestStartupExitCodes runs the real binary where start-up cannot succeed:
// each run must exit 1 within a bounded time, without a panic, and write
// exactly one error-level line that names the cause.
func TestStartupExitCodes(t *testing.T) {
	t.Parallel()
	requireBinary(t)
	taken, err := net.Listen("tcp", ":0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { taken.Close() })
	takenPort := taken.Addr().(*net.TCPAddr).Port
	pgPort, redisPort := freePort(t), freePort(t) // closed again: nothing listens there

	for _, tc := range []struct {
		name string
		vars map[string]string
		want []string // in the error line's err, in this order
	}{
		{
			name: "postgres down",
			vars: map[string]string{
				"DATABASE_URL":    fmt.Sprintf("postgres://postgres:pw-7f3a9c@127.0.0.1:%d/campaigns?sslmode=disable", pgPort),
				"STARTUP_TIMEOUT": "1s",
			},
			want: []string{fmt.Sprintf("postgres at 127.0.0.1:%d not reachable after 1s: ", pgPort), "connection refused"},
		},
		{
			name: "redis down",
			vars: map[string]string{
				"REDIS_URL":       fmt.Sprintf("redis://:pw-7f3a9c@127.0.0.1:%d/0", redisPort),
				"STARTUP_TIMEOUT": "1s",
			},
			want: []string{fmt.Sprintf("redis at 127.0.0.1:%d not reachable after 1s: ", redisPort), "connection refused"},
		},
		{
			name: "port taken",
			vars: map[string]string{"API_PORT": strconv.Itoa(takenPort)},
			want: []string{fmt.Sprintf("listen on port %d: address already in use", takenPort)},
		},
		{
			name: "bad config",
			vars: map[string]string{"WORKER_CONCURRENCY": "-1"},
			want: []string{"invalid configuration: ", "worker_concurrency (WORKER_CONCURRENCY) must be from 0 to 10000, got -1"},
		},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			e := newCrashEnv(t, defaultRedisURL(), nil)
			for k, v := range tc.vars {
				e.vars[k] = v
			}
			if _, ok := tc.vars["REDIS_URL"]; ok {
				// Only Redis may be what the wait is about: create the
				// database first, as CREATE DATABASE on a loaded server can
				// take longer than the one-second timeout by itself.
				ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
				db, err := postgres.Open(ctx, e.vars["DATABASE_URL"], postgres.Options{CreateDatabase: true, MaxOpenConns: 1})
				cancel()
				if err != nil {
					t.Fatal(err)
				}
				db.Close()
			}
			code, stdout, stderr, took := e.runToExit(30 * time.Second)
			t.Logf("exit %d after %v; stderr:\n%s", code, took.Round(time.Millisecond), stderr)
			if code != 1 {
				t.Errorf("exit code %d, want 1", code)
			}
			for _, s := range []string{"panic", "goroutine "} {
				if strings.Contains(stdout+stderr, s) {
					t.Errorf("output contains %q:\n%s%s", s, stdout, stderr)
				}
			}
			if strings.Contains(stderr, "pw-7f3a9c") {
				t.Errorf("stderr shows a password:\n%s", stderr)
			}
			var errLines []map[string]any
			sc := bufio.NewScanner(strings.NewReader(stderr))
			sc.Buffer(nil, 1<<20)
			for sc.Scan() {
				var rec map[string]any
				if err := json.Unmarshal(sc.Bytes(), &rec); err != nil {
					t.Errorf("stderr line is not a JSON log record: %s", sc.Text())
					continue
				}
				if rec["level"] == "ERROR" {
					errLines = append(errLines, rec)
				}
			}
			if len(errLines) != 1 {
				t.Fatalf("%d lines at level ERROR, want 1", len(errLines))
			}
			msg, _ := errLines[0]["err"].(string)
			rest := msg
			for _, w := range tc.want {
				i := strings.Index(rest, w)
				if i < 0 {
					t.Fatalf("error line's err = %q, want it to contain, in order, %q", msg, tc.want)
				}
				rest = rest[i+len(w):]
			}
		})
	}
}

// runToExit runs the binary with the test's environment until it exits, and
// returns its exit code, its stdout and stderr and how long it ran. It fails
// the test if the process is still running after timeout.
func (e *crashEnv) runToExit(timeout time.Duration) (code int, stdout, stderr string, took time.Duration) {
	t := e.t
	t.Helper()
	cmd := exec.Command(dispatchBin)
	cmd.Env = e.env(nil)
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	var out, errOut bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errOut
	cmd.WaitDelay = 5 * time.Second
	start := time.Now()
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- cmd.Wait() }() // returns when the process has exited
	select {
	case <-done:
	case <-time.After(timeout):
		_ = syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL)
		<-done
		t.Fatalf("still running %v after start; output:\n%s%s", timeout, out.String(), errOut.String())
	}
	return cmd.ProcessState.ExitCode(), out.String(), errOut.String(), time.Since(start)
}
