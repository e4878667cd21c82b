package app

import (
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"github.com/spf13/pflag"

	"github.com/campaignd/dispatch/messaging"
	"github.com/campaignd/dispatch/platform/redisx"
)

func flags(t *testing.T, args ...string) *pflag.FlagSet {
	t.Helper()
	fs := pflag.NewFlagSet("test", pflag.ContinueOnError)
	Flags(fs)
	if err := fs.Parse(args); err != nil {
		t.Fatalf("parse flags %v: %v", args, err)
	}
	return fs
}

// Config tests use t.Setenv, so they cannot run in parallel.

func TestLoadDefaults(t *testing.T) {
	cfg, err := Load(flags(t))
	if err != nil {
		t.Fatal(err)
	}
	checks := []struct {
		name      string
		got, want any
	}{
		{"queue name", cfg.Queue.Name, "campaign_sends"},
		{"api port", cfg.API.Port, 8080},
		{"max retry count", cfg.MaxRetryCount, 3},
		{"retry backoff base", cfg.RetryBackoffBase, time.Second},
		{"log format", cfg.Log.Format, "json"},
		{"log level", cfg.Log.Level, "info"},
		{"database url", cfg.DatabaseURL(), "postgres://postgres@127.0.0.1:5432/campaigns?sslmode=disable"},
		{"redis url", cfg.Redis.URL, "redis://127.0.0.1:6379/0"},
		{"api enabled", cfg.API.Enabled, true},
		// config.yaml and the channel's owner state one default.
		{"sms max chars", cfg.Limits.SMSMaxChars, messaging.DefaultSMSMaxChars},
		{"whatsapp max chars", cfg.Limits.WhatsAppMaxChars, messaging.DefaultWhatsAppMaxChars},
	}
	for _, c := range checks {
		if c.got != c.want {
			t.Errorf("%s = %v, want %v", c.name, c.got, c.want)
		}
	}
}

func TestLoadPrecedence(t *testing.T) {
	file := filepath.Join(t.TempDir(), "config.yaml")
	if err := os.WriteFile(file, []byte("worker_concurrency: 7\napi:\n  port: 9001\nqueue:\n  name: from_file\nlog:\n  level: debug\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		name      string
		env       map[string]string
		args      []string
		wantConc  int
		wantPort  int
		wantQueue string
		wantLevel string
	}{
		{"file over defaults", nil, []string{"--config", file}, 7, 9001, "from_file", "debug"},
		{"env over file", map[string]string{"WORKER_CONCURRENCY": "11", "QUEUE_NAME": "from_env", "API_PORT": "9002"},
			[]string{"--config", file}, 11, 9002, "from_env", "debug"},
		{"flag over env", map[string]string{"WORKER_CONCURRENCY": "11", "API_PORT": "9002"},
			[]string{"--config", file, "--worker-concurrency", "250", "--port", "9003"}, 250, 9003, "from_file", "debug"},
		{"env without file", map[string]string{"LOG_LEVEL": "warn", "MAX_RETRY_COUNT": "5"}, nil, 50, 8080, "campaign_sends", "warn"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			for k, v := range tt.env {
				t.Setenv(k, v)
			}
			cfg, err := Load(flags(t, tt.args...))
			if err != nil {
				t.Fatal(err)
			}
			if cfg.WorkerConcurrency != tt.wantConc || cfg.API.Port != tt.wantPort ||
				cfg.Queue.Name != tt.wantQueue || cfg.Log.Level != tt.wantLevel {
				t.Errorf("got concurrency=%d port=%d queue=%q level=%q, want %d %d %q %q",
					cfg.WorkerConcurrency, cfg.API.Port, cfg.Queue.Name, cfg.Log.Level,
					tt.wantConc, tt.wantPort, tt.wantQueue, tt.wantLevel)
			}
		})
	}
}

func TestLoadDatabaseFromParts(t *testing.T) {
	t.Setenv("DB_HOST", "db.internal")
	t.Setenv("DB_PORT", "6543")
	t.Setenv("DB_USER", "app")
	t.Setenv("DB_PASSWORD", "s3cr:t")
	t.Setenv("DB_NAME", "dispatch")
	cfg, err := Load(flags(t))
	if err != nil {
		t.Fatal(err)
	}
	want := "postgres://app:s3cr%3At@db.internal:6543/dispatch?sslmode=disable"
	if got := cfg.DatabaseURL(); got != want {
		t.Errorf("DatabaseURL() = %q, want %q", got, want)
	}
	masked := cfg.Masked()
	if strings.Contains(masked.Database.URL, "s3cr") || masked.DB.Password == "s3cr:t" {
		t.Errorf("masked config leaks the password: %+v", masked.Database.URL)
	}

	t.Setenv("DATABASE_URL", "postgres://u:pw@elsewhere/x")
	cfg, err = Load(flags(t))
	if err != nil {
		t.Fatal(err)
	}
	if got := cfg.DatabaseURL(); got != "postgres://u:pw@elsewhere/x" {
		t.Errorf("DATABASE_URL should win over DB_*, got %q", got)
	}
}

