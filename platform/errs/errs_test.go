package errs

import (
	"strings"
	"testing"
	"unicode/utf8"
)

func TestQuoteAndClip(t *testing.T) {
	t.Parallel()
	tests := []struct {
		in, quote, clip string
	}{
		{"", `""`, ""},
		{"abc", `"abc"`, "abc"},
		{strings.Repeat("a", MaxEcho), `"` + strings.Repeat("a", MaxEcho) + `"`, strings.Repeat("a", MaxEcho)},
		{strings.Repeat("a", MaxEcho+1), `"` + strings.Repeat("a", MaxEcho) + `…"`, strings.Repeat("a", MaxEcho) + "…"},
		{strings.Repeat("é", 1000), `"` + strings.Repeat("é", MaxEcho) + `…"`, strings.Repeat("é", MaxEcho) + "…"},
		{"a\x00b\xff", `"a\x00b\xff"`, "a\x00b\xff"},
	}
	for _, tt := range tests {
		if got := Quote(tt.in); got != tt.quote {
			t.Errorf("Quote(%.20q) = %q, want %q", tt.in, got, tt.quote)
		}
		if got := Clip(tt.in); got != tt.clip {
			t.Errorf("Clip(%.20q) = %q, want %q", tt.in, got, tt.clip)
		}
	}
	// A cut never splits a character.
	if s := Clip(strings.Repeat("🎉", 100)); !utf8.ValidString(s) {
		t.Errorf("Clip split a character: %q", s)
	}
}
