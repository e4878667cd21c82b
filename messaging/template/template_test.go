package template

import (
	"encoding/json"
	"errors"
	"strings"
	"testing"
	"unicode/utf8"

	"github.com/google/go-cmp/cmp"
)

// aliceFields is alice as Fields, for the allocation test and benchmark,
// which must not count render's conversion.
var aliceFields = Fields{FirstName: "Alice", LastName: "Moreau", Location: "Lyon",
	PreferredProduct: "espresso beans", Phone: "+33612345678"}

var (
	alice = map[string]string{
		"first_name":        "Alice",
		"last_name":         "Moreau",
		"location":          "Lyon",
		"preferred_product": "espresso beans",
		"phone":             "+33612345678",
	}
	bob = map[string]string{
		"first_name": "Bob",
		"last_name":  "",
		"location":   "Nairobi",
	}
	zoe = map[string]string{
		"first_name":        "Zoë",
		"last_name":         "Łukasiewicz-Ñúñez",
		"location":          "東京",
		"preferred_product": "☕ コーヒー",
		"phone":             "+81 90-1234-5678",
	}
)

func TestRender(t *testing.T) {
	tests := []struct {
		name   string
		tmpl   string
		fields map[string]string
		want   string
	}{
		{"no placeholders", "Big sale this weekend!", alice, "Big sale this weekend!"},
		{"empty template", "", alice, ""},
		{"all placeholders", "{first_name} {last_name} from {location} likes {preferred_product}, call {phone}", alice,
			"Alice Moreau from Lyon likes espresso beans, call +33612345678"},
		{"placeholder only", "{first_name}", alice, "Alice"},
		{"adjacent placeholders", "{first_name}{last_name}", alice, "AliceMoreau"},
		{"placeholder at both ends", "{first_name}, see you in {location}", bob, "Bob, see you in Nairobi"},
		{"second customer", "Hi {first_name}, new stock in {location}", bob, "Hi Bob, new stock in Nairobi"},
		{"empty field", "Hi {first_name} {last_name}", bob, "Hi Bob "},
		{"missing key", "Try {preferred_product} today", bob, "Try  today"},
		{"missing key renders empty", "Call {phone}.", bob, "Call ."},
		{"nil map", "Hi {first_name}!", nil, "Hi !"},
		{"empty map", "Hi {first_name} {last_name}", map[string]string{}, "Hi  "},
		{"repeated placeholder", "{first_name}, {first_name}, {first_name}!", alice, "Alice, Alice, Alice!"},
		{"extra keys ignored", "Hi {first_name}", map[string]string{"first_name": "Ann", "name": "x"}, "Hi Ann"},

		{"escaped open brace", "a {{ b", alice, "a { b"},
		{"escaped close brace", "a }} b", alice, "a } b"},
		{"escaped placeholder is literal", "{{first_name}}", alice, "{first_name}"},
		{"escaped unknown name is literal", "{{name}} and {{ }}", alice, "{name} and { }"},
		{"escaped braces around placeholder", "{{{first_name}}}", alice, "{Alice}"},
		{"escaped empty braces", "{{}}", alice, "{}"},
		{"escapes only", "{{{{}}}}", alice, "{{}}"},
		{"json-like literal", `{{"id": {phone}}}`, alice, `{"id": +33612345678}`},

		{"field value with placeholder not reinterpreted", "Hi {first_name}",
			map[string]string{"first_name": "{last_name}", "last_name": "X"}, "Hi {last_name}"},
		{"field value with lone braces", "Hi {first_name}!",
			map[string]string{"first_name": "}{ {{ }}"}, "Hi }{ {{ }}!"},

		{"unicode customer", "こんにちは {first_name} {last_name} ({location}): {preferred_product}", zoe,
			"こんにちは Zoë Łukasiewicz-Ñúñez (東京): ☕ コーヒー"},
		{"emoji in template", "🎉 {first_name}, 20% off 🛍️ in {location} 👋🏽", alice,
			"🎉 Alice, 20% off 🛍️ in Lyon 👋🏽"},
		{"emoji next to braces", "👋{first_name}👋 {{😀}}", alice, "👋Alice👋 {😀}"},
		{"zwj emoji field", "Hi {first_name}", map[string]string{"first_name": "👩‍👩‍👧‍👦 family"}, "Hi 👩‍👩‍👧‍👦 family"},
		{"combining marks", "Cafe\u0301 {location}", map[string]string{"location": "Sa\u0303o Paulo"}, "Cafe\u0301 Sa\u0303o Paulo"},
		{"right-to-left text", "مرحبا {first_name}", map[string]string{"first_name": "سارة"}, "مرحبا سارة"},
		{"newlines kept", "Hi {first_name}\nBye\r\n", alice, "Hi Alice\nBye\r\n"},
		{"invalid utf-8 passes through", "\xff{first_name}\xfe", alice, "\xffAlice\xfe"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if err := Check(tt.tmpl); err != nil {
				t.Errorf("Check(%q) = %v, want nil", tt.tmpl, err)
			}
			got, err := render(tt.tmpl, tt.fields)
			if err != nil {
				t.Fatalf("Render(%q) error = %v", tt.tmpl, err)
			}
			if diff := cmp.Diff(tt.want, got); diff != "" {
				t.Errorf("Render(%q) mismatch (-want +got):\n%s", tt.tmpl, diff)
			}
		})
	}
}

