package window

import (
	"encoding/json"
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"

	"github.com/campaignd/dispatch/platform/errs"
)

// utc parses an RFC 3339 instant; the tests state instants in UTC so that
// the expected results do not depend on the zone arithmetic under test.
func utc(t *testing.T, s string) time.Time {
	t.Helper()
	v, err := time.Parse(time.RFC3339, s)
	if err != nil {
		t.Fatal(err)
	}
	return v
}

func TestOpenAndNextOpen(t *testing.T) {
	t.Parallel()
	nairobi := Window{Start: "08:00", End: "20:00", TimeZone: "Africa/Nairobi"} // UTC+3, no DST
	night := Window{Start: "22:00", End: "06:00", TimeZone: "Africa/Nairobi"}
	nyDay := Window{Start: "08:00", End: "20:00", TimeZone: "America/New_York"}
	tests := []struct {
		name string
		w    Window
		at   string // UTC
		open bool
		next string // UTC; "" means at itself (open)
	}{
		// No DST: a fixed daily rhythm.
		{"nairobi one second before start", nairobi, "2025-05-20T04:59:59Z", false, "2025-05-20T05:00:00Z"},
		{"nairobi start is inclusive", nairobi, "2025-05-20T05:00:00Z", true, ""},
		{"nairobi inside", nairobi, "2025-05-20T12:00:00Z", true, ""},
		{"nairobi last second", nairobi, "2025-05-20T16:59:59Z", true, ""},
		{"nairobi fraction before end is open", nairobi, "2025-05-20T16:59:59.999Z", true, ""},
		{"nairobi end is exclusive", nairobi, "2025-05-20T17:00:00Z", false, "2025-05-21T05:00:00Z"},
		{"nairobi after end", nairobi, "2025-05-20T20:30:00Z", false, "2025-05-21T05:00:00Z"},
		{"nairobi fraction before start is closed", nairobi, "2025-05-20T04:59:59.5Z", false, "2025-05-20T05:00:00Z"},
		{"nairobi local midnight", nairobi, "2025-05-19T21:00:00Z", false, "2025-05-20T05:00:00Z"},

		// Across midnight: 22:00–06:00 local.
		{"night before start", night, "2025-05-20T18:59:59Z", false, "2025-05-20T19:00:00Z"},
		{"night at start", night, "2025-05-20T19:00:00Z", true, ""},
		{"night after midnight", night, "2025-05-20T22:30:00Z", true, ""},
		{"night last second", night, "2025-05-21T02:59:59Z", true, ""},
		{"night end is exclusive", night, "2025-05-21T03:00:00Z", false, "2025-05-21T19:00:00Z"},
		{"night midday", night, "2025-05-21T09:00:00Z", false, "2025-05-21T19:00:00Z"},

		// New York springs forward on 2025-03-09: 02:00 EST → 03:00 EDT (07:00Z).
		{"ny day before, evening: the next morning is 23 h away", nyDay, "2025-03-09T01:00:00Z", false, "2025-03-09T12:00:00Z"},
		{"ny spring day 07:59 EDT", nyDay, "2025-03-09T11:59:00Z", false, "2025-03-09T12:00:00Z"},
		{"ny spring day 08:00 EDT", nyDay, "2025-03-09T12:00:00Z", true, ""},
		{"ny spring day 19:59 EDT", nyDay, "2025-03-09T23:59:00Z", true, ""},
		{"ny spring day 20:00 EDT", nyDay, "2025-03-10T00:00:00Z", false, "2025-03-10T12:00:00Z"},
		{"ny start in the gap opens when the gap ends", Window{"02:30", "05:00", "America/New_York"},
			"2025-03-09T06:00:00Z", false, "2025-03-09T07:00:00Z"},
		{"ny last second before the gap", Window{"02:30", "05:00", "America/New_York"},
			"2025-03-09T06:59:59Z", false, "2025-03-09T07:00:00Z"},
		{"ny first instant after the gap", Window{"02:30", "05:00", "America/New_York"},
			"2025-03-09T07:00:00Z", true, ""},
		{"ny window wholly in the gap waits a day", Window{"02:00", "02:30", "America/New_York"},
			"2025-03-09T06:00:00Z", false, "2025-03-10T06:00:00Z"},

		// New York falls back on 2025-11-02: 02:00 EDT → 01:00 EST (06:00Z);
		// 01:00–02:00 happens twice.
		{"ny day before, evening: the next morning is 25 h away", nyDay, "2025-11-02T00:30:00Z", false, "2025-11-02T13:00:00Z"},
		{"ny fall day 08:00 EST", nyDay, "2025-11-02T13:00:00Z", true, ""},
		{"ny fall day 07:59 EST", nyDay, "2025-11-02T12:59:00Z", false, "2025-11-02T13:00:00Z"},
		{"ny first 01:30", Window{"01:30", "03:00", "America/New_York"}, "2025-11-02T05:30:00Z", true, ""},
		{"ny back to 01:00 closes, the second 01:30 reopens", Window{"01:30", "03:00", "America/New_York"},
			"2025-11-02T06:00:00Z", false, "2025-11-02T06:30:00Z"},
		{"ny clock going back into the window opens it", Window{"01:00", "01:30", "America/New_York"},
			"2025-11-02T05:45:00Z", false, "2025-11-02T06:00:00Z"},

		// London springs forward on 2025-03-30: 01:00 GMT → 02:00 BST (01:00Z).
		{"london start in the gap", Window{"01:30", "03:00", "Europe/London"}, "2025-03-30T00:30:00Z", false, "2025-03-30T01:00:00Z"},
		{"london window wholly in the gap", Window{"01:15", "01:45", "Europe/London"}, "2025-03-30T00:30:00Z", false, "2025-03-31T00:15:00Z"},
		{"london spring day 09:00 BST", Window{"09:00", "17:00", "Europe/London"}, "2025-03-30T08:00:00Z", true, ""},
		{"london spring day 09:00 GMT is 10:00 BST", Window{"09:00", "17:00", "Europe/London"}, "2025-03-30T09:00:00Z", true, ""},
		{"london spring day before 09:00 BST", Window{"09:00", "17:00", "Europe/London"}, "2025-03-30T07:59:59Z", false, "2025-03-30T08:00:00Z"},

		// London falls back on 2025-10-26: 02:00 BST → 01:00 GMT (01:00Z).
		{"london seconds window, second occurrence", Window{"01:00:00", "01:00:30", "Europe/London"},
			"2025-10-26T00:00:30Z", false, "2025-10-26T01:00:00Z"},
		{"london repeated hour, second 01:20", Window{"01:20", "01:40", "Europe/London"},
			"2025-10-26T00:40:00Z", false, "2025-10-26T01:20:00Z"},
		{"london repeated hour, first 01:20", Window{"01:20", "01:40", "Europe/London"},
			"2025-10-26T00:20:00Z", true, ""},
		{"london after the repeated hour", Window{"01:20", "01:40", "Europe/London"},
			"2025-10-26T01:40:00Z", false, "2025-10-27T01:20:00Z"},

		// Seconds precision, as a test opening a few seconds ahead uses.
		{"seconds before", Window{"10:00:05", "10:00:10", "UTC"}, "2025-05-20T10:00:04Z", false, "2025-05-20T10:00:05Z"},
		{"seconds inside", Window{"10:00:05", "10:00:10", "UTC"}, "2025-05-20T10:00:09Z", true, ""},
		{"seconds end", Window{"10:00:05", "10:00:10", "UTC"}, "2025-05-20T10:00:10Z", false, "2025-05-21T10:00:05Z"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			if err := tt.w.Validate("send_window"); err != nil {
				t.Fatalf("Validate: %v", err)
			}
			at := utc(t, tt.at)
			if got := tt.w.Open(at); got != tt.open {
				t.Errorf("Open(%s) = %v, want %v", tt.at, got, tt.open)
			}
			want := at
			if tt.next != "" {
				want = utc(t, tt.next)
			}
			got := tt.w.NextOpen(at)
			if !got.Equal(want) {
				t.Errorf("NextOpen(%s) = %s, want %s", tt.at, got.UTC().Format(time.RFC3339Nano), want.Format(time.RFC3339Nano))
			}
			if !tt.w.Open(got) {
				t.Errorf("not open at NextOpen %s", got)
			}
			// Just before the opening it is closed (unless it was open already).
			if tt.next != "" && got.Add(-time.Second).After(at) && tt.w.Open(got.Add(-time.Second)) {
				t.Errorf("open a second before NextOpen %s", got)
			}
		})
	}
}

