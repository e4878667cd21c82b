// Package sim is a simulator of the two real providers, Africa's Talking and
// Twilio, for tests and local runs. One HTTP server speaks both send APIs
// with the request, response and error shapes of PROVIDERS.md §1 and §3, and
// posts delivery receipts and inbound messages back the way each provider
// does (§2, §4): Africa's Talking's unsigned forms to URLs set once, Twilio's
// forms signed with X-Twilio-Signature to each message's StatusCallback.
//
// Options decide how the simulated providers behave: latency, the share of
// sends accepted, rejected (permanently or transiently) or throttled, how
// long receipts take, how many say delivered, and whether they come twice
// or out of order. Every accepted send is counted by (provider, to, body),
// so a test can tell how many times a message really went out.
//
// Besides the provider APIs the server has a small control surface under
// /sim/: GET /sim/stats, POST /sim/balance (the insufficient-balance switch)
// and POST /sim/inbound (make a recipient write to us). Command runs the
// server as a process (the compose service).
package sim

import (
	"context"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"math/rand/v2"
	"mime"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/campaignd/dispatch/messaging/provider"
	"github.com/campaignd/dispatch/platform/channel"
)

// Provider names, as provider.Error.Provider spells them.
const (
	AfricasTalking = "africastalking"
	Twilio         = "twilio"
)

// Callback posting: a failed or non-2xx POST is tried again after
// callbackBackoff, doubling, up to callbackAttempts in all (about 13 s from
// the first try to the last), as providers retry webhooks (on a much longer
// scale). The window must outlast a service restart: receipts posted while
// the receiving process is down are otherwise lost to the test.
const (
	callbackAttempts = 8
	callbackBackoff  = 100 * time.Millisecond
	callbackTimeout  = 5 * time.Second
	maxRequestBody   = 1 << 20
)

// Options is how the simulated providers behave. The zero Options accepts
// and delivers every message at once, with any credentials.
//
// Rates are shares in [0, 1]; values outside are clamped. AcceptRate and
// DeliveredRatio default to 1 when 0, so a negative value is how to ask for
// none.
type Options struct {
	// Latency is how long every send request waits before it is answered,
	// plus a uniformly random extra up to LatencyJitter. A send is decided
	// (counted, receipt scheduled) when it arrives, so a client that gives
	// up during the wait has still sent the message, as with a real
	// provider.
	Latency       time.Duration
	LatencyJitter time.Duration

	// AcceptRate is the share of sends accepted (default 1).
	AcceptRate float64
	// PermanentRate is the share of the sends not accepted that fail
	// permanently: Africa's Talking statusCode 403 InvalidPhoneNumber,
	// Twilio HTTP 400 code 21211. The others fail transiently: statusCode
	// 500 InternalServerError, Twilio HTTP 503 code 20503.
	PermanentRate float64
	// ThrottleRate is the share of send requests answered 429 with
	// Retry-After: 1 before anything else is looked at (Twilio code 20429).
	ThrottleRate float64

	// ReceiptDelay is how long after the answer an accepted message's
	// receipt is posted, plus a random extra up to ReceiptJitter.
	ReceiptDelay  time.Duration
	ReceiptJitter time.Duration
	// DeliveredRatio is the share of accepted messages whose receipt says
	// delivered (Success); the rest say undelivered (Failed, failureReason
	// DeliveryFailure; Twilio ErrorCode 30003). Default 1.
	DeliveredRatio float64
	// DuplicateReceipts is the probability that a final receipt is posted
	// twice.
	DuplicateReceipts float64
	// OutOfOrder makes Twilio post an intermediate "sent" status callback
	// after the final one, which a receiver must not let move the status
	// back.
	OutOfOrder bool

	// Credentials the send APIs require. An empty value accepts any.
	ATUsername       string
	ATAPIKey         string
	TwilioAccountSID string
	// TwilioAuthToken is also the key Twilio's callbacks are signed with.
	TwilioAuthToken string

	// Where callbacks go. Africa's Talking's are set per app, so here;
	// Twilio's receipts go to each request's StatusCallback. An empty URL
	// means that callback is not sent.
	ATDeliveryURL    string
	ATInboundURL     string
	TwilioInboundURL string

	// Seed seeds every random choice (ids included); 0 picks a random seed.
	Seed uint64
	// HTTPClient posts the callbacks; nil means a client with timeouts.
	HTTPClient *http.Client
	// Log receives a line per decision at debug level and per abandoned
	// callback at warn; nil discards.
	Log *slog.Logger
}

