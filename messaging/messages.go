package messaging

import (
	"context"
	"database/sql"
	"encoding/csv"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/url"
	"strconv"
	"strings"
	"time"

	"github.com/jmoiron/sqlx"

	"github.com/campaignd/dispatch/platform/channel"
	"github.com/campaignd/dispatch/platform/errs"
	"github.com/campaignd/dispatch/platform/page"
	"github.com/campaignd/dispatch/platform/postgres"
)

// The read side of outbound messages: the messages API (GET
// /campaigns/{id}/messages, GET /messages/{id}) and the CSV export.

var (
	// ErrMessageNotFound is returned for an unknown message id.
	ErrMessageNotFound = errs.New(errs.KindNotFound, "MESSAGE_NOT_FOUND", "message not found")
	// ErrCampaignNotFound is returned when a campaign's messages are asked
	// for and the campaign does not exist. It carries the campaign feature's
	// code (messaging does not import campaign), so errors.Is matches it
	// with campaign.ErrNotFound.
	ErrCampaignNotFound = errs.New(errs.KindNotFound, "CAMPAIGN_NOT_FOUND", "campaign not found")
)

// MessageView is a message as the API shows it (API.md, "Messages: every
// recipient visible"). Phone is the test send's own phone, else the
// customer's; it is null once the customer is erased, as is CustomerID.
// Channel is the campaign's. Cost is the stored decimal with trailing zeros
// beyond two decimals dropped ("0.80"); null when unknown. Times are UTC.
type MessageView struct {
	ID                int64           `db:"id" json:"id"`
	CampaignID        int64           `db:"campaign_id" json:"campaign_id"`
	CustomerID        *int64          `db:"customer_id" json:"customer_id"`
	Phone             *string         `db:"phone" json:"phone"`
	Channel           channel.Channel `db:"channel" json:"channel"`
	Status            Status          `db:"status" json:"status"`
	Attempts          int             `db:"attempts" json:"attempts"`
	LastError         *string         `db:"last_error" json:"last_error"`
	RenderedContent   *string         `db:"rendered_content" json:"rendered_content"`
	Provider          *string         `db:"provider" json:"provider"`
	ProviderMessageID *string         `db:"provider_message_id" json:"provider_message_id"`
	Encoding          *string         `db:"encoding" json:"encoding"`
	Segments          *int            `db:"segments" json:"segments"`
	Cost              *string         `db:"cost" json:"cost"`
	Currency          *string         `db:"currency" json:"currency"`
	Test              bool            `db:"test" json:"test"`
	CreatedAt         time.Time       `db:"created_at" json:"created_at"`
	SentAt            *time.Time      `db:"sent_at" json:"sent_at"`
	DeliveredAt       *time.Time      `db:"delivered_at" json:"delivered_at"`
	UpdatedAt         time.Time       `db:"updated_at" json:"updated_at"`
}

// normalized returns v with its times in UTC and its cost as a price.
func (v MessageView) normalized() MessageView {
	v.CreatedAt, v.UpdatedAt = v.CreatedAt.UTC(), v.UpdatedAt.UTC()
	v.SentAt, v.DeliveredAt = utcPtr(v.SentAt), utcPtr(v.DeliveredAt)
	if v.Cost != nil {
		c := costText(*v.Cost)
		v.Cost = &c
	}
	return v
}

func utcPtr(t *time.Time) *time.Time {
	if t == nil {
		return nil
	}
	u := t.UTC()
	return &u
}

// costText renders a stored cost, numeric(12,5) and so "0.80000" as text,
// as a price: trailing zeros beyond the second decimal dropped ("0.80",
// "0.0075", "12.00").
func costText(s string) string {
	dot := strings.IndexByte(s, '.')
	if dot < 0 {
		return s + ".00"
	}
	for len(s) > dot+3 && s[len(s)-1] == '0' {
		s = s[:len(s)-1]
	}
	for len(s) < dot+3 {
		s += "0"
	}
	return s
}

// AttemptView is one delivery attempt of a message, from message_attempts.
// Outcome is sent, failed, retried or uncertain.
type AttemptView struct {
	Attempt        int       `json:"attempt"`
	StartedAt      time.Time `json:"started_at"`
	DurationMS     int       `json:"duration_ms"`
	Outcome        string    `json:"outcome"`
	Error          *string   `json:"error"`
	ProviderStatus *string   `json:"provider_status"`
}

