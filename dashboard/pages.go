package dashboard

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"time"

	"github.com/labstack/echo/v4"
)

// render executes page name (a full page, or a fragment for script
// requests) with data plus what every page needs.
func (d *Dashboard) render(c echo.Context, status int, name string, data map[string]any) error {
	t, ok := d.pages[name]
	if !ok {
		return fmt.Errorf("dashboard: no template %q", name)
	}
	if data == nil {
		data = map[string]any{}
	}
	s := sessionOf(c)
	data["Session"] = s
	data["CanWrite"] = s.canWrite()
	if _, set := data["CSRF"]; !set {
		data["CSRF"] = s.CSRF
	}
	var buf bytes.Buffer
	if err := t.ExecuteTemplate(&buf, name, data); err != nil {
		return fmt.Errorf("render %s: %w", name, err)
	}
	return c.HTMLBlob(status, buf.Bytes())
}

// fail shows an API error readably: the API's message, its code, and for a
// refused action what it means for this key.
func (d *Dashboard) fail(c echo.Context, err error) error {
	var ae *apiError
	if !errors.As(err, &ae) {
		return err
	}
	hint := ""
	switch ae.Status {
	case http.StatusForbidden:
		hint = "Your API key's scope does not allow this: a read key sees everything and changes nothing."
	case http.StatusUnauthorized:
		hint = "Your API key is no longer valid: sign out and sign in with another."
	}
	if c.Request().Header.Get("X-Requested-With") != "" {
		return d.render(c, ae.Status, "error-fragment", map[string]any{"Err": ae, "Hint": hint})
	}
	return d.render(c, ae.Status, "error", map[string]any{"Err": ae, "Hint": hint, "Back": c.Request().Referer()})
}

func pathID(c echo.Context) (string, error) {
	id := c.Param("id")
	if _, err := strconv.ParseInt(id, 10, 64); err != nil {
		return "", echo.NewHTTPError(http.StatusNotFound)
	}
	return id, nil
}

// campaignStatuses and channels fill the filters' selects.
var (
	campaignStatuses = []string{"draft", "scheduled", "sending", "paused", "sent", "failed", "cancelled"}
	messageStatuses  = []string{"pending", "sending", "sent", "delivered", "undelivered", "failed", "cancelled"}
	channels         = []string{"sms", "whatsapp"}
)

// campaigns is the campaign list: filters, cursor paging, a live progress
// bar per sending campaign.
func (d *Dashboard) campaigns(c echo.Context) error {
	status, channel, cursor := c.QueryParam("status"), c.QueryParam("channel"), c.QueryParam("cursor")
	var list struct {
		Data       []campaignSummary `json:"data"`
		Pagination pagination        `json:"pagination"`
	}
	err := d.call(c, http.MethodGet, "/campaigns"+query("page_size", "25", "status", status, "channel", channel, "cursor", cursor), nil, &list)
	if err != nil {
		return d.fail(c, err)
	}
	next := ""
	if list.Pagination.NextCursor != nil {
		next = query("status", status, "channel", channel, "cursor", *list.Pagination.NextCursor)
	}
	return d.render(c, http.StatusOK, "campaigns", map[string]any{
		"Nav": "campaigns", "List": list.Data, "Page": list.Pagination, "Next": next, "First": cursor != "",
		"Status": status, "Channel": channel, "Statuses": campaignStatuses, "Channels": channels,
	})
}

// campaignsProgress is one list row's progress bar (a polled fragment).
func (d *Dashboard) campaignsProgress(c echo.Context) error {
	id := c.QueryParam("id")
	if _, err := strconv.ParseInt(id, 10, 64); err != nil {
		return echo.NewHTTPError(http.StatusNotFound)
	}
	var camp campaign
	if err := d.call(c, http.MethodGet, "/campaigns/"+id, nil, &camp); err != nil {
		return d.fail(c, err)
	}
	return d.render(c, http.StatusOK, "row-progress", map[string]any{"C": camp.campaignSummary})
}

// newCampaign creates a draft and opens compose on it: the preview, the
// estimate and the test send are the API's campaign routes, so compose
// needs a campaign to exist.
func (d *Dashboard) newCampaign(c echo.Context) error {
	name := strings.TrimSpace(c.FormValue("name"))
	if name == "" {
		name = "Untitled campaign " + time.Now().UTC().Format("2006-01-02 15:04")
	}
	in := map[string]any{"name": name, "channel": c.FormValue("channel"), "base_template": "Hi {first_name}, "}
	var camp campaign
	if err := d.call(c, http.MethodPost, "/campaigns", in, &camp); err != nil {
		return d.fail(c, err)
	}
	return c.Redirect(http.StatusSeeOther, fmt.Sprintf("%s/campaigns/%d/compose", Prefix, camp.ID))
}