// TestNextOpenIsFirst checks NextOpen against brute force around
// transition days, in zones with and without DST (and one with a 30-minute
// shift), for windows in, around and across the shifted hours: from every
// minute of two days, the first open instant found by walking a 10-second
// grid (every bound and transition here falls on it).
func TestNextOpenIsFirst(t *testing.T) {
	t.Parallel()
	zones := []struct {
		zone string
		day  string // near a transition
	}{
		{"America/New_York", "2025-03-09T00:00:00Z"},
		{"America/New_York", "2025-11-02T00:00:00Z"},
		{"Europe/London", "2025-03-30T00:00:00Z"},
		{"Europe/London", "2025-10-26T00:00:00Z"},
		{"Australia/Lord_Howe", "2025-04-05T12:00:00Z"}, // 02:00 → 01:30
		{"Australia/Lord_Howe", "2025-10-04T12:00:00Z"}, // 02:00 → 02:30
		{"Africa/Nairobi", "2025-05-20T00:00:00Z"},
	}
	windows := [][2]string{
		{"01:00", "02:00"}, {"01:30", "03:00"}, {"02:00", "02:30"}, {"02:30", "05:00"}, {"08:00", "20:00"},
		{"22:00", "01:30"}, {"01:59:30", "02:00:30"}, {"00:00", "23:59:50"}, {"23:00", "00:00"}, {"01:45", "01:50"},
	}
	const grid = 10 * time.Second
	for _, z := range zones {
		for _, b := range windows {
			w := Window{Start: b[0], End: b[1], TimeZone: z.zone}
			t.Run(z.zone+" "+z.day[:10]+" "+b[0]+"-"+b[1], func(t *testing.T) {
				t.Parallel()
				if err := w.Validate("w"); err != nil {
					t.Fatal(err)
				}
				begin := utc(t, z.day).Add(-12 * time.Hour)
				const span, ahead = 48 * time.Hour, 60 * time.Hour
				// next[i] is the first grid index >= i at which w is open.
				n := int((span + ahead) / grid)
				next := make([]int, n+1)
				next[n] = -1
				for i := n - 1; i >= 0; i-- {
					if w.Open(begin.Add(time.Duration(i) * grid)) {
						next[i] = i
					} else {
						next[i] = next[i+1]
					}
				}
				for i := 0; i < int(span/grid); i += int(time.Minute / grid) {
					at := begin.Add(time.Duration(i) * grid)
					if next[i] < 0 {
						t.Fatalf("no opening within %s of %s", ahead, at.UTC())
					}
					want := begin.Add(time.Duration(next[i]) * grid)
					if got := w.NextOpen(at); !got.Equal(want) {
						t.Fatalf("NextOpen(%s) = %s, want %s", at.UTC(), got.UTC(), want.UTC())
					}
				}
			})
		}
	}
}

