package provider

import (
	"context"
	"fmt"

	"github.com/campaignd/dispatch/platform/channel"
)

// Named is a Sender that names its provider ("twilio").
type Named interface {
	Sender
	Name() string
}

// ByChannel sends each message through the provider configured for its
// channel (PROVIDERS_SMS, PROVIDERS_WHATSAPP).
type ByChannel map[channel.Channel]Named

// Send implements Sender. A channel with no provider is a permanent
// failure: configuration, not the message, would have to change.
func (b ByChannel) Send(ctx context.Context, m Message) (Accepted, error) {
	s, ok := b[m.Channel]
	if !ok {
		return Accepted{}, &Error{Provider: "none", Class: Permanent, Code: "no_provider",
			Message: fmt.Sprintf("no provider is configured for channel %q", m.Channel)}
	}
	return s.Send(ctx, m)
}

// ProviderFor names the provider that carries ch ("" if none).
func (b ByChannel) ProviderFor(ch channel.Channel) string {
	if s, ok := b[ch]; ok {
		return s.Name()
	}
	return ""
}

// Names lists the distinct providers in use.
func (b ByChannel) Names() []string {
	var out []string
	seen := map[string]bool{}
	for _, ch := range channel.All {
		if s, ok := b[ch]; ok && !seen[s.Name()] {
			seen[s.Name()] = true
			out = append(out, s.Name())
		}
	}
	return out
}