// campaign is the campaign page: the live panel (stats, rate, ETA, the
// lifecycle buttons) and its messages, filterable by status.
func (d *Dashboard) campaign(c echo.Context) error {
	id, err := pathID(c)
	if err != nil {
		return err
	}
	var camp campaign
	if err := d.call(c, http.MethodGet, "/campaigns/"+id, nil, &camp); err != nil {
		return d.fail(c, err)
	}
	status, cursor := c.QueryParam("status"), c.QueryParam("cursor")
	var msgs struct {
		Data       []message `json:"data"`
		Pagination struct {
			NextCursor *string `json:"next_cursor"`
		} `json:"pagination"`
	}
	if err := d.call(c, http.MethodGet, "/campaigns/"+id+"/messages"+query("page_size", "50", "status", status, "cursor", cursor), nil, &msgs); err != nil {
		return d.fail(c, err)
	}
	next := ""
	if msgs.Pagination.NextCursor != nil {
		next = query("status", status, "cursor", *msgs.Pagination.NextCursor)
	}
	return d.render(c, http.StatusOK, "campaign", map[string]any{
		"Nav": "campaigns", "C": camp, "Messages": msgs.Data, "Status": status, "Next": next,
		"Statuses": messageStatuses, "First": cursor != "",
	})
}

// campaignLive is the campaign page's live panel alone (polled).
func (d *Dashboard) campaignLive(c echo.Context) error {
	id, err := pathID(c)
	if err != nil {
		return err
	}
	var camp campaign
	if err := d.call(c, http.MethodGet, "/campaigns/"+id, nil, &camp); err != nil {
		return d.fail(c, err)
	}
	return d.render(c, http.StatusOK, "campaign-live", map[string]any{"C": camp})
}

var actions = map[string]string{"pause": "paused", "resume": "resumed", "cancel": "cancelled", "retry-failed": "retried"}

// action runs a lifecycle action through the API and returns to the page
// the form names (the campaign's by default).
func (d *Dashboard) action(c echo.Context) error {
	id, err := pathID(c)
	if err != nil {
		return err
	}
	act := c.Param("action")
	if _, ok := actions[act]; !ok {
		return echo.NewHTTPError(http.StatusNotFound)
	}
	if err := d.call(c, http.MethodPost, "/campaigns/"+id+"/"+act, map[string]any{}, nil); err != nil {
		return d.fail(c, err)
	}
	back := c.FormValue("return")
	if !strings.HasPrefix(back, Prefix+"/") || strings.HasPrefix(back, "//") {
		back = Prefix + "/campaigns/" + id
	}
	return c.Redirect(http.StatusSeeOther, back)
}

// exportCSV streams the API's CSV export straight to the browser.
func (d *Dashboard) exportCSV(c echo.Context) error {
	id, err := pathID(c)
	if err != nil {
		return err
	}
	d.opts.API.ServeHTTP(c.Response(), d.apiRequest(c, http.MethodGet, "/campaigns/"+id+"/messages.csv", "", nil))
	return nil
}

// message is one message with its attempts: a page, or the fragment a
// messages table row opens.
func (d *Dashboard) message(c echo.Context) error {
	id, err := pathID(c)
	if err != nil {
		return err
	}
	var m message
	if err := d.call(c, http.MethodGet, "/messages/"+id, nil, &m); err != nil {
		return d.fail(c, err)
	}
	if c.Request().Header.Get("X-Requested-With") != "" {
		return d.render(c, http.StatusOK, "message-history", map[string]any{"M": m})
	}
	return d.render(c, http.StatusOK, "message", map[string]any{"Nav": "campaigns", "M": m})
}

// composeForm is what the compose form shows: the campaign's values, or
// the ones just submitted when the API refused them.
type composeForm struct {
	Name, Template, Audience, Location, Product, CustomerIDs string
	ScheduledAt, WindowStart, WindowEnd, WindowTZ            string
	PreviewCustomer                                          string
}

