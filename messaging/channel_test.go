package messaging

import (
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"

	"github.com/campaignd/dispatch/messaging/template"
	"github.com/campaignd/dispatch/platform/channel"
	"github.com/campaignd/dispatch/platform/postgres/pgtest"
)

// TestLimitsRender checks the one render used by the preview and the
// workers against each channel's limit: a 4,080-character template once
// rendered to 68,000 characters and went out as one SMS.
func TestLimitsRender(t *testing.T) {
	t.Parallel()
	long := template.Fields{FirstName: strings.Repeat("é", 400)} // 400 characters, 800 bytes
	tests := []struct {
		name    string
		limits  Limits
		ch      channel.Channel
		tmpl    string
		chars   int // rendered length
		tooLong string
	}{
		{name: "sms at its default limit", ch: channel.SMS, tmpl: strings.Repeat("{first_name}", 4), chars: 1600},
		{name: "sms over its default limit", ch: channel.SMS, tmpl: strings.Repeat("{first_name}", 4) + "!", chars: 1601,
			tooLong: "rendered message is 1,601 characters; sms allows 1,600"},
		{name: "the same text fits whatsapp", ch: channel.WhatsApp, tmpl: strings.Repeat("{first_name}", 4) + "!", chars: 1601},
		{name: "whatsapp over its default limit", ch: channel.WhatsApp, tmpl: strings.Repeat("{first_name}", 170), chars: 68_000,
			tooLong: "rendered message is 68,000 characters; whatsapp allows 4,096"},
		{name: "configured limit", limits: Limits{SMS: 100}, ch: channel.SMS, tmpl: "{first_name}", chars: 400,
			tooLong: "rendered message is 400 characters; sms allows 100"},
		{name: "characters, not bytes", limits: Limits{SMS: 400}, ch: channel.SMS, tmpl: "{first_name}", chars: 400},
		{name: "unknown channel has no limit", ch: "pigeon", tmpl: strings.Repeat("{first_name}", 170), chars: 68_000},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			got, err := tt.limits.Render(tt.ch, tt.tmpl, long)
			if n := len([]rune(got)); n != tt.chars {
				t.Errorf("rendered %d characters, want %d (the text is returned even when too long)", n, tt.chars)
			}
			if tt.tooLong == "" {
				if err != nil {
					t.Errorf("err = %v, want nil", err)
				}
				return
			}
			var long *TooLongError
			if !errors.As(err, &long) || err.Error() != tt.tooLong {
				t.Fatalf("err = %v, want *TooLongError %q", err, tt.tooLong)
			}
		})
	}

	// An invalid template is still Render's error, with no text.
	var te *template.Error
	if got, err := (Limits{}).Render(channel.SMS, "Hi {name}", long); !errors.As(err, &te) || got != "" {
		t.Errorf("invalid template = %q, %v; want \"\", *template.Error", got, err)
	}
}

// TestTemplatesAdapterWarns checks what the preview gets: the text and a
// warning instead of an error when the message is too long to deliver.
func TestTemplatesAdapterWarns(t *testing.T) {
	t.Parallel()
	tp := Templates{Limits: Limits{SMS: 5}}
	got, warnings, err := tp.Render("sms", "Hi {first_name}", template.Fields{FirstName: "Alice"})
	if err != nil || got != "Hi Alice" {
		t.Fatalf("Render = %q, %v; want the text and no error", got, err)
	}
	if diff := cmp.Diff([]string{"rendered message is 8 characters; sms allows 5"}, warnings); diff != "" {
		t.Errorf("warnings (-want +got):\n%s", diff)
	}
}

func TestThousands(t *testing.T) {
	t.Parallel()
	for n, want := range map[int]string{0: "0", 999: "999", 1000: "1,000", 68000: "68,000", 1234567: "1,234,567", -1600: "-1,600"} {
		if got := thousands(n); got != want {
			t.Errorf("thousands(%d) = %q, want %q", n, got, want)
		}
	}
}

// TestPoolFailsTooLongMessage delivers an SMS whose rendered text is over
// the channel's limit: it fails for good after one attempt, with the reason
// as its last error, and the provider never sees it. A message that fits
// goes out as usual.
func TestPoolFailsTooLongMessage(t *testing.T) {
	t.Parallel()
	db := pgtest.New(t)
	_, ids := fixture(t, db.DB, strings.Repeat("{first_name}", 17)+"!",
		[2]string{strings.Repeat("x", 100), ""}, // 1,701 characters
		[2]string{"Al", ""},                     // 35 characters
	)
	s := newFakeSender()
	q := newMemQueue(ids...)
	startPool(t, q, db.DB, s, 3)
	waitFor(t, "all messages final", 10*time.Second, allFinal(t, db.DB, ids))

	got := messages(t, db.DB, ids)
	long := got[ids[0]]
	want := "permanent: rendered message is 1,701 characters; sms allows 1,600"
	if long.Status != StatusFailed || long.RetryCount != 1 || long.LastError == nil || *long.LastError != want ||
		long.RenderedContent != nil || s.callsFor(ids[0]) != 0 {
		t.Errorf("too long: status=%s retries=%d last_error=%v content set=%v calls=%d; want failed after 1 attempt with %q, never sent",
			long.Status, long.RetryCount, deref(long.LastError), long.RenderedContent != nil, s.callsFor(ids[0]), want)
	}
	if short := got[ids[1]]; short.Status != StatusSent || s.callsFor(ids[1]) != 1 {
		t.Errorf("short: status=%s calls=%d; want sent once", short.Status, s.callsFor(ids[1]))
	}
	if _, dead, _, _ := q.snapshot(); !cmp.Equal(dead, []int64{ids[0]}) {
		t.Errorf("dead letters = %v, want %v", dead, ids[:1])
	}
}

func deref(s *string) string {
	if s == nil {
		return "<nil>"
	}
	return *s
}

func TestTemplatesAdapter(t *testing.T) {
	t.Parallel()
	var tp Templates
	got, warnings, err := tp.Render("sms", "Hi {first_name}", template.Fields{FirstName: "Alice"})
	if err != nil || got != "Hi Alice" || warnings != nil {
		t.Errorf("Templates.Render = %q, %q, %v; want %q, nil, nil", got, warnings, err, "Hi Alice")
	}
	if err := tp.Check("Hi {first_name}"); err != nil {
		t.Errorf("Templates.Check(valid) = %v, want nil", err)
	}
	var te *template.Error
	if err := tp.Check("Hi {name}"); !errors.As(err, &te) {
		t.Errorf("Templates.Check(invalid) = %v, want *template.Error", err)
	}
}
