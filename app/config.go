package app

import (
	"bytes"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/url"
	"reflect"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/spf13/pflag"
	"github.com/spf13/viper"

	"github.com/campaignd/dispatch/configs"
	"github.com/campaignd/dispatch/customer"
	"github.com/campaignd/dispatch/messaging"
	"github.com/campaignd/dispatch/platform/auth"
	"github.com/campaignd/dispatch/platform/redisx"
)

// Config is the service's whole configuration. Load fills it from, in rising
// precedence: the embedded configs/config.yaml, a --config file, environment
// variables (API_PORT for api.port), and command-line flags.
type Config struct {
	StartupTimeout time.Duration `mapstructure:"startup_timeout"`
	Database       struct {
		URL string `mapstructure:"url"`
		// DirectURL reaches PostgreSQL itself when URL is PgBouncer's:
		// creating the database and migrations go through it. Empty: URL.
		DirectURL string `mapstructure:"direct_url"`
		// PgBouncer says URL is PgBouncer in transaction pooling mode: no
		// statement is prepared on the server, every query takes one round
		// trip, and the start-up check of max_connections is skipped.
		PgBouncer       bool          `mapstructure:"pgbouncer"`
		CreateIfMissing bool          `mapstructure:"create_if_missing"`
		MigrateOnStart  bool          `mapstructure:"migrate_on_start"`
		SeedOnStart     bool          `mapstructure:"seed_on_start"`
		MaxOpenConns    int           `mapstructure:"max_open_conns"`
		MaxIdleConns    int           `mapstructure:"max_idle_conns"`
		ConnMaxLifetime time.Duration `mapstructure:"conn_max_lifetime"`
	} `mapstructure:"database"`
	DB struct {
		Host     string `mapstructure:"host"`
		Port     int    `mapstructure:"port"`
		User     string `mapstructure:"user"`
		Password string `mapstructure:"password"`
		Name     string `mapstructure:"name"`
		SSLMode  string `mapstructure:"sslmode"`
	} `mapstructure:"db"`
	Redis struct {
		URL       string `mapstructure:"url"`
		KeyPrefix string `mapstructure:"key_prefix"`
		// ClusterAddrs (comma-separated host:port seeds) selects a Redis
		// Cluster; SentinelAddrs with SentinelMaster a Sentinel-managed
		// primary. Neither: the one node at URL.
		ClusterAddrs     string `mapstructure:"cluster_addrs"`
		SentinelAddrs    string `mapstructure:"sentinel_addrs"`
		SentinelMaster   string `mapstructure:"sentinel_master"`
		Username         string `mapstructure:"username"`
		Password         string `mapstructure:"password"`
		SentinelPassword string `mapstructure:"sentinel_password"`
	} `mapstructure:"redis"`
	Queue struct {
		Name string `mapstructure:"name"`
	} `mapstructure:"queue"`
	API struct {
		Enabled           bool          `mapstructure:"enabled"`
		Port              int           `mapstructure:"port"`
		BodyLimit         string        `mapstructure:"body_limit"`
		ImportBodyLimit   string        `mapstructure:"import_body_limit"`
		ImportMaxRows     int           `mapstructure:"import_max_rows"`
		ImportConcurrency int           `mapstructure:"import_concurrency"`
		ShutdownTimeout   time.Duration `mapstructure:"shutdown_timeout"`
		RateLimit         int           `mapstructure:"rate_limit"`
		RateBurst         int           `mapstructure:"rate_burst"`
		TrustedProxies    string        `mapstructure:"trusted_proxies"`
	} `mapstructure:"api"`
	Auth struct {
		Disabled bool          `mapstructure:"disabled"`
		CacheTTL time.Duration `mapstructure:"cache_ttl"`
	} `mapstructure:"auth"`
	Dashboard struct {
		SessionTTL time.Duration `mapstructure:"session_ttl"`
	} `mapstructure:"dashboard"`
	BootstrapAPIKey string `mapstructure:"bootstrap_api_key"`
	Customers       struct {
		DefaultRegion string `mapstructure:"default_region"`
	} `mapstructure:"customers"`
	Limits struct {
		SMSMaxChars      int `mapstructure:"sms_max_chars"`
		WhatsAppMaxChars int `mapstructure:"whatsapp_max_chars"`
	} `mapstructure:"limits"`
	WorkerConcurrency int           `mapstructure:"worker_concurrency"`
	MaxRetryCount     int           `mapstructure:"max_retry_count"`
	RetryBackoffBase  time.Duration `mapstructure:"retry_backoff_base"`
	RetryBackoffMax   time.Duration `mapstructure:"retry_backoff_max"`
	// MessageRetention is how long the messages of finished campaigns are
	// kept ("90d"; "" or "0": forever); see MessageRetentionPeriod.
	MessageRetention string `mapstructure:"message_retention"`
	Worker           struct {
		BatchSize         int           `mapstructure:"batch_size"`
		SendTimeout       time.Duration `mapstructure:"send_timeout"`
		Lease             time.Duration `mapstructure:"lease"`
		DrainTimeout      time.Duration `mapstructure:"drain_timeout"`
		HeartbeatInterval time.Duration `mapstructure:"heartbeat_interval"`
		ConsumerTTL       time.Duration `mapstructure:"consumer_ttl"`
	} `mapstructure:"worker"`
	Sweeper struct {
		Interval        time.Duration `mapstructure:"interval"`
		PromoteInterval time.Duration `mapstructure:"promote_interval"`
		StaleAfter      time.Duration `mapstructure:"stale_after"`
		FinishInterval  time.Duration `mapstructure:"finish_interval"`
	} `mapstructure:"sweeper"`
	Schedule struct {
		Interval    time.Duration `mapstructure:"interval"`
		MaxLateness time.Duration `mapstructure:"max_lateness"`
	} `mapstructure:"schedule"`
	Sender struct {
		SuccessRate          float64       `mapstructure:"success_rate"`
		PermanentFailureRate float64       `mapstructure:"permanent_failure_rate"`
		MinLatency           time.Duration `mapstructure:"min_latency"`
		MaxLatency           time.Duration `mapstructure:"max_latency"`
		Seed                 uint64        `mapstructure:"seed"`
		Ledger               string        `mapstructure:"ledger"`
	} `mapstructure:"sender"`
	// PublicBaseURL is the address providers call back (receipts,
	// inbound messages), e.g. https://dispatch.example.com.
	PublicBaseURL string `mapstructure:"public_base_url"`
	// UncertainPolicy says what happens to a message whose attempt may have
	// reached the provider although we saw no answer: resend or fail.
	UncertainPolicy string `mapstructure:"uncertain_policy"`
	Providers       struct {
		SMS      string        `mapstructure:"sms"`
		WhatsApp string        `mapstructure:"whatsapp"`
		Brake    time.Duration `mapstructure:"brake"`
		MaxBrake time.Duration `mapstructure:"max_brake"`
	} `mapstructure:"providers"`
	AfricasTalking struct {
		BaseURL        string `mapstructure:"base_url"`
		Username       string `mapstructure:"username"`
		APIKey         string `mapstructure:"api_key"`
		SenderID       string `mapstructure:"sender_id"`
		CallbackSecret string `mapstructure:"callback_secret"`
		Rate           int    `mapstructure:"rate"`
	} `mapstructure:"africastalking"`
	Twilio struct {
		BaseURL             string `mapstructure:"base_url"`
		AccountSID          string `mapstructure:"account_sid"`
		AuthToken           string `mapstructure:"auth_token"`
		From                string `mapstructure:"from"`
		MessagingServiceSID string `mapstructure:"messaging_service_sid"`
		WhatsAppFrom        string `mapstructure:"whatsapp_from"`
		Rate                int    `mapstructure:"rate"`
	} `mapstructure:"twilio"`
	Webhooks struct {
		Timeout      time.Duration `mapstructure:"timeout"`
		DisableAfter time.Duration `mapstructure:"disable_after"`
	} `mapstructure:"webhooks"`
	ErrorBrake struct {
		Window    int     `mapstructure:"window"`
		Threshold float64 `mapstructure:"threshold"`
	} `mapstructure:"error_brake"`
	// Pricing prices estimates: decimals as text, parsed by PricingTable.
	Pricing struct {
		Currency          string            `mapstructure:"currency"`
		DefaultPerSegment string            `mapstructure:"default_per_segment"`
		PerCallingCode    map[string]string `mapstructure:"per_calling_code"`
	} `mapstructure:"pricing"`
	Log struct {
		Level  string `mapstructure:"level"`
		Format string `mapstructure:"format"`
	} `mapstructure:"log"`
}

