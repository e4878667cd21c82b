package messaging

import (
	"log/slog"
	"net/http"
	"strconv"
	"time"

	"github.com/labstack/echo/v4"

	"github.com/campaignd/dispatch/platform/httpx"
	"github.com/campaignd/dispatch/platform/page"
)

// Handler serves the messages API: a campaign's messages (JSON pages and
// the CSV export) and one message with its attempts. Handlers return
// errors; the app's httpx.ErrorHandler turns them into the JSON envelope.
type Handler struct {
	repo *Repo
	log  *slog.Logger
}

// NewHandler returns a Handler over repo, logging to slog.Default() until
// WithLogger says otherwise.
func NewHandler(repo *Repo) *Handler {
	return &Handler{repo: repo, log: slog.Default()}
}

// WithLogger sets the logger for what the error handler cannot report: an
// export that fails after its first byte was sent.
func (h *Handler) WithLogger(log *slog.Logger) *Handler {
	h.log = log
	return h
}

// Register mounts the routes on e:
//
//	GET /campaigns/:id/messages      a page of the campaign's messages (filters status, phone, test)
//	GET /campaigns/:id/messages.csv  every non-test message of the campaign, streamed as CSV
//	GET /messages/:id                one message with its attempts_log
//
// Echo's router tells the two campaign routes apart by their static
// suffixes ("/messages" and "/messages.csv"); the id parameter stops at
// the '/'.
func (h *Handler) Register(e *echo.Echo) {
	e.GET("/campaigns/:id/messages", h.list)
	e.GET("/campaigns/:id/messages.csv", h.export)
	e.GET("/messages/:id", httpx.ByID(http.StatusOK, h.repo.GetMessage))
}

// list serves GET /campaigns/{id}/messages?status=&phone=&test=&page_size=&cursor=.
// Unknown parameters are ignored, as on the other lists.
func (h *Handler) list(c echo.Context) error {
	id, err := httpx.PathID(c, "id")
	if err != nil {
		return err
	}
	q, err := httpx.Query(c)
	if err != nil {
		return err
	}
	f, err := parseMessageFilter(q)
	if err != nil {
		return err
	}
	// The filters are bound into the cursor, so that it cannot be replayed
	// against a different list.
	req, err := page.Parse(q, f.key()...)
	if err != nil {
		return err
	}
	list, err := h.repo.ListMessages(c.Request().Context(), id, f, req)
	if err != nil {
		return err
	}
	return c.JSON(http.StatusOK, list)
}

// exportWriteWindow is how long the client has to take each flushed chunk
// of an export. It replaces the server's WriteTimeout, which bounds the
// whole response, for as long as the export makes progress: a large export
// may take longer than any sensible WriteTimeout, a stalled client may not.
const exportWriteWindow = time.Minute

// export serves GET /campaigns/{id}/messages.csv. Until the first byte is
// sent, an error is the usual JSON envelope (unknown campaign, database
// down). After it, the status is sent and cannot change: the response is
// aborted (the connection closed before the end of the chunked body, or the
// HTTP/2 stream reset), so the client sees a broken download rather than a
// complete-looking file with rows missing, and the failure is logged here.
func (h *Handler) export(c echo.Context) error {
	id, err := httpx.PathID(c, "id")
	if err != nil {
		return err
	}
	if _, err := httpx.Query(c); err != nil {
		return err
	}
	ctx := c.Request().Context()
	out := &csvResponse{c: c, filename: "campaign-" + strconv.FormatInt(id, 10) + "-messages.csv"}
	if c.Request().Method == http.MethodHead {
		// The headers GET would send, without running the export.
		if err := h.repo.checkCampaign(ctx, id); err != nil {
			return err
		}
		out.start()
		return nil
	}
	err = h.repo.ExportMessages(ctx, id, out)
	switch {
	case err == nil:
		out.start() // the header row is always written; this only keeps the invariant local
		return nil
	case !out.started:
		return err
	}
	attrs := []any{"campaign_id", id, "bytes_sent", c.Response().Size, "err", err}
	if ctx.Err() != nil {
		h.log.WarnContext(ctx, "messages export stopped: the client went away", attrs...)
	} else {
		h.log.ErrorContext(ctx, "messages export failed after the response began; aborting it", attrs...)
	}
	httpx.AddLogAttrs(c, slog.Bool("export_aborted", true), slog.String("export_error", err.Error()))
	abort(c)
	return nil
}

// abort ends a response whose status was already sent, so that the client
// cannot take it for complete. On HTTP/1.1 the connection is closed before
// the chunked body's last chunk; where hijacking is not possible (HTTP/2),
// http.ErrAbortHandler makes net/http reset the stream (httpx.Recover lets
// it through).
func abort(c echo.Context) {
	if conn, _, err := http.NewResponseController(c.Response()).Hijack(); err == nil {
		_ = conn.Close()
		return
	}
	panic(http.ErrAbortHandler)
}

// csvResponse is the export's writer: it sends the CSV headers and the 200
// on the first write, so that an error before it can still be a JSON error.
type csvResponse struct {
	c        echo.Context
	filename string
	started  bool
}

func (w *csvResponse) start() {
	if w.started {
		return
	}
	w.started = true
	h := w.c.Response().Header()
	h.Set(echo.HeaderContentType, "text/csv; charset=utf-8")
	h.Set(echo.HeaderContentDisposition, `attachment; filename="`+w.filename+`"`)
	h.Set("X-Content-Type-Options", "nosniff")
	w.c.Response().WriteHeader(http.StatusOK)
}

func (w *csvResponse) Write(p []byte) (int, error) {
	w.start()
	return w.c.Response().Write(p)
}

// Flush sends what was written and gives the client another
// exportWriteWindow for the next chunk.
func (w *csvResponse) Flush() {
	if !w.started {
		return
	}
	rc := http.NewResponseController(w.c.Response())
	_ = rc.SetWriteDeadline(time.Now().Add(exportWriteWindow)) // best effort: not every writer has deadlines
	_ = rc.Flush()
}