func TestValidate(t *testing.T) {
	t.Parallel()
	ok := Window{Start: "08:00", End: "20:00", TimeZone: "Africa/Nairobi"}
	tests := []struct {
		name  string
		w     Window
		field string // "" means valid
	}{
		{"valid", ok, ""},
		{"valid seconds", Window{"08:00:30", "08:00:45", "Europe/London"}, ""},
		{"valid across midnight", Window{"22:00", "06:00", "America/New_York"}, ""},
		{"valid UTC", Window{"00:00", "23:59", "UTC"}, ""},
		{"end at midnight", Window{"20:00", "00:00", "Asia/Kolkata"}, ""},
		{"missing start", Window{"", "20:00", "UTC"}, "send_window.start"},
		{"missing end", Window{"08:00", "", "UTC"}, "send_window.end"},
		{"missing zone", Window{"08:00", "20:00", ""}, "send_window.timezone"},
		{"one-digit hour", Window{"8:00", "20:00", "UTC"}, "send_window.start"},
		{"hour 24", Window{"24:00", "20:00", "UTC"}, "send_window.start"},
		{"minute 60", Window{"08:00", "12:60", "UTC"}, "send_window.end"},
		{"second 60", Window{"08:00:60", "12:00", "UTC"}, "send_window.start"},
		{"too many parts", Window{"08:00:00:00", "12:00", "UTC"}, "send_window.start"},
		{"am/pm", Window{"8am", "12:00", "UTC"}, "send_window.start"},
		{"sign", Window{"+8:00", "12:00", "UTC"}, "send_window.start"},
		{"space", Window{" 08:00", "12:00", "UTC"}, "send_window.start"},
		{"dot", Window{"08.00", "12:00", "UTC"}, "send_window.start"},
		{"non-ASCII digits", Window{"٠٨:٠٠", "12:00", "UTC"}, "send_window.start"},
		{"start equals end", Window{"08:00", "08:00", "UTC"}, "send_window.end"},
		{"start equals end with seconds", Window{"08:00", "08:00:00", "UTC"}, "send_window.end"},
		{"unknown zone", Window{"08:00", "20:00", "Mars/Olympus_Mons"}, "send_window.timezone"},
		{"offset is no zone", Window{"08:00", "20:00", "+03:00"}, "send_window.timezone"},
		{"Local", Window{"08:00", "20:00", "Local"}, "send_window.timezone"},
		{"path", Window{"08:00", "20:00", "../../etc/passwd"}, "send_window.timezone"},
		{"absolute path", Window{"08:00", "20:00", "/etc/localtime"}, "send_window.timezone"},
		{"directory", Window{"08:00", "20:00", "America"}, "send_window.timezone"},
		{"long", Window{"08:00", "20:00", strings.Repeat("A/", 100)}, "send_window.timezone"},
		{"NUL", Window{"08:00", "20:00", "Africa/Nairobi\x00"}, "send_window.timezone"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			err := tt.w.Validate("send_window")
			if tt.field == "" {
				if err != nil {
					t.Fatalf("Validate: %v", err)
				}
				return
			}
			var e *errs.Error
			if !errors.As(err, &e) || e.Kind != errs.KindValidation {
				t.Fatalf("Validate = %v, want a validation error", err)
			}
			if e.Details["field"] != tt.field {
				t.Errorf("field = %v, want %s (%s)", e.Details["field"], tt.field, e.Message)
			}
			if !strings.Contains(e.Message, tt.field) {
				t.Errorf("message %q does not name %s", e.Message, tt.field)
			}
			// An invalid window never blocks: it counts as open.
			now := time.Now()
			if !tt.w.Open(now) || !tt.w.NextOpen(now).Equal(now) {
				t.Errorf("invalid window is not open")
			}
		})
	}
}

