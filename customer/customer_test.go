package customer

import (
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"
)

// These tests need no database.

func TestNormalizePhone(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name   string
		raw    string
		region string
		want   string // "" means invalid
	}{
		{"KE national with spaces", "0712 345678", "KE", "+254712345678"},
		{"KE national without trunk zero", "712345678", "KE", "+254712345678"},
		{"KE international", "+254 712 345 678", "KE", "+254712345678"},
		{"international ignores region", "+254712345678", "US", "+254712345678"},
		{"US punctuation", "(202) 555-0123", "US", "+12025550123"},
		{"US with country code", "1-202-555-0123", "US", "+12025550123"},
		{"UK mobile from KE", "+44 7911 123456", "KE", "+447911123456"},
		{"surrounding space", "  +254712345678\t", "US", "+254712345678"},
		{"00 international prefix in GB", "00 254 712 345678", "GB", "+254712345678"},
		{"empty", "", "US", ""},
		{"blank", "   ", "US", ""},
		{"letters", "call me", "US", ""},
		{"too short", "12", "US", ""},
		{"KE national read as US", "0712 345678", "US", ""},
		{"unknown default region", "0712345678", "ZZ", ""},
		{"extension", "+1 202 555 0123 ext 5", "US", ""},
		{"too long", strings.Repeat("1", 65), "US", ""},
		{"invalid country code", "+999 123 4567", "US", ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, fe := normalizePhone(tt.raw, tt.region)
			if tt.want == "" {
				if fe == nil {
					t.Fatalf("normalizePhone(%q, %s) = %q, want an error", tt.raw, tt.region, got)
				}
				if fe.Field != "phone" || !strings.Contains(fe.Message, "phone") {
					t.Errorf("error %+v does not name the phone field", fe)
				}
				return
			}
			if fe != nil {
				t.Fatalf("normalizePhone(%q, %s): %s", tt.raw, tt.region, fe.Message)
			}
			if got != tt.want {
				t.Errorf("normalizePhone(%q, %s) = %q, want %q", tt.raw, tt.region, got, tt.want)
			}
		})
	}
}

func TestInputNormalize(t *testing.T) {
	t.Parallel()
	long := strings.Repeat("é", MaxFieldLen+1) // characters, not bytes, count
	tests := []struct {
		name       string
		in         Input
		want       Input
		wantFields []string // fields reported invalid, in order
	}{
		{
			name: "trimmed",
			in:   Input{Phone: " 0712345678 ", FirstName: "  Alice ", LastName: "\tWanjiru", Location: "Nairobi  ", PreferredProduct: " Shoes"},
			want: Input{Phone: "+254712345678", FirstName: "Alice", LastName: "Wanjiru", Location: "Nairobi", PreferredProduct: "Shoes"},
		},
		{
			name: "unicode and emoji kept",
			in:   Input{Phone: "+254712345678", FirstName: "Zoë 🌟", Location: "Mombasa, Kenya"},
			want: Input{Phone: "+254712345678", FirstName: "Zoë 🌟", Location: "Mombasa, Kenya"},
		},
		{
			name: "exactly the maximum length",
			in:   Input{Phone: "+254712345678", LastName: strings.Repeat("é", MaxFieldLen)},
			want: Input{Phone: "+254712345678", LastName: strings.Repeat("é", MaxFieldLen)},
		},
		{
			name:       "phone missing",
			in:         Input{FirstName: "Alice"},
			wantFields: []string{"phone"},
		},
		{
			name:       "every field bad",
			in:         Input{Phone: "nope", FirstName: long, LastName: long, Location: long, PreferredProduct: long},
			wantFields: []string{"phone", "first_name", "last_name", "location", "preferred_product"},
		},
		{
			name:       "NUL byte",
			in:         Input{Phone: "+254712345678", FirstName: "Al\x00ice"},
			wantFields: []string{"first_name"},
		},
		{
			name:       "newline inside",
			in:         Input{Phone: "+254712345678", Location: "Nai\nrobi"},
			wantFields: []string{"location"},
		},
		{
			name:       "invalid UTF-8",
			in:         Input{Phone: "+254712345678", PreferredProduct: "\xff\xfe"},
			wantFields: []string{"preferred_product"},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, problems := tt.in.normalize("KE")
			var fields []string
			for _, p := range problems {
				fields = append(fields, p.Field)
				if !strings.Contains(p.Message, p.Field) {
					t.Errorf("message %q does not name field %s", p.Message, p.Field)
				}
			}
			if diff := cmp.Diff(tt.wantFields, fields); diff != "" {
				t.Fatalf("invalid fields (-want +got):\n%s", diff)
			}
			if len(tt.wantFields) == 0 {
				if diff := cmp.Diff(tt.want, got); diff != "" {
					t.Errorf("normalized input (-want +got):\n%s", diff)
				}
			}
		})
	}
}

func TestValidRegion(t *testing.T) {
	t.Parallel()
	for region, want := range map[string]bool{"US": true, "ke": true, "GB": true, "ZZ": false, "": false, "USA": false} {
		if got := ValidRegion(region); got != want {
			t.Errorf("ValidRegion(%q) = %v, want %v", region, got, want)
		}
	}
}

func TestFilterKeyIgnoresCaseAndSpace(t *testing.T) {
	t.Parallel()
	a := Filter{Location: " Nairobi ", PreferredProduct: "SHOES"}.normalized()
	b := Filter{Location: "nairobi", PreferredProduct: "shoes"}.normalized()
	if diff := cmp.Diff(a.key(), b.key()); diff != "" {
		t.Errorf("equivalent filters have different cursor keys (-a +b):\n%s", diff)
	}
	if a.Location != "Nairobi" {
		t.Errorf("normalized location %q, want trimmed %q", a.Location, "Nairobi")
	}
}
