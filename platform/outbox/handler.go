package outbox

import (
	"context"
	"log/slog"
	"net/http"
	"net/url"
	"slices"
	"strconv"
	"strings"

	"github.com/labstack/echo/v4"

	"github.com/campaignd/dispatch/platform/auth"
	"github.com/campaignd/dispatch/platform/errs"
	"github.com/campaignd/dispatch/platform/httpx"
	"github.com/campaignd/dispatch/platform/page"
	"github.com/campaignd/dispatch/platform/text"
	"github.com/campaignd/dispatch/platform/webhooksig"
)

// Limits of an endpoint's fields.
const (
	MaxURLLength         = 2048
	MaxDescriptionLength = 500
)

// Service manages endpoints: create (with a secret shown once), list,
// delete, and their deliveries.
type Service struct {
	store *Store
	subs  *Subscriptions // may be nil
	log   *slog.Logger
}

// NewService returns a Service. subs, when not nil, is refreshed after each
// change, so this replica's writers see a new subscription at once (other
// replicas within their refresh interval).
func NewService(store *Store, subs *Subscriptions, log *slog.Logger) *Service {
	return &Service{store: store, subs: subs, log: log}
}

// Input is a new endpoint as the client sends it.
type Input struct {
	URL         string   `json:"url"`
	Events      []string `json:"events"`
	Description string   `json:"description"`
}

// Created is a new endpoint with its signing secret, shown this once.
type Created struct {
	Endpoint
	Secret string `json:"secret"`
}

// Create validates in and stores an endpoint with a fresh secret. The
// errors are VALIDATION_ERRORs naming url, events or description, and
// UNAVAILABLE. Repeated event types are kept once.
func (s *Service) Create(ctx context.Context, in Input) (Created, error) {
	if err := checkURL(in.URL); err != nil {
		return Created{}, err
	}
	events, err := checkEvents(in.Events)
	if err != nil {
		return Created{}, err
	}
	if err := text.Line("description", in.Description, 0, MaxDescriptionLength); err != nil {
		return Created{}, err
	}
	secret, err := webhooksig.NewSecret()
	if err != nil {
		return Created{}, err
	}
	e, err := s.store.Create(ctx, in.URL, events, in.Description, secret)
	if err != nil {
		return Created{}, err
	}
	s.log.InfoContext(ctx, "webhook endpoint created", "webhook_endpoint_id", e.ID, "url", redact(e.URL), "events", e.Events)
	s.refresh(ctx)
	return Created{Endpoint: e, Secret: secret}, nil
}

// List returns every endpoint without secrets.
func (s *Service) List(ctx context.Context) ([]Endpoint, error) { return s.store.List(ctx) }

// Delete removes endpoint id: nothing more is delivered to it. An unknown
// id is ErrEndpointNotFound.
func (s *Service) Delete(ctx context.Context, id int64) error {
	if err := s.store.Delete(ctx, id); err != nil {
		return err
	}
	s.log.InfoContext(ctx, "webhook endpoint deleted", "webhook_endpoint_id", id)
	s.refresh(ctx)
	return nil
}

// DeliveryList is a page of an endpoint's attempts. Like the messages list
// it has no total count: an endpoint may have millions of attempts, and
// counting them would cost more than the page.
type DeliveryList = page.UncountedList[Delivery]

// Deliveries pages endpoint id's attempts, newest first; r comes from
// page.Parse with the endpoint's id as its filter, so a cursor walks one
// endpoint only. An unknown id is ErrEndpointNotFound.
func (s *Service) Deliveries(ctx context.Context, id int64, r page.Request) (DeliveryList, error) {
	if _, err := s.store.Get(ctx, id); err != nil {
		return DeliveryList{}, err
	}
	rows, err := s.store.Deliveries(ctx, id, r.AfterID, r.Limit(), r.Offset())
	if err != nil {
		return DeliveryList{}, err
	}
	return page.NewUncounted(rows, r, func(d Delivery) int64 { return d.ID }), nil
}

// refresh updates this replica's subscriptions after a change; a failure
// only delays it to the next periodic refresh.
func (s *Service) refresh(ctx context.Context) {
	if s.subs == nil {
		return
	}
	if err := s.subs.Refresh(ctx); err != nil {
		s.log.WarnContext(ctx, "refreshing webhook subscriptions after a change", "err", err)
	}
}