func TestParse(t *testing.T) {
	t.Parallel()
	for _, in := range []string{"", "null"} {
		w, err := Parse("send_window", []byte(in))
		if w != nil || err != nil {
			t.Errorf("Parse(%q) = %v, %v; want nil, nil", in, w, err)
		}
	}
	w, err := Parse("send_window", []byte(`{"start":"08:00","end":"20:00","timezone":"Africa/Nairobi"}`))
	if err != nil {
		t.Fatal(err)
	}
	if diff := cmp.Diff(&Window{Start: "08:00", End: "20:00", TimeZone: "Africa/Nairobi"}, w); diff != "" {
		t.Errorf("Parse (-want +got):\n%s", diff)
	}
	for in, field := range map[string]string{
		`"08:00"`: "send_window",
		`[]`:      "send_window",
		`{"start":"08:00","end":"20:00","timezone":"Nowhere/Atall"}`: "send_window.timezone",
		`{"start":"08:00","end":"20:00"}`:                            "send_window.timezone",
		`{"end":"20:00","timezone":"UTC"}`:                           "send_window.start",
	} {
		_, err := Parse("send_window", []byte(in))
		var e *errs.Error
		if !errors.As(err, &e) || e.Details["field"] != field {
			t.Errorf("Parse(%s) = %v, want a validation error naming %s", in, err, field)
		}
	}
}

func TestJSONAndSQLRoundTrip(t *testing.T) {
	t.Parallel()
	w := Window{Start: "22:00", End: "06:00:30", TimeZone: "Europe/London"}
	b, err := json.Marshal(w)
	if err != nil {
		t.Fatal(err)
	}
	if got, want := string(b), `{"start":"22:00","end":"06:00:30","timezone":"Europe/London"}`; got != want {
		t.Errorf("JSON = %s, want %s", got, want)
	}
	v, err := w.Value()
	if err != nil {
		t.Fatal(err)
	}
	text, ok := v.(string)
	if !ok {
		t.Fatalf("Value() is %T, want string (a []byte would go out in binary format with binary_parameters)", v)
	}
	for _, src := range []any{text, []byte(text)} {
		var back Window
		if err := back.Scan(src); err != nil {
			t.Fatal(err)
		}
		if back != w {
			t.Errorf("Scan(%T) = %+v, want %+v", src, back, w)
		}
	}
	var back Window
	if err := back.Scan(42); err == nil {
		t.Error("Scan(int) succeeded")
	}
}
