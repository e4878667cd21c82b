// Package template is the message template language: placeholders such as
// {first_name} filled from a customer's fields, "{{" and "}}" for literal
// braces. It owns the list of fields a template may use (Fields, Names);
// the preview, the claim that loads a message's customer, and delivery all
// take that list from here. Rendering is pure.
package template

import (
	"fmt"
	"slices"
	"strings"
	"unicode"
	"unicode/utf8"
)

// Fields are the customer values a template may use, one per placeholder.
// The tags name the placeholder, the API's JSON field and the customers
// table's column, which are the same word.
type Fields struct {
	FirstName        string `json:"first_name" db:"first_name"`
	LastName         string `json:"last_name" db:"last_name"`
	Location         string `json:"location" db:"location"`
	PreferredProduct string `json:"preferred_product" db:"preferred_product"`
	Phone            string `json:"phone" db:"phone"`
}

// values returns f in placeholderNames order.
func (f Fields) values() [len(placeholderNames)]string {
	return [...]string{f.FirstName, f.LastName, f.Location, f.PreferredProduct, f.Phone}
}

// Names returns the placeholder names a template may use, in display order
// (a fresh slice each call, so no caller can change what is accepted).
func Names() []string { return placeholderNames[:len(placeholderNames):len(placeholderNames)] }

// placeholderNames is the list the engine enforces, in the order of
// Fields' fields.
var placeholderNames = [...]string{"first_name", "last_name", "location", "preferred_product", "phone"}

// placeholderIndex returns the position of name in placeholderNames, or -1.
// A switch compiles to a few length and byte comparisons, cheaper than a map
// lookup on the per-message path.
func placeholderIndex(name string) int {
	switch name {
	case "first_name":
		return 0
	case "last_name":
		return 1
	case "location":
		return 2
	case "preferred_product":
		return 3
	case "phone":
		return 4
	}
	return -1
}

// Error describes why a template is invalid. At least one of Unknown
// and Problem is set.
type Error struct {
	Unknown []string // unknown placeholder names, deduplicated, first-seen order
	Problem string   // syntax problem description, e.g. `unclosed "{" at character 4`; empty if only unknown placeholders
}

// Error describes the syntax problem, if any, followed by the unknown
// placeholders and the allowed ones, for example
//
//	unknown placeholders: {name}, {foo}; allowed: {first_name}, {last_name}, {location}, {preferred_product}, {phone}
//
// The text is meant for the person editing the template; code should inspect
// the fields instead.
func (e *Error) Error() string {
	var b strings.Builder
	if e.Problem != "" {
		b.WriteString(e.Problem)
		// Most syntax problems come from wanting a literal brace.
		b.WriteString(` (write "{{" or "}}" for a literal brace)`)
	}
	if len(e.Unknown) > 0 {
		if b.Len() > 0 {
			b.WriteString("; ")
		}
		if len(e.Unknown) == 1 {
			b.WriteString("unknown placeholder: ")
		} else {
			b.WriteString("unknown placeholders: ")
		}
		writeBraced(&b, e.Unknown)
		b.WriteString("; allowed: ")
		writeBraced(&b, placeholderNames[:])
	}
	if b.Len() == 0 {
		return "invalid template"
	}
	return b.String()
}

func writeBraced(b *strings.Builder, names []string) {
	for i, n := range names {
		if i > 0 {
			b.WriteString(", ")
		}
		b.WriteByte('{')
		b.WriteString(n)
		b.WriteByte('}')
	}
}

// Check reports whether tmpl is a valid template. On failure it returns
// *Error. Call it wherever a template enters the system (campaign
// create/update, preview), so that delivery never meets an invalid one.
// Check(tmpl) returns nil exactly when [Render] of tmpl succeeds.
//
// # Template syntax
//
// A template is plain text in which a placeholder, written as a field name
// between single braces, is replaced by the customer's value for that field:
//
//	Hi {first_name}, {preferred_product} is back in stock in {location}!
//
// The rules, applied left to right in one pass:
//
//   - "{{" renders as a literal "{" and "}}" as a literal "}". Pairs are taken
//     greedily, so "{{first_name}}" renders as the text "{first_name}" and
//     "{{{first_name}}}" renders the first name wrapped in braces.
//   - Any other "{" opens a placeholder that ends at the next "}". The text in
//     between is the placeholder name and must be one of [Names],
//     matched exactly (case-sensitive): "{First_Name}" is unknown.
//   - An empty field renders as "". Field
//     values are inserted verbatim and never re-scanned, so a value containing
//     braces renders as is.
//   - Text outside placeholders, including any Unicode, emoji or even invalid
//     UTF-8, is copied unchanged.
//
// A template is invalid, and is rejected with a *[Error], when it has:
//
//   - an unclosed "{": a "{" with no "}" after it ("Hi {first_name");
//   - an unmatched "}": a "}" that neither closes a placeholder nor is part of
//     "}}" ("Hi first_name}", and also the last brace of "{first_name}}");
//   - an empty placeholder "{}";
//   - whitespace of any kind inside a placeholder ("{ first_name }",
//     "{first name}");
//   - a nested "{" inside a placeholder ("{first_{name}}");
//   - unknown placeholder names. These are all collected, deduplicated, in
//     order of first appearance, so the user can fix them in one go.
//
// Only the first syntax problem is reported, because after it the intended
// structure is a guess; Unknown then holds the unknown names seen before it.
// Positions in messages count Unicode code points from 1, as a user counting
// characters in an editor would, not bytes.
func Check(tmpl string) error {
	first := strings.IndexAny(tmpl, "{}")
	if first < 0 {
		return nil
	}
	if err := scan(tmpl, first, nil, nil); err != nil {
		return err
	}
	return nil
}

