package customer

import (
	"context"
	"database/sql"
	"encoding/json"
	"errors"
	"strconv"

	"github.com/campaignd/dispatch/platform/errs"
	"github.com/campaignd/dispatch/platform/postgres"
)

// UpdateInput is the body of PATCH /customers/{id}: any of Input's fields.
// A field left out keeps its value. A field given is checked by the rule
// Create applies to it, and null counts as "" as it does for Create: it
// clears a text field, and is "phone is required" for the phone.
type UpdateInput struct {
	Phone            Optional `json:"phone"`
	FirstName        Optional `json:"first_name"`
	LastName         Optional `json:"last_name"`
	Location         Optional `json:"location"`
	PreferredProduct Optional `json:"preferred_product"`
}

// Optional is a string field of a PATCH body that may be left out: Set
// reports whether the body named it.
type Optional struct {
	Set   bool
	Value string
}

// UnmarshalJSON is called for every key the body has, null included, which
// is how a key given as null is told from one left out.
func (o *Optional) UnmarshalJSON(b []byte) error {
	o.Set = true
	if string(b) == "null" {
		o.Value = ""
		return nil
	}
	return json.Unmarshal(b, &o.Value)
}

// validate returns in as it is to be stored, each field given trimmed and
// the phone in E.164, or a VALIDATION_ERROR naming the first invalid field
// in Create's order (the rules are Create's: normalizePhone and cleanText).
// A body that gives no field is a VALIDATION_ERROR too.
func (in UpdateInput) validate(region string) (UpdateInput, error) {
	out := in
	if in.Phone.Set {
		p, fe := normalizePhone(in.Phone.Value, region)
		if fe != nil {
			return UpdateInput{}, errs.Validation(fe.Field, "%s", fe.Message)
		}
		out.Phone.Value = p
	}
	given := in.Phone.Set
	for _, f := range []struct {
		name string
		v    *Optional
	}{
		{"first_name", &out.FirstName},
		{"last_name", &out.LastName},
		{"location", &out.Location},
		{"preferred_product", &out.PreferredProduct},
	} {
		if !f.v.Set {
			continue
		}
		given = true
		v, fe := cleanText(f.name, f.v.Value)
		if fe != nil {
			return UpdateInput{}, errs.Validation(fe.Field, "%s", fe.Message)
		}
		f.v.Value = v
	}
	if !given {
		return UpdateInput{}, errs.Validation("body",
			"nothing to update: give at least one of phone, first_name, last_name, location, preferred_product")
	}
	return out, nil
}

// Update changes the fields in gives of customer id and returns the
// customer as it now is, opt-outs included. Invalid input (or none) is a
// VALIDATION_ERROR naming the field, checked before the customer is looked
// up; an unknown customer is an error matching ErrNotFound; a phone another
// customer has is ErrPhoneTaken. Messages already created for the customer
// are delivered with the values at the time of delivery.
func (s *Service) Update(ctx context.Context, id int64, in UpdateInput) (Customer, error) {
	clean, err := in.validate(s.region)
	if err != nil {
		return Customer{}, err
	}
	return s.repo.Update(ctx, id, clean)
}

// updateSQL changes the fields given (a NULL parameter keeps the column)
// and reads the customer back with its opt-outs, in one statement.
const updateSQL = `
WITH u AS (
    UPDATE customers
    SET phone             = coalesce($2, phone),
        first_name        = coalesce($3, first_name),
        last_name         = coalesce($4, last_name),
        location          = coalesce($5, location),
        preferred_product = coalesce($6, preferred_product),
        updated_at        = now()
    WHERE id = $1
    RETURNING ` + columns + `
)
SELECT ` + columns + `,
       ARRAY(SELECT o.channel FROM customer_opt_outs o WHERE o.customer_id = u.id ORDER BY o.channel)
           AS opted_out_channels
FROM u`

// Update stores the fields in gives, which must already be normalised, on
// customer id and returns the customer as it now is. An unknown id is
// ErrNotFound; a phone that belongs to another customer is ErrPhoneTaken.
func (r *Repo) Update(ctx context.Context, id int64, in UpdateInput) (Customer, error) {
	arg := func(o Optional) any {
		if !o.Set {
			return nil
		}
		return o.Value
	}
	var row customerRow
	err := r.db.GetContext(ctx, &row, updateSQL, id, arg(in.Phone), arg(in.FirstName), arg(in.LastName),
		arg(in.Location), arg(in.PreferredProduct))
	if err != nil {
		switch {
		case errors.Is(err, sql.ErrNoRows):
			return Customer{}, ErrNotFound.Withf("customer %d not found", id)
		case isPhoneTaken(err):
			return Customer{}, r.phoneTaken(ctx, in.Phone.Value)
		}
		return Customer{}, postgres.Classify(err, "update customer "+strconv.FormatInt(id, 10))
	}
	return row.customer(), nil
}