// Flags declares the command-line flags that override configuration keys.
func Flags(fs *pflag.FlagSet) {
	fs.String("config", "", "YAML file whose keys override the built-in defaults (see configs/config.yaml)")
	fs.Int("worker-concurrency", 0, "delivery goroutines (overrides WORKER_CONCURRENCY); 0 runs an API-only replica")
	fs.Int("port", 0, "HTTP port (overrides API_PORT); 0 in a test picks a free port")
}

// flagKeys maps flag names to the configuration keys they override.
var flagKeys = map[string]string{
	"worker-concurrency": "worker_concurrency",
	"port":               "api.port",
}

// Load builds the configuration. fs may be nil; only flags the user set
// override. Every problem found is reported together.
func Load(fs *pflag.FlagSet) (Config, error) {
	var cfg Config
	v := viper.New()
	v.SetConfigType("yaml")
	if err := v.ReadConfig(bytes.NewReader(configs.Default)); err != nil {
		return cfg, fmt.Errorf("embedded config: %w", err)
	}
	if fs != nil {
		if f := fs.Lookup("config"); f != nil && f.Value.String() != "" {
			v.SetConfigFile(f.Value.String())
			if err := v.MergeInConfig(); err != nil {
				return cfg, fmt.Errorf("config file %s: %w", f.Value.String(), err)
			}
		}
	}
	v.SetEnvKeyReplacer(strings.NewReplacer(".", "_"))
	v.AutomaticEnv()
	if fs != nil {
		for name, key := range flagKeys {
			if f := fs.Lookup(name); f != nil && f.Changed {
				v.Set(key, f.Value.String())
			}
		}
	}
	if err := v.Unmarshal(&cfg); err != nil {
		return cfg, errors.New("config: " + oneLine(err.Error()))
	}
	return cfg, cfg.Validate()
}

