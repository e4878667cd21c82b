// Package metrics holds the service's Prometheus metrics: a registry per
// App (never the global one, so that tests can run many apps in one
// process), the HTTP middleware that counts requests, the worker pool's
// observer, and the collectors read at scrape time (queue depths, the
// database pool, the Go runtime and the process).
package metrics

import (
	"context"
	"database/sql"
	"fmt"
	"log/slog"
	"net/http"
	"strconv"
	"time"

	"github.com/labstack/echo/v4"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"
)

// DepthSource reports the queue's sizes by state (ready, processing,
// delayed, dead). It is read at every scrape, within depthTimeout.
type DepthSource interface {
	Depths(ctx context.Context) (map[string]int64, error)
}

// BrakeSource reports, per provider in use, whether it is braked (an
// account-level failure stopped all sends to it). Read at every scrape.
type BrakeSource interface {
	Braked(ctx context.Context) (map[string]bool, error)
}

// depthTimeout bounds the queue-depth read of one scrape: a scrape while
// Redis is down answers promptly, without the depths.
const depthTimeout = time.Second

// Options say what a Registry exports besides its own metrics.
type Options struct {
	DB      *sql.DB     // its pool's statistics are exported as go_sql_*; nil: none
	DBName  string      // the db_name label of those statistics
	Depths  DepthSource // nil: no dispatch_queue_depth
	Brakes  BrakeSource // nil: no dispatch_provider_braked
	Workers int         // configured delivery goroutines (0 on an API-only replica)
	Log     *slog.Logger
}

// Registry is one App's metrics. Its methods are safe for concurrent use.
// It implements messaging.Observer.
type Registry struct {
	reg *prometheus.Registry
	log *slog.Logger

	requests         *prometheus.CounterVec
	requestDuration  *prometheus.HistogramVec
	messages         *prometheus.CounterVec
	deliveryDuration *prometheus.HistogramVec
	busy             prometheus.Gauge
}

// New builds and registers the metrics.
func New(opts Options) *Registry {
	r := &Registry{
		reg: prometheus.NewRegistry(),
		log: opts.Log,
		requests: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "dispatch_http_requests_total",
			Help: "HTTP requests answered, by method, route template (unmatched: no route) and status sent.",
		}, []string{"method", "route", "status"}),
		requestDuration: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name:    "dispatch_http_request_duration_seconds",
			Help:    "Time to answer an HTTP request, error response included.",
			Buckets: prometheus.DefBuckets,
		}, []string{"method", "route"}),
		// outcome is sent, failed, retried or cancelled (see
		// messaging.Outcome*). delivered and undelivered are reserved for
		// the providers' delivery receipts.
		messages: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "dispatch_messages_total",
			Help: "Message outcomes stored by the workers: sent, failed (for good), retried (attempt failed, another scheduled), cancelled.",
		}, []string{"channel", "provider", "outcome"}),
		deliveryDuration: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name:    "dispatch_delivery_duration_seconds",
			Help:    "Time of one call to a provider.",
			Buckets: prometheus.DefBuckets,
		}, []string{"provider"}),
		busy: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "dispatch_workers_busy",
			Help: "Delivery goroutines delivering a message now.",
		}),
	}
	if r.log == nil {
		r.log = slog.New(slog.DiscardHandler)
	}
	workers := prometheus.NewGauge(prometheus.GaugeOpts{
		Name: "dispatch_workers",
		Help: "Configured delivery goroutines of this replica (0: API only).",
	})
	workers.Set(float64(opts.Workers))
	r.reg.MustRegister(r.requests, r.requestDuration, r.messages, r.deliveryDuration, r.busy, workers,
		collectors.NewGoCollector(),
		collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}),
	)
	if opts.DB != nil {
		r.reg.MustRegister(collectors.NewDBStatsCollector(opts.DB, opts.DBName))
	}
	if opts.Depths != nil {
		r.reg.MustRegister(scrapedGauge{
			what: "queue depths",
			desc: prometheus.NewDesc("dispatch_queue_depth",
				"Jobs in each part of the queue: ready, processing, delayed, dead.", []string{"state"}, nil),
			read: func(ctx context.Context) (map[string]float64, error) {
				depths, err := opts.Depths.Depths(ctx)
				out := make(map[string]float64, len(depths))
				for state, n := range depths {
					out[state] = float64(n)
				}
				return out, err
			},
		})
	}
	if opts.Brakes != nil {
		r.reg.MustRegister(scrapedGauge{
			what: "provider brakes",
			desc: prometheus.NewDesc("dispatch_provider_braked",
				"1 while the provider is braked for every replica after an account-level failure, else 0.", []string{"provider"}, nil),
			read: func(ctx context.Context) (map[string]float64, error) {
				brakes, err := opts.Brakes.Braked(ctx)
				out := make(map[string]float64, len(brakes))
				for provider, on := range brakes {
					out[provider] = 0
					if on {
						out[provider] = 1
					}
				}
				return out, err
			},
		})
	}
	return r
}

