package customer

import (
	"context"

	"github.com/campaignd/dispatch/platform/channel"
	"github.com/campaignd/dispatch/platform/postgres"
)

// OptOutPhone records that the customer with phone must never be messaged
// on ch, as when they reply STOP to a message, and reports whether a
// customer has the phone. The phone is read as Create reads it (E.164, or a
// national number of the default region). It is idempotent; a phone that no
// customer has, or that is no valid number, changes nothing and is not an
// error. An invalid ch is a VALIDATION_ERROR naming the channel field.
func (s *Service) OptOutPhone(ctx context.Context, phone string, ch channel.Channel) (bool, error) {
	if _, err := channel.Parse("channel", string(ch)); err != nil {
		return false, err
	}
	p, bad := normalizePhone(phone, s.region)
	if bad != nil {
		return false, nil // stored phones are all valid: nobody has this one
	}
	return s.repo.OptOutPhone(ctx, p, ch)
}

// OptInPhone removes the opt-out of ch of the customer with phone, as when
// they reply START, and reports whether a customer has the phone. Opting in
// to a channel not opted out of changes nothing. Phones and errors are as
// for OptOutPhone.
func (s *Service) OptInPhone(ctx context.Context, phone string, ch channel.Channel) (bool, error) {
	if _, err := channel.Parse("channel", string(ch)); err != nil {
		return false, err
	}
	p, bad := normalizePhone(phone, s.region)
	if bad != nil {
		return false, nil
	}
	return s.repo.OptInPhone(ctx, p, ch)
}

// optOutPhoneSQL finds the customer by phone (customers_phone_key) and
// records the opt-out in one statement; an existing opt-out is kept as it
// is.
var optOutPhoneSQL = `
WITH c AS (
    SELECT id FROM customers WHERE phone = $1
), ins AS (
    INSERT INTO customer_opt_outs (customer_id, channel)
    SELECT id, $2 FROM c
    ON CONFLICT (customer_id, channel) DO NOTHING
    RETURNING customer_id, channel
), ev AS (
    ` + optedOutEventSQL + `
)
SELECT EXISTS (SELECT 1 FROM c)`

// OptOutPhone records that the customer with phone (E.164) must not be
// messaged on ch, which must be valid, and reports whether that customer
// exists. A customer deleted meanwhile is reported as not existing.
func (r *Repo) OptOutPhone(ctx context.Context, phone string, ch channel.Channel) (bool, error) {
	var found bool
	if err := r.db.GetContext(ctx, &found, optOutPhoneSQL, phone, ch); err != nil {
		if isUnknownCustomer(err) {
			return false, nil
		}
		return false, postgres.Classify(err, "opt phone out of "+string(ch))
	}
	return found, nil
}

const optInPhoneSQL = `
WITH c AS (
    SELECT id FROM customers WHERE phone = $1
), del AS (
    DELETE FROM customer_opt_outs o USING c WHERE o.customer_id = c.id AND o.channel = $2
)
SELECT EXISTS (SELECT 1 FROM c)`

// OptInPhone removes the opt-out of ch of the customer with phone (E.164),
// if there is one, and reports whether that customer exists.
func (r *Repo) OptInPhone(ctx context.Context, phone string, ch channel.Channel) (bool, error) {
	var found bool
	if err := r.db.GetContext(ctx, &found, optInPhoneSQL, phone, ch); err != nil {
		return false, postgres.Classify(err, "opt phone in to "+string(ch))
	}
	return found, nil
}