// MessageDetail is a message with its delivery attempts, oldest first.
// AttemptsLog is never nil, so it is [] in JSON for a message not yet tried.
type MessageDetail struct {
	MessageView
	AttemptsLog []AttemptView `json:"attempts_log"`
}

// MessageFilter selects a campaign's messages in a list. Zero values do not
// filter, except that test sends are left out unless Test is set.
type MessageFilter struct {
	Status Status // one status; "" for all
	Phone  string // an exact E.164 phone ("+254712000001"); "" for all
	Test   bool   // include test sends
}

// parseMessageFilter reads the list filters status, phone and test from a
// query. An unknown status, a phone that is not '+' and digits, and a test
// that is not true or false are VALIDATION_ERRORs naming the parameter.
//
// An unescaped '+' in a query string decodes as a space, so
// "?phone=+254712000001" arrives as " 254712000001": a single leading space
// is taken for the '+' it was. Nothing else is normalised (the phone must
// be E.164 as stored).
func parseMessageFilter(q url.Values) (MessageFilter, error) {
	f := MessageFilter{Status: Status(q.Get("status")), Phone: q.Get("phone")}
	if strings.HasPrefix(f.Phone, " ") {
		f.Phone = "+" + f.Phone[1:]
	}
	switch v := q.Get("test"); v {
	case "", "false":
	case "true":
		f.Test = true
	default:
		return MessageFilter{}, errs.Validation("test", "test must be true or false, got %s", errs.Quote(v))
	}
	return f, f.validate()
}

func (f MessageFilter) validate() error {
	if f.Status != "" && !f.Status.Valid() {
		names := make([]string, len(Statuses))
		for i, s := range Statuses {
			names[i] = string(s)
		}
		return errs.Validation("status", "status must be one of %s, got %s", strings.Join(names, ", "), errs.Quote(string(f.Status)))
	}
	if f.Phone != "" && !isE164(f.Phone) {
		return errs.Validation("phone", "phone must be an E.164 number, '+' followed by up to 15 digits "+
			"(write '+' as %%2B in a query string), got %s", errs.Quote(f.Phone))
	}
	return nil
}

// key returns the filter's values in a fixed order, for page.Parse to bind
// into the cursor.
func (f MessageFilter) key() []string {
	return []string{string(f.Status), f.Phone, strconv.FormatBool(f.Test)}
}

func isE164(s string) bool {
	if len(s) < 2 || len(s) > 16 || s[0] != '+' {
		return false
	}
	for i := 1; i < len(s); i++ {
		if s[i] < '0' || s[i] > '9' {
			return false
		}
	}
	return true
}

// MessageList is one page of a campaign's messages. There is no total: a
// campaign may hold millions of messages, and counting them on every page
// would cost more than the page (the campaign's stats count by status).
type MessageList = page.UncountedList[MessageView]

// messageSelect reads the API's message object. It reads campaigns (the
// channel) and customers (the phone), owned by other features, in a join:
// the alternative is a call per page into each.
const (
	messageColumns = `
SELECT m.id, m.campaign_id, m.customer_id, coalesce(m.phone, u.phone) AS phone, k.channel, m.status,
       m.attempts, m.last_error, m.rendered_content, m.provider, m.provider_message_id, m.encoding,
       m.segments, m.cost::text AS cost, m.currency, m.test, m.created_at, m.sent_at, m.delivered_at,
       m.updated_at`
	messageFrom = `
FROM outbound_messages m
JOIN campaigns k ON k.id = m.campaign_id
LEFT JOIN customers u ON u.id = m.customer_id`
	messageSelect = messageColumns + messageFrom
)

const campaignExistsSQL = `SELECT EXISTS (SELECT 1 FROM campaigns WHERE id = $1)`