// Stats counts what the simulator did since it started.
type Stats struct {
	// Accepted counts accepted sends, one per recipient.
	Accepted int `json:"accepted"`
	// Rejected counts sends answered with a failure other than throttling:
	// bad credentials or request, insufficient balance, simulated
	// rejection (for Africa's Talking one per recipient refused).
	Rejected int `json:"rejected"`
	// Throttled counts requests answered 429.
	Throttled int `json:"throttled"`
	// Duplicates counts accepted sends of a (provider, to, body) beyond the
	// first.
	Duplicates int `json:"duplicates"`
	// Receipts counts status callbacks posted with a 2xx answer (duplicate
	// and out-of-order ones included).
	Receipts int `json:"receipts"`
	// ReceiptFailures counts status callbacks abandoned after every attempt
	// failed.
	ReceiptFailures int `json:"receipt_failures"`
}

// Server is the simulator. Its methods are safe for concurrent use.
type Server struct {
	opts        Options
	log         *slog.Logger
	client      *http.Client
	ownClient   bool
	handler     http.Handler
	retryBase   time.Duration // callbackBackoff; shorter in tests
	acceptRate  float64
	deliverRate float64

	// ctx ends on Close; it bounds every receipt goroutine.
	ctx    context.Context
	cancel context.CancelFunc
	wg     sync.WaitGroup

	mu           sync.Mutex
	closed       bool
	pending      int // receipt goroutines running
	rng          *rand.Rand
	counts       map[sendKey]int
	stats        Stats
	insufficient map[string]bool
}

type sendKey struct{ provider, to, body string }

// New returns a simulator with opts. Call Close when done with it.
func New(opts Options) *Server {
	seed := opts.Seed
	if seed == 0 {
		seed = rand.Uint64()
	}
	s := &Server{
		opts:         opts,
		log:          opts.Log,
		client:       opts.HTTPClient,
		retryBase:    callbackBackoff,
		acceptRate:   defaultOne(opts.AcceptRate),
		deliverRate:  defaultOne(opts.DeliveredRatio),
		rng:          rand.New(rand.NewPCG(seed, seed^0x9e3779b97f4a7c15)),
		counts:       make(map[sendKey]int),
		insufficient: make(map[string]bool),
	}
	s.opts.PermanentRate = clamp(opts.PermanentRate)
	s.opts.ThrottleRate = clamp(opts.ThrottleRate)
	s.opts.DuplicateReceipts = clamp(opts.DuplicateReceipts)
	if s.log == nil {
		s.log = slog.New(slog.DiscardHandler)
	}
	if s.client == nil {
		s.client = provider.HTTPClient(16, callbackTimeout)
		s.ownClient = true
	}
	s.ctx, s.cancel = context.WithCancel(context.Background())

	mux := http.NewServeMux()
	mux.HandleFunc("POST /version1/messaging", s.handleATSend)
	mux.HandleFunc("POST /2010-04-01/Accounts/{AccountSid}/Messages.json", s.handleTwilioSend)
	mux.HandleFunc("GET /sim/stats", s.handleStats)
	mux.HandleFunc("POST /sim/balance", s.handleBalance)
	mux.HandleFunc("POST /sim/inbound", s.handleInbound)
	mux.HandleFunc("GET /sim/health", func(w http.ResponseWriter, _ *http.Request) {
		writeText(w, http.StatusOK, "ok")
	})
	s.handler = mux
	return s
}

