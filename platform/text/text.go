// Package text is the one rule for text a client sends that the service
// stores, matches or shows: body fields, audience values, query filters,
// names. PostgreSQL cannot take invalid UTF-8 or NUL in text (or NUL in
// jsonb), and a length limit means characters, as char_length counts them,
// not bytes. Features call Line or Multiline instead of checking text
// themselves, so that a value valid in one place is valid in every other
// (a location that can be stored can be filtered and targeted).
package text

import (
	"unicode"
	"unicode/utf8"

	"github.com/campaignd/dispatch/platform/errs"
)

// Line checks a one-line value (a name, a customer field, a filter): valid
// UTF-8, no control characters (C0, DEL, C1: NUL, tab, newline, escape...),
// no bidirectional embedding, override or isolate characters (U+202A–U+202E,
// U+2066–U+2069, which can make a name display as something else), and from
// min to max characters. It does not trim: callers decide whether
// surrounding space is part of the value, and check what they store. The
// error is a VALIDATION_ERROR naming field; nil means the value is valid.
func Line(field, value string, min, max int) error {
	return check(field, value, min, max, true)
}

// Multiline checks free text (a message template): valid UTF-8, no NUL, and
// from min to max characters. Line breaks, tabs and bidirectional controls
// are allowed: messages are written with them (isolates are how right-to-left
// text embeds a placeholder).
func Multiline(field, value string, min, max int) error {
	return check(field, value, min, max, false)
}

func check(field, s string, min, max int, line bool) error {
	n := 0
	for i, r := range s {
		switch {
		case r == utf8.RuneError && isInvalid(s[i:]):
			return errs.Validation(field, "%s is not valid UTF-8 text", field)
		case r == 0:
			return errs.Validation(field, "%s must not contain the NUL character", field)
		case line && unicode.IsControl(r):
			return errs.Validation(field, "%s must not contain control characters such as tabs or line breaks (found U+%04X)", field, r)
		case line && isBidiControl(r):
			return errs.Validation(field, "%s must not contain bidirectional override characters (found U+%04X)", field, r)
		}
		n++
	}
	switch {
	case n == 0 && min > 0:
		return errs.Validation(field, "%s is required and must not be blank", field)
	case n < min:
		return errs.Validation(field, "%s must be at least %d characters, got %d", field, min, n)
	case n > max:
		return errs.Validation(field, "%s must be at most %d characters, got %d", field, max, n)
	}
	return nil
}

// isInvalid reports whether s starts with a byte that is not UTF-8 (rather
// than with an encoded U+FFFD, which is valid).
func isInvalid(s string) bool {
	_, size := utf8.DecodeRuneInString(s)
	return size == 1
}

// isBidiControl reports the explicit embedding, override and isolate
// characters. The marks LRM, RLM and ALM stay allowed: they only nudge
// neighbouring punctuation and are common in right-to-left names.
func isBidiControl(r rune) bool {
	return (r >= '\u202A' && r <= '\u202E') || (r >= '\u2066' && r <= '\u2069')
}
