package messaging

import (
	"cmp"
	"context"
	"database/sql"
	"errors"
	"fmt"
	"math"
	"math/bits"
	"slices"
	"strconv"
	"strings"
	"sync"

	"github.com/jmoiron/sqlx"
	"github.com/lib/pq"
	"github.com/nyaruka/phonenumbers"

	"github.com/campaignd/dispatch/messaging/template"
	"github.com/campaignd/dispatch/platform/channel"
	"github.com/campaignd/dispatch/platform/postgres"
	"github.com/campaignd/dispatch/platform/sms"
)

// Money is held as an int64 count of micro-units (millionths of the
// currency's unit: "0.80" KES is 800,000) rather than as a float, which
// cannot hold 0.1 exactly and so drifts when a million prices are added, or
// as a big decimal, which would allocate on the per-recipient path. Six
// decimals hold every per-segment price a provider quotes (Twilio's
// US$0.0079); int64 holds 9.2 × 10^12 units, and a price is at most
// MaxPricePerSegment, so an estimate overflows only past 10^8 segments at
// the highest price; the arithmetic checks and reports it rather than wrap.
const (
	microsPerUnit = 1_000_000
	moneyDecimals = 6
	// MaxPricePerSegment is the highest price per segment (or per WhatsApp
	// message) the configuration accepts, in currency units.
	MaxPricePerSegment = 10_000
)

// ParseMoney reads a non-negative decimal such as "0.80" or "0.0079" (at
// most six decimals, at most MaxPricePerSegment) as micro-units.
func ParseMoney(s string) (int64, error) {
	whole, frac, dot := strings.Cut(s, ".")
	if whole == "" || (dot && frac == "") || !allDigits(whole) || !allDigits(frac) {
		return 0, fmt.Errorf("%q is not a decimal number such as 0.80", s)
	}
	if len(frac) > moneyDecimals {
		return 0, fmt.Errorf("%q has more than %d decimals", s, moneyDecimals)
	}
	w, err := strconv.ParseInt(whole, 10, 64)
	if err != nil || w > MaxPricePerSegment {
		return 0, fmt.Errorf("%q is more than %d", s, MaxPricePerSegment)
	}
	f, _ := strconv.ParseInt(frac+strings.Repeat("0", moneyDecimals-len(frac)), 10, 64) // all digits: cannot fail
	m := w*microsPerUnit + f
	if m > MaxPricePerSegment*microsPerUnit {
		return 0, fmt.Errorf("%q is more than %d", s, MaxPricePerSegment)
	}
	return m, nil
}

// FormatMoney writes micros (not negative) with two decimals, rounding half
// up: 812_404_999 is "812.40", 812_405_000 is "812.41". Rounding happens
// here only, once per figure shown, never on the way to a sum.
func FormatMoney(micros int64) string {
	const perCent = microsPerUnit / 100
	cents := micros / perCent
	if micros%perCent >= perCent/2 {
		cents++
	}
	return fmt.Sprintf("%d.%02d", cents/100, cents%100)
}

// mulMoney is n × price in micros, or an error if it overflows int64.
func mulMoney(n, price int64) (int64, error) {
	hi, lo := bits.Mul64(uint64(n), uint64(price))
	if hi != 0 || lo > math.MaxInt64 {
		return 0, errors.New("estimate: cost overflows")
	}
	return int64(lo), nil
}

func allDigits(s string) bool {
	for i := range len(s) {
		if s[i] < '0' || s[i] > '9' {
			return false
		}
	}
	return true
}

// Pricing is what a message costs, per segment (per message on WhatsApp),
// by the recipient's country calling code, in one currency: the pricing.*
// configuration. The zero value prices everything at 0.
type Pricing struct {
	Currency      string           // ISO 4217, "KES"
	Default       int64            // micros per segment for a calling code not listed
	ByCallingCode map[string]int64 // calling code ("254", "1") → micros per segment
}

// NewPricing builds a Pricing from configuration text: currency (three
// capital letters), the default price and the price per calling code, as
// decimals (ParseMoney). A calling code must be one phone numbers use. The
// error lists every problem.
func NewPricing(currency, defaultPerSegment string, perCallingCode map[string]string) (Pricing, error) {
	var problems []string
	if len(currency) != 3 || strings.ToUpper(currency) != currency || !isLetters(currency) {
		problems = append(problems, fmt.Sprintf("currency %q is not an ISO 4217 code such as KES", currency))
	}
	p := Pricing{Currency: currency, ByCallingCode: make(map[string]int64, len(perCallingCode))}
	var err error
	if p.Default, err = ParseMoney(defaultPerSegment); err != nil {
		problems = append(problems, "default_per_segment: "+err.Error())
	}
	codes := make([]string, 0, len(perCallingCode))
	for code := range perCallingCode {
		codes = append(codes, code)
	}
	slices.Sort(codes) // problems in a stable order
	for _, code := range codes {
		if CallingCode("+"+code+"0000000") != code {
			problems = append(problems, fmt.Sprintf("per_calling_code: %q is not a country calling code", code))
			continue
		}
		m, err := ParseMoney(perCallingCode[code])
		if err != nil {
			problems = append(problems, fmt.Sprintf("per_calling_code.%s: %v", code, err))
			continue
		}
		p.ByCallingCode[code] = m
	}
	if len(problems) > 0 {
		return Pricing{}, errors.New(strings.Join(problems, "; "))
	}
	return p, nil
}

