package sms

import (
	"encoding/json"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"
)

func gsm(chars, segments int) Info {
	return Info{Encoding: GSM7, Characters: chars, Segments: segments, NonGSMCharacters: []string{}}
}

func ucs(units, segments int, nonGSM ...string) Info {
	return Info{Encoding: UCS2, Characters: units, Segments: segments, NonGSMCharacters: nonGSM}
}

func TestAnalyze(t *testing.T) {
	t.Parallel()
	a := func(n int) string { return strings.Repeat("a", n) }
	tests := []struct {
		name string
		text string
		want Info
	}{
		{"empty", "", gsm(0, 0)},
		{"one character", "a", gsm(1, 1)},
		{"preview example", "Hello Amina, 20% off!\n", gsm(22, 1)},

		// PROVIDERS.md §6, worked examples.
		{"161 a: 153+8", a(161), gsm(161, 2)},
		{"80 euro: 160 septets, one message", strings.Repeat("€", 80), gsm(160, 1)},
		{"153 euro: 76+76+1, not 306/153", strings.Repeat("€", 153), gsm(306, 3)},
		{"159 a and ç: UCS-2 67+67+26", a(159) + "ç", ucs(160, 3, "ç")},
		{"67 emoji: 33+33+1", strings.Repeat("😀", 67), ucs(134, 3, "😀")},

		// GSM-7 boundaries.
		{"160 septets", a(160), gsm(160, 1)},
		{"159 septets and an extension character", a(159) + "€", gsm(161, 2)},
		{"306 septets: 2 parts", a(306), gsm(306, 2)},
		{"307 septets: 3 parts", a(307), gsm(307, 3)},
		{"escape pair not split at 153", a(152) + "{" + a(100), gsm(254, 2)},
		{"escape pair pushed to the next part", a(152) + "{" + a(152), gsm(306, 3)},
		{"escape pair fits at the end of a part", a(151) + "{" + a(153), gsm(306, 2)},

		// UCS-2 boundaries.
		{"70 units", "ç" + a(69), ucs(70, 1, "ç")},
		{"71 units", "ç" + a(70), ucs(71, 2, "ç")},
		{"134 units: 2 parts", "ç" + a(133), ucs(134, 2, "ç")},
		{"135 units: 3 parts", "ç" + a(134), ucs(135, 3, "ç")},
		{"35 emoji: 70 units, one message", strings.Repeat("😀", 35), ucs(70, 1, "😀")},
		{"surrogate pair not split at 67", "ç" + a(65) + "😀" + a(10), ucs(78, 2, "ç", "😀")},
		{"surrogate pair pushed to the next part", "ç" + a(65) + "😀" + a(66), ucs(134, 3, "ç", "😀")},

		// Pitfalls of the table.
		{"Ç is 0x09", "Ç", gsm(1, 1)},
		{"ç is absent", "ç", ucs(1, 1, "ç")},
		{"¤ is 0x24", "¤", gsm(1, 1)},
		{"$ is 0x02", "$", gsm(1, 1)},
		{"no backtick", "`", ucs(1, 1, "`")},
		{"á is absent", "á", ucs(1, 1, "á")},
		{"é is present", "é", gsm(1, 1)},
		{"É ñ Ñ ü Ü present", "ÉñÑüÜ", gsm(5, 1)},
		{"í ó ú â ê ô È absent", "íóúâêôÈ", ucs(7, 1, "í", "ó", "ú", "â", "ê", "ô", "È")},
		{"Greek capitals present", "ΔΦΓΛΩΠΨΣΘΞ", gsm(10, 1)},
		{"Greek lower case absent", "α", ucs(1, 1, "α")},
		{"ohm sign is not omega", "\u2126", ucs(1, 1, "\u2126")},
		{"LF and CR are basic", "a\nb\r\n", gsm(5, 1)},
		{"form feed is an extension", "\f", gsm(2, 1)},
		{"tab is absent", "a\tb", ucs(3, 1, "\t")},
		{"escape is not a character", "\x1b", ucs(1, 1, "\x1b")},
		{"NUL is not @", "\x00", ucs(1, 1, "\x00")},

		// UCS-2 text.
		{"smart quote", "It’s here", ucs(9, 1, "’")},
		{"listed once, in order of first appearance", "😀 ’ 😀 ç ’", ucs(11, 1, "😀", "’", "ç")},
		{"emoji is 2 units", "Hi 😀", ucs(5, 1, "😀")},
		{"invalid UTF-8 counts as U+FFFD", "a\xffb", ucs(3, 1, "\uFFFD")},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			if diff := cmp.Diff(tt.want, Analyze(tt.text)); diff != "" {
				t.Errorf("Analyze(%q) (-want +got):\n%s", tt.text, diff)
			}
		})
	}
}

