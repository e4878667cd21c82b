package customer

import (
	"mime"
	"net/http"
	"strconv"
	"strings"

	"github.com/labstack/echo/v4"

	"github.com/campaignd/dispatch/platform/httpx"
	"github.com/campaignd/dispatch/platform/page"
)

// Defaults for the zero fields of HandlerOptions, matching configs/config.yaml.
const (
	DefaultImportMaxBytes int64 = 50 << 20
	DefaultImportMaxRows        = 100_000
)

const (
	mimeJSON = "application/json"
	mimeCSV  = "text/csv"
)

// HandlerOptions tune the HTTP handlers. Zero fields take the defaults.
type HandlerOptions struct {
	// ImportMaxBytes is the largest body POST /customers/import reads; a
	// larger one is 413 PAYLOAD_TOO_LARGE. The app's global body limit must
	// skip that route, since this one is usually larger.
	ImportMaxBytes int64
	// ImportMaxRows is the most rows one import may hold; more is a 400.
	ImportMaxRows int
}

// Handler serves the customer routes. Its methods return errors for the
// app's httpx.ErrorHandler to write; they never write error responses.
type Handler struct {
	svc  *Service
	opts HandlerOptions
}

// NewHandler returns a Handler over svc.
func NewHandler(svc *Service, opts HandlerOptions) *Handler {
	if opts.ImportMaxBytes <= 0 {
		opts.ImportMaxBytes = DefaultImportMaxBytes
	}
	if opts.ImportMaxRows <= 0 {
		opts.ImportMaxRows = DefaultImportMaxRows
	}
	return &Handler{svc: svc, opts: opts}
}

// Register mounts the customer routes on e:
//
//	GET  /customers          list (page or cursor; filters location, preferred_product)
//	GET  /customers/:id      one customer
//	POST /customers          create → 201
//	POST /customers/import   bulk create from a JSON array or CSV, all-or-nothing → 201
func (h *Handler) Register(e *echo.Echo) {
	e.GET("/customers", h.list)
	e.GET("/customers/:id", h.get)
	e.POST("/customers", h.create)
	e.POST("/customers/import", h.importCustomers)
}

func (h *Handler) list(c echo.Context) error {
	q := c.QueryParams()
	f := Filter{Location: q.Get("location"), PreferredProduct: q.Get("preferred_product")}.normalized()
	req, err := page.Parse(q, f.key()...)
	if err != nil {
		return err
	}
	res, err := h.svc.List(c.Request().Context(), f, req)
	if err != nil {
		return err
	}
	return c.JSON(http.StatusOK, res)
}

func (h *Handler) get(c echo.Context) error {
	id, err := httpx.PathID(c, "id")
	if err != nil {
		return err
	}
	cust, err := h.svc.Get(c.Request().Context(), id)
	if err != nil {
		return err
	}
	return c.JSON(http.StatusOK, cust)
}

func (h *Handler) create(c echo.Context) error {
	var in Input
	if err := httpx.BindJSON(c, &in); err != nil {
		return err
	}
	cust, err := h.svc.Create(c.Request().Context(), in)
	if err != nil {
		return err
	}
	c.Response().Header().Set(echo.HeaderLocation, "/customers/"+strconv.FormatInt(cust.ID, 10))
	return c.JSON(http.StatusCreated, cust)
}

func (h *Handler) importCustomers(c echo.Context) error {
	if err := httpx.RequireContentType(c, mimeJSON, mimeCSV); err != nil {
		return err
	}
	r := c.Request()
	// A declared length over the limit is refused before reading a byte;
	// MaxBytesReader catches bodies that lie or are chunked.
	if r.ContentLength > h.opts.ImportMaxBytes {
		return errTooLarge(h.opts.ImportMaxBytes)
	}
	// The underlying writer, not Echo's wrapper: net/http then knows to
	// close the connection after the 413 rather than drain the rest.
	body := http.MaxBytesReader(c.Response().Writer, r.Body, h.opts.ImportMaxBytes)
	defer body.Close()

	mt, _, _ := mime.ParseMediaType(r.Header.Get(echo.HeaderContentType)) // checked above
	var rows []ImportRow
	var err error
	if strings.EqualFold(mt, mimeCSV) {
		rows, err = readCSV(body, h.opts.ImportMaxRows)
	} else {
		rows, err = readJSON(body, h.opts.ImportMaxRows)
	}
	if err != nil {
		return err
	}
	res, err := h.svc.Import(r.Context(), rows)
	if err != nil {
		return err
	}
	return c.JSON(http.StatusCreated, res)
}