func TestLoadPgBouncerKeys(t *testing.T) {
	t.Setenv("DATABASE_URL", "postgres://u:pw@pgbouncer:6432/x")
	t.Setenv("DATABASE_PGBOUNCER", "true")
	cfg, err := Load(flags(t))
	if err != nil {
		t.Fatal(err)
	}
	if !cfg.Database.PgBouncer || cfg.DirectDatabaseURL() != cfg.DatabaseURL() {
		t.Errorf("pgbouncer %v, direct URL %q: want true and DATABASE_URL when DATABASE_DIRECT_URL is unset",
			cfg.Database.PgBouncer, cfg.DirectDatabaseURL())
	}

	t.Setenv("DATABASE_DIRECT_URL", "postgres://u:direct-pw@db:5432/x")
	if cfg, err = Load(flags(t)); err != nil {
		t.Fatal(err)
	}
	if got := cfg.DirectDatabaseURL(); got != "postgres://u:direct-pw@db:5432/x" {
		t.Errorf("DirectDatabaseURL() = %q", got)
	}
	if m := cfg.Masked(); strings.Contains(m.Database.DirectURL, "direct-pw") {
		t.Errorf("masked config leaks the direct URL's password: %s", m.Database.DirectURL)
	}

	t.Setenv("DATABASE_DIRECT_URL", "mysql://db/x")
	if _, err := Load(flags(t)); err == nil || !strings.Contains(err.Error(), "DATABASE_DIRECT_URL") {
		t.Errorf("a non-postgres DATABASE_DIRECT_URL: error %v, want one naming it", err)
	}
}

func TestLoadInvalidListsEveryProblem(t *testing.T) {
	t.Setenv("WORKER_CONCURRENCY", "-1")
	t.Setenv("LOG_FORMAT", "xml")
	t.Setenv("MAX_RETRY_COUNT", "0")
	t.Setenv("REDIS_URL", "http://nope")
	t.Setenv("API_BODY_LIMIT", "lots")
	_, err := Load(flags(t))
	if err == nil {
		t.Fatal("want an error")
	}
	for _, key := range []string{"WORKER_CONCURRENCY", "LOG_FORMAT", "MAX_RETRY_COUNT", "REDIS_URL", "API_BODY_LIMIT"} {
		if !strings.Contains(err.Error(), key) {
			t.Errorf("error does not mention %s:\n%v", key, err)
		}
	}
}

func TestParseBytes(t *testing.T) {
	tests := []struct {
		in   string
		want int64
		ok   bool
	}{
		{"2MB", 2 << 20, true},
		{"512kb", 512 << 10, true},
		{"1 GB", 1 << 30, true},
		{"100", 100, true},
		{"10B", 10, true},
		{"", 0, false},
		{"-1MB", 0, false},
		{"MB", 0, false},
		{"1.5MB", 0, false},
	}
	for _, tt := range tests {
		got, err := ParseBytes(tt.in)
		if (err == nil) != tt.ok || got != tt.want {
			t.Errorf("ParseBytes(%q) = %d, %v; want %d, ok=%v", tt.in, got, err, tt.want, tt.ok)
		}
	}
}

// TestConfigLogValue: the start-up dump uses the YAML key names and masks
// every secret.
func TestConfigLogValue(t *testing.T) {
	cfg, err := Load(nil)
	if err != nil {
		t.Fatal(err)
	}
	cfg.Database.URL = "postgres://app:s3cret-db@db:5432/campaigns"
	cfg.Redis.URL = "redis://:s3cret-redis@cache:6379/0"
	cfg.BootstrapAPIKey = "dsp_s3cretBootstrapKey_0123456789abcdefgh"
	var buf strings.Builder
	slog.New(slog.NewJSONHandler(&buf, nil)).Info("starting", "config", cfg)
	out := buf.String()
	for _, secret := range []string{"s3cret-db", "s3cret-redis", "s3cretBootstrapKey"} {
		if strings.Contains(out, secret) {
			t.Errorf("the config dump shows a secret (%s): %s", secret, out)
		}
	}
	for _, key := range []string{`"worker_concurrency":50`, `"max_open_conns":40`, `"shutdown_timeout":"15s"`, `"bootstrap_api_key":"xxxxx"`, `"rate_limit":100`} {
		if !strings.Contains(out, key) {
			t.Errorf("the config dump lacks %s: %s", key, out)
		}
	}
	if strings.Contains(out, "WorkerConcurrency") {
		t.Errorf("the config dump uses Go field names: %s", out)
	}
}