// oneLine joins a multi-line message (the decoder lists one problem a line)
// into one line: "a:\n\nb\nc" becomes "a: b; c".
func oneLine(msg string) string {
	var b strings.Builder
	for line := range strings.Lines(msg) {
		line = strings.TrimSpace(line)
		if line == "" {
			continue
		}
		if b.Len() > 0 {
			if strings.HasSuffix(b.String(), ":") {
				b.WriteString(" ")
			} else {
				b.WriteString("; ")
			}
		}
		b.WriteString(line)
	}
	return b.String()
}

// Validate lists every problem with the configuration.
func (c Config) Validate() error {
	var problems []string
	bad := func(format string, args ...any) { problems = append(problems, fmt.Sprintf(format, args...)) }

	if c.Database.URL == "" {
		if c.DB.Host == "" {
			bad("db.host (DB_HOST) is empty and database.url (DATABASE_URL) is not set")
		}
		if c.DB.Name == "" {
			bad("db.name (DB_NAME) is empty and database.url (DATABASE_URL) is not set")
		}
		if c.DB.Port < 1 || c.DB.Port > 65535 {
			bad("db.port (DB_PORT) %d is not a port number", c.DB.Port)
		}
	} else if u, err := url.Parse(c.Database.URL); err != nil || (u.Scheme != "postgres" && u.Scheme != "postgresql") {
		bad("database.url (DATABASE_URL) must be a postgres:// URL")
	}
	if c.Database.DirectURL != "" {
		if u, err := url.Parse(c.Database.DirectURL); err != nil || (u.Scheme != "postgres" && u.Scheme != "postgresql") {
			bad("database.direct_url (DATABASE_DIRECT_URL) must be a postgres:// URL")
		}
	}
	if c.StartupTimeout <= 0 {
		bad("startup_timeout (STARTUP_TIMEOUT) must be positive")
	}
	if c.Database.MaxOpenConns < 1 {
		bad("database.max_open_conns (DATABASE_MAX_OPEN_CONNS) must be at least 1, got %d", c.Database.MaxOpenConns)
	}
	for _, p := range c.redisProblems() {
		bad("%s", p)
	}
	if strings.TrimSpace(c.Queue.Name) == "" {
		bad("queue.name (QUEUE_NAME) is empty")
	}
	// The queue's keys are hash-tagged as {<prefix><queue name>}: a brace
	// inside would end the tag early and split the queue over slots.
	if strings.ContainsAny(c.Redis.KeyPrefix, "{}") {
		bad("redis.key_prefix (REDIS_KEY_PREFIX) must not contain { or }: the service wraps it in a hash tag itself, got %q", c.Redis.KeyPrefix)
	}
	if strings.ContainsAny(c.Queue.Name, "{}") {
		bad("queue.name (QUEUE_NAME) must not contain { or }: the service wraps it in a hash tag itself, got %q", c.Queue.Name)
	}
	if c.API.Port < 0 || c.API.Port > 65535 {
		bad("api.port (API_PORT) %d is not a port number", c.API.Port)
	}
	if _, err := ParseBytes(c.API.BodyLimit); err != nil {
		bad("api.body_limit (API_BODY_LIMIT): %v", err)
	}
	if _, err := ParseBytes(c.API.ImportBodyLimit); err != nil {
		bad("api.import_body_limit (API_IMPORT_BODY_LIMIT): %v", err)
	}
	if c.API.ImportMaxRows < 1 {
		bad("api.import_max_rows (API_IMPORT_MAX_ROWS) must be at least 1")
	}
	if c.API.ImportConcurrency < 1 {
		bad("api.import_concurrency (API_IMPORT_CONCURRENCY) must be at least 1, got %d", c.API.ImportConcurrency)
	}
	if c.API.ShutdownTimeout <= 0 {
		bad("api.shutdown_timeout (API_SHUTDOWN_TIMEOUT) must be positive")
	}
	if c.API.RateLimit < 1 {
		bad("api.rate_limit (API_RATE_LIMIT) must be at least 1 request per second, got %d", c.API.RateLimit)
	}
	if c.API.RateBurst < 1 {
		bad("api.rate_burst (API_RATE_BURST) must be at least 1, got %d", c.API.RateBurst)
	}
	if _, err := c.TrustedProxies(); err != nil {
		bad("api.trusted_proxies (API_TRUSTED_PROXIES): %v", err)
	}
	if c.Dashboard.SessionTTL < time.Minute {
		bad("dashboard.session_ttl (DASHBOARD_SESSION_TTL) must be at least 1m, got %s", c.Dashboard.SessionTTL)
	}
	if c.Auth.CacheTTL <= 0 || c.Auth.CacheTTL > time.Minute {
		bad("auth.cache_ttl (AUTH_CACHE_TTL) must be positive and at most 1m (a revoked key works on other replicas this long), got %s", c.Auth.CacheTTL)
	}
	if c.BootstrapAPIKey != "" {
		if err := auth.CheckFormat(c.BootstrapAPIKey); err != nil {
			bad("bootstrap_api_key (BOOTSTRAP_API_KEY): %v", err)
		}
	}
	if !customer.ValidRegion(c.Customers.DefaultRegion) {
		bad("customers.default_region (CUSTOMERS_DEFAULT_REGION) must be a two-letter country code with a phone plan, such as US or KE; got %q", c.Customers.DefaultRegion)
	}
	if c.Limits.SMSMaxChars < 1 {
		bad("limits.sms_max_chars (LIMITS_SMS_MAX_CHARS) must be at least 1, got %d", c.Limits.SMSMaxChars)
	}
	if c.Limits.WhatsAppMaxChars < 1 {
		bad("limits.whatsapp_max_chars (LIMITS_WHATSAPP_MAX_CHARS) must be at least 1, got %d", c.Limits.WhatsAppMaxChars)
	}
	if c.WorkerConcurrency < 0 || c.WorkerConcurrency > 10000 {
		bad("worker_concurrency (WORKER_CONCURRENCY) must be from 0 to 10000, got %d", c.WorkerConcurrency)
	}
	if !c.API.Enabled && c.WorkerConcurrency == 0 {
		bad("api.enabled is false and worker_concurrency is 0: this replica would do nothing")
	}
	if c.MaxRetryCount < 1 || c.MaxRetryCount > 50 {
		bad("max_retry_count (MAX_RETRY_COUNT) must be from 1 to 50, got %d", c.MaxRetryCount)
	}
	if c.RetryBackoffBase <= 0 {
		bad("retry_backoff_base (RETRY_BACKOFF_BASE) must be positive")
	}
	if _, err := messaging.ParseRetention(c.MessageRetention); err != nil {
		bad("message_retention (MESSAGE_RETENTION): %v", err)
	}
	if c.RetryBackoffMax < c.RetryBackoffBase {
		bad("retry_backoff_max (RETRY_BACKOFF_MAX) must be at least retry_backoff_base")
	}
	if c.Worker.BatchSize < 1 || c.Worker.BatchSize > 1000 {
		bad("worker.batch_size (WORKER_BATCH_SIZE) must be from 1 to 1000, got %d", c.Worker.BatchSize)
	}
	for _, d := range []struct {
		name string
		val  time.Duration
	}{
		{"worker.send_timeout (WORKER_SEND_TIMEOUT)", c.Worker.SendTimeout},
		{"worker.drain_timeout (WORKER_DRAIN_TIMEOUT)", c.Worker.DrainTimeout},
		{"worker.heartbeat_interval (WORKER_HEARTBEAT_INTERVAL)", c.Worker.HeartbeatInterval},
		{"sweeper.interval (SWEEPER_INTERVAL)", c.Sweeper.Interval},
		{"sweeper.promote_interval (SWEEPER_PROMOTE_INTERVAL)", c.Sweeper.PromoteInterval},
		{"sweeper.stale_after (SWEEPER_STALE_AFTER)", c.Sweeper.StaleAfter},
		{"sweeper.finish_interval (SWEEPER_FINISH_INTERVAL)", c.Sweeper.FinishInterval},
		{"schedule.interval (SCHEDULE_INTERVAL)", c.Schedule.Interval},
		{"schedule.max_lateness (SCHEDULE_MAX_LATENESS)", c.Schedule.MaxLateness},
	} {
		if d.val <= 0 {
			bad("%s must be positive", d.name)
		}
	}
	if c.Worker.Lease <= c.Worker.SendTimeout {
		bad("worker.lease (WORKER_LEASE) must be longer than worker.send_timeout, or a slow delivery would be taken over while it runs")
	}
	if c.Worker.ConsumerTTL <= 2*c.Worker.HeartbeatInterval {
		bad("worker.consumer_ttl (WORKER_CONSUMER_TTL) must be more than twice worker.heartbeat_interval")
	}
	if c.Sender.SuccessRate < 0 || c.Sender.SuccessRate > 1 {
		bad("sender.success_rate (SENDER_SUCCESS_RATE) must be from 0 to 1, got %v", c.Sender.SuccessRate)
	}
	if c.Sender.PermanentFailureRate < 0 || c.Sender.PermanentFailureRate > 1 {
		bad("sender.permanent_failure_rate (SENDER_PERMANENT_FAILURE_RATE) must be from 0 to 1")
	}
	if c.Sender.MinLatency < 0 || c.Sender.MaxLatency < c.Sender.MinLatency {
		bad("sender.min_latency and sender.max_latency (SENDER_MIN_LATENCY, SENDER_MAX_LATENCY) must satisfy 0 <= min <= max")
	}
	if c.Providers.SMS != "mock" && c.Providers.SMS != "africastalking" && c.Providers.SMS != "twilio" {
		bad("providers.sms (PROVIDERS_SMS) must be mock, africastalking or twilio, got %q", c.Providers.SMS)
	}
	if c.Providers.WhatsApp != "mock" && c.Providers.WhatsApp != "twilio" {
		bad("providers.whatsapp (PROVIDERS_WHATSAPP) must be mock or twilio, got %q", c.Providers.WhatsApp)
	}
	if c.Providers.Brake <= 0 || c.Providers.MaxBrake < c.Providers.Brake {
		bad("providers.brake (PROVIDERS_BRAKE) must be positive and providers.max_brake (PROVIDERS_MAX_BRAKE) at least as long")
	}
	if c.UncertainPolicy != "resend" && c.UncertainPolicy != "fail" {
		bad("uncertain_policy (UNCERTAIN_POLICY) must be resend or fail, got %q", c.UncertainPolicy)
	}
	if c.PublicBaseURL != "" {
		if u, err := url.Parse(c.PublicBaseURL); err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
			bad("public_base_url (PUBLIC_BASE_URL) must be an absolute http(s) URL, got %q", c.PublicBaseURL)
		}
	}
	if c.uses("twilio") && c.PublicBaseURL == "" {
		bad("public_base_url (PUBLIC_BASE_URL) is required with the twilio provider: Twilio's StatusCallback is built from it")
	}
	if c.AfricasTalking.Rate < 0 || c.Twilio.Rate < 0 {
		bad("africastalking.rate and twilio.rate (AFRICASTALKING_RATE, TWILIO_RATE) must not be negative")
	}
	if c.Webhooks.Timeout <= 0 || c.Webhooks.DisableAfter < time.Hour {
		bad("webhooks.timeout (WEBHOOKS_TIMEOUT) must be positive and webhooks.disable_after (WEBHOOKS_DISABLE_AFTER) at least 1h")
	}
	if c.ErrorBrake.Window < 0 || c.ErrorBrake.Threshold <= 0 || c.ErrorBrake.Threshold > 1 {
		bad("error_brake.window (ERROR_BRAKE_WINDOW) must be 0 (off) or more, and error_brake.threshold (ERROR_BRAKE_THRESHOLD) in (0, 1]")
	}
	if c.Sender.Ledger != "postgres" && c.Sender.Ledger != "memory" {
		bad("sender.ledger (SENDER_LEDGER) must be postgres or memory, got %q", c.Sender.Ledger)
	}
	if _, err := c.PricingTable(); err != nil {
		bad("pricing (PRICING_CURRENCY, PRICING_DEFAULT_PER_SEGMENT, PRICING_PER_CALLING_CODE_<code>): %v", err)
	}
	switch c.Log.Level {
	case "debug", "info", "warn", "error":
	default:
		bad("log.level (LOG_LEVEL) must be debug, info, warn or error, got %q", c.Log.Level)
	}
	switch c.Log.Format {
	case "json", "text":
	default:
		bad("log.format (LOG_FORMAT) must be json or text, got %q", c.Log.Format)
	}
	if len(problems) > 0 {
		// One line, so that it stays one log record wherever it is printed.
		return errors.New("invalid configuration: " + strings.Join(problems, "; "))
	}
	return nil
}