func TestAnalyzeExtension(t *testing.T) {
	t.Parallel()
	for _, r := range "\f^{}\\[~]|€" {
		if diff := cmp.Diff(gsm(3, 1), Analyze("a"+string(r))); diff != "" {
			t.Errorf("Analyze(%q) (-want +got):\n%s", "a"+string(r), diff)
		}
	}
}

// TestAnalyzeManyDistinct crosses the point where the distinct non-GSM
// characters are kept in a set.
func TestAnalyzeManyDistinct(t *testing.T) {
	t.Parallel()
	var b strings.Builder
	var want []string
	for r := rune(0x4E00); r < 0x4E00+3*distinctScan; r++ {
		want = append(want, string(r))
	}
	for range 3 {
		for _, c := range want {
			b.WriteString(c)
		}
	}
	got := Analyze(b.String())
	if diff := cmp.Diff(ucs(9*distinctScan, 3, want...), got); diff != "" {
		t.Errorf("(-want +got):\n%s", diff)
	}
}

func TestBasicTable(t *testing.T) {
	t.Parallel()
	// Spot checks that the table is typed with the right code points, not
	// look-alikes.
	for code, want := range map[int]rune{
		0x00: '@', 0x01: 0x00A3, 0x02: '$', 0x03: 0x00A5, 0x09: 0x00C7, 0x0A: '\n', 0x0D: '\r',
		0x10: 0x0394, 0x11: '_', 0x12: 0x03A6, 0x13: 0x0393, 0x14: 0x039B, 0x15: 0x03A9,
		0x16: 0x03A0, 0x17: 0x03A8, 0x18: 0x03A3, 0x19: 0x0398, 0x1A: 0x039E, 0x1B: escape,
		0x1F: 0x00C9, 0x24: 0x00A4, 0x40: 0x00A1, 0x5F: 0x00A7, 0x60: 0x00BF, 0x7F: 0x00E0,
	} {
		if basic[code] != want {
			t.Errorf("basic[%#02x] = %U, want %U", code, basic[code], want)
		}
	}
	seen := map[rune]bool{}
	for _, r := range basic {
		if seen[r] {
			t.Errorf("%q twice in the basic table", r)
		}
		seen[r] = true
	}
	for _, r := range extension {
		if seen[r] {
			t.Errorf("%q in both tables", r)
		}
	}
	// Every printable ASCII character but the backtick is GSM-7.
	for r := rune(' '); r < 0x7F; r++ {
		if got, want := septetsOf(r) > 0, r != '`'; got != want {
			t.Errorf("%q in GSM-7: %v, want %v", r, got, want)
		}
	}
}

func TestInfoJSON(t *testing.T) {
	t.Parallel()
	b, err := json.Marshal(Analyze("Hello"))
	if err != nil {
		t.Fatal(err)
	}
	want := `{"encoding":"GSM-7","characters":5,"segments":1,"non_gsm_characters":[]}`
	if string(b) != want {
		t.Errorf("got %s, want %s", b, want)
	}
}

func TestAnalyzeGSMAllocatesNothing(t *testing.T) {
	text := strings.Repeat("Hello Amina, your order #1234 is ready: {link} €5 ", 10)
	if n := testing.AllocsPerRun(100, func() { Analyze(text) }); n != 0 {
		t.Errorf("Analyze of GSM-7 text: %v allocations, want 0", n)
	}
}

func BenchmarkAnalyze(b *testing.B) {
	for _, bb := range []struct{ name, text string }{
		{"ASCII 160", strings.Repeat("a", 160)},
		{"GSM-7 1000", strings.Repeat("Habari Amina, punguzo la 20%! Tembelea duka {leo} kwa €5. ", 17)},
		{"UCS-2 emoji 160", strings.Repeat("Hi 😀 ", 27)},
		{"UCS-2 Arabic 500", strings.Repeat("مرحبا بك في متجرنا ", 26)},
	} {
		b.Run(bb.name, func(b *testing.B) {
			b.SetBytes(int64(len(bb.text)))
			b.ReportAllocs()
			for b.Loop() {
				Analyze(bb.text)
			}
		})
	}
}
