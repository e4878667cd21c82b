package auth

import (
	"context"
	"log/slog"
	"net/http"
	"strings"
	"time"

	"github.com/labstack/echo/v4"

	"github.com/campaignd/dispatch/platform/errs"
	"github.com/campaignd/dispatch/platform/httpx"
	"github.com/campaignd/dispatch/platform/text"
)

// Service manages keys: create, list, revoke, and the bootstrap key.
type Service struct {
	store *Store
	authn *Authenticator
	log   *slog.Logger
}

// NewService returns a Service; revocations are forgotten by authn at once.
func NewService(store *Store, authn *Authenticator, log *slog.Logger) *Service {
	return &Service{store: store, authn: authn, log: log}
}

// Created is a new key with its secret, shown this once.
type Created struct {
	Key
	Secret string
}

// Create makes a key. The secret is in the result and nowhere else.
func (s *Service) Create(ctx context.Context, name string, scope Scope) (Created, error) {
	name = strings.TrimSpace(name)
	if err := text.Line("name", name, 1, 100); err != nil {
		return Created{}, err
	}
	if !scope.Valid() {
		return Created{}, errs.Validation("scope", "scope must be read, write or admin, got %s", errs.Quote(string(scope)))
	}
	secret := NewSecret()
	k, err := s.store.Create(ctx, name, scope, secret)
	if err != nil {
		return Created{}, err
	}
	s.log.InfoContext(ctx, "api key created", "api_key_id", k.ID, "name", k.Name, "scope", k.Scope, "prefix", k.Prefix)
	return Created{Key: k, Secret: secret}, nil
}

// List returns every key without secrets.
func (s *Service) List(ctx context.Context) ([]Key, error) { return s.store.List(ctx) }

// Revoke revokes key id; it stops working on this replica at once and on
// the others within the cache period.
func (s *Service) Revoke(ctx context.Context, id int64) error {
	if err := s.store.Revoke(ctx, id); err != nil {
		return err
	}
	s.authn.Forget(id)
	s.log.InfoContext(ctx, "api key revoked", "api_key_id", id)
	return nil
}

// Bootstrap makes secret an admin key named "bootstrap" unless it is a key
// already (a revoked bootstrap key stays revoked).
func (s *Service) Bootstrap(ctx context.Context, secret string) error {
	created, err := s.store.Ensure(ctx, "bootstrap", ScopeAdmin, secret)
	if err != nil {
		return err
	}
	if created {
		s.log.InfoContext(ctx, "bootstrap admin key stored", "prefix", prefixOf(secret))
	}
	return nil
}

// WarnIfNoKeys logs how to get a first key when none is live, since no
// request can be served without one.
func (s *Service) WarnIfNoKeys(ctx context.Context) error {
	n, err := s.store.CountLive(ctx)
	if err != nil {
		return err
	}
	if n == 0 {
		s.log.WarnContext(ctx, "no API key exists yet, so every request will be refused: create one with `dispatch apikey create NAME admin`, or start with BOOTSTRAP_API_KEY=dsp_<32 or more URL-safe characters>")
	}
	return nil
}

// Handler serves /api-keys.
type Handler struct{ svc *Service }

// NewHandler returns the key management handlers.
func NewHandler(svc *Service) *Handler { return &Handler{svc: svc} }

// Register mounts the routes; every one needs an admin key.
func (h *Handler) Register(e *echo.Echo) {
	admin := Require(ScopeAdmin)
	e.POST("/api-keys", h.create, admin)
	e.GET("/api-keys", h.list, admin)
	e.DELETE("/api-keys/:id", h.revoke, admin)
}

type createRequest struct {
	Name  string `json:"name"`
	Scope Scope  `json:"scope"`
}

func (h *Handler) create(c echo.Context) error {
	var req createRequest
	if err := httpx.BindJSON(c, &req); err != nil {
		return err
	}
	k, err := h.svc.Create(c.Request().Context(), req.Name, req.Scope)
	if err != nil {
		return err
	}
	return c.JSON(http.StatusCreated, createdBody{ID: k.ID, Name: k.Name, Scope: k.Scope, Prefix: k.Prefix, Key: k.Secret, CreatedAt: k.CreatedAt})
}

// createdBody is the one response that carries a secret.
type createdBody struct {
	ID        int64     `json:"id"`
	Name      string    `json:"name"`
	Scope     Scope     `json:"scope"`
	Prefix    string    `json:"prefix"`
	Key       string    `json:"key"`
	CreatedAt time.Time `json:"created_at"`
}

func (h *Handler) list(c echo.Context) error {
	keys, err := h.svc.List(c.Request().Context())
	if err != nil {
		return err
	}
	return c.JSON(http.StatusOK, map[string]any{"data": keys})
}

func (h *Handler) revoke(c echo.Context) error {
	id, err := httpx.PathID(c, "id")
	if err != nil {
		return err
	}
	if err := h.svc.Revoke(c.Request().Context(), id); err != nil {
		return err
	}
	return c.NoContent(http.StatusNoContent)
}
