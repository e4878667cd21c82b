package outbox

import (
	"context"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"os"
	"sync/atomic"
	"testing"
	"time"
)

func TestZZDebugDrain(t *testing.T) {
	db := newDB(t)
	var delivered atomic.Int64
	rcv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		delivered.Add(1)
		w.WriteHeader(204)
	}))
	defer rcv.Close()
	NewStore(db.DB).Create(t.Context(), rcv.URL, []string{"message.sent"}, "", "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw")
	emitN(t, db.DB, MessageSent, 20000)
	ctx, cancel := context.WithCancel(context.Background())
	d := NewDispatcher(db.DB, DispatcherOptions{PollInterval: 100 * time.Millisecond}, slog.New(slog.NewTextHandler(os.Stderr, nil)))
	done := make(chan struct{})
	go func() { defer close(done); d.Run(ctx) }()
	began := time.Now()
	for i := 0; i < 20; i++ {
		time.Sleep(500 * time.Millisecond)
		t.Logf("%s: delivered %d, tasks %d, unfanned %d", time.Since(began).Round(time.Millisecond), delivered.Load(),
			count(t, db.DB, `SELECT count(*) FROM webhook_tasks`), count(t, db.DB, `SELECT count(*) FROM webhook_events`))
	}
	cancel()
	<-done
}