// TestLoadRedisModes: REDIS_URL (the default), REDIS_CLUSTER_ADDRS or
// REDIS_SENTINEL_ADDRS with REDIS_SENTINEL_MASTER select one Redis; two at
// once, or one half-given, is an error naming the keys.
func TestLoadRedisModes(t *testing.T) {
	tests := []struct {
		name    string
		env     map[string]string
		want    redisx.Target
		problem []string // substrings of the error; none: valid
	}{
		{name: "default single node", want: redisx.Target{URL: "redis://127.0.0.1:6379/0"}},
		{
			name: "cluster",
			env:  map[string]string{"REDIS_CLUSTER_ADDRS": " 10.0.0.1:7000, 10.0.0.2:7000,,", "REDIS_PASSWORD": "pw"},
			want: redisx.Target{URL: "redis://127.0.0.1:6379/0", ClusterAddrs: []string{"10.0.0.1:7000", "10.0.0.2:7000"}, Password: "pw"},
		},
		{
			name: "sentinel",
			env: map[string]string{"REDIS_SENTINEL_ADDRS": "s1:26379,[::1]:26380", "REDIS_SENTINEL_MASTER": "mymaster",
				"REDIS_SENTINEL_PASSWORD": "spw"},
			want: redisx.Target{URL: "redis://127.0.0.1:6379/0", SentinelAddrs: []string{"s1:26379", "[::1]:26380"},
				SentinelMaster: "mymaster", SentinelPassword: "spw"},
		},
		{
			name:    "cluster and sentinel",
			env:     map[string]string{"REDIS_CLUSTER_ADDRS": "a:1", "REDIS_SENTINEL_ADDRS": "s:2", "REDIS_SENTINEL_MASTER": "m"},
			problem: []string{"REDIS_CLUSTER_ADDRS", "REDIS_SENTINEL_ADDRS", "choose one"},
		},
		{
			name:    "url and cluster",
			env:     map[string]string{"REDIS_URL": "redis://cache:6379/0", "REDIS_CLUSTER_ADDRS": "a:1"},
			problem: []string{"REDIS_URL", "REDIS_CLUSTER_ADDRS", "choose one"},
		},
		{
			name:    "sentinel without master",
			env:     map[string]string{"REDIS_SENTINEL_ADDRS": "s:26379"},
			problem: []string{"REDIS_SENTINEL_MASTER"},
		},
		{
			name:    "master without sentinels",
			env:     map[string]string{"REDIS_SENTINEL_MASTER": "mymaster"},
			problem: []string{"REDIS_SENTINEL_ADDRS"},
		},
		{
			name:    "seed that is not host:port",
			env:     map[string]string{"REDIS_CLUSTER_ADDRS": "10.0.0.1:7000,cache,h:99999"},
			problem: []string{"REDIS_CLUSTER_ADDRS", `"cache"`, `"h:99999"`},
		},
		{
			name:    "brace in the key prefix",
			env:     map[string]string{"REDIS_KEY_PREFIX": "{app}:"},
			problem: []string{"REDIS_KEY_PREFIX"},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			for k, v := range tt.env {
				t.Setenv(k, v)
			}
			cfg, err := Load(flags(t))
			if len(tt.problem) > 0 {
				if err == nil {
					t.Fatalf("Load = nil error, want one naming %v", tt.problem)
				}
				for _, p := range tt.problem {
					if !strings.Contains(err.Error(), p) {
						t.Errorf("error does not mention %s:\n%v", p, err)
					}
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if diff := cmp.Diff(tt.want, cfg.RedisTarget()); diff != "" {
				t.Errorf("RedisTarget (-want +got):\n%s", diff)
			}
			var buf strings.Builder
			slog.New(slog.NewJSONHandler(&buf, nil)).Info("starting", "config", cfg)
			for _, secret := range []string{`"pw"`, `"spw"`} {
				if strings.Contains(buf.String(), secret) {
					t.Errorf("the config dump shows a Redis password: %s", buf.String())
				}
			}
		})
	}
}