// redisProblems checks that exactly one Redis mode is chosen, and chosen
// completely: redis.url (a single node; its default counts as unset when a
// cluster or Sentinels are named), redis.cluster_addrs, or
// redis.sentinel_addrs with redis.sentinel_master.
func (c Config) redisProblems() []string {
	var problems []string
	cluster, sentinel := strings.TrimSpace(c.Redis.ClusterAddrs) != "", strings.TrimSpace(c.Redis.SentinelAddrs) != ""
	urlSet := c.Redis.URL != "" && c.Redis.URL != defaultRedisURL()
	var chosen []string
	if urlSet && (cluster || sentinel) {
		chosen = append(chosen, "redis.url (REDIS_URL)")
	}
	if cluster {
		chosen = append(chosen, "redis.cluster_addrs (REDIS_CLUSTER_ADDRS)")
	}
	if sentinel {
		chosen = append(chosen, "redis.sentinel_addrs (REDIS_SENTINEL_ADDRS)")
	}
	if len(chosen) > 1 {
		problems = append(problems, fmt.Sprintf("%s are all set: choose one Redis (a single node, a cluster or a Sentinel-managed primary)",
			strings.Join(chosen, " and ")))
	}
	if cluster {
		if _, err := redisx.SplitAddrs(c.Redis.ClusterAddrs); err != nil {
			problems = append(problems, fmt.Sprintf("redis.cluster_addrs (REDIS_CLUSTER_ADDRS): %v", err))
		}
	}
	if sentinel {
		if _, err := redisx.SplitAddrs(c.Redis.SentinelAddrs); err != nil {
			problems = append(problems, fmt.Sprintf("redis.sentinel_addrs (REDIS_SENTINEL_ADDRS): %v", err))
		}
		if strings.TrimSpace(c.Redis.SentinelMaster) == "" {
			problems = append(problems, "redis.sentinel_addrs (REDIS_SENTINEL_ADDRS) is set but redis.sentinel_master (REDIS_SENTINEL_MASTER) is empty: name the primary the Sentinels watch")
		}
	} else if strings.TrimSpace(c.Redis.SentinelMaster) != "" {
		problems = append(problems, "redis.sentinel_master (REDIS_SENTINEL_MASTER) is set but redis.sentinel_addrs (REDIS_SENTINEL_ADDRS) is empty")
	}
	if !cluster && !sentinel {
		if u, err := url.Parse(c.Redis.URL); err != nil || (u.Scheme != "redis" && u.Scheme != "rediss") {
			problems = append(problems, "redis.url (REDIS_URL) must be a redis:// or rediss:// URL")
		}
	}
	return problems
}