func formFromCampaign(c campaign) composeForm {
	f := composeForm{Name: c.Name, Template: c.BaseTemplate, Audience: "all", WindowTZ: "UTC"}
	if a := c.Audience; a != nil {
		switch {
		case len(a.CustomerIDs) > 0:
			f.Audience = "ids"
			ids := make([]string, len(a.CustomerIDs))
			for i, id := range a.CustomerIDs {
				ids[i] = strconv.FormatInt(id, 10)
			}
			f.CustomerIDs = strings.Join(ids, ", ")
		case a.Location != "" || a.PreferredProduct != "":
			f.Audience, f.Location, f.Product = "filter", a.Location, a.PreferredProduct
		}
	}
	if c.ScheduledAt != nil {
		f.ScheduledAt = c.ScheduledAt.UTC().Format("2006-01-02T15:04")
	}
	if w := c.SendWindow; w != nil {
		f.WindowStart, f.WindowEnd, f.WindowTZ = w.Start, w.End, w.Timezone
	}
	return f
}

func formFromRequest(c echo.Context) composeForm {
	v := func(k string) string { return strings.TrimSpace(c.FormValue(k)) }
	return composeForm{
		Name: v("name"), Template: c.FormValue("base_template"), Audience: v("audience"),
		Location: v("location"), Product: v("preferred_product"), CustomerIDs: v("customer_ids"),
		ScheduledAt: v("scheduled_at"), WindowStart: v("window_start"), WindowEnd: v("window_end"),
		WindowTZ: v("window_tz"), PreviewCustomer: v("preview_customer"),
	}
}

// audienceBody is the form's audience as the API takes it.
func (f composeForm) audienceBody() (any, error) {
	switch f.Audience {
	case "filter":
		return audience{Location: f.Location, PreferredProduct: f.Product}, nil
	case "ids":
		var ids []int64
		for _, s := range strings.FieldsFunc(f.CustomerIDs, func(r rune) bool { return r == ',' || r == ' ' || r == '\n' }) {
			id, err := strconv.ParseInt(s, 10, 64)
			if err != nil {
				return nil, &apiError{Status: http.StatusBadRequest, Code: "VALIDATION_ERROR", Message: fmt.Sprintf("customer ids: %q is not a number", s)}
			}
			ids = append(ids, id)
		}
		return audience{CustomerIDs: ids}, nil
	}
	return audience{All: true}, nil
}

// compose is the compose page of a draft or scheduled campaign.
func (d *Dashboard) compose(c echo.Context) error {
	id, err := pathID(c)
	if err != nil {
		return err
	}
	var camp campaign
	if err := d.call(c, http.MethodGet, "/campaigns/"+id, nil, &camp); err != nil {
		return d.fail(c, err)
	}
	if !camp.Editable() {
		return c.Redirect(http.StatusSeeOther, Prefix+"/campaigns/"+id)
	}
	return d.renderCompose(c, http.StatusOK, camp, formFromCampaign(camp), nil)
}

func (d *Dashboard) renderCompose(c echo.Context, status int, camp campaign, f composeForm, formErr error) error {
	var custs struct {
		Data []customer `json:"data"`
	}
	if err := d.call(c, http.MethodGet, "/customers?page_size=50", nil, &custs); err != nil {
		return d.fail(c, err)
	}
	data := map[string]any{"Nav": "compose", "C": camp, "F": f, "Customers": custs.Data}
	var ae *apiError
	if errors.As(formErr, &ae) {
		data["Err"] = ae
	}
	return d.render(c, status, "compose", data)
}