// Handler serves the metrics in the Prometheus text format (or OpenMetrics,
// if asked). A collector that fails (the queue depths while Redis is down)
// is left out of that scrape and logged; the rest are still served.
func (r *Registry) Handler() http.Handler {
	return promhttp.HandlerFor(r.reg, promhttp.HandlerOpts{
		ErrorLog:      slog.NewLogLogger(r.log.Handler(), slog.LevelWarn),
		ErrorHandling: promhttp.ContinueOnError,
		Registry:      r.reg, // counts its own errors in promhttp_metric_handler_errors_total
		// Each scrape reads Redis and /proc: a flood of scrapes waits.
		MaxRequestsInFlight: 4,
		Timeout:             10 * time.Second,
	})
}

// Middleware counts and times every request by method, route template
// (c.Path(), "/campaigns/:id"; "unmatched" when no route matched, so
// arbitrary paths cannot create series) and the status the client got.
//
// Register it right after httpx.Logger. Like Logger, it hands an error to
// the error handler itself, so the response is written before the status is
// read, and returns nil: the outer middleware sees the committed response.
func (r *Registry) Middleware() echo.MiddlewareFunc {
	return func(next echo.HandlerFunc) echo.HandlerFunc {
		return func(c echo.Context) error {
			start := time.Now()
			if err := next(c); err != nil {
				c.Error(err)
			}
			route := c.Path()
			if route == "" {
				route = "unmatched"
			}
			method := methodLabel(c.Request().Method)
			r.requests.WithLabelValues(method, route, statusLabel(c.Response().Status)).Inc()
			r.requestDuration.WithLabelValues(method, route).Observe(time.Since(start).Seconds())
			return nil
		}
	}
}

// methodLabel keeps the method label to the standard methods: Go's server
// accepts any token as a method.
func methodLabel(m string) string {
	switch m {
	case http.MethodGet, http.MethodHead, http.MethodPost, http.MethodPut, http.MethodPatch,
		http.MethodDelete, http.MethodOptions, http.MethodConnect, http.MethodTrace:
		return m
	}
	return "OTHER"
}

// statusLabels holds the status labels preformatted, so labelling a request
// does not allocate.
var statusLabels = func() (s [600]string) {
	for i := 100; i < len(s); i++ {
		s[i] = strconv.Itoa(i)
	}
	return s
}()

func statusLabel(code int) string {
	if code >= 100 && code < len(statusLabels) {
		return statusLabels[code]
	}
	return strconv.Itoa(code)
}

// Outcomes implements messaging.Observer: called once per batch, channel
// and outcome.
func (r *Registry) Outcomes(channel, provider, outcome string, n int) {
	r.messages.WithLabelValues(channel, provider, outcome).Add(float64(n))
}

// DeliveryTook implements messaging.Observer.
func (r *Registry) DeliveryTook(provider string, d time.Duration) {
	r.deliveryDuration.WithLabelValues(provider).Observe(d.Seconds())
}

// Busy implements messaging.Observer.
func (r *Registry) Busy(delta int) { r.busy.Add(float64(delta)) }

// scrapedGauge is a gauge with one label, read when scraped (within
// depthTimeout), so it is never stale and costs nothing between scrapes. A
// failed read leaves it out of that scrape, with the error logged.
type scrapedGauge struct {
	what string // what read reads, for the error
	desc *prometheus.Desc
	read func(ctx context.Context) (map[string]float64, error)
}

func (g scrapedGauge) Describe(ch chan<- *prometheus.Desc) { ch <- g.desc }

func (g scrapedGauge) Collect(ch chan<- prometheus.Metric) {
	ctx, cancel := context.WithTimeout(context.Background(), depthTimeout)
	defer cancel()
	values, err := g.read(ctx)
	if err != nil {
		ch <- prometheus.NewInvalidMetric(g.desc, fmt.Errorf("read %s: %w", g.what, err))
		return
	}
	for label, v := range values {
		ch <- prometheus.MustNewConstMetric(g.desc, prometheus.GaugeValue, v, label)
	}
}
