// Package customer owns the customers table: the customer type, its
// validation (phones are stored in E.164, read with a configurable default
// region), the SQL repository, the service and the HTTP handlers for
// GET/POST /customers, GET /customers/{id}, the bulk, all-or-nothing
// POST /customers/import, and per-channel opt-outs
// (POST and DELETE /customers/{id}/opt-out, stored in customer_opt_outs).
package customer

import (
	"errors"
	"fmt"
	"strings"
	"time"
	"unicode/utf8"

	"github.com/nyaruka/phonenumbers"

	"github.com/campaignd/dispatch/platform/channel"
	"github.com/campaignd/dispatch/platform/errs"
	"github.com/campaignd/dispatch/platform/text"
)

// Customer is a stored customer. Phone is always E.164 ("+254712345678") and
// unique; the text fields are trimmed and may be empty, never null. Times are
// UTC. OptedOutChannels lists the channels the customer must never be
// messaged on, sorted; every Customer the Repo returns has it non-nil, so it
// is [] in JSON, never null. It is not a column of customers: the Repo fills
// it from customer_opt_outs.
type Customer struct {
	ID               int64             `json:"id" db:"id"`
	Phone            string            `json:"phone" db:"phone"`
	FirstName        string            `json:"first_name" db:"first_name"`
	LastName         string            `json:"last_name" db:"last_name"`
	Location         string            `json:"location" db:"location"`
	PreferredProduct string            `json:"preferred_product" db:"preferred_product"`
	OptedOutChannels []channel.Channel `json:"opted_out_channels" db:"-"`
	CreatedAt        time.Time         `json:"created_at" db:"created_at"`
	UpdatedAt        time.Time         `json:"updated_at" db:"updated_at"`
}

// Input is a customer as a client sends it, to POST /customers or as one row
// of an import. The service trims it and normalises the phone before storing.
type Input struct {
	Phone            string `json:"phone"`
	FirstName        string `json:"first_name"`
	LastName         string `json:"last_name"`
	Location         string `json:"location"`
	PreferredProduct string `json:"preferred_product"`
}

// Filter selects customers in a list. Each non-empty field is an exact,
// case-insensitive match; empty fields do not filter.
type Filter struct {
	Location         string
	PreferredProduct string
	// Search matches a phone exactly, or the start of the first name, the
	// last name or "first last", case-insensitively (GET /customers?q=).
	Search string
}

// normalized trims the filter values, so "location= Nairobi" and
// "location=Nairobi" are the same list (stored values are trimmed too).
func (f Filter) normalized() Filter {
	return Filter{Location: strings.TrimSpace(f.Location), PreferredProduct: strings.TrimSpace(f.PreferredProduct),
		Search: strings.TrimSpace(f.Search)}
}

// validate returns f normalized, or a VALIDATION_ERROR naming the first value
// that no customer's field could hold (text.Line, MaxFieldLen): such a value
// would match nobody, and NUL or invalid UTF-8 cannot even be compared.
func (f Filter) validate() (Filter, error) {
	f = f.normalized()
	if err := text.Line("location", f.Location, 0, MaxFieldLen); err != nil {
		return Filter{}, err
	}
	if err := text.Line("preferred_product", f.PreferredProduct, 0, MaxFieldLen); err != nil {
		return Filter{}, err
	}
	if err := text.Line("q", f.Search, 0, MaxFieldLen); err != nil {
		return Filter{}, err
	}
	return f, nil
}

// key lists the filter values for page.Parse's cursor fingerprint. They are
// lower-cased because matching is case-insensitive: a cursor from
// ?location=Nairobi continues ?location=nairobi, which is the same list.
func (f Filter) key() []string {
	return []string{strings.ToLower(f.Location), strings.ToLower(f.PreferredProduct), strings.ToLower(f.Search)}
}

// Domain errors. Match them with errors.Is: errs.Error matches on Code, so
// ErrNotFound matches every "customer N not found" made from it.
var (
	// ErrNotFound: no customer has the id (404 CUSTOMER_NOT_FOUND).
	ErrNotFound = errs.New(errs.KindNotFound, "CUSTOMER_NOT_FOUND", "customer not found")
	// ErrPhoneTaken: another customer already has the phone (409 CUSTOMER_PHONE_EXISTS).
	ErrPhoneTaken = errs.New(errs.KindConflict, "CUSTOMER_PHONE_EXISTS", "a customer with this phone already exists")
)

// MaxFieldLen is the most characters (not bytes) first_name, last_name,
// location and preferred_product may hold after trimming.
const MaxFieldLen = 200

