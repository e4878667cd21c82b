package outbox

import (
	"bytes"
	"context"
	"encoding/json"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/jmoiron/sqlx"

	"github.com/campaignd/dispatch/platform/postgres/pgtest"
	"github.com/campaignd/dispatch/platform/webhooksig"
)

// syncBuffer is a log destination safe for concurrent writers.
type syncBuffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (b *syncBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.Write(p)
}

func (b *syncBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.String()
}

func discardLog() *slog.Logger { return slog.New(slog.NewTextHandler(io.Discard, nil)) }

// waitFor polls cond every 5 ms until it holds, failing the test with what
// after timeout.
func waitFor(t testing.TB, timeout time.Duration, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out after %s waiting for %s", timeout, what)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// received is one request a receiver answered.
type received struct {
	ID        string
	Status    int
	Event     Event
	VerifyErr error // webhooksig.Verify with the endpoint's secret
	Header    http.Header
	Body      []byte
}

// receiver is a customer's endpoint: it verifies every request with the
// Standard Webhooks algorithm and answers what respond says (200 if nil).
type receiver struct {
	srv *httptest.Server

	mu       sync.Mutex
	secret   string
	respond  func(id string, seen int) int // seen: earlier requests with this id
	hold     chan struct{}                 // when not nil, requests wait for it to close
	seen     map[string]int
	answered []received
	inFlight int
	maxIn    int
}

func newReceiver(t testing.TB) *receiver {
	rc := &receiver{seen: map[string]int{}}
	rc.srv = httptest.NewServer(http.HandlerFunc(rc.serve))
	t.Cleanup(rc.srv.Close)
	return rc
}

func (rc *receiver) URL() string { return rc.srv.URL + "/hooks" }

func (rc *receiver) setSecret(s string) {
	rc.mu.Lock()
	rc.secret = s
	rc.mu.Unlock()
}

func (rc *receiver) serve(w http.ResponseWriter, r *http.Request) {
	body, _ := io.ReadAll(r.Body)
	id := r.Header.Get(webhooksig.HeaderID)
	rc.mu.Lock()
	rc.inFlight++
	rc.maxIn = max(rc.maxIn, rc.inFlight)
	n := rc.seen[id]
	rc.seen[id]++
	hold, respond, secret := rc.hold, rc.respond, rc.secret
	rc.mu.Unlock()
	defer func() {
		rc.mu.Lock()
		rc.inFlight--
		rc.mu.Unlock()
	}()
	if hold != nil {
		select {
		case <-hold:
		case <-r.Context().Done():
			return // the dispatcher gave up on this request: no answer
		}
	}
	status := http.StatusOK
	if respond != nil {
		status = respond(id, n)
	}
	rec := received{ID: id, Status: status, Header: r.Header.Clone(), Body: body,
		VerifyErr: webhooksig.Verify(secret, r.Header, body, time.Now(), 5*time.Minute)}
	_ = json.Unmarshal(body, &rec.Event)
	rc.mu.Lock()
	rc.answered = append(rc.answered, rec)
	rc.mu.Unlock()
	w.WriteHeader(status)
}

// snapshot returns the requests answered so far.
func (rc *receiver) snapshot() []received {
	rc.mu.Lock()
	defer rc.mu.Unlock()
	return append([]received(nil), rc.answered...)
}

// okByID counts the 2xx answers per webhook-id.
func (rc *receiver) okByID() map[string]int {
	out := map[string]int{}
	for _, r := range rc.snapshot() {
		if r.Status >= 200 && r.Status < 300 {
			out[r.ID]++
		}
	}
	return out
}

func (rc *receiver) requestsInFlight() int {
	rc.mu.Lock()
	defer rc.mu.Unlock()
	return rc.inFlight
}

// addEndpoint stores an endpoint for rc subscribed to types and gives rc its
// secret.
func addEndpoint(t testing.TB, db *sqlx.DB, rc *receiver, types ...EventType) Endpoint {
	t.Helper()
	secret, err := webhooksig.NewSecret()
	if err != nil {
		t.Fatal(err)
	}
	names := make([]string, len(types))
	for i, tp := range types {
		names[i] = string(tp)
	}
	e, err := NewStore(db).Create(t.Context(), rc.URL(), names, "test", secret)
	if err != nil {
		t.Fatal(err)
	}
	rc.setSecret(secret)
	return e
}

// fastOptions are dispatcher options on a test's time scale.
func fastOptions() DispatcherOptions {
	return DispatcherOptions{
		Timeout:      5 * time.Second,
		Schedule:     []time.Duration{10 * time.Millisecond, 20 * time.Millisecond, 30 * time.Millisecond},
		PollInterval: 10 * time.Millisecond,
	}
}

// runDispatcher runs a dispatcher until the returned stop is called (or the
// test ends); stop returns once Run has.
func runDispatcher(t testing.TB, db *sqlx.DB, o DispatcherOptions, log *slog.Logger) (stop func()) {
	t.Helper()
	if log == nil {
		log = discardLog()
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	d := NewDispatcher(db, o, log)
	go func() { // returns when ctx ends
		defer close(done)
		d.Run(ctx)
	}()
	var once sync.Once
	stop = func() {
		once.Do(func() {
			cancel()
			select {
			case <-done:
			case <-time.After(30 * time.Second):
				t.Errorf("dispatcher did not stop within 30s of its context ending")
			}
		})
	}
	t.Cleanup(stop)
	return stop
}

// emitN writes n events of type typ with data {"n": i}, committed.
func emitN(t testing.TB, db *sqlx.DB, typ EventType, n int) {
	t.Helper()
	items := make([]any, n)
	for i := range items {
		items[i] = map[string]int{"n": i}
	}
	if err := EmitMany(t.Context(), db, typ, items); err != nil {
		t.Fatal(err)
	}
}

// eventIDs returns the ids of the events still in the outbox, oldest
// first, as their deliveries will carry them: call it before a dispatcher
// fans them out (and deletes them).
func eventIDs(t testing.TB, db *sqlx.DB) []string {
	t.Helper()
	var ids []string
	if err := db.SelectContext(t.Context(), &ids, `
		SELECT w.event_id || lpad(to_hex(a.n - 1), 6, '0')
		FROM webhook_events w CROSS JOIN LATERAL generate_series(1, coalesce(w.items, 1)) AS a(n)
		ORDER BY w.id, a.n`); err != nil {
		t.Fatal(err)
	}
	return ids
}

func count(t testing.TB, db *sqlx.DB, query string, args ...any) int {
	t.Helper()
	var n int
	if err := db.GetContext(t.Context(), &n, query, args...); err != nil {
		t.Fatalf("%s: %v", strings.TrimSpace(query), err)
	}
	return n
}

func newDB(t testing.TB) *pgtest.DB {
	t.Helper()
	return pgtest.New(t)
}

// secretOf reads endpoint id's stored secret.
func secretOf(t testing.TB, db *sqlx.DB, id int64) string {
	t.Helper()
	var s string
	if err := db.GetContext(t.Context(), &s, `SELECT secret FROM webhook_endpoints WHERE id = $1`, id); err != nil {
		t.Fatal(err)
	}
	return s
}

func sorted(s []string) []string {
	s = append([]string(nil), s...)
	slices.Sort(s)
	return s
}