// defaultRedisURL is redis.url as configs/config.yaml sets it.
var defaultRedisURL = sync.OnceValue(func() string {
	v := viper.New()
	v.SetConfigType("yaml")
	if err := v.ReadConfig(bytes.NewReader(configs.Default)); err != nil {
		return ""
	}
	return v.GetString("redis.url")
})

// RedisTarget is the Redis the configuration names (see redisProblems).
func (c Config) RedisTarget() redisx.Target {
	t := redisx.Target{URL: c.Redis.URL, Username: c.Redis.Username, Password: c.Redis.Password,
		SentinelPassword: c.Redis.SentinelPassword}
	if strings.TrimSpace(c.Redis.ClusterAddrs) != "" {
		t.ClusterAddrs, _ = redisx.SplitAddrs(c.Redis.ClusterAddrs)
	} else if strings.TrimSpace(c.Redis.SentinelAddrs) != "" {
		t.SentinelAddrs, _ = redisx.SplitAddrs(c.Redis.SentinelAddrs)
		t.SentinelMaster = strings.TrimSpace(c.Redis.SentinelMaster)
	}
	return t
}

// PricingTable is pricing.* parsed: prices in micro-units (messaging.NewPricing).
func (c Config) PricingTable() (messaging.Pricing, error) {
	return messaging.NewPricing(c.Pricing.Currency, c.Pricing.DefaultPerSegment, c.Pricing.PerCallingCode)
}

