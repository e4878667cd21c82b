package provider

import (
	"strings"
	"testing"
)

func TestParseKeyword(t *testing.T) {
	t.Parallel()
	tests := []struct {
		body string
		want Keyword
	}{
		{"STOP", OptOut},
		{"stop", OptOut},
		{"Stop", OptOut},
		{"stop ", OptOut},
		{" Stop\n", OptOut},
		{"\tSTOP\r\n", OptOut},
		{"\u00a0stop\u00a0", OptOut}, // no-break space, as some keyboards send
		{"STOPALL", OptOut},
		{"STOP ALL", OptOut},
		{"stop  all", OptOut},
		{"S T O P", OptOut},
		{"unsubscribe", OptOut},
		{"Cancel", OptOut},
		{"END", OptOut},
		{"quit", OptOut},
		{"OPTOUT", OptOut},
		{"opt out", OptOut},
		{"revoke", OptOut},
		{"START", OptIn},
		{"start", OptIn},
		{"UNSTOP", OptIn},
		{"yes", OptIn},
		{" Yes \n", OptIn},

		{"", NoKeyword},
		{"   ", NoKeyword},
		{"STOP PLEASE", NoKeyword},
		{"please stop", NoKeyword},
		{"stop!", NoKeyword},
		{"stop.", NoKeyword},
		{"STOPP", NoKeyword},
		{"STO", NoKeyword},
		{"HELP", NoKeyword},
		{"INFO", NoKeyword},
		{"no", NoKeyword},
		{"yes please", NoKeyword},
		{"ſtop", NoKeyword},       // long s: Unicode folds it to s, ASCII does not
		{"ＳＴＯＰ", NoKeyword},       // full-width letters
		{"st\u200bop", NoKeyword}, // zero-width space is not whitespace
		{"UNSUBSCRIBED", NoKeyword},
		{strings.Repeat("stop", 100), NoKeyword},
		{"Hi, when is my order arriving?", NoKeyword},
	}
	for _, tt := range tests {
		t.Run(tt.body, func(t *testing.T) {
			t.Parallel()
			if got := ParseKeyword(tt.body); got != tt.want {
				t.Errorf("ParseKeyword(%q) = %v, want %v", tt.body, got, tt.want)
			}
		})
	}
}

func TestKeywordString(t *testing.T) {
	t.Parallel()
	for k, want := range map[Keyword]string{NoKeyword: "none", OptOut: "opt_out", OptIn: "opt_in", 7: "keyword(7)"} {
		if got := k.String(); got != want {
			t.Errorf("Keyword(%d).String() = %q, want %q", int(k), got, want)
		}
	}
}