// saveCompose saves the form (PATCH), then schedules or sends as asked.
func (d *Dashboard) saveCompose(c echo.Context) error {
	id, err := pathID(c)
	if err != nil {
		return err
	}
	f := formFromRequest(c)
	do := c.FormValue("do")
	var camp campaign
	if err := d.call(c, http.MethodGet, "/campaigns/"+id, nil, &camp); err != nil {
		return d.fail(c, err)
	}
	body := map[string]any{"name": f.Name, "base_template": f.Template, "scheduled_at": nil, "send_window": nil}
	aud, err := f.audienceBody()
	if err != nil {
		return d.renderCompose(c, http.StatusBadRequest, camp, f, err)
	}
	if a := aud.(audience); len(a.CustomerIDs) > 0 {
		body["customer_ids"] = a.CustomerIDs
	} else {
		body["audience"] = a
	}
	if f.WindowStart != "" || f.WindowEnd != "" {
		body["send_window"] = sendWindow{Start: f.WindowStart, End: f.WindowEnd, Timezone: f.WindowTZ}
	}
	if do == "schedule" {
		at, err := time.Parse("2006-01-02T15:04", f.ScheduledAt)
		if err != nil {
			return d.renderCompose(c, http.StatusBadRequest, camp, f, &apiError{Status: 400, Code: "VALIDATION_ERROR", Message: "scheduled at: give a date and time (UTC)"})
		}
		body["scheduled_at"] = at.UTC().Format(time.RFC3339)
	}
	if err := d.call(c, http.MethodPatch, "/campaigns/"+id, body, &camp); err != nil {
		return d.renderCompose(c, statusOf(err), camp, f, err)
	}
	if do == "send" {
		if err := d.call(c, http.MethodPost, "/campaigns/"+id+"/send", map[string]any{}, nil); err != nil {
			return d.renderCompose(c, statusOf(err), camp, f, err)
		}
		return c.Redirect(http.StatusSeeOther, Prefix+"/campaigns/"+id)
	}
	if do == "schedule" {
		return c.Redirect(http.StatusSeeOther, Prefix+"/campaigns/"+id)
	}
	return c.Redirect(http.StatusSeeOther, Prefix+"/campaigns/"+id+"/compose?saved=1")
}

func statusOf(err error) int {
	var ae *apiError
	if errors.As(err, &ae) {
		return ae.Status
	}
	return http.StatusInternalServerError
}

// preview renders the typed template for the chosen customer with the
// API's preview (override_template), which counts the SMS characters and
// segments with platform/sms: nothing is counted in the browser.
func (d *Dashboard) preview(c echo.Context) error {
	id, err := pathID(c)
	if err != nil {
		return err
	}
	f := formFromRequest(c)
	cust, _ := strconv.ParseInt(f.PreviewCustomer, 10, 64)
	if cust == 0 {
		return d.render(c, http.StatusOK, "preview", map[string]any{"Empty": true})
	}
	var p preview
	err = d.call(c, http.MethodPost, "/campaigns/"+id+"/personalized-preview", map[string]any{"customer_id": cust, "override_template": f.Template}, &p)
	if err != nil {
		return d.render(c, http.StatusOK, "preview", map[string]any{"Err": err})
	}
	return d.render(c, http.StatusOK, "preview", map[string]any{"P": p})
}

// estimate asks the API what sending to the form's audience would create
// and cost.
func (d *Dashboard) estimate(c echo.Context) error {
	id, err := pathID(c)
	if err != nil {
		return err
	}
	aud, err := formFromRequest(c).audienceBody()
	if err != nil {
		return d.fail(c, err)
	}
	body := map[string]any{"audience": aud}
	if a := aud.(audience); len(a.CustomerIDs) > 0 {
		body = map[string]any{"customer_ids": a.CustomerIDs}
	}
	var e estimate
	if err := d.call(c, http.MethodPost, "/campaigns/"+id+"/estimate", body, &e); err != nil {
		return d.fail(c, err)
	}
	return d.render(c, http.StatusOK, "estimate", map[string]any{"E": e})
}

// testSend sends the campaign's saved template to one phone now.
func (d *Dashboard) testSend(c echo.Context) error {
	id, err := pathID(c)
	if err != nil {
		return err
	}
	body := map[string]any{"phone": strings.TrimSpace(c.FormValue("test_phone"))}
	if cust, err := strconv.ParseInt(c.FormValue("preview_customer"), 10, 64); err == nil && cust > 0 {
		body["customer_id"] = cust
	}
	var m message
	if err := d.call(c, http.MethodPost, "/campaigns/"+id+"/test-send", body, &m); err != nil {
		return d.fail(c, err)
	}
	return d.render(c, http.StatusOK, "test-sent", map[string]any{"M": m})
}

// customers is the customer list with search, filters, paging and the
// CSV import form (and, after an import, its result).
func (d *Dashboard) customers(c echo.Context) error {
	return d.renderCustomers(c, http.StatusOK, nil)
}

func (d *Dashboard) renderCustomers(c echo.Context, status int, importResult map[string]any) error {
	q, loc, prod, cursor := c.QueryParam("q"), c.QueryParam("location"), c.QueryParam("preferred_product"), c.QueryParam("cursor")
	var list struct {
		Data       []customer `json:"data"`
		Pagination pagination `json:"pagination"`
	}
	if err := d.call(c, http.MethodGet, "/customers"+query("page_size", "25", "q", q, "location", loc, "preferred_product", prod, "cursor", cursor), nil, &list); err != nil {
		return d.fail(c, err)
	}
	next := ""
	if list.Pagination.NextCursor != nil {
		next = query("q", q, "location", loc, "preferred_product", prod, "cursor", *list.Pagination.NextCursor)
	}
	return d.render(c, status, "customers", map[string]any{
		"Nav": "customers", "List": list.Data, "Page": list.Pagination, "Next": next, "First": cursor != "",
		"Q": q, "Location": loc, "Product": prod, "Import": importResult,
	})
}

