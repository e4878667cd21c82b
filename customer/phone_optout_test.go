package customer

import (
	"context"
	"errors"
	"testing"

	"github.com/google/go-cmp/cmp"

	"github.com/campaignd/dispatch/platform/channel"
	"github.com/campaignd/dispatch/platform/errs"
)

// TestPhoneOptOutAndBackIn opts a customer out and back in by phone, as an
// inbound STOP/START does, with the phone written as Create would accept it.
// Unknown and invalid phones change nothing and are not errors.
func TestPhoneOptOutAndBackIn(t *testing.T) {
	t.Parallel()
	v := newEnv(t, "KE", HandlerOptions{})
	ctx := context.Background()
	cust, err := v.svc.Create(ctx, Input{Phone: phone(1)})
	if err != nil {
		t.Fatal(err)
	}
	other, err := v.svc.Create(ctx, Input{Phone: phone(2)})
	if err != nil {
		t.Fatal(err)
	}

	steps := []struct {
		name  string
		optIn bool
		phone string
		ch    channel.Channel
		found bool
		want  []channel.Channel // cust's opt-outs afterwards
	}{
		{"out of sms by E.164", false, phone(1), channel.SMS, true, []channel.Channel{"sms"}},
		{"out of sms again", false, phone(1), channel.SMS, true, []channel.Channel{"sms"}},
		{"out of whatsapp by national number", false, "0700 000 001", channel.WhatsApp, true, []channel.Channel{"sms", "whatsapp"}},
		{"unknown phone", false, phone(3), channel.SMS, false, []channel.Channel{"sms", "whatsapp"}},
		{"invalid phone", false, "not a phone", channel.SMS, false, []channel.Channel{"sms", "whatsapp"}},
		{"back in to sms", true, phone(1), channel.SMS, true, []channel.Channel{"whatsapp"}},
		{"back in to sms again", true, phone(1), channel.SMS, true, []channel.Channel{"whatsapp"}},
		{"in for an unknown phone", true, phone(3), channel.WhatsApp, false, []channel.Channel{"whatsapp"}},
		{"back in to whatsapp", true, "+254 700 000001", channel.WhatsApp, true, []channel.Channel{}},
	}
	for _, st := range steps { // in order: each step starts where the last ended
		t.Run(st.name, func(t *testing.T) {
			op := v.svc.OptOutPhone
			if st.optIn {
				op = v.svc.OptInPhone
			}
			found, err := op(ctx, st.phone, st.ch)
			if err != nil || found != st.found {
				t.Fatalf("= %v, %v; want %v, nil", found, err, st.found)
			}
			if diff := cmp.Diff(st.want, v.optOutRows(t, cust.ID)); diff != "" {
				t.Errorf("opt-outs (-want +got):\n%s", diff)
			}
			if got := v.optOutRows(t, other.ID); len(got) != 0 {
				t.Errorf("the other customer's opt-outs = %v, want none", got)
			}
		})
	}

	for _, op := range []func(context.Context, string, channel.Channel) (bool, error){v.svc.OptOutPhone, v.svc.OptInPhone} {
		if _, err := op(ctx, phone(1), "email"); errs.KindOf(err) != errs.KindValidation {
			t.Errorf("invalid channel: err = %v, want a VALIDATION_ERROR", err)
		}
	}
	var e *errs.Error
	if _, err := v.svc.OptOutPhone(ctx, phone(1), ""); !errors.As(err, &e) || e.Details["field"] != "channel" {
		t.Errorf("empty channel: err = %v, want a VALIDATION_ERROR naming channel", err)
	}
}