func TestRenderInvalid(t *testing.T) {
	tests := []struct {
		name        string
		tmpl        string
		wantUnknown []string
		// wantProblem is a substring of Problem; "" means Problem must be empty.
		wantProblem string
	}{
		{"unknown name", "Hi {name}", []string{"name"}, ""},
		{"wrong case", "Hi {First_Name}", []string{"First_Name"}, ""},
		{"unknown listed in order and deduped", "{foo} {name} {first_name} {foo} {bar} {name}",
			[]string{"foo", "name", "bar"}, ""},
		{"unknown with punctuation", "{first-name} {phone.number}", []string{"first-name", "phone.number"}, ""},
		{"unknown unicode name", "{prénom} {🙂}", []string{"prénom", "🙂"}, ""},
		{"unknown after escapes", "{{x}} {x}", []string{"x"}, ""},

		{"unclosed", "Hi {first_name", nil, `unclosed "{" at character 4`},
		{"unclosed at end", "Hi {", nil, `unclosed "{" at character 4`},
		{"unclosed after valid placeholder", "{first_name} {", nil, `unclosed "{" at character 14`},
		{"odd open braces", "{{{", nil, `unclosed "{" at character 3`},
		{"lone close", "Hi first_name}", nil, `unmatched "}" at character 14`},
		{"lone close at start", "} Hi", nil, `unmatched "}" at character 1`},
		{"extra close after placeholder", "{first_name}}", nil, `unmatched "}" at character 13`},
		{"odd close braces", "}}}", nil, `unmatched "}" at character 3`},
		{"close before open", "}{first_name}", nil, `unmatched "}" at character 1`},
		{"empty placeholder", "Hi {}", nil, `empty placeholder "{}" at character 4`},
		{"leading space", "Hi { first_name}", nil, `whitespace in placeholder "{ first_name}" at character 4`},
		{"trailing space", "Hi {first_name }", nil, `whitespace in placeholder "{first_name }" at character 4`},
		{"inner space", "{first name}", nil, `whitespace in placeholder "{first name}" at character 1`},
		{"space only", "{ }", nil, `whitespace in placeholder "{ }" at character 1`},
		{"tab", "{\tphone}", nil, `whitespace in placeholder "{\tphone}"`},
		{"newline", "{phone\n}", nil, `whitespace in placeholder "{phone\n}"`},
		{"non-breaking space", "{phone\u00a0}", nil, `whitespace in placeholder`},
		{"nested", "{first_{name}}", nil, `nested "{" at character 8 inside the placeholder opened at character 1`},
		{"escape then lone close", "{{first_name}", nil, `unmatched "}" at character 13`},
		{"nested open", "{a{first_name}}", nil, `nested "{" at character 3`},
		{"positions count characters not bytes", "Здравствуйте 👋 {first_name", nil, `unclosed "{" at character 16`},

		{"unknown before syntax problem kept", "{name} {first_name", []string{"name"}, `unclosed "{" at character 8`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			checkErr := Check(tt.tmpl)
			got, renderErr := render(tt.tmpl, alice)
			if got != "" {
				t.Errorf("Render(%q) = %q alongside an error, want \"\"", tt.tmpl, got)
			}
			for _, c := range []struct {
				fn  string
				err error
			}{{"Check", checkErr}, {"Render", renderErr}} {
				var te *Error
				if !errors.As(c.err, &te) {
					t.Fatalf("%s(%q) error = %v (%T), want *Error", c.fn, tt.tmpl, c.err, c.err)
				}
				if diff := cmp.Diff(tt.wantUnknown, te.Unknown); diff != "" {
					t.Errorf("%s(%q) Unknown mismatch (-want +got):\n%s", c.fn, tt.tmpl, diff)
				}
				if tt.wantProblem == "" && te.Problem != "" {
					t.Errorf("%s(%q) Problem = %q, want none", c.fn, tt.tmpl, te.Problem)
				}
				if !strings.Contains(te.Problem, tt.wantProblem) {
					t.Errorf("%s(%q) Problem = %q, want it to contain %q", c.fn, tt.tmpl, te.Problem, tt.wantProblem)
				}
			}
		})
	}
}