func defaultOne(p float64) float64 {
	if p == 0 {
		return 1
	}
	return clamp(p)
}

func clamp(p float64) float64 { return min(max(p, 0), 1) }

// Handler returns the server's routes: both providers' send APIs and /sim/.
func (s *Server) Handler() http.Handler { return s.handler }

// Close stops the simulator's background work: receipts not yet posted are
// dropped, one being posted is abandoned, and Close returns once every
// receipt goroutine has exited. Sends are still answered afterwards but
// schedule no receipts. Close is idempotent.
func (s *Server) Close() {
	s.mu.Lock()
	if s.closed {
		s.mu.Unlock()
		return
	}
	s.closed = true
	s.mu.Unlock()
	s.cancel()
	s.wg.Wait()
	if s.ownClient {
		s.client.CloseIdleConnections()
	}
}

// Stats returns the counts so far.
func (s *Server) Stats() Stats {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.stats
}

// Count returns how many sends of body to to provider accepted. to is as
// the request gave it: Twilio's WhatsApp sends carry "whatsapp:+E164".
func (s *Server) Count(provider, to, body string) int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.counts[sendKey{provider, to, body}]
}

// SetInsufficientBalance turns provider's out-of-credit state on or off.
// While on, every send to it is refused as an account problem: Africa's
// Talking answers statusCode 405 InsufficientBalance per recipient, Twilio
// HTTP 401 code 20003. An unknown provider name is ignored.
func (s *Server) SetInsufficientBalance(provider string, on bool) {
	if !knownProvider(provider) {
		return
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	s.insufficient[provider] = on
}

func knownProvider(p string) bool { return p == AfricasTalking || p == Twilio }

func (s *Server) broke(provider string) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.insufficient[provider]
}

// SendInbound makes a recipient write to us: it posts an inbound message
// from from (E.164) with body to the provider's inbound URL, as that
// provider would, and returns an error if the URL is not set, the channel
// is not carried by the provider (Africa's Talking has no WhatsApp), or
// the post failed after retries or ctx ended.
func (s *Server) SendInbound(ctx context.Context, provider, ch, from, body string) error {
	if ch == "" {
		ch = string(channel.SMS)
	}
	if !channel.Channel(ch).Valid() {
		return fmt.Errorf("sim: unknown channel %q", ch)
	}
	if from == "" {
		return errors.New("sim: inbound needs a from number")
	}
	var (
		target string
		form   url.Values
		header http.Header
	)
	switch provider {
	case AfricasTalking:
		if channel.Channel(ch) != channel.SMS {
			return fmt.Errorf("sim: %s carries no %s", provider, ch)
		}
		target = s.opts.ATInboundURL
		form = s.atInbound(from, body)
	case Twilio:
		target = s.opts.TwilioInboundURL
		form = s.twilioInbound(channel.Channel(ch), from, body)
		header = s.signed(target, form)
	default:
		return fmt.Errorf("sim: unknown provider %q", provider)
	}
	if target == "" {
		return fmt.Errorf("sim: no inbound URL set for %s", provider)
	}
	if err := s.post(ctx, target, form, header); err != nil {
		return fmt.Errorf("sim: post %s inbound: %w", provider, err)
	}
	return nil
}

// A job is a receipt to post after delay.
type job struct {
	delay time.Duration
	run   func(ctx context.Context)
}

// later runs j.run in a goroutine after j.delay, unless the server closes
// first. The goroutine exits when j.run returns or at Close.
func (s *Server) later(j job) {
	s.mu.Lock()
	if s.closed {
		s.mu.Unlock()
		return
	}
	s.pending++
	s.wg.Add(1)
	s.mu.Unlock()
	go func() {
		defer func() {
			s.mu.Lock()
			s.pending--
			s.mu.Unlock()
			s.wg.Done()
		}()
		if sleep(s.ctx, j.delay) {
			j.run(s.ctx)
		}
	}()
}

