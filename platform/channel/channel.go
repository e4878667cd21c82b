// Package channel names the networks a message can go out on. It is the one
// owner of that vocabulary: campaigns choose a channel, customers opt out of
// one, and messaging delivers on one, each importing this package.
package channel

import "github.com/campaignd/dispatch/platform/errs"

// Channel is a delivery network.
type Channel string

const (
	SMS      Channel = "sms"
	WhatsApp Channel = "whatsapp"
)

// All lists every channel, in the order the API documents them.
var All = []Channel{SMS, WhatsApp}

// Valid reports whether c is a known channel.
func (c Channel) Valid() bool { return c == SMS || c == WhatsApp }

// Values returns the channels as strings, for validation messages and
// enums.
func Values() []string {
	out := make([]string, len(All))
	for i, c := range All {
		out[i] = string(c)
	}
	return out
}

// Parse reads a channel given in field (a body's channel, a query
// parameter): exactly one of the known values, case-sensitive and
// untrimmed; anything else is a VALIDATION_ERROR naming field.
func Parse(field, s string) (Channel, error) {
	c := Channel(s)
	switch {
	case c.Valid():
		return c, nil
	case s == "":
		return "", errs.Validation(field, "%s is required: %q or %q", field, SMS, WhatsApp)
	}
	return "", errs.Validation(field, "%s must be %q or %q, got %s", field, SMS, WhatsApp, errs.Quote(s))
}