func TestErrorMessage(t *testing.T) {
	// The message is shown to people editing templates, so pin the parts
	// they rely on: every unknown name and every allowed one.
	tests := []struct {
		name string
		err  *Error
		want string
	}{
		{"several unknown", &Error{Unknown: []string{"name", "foo"}},
			"unknown placeholders: {name}, {foo}; allowed: {first_name}, {last_name}, {location}, {preferred_product}, {phone}"},
		{"one unknown", &Error{Unknown: []string{"name"}},
			"unknown placeholder: {name}; allowed: {first_name}, {last_name}, {location}, {preferred_product}, {phone}"},
		{"problem only", &Error{Problem: `unclosed "{" at character 4`},
			`unclosed "{" at character 4 (write "{{" or "}}" for a literal brace)`},
		{"both", &Error{Unknown: []string{"x"}, Problem: `unmatched "}" at character 9`},
			`unmatched "}" at character 9 (write "{{" or "}}" for a literal brace); unknown placeholder: {x}; allowed: {first_name}, {last_name}, {location}, {preferred_product}, {phone}`},
		{"zero value", &Error{}, "invalid template"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if diff := cmp.Diff(tt.want, tt.err.Error()); diff != "" {
				t.Errorf("Error() mismatch (-want +got):\n%s", diff)
			}
		})
	}
}

func TestNamesAllRender(t *testing.T) {
	// Names is what the UI offers; each entry must be accepted and filled
	// from the Fields field of the same JSON name.
	if diff := cmp.Diff(placeholderNames[:], Names()); diff != "" {
		t.Fatalf("Names differs from the enforced list (-enforced +exported):\n%s", diff)
	}
	for _, name := range Names() {
		t.Run(name, func(t *testing.T) {
			got, err := render("<{"+name+"}>", map[string]string{name: "v-" + name})
			if err != nil {
				t.Fatalf("Render error = %v", err)
			}
			if want := "<v-" + name + ">"; got != want {
				t.Errorf("Render = %q, want %q", got, want)
			}
		})
	}
}

func TestNamesMutationDoesNotChangeRules(t *testing.T) {
	names := Names()
	names[0] = "name"
	if err := Check("{first_name}"); err != nil {
		t.Errorf("Check after mutating Names() = %v, want nil", err)
	}
	if err := Check("{name}"); err == nil {
		t.Error("Check({name}) after mutating Names() = nil, want error")
	}
}

// render renders with fields keyed by placeholder name, through the Fields
// JSON names (the same words), so the tables can name fields as maps.
func render(tmpl string, m map[string]string) (string, error) {
	b, err := json.Marshal(m)
	if err != nil {
		return "", err
	}
	var f Fields
	if err := json.Unmarshal(b, &f); err != nil {
		return "", err
	}
	return Render(tmpl, f)
}

func TestCheckValidReturnsUntypedNil(t *testing.T) {
	// A nil *Error stored in an error interface is non-nil; make
	// sure callers writing `if err != nil` are not fooled.
	var err error = Check("Hi {first_name}")
	if err != nil {
		t.Errorf("Check(valid) = %#v, want untyped nil", err)
	}
	_, err = render("Hi {first_name}", alice)
	if err != nil {
		t.Errorf("Render(valid) error = %#v, want untyped nil", err)
	}
}