// sleep waits d and reports whether it did, false if ctx ended first.
func sleep(ctx context.Context, d time.Duration) bool {
	if d <= 0 {
		return ctx.Err() == nil
	}
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
		return true
	case <-ctx.Done():
		return false
	}
}

// receipt posts one status callback and counts the outcome. A callback
// dropped because the server closed is neither.
func (s *Server) receipt(ctx context.Context, target string, form url.Values, header http.Header) {
	err := s.post(ctx, target, form, header)
	if ctx.Err() != nil {
		return
	}
	s.mu.Lock()
	if err == nil {
		s.stats.Receipts++
	} else {
		s.stats.ReceiptFailures++
	}
	s.mu.Unlock()
	if err != nil {
		s.log.Warn("sim: receipt abandoned", "url", target, "err", err)
	}
}

// post sends form to target, trying again with backoff while the answer is
// not 2xx, up to callbackAttempts.
func (s *Server) post(ctx context.Context, target string, form url.Values, header http.Header) error {
	var err error
	wait := s.retryBase
	for attempt := 1; ; attempt++ {
		if err = s.postOnce(ctx, target, form, header); err == nil {
			return nil
		}
		if attempt == callbackAttempts || !sleep(ctx, wait) {
			return err
		}
		wait *= 2
	}
}

func (s *Server) postOnce(ctx context.Context, target string, form url.Values, header http.Header) error {
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, target, strings.NewReader(form.Encode()))
	if err != nil {
		return err
	}
	for k, v := range header {
		req.Header[k] = v
	}
	req.Header.Set("Content-Type", "application/x-www-form-urlencoded")
	resp, err := s.client.Do(req)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	_, _ = io.Copy(io.Discard, io.LimitReader(resp.Body, 64<<10))
	if resp.StatusCode < 200 || resp.StatusCode > 299 {
		return fmt.Errorf("answered %s", resp.Status)
	}
	return nil
}

// Random choices. The generator is not safe for concurrent use, so each
// draw takes the lock.

