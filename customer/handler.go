package customer

import (
	"iter"
	"mime"
	"net/http"
	"strconv"
	"strings"

	"github.com/labstack/echo/v4"

	"github.com/campaignd/dispatch/platform/channel"
	"github.com/campaignd/dispatch/platform/errs"
	"github.com/campaignd/dispatch/platform/httpx"
	"github.com/campaignd/dispatch/platform/page"
)

// Defaults for the zero fields of HandlerOptions, matching configs/config.yaml.
const (
	DefaultImportMaxBytes    int64 = 50 << 20
	DefaultImportMaxRows           = 100_000
	DefaultImportConcurrency       = 2
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
	// ImportConcurrency is how many imports the Handler runs at once; one
	// more is 429 RATE_LIMITED with Retry-After. Each running import holds
	// a database connection and a batch of rows.
	ImportConcurrency int
}

// Handler serves the customer routes. Its methods return errors for the
// app's httpx.ErrorHandler to write; they never write error responses.
type Handler struct {
	svc     *Service
	opts    HandlerOptions
	imports chan struct{} // a semaphore: one token per running import
}

// NewHandler returns a Handler over svc.
func NewHandler(svc *Service, opts HandlerOptions) *Handler {
	if opts.ImportMaxBytes <= 0 {
		opts.ImportMaxBytes = DefaultImportMaxBytes
	}
	if opts.ImportMaxRows <= 0 {
		opts.ImportMaxRows = DefaultImportMaxRows
	}
	if opts.ImportConcurrency <= 0 {
		opts.ImportConcurrency = DefaultImportConcurrency
	}
	return &Handler{svc: svc, opts: opts, imports: make(chan struct{}, opts.ImportConcurrency)}
}

// Register mounts the customer routes on e:
//
//	GET    /customers              list (page or cursor; filters location, preferred_product, q)
//	GET    /customers/:id          one customer
//	PATCH  /customers/:id          change any of the create fields → 200 with the customer
//	DELETE /customers/:id          erase the customer (their messages are anonymised) → 204
//	POST   /customers              create → 201
//	POST   /customers/import       bulk create from a JSON array or CSV, all-or-nothing → 201
//	POST   /customers/:id/opt-out  {"channel":"sms"}: opt out of a channel → 200 with the customer
//	DELETE /customers/:id/opt-out  ?channel=sms (or the same body): opt back in → 200 with the customer
func (h *Handler) Register(e *echo.Echo) {
	e.GET("/customers", h.list)
	e.GET("/customers/:id", httpx.ByID(http.StatusOK, h.svc.Get))
	e.PATCH("/customers/:id", h.update)
	e.DELETE("/customers/:id", h.erase)
	e.POST("/customers", h.create)
	e.POST("/customers/import", h.importCustomers)
	e.POST("/customers/:id/opt-out", h.optOut)
	e.DELETE("/customers/:id/opt-out", h.optIn)
}

func (h *Handler) list(c echo.Context) error {
	q, err := httpx.Query(c)
	if err != nil {
		return err
	}
	f, err := Filter{Location: q.Get("location"), PreferredProduct: q.Get("preferred_product"), Search: q.Get("q")}.validate()
	if err != nil {
		return err
	}
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

// update takes a JSON object with any of the create fields. No body at all
// (or an empty object) is the service's "nothing to update".
func (h *Handler) update(c echo.Context) error {
	id, err := httpx.PathID(c, "id")
	if err != nil {
		return err
	}
	var in UpdateInput
	if _, err := httpx.BindOptionalJSON(c, &in); err != nil {
		return err
	}
	cust, err := h.svc.Update(c.Request().Context(), id, in)
	if err != nil {
		return err
	}
	return c.JSON(http.StatusOK, cust)
}

// erase takes no body; one is ignored, as the other DELETE routes do.
func (h *Handler) erase(c echo.Context) error {
	id, err := httpx.PathID(c, "id")
	if err != nil {
		return err
	}
	if err := h.svc.Erase(c.Request().Context(), id); err != nil {
		return err
	}
	return c.NoContent(http.StatusNoContent)
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
	// An import is refused rather than queued when the replica already runs
	// its share: the client retries (here or at another replica) instead of
	// holding a connection and its body open while it waits.
	select {
	case h.imports <- struct{}{}:
		defer func() { <-h.imports }()
	default:
		c.Response().Header().Set("Retry-After", "1")
		return errImportsBusy(h.opts.ImportConcurrency)
	}
	// The underlying writer, not Echo's wrapper: net/http then knows to
	// close the connection after the 413 rather than drain the rest.
	body := http.MaxBytesReader(c.Response().Writer, r.Body, h.opts.ImportMaxBytes)
	defer body.Close()

	mt, _, _ := mime.ParseMediaType(r.Header.Get(echo.HeaderContentType)) // checked above
	var rows iter.Seq2[ImportRow, error]
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

// channelBody is the body of POST /customers/:id/opt-out, and the optional
// body of DELETE /customers/:id/opt-out.
type channelBody struct {
	Channel string `json:"channel"`
}

func (h *Handler) optOut(c echo.Context) error {
	id, err := httpx.PathID(c, "id")
	if err != nil {
		return err
	}
	var b channelBody
	if err := httpx.BindJSON(c, &b); err != nil {
		return err
	}
	cust, err := h.svc.OptOut(c.Request().Context(), id, channel.Channel(b.Channel))
	if err != nil {
		return err
	}
	return c.JSON(http.StatusOK, cust)
}

// optIn takes the channel from the query (?channel=sms), the primary form,
// since many clients send no body with DELETE. A body, when one is sent,
// must be JSON of the POST's shape; if both name a channel they must agree.
func (h *Handler) optIn(c echo.Context) error {
	id, err := httpx.PathID(c, "id")
	if err != nil {
		return err
	}
	q, err := httpx.Query(c)
	if err != nil {
		return err
	}
	query := q["channel"]
	if len(query) > 1 {
		return errs.Validation("channel", "channel must be given once, got %d values", len(query))
	}
	var ch string
	if len(query) == 1 {
		ch = query[0]
	}
	// A client that sends no body, an empty one or one of white space
	// (whatever its Content-Type) has sent none.
	sent, err := httpx.HasBody(c.Request())
	if err != nil {
		return err
	}
	if sent {
		var b channelBody
		if err := httpx.BindJSON(c, &b); err != nil {
			return err
		}
		switch {
		case ch == "":
			ch = b.Channel
		case b.Channel != "" && b.Channel != ch:
			return errs.Validation("channel", "channel is %s in the query but %s in the body; give it once",
				errs.Quote(ch), errs.Quote(b.Channel))
		}
	}
	cust, err := h.svc.OptIn(c.Request().Context(), id, channel.Channel(ch))
	if err != nil {
		return err
	}
	return c.JSON(http.StatusOK, cust)
}
