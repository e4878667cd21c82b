package auth

import (
	"errors"
	"fmt"
	"net/http"
	"strings"
	"testing"

	"github.com/campaignd/dispatch/platform/errs"
)

func TestScopeAllows(t *testing.T) {
	tests := []struct {
		have, need Scope
		want       bool
	}{
		{ScopeRead, ScopeRead, true},
		{ScopeRead, ScopeWrite, false},
		{ScopeRead, ScopeAdmin, false},
		{ScopeWrite, ScopeRead, true},
		{ScopeWrite, ScopeWrite, true},
		{ScopeWrite, ScopeAdmin, false},
		{ScopeAdmin, ScopeRead, true},
		{ScopeAdmin, ScopeAdmin, true},
		{Scope("root"), ScopeRead, false},
		{Scope(""), ScopeRead, false},
	}
	for _, tt := range tests {
		if got := tt.have.Allows(tt.need); got != tt.want {
			t.Errorf("%q.Allows(%q) = %v, want %v", tt.have, tt.need, got, tt.want)
		}
	}
}

func TestCheckFormat(t *testing.T) {
	tests := []struct {
		name, key string
		ok        bool
	}{
		{"generated", NewSecret(), true},
		{"32 characters", "dsp_" + strings.Repeat("a", 32), true},
		{"31 characters", "dsp_" + strings.Repeat("a", 31), false},
		{"no marker", strings.Repeat("a", 40), false},
		{"other marker", "sk_" + strings.Repeat("a", 40), false},
		{"not URL-safe", "dsp_" + strings.Repeat("a", 31) + "/", false},
		{"NUL", "dsp_" + strings.Repeat("a", 31) + "\x00", false},
		{"too long", "dsp_" + strings.Repeat("a", 300), false},
	}
	for _, tt := range tests {
		if err := CheckFormat(tt.key); (err == nil) != tt.ok {
			t.Errorf("%s: CheckFormat = %v, want ok %v", tt.name, err, tt.ok)
		}
	}
}

func TestNewSecretIsUniqueAndPrefixed(t *testing.T) {
	a, b := NewSecret(), NewSecret()
	if a == b || !strings.HasPrefix(a, "dsp_") || len(a) != 4+43 {
		t.Errorf("secrets %q %q: want distinct dsp_ + 43 characters", a, b)
	}
	if p := prefixOf(a); len(p) != 12 || !strings.HasPrefix(a, p) {
		t.Errorf("prefix %q of %q", p, a)
	}
}

func TestBearer(t *testing.T) {
	tests := []struct {
		header, want string
		ok           bool
	}{
		{"Bearer dsp_abc", "dsp_abc", true},
		{"bearer dsp_abc", "dsp_abc", true},
		{"Bearer  dsp_abc ", "dsp_abc", true},
		{"Bearer", "", false},
		{"Bearer ", "", false},
		{"Basic dXNlcjpwYXNz", "", false},
		{"", "", false},
	}
	for _, tt := range tests {
		r, _ := http.NewRequest("GET", "/", nil)
		r.Header.Set("Authorization", tt.header)
		got, ok := bearer(r)
		if got != tt.want || ok != tt.ok {
			t.Errorf("bearer(%q) = %q, %v; want %q, %v", tt.header, got, ok, tt.want, tt.ok)
		}
	}
}

// TestCreateNameRule: key names follow the service's one-line text rule,
// checked before anything is stored.
func TestCreateNameRule(t *testing.T) {
	s := &Service{} // no store: every name here is refused before it is needed
	for _, name := range []string{"", "   ", "a\x00b", "a\xffb", "a\x1b[31mb", "line\nbreak", "evil\u202Etxt.exe", strings.Repeat("é", 101)} {
		_, err := s.Create(t.Context(), name, ScopeRead)
		var e *errs.Error
		if !errors.As(err, &e) || e.Code != errs.CodeValidation || e.Details["field"] != "name" {
			t.Errorf("Create(%.20q) = %v, want a VALIDATION_ERROR naming name", name, err)
		}
	}
	_, err := s.Create(t.Context(), "ok", Scope(strings.Repeat("r", 1<<20)))
	if err == nil || len(err.Error()) > 300 {
		t.Errorf("Create with a huge scope: error of %d bytes, want a short one", len(fmt.Sprint(err)))
	}
}
