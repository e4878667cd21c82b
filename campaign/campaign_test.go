package campaign

import (
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"

	"github.com/campaignd/dispatch/messaging"
	"github.com/campaignd/dispatch/messaging/template"
	"github.com/campaignd/dispatch/platform/channel"
	"github.com/campaignd/dispatch/platform/errs"
)

// The real templater must satisfy the interface the app wires it into.
var _ Templater = messaging.Templates{}

var errValidation = &errs.Error{Code: errs.CodeValidation}

// wantField fails unless err is a VALIDATION_ERROR naming field; field ""
// means err must be nil.
func wantField(t *testing.T, err error, field string) {
	t.Helper()
	if field == "" {
		if err != nil {
			t.Fatalf("unexpected error: %v", err)
		}
		return
	}
	if !errors.Is(err, errValidation) {
		t.Fatalf("error = %v, want a %s naming %q", err, errs.CodeValidation, field)
	}
	var e *errs.Error
	errors.As(err, &e)
	if got := e.Details["field"]; got != field {
		t.Fatalf("details.field = %v, want %q (error %v)", got, field, err)
	}
	if !strings.Contains(e.Message, field) {
		t.Errorf("message %q does not name the field %q", e.Message, field)
	}
}

func ptr[T any](v T) *T { return &v }

func TestValidateName(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name, in, want, field string
	}{
		{name: "plain", in: "Summer Sale 2025", want: "Summer Sale 2025"},
		{name: "one character", in: "x", want: "x"},
		{name: "surrounding space trimmed", in: "  Spring \t\n", want: "Spring"},
		{name: "inner space kept", in: "a  b", want: "a  b"},
		{name: "unicode and emoji unchanged", in: "Été ☀️ セール 🎉", want: "Été ☀️ セール 🎉"},
		{name: "200 ascii", in: strings.Repeat("a", 200), want: strings.Repeat("a", 200)},
		{name: "200 emoji count as 200", in: strings.Repeat("🎉", 200), want: strings.Repeat("🎉", 200)},
		{name: "200 after trimming", in: " " + strings.Repeat("a", 200) + " ", want: strings.Repeat("a", 200)},
		{name: "empty", in: "", field: "name"},
		{name: "blank", in: " \t\u3000 ", field: "name"},
		{name: "201 ascii", in: strings.Repeat("a", 201), field: "name"},
		{name: "201 emoji", in: strings.Repeat("🎉", 201), field: "name"},
		{name: "NUL", in: "a\x00b", field: "name"},
		{name: "invalid UTF-8", in: "a\xffb", field: "name"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			got, err := validateName(tt.in)
			wantField(t, err, tt.field)
			if got != tt.want {
				t.Errorf("validateName(%q) = %q, want %q", tt.in, got, tt.want)
			}
		})
	}
}

func TestValidateTemplate(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name, in, field string
		wantInMessage   []string
	}{
		{name: "placeholders", in: "Hi {first_name} {last_name}, {preferred_product} in {location}, {phone}"},
		{name: "no placeholders", in: "Sale today"},
		{name: "literal braces", in: "{{VIP}} {first_name}"},
		{name: "emoji", in: "Olá {first_name} 👋 🇵🇹"},
		{name: "4096 characters", in: strings.Repeat("é", 4096)},
		{name: "4096 emoji", in: strings.Repeat("🎉", 4096)},
		{name: "empty", in: "", field: "base_template"},
		{name: "blank", in: "  \n ", field: "base_template"},
		{name: "4097 characters", in: strings.Repeat("a", 4097), field: "base_template", wantInMessage: []string{"4096"}},
		{name: "unknown placeholders listed", in: "Hi {name}, {foo} {first_name} {name}", field: "base_template",
			wantInMessage: []string{"{name}", "{foo}"}},
		{name: "unclosed brace", in: "Hi {first_name", field: "base_template", wantInMessage: []string{"unclosed"}},
		{name: "NUL", in: "Hi\x00", field: "base_template"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			err := validateTemplate("base_template", tt.in, template.Check)
			wantField(t, err, tt.field)
			for _, s := range tt.wantInMessage {
				if !strings.Contains(err.Error(), s) {
					t.Errorf("error %q does not mention %q", err, s)
				}
			}
		})
	}
}