func isLetters(s string) bool {
	for i := range len(s) {
		if s[i] < 'A' || s[i] > 'Z' {
			return false
		}
	}
	return true
}

// PerSegment is the price of one segment to callingCode, in micros.
func (p Pricing) PerSegment(callingCode string) int64 {
	if m, ok := p.ByCallingCode[callingCode]; ok {
		return m
	}
	return p.Default
}

// callingCodes is the set of country calling codes phone numbers use (the
// phonenumbers library's, non-geographic ones such as 800 included),
// indexed by the code: none is longer than three digits.
var callingCodes = sync.OnceValue(func() *[1000]bool {
	var t [1000]bool
	for code := range phonenumbers.GetSupportedCallingCodes() {
		if code > 0 && code < len(t) {
			t[code] = true
		}
	}
	return &t
})

// CallingCode returns the country calling code of an E.164 phone
// ("+254712000001" → "254", "+14155550100" → "1"), or "" when phone is not
// "+" and digits starting with a known code. Calling codes are a prefix
// code (ITU-T E.164: no code is the start of another), so the first of the
// 1-, 2- and 3-digit prefixes that is a code is the code: the same rule
// phonenumbers.Parse applies, without parsing the rest of the number (a
// lookup, no allocation, some 200 times faster). The result is a substring
// of phone.
func CallingCode(phone string) string {
	if len(phone) < 2 || phone[0] != '+' || phone[1] == '0' {
		return ""
	}
	t := callingCodes()
	code := 0
	for i := 1; i <= 3 && i < len(phone); i++ {
		c := phone[i]
		if c < '0' || c > '9' {
			return ""
		}
		code = code*10 + int(c-'0')
		if t[code] {
			return phone[1 : i+1]
		}
	}
	return ""
}

// Estimate is what a send would create and cost, the body of
// POST /campaigns/{id}/estimate (the campaign feature passes it on as it
// is).
type Estimate struct {
	// Recipients counts the messages a send would create: opted-out
	// customers and duplicate ids left out.
	Recipients      int64 `json:"recipients"`
	SkippedOptedOut int64 `json:"skipped_opted_out"`
	// DuplicatesRemoved is the campaign feature's to fill in: it parses
	// the ids.
	DuplicatesRemoved int `json:"duplicates_removed"`
	// TooLong counts recipients (in Recipients) whose rendered message is
	// longer than the channel takes: delivery fails those for good, so
	// they add no segments and no cost.
	TooLong  int64            `json:"too_long"`
	Segments EstimateSegments `json:"segments"`
	Cost     EstimateCost     `json:"cost"`
}

// EstimateSegments counts the segments a send would be billed for. A
// WhatsApp message is one segment, with no encoding, so ByEncoding is
// empty; for SMS it has both "GSM-7" and "UCS-2".
type EstimateSegments struct {
	Total         int64            `json:"total"`
	MaxPerMessage int              `json:"max_per_message"`
	ByEncoding    map[string]int64 `json:"by_encoding"`
}

// EstimateCost is the segments priced by the recipients' calling codes.
// Total is the exact sum rounded once; each ByCountry cost is rounded on
// its own, so they may add up to a cent per country away from Total.
// ByCountry is ordered by cost, highest first, then calling code.
type EstimateCost struct {
	Currency  string            `json:"currency"`
	Total     string            `json:"total"`
	ByCountry []EstimateCountry `json:"by_country"`
}

// EstimateCountry is the part of an estimate going to one calling code;
// CallingCode is "" for phones with none known.
type EstimateCountry struct {
	CallingCode string `json:"calling_code"`
	Recipients  int64  `json:"recipients"`
	Segments    int64  `json:"segments"`
	Cost        string `json:"cost"`
}

// Estimator sizes and prices a send without creating anything.
type Estimator struct {
	db      *sqlx.DB
	limits  Limits
	pricing Pricing
}

// NewEstimator returns an Estimator reading customers through db, rendering
// with limits (the pool's) and pricing with pricing.
func NewEstimator(db *sqlx.DB, limits Limits, pricing Pricing) *Estimator {
	return &Estimator{db: db, limits: limits, pricing: pricing}
}