// ListMessages returns a page of campaign campaignID's messages, newest
// (highest id) first, matching f. A cursor request (req.AfterID) reads the
// ids below the previous page's last, so a walk never repeats a message and
// never skips one that existed when it began, however many are created or
// change status meanwhile. An invalid filter is a VALIDATION_ERROR; an
// unknown campaign is ErrCampaignNotFound.
//
// The WHERE clause is built from the filters given, so each shape gets its
// own plan: (campaign_id, id) walked backwards, or for a status the partial
// (campaign_id, id) index of messages being delivered (sending) or of those
// that ended unsent (failed, undelivered, cancelled), and for a phone among
// non-test messages the (campaign_id, customer_id) unique index. With test=true and a phone, the campaign's messages are
// scanned and filtered (test sends keep their phone on the message, which
// has no index).
func (r *Repo) ListMessages(ctx context.Context, campaignID int64, f MessageFilter, req page.Request) (MessageList, error) {
	if err := f.validate(); err != nil {
		return MessageList{}, err
	}
	args := []any{campaignID}
	arg := func(v any) string {
		args = append(args, v)
		return "$" + strconv.Itoa(len(args))
	}
	var q strings.Builder
	q.WriteString(messageSelect)
	q.WriteString("\nWHERE m.campaign_id = $1")
	if !f.Test {
		q.WriteString(" AND NOT m.test")
	}
	if f.Status != "" {
		q.WriteString(" AND m.status = " + arg(string(f.Status)))
	}
	if f.Phone != "" {
		p := arg(f.Phone)
		if !f.Test {
			// A non-test message's phone is its customer's (test sends
			// alone keep one on the message): find the customer by the
			// unique phone, then the message by (campaign_id, customer_id).
			q.WriteString(" AND m.customer_id = (SELECT id FROM customers WHERE phone = " + p + ")")
		}
		q.WriteString(" AND coalesce(m.phone, u.phone) = " + p)
	}
	offset := req.Offset()
	if req.AfterID != 0 {
		q.WriteString(" AND m.id < " + arg(req.AfterID))
	}
	q.WriteString("\nORDER BY m.id DESC LIMIT " + arg(req.Limit()) + " OFFSET " + arg(offset))

	rows := make([]MessageView, 0, req.Limit())
	if err := r.db.SelectContext(ctx, &rows, q.String(), args...); err != nil {
		return MessageList{}, postgres.Classify(err, fmt.Sprintf("list messages of campaign %d", campaignID))
	}
	if len(rows) == 0 {
		// Only an empty page needs the campaign's existence checked: a
		// message implies its campaign (one with messages cannot be
		// deleted: campaigns_keep_messages, 00018).
		if err := r.checkCampaign(ctx, campaignID); err != nil {
			return MessageList{}, err
		}
	}
	for i := range rows {
		rows[i] = rows[i].normalized()
	}
	return page.NewUncounted(rows, req, func(v MessageView) int64 { return v.ID }), nil
}

// checkCampaign returns ErrCampaignNotFound unless campaign id exists.
func (r *Repo) checkCampaign(ctx context.Context, id int64) error {
	var ok bool
	if err := r.db.GetContext(ctx, &ok, campaignExistsSQL, id); err != nil {
		return postgres.Classify(err, fmt.Sprintf("check campaign %d", id))
	}
	if !ok {
		return ErrCampaignNotFound.Withf("campaign %d not found", id)
	}
	return nil
}

// getMessageSQL reads the message and its attempts in one statement, so
// the two agree (a separate read of the attempts could see one recorded
// after the message was read).
const getMessageSQL = messageColumns + `, l.attempts_log` + messageFrom + `
CROSS JOIN LATERAL (
    SELECT coalesce(json_agg(json_build_object(
               'attempt', a.attempt, 'started_at', a.started_at, 'duration_ms', a.duration_ms,
               'outcome', a.outcome, 'error', a.error, 'provider_status', a.provider_status)
           ORDER BY a.attempt), '[]') AS attempts_log
    FROM message_attempts a
    WHERE a.message_id = m.id AND a.campaign_id = m.campaign_id -- the message's partition only
) l
WHERE m.id = $1`

// GetMessage returns message id with its attempts, oldest first; an
// unknown id is ErrMessageNotFound.
func (r *Repo) GetMessage(ctx context.Context, id int64) (MessageDetail, error) {
	var row struct {
		MessageView
		Log []byte `db:"attempts_log"`
	}
	err := r.db.GetContext(ctx, &row, getMessageSQL, id)
	if errors.Is(err, sql.ErrNoRows) {
		return MessageDetail{}, ErrMessageNotFound.Withf("message %d not found", id)
	}
	if err != nil {
		return MessageDetail{}, postgres.Classify(err, fmt.Sprintf("get message %d", id))
	}
	d := MessageDetail{MessageView: row.MessageView.normalized(), AttemptsLog: []AttemptView{}}
	if err := json.Unmarshal(row.Log, &d.AttemptsLog); err != nil {
		return MessageDetail{}, fmt.Errorf("decode attempts of message %d: %w", id, err)
	}
	for i := range d.AttemptsLog {
		d.AttemptsLog[i].StartedAt = d.AttemptsLog[i].StartedAt.UTC()
	}
	return d, nil
}