// maxPhoneInput bounds the raw phone text handed to the parser. The longest
// E.164 number has 15 digits; 64 leaves room for spaces, punctuation and a
// "+", while a multi-kilobyte "phone" is rejected before any parsing work.
const maxPhoneInput = 64

// FieldError is one problem with one field of an Input.
type FieldError struct {
	Field   string
	Message string
}

// ValidRegion reports whether region is a two-letter region code (any case)
// the phone parser knows, i.e. usable as the default region of NewService.
func ValidRegion(region string) bool {
	return phonenumbers.GetSupportedRegions()[strings.ToUpper(region)]
}

// normalize validates in and returns it as it is to be stored: every field
// trimmed and the phone in E.164, numbers without a +country code being read
// as numbers of region. It reports every invalid field, in body order; a nil
// slice means in is valid.
func (in Input) normalize(region string) (Input, []FieldError) {
	var out Input
	var problems []FieldError
	phone, err := normalizePhone(in.Phone, region)
	if err != nil {
		problems = append(problems, *err)
	}
	out.Phone = phone
	for _, f := range []struct {
		name string
		src  string
		dst  *string
	}{
		{"first_name", in.FirstName, &out.FirstName},
		{"last_name", in.LastName, &out.LastName},
		{"location", in.Location, &out.Location},
		{"preferred_product", in.PreferredProduct, &out.PreferredProduct},
	} {
		v, err := cleanText(f.name, f.src)
		if err != nil {
			problems = append(problems, *err)
		}
		*f.dst = v
	}
	return out, problems
}

// validate is normalize for a single customer: the first problem becomes a
// VALIDATION_ERROR naming its field.
func (in Input) validate(region string) (Input, error) {
	out, problems := in.normalize(region)
	if len(problems) > 0 {
		return Input{}, errs.Validation(problems[0].Field, "%s", problems[0].Message)
	}
	return out, nil
}

// normalizePhone returns raw in E.164. A number written without a +country
// code is read as a number of region (so "0712 345678" in KE is
// "+254712345678"). The number must be valid for its country, not merely of
// plausible length, and may not carry an extension: messages cannot be
// delivered to one.
func normalizePhone(raw, region string) (string, *FieldError) {
	bad := func(format string, args ...any) (string, *FieldError) {
		return "", &FieldError{Field: "phone", Message: fmt.Sprintf(format, args...)}
	}
	raw = strings.TrimSpace(raw)
	switch {
	case raw == "":
		return bad("phone is required")
	case utf8.RuneCountInString(raw) > maxPhoneInput:
		return bad("phone is too long (at most %d characters)", maxPhoneInput)
	}
	n, err := phonenumbers.Parse(raw, region)
	if err != nil || !phonenumbers.IsValidNumber(n) {
		if !strings.HasPrefix(raw, "+") {
			return bad("phone %s is not a valid phone number (numbers without a +country code are read as %s numbers)", errs.Quote(raw), region)
		}
		return bad("phone %s is not a valid phone number", errs.Quote(raw))
	}
	if n.GetExtension() != "" {
		return bad("phone %s has an extension; give the number alone", errs.Quote(raw))
	}
	return phonenumbers.Format(n, phonenumbers.E164), nil
}

// cleanText trims v and checks it by the service's rule for one-line text
// (text.Line): valid UTF-8 (CSV bodies are not checked by any decoder), no
// control characters (NUL cannot be stored in text; the rest would corrupt
// rendered messages), no bidirectional overrides, and at most MaxFieldLen
// characters.
func cleanText(field, v string) (string, *FieldError) {
	v = strings.TrimSpace(v)
	if err := text.Line(field, v, 0, MaxFieldLen); err != nil {
		var e *errs.Error
		errors.As(err, &e) // text's errors are always *errs.Error
		return "", &FieldError{Field: field, Message: e.Message}
	}
	return v, nil
}

// ImportRow is one row of an import with where it came from: Line is its
// 1-based line in a CSV file, or 0 for rows of a JSON array, which are
// reported by their 0-based position in the array instead.
type ImportRow struct {
	Input
	Line int
}

// RowError is one problem with one row of a rejected import. Exactly one of
// Index (JSON: 0-based position in the array) and Line (CSV: 1-based line in
// the file) is set.
type RowError struct {
	Index   *int   `json:"index,omitempty"`
	Line    int    `json:"line,omitempty"`
	Field   string `json:"field"`
	Message string `json:"message"`
}

// ImportResult is the response to a successful import. It stays small
// whatever the import's size: clients that need the new rows list them.
type ImportResult struct {
	Imported int `json:"imported"`
}
