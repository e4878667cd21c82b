package text

import (
	"errors"
	"strings"
	"testing"

	"github.com/campaignd/dispatch/platform/errs"
)

func TestLineAndMultiline(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name      string
		in        string
		min, max  int
		line, mul bool // valid for Line, for Multiline
	}{
		{"plain", "Nairobi", 0, 200, true, true},
		{"empty allowed", "", 0, 200, true, true},
		{"empty required", "", 1, 200, false, false},
		{"too short", "ab", 3, 200, false, false},
		{"200 non-ASCII characters", strings.Repeat("é", 200), 0, 200, true, true},
		{"200 emoji", strings.Repeat("🎉", 200), 0, 200, true, true},
		{"201 characters", strings.Repeat("a", 201), 0, 200, false, false},
		{"NUL", "a\x00b", 0, 200, false, false},
		{"invalid UTF-8", "a\xffb", 0, 200, false, false},
		{"overlong slash", "\xc0\xaf", 0, 200, false, false},
		{"truncated sequence", "caf\xc3", 0, 200, false, false},
		{"encoded U+FFFD is valid", "a\uFFFDb", 0, 200, true, true},
		{"newline", "a\nb", 0, 200, false, true},
		{"tab", "a\tb", 0, 200, false, true},
		{"escape", "a\x1b[31m", 0, 200, false, true},
		{"C1 control", "a\u0085b", 0, 200, false, true},
		{"right-to-left override", "invoice\u202Efdp.exe", 0, 200, false, true},
		{"isolate", "\u2068name\u2069", 0, 200, false, true},
		{"right-to-left mark", "\u200Fשלום", 0, 200, true, true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			for _, c := range []struct {
				fn    func(string, string, int, int) error
				name  string
				valid bool
			}{{Line, "Line", tt.line}, {Multiline, "Multiline", tt.mul}} {
				err := c.fn("location", tt.in, tt.min, tt.max)
				if c.valid {
					if err != nil {
						t.Errorf("%s(%q) = %v, want nil", c.name, tt.in, err)
					}
					continue
				}
				var e *errs.Error
				if !errors.As(err, &e) || e.Kind != errs.KindValidation || e.Details["field"] != "location" ||
					!strings.Contains(e.Message, "location") {
					t.Errorf("%s(%q) = %#v, want a VALIDATION_ERROR naming location", c.name, tt.in, err)
				}
			}
		})
	}
}