func TestRenderAllocations(t *testing.T) {
	// Render runs once per message; it should allocate only the result, and
	// nothing when there is nothing to substitute.
	tests := []struct {
		name string
		tmpl string
		max  float64
	}{
		{"no braces", "Big sale this weekend at our Lyon store!", 0},
		{"typical", "Hi {first_name} {last_name}, {preferred_product} is back in {location}. Reply STOP to opt out.", 1},
		{"escapes and emoji", "🎉 {{VIP}} {first_name} 🎉", 1},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got := testing.AllocsPerRun(100, func() {
				if _, err := Render(tt.tmpl, aliceFields); err != nil {
					t.Fatal(err)
				}
			})
			if got > tt.max {
				t.Errorf("Render allocations = %v, want at most %v", got, tt.max)
			}
		})
	}
}

// escapeLiteral turns arbitrary text into a template that renders as that
// text, the way a UI would insert user text that must not be interpreted.
func escapeLiteral(s string) string {
	return strings.NewReplacer("{", "{{", "}", "}}").Replace(s)
}

func FuzzRender(f *testing.F) {
	seeds := []string{
		"", "plain", "Hi {first_name} {last_name}", "{{first_name}}", "{{{first_name}}}",
		"{", "}", "{}", "{ }", "{a{b}}", "{name} {foo} {name}", "Hi {first_name",
		"🎉 {first_name} 👋🏽", "\xff{phone}\xfe", "{first_name}}", "}}{{",
	}
	for _, s := range seeds {
		f.Add(s, "Alice", "{last_name}")
	}
	f.Fuzz(func(t *testing.T, tmpl, first, last string) {
		fields := map[string]string{"first_name": first, "last_name": last}

		// Any text, escaped, renders back to itself.
		lit, err := render(escapeLiteral(tmpl), fields)
		if err != nil || lit != tmpl {
			t.Fatalf("Render(escapeLiteral(%q)) = %q, %v; want the text back", tmpl, lit, err)
		}

		got, renderErr := render(tmpl, fields)
		checkErr := Check(tmpl)
		if (checkErr == nil) != (renderErr == nil) {
			t.Fatalf("Check(%q) = %v but Render error = %v", tmpl, checkErr, renderErr)
		}
		if renderErr != nil {
			var te *Error
			if !errors.As(renderErr, &te) {
				t.Fatalf("Render(%q) error %T, want *Error", tmpl, renderErr)
			}
			if te.Problem == "" && len(te.Unknown) == 0 {
				t.Fatalf("Render(%q) returned an empty Error", tmpl)
			}
			seen := map[string]bool{}
			for _, u := range te.Unknown {
				if seen[u] {
					t.Fatalf("Render(%q) Unknown %q has duplicate %q", tmpl, te.Unknown, u)
				}
				seen[u] = true
			}
			if got != "" {
				t.Fatalf("Render(%q) = %q alongside an error", tmpl, got)
			}
			return
		}
		// Unicode must survive: valid input gives valid output.
		if utf8.ValidString(tmpl) && utf8.ValidString(first) && utf8.ValidString(last) && !utf8.ValidString(got) {
			t.Fatalf("Render(%q) = %q is not valid UTF-8", tmpl, got)
		}
		if !strings.ContainsAny(tmpl, "{}") && got != tmpl {
			t.Fatalf("Render(%q) = %q, want the template unchanged", tmpl, got)
		}
	})
}

func BenchmarkRender(b *testing.B) {
	benches := []struct {
		name string
		tmpl string
	}{
		{"typical", "Hi {first_name} {last_name}, {preferred_product} is back in stock at our {location} store. Reply STOP to opt out."},
		{"no placeholders", "Big sale this weekend at all our stores. Reply STOP to opt out."},
		{"unicode", "🎉 こんにちは {first_name}! {{VIP}} offer on {preferred_product} in {location} 🛍️"},
	}
	for _, bb := range benches {
		b.Run(bb.name, func(b *testing.B) {
			b.ReportAllocs()
			for b.Loop() {
				if _, err := Render(bb.tmpl, aliceFields); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}