// estimateFetch is how many customers one FETCH of an estimate's cursor
// reads: a million-customer audience is a hundred round trips, and memory
// holds one row at a time whatever the size (lib/pq reads rows off the
// socket as they are scanned).
const estimateFetch = 10_000

// The audience's SQL, written once for every statement that walks an
// audience (the send's count, the materialiser's chunk, the cancel's count
// and the estimate): customers c matching the filter, $L the location and
// $P the preferred product (empty for none; exact, case-insensitive, served
// by the lower(...) indexes), and the opt-out o of channel $C, if any.
// countByFilterSQL, materializeChunkSQL and countUnmaterializedSQL predate
// these and spell them out; they are the same conditions.
func audienceWhereSQL(loc, prod int) string {
	return fmt.Sprintf("($%[1]d = '' OR lower(c.location) = lower($%[1]d)) AND ($%[2]d = '' OR lower(c.preferred_product) = lower($%[2]d))", loc, prod)
}

func optOutJoinSQL(ch int) string {
	return fmt.Sprintf("LEFT JOIN customer_opt_outs o ON o.customer_id = c.id AND o.channel = $%d", ch)
}

// audienceFilter is a's filter as CreateMessages applies it: trimmed, and
// empty for all customers.
func audienceFilter(a Audience) filter {
	if a.All {
		return filter{}
	}
	return filter{Location: strings.TrimSpace(a.Location), PreferredProduct: strings.TrimSpace(a.PreferredProduct)}
}

// estimateQuery is the statement an estimate's cursor runs: every customer
// of a with the fields tmpl may use and whether they opted out of the
// channel ($1). A field tmpl cannot use is read as empty (it would render
// nothing anyway): an estimate reads a million rows, and each column costs.
// A field is read whenever "{name}" appears, "{{name}}" included: reading
// one too many is harmless. No order: the estimate is a sum, and without
// ORDER BY the opt-outs are one hash join instead of a probe per customer.
func estimateQuery(tmpl string, a Audience) (string, []any) {
	var b strings.Builder
	b.WriteString("SELECT c.phone")
	for _, name := range []string{"first_name", "last_name", "location", "preferred_product"} {
		if strings.Contains(tmpl, "{"+name+"}") {
			b.WriteString(", c." + name)
		} else {
			b.WriteString(", ''")
		}
	}
	b.WriteString(", o.customer_id IS NOT NULL AS opted_out\n")
	if len(a.CustomerIDs) > 0 {
		b.WriteString("FROM unnest($2::bigint[]) AS u(id)\nJOIN customers c ON c.id = u.id\n" + optOutJoinSQL(1))
		return b.String(), []any{pq.Array(a.CustomerIDs)}
	}
	f := audienceFilter(a)
	b.WriteString("FROM customers c\n" + optOutJoinSQL(1) + "\nWHERE " + audienceWhereSQL(2, 3))
	return b.String(), []any{f.Location, f.PreferredProduct}
}

// Estimate renders every recipient's message of a send of template tmpl on
// ch to audience a, as delivery would, and counts and prices it. Nothing is
// written. The customers are read through a server-side cursor in a
// read-only, repeatable-read transaction (one snapshot, one plan),
// estimateFetch rows a round trip, in memory that does not grow with the
// audience. Ids in a must be distinct (the campaign feature removes
// duplicates); any that name no customer give ErrUnknownCustomers, as a
// send would. An audience that matches nobody is an estimate of 0, not an
// error.
func (e *Estimator) Estimate(ctx context.Context, ch channel.Channel, tmpl string, a Audience) (Estimate, error) {
	acc := newEstimateAcc(e, ch, tmpl)
	tx, err := e.db.BeginTxx(ctx, &sql.TxOptions{Isolation: sql.LevelRepeatableRead, ReadOnly: true})
	if err != nil {
		return Estimate{}, postgres.Classify(err, "estimate: begin")
	}
	defer tx.Rollback() // read-only: nothing to commit; closes the cursor

	// The cursor is read to its end: plan for all its rows (a hash join),
	// not for the first tenth (probes), which is what a cursor plans for.
	if _, err := tx.ExecContext(ctx, "SET LOCAL cursor_tuple_fraction = 1.0"); err != nil {
		return Estimate{}, postgres.Classify(err, "estimate: plan")
	}
	query, args := estimateQuery(tmpl, a)
	if _, err := tx.ExecContext(ctx, "DECLARE estimate_customers NO SCROLL CURSOR FOR "+query,
		append([]any{string(ch)}, args...)...); err != nil {
		return Estimate{}, postgres.Classify(err, "estimate: open cursor")
	}
	read := 0
	for {
		n, err := acc.fetch(ctx, tx)
		if err != nil {
			return Estimate{}, err
		}
		read += n
		if n < estimateFetch {
			break
		}
	}
	if len(a.CustomerIDs) > 0 && read < len(a.CustomerIDs) {
		if err := checkCustomers(ctx, tx, a.CustomerIDs); err != nil {
			return Estimate{}, err
		}
		return Estimate{}, fmt.Errorf("estimate: %d of %d customers found, yet none is missing", read, len(a.CustomerIDs))
	}
	return acc.result()
}

