package messaging

import (
	"errors"
	"fmt"
	"strconv"
	"unicode/utf8"

	"github.com/campaignd/dispatch/messaging/template"
	"github.com/campaignd/dispatch/platform/channel"
)

// The longest message each channel takes by default, in characters. 1,600
// is ten concatenated SMS segments, where carriers commonly stop; 4,096 is
// WhatsApp's limit on a text message's body.
const (
	DefaultSMSMaxChars      = 1600
	DefaultWhatsAppMaxChars = 4096
)

// Limits are the longest rendered message each channel takes, in characters
// (Unicode code points, as the template's own limit counts them). A zero
// field takes the channel's default. The zero value is ready to use.
type Limits struct {
	SMS      int // limits.sms_max_chars
	WhatsApp int // limits.whatsapp_max_chars
}

// MaxChars returns the longest message ch takes; 0, no limit, for a channel
// it does not know.
func (l Limits) MaxChars(ch channel.Channel) int {
	switch ch {
	case channel.SMS:
		return orDefault(l.SMS, DefaultSMSMaxChars)
	case channel.WhatsApp:
		return orDefault(l.WhatsApp, DefaultWhatsAppMaxChars)
	}
	return 0
}

// orDefault returns v, or def when v is not positive.
func orDefault(v, def int) int {
	if v > 0 {
		return v
	}
	return def
}

// TooLongError is a rendered message longer than its channel takes. Retrying
// cannot help: the same template and fields render the same text.
type TooLongError struct {
	Channel channel.Channel
	Chars   int // the rendered message's length
	Max     int // the channel's limit
}

// Error reads, for example, "rendered message is 2,100 characters; sms
// allows 1,600"; the preview shows it as a warning and a failed message
// keeps it as its last error.
func (e *TooLongError) Error() string {
	return fmt.Sprintf("rendered message is %s characters; %s allows %s", thousands(e.Chars), e.Channel, thousands(e.Max))
}

// Render renders tmpl with fields (see [Render]) for a message on ch, and
// checks the result against ch's limit: the one place both the preview and
// delivery render a message. A message longer than ch takes is returned
// rendered together with a *TooLongError, so that the preview can show it
// with a warning; delivery must not send it. Any other error is
// template.Render's *template.Error, with "".
func (l Limits) Render(ch channel.Channel, tmpl string, fields template.Fields) (string, error) {
	body, err := template.Render(tmpl, fields)
	if err != nil {
		return "", err
	}
	// Counting stops early: the byte length bounds the character count, so
	// a short message costs no count at all.
	if limit := l.MaxChars(ch); limit > 0 && len(body) > limit {
		if n := utf8.RuneCountInString(body); n > limit {
			return body, &TooLongError{Channel: ch, Chars: n, Max: limit}
		}
	}
	return body, nil
}

// thousands formats n with commas between groups of three digits.
func thousands(n int) string {
	s := strconv.Itoa(n)
	neg := n < 0
	if neg {
		s = s[1:]
	}
	out := make([]byte, 0, len(s)+len(s)/3+1)
	if neg {
		out = append(out, '-')
	}
	for i := range len(s) {
		if i > 0 && (len(s)-i)%3 == 0 {
			out = append(out, ',')
		}
		out = append(out, s[i])
	}
	return string(out)
}

// Templates adapts template.Check and [Limits.Render] to the small interfaces other
// features declare, so they can depend on an interface rather than this
// package's functions. The zero value is ready to use, with the default
// limits.
type Templates struct {
	Limits Limits // the longest message per channel, as the worker pool enforces it
}

// Check calls [template.Check].
func (Templates) Check(tmpl string) error { return template.Check(tmpl) }

// Render renders tmpl for a message on channel exactly as delivery does
// ([Limits.Render]). A message delivery would refuse as too long is returned
// with the reason in warnings, such as "rendered message is 2,100
// characters; sms allows 1,600". err is template.Render's *template.Error.
func (t Templates) Render(ch, tmpl string, fields template.Fields) (msg string, warnings []string, err error) {
	msg, err = t.Limits.Render(channel.Channel(ch), tmpl, fields)
	var long *TooLongError
	if errors.As(err, &long) {
		return msg, []string{long.Error()}, nil
	}
	return msg, nil, err
}
