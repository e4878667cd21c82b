package campaign

import (
	"database/sql/driver"
	"encoding/json"
	"fmt"
	"strings"

	"github.com/campaignd/dispatch/platform/errs"
	"github.com/campaignd/dispatch/platform/text"
)

// Audience chooses a send's recipients: either explicit customer ids, or
// every customer (All), or the customers matching a filter (Location and
// PreferredProduct combine with AND; exact, case-insensitive matches).
// Customers opted out of the campaign's channel are always left out.
type Audience struct {
	CustomerIDs      []int64 `json:"customer_ids,omitempty"`
	All              bool    `json:"all,omitempty"`
	Location         string  `json:"location,omitempty"`
	PreferredProduct string  `json:"preferred_product,omitempty"`
}

// MaxFilterLen is the most characters (not bytes) an audience's location or
// preferred_product may hold: the customer feature's limit on the fields
// they match, customer.MaxFieldLen (the app's tests check that they agree).
const MaxFilterLen = 200

// IsFilter reports whether a selects customers by filter (or all of them)
// rather than by id.
func (a Audience) IsFilter() bool { return len(a.CustomerIDs) == 0 }

// validate checks a and returns it with ids de-duplicated (first occurrence
// kept) and the number of duplicates removed. field names a in errors.
func (a Audience) validate(field string) (Audience, int, error) {
	a.Location = strings.TrimSpace(a.Location)
	a.PreferredProduct = strings.TrimSpace(a.PreferredProduct)
	hasFilter := a.Location != "" || a.PreferredProduct != ""
	switch {
	case a.CustomerIDs != nil && (a.All || hasFilter):
		return a, 0, errs.Validation(field, "%s takes either customer_ids or a filter (all, location, preferred_product), not both", field)
	case a.All && hasFilter:
		return a, 0, errs.Validation(field, `%s: "all": true cannot be combined with location or preferred_product`, field)
	case a.CustomerIDs == nil && !a.All && !hasFilter:
		return a, 0, errs.Validation(field, `%s must name customer_ids, "all": true, or a location and/or preferred_product filter`, field)
	}
	// The values are matched against customers' fields, and stored in jsonb,
	// so they follow the customer fields' rule (which also keeps out NUL,
	// which neither text nor jsonb can hold).
	if err := text.Line(field+".location", a.Location, 0, MaxFilterLen); err != nil {
		return a, 0, err
	}
	if err := text.Line(field+".preferred_product", a.PreferredProduct, 0, MaxFilterLen); err != nil {
		return a, 0, err
	}
	if a.CustomerIDs == nil {
		return a, 0, nil
	}
	ids, dups, err := validateSendIDs(a.CustomerIDs)
	a.CustomerIDs = ids
	return a, dups, err
}

// Value stores an audience as JSON (the campaigns.audience jsonb column).
// It is text, not []byte: with lib/pq's binary_parameters (the PgBouncer
// mode) a []byte goes out in binary format, which jsonb does not read.
func (a Audience) Value() (driver.Value, error) {
	b, err := json.Marshal(a)
	return string(b), err
}

// Scan reads an audience stored by Value.
func (a *Audience) Scan(src any) error {
	var b []byte
	switch v := src.(type) {
	case []byte:
		b = v
	case string:
		b = []byte(v)
	default:
		return fmt.Errorf("scan audience: unexpected %T", src)
	}
	return json.Unmarshal(b, a)
}

// resolveAudience picks the send's audience: the request's customer_ids or
// audience (not both), else the one stored with the campaign.
func resolveAudience(in SendInput, stored *Audience) (Audience, int, error) {
	switch {
	case in.CustomerIDs != nil && in.Audience != nil:
		return Audience{}, 0, errs.Validation("audience", "give customer_ids or audience, not both")
	case in.CustomerIDs != nil:
		return Audience{CustomerIDs: in.CustomerIDs}.validate("customer_ids")
	case in.Audience != nil:
		if in.Audience.CustomerIDs != nil && len(in.Audience.CustomerIDs) == 0 {
			return Audience{}, 0, errs.Validation("audience", "audience.customer_ids must not be empty")
		}
		return in.Audience.validate("audience")
	case stored != nil:
		return stored.validate("audience")
	}
	return Audience{}, 0, errs.Validation("customer_ids",
		`customer_ids must be a non-empty array of customer ids, or give an audience such as {"all": true}`)
}