func checkURL(raw string) error {
	if err := text.Line("url", raw, 1, MaxURLLength); err != nil {
		return err
	}
	u, err := url.Parse(raw)
	if err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" || u.Hostname() == "" {
		return errs.Validation("url", "url must be an absolute http or https URL, got %s", errs.Quote(raw))
	}
	if u.Fragment != "" || strings.HasSuffix(raw, "#") {
		return errs.Validation("url", "url must not have a fragment (#...): it is never sent")
	}
	if p := u.Port(); p != "" {
		if n, err := strconv.Atoi(p); err != nil || n < 1 || n > 65535 {
			return errs.Validation("url", "url has an invalid port %s", errs.Quote(p))
		}
	}
	return nil
}

func checkEvents(in []string) ([]string, error) {
	if len(in) == 0 {
		return nil, errs.Validation("events", "events must list at least one event type: %s", typeList())
	}
	out := make([]string, 0, len(in))
	for _, t := range in {
		if !EventType(t).Valid() {
			return nil, errs.Validation("events", "events holds an unknown event type %s; the types are %s", errs.Quote(t), typeList())
		}
		if !slices.Contains(out, t) {
			out = append(out, t)
		}
	}
	return out, nil
}

func typeList() string {
	names := make([]string, len(eventTypes))
	for i, t := range eventTypes {
		names[i] = string(t)
	}
	return strings.Join(names, ", ")
}

// redact returns u with any password replaced, for logs.
func redact(u string) string {
	p, err := url.Parse(u)
	if err != nil || p.User == nil {
		return u
	}
	if _, ok := p.User.Password(); ok {
		p.User = url.UserPassword(p.User.Username(), "xxxxx")
	}
	return p.String()
}

// Handler serves /webhook-endpoints.
type Handler struct{ svc *Service }

// NewHandler returns the endpoints API's handlers.
func NewHandler(svc *Service) *Handler { return &Handler{svc: svc} }

// Register mounts the routes; every one needs an admin key (auth.Require),
// as key management does: an endpoint's owner receives the service's data.
func (h *Handler) Register(e *echo.Echo) {
	admin := auth.Require(auth.ScopeAdmin)
	e.POST("/webhook-endpoints", h.create, admin)
	e.GET("/webhook-endpoints", h.list, admin)
	e.DELETE("/webhook-endpoints/:id", h.delete, admin)
	e.GET("/webhook-endpoints/:id/deliveries", h.deliveries, admin)
}

// createRequest takes description as a pointer so that an explicit null is
// the same as leaving it out.
type createRequest struct {
	URL         string   `json:"url"`
	Events      []string `json:"events"`
	Description *string  `json:"description"`
}

func (h *Handler) create(c echo.Context) error {
	var req createRequest
	if err := httpx.BindJSON(c, &req); err != nil {
		return err
	}
	in := Input{URL: req.URL, Events: req.Events}
	if req.Description != nil {
		in.Description = *req.Description
	}
	created, err := h.svc.Create(c.Request().Context(), in)
	if err != nil {
		return err
	}
	return c.JSON(http.StatusCreated, created)
}

func (h *Handler) list(c echo.Context) error {
	eps, err := h.svc.List(c.Request().Context())
	if err != nil {
		return err
	}
	return c.JSON(http.StatusOK, map[string]any{"data": eps})
}

func (h *Handler) delete(c echo.Context) error {
	id, err := httpx.PathID(c, "id")
	if err != nil {
		return err
	}
	if err := h.svc.Delete(c.Request().Context(), id); err != nil {
		return err
	}
	return c.NoContent(http.StatusNoContent)
}

func (h *Handler) deliveries(c echo.Context) error {
	id, err := httpx.PathID(c, "id")
	if err != nil {
		return err
	}
	q, err := httpx.Query(c)
	if err != nil {
		return err
	}
	r, err := page.Parse(q, strconv.FormatInt(id, 10))
	if err != nil {
		return err
	}
	list, err := h.svc.Deliveries(c.Request().Context(), id, r)
	if err != nil {
		return err
	}
	return c.JSON(http.StatusOK, list)
}