func (s *Server) chance(p float64) bool {
	if p <= 0 {
		return false
	}
	if p >= 1 {
		return true
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.rng.Float64() < p
}

func (s *Server) jitter(base, spread time.Duration) time.Duration {
	if spread <= 0 {
		return base
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	return base + time.Duration(s.rng.Int64N(int64(spread)+1))
}

func (s *Server) hex(n int) string {
	b := make([]byte, n)
	s.mu.Lock()
	for i := range b {
		b[i] = byte(s.rng.Uint32())
	}
	s.mu.Unlock()
	return hex.EncodeToString(b)
}

// Counting.

// accept counts an accepted send.
func (s *Server) accept(provider, to, body string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.stats.Accepted++
	k := sendKey{provider, to, body}
	s.counts[k]++
	if s.counts[k] > 1 {
		s.stats.Duplicates++
	}
}

func (s *Server) reject(n int) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.stats.Rejected += n
}

func (s *Server) throttled() {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.stats.Throttled++
}

// A send's outcome, decided before the latency wait.
type outcome int

const (
	accepted outcome = iota
	permanent
	transient
)

func (s *Server) decide() outcome {
	if s.chance(s.acceptRate) {
		return accepted
	}
	if s.chance(s.opts.PermanentRate) {
		return permanent
	}
	return transient
}

// reply is a send's answer, written after the latency wait, and the
// receipts it schedules.
type reply struct {
	status int
	header http.Header
	body   []byte
	jobs   []job
}

// serve answers a send request: decide at once, wait the latency, schedule
// the receipts (even if the client has gone: the message was taken), then
// answer.
func (s *Server) serve(w http.ResponseWriter, r *http.Request, decide func(*http.Request) reply) {
	r.Body = http.MaxBytesReader(w, r.Body, maxRequestBody)
	rep := decide(r)
	sleep(r.Context(), s.jitter(s.opts.Latency, s.opts.LatencyJitter))
	for _, j := range rep.jobs {
		s.later(j)
	}
	for k, v := range rep.header {
		w.Header()[k] = v
	}
	w.WriteHeader(rep.status)
	_, _ = w.Write(rep.body)
}

func textReply(status int, msg string) reply {
	return reply{status: status, header: http.Header{"Content-Type": {"text/plain; charset=utf-8"}}, body: []byte(msg)}
}

func jsonReply(status int, v any) reply {
	b, err := json.Marshal(v)
	if err != nil {
		return textReply(http.StatusInternalServerError, err.Error())
	}
	return reply{status: status, header: http.Header{"Content-Type": {"application/json"}}, body: b}
}

func writeText(w http.ResponseWriter, status int, msg string) {
	w.Header().Set("Content-Type", "text/plain; charset=utf-8")
	w.WriteHeader(status)
	_, _ = io.WriteString(w, msg)
}

func writeJSON(w http.ResponseWriter, status int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(status)
	_ = json.NewEncoder(w).Encode(v)
}

// Control endpoints.

func (s *Server) handleStats(w http.ResponseWriter, _ *http.Request) {
	writeJSON(w, http.StatusOK, s.Stats())
}

// handleBalance is POST /sim/balance?provider=twilio&insufficient=true.
func (s *Server) handleBalance(w http.ResponseWriter, r *http.Request) {
	p := r.FormValue("provider")
	if !knownProvider(p) {
		writeText(w, http.StatusBadRequest, fmt.Sprintf("provider must be %s or %s", AfricasTalking, Twilio))
		return
	}
	on, err := strconv.ParseBool(r.FormValue("insufficient"))
	if err != nil {
		writeText(w, http.StatusBadRequest, "insufficient must be true or false")
		return
	}
	s.SetInsufficientBalance(p, on)
	writeJSON(w, http.StatusOK, map[string]any{"provider": p, "insufficient": on})
}

// handleInbound is POST /sim/inbound with provider, channel, from and body
// as a form or a JSON object; it answers 204 once the message was posted.
func (s *Server) handleInbound(w http.ResponseWriter, r *http.Request) {
	r.Body = http.MaxBytesReader(w, r.Body, maxRequestBody)
	var in struct {
		Provider string `json:"provider"`
		Channel  string `json:"channel"`
		From     string `json:"from"`
		Body     string `json:"body"`
	}
	if ct, _, _ := mime.ParseMediaType(r.Header.Get("Content-Type")); ct == "application/json" {
		if err := json.NewDecoder(r.Body).Decode(&in); err != nil {
			writeText(w, http.StatusBadRequest, "bad JSON: "+err.Error())
			return
		}
	} else {
		in.Provider, in.Channel = r.FormValue("provider"), r.FormValue("channel")
		in.From, in.Body = r.FormValue("from"), r.FormValue("body")
	}
	if !knownProvider(in.Provider) {
		writeText(w, http.StatusBadRequest, fmt.Sprintf("provider must be %s or %s", AfricasTalking, Twilio))
		return
	}
	if err := s.SendInbound(r.Context(), in.Provider, in.Channel, in.From, in.Body); err != nil {
		writeText(w, http.StatusBadGateway, err.Error())
		return
	}
	w.WriteHeader(http.StatusNoContent)
}

// validNumber is a loose E.164 check: both providers refuse what is
// plainly not a phone number.
func validNumber(n string) bool {
	n = strings.TrimPrefix(n, "+")
	if len(n) < 6 || len(n) > 15 || n[0] == '0' {
		return false
	}
	for _, c := range n {
		if c < '0' || c > '9' {
			return false
		}
	}
	return true
}