// importCustomers sends the uploaded CSV to the API's import as it is and
// shows the rows it refused, by line.
func (d *Dashboard) importCustomers(c echo.Context) error {
	fh, err := c.FormFile("file")
	if err != nil {
		return d.renderCustomers(c, http.StatusBadRequest, map[string]any{"Message": "Choose a CSV file to import."})
	}
	f, err := fh.Open()
	if err != nil {
		return err
	}
	defer f.Close()
	var res struct {
		Imported int `json:"imported"`
	}
	err = d.callRaw(c, http.MethodPost, "/customers/import", "text/csv", io.Reader(f), &res)
	var ae *apiError
	switch {
	case err == nil:
		return d.renderCustomers(c, http.StatusOK, map[string]any{"OK": true, "Message": fmt.Sprintf("Imported %d customers from %s.", res.Imported, fh.Filename)})
	case errors.As(err, &ae):
		return d.renderCustomers(c, ae.Status, map[string]any{"Message": ae.Message, "Rows": ae.Details["rows"], "Invalid": ae.Details["invalid_rows"]})
	}
	return err
}

// customer is one customer with an opt-out switch per channel.
func (d *Dashboard) customer(c echo.Context) error {
	id, err := pathID(c)
	if err != nil {
		return err
	}
	var cu customer
	if err := d.call(c, http.MethodGet, "/customers/"+id, nil, &cu); err != nil {
		return d.fail(c, err)
	}
	return d.render(c, http.StatusOK, "customer", map[string]any{"Nav": "customers", "Cu": cu, "Channels": channels})
}

// optOut opts the customer out of a channel, or back in.
func (d *Dashboard) optOut(c echo.Context) error {
	id, err := pathID(c)
	if err != nil {
		return err
	}
	ch := c.FormValue("channel")
	if c.FormValue("op") == "in" {
		err = d.call(c, http.MethodDelete, "/customers/"+id+"/opt-out?channel="+url.QueryEscape(ch), nil, nil)
	} else {
		err = d.call(c, http.MethodPost, "/customers/"+id+"/opt-out", map[string]any{"channel": ch}, nil)
	}
	if err != nil {
		return d.fail(c, err)
	}
	return c.Redirect(http.StatusSeeOther, Prefix+"/customers/"+id)
}

// queue is the queue health page.
func (d *Dashboard) queue(c echo.Context) error {
	data, err := d.queueData(c)
	if err != nil {
		return d.fail(c, err)
	}
	data["Nav"] = "queue"
	return d.render(c, http.StatusOK, "queue", data)
}

func (d *Dashboard) queueLive(c echo.Context) error {
	data, err := d.queueData(c)
	if err != nil {
		return d.fail(c, err)
	}
	return d.render(c, http.StatusOK, "queue-live", data)
}

func (d *Dashboard) queueData(c echo.Context) (map[string]any, error) {
	var h queueHealth
	if err := d.call(c, http.MethodGet, "/queue", nil, &h); err != nil {
		return nil, err
	}
	var dead struct {
		Total int64     `json:"total"`
		Items []message `json:"items"`
	}
	if err := d.call(c, http.MethodGet, "/queue/dead-letters?limit=50", nil, &dead); err != nil {
		return nil, err
	}
	// The bars are scaled to the busiest minute; the campaigns of the dead
	// letters listed each get a retry button.
	var peak int64 = 1
	for _, m := range h.Throughput {
		peak = max(peak, m.Outcomes["sent"]+m.Outcomes["failed"]+m.Outcomes["retried"]+m.Outcomes["cancelled"])
	}
	var camps []int64
	seen := map[int64]bool{}
	for _, m := range dead.Items {
		if !seen[m.CampaignID] {
			seen[m.CampaignID] = true
			camps = append(camps, m.CampaignID)
		}
	}
	return map[string]any{"H": h, "Peak": peak, "Dead": dead.Items, "DeadTotal": dead.Total, "DeadCampaigns": camps}, nil
}
