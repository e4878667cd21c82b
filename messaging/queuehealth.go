package messaging

import (
	"context"
	"net/http"
	"strconv"
	"sync"

	"github.com/labstack/echo/v4"
	"github.com/lib/pq"

	"github.com/campaignd/dispatch/messaging/queue"
	"github.com/campaignd/dispatch/platform/errs"
	"github.com/campaignd/dispatch/platform/httpx"
	"github.com/campaignd/dispatch/platform/postgres"
)

// Queue health (GET /queue) and the dead letters (GET /queue/dead-letters):
// what an operator watches, read from Redis and, for the dead letters'
// errors, from their messages by primary key. Nothing here scans a table.

// QueueHealth is the body of GET /queue.
type QueueHealth struct {
	queue.Depths
	ConsumerList []ConsumerView `json:"consumer_list"`
	// Throughput is the outcomes per minute, oldest first; the last
	// minute is the current one, still counting.
	Throughput []queue.Minute `json:"throughput"`
}

// ConsumerView is a consumer with its heartbeat's age.
type ConsumerView struct {
	queue.Consumer
	HeartbeatAgeMS int64 `json:"heartbeat_age_ms"`
}

// QueueHealth reads the depths, the consumers and the throughput counters.
func (s *Service) QueueHealth(ctx context.Context) (QueueHealth, error) {
	d, err := s.queue.Depths(ctx)
	if err != nil {
		return QueueHealth{}, err
	}
	cs, err := s.queue.Consumers(ctx)
	if err != nil {
		return QueueHealth{}, err
	}
	now := s.now()
	tp, err := s.queue.Throughput(ctx, now)
	if err != nil {
		return QueueHealth{}, err
	}
	h := QueueHealth{Depths: d, ConsumerList: make([]ConsumerView, len(cs)), Throughput: tp}
	for i, c := range cs {
		h.ConsumerList[i] = ConsumerView{Consumer: c, HeartbeatAgeMS: max(0, now.Sub(c.LastHeartbeat).Milliseconds())}
	}
	return h, nil
}

// DeadLetterList is the body of GET /queue/dead-letters.
type DeadLetterList struct {
	Total int64         `json:"total"` // the dead-letter list's length
	Items []MessageView `json:"items"` // the newest, with each message's last_error
}

// deadLettersSQL reads the dead letters' messages by primary key, newest
// first.
const deadLettersSQL = messageSelect + `
WHERE m.id = ANY($1::bigint[])
ORDER BY m.id DESC`

// DeadLetters returns up to limit of the newest dead letters with their
// messages. An id whose message is gone (erased campaign) is left out.
func (s *Service) DeadLetters(ctx context.Context, limit int) (DeadLetterList, error) {
	d, err := s.queue.Depths(ctx)
	if err != nil {
		return DeadLetterList{}, err
	}
	ids, err := s.queue.DeadLetters(ctx, int64(limit))
	if err != nil {
		return DeadLetterList{}, err
	}
	out := DeadLetterList{Total: d.Dead, Items: []MessageView{}}
	if len(ids) == 0 {
		return out, nil
	}
	if err := s.repo.db.SelectContext(ctx, &out.Items, deadLettersSQL, pq.Array(ids)); err != nil {
		return DeadLetterList{}, postgres.Classify(err, "read dead letters' messages")
	}
	for i := range out.Items {
		out.Items[i] = out.Items[i].normalized()
	}
	return out, nil
}

// QueueHandler serves GET /queue and GET /queue/dead-letters.
type QueueHandler struct{ svc *Service }

// NewQueueHandler returns the queue routes' handler over svc.
func NewQueueHandler(svc *Service) *QueueHandler { return &QueueHandler{svc: svc} }

// Register mounts the routes on e.
func (h *QueueHandler) Register(e *echo.Echo) {
	e.GET("/queue", func(c echo.Context) error {
		v, err := h.svc.QueueHealth(c.Request().Context())
		if err != nil {
			return err
		}
		return c.JSON(http.StatusOK, v)
	})
	e.GET("/queue/dead-letters", func(c echo.Context) error {
		q, err := httpx.Query(c)
		if err != nil {
			return err
		}
		limit := 50
		if v := q.Get("limit"); v != "" {
			n, err := strconv.Atoi(v)
			if err != nil || n < 1 || n > 100 {
				return errs.Validation("limit", "limit must be 1 to 100, got %.64q", v)
			}
			limit = n
		}
		v, err := h.svc.DeadLetters(c.Request().Context(), limit)
		if err != nil {
			return err
		}
		return c.JSON(http.StatusOK, v)
	})
}

// throughputObserver passes everything to next and adds the outcomes to
// in-memory counts that flushThroughput moves to Redis once a second: the
// observer is on the delivery path and must not wait for Redis.
type throughputObserver struct {
	Observer
	mu     sync.Mutex
	counts map[string]int64
}

func (o *throughputObserver) Outcomes(channel, provider, outcome string, n int) {
	o.Observer.Outcomes(channel, provider, outcome, n)
	o.mu.Lock()
	o.counts[outcome] += int64(n)
	o.mu.Unlock()
}

// CountThroughput returns an Observer that reports to next and also counts
// outcomes per minute for GET /queue. RunMaintenance flushes the counts.
func (s *Service) CountThroughput(next Observer) Observer {
	o := &throughputObserver{Observer: next, counts: map[string]int64{}}
	s.throughput.Store(o)
	return o
}

// flushThroughput adds the counts gathered since the last flush to the
// current minute's counters. On a Redis error they are kept for the next.
func (s *Service) flushThroughput(ctx context.Context) error {
	o := s.throughput.Load()
	if o == nil {
		return nil
	}
	o.mu.Lock()
	counts := o.counts
	o.counts = map[string]int64{}
	o.mu.Unlock()
	if err := s.queue.AddThroughput(ctx, s.now(), counts); err != nil {
		o.mu.Lock()
		for k, v := range counts {
			o.counts[k] += v
		}
		o.mu.Unlock()
		return err
	}
	return nil
}
