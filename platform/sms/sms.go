// Package sms says how a text travels as SMS: in which encoding, how many
// units long, and in how many parts a provider splits it. It follows 3GPP
// TS 23.038 §6.2.1 (the GSM 7-bit default alphabet and its extension table)
// and TS 23.040 (concatenated messages with a 6-octet user data header), as
// summarised in PROVIDERS.md §6. It is pure: no I/O, no configuration.
package sms

import "unicode/utf8"

// Encoding is the data coding an SMS is sent with.
type Encoding string

const (
	// GSM7 is the GSM 03.38 default alphabet, 7 bits a character; characters
	// from the extension table take an escape and so two septets.
	GSM7 Encoding = "GSM-7"
	// UCS2 is UTF-16, used as soon as one character is outside GSM-7.
	// Characters outside the Basic Multilingual Plane (emoji) take a
	// surrogate pair, two units.
	UCS2 Encoding = "UCS-2"
)

// Limits of one message, in the encoding's units. A message longer than the
// single limit is split into parts of at most the part limit: the user data
// header (6 octets: 05 00 03 ref total seq) takes the difference.
const (
	gsmSingle = 160
	gsmPart   = 153
	ucsSingle = 70
	ucsPart   = 67
)

// Info is the length of a text as SMS. It is what the API shows as the
// "sms" object of a campaign preview.
type Info struct {
	Encoding Encoding `json:"encoding"`
	// Characters counts the encoding's units: septets for GSM-7 (an
	// extension character counts 2), UTF-16 code units for UCS-2 (an emoji
	// counts 2).
	Characters int `json:"characters"`
	// Segments is the number of parts a provider sends, so the number
	// billed; 0 for empty text.
	Segments int `json:"segments"`
	// NonGSMCharacters lists the distinct characters that forced UCS-2, in
	// order of first appearance. It is empty, never nil, for GSM-7 text, so
	// that JSON shows [].
	NonGSMCharacters []string `json:"non_gsm_characters"`
}

// Analyze returns text's encoding, length and number of parts. A text is
// GSM-7 if every character is in the default alphabet or its extension
// table, otherwise the whole text is UCS-2. A text within the single-message
// limit (160 septets, 70 UTF-16 units) is one segment; a longer one is split
// the way a provider splits it, into parts of at most 153 septets or 67
// units that never separate an escape from its character nor the halves of
// a surrogate pair, so it may take more than ⌈n/153⌉ or ⌈n/67⌉ parts.
//
// Empty text has 0 segments: there is nothing to send. Each byte of invalid
// UTF-8 counts as U+FFFD, which is not GSM-7 (the service stores only valid
// UTF-8, see platform/text).
//
// For text that is GSM-7 Analyze allocates nothing.
func Analyze(text string) Info {
	septets, escapes := 0, 0
	for i := 0; i < len(text); {
		var s uint8
		if b := text[i]; b < utf8.RuneSelf {
			s = septetTable[b]
			i++
		} else {
			r, size := utf8.DecodeRuneInString(text[i:])
			s = uint8(septetsOf(r))
			i += size
		}
		if s == 0 {
			return analyzeUCS2(text)
		}
		septets += int(s)
		escapes += int(s) - 1
	}
	segments := 0
	switch {
	case septets == 0:
	case septets <= gsmSingle:
		segments = 1
	case escapes == 0:
		segments = (septets + gsmPart - 1) / gsmPart
	default:
		segments = splitGSM(text)
	}
	return Info{Encoding: GSM7, Characters: septets, Segments: segments, NonGSMCharacters: []string{}}
}

// splitGSM counts the parts of GSM-7 text longer than one message: each
// part is filled with whole characters up to gsmPart septets, so an escape
// pair that does not fit starts the next part.
func splitGSM(text string) int {
	parts, cur := 1, 0
	for _, r := range text {
		s := septetsOf(r)
		if cur+s > gsmPart {
			parts++
			cur = 0
		}
		cur += s
	}
	return parts
}

