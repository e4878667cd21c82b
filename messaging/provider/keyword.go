package provider

import (
	"fmt"
	"unicode"
	"unicode/utf8"
)

// Keyword is what an inbound message asks of its sender's subscription.
type Keyword int

const (
	// NoKeyword: the message is not a keyword; it changes nothing.
	NoKeyword Keyword = iota
	// OptOut: the sender asks to receive nothing more on the channel
	// (STOP, STOPALL, UNSUBSCRIBE, CANCEL, END, QUIT, OPTOUT, REVOKE).
	OptOut
	// OptIn: the sender asks to receive messages again (START, UNSTOP, YES),
	// clearing an opt-out.
	OptIn
)

func (k Keyword) String() string {
	switch k {
	case NoKeyword:
		return "none"
	case OptOut:
		return "opt_out"
	case OptIn:
		return "opt_in"
	}
	return fmt.Sprintf("keyword(%d)", int(k))
}

// longestKeyword is the length of UNSUBSCRIBE; a longer body is no keyword.
const longestKeyword = 11

// ParseKeyword says whether an inbound message body is a keyword, as
// Twilio's own opt-out handling does on long codes (PROVIDERS.md §4): the
// whole body must be one keyword, in any case, so "STOP PLEASE" and "stop!"
// are not. Whitespace anywhere is ignored (API.md: "case and spaces
// ignored"), so " Stop\n" and "STOP ALL" count, and so does "S T O P":
// honouring an opt-out someone meant costs less than messaging them after
// they asked us to stop. Letters are compared as ASCII: "ſtop" (long s),
// which Unicode case folding would make STOP, is not a keyword.
func ParseKeyword(body string) Keyword {
	var buf [longestKeyword]byte
	n := 0
	for _, r := range body {
		if unicode.IsSpace(r) {
			continue
		}
		if r >= utf8.RuneSelf || n == len(buf) {
			return NoKeyword
		}
		c := byte(r)
		if 'a' <= c && c <= 'z' {
			c -= 'a' - 'A'
		}
		buf[n] = c
		n++
	}
	switch string(buf[:n]) {
	case "STOP", "STOPALL", "UNSUBSCRIBE", "CANCEL", "END", "QUIT", "OPTOUT", "REVOKE":
		return OptOut
	case "START", "UNSTOP", "YES":
		return OptIn
	}
	return NoKeyword
}