// Render fills tmpl's placeholders from fields; an empty field renders as "". It returns a *Error
// if tmpl is invalid (it never panics), in which case the string is "". The
// syntax is described at [Check].
//
// Render is pure: the same template and fields always give the same result,
// so the preview shows exactly what the worker sends. It makes at most one
// allocation, for the result, and none when tmpl contains no braces.
func Render(tmpl string, fields Fields) (string, error) {
	first := strings.IndexAny(tmpl, "{}")
	if first < 0 {
		return tmpl, nil
	}
	vals := fields.values()
	size := len(tmpl)
	for _, v := range vals {
		size += len(v)
	}
	// Every placeholder is at least as long as "{phone}", so this covers any
	// template that uses each field at most once, without a second pass.
	var b strings.Builder
	b.Grow(size)
	if err := scan(tmpl, first, &vals, &b); err != nil {
		return "", err
	}
	return b.String(), nil
}

// scan validates tmpl in a single pass and, when b is non-nil, writes the
// rendered text to it. first is the index of the first brace in tmpl, which
// the caller has already found. Check and Render share it so they cannot
// disagree on what is valid.
//
// Braces are ASCII and never occur inside a multi-byte UTF-8 sequence, so
// searching bytes for them and copying the text between by slicing keeps
// every rune intact.
func scan(tmpl string, first int, vals *[len(placeholderNames)]string, b *strings.Builder) *Error {
	var unknown []string
	i, j := 0, first
	for {
		if b != nil {
			b.WriteString(tmpl[i:j])
		}
		if tmpl[j] == '}' {
			if j+1 < len(tmpl) && tmpl[j+1] == '}' {
				if b != nil {
					b.WriteByte('}')
				}
				i = j + 2
			} else {
				return syntaxError(unknown, "unmatched %q at character %d", "}", charPos(tmpl, j))
			}
		} else if j+1 < len(tmpl) && tmpl[j+1] == '{' {
			if b != nil {
				b.WriteByte('{')
			}
			i = j + 2
		} else {
			k := strings.IndexAny(tmpl[j+1:], "{}")
			if k < 0 {
				return syntaxError(unknown, "unclosed %q at character %d", "{", charPos(tmpl, j))
			}
			k += j + 1
			if tmpl[k] == '{' {
				return syntaxError(unknown, "nested %q at character %d inside the placeholder opened at character %d",
					"{", charPos(tmpl, k), charPos(tmpl, j))
			}
			name := tmpl[j+1 : k]
			i = k + 1
			switch idx := placeholderIndex(name); {
			case idx >= 0:
				if b != nil {
					b.WriteString(vals[idx])
				}
			case name == "":
				return syntaxError(unknown, "empty placeholder %q at character %d", "{}", charPos(tmpl, j))
			case strings.IndexFunc(name, unicode.IsSpace) >= 0:
				return syntaxError(unknown, "whitespace in placeholder %q at character %d", tmpl[j:k+1], charPos(tmpl, j))
			default:
				if !slices.Contains(unknown, name) {
					unknown = append(unknown, name)
				}
				// The output is discarded now; keep scanning only to
				// report every unknown name.
				b = nil
			}
		}
		next := strings.IndexAny(tmpl[i:], "{}")
		if next < 0 {
			break
		}
		j = i + next
	}
	if len(unknown) > 0 {
		return &Error{Unknown: unknown}
	}
	if b != nil {
		b.WriteString(tmpl[i:])
	}
	return nil
}

func syntaxError(unknown []string, format string, args ...any) *Error {
	return &Error{Unknown: unknown, Problem: fmt.Sprintf(format, args...)}
}

// charPos converts byte offset i in s to a 1-based character position.
func charPos(s string, i int) int {
	return utf8.RuneCountInString(s[:i]) + 1
}