// estimateAcc adds up an estimate one recipient at a time.
type estimateAcc struct {
	e    *Estimator
	ch   channel.Channel
	tmpl string

	est        Estimate
	byEncoding [2]int64 // GSM-7, UCS-2
	// byCode is indexed by calling code (0: none known): an array, not a
	// map, so the per-recipient path does not hash.
	byCode *[1000]struct{ recipients, segments int64 }
}

func newEstimateAcc(e *Estimator, ch channel.Channel, tmpl string) *estimateAcc {
	return &estimateAcc{e: e, ch: ch, tmpl: tmpl, byCode: new([1000]struct{ recipients, segments int64 })}
}

// fetch reads the cursor's next rows and adds them; it returns how many
// customers it read.
func (a *estimateAcc) fetch(ctx context.Context, tx *sqlx.Tx) (n int, err error) {
	rows, err := tx.QueryContext(ctx, estimateFetchSQL)
	if err != nil {
		return 0, postgres.Classify(err, "estimate: read customers")
	}
	defer rows.Close()
	var (
		f        template.Fields
		optedOut bool
	)
	for rows.Next() {
		if err := rows.Scan(&f.Phone, &f.FirstName, &f.LastName, &f.Location, &f.PreferredProduct, &optedOut); err != nil {
			return 0, postgres.Classify(err, "estimate: scan customer")
		}
		n++
		if optedOut {
			a.est.SkippedOptedOut++
			continue
		}
		if err := a.add(f); err != nil {
			return 0, err
		}
	}
	return n, postgres.Classify(rows.Err(), "estimate: read customers")
}

var estimateFetchSQL = fmt.Sprintf("FETCH FORWARD %d FROM estimate_customers", estimateFetch)

// add counts one recipient's message.
func (a *estimateAcc) add(f template.Fields) error {
	a.est.Recipients++
	body, err := a.e.limits.Render(a.ch, a.tmpl, f)
	if err != nil {
		if long := (*TooLongError)(nil); errors.As(err, &long) {
			a.est.TooLong++
			return nil
		}
		// The template passed Check when it was stored, and Render fails
		// exactly when Check does.
		return fmt.Errorf("estimate: render: %w", err)
	}
	segments := 1 // a WhatsApp message
	if a.ch == channel.SMS {
		info := sms.Analyze(body)
		segments = info.Segments
		if info.Encoding == sms.UCS2 {
			a.byEncoding[1] += int64(segments)
		} else {
			a.byEncoding[0] += int64(segments)
		}
	}
	a.est.Segments.Total += int64(segments)
	a.est.Segments.MaxPerMessage = max(a.est.Segments.MaxPerMessage, segments)
	code, _ := strconv.Atoi(CallingCode(f.Phone)) // "" is 0
	c := &a.byCode[code]
	c.recipients++
	c.segments += int64(segments)
	return nil
}

// result prices the counts.
func (a *estimateAcc) result() (Estimate, error) {
	est := a.est
	est.Segments.ByEncoding = map[string]int64{}
	if a.ch == channel.SMS {
		est.Segments.ByEncoding[string(sms.GSM7)] = a.byEncoding[0]
		est.Segments.ByEncoding[string(sms.UCS2)] = a.byEncoding[1]
	}
	type country struct {
		EstimateCountry
		micros int64
	}
	var countries []country
	var total int64
	for code, c := range a.byCode {
		if c.recipients == 0 {
			continue
		}
		cc := ""
		if code > 0 {
			cc = strconv.Itoa(code)
		}
		m, err := mulMoney(c.segments, a.e.pricing.PerSegment(cc))
		if err != nil {
			return Estimate{}, err
		}
		if total+m < total {
			return Estimate{}, errors.New("estimate: cost overflows")
		}
		total += m
		countries = append(countries, country{
			EstimateCountry: EstimateCountry{CallingCode: cc, Recipients: c.recipients, Segments: c.segments, Cost: FormatMoney(m)},
			micros:          m,
		})
	}
	slices.SortFunc(countries, func(x, y country) int {
		if x.micros != y.micros {
			return cmp.Compare(y.micros, x.micros)
		}
		return strings.Compare(x.CallingCode, y.CallingCode)
	})
	est.Cost = EstimateCost{Currency: a.e.pricing.Currency, Total: FormatMoney(total), ByCountry: make([]EstimateCountry, len(countries))}
	for i, c := range countries {
		est.Cost.ByCountry[i] = c.EstimateCountry
	}
	return est, nil
}