// DatabaseURL is database.url, or a URL built from db.*.
func (c Config) DatabaseURL() string {
	if c.Database.URL != "" {
		return c.Database.URL
	}
	u := url.URL{
		Scheme:   "postgres",
		Host:     c.DB.Host + ":" + strconv.Itoa(c.DB.Port),
		Path:     "/" + c.DB.Name,
		RawQuery: "sslmode=" + url.QueryEscape(c.DB.SSLMode),
	}
	if c.DB.Password != "" {
		u.User = url.UserPassword(c.DB.User, c.DB.Password)
	} else {
		u.User = url.User(c.DB.User)
	}
	return u.String()
}

// DirectDatabaseURL reaches PostgreSQL itself, not a pooler in front of it:
// database.direct_url, or DatabaseURL when it is empty. Start-up creates the
// database and migrates through it.
func (c Config) DirectDatabaseURL() string {
	if c.Database.DirectURL != "" {
		return c.Database.DirectURL
	}
	return c.DatabaseURL()
}

// Masked returns the configuration as logged at start: secrets replaced.
func (c Config) Masked() Config {
	m := c
	m.Database.URL = maskURL(c.DatabaseURL())
	if c.Database.DirectURL != "" {
		m.Database.DirectURL = maskURL(c.Database.DirectURL)
	}
	if m.DB.Password != "" {
		m.DB.Password = "xxxxx"
	}
	m.Redis.URL = maskURL(c.Redis.URL)
	for _, secret := range []*string{&m.BootstrapAPIKey, &m.AfricasTalking.APIKey, &m.AfricasTalking.CallbackSecret, &m.Twilio.AuthToken,
		&m.Redis.Password, &m.Redis.SentinelPassword} {
		if *secret != "" {
			*secret = "xxxxx"
		}
	}
	return m
}