// exportColumns is the header row of the CSV export, in column order.
var exportColumns = []string{
	"id", "campaign_id", "customer_id", "phone", "first_name", "last_name", "channel", "status", "attempts",
	"last_error", "rendered_content", "provider", "provider_message_id", "encoding", "segments", "cost",
	"currency", "created_at", "sent_at", "delivered_at", "updated_at",
}

// exportChunk is how many messages one export query reads. Memory does not
// depend on it (rows are written as they arrive); it trades round trips
// against how long each statement runs.
const exportChunk = 5000

const exportCampaignSQL = `SELECT channel FROM campaigns WHERE id = $1`

// exportChunkSQL reads the next chunk of a campaign's non-test messages
// after id $2, through the (campaign_id, id) index.
const exportChunkSQL = `
SELECT m.id, m.customer_id, coalesce(m.phone, u.phone), u.first_name, u.last_name, m.status, m.attempts,
       m.last_error, m.rendered_content, m.provider, m.provider_message_id, m.encoding, m.segments,
       m.cost::text, m.currency, m.created_at, m.sent_at, m.delivered_at, m.updated_at
FROM outbound_messages m
LEFT JOIN customers u ON u.id = m.customer_id
WHERE m.campaign_id = $1 AND NOT m.test AND m.id > $2
ORDER BY m.id
LIMIT $3`

// ExportMessages writes every non-test message of campaign campaignID to w
// as CSV (a header row of exportColumns, then one record per message), in id
// order. An unknown campaign is ErrCampaignNotFound, returned before
// anything is written. The CSV is flushed to w after every chunk of
// messages, and w's own Flush (an http.ResponseWriter's) is called then, so
// a client sees progress and memory stays bounded whatever the size.
//
// The messages are read in keyset chunks (id > the last one written, LIMIT
// exportChunk) inside one REPEATABLE READ, read-only transaction: every
// chunk sees the snapshot the export began with, so the file is one
// consistent picture of a campaign still delivering. Chosen over DECLARE
// CURSOR because each chunk is a short index range scan whose plan does not
// depend on guessing how much of the cursor will be fetched, each statement
// stays within a statement_timeout however large the campaign, and between
// chunks the session is idle rather than holding a portal. Rows are written
// as they arrive, so memory is one CSV buffer and the driver's read buffer.
//
// Customer-supplied cells (first_name, last_name, last_error,
// rendered_content) that begin with '=', '+', '-', '@', a tab or a carriage
// return are prefixed with "'", so a spreadsheet shows them as text instead
// of evaluating them; the phone, always E.164, is exempt. NULLs are empty
// cells.
//
// An error after the first byte was written leaves w holding a truncated
// file: the caller must make that visible (the handler aborts the response).
func (r *Repo) ExportMessages(ctx context.Context, campaignID int64, w io.Writer) error {
	tx, err := r.db.BeginTxx(ctx, &sql.TxOptions{Isolation: sql.LevelRepeatableRead, ReadOnly: true})
	if err != nil {
		return postgres.Classify(err, "export messages: begin")
	}
	defer tx.Rollback() // read-only: nothing to commit

	var ch string
	err = tx.GetContext(ctx, &ch, exportCampaignSQL, campaignID)
	if errors.Is(err, sql.ErrNoRows) {
		return ErrCampaignNotFound.Withf("campaign %d not found", campaignID)
	}
	if err != nil {
		return postgres.Classify(err, fmt.Sprintf("export messages of campaign %d", campaignID))
	}

	// Records end in LF, not RFC 4180's CR LF: with UseCRLF, encoding/csv
	// drops a lone CR inside a field and rewrites LF as CR LF, so the file
	// would no longer hold the stored text. Spreadsheets and CSV libraries
	// read LF-terminated files.
	cw := csv.NewWriter(w)
	if err := cw.Write(exportColumns); err != nil {
		return fmt.Errorf("export messages: %w", err)
	}
	rec := make([]string, len(exportColumns))
	campaign := strconv.FormatInt(campaignID, 10)
	var after int64
	for {
		n, last, err := exportChunkRows(ctx, tx, campaignID, after, func(e *exportRow) error {
			e.record(rec, campaign, ch)
			return cw.Write(rec)
		})
		if err != nil {
			return err
		}
		cw.Flush()
		if err := cw.Error(); err != nil {
			return fmt.Errorf("export messages of campaign %d: write: %w", campaignID, err)
		}
		if f, ok := w.(interface{ Flush() }); ok {
			f.Flush()
		}
		if n < exportChunk {
			return nil
		}
		after = last
	}
}