func TestValidateTemplateProblemDetail(t *testing.T) {
	t.Parallel()
	err := validateTemplate("override_template", "Hi {nope}", template.Check)
	var e *errs.Error
	if !errors.As(err, &e) {
		t.Fatalf("error = %v, want *errs.Error", err)
	}
	want := template.Check("Hi {nope}").Error()
	if got := e.Details["problem"]; got != want {
		t.Errorf("details.problem = %v, want %q", got, want)
	}
	if e.Details["field"] != "override_template" {
		t.Errorf("details.field = %v, want override_template", e.Details["field"])
	}
}

func TestParseSchedule(t *testing.T) {
	t.Parallel()
	now := time.Date(2025, 5, 20, 8, 0, 0, 0, time.UTC)
	tests := []struct {
		name       string
		in         *string
		wantAt     *time.Time
		wantStatus Status
		field      string
	}{
		{name: "absent is draft", in: nil, wantStatus: StatusDraft},
		{name: "future UTC", in: ptr("2025-06-01T09:30:00Z"), wantStatus: StatusScheduled,
			wantAt: ptr(time.Date(2025, 6, 1, 9, 30, 0, 0, time.UTC))},
		{name: "future offset stored as UTC", in: ptr("2025-06-01T09:30:00+02:00"), wantStatus: StatusScheduled,
			wantAt: ptr(time.Date(2025, 6, 1, 7, 30, 0, 0, time.UTC))},
		{name: "one second ahead", in: ptr("2025-05-20T08:00:01Z"), wantStatus: StatusScheduled,
			wantAt: ptr(time.Date(2025, 5, 20, 8, 0, 1, 0, time.UTC))},
		{name: "fractional seconds", in: ptr("2025-05-20T08:00:00.5Z"), wantStatus: StatusScheduled,
			wantAt: ptr(time.Date(2025, 5, 20, 8, 0, 0, 5e8, time.UTC))},
		{name: "exactly now", in: ptr("2025-05-20T08:00:00Z"), field: "scheduled_at"},
		{name: "past", in: ptr("2025-05-19T08:00:00Z"), field: "scheduled_at"},
		{name: "past by offset", in: ptr("2025-05-20T09:00:00+02:00"), field: "scheduled_at"},
		{name: "empty", in: ptr(""), field: "scheduled_at"},
		{name: "no zone", in: ptr("2025-06-01T09:30:00"), field: "scheduled_at"},
		{name: "date only", in: ptr("2025-06-01"), field: "scheduled_at"},
		{name: "words", in: ptr("tomorrow"), field: "scheduled_at"},
		{name: "month 13", in: ptr("2025-13-01T00:00:00Z"), field: "scheduled_at"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			at, status, err := parseSchedule(tt.in, now)
			wantField(t, err, tt.field)
			if diff := cmp.Diff(tt.wantAt, at); diff != "" {
				t.Errorf("time (-want +got):\n%s", diff)
			}
			if at != nil && at.Location() != time.UTC {
				t.Errorf("time %v is not UTC", at)
			}
			if status != tt.wantStatus {
				t.Errorf("status = %q, want %q", status, tt.wantStatus)
			}
		})
	}
}

func TestValidateCreate(t *testing.T) {
	t.Parallel()
	now := time.Date(2025, 5, 20, 8, 0, 0, 0, time.UTC)
	ok := CreateInput{Name: " Summer ", Channel: "sms", BaseTemplate: "Hi {first_name} "}
	tests := []struct {
		name  string
		edit  func(*CreateInput)
		want  Campaign
		field string
	}{
		{name: "draft", edit: func(*CreateInput) {},
			want: Campaign{Name: "Summer", Channel: channel.SMS, Status: StatusDraft, BaseTemplate: "Hi {first_name} "}},
		{name: "scheduled whatsapp", edit: func(in *CreateInput) {
			in.Channel = "whatsapp"
			in.ScheduledAt = ptr("2026-01-01T00:00:00Z")
		}, want: Campaign{Name: "Summer", Channel: channel.WhatsApp, Status: StatusScheduled, BaseTemplate: "Hi {first_name} ",
			ScheduledAt: ptr(time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC))}},
		{name: "missing name", edit: func(in *CreateInput) { in.Name = "" }, field: "name"},
		{name: "missing channel", edit: func(in *CreateInput) { in.Channel = "" }, field: "channel"},
		{name: "unknown channel", edit: func(in *CreateInput) { in.Channel = "email" }, field: "channel"},
		{name: "channel is case-sensitive", edit: func(in *CreateInput) { in.Channel = "SMS" }, field: "channel"},
		{name: "missing template", edit: func(in *CreateInput) { in.BaseTemplate = "" }, field: "base_template"},
		{name: "bad template", edit: func(in *CreateInput) { in.BaseTemplate = "{x}" }, field: "base_template"},
		{name: "past schedule", edit: func(in *CreateInput) { in.ScheduledAt = ptr("2020-01-01T00:00:00Z") }, field: "scheduled_at"},
		{name: "first bad field reported", edit: func(in *CreateInput) {
			in.Channel = "fax"
			in.BaseTemplate = ""
		}, field: "channel"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			in := ok
			tt.edit(&in)
			got, err := validateCreate(in, now, template.Check)
			wantField(t, err, tt.field)
			if diff := cmp.Diff(tt.want, got); diff != "" {
				t.Errorf("campaign (-want +got):\n%s", diff)
			}
		})
	}
}