// TrustedProxies parses api.trusted_proxies: comma-separated addresses or
// CIDR ranges whose X-Forwarded-For the API believes.
func (c Config) TrustedProxies() ([]*net.IPNet, error) {
	var nets []*net.IPNet
	for _, f := range strings.Split(c.API.TrustedProxies, ",") {
		f = strings.TrimSpace(f)
		if f == "" {
			continue
		}
		if !strings.Contains(f, "/") {
			ip := net.ParseIP(f)
			if ip == nil {
				return nil, fmt.Errorf("%q is neither an IP address nor a CIDR range", f)
			}
			bits := 8 * len(ip.To16())
			if ip.To4() != nil {
				ip, bits = ip.To4(), 32
			}
			nets = append(nets, &net.IPNet{IP: ip, Mask: net.CIDRMask(bits, bits)})
			continue
		}
		_, n, err := net.ParseCIDR(f)
		if err != nil {
			return nil, fmt.Errorf("%q is neither an IP address nor a CIDR range", f)
		}
		nets = append(nets, n)
	}
	return nets, nil
}

// LogValue logs the configuration under its YAML key names, secrets masked,
// so the dump reads like configs/config.yaml.
func (c Config) LogValue() slog.Value { return structValue(reflect.ValueOf(c.Masked())) }