// exportChunkRows reads one chunk of messages after id after and hands each
// row to emit; it returns how many it read and the last id.
func exportChunkRows(ctx context.Context, tx *sqlx.Tx, campaignID, after int64, emit func(*exportRow) error) (n int, last int64, err error) {
	rows, err := tx.QueryContext(ctx, exportChunkSQL, campaignID, after, exportChunk)
	if err != nil {
		return 0, 0, postgres.Classify(err, fmt.Sprintf("export messages of campaign %d", campaignID))
	}
	defer rows.Close()
	var e exportRow
	for rows.Next() {
		if err := rows.Scan(&e.id, &e.customerID, &e.phone, &e.firstName, &e.lastName, &e.status, &e.attempts,
			&e.lastError, &e.content, &e.provider, &e.providerID, &e.encoding, &e.segments,
			&e.cost, &e.currency, &e.createdAt, &e.sentAt, &e.deliveredAt, &e.updatedAt); err != nil {
			return n, last, postgres.Classify(err, fmt.Sprintf("export messages of campaign %d: scan", campaignID))
		}
		if err := emit(&e); err != nil {
			return n, last, fmt.Errorf("export messages of campaign %d: write: %w", campaignID, err)
		}
		n, last = n+1, e.id
	}
	if err := rows.Err(); err != nil {
		return n, last, postgres.Classify(err, fmt.Sprintf("export messages of campaign %d", campaignID))
	}
	return n, last, nil
}

// exportRow is one scanned row of exportChunkSQL, reused across rows.
type exportRow struct {
	id                             int64
	customerID                     sql.NullInt64
	phone, firstName, lastName     sql.NullString
	status                         string
	attempts                       int64
	lastError, content             sql.NullString
	provider, providerID, encoding sql.NullString
	segments                       sql.NullInt64
	cost, currency                 sql.NullString
	createdAt, updatedAt           time.Time
	sentAt, deliveredAt            sql.NullTime
}

// record fills rec (len(exportColumns)) with the row's cells.
func (e *exportRow) record(rec []string, campaignID, ch string) {
	rec[0] = strconv.FormatInt(e.id, 10)
	rec[1] = campaignID
	rec[2] = nullInt(e.customerID)
	rec[3] = e.phone.String
	rec[4] = csvSafe(e.firstName.String)
	rec[5] = csvSafe(e.lastName.String)
	rec[6] = ch
	rec[7] = e.status
	rec[8] = strconv.FormatInt(e.attempts, 10)
	rec[9] = csvSafe(e.lastError.String)
	rec[10] = csvSafe(e.content.String)
	rec[11] = e.provider.String
	rec[12] = e.providerID.String
	rec[13] = e.encoding.String
	rec[14] = nullInt(e.segments)
	rec[15] = ""
	if e.cost.Valid {
		rec[15] = costText(e.cost.String)
	}
	rec[16] = e.currency.String
	rec[17] = e.createdAt.UTC().Format(time.RFC3339Nano)
	rec[18] = nullTime(e.sentAt)
	rec[19] = nullTime(e.deliveredAt)
	rec[20] = e.updatedAt.UTC().Format(time.RFC3339Nano)
}

func nullInt(v sql.NullInt64) string {
	if !v.Valid {
		return ""
	}
	return strconv.FormatInt(v.Int64, 10)
}

func nullTime(v sql.NullTime) string {
	if !v.Valid {
		return ""
	}
	return v.Time.UTC().Format(time.RFC3339Nano)
}

// csvSafe guards a customer-supplied CSV cell against formula injection: a
// value beginning with '=', '+', '-', '@', a tab or a carriage return,
// which a spreadsheet would evaluate as a formula, gets a "'" prefix, which
// makes it text.
func csvSafe(s string) string {
	if s == "" {
		return s
	}
	switch s[0] {
	case '=', '+', '-', '@', '\t', '\r':
		return "'" + s
	}
	return s
}
