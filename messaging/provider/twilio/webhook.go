package twilio

import (
	"errors"
	"net/url"
	"strings"

	"github.com/campaignd/dispatch/messaging/provider"
	"github.com/campaignd/dispatch/platform/channel"
)

// ParseStatus reads a status callback's form (verify its signature first).
// Twilio posts every transition and may post them out of order, so only
// delivered/read (Delivered) and undelivered/failed (Undelivered, with
// ErrorCode as Error) are final here; everything else, including canceled,
// comes back with Status "" and should change nothing. OptOut is set when
// ErrorCode says the recipient sent STOP to this sender. The legacy
// SmsSid/SmsStatus copies stand in when the newer names are missing; a
// form with neither sid nor status is an error.
func ParseStatus(form url.Values) (provider.Receipt, error) {
	sid := first(form, "MessageSid", "SmsSid")
	status := first(form, "MessageStatus", "SmsStatus")
	switch {
	case sid == "" && status == "":
		return provider.Receipt{}, errors.New("twilio status callback: no MessageSid or MessageStatus")
	case sid == "":
		return provider.Receipt{}, errors.New("twilio status callback: no MessageSid")
	case status == "":
		return provider.Receipt{}, errors.New("twilio status callback: no MessageStatus")
	}
	code := strings.TrimSpace(form.Get("ErrorCode"))
	r := provider.Receipt{Provider: Name, MessageID: sid, ProviderStatus: status, OptOut: code == optOutCode}
	switch strings.ToLower(status) {
	case "delivered", "read":
		r.Status = provider.Delivered
	case "undelivered", "failed":
		r.Status = provider.Undelivered
		r.Error = code
	}
	return r, nil
}

// ParseInbound reads an inbound message's form (verify its signature
// first). A "whatsapp:" prefix on From means it came over WhatsApp; the
// prefix is removed so From is the bare E.164 number opt-outs are keyed by.
// A form without From is an error; an empty Body (a media-only message) is
// not.
func ParseInbound(form url.Values) (provider.Inbound, error) {
	from := strings.TrimSpace(form.Get("From"))
	in := provider.Inbound{Provider: Name, Channel: channel.SMS, Body: form.Get("Body")}
	if rest, ok := strings.CutPrefix(from, whatsappPrefix); ok {
		in.Channel = channel.WhatsApp
		from = strings.TrimSpace(rest)
	}
	if from == "" {
		return provider.Inbound{}, errors.New("twilio inbound: no From")
	}
	in.From = from
	return in, nil
}

// first returns the first non-empty value among keys.
func first(form url.Values, keys ...string) string {
	for _, k := range keys {
		if v := strings.TrimSpace(form.Get(k)); v != "" {
			return v
		}
	}
	return ""
}