func structValue(v reflect.Value) slog.Value {
	t := v.Type()
	attrs := make([]slog.Attr, 0, t.NumField())
	for i := range t.NumField() {
		name := t.Field(i).Tag.Get("mapstructure")
		f := v.Field(i)
		switch {
		case f.Kind() == reflect.Struct:
			attrs = append(attrs, slog.Attr{Key: name, Value: structValue(f)})
		case f.Type() == reflect.TypeFor[time.Duration]():
			attrs = append(attrs, slog.String(name, f.Interface().(time.Duration).String()))
		default:
			attrs = append(attrs, slog.Any(name, f.Interface()))
		}
	}
	return slog.GroupValue(attrs...)
}

func maskURL(raw string) string {
	u, err := url.Parse(raw)
	if err != nil {
		return "(unparseable)"
	}
	if u.User != nil {
		if _, ok := u.User.Password(); ok {
			u.User = url.UserPassword(u.User.Username(), "xxxxx")
		}
	}
	return u.String()
}

// ParseBytes reads sizes such as "512KB", "2MB", "1GB" or a plain byte count.
func ParseBytes(s string) (int64, error) {
	t := strings.ToUpper(strings.TrimSpace(s))
	mult := int64(1)
	for _, u := range []struct {
		suffix string
		mult   int64
	}{{"GB", 1 << 30}, {"MB", 1 << 20}, {"KB", 1 << 10}, {"B", 1}} {
		if strings.HasSuffix(t, u.suffix) {
			t, mult = strings.TrimSpace(strings.TrimSuffix(t, u.suffix)), u.mult
			break
		}
	}
	n, err := strconv.ParseInt(t, 10, 64)
	if err != nil || n <= 0 {
		return 0, fmt.Errorf("%q is not a size such as 2MB", s)
	}
	return n * mult, nil
}

// uses reports whether provider carries any channel.
func (c Config) uses(provider string) bool {
	return c.Providers.SMS == provider || c.Providers.WhatsApp == provider
}

// MessageRetentionPeriod is MESSAGE_RETENTION as a duration (0: keep
// forever); Validate has checked it.
func (c Config) MessageRetentionPeriod() time.Duration {
	d, _ := messaging.ParseRetention(c.MessageRetention)
	return d
}