func TestParseFilter(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name, channel, status string
		want                  Filter
		field                 string
	}{
		{name: "none"},
		{name: "channel", channel: "whatsapp", want: Filter{Channel: channel.WhatsApp}},
		{name: "status", status: "sent", want: Filter{Status: StatusSent}},
		{name: "both", channel: "sms", status: "failed", want: Filter{Channel: channel.SMS, Status: StatusFailed}},
		{name: "unknown channel", channel: "email", field: "channel"},
		{name: "unknown status", status: "done", field: "status"},
		{name: "status is case-sensitive", status: "Draft", field: "status"},
		{name: "both unknown names channel first", channel: "x", status: "y", field: "channel"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			got, err := parseFilter(tt.channel, tt.status)
			wantField(t, err, tt.field)
			if diff := cmp.Diff(tt.want, got); diff != "" {
				t.Errorf("filter (-want +got):\n%s", diff)
			}
		})
	}
}

func TestValidatePreview(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name         string
		in           PreviewInput
		wantID       int64
		wantOverride string
		wantOK       bool
		field        string
	}{
		{name: "base template", in: PreviewInput{CustomerID: ptr[int64](7)}, wantID: 7},
		{name: "override", in: PreviewInput{CustomerID: ptr[int64](7), OverrideTemplate: ptr("Yo {first_name}")},
			wantID: 7, wantOverride: "Yo {first_name}", wantOK: true},
		{name: "missing customer", in: PreviewInput{}, field: "customer_id"},
		{name: "zero customer", in: PreviewInput{CustomerID: ptr[int64](0)}, field: "customer_id"},
		{name: "negative customer", in: PreviewInput{CustomerID: ptr[int64](-1)}, field: "customer_id"},
		{name: "empty override", in: PreviewInput{CustomerID: ptr[int64](7), OverrideTemplate: ptr("")}, field: "override_template"},
		{name: "blank override", in: PreviewInput{CustomerID: ptr[int64](7), OverrideTemplate: ptr("  ")}, field: "override_template"},
		{name: "unknown placeholder", in: PreviewInput{CustomerID: ptr[int64](7), OverrideTemplate: ptr("{nope}")}, field: "override_template"},
		{name: "too long", in: PreviewInput{CustomerID: ptr[int64](7), OverrideTemplate: ptr(strings.Repeat("a", 4097))}, field: "override_template"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			id, override, ok, err := validatePreview(tt.in, template.Check)
			wantField(t, err, tt.field)
			if id != tt.wantID || override != tt.wantOverride || ok != tt.wantOK {
				t.Errorf("got (%d, %q, %v), want (%d, %q, %v)", id, override, ok, tt.wantID, tt.wantOverride, tt.wantOK)
			}
		})
	}
}

func TestEnumsValid(t *testing.T) {
	t.Parallel()
	for _, c := range []channel.Channel{channel.SMS, channel.WhatsApp} {
		if !c.Valid() {
			t.Errorf("%q.Valid() = false", c)
		}
	}
	for _, c := range []channel.Channel{"", "SMS", "email"} {
		if c.Valid() {
			t.Errorf("%q.Valid() = true", c)
		}
	}
	for _, s := range []Status{StatusDraft, StatusScheduled, StatusSending, StatusPaused, StatusSent, StatusFailed, StatusCancelled} {
		if !s.Valid() {
			t.Errorf("%q.Valid() = false", s)
		}
	}
	for _, s := range []Status{"", "archived", "DRAFT"} {
		if s.Valid() {
			t.Errorf("%q.Valid() = true", s)
		}
	}
}
