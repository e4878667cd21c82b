// Package channel names the networks a message can go out on. It is the one
// owner of that vocabulary: campaigns choose a channel, customers opt out of
// one, and messaging delivers on one, each importing this package.
package channel

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
