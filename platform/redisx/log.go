package redisx

import (
	"context"
	"fmt"
	"log/slog"
	"strings"
	"sync"
	"time"

	"github.com/redis/go-redis/v9"
)

// clientLogEvery spaces repeats of one kind of go-redis line: during an
// outage its pool logs each failed dial, up to one per pooled connection.
const clientLogEvery = 30 * time.Second

// SetLogger routes go-redis's own log lines (a dial that failed after its
// retries, a connection dropped from the pool, ...) through log at warn
// level, so they join the service's structured log instead of reaching
// stderr as plain text, which a JSON log pipeline cannot parse. Like the
// service's loops (platform/loop), a line that repeats is written at most
// once every 30 seconds, with the number of repeats left out since
// ("repeated").
//
// go-redis keeps one logger for the whole process (redis.SetLogger is
// global), so the last call wins for every client, including those opened
// before it; app.New calls it once, before opening Redis.
func SetLogger(log *slog.Logger) {
	redis.SetLogger(&clientLogger{log: log, every: clientLogEvery, seen: map[string]*repeat{}})
}

// clientLogger implements go-redis's internal.Logging.
type clientLogger struct {
	log   *slog.Logger
	every time.Duration

	mu   sync.Mutex
	seen map[string]*repeat // by format string: go-redis has a fixed set
}

type repeat struct {
	logged  time.Time
	skipped int
}

func (l *clientLogger) Printf(ctx context.Context, format string, v ...any) {
	now := time.Now()
	l.mu.Lock()
	r := l.seen[format]
	if r == nil {
		r = &repeat{}
		l.seen[format] = r
	}
	if !r.logged.IsZero() && now.Sub(r.logged) < l.every {
		r.skipped++
		l.mu.Unlock()
		return
	}
	skipped := r.skipped
	r.logged, r.skipped = now, 0
	l.mu.Unlock()

	// Its lines say "redis: connection pool: ..." or just "connection
	// pool: ..."; the prefix is noise once the line is tagged.
	msg := strings.TrimPrefix(strings.TrimSpace(fmt.Sprintf(format, v...)), "redis: ")
	if skipped > 0 {
		l.log.WarnContext(ctx, "redis client: "+msg, "repeated", skipped)
		return
	}
	l.log.WarnContext(ctx, "redis client: "+msg)
}