// analyzeUCS2 is Analyze for text with at least one character outside
// GSM-7. A part is filled with whole characters up to ucsPart units, so a
// surrogate pair that does not fit starts the next part.
func analyzeUCS2(text string) Info {
	var (
		units, parts, cur int
		nonGSM            []string
		seen              map[string]struct{} // nonGSM as a set, once it is long
	)
	for i := 0; i < len(text); {
		r, size := utf8.DecodeRuneInString(text[i:])
		c := text[i : i+size] // r as written, so listing it allocates nothing
		i += size
		u := 1
		if r > 0xFFFF {
			u = 2
		}
		units += u
		if cur+u > ucsPart {
			parts++
			cur = 0
		}
		cur += u
		if septetsOf(r) == 0 {
			if r == utf8.RuneError && size == 1 {
				c = string(utf8.RuneError) // invalid UTF-8: list what it counts as
			}
			nonGSM, seen = addDistinct(nonGSM, seen, c)
		}
	}
	if units > ucsSingle {
		parts++ // the last, partly filled (cur > 0: text is not empty)
	} else {
		parts = 1
	}
	return Info{Encoding: UCS2, Characters: units, Segments: parts, NonGSMCharacters: nonGSM}
}

// distinctScan is how many distinct characters addDistinct compares one by
// one before it keeps a set: texts usually have a few, a text in a non-Latin
// script can have hundreds.
const distinctScan = 16

// addDistinct appends c to list unless it is there already.
func addDistinct(list []string, seen map[string]struct{}, c string) ([]string, map[string]struct{}) {
	if seen != nil {
		if _, ok := seen[c]; ok {
			return list, seen
		}
		seen[c] = struct{}{}
		return append(list, c), seen
	}
	for _, l := range list {
		if l == c {
			return list, nil
		}
	}
	list = append(list, c)
	if len(list) > distinctScan {
		seen = make(map[string]struct{}, 2*len(list))
		for _, l := range list {
			seen[l] = struct{}{}
		}
	}
	return list, seen
}

// basic is the GSM 03.38 default alphabet in code order, 0x00 to 0x7F, as
// in PROVIDERS.md §6. 0x1B is the escape to the extension table, not a
// character: a text holding U+001B is not GSM-7.
var basic = [128]rune{
	'@', '£', '$', '¥', 'è', 'é', 'ù', 'ì', 'ò', 'Ç', '\n', 'Ø', 'ø', '\r', 'Å', 'å',
	'Δ', '_', 'Φ', 'Γ', 'Λ', 'Ω', 'Π', 'Ψ', 'Σ', 'Θ', 'Ξ', escape, 'Æ', 'æ', 'ß', 'É',
	' ', '!', '"', '#', '¤', '%', '&', '\'', '(', ')', '*', '+', ',', '-', '.', '/',
	'0', '1', '2', '3', '4', '5', '6', '7', '8', '9', ':', ';', '<', '=', '>', '?',
	'¡', 'A', 'B', 'C', 'D', 'E', 'F', 'G', 'H', 'I', 'J', 'K', 'L', 'M', 'N', 'O',
	'P', 'Q', 'R', 'S', 'T', 'U', 'V', 'W', 'X', 'Y', 'Z', 'Ä', 'Ö', 'Ñ', 'Ü', '§',
	'¿', 'a', 'b', 'c', 'd', 'e', 'f', 'g', 'h', 'i', 'j', 'k', 'l', 'm', 'n', 'o',
	'p', 'q', 'r', 's', 't', 'u', 'v', 'w', 'x', 'y', 'z', 'ä', 'ö', 'ñ', 'ü', 'à',
}

const escape = 0x1B

// extension is the GSM 03.38 extension table: each character is sent as
// the escape and its code (form feed 1B0A, ^ 1B14, { 1B28, } 1B29, \ 1B2F,
// [ 1B3C, ~ 1B3D, ] 1B3E, | 1B40, € 1B65), two septets.
var extension = [...]rune{'\f', '^', '{', '}', '\\', '[', '~', ']', '|', '€'}

// septetTable gives the length in septets of each character below
// tableSize, 0 for one outside GSM-7. Every GSM-7 character but € is below
// U+0400 (Latin-1 and Greek capitals), so a lookup is an array index.
var septetTable = buildSeptetTable()

const tableSize = 0x400

func buildSeptetTable() (t [tableSize]uint8) {
	for _, r := range basic {
		if r != escape {
			t[r] = 1
		}
	}
	for _, r := range extension {
		if r != '€' {
			t[r] = 2
		}
	}
	return t
}

// septetsOf is r's length in GSM-7, 0 if r is not in GSM-7.
func septetsOf(r rune) int {
	if r < tableSize {
		return int(septetTable[r])
	}
	if r == '€' {
		return 2
	}
	return 0
}
