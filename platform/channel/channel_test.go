package channel

import (
	"errors"
	"fmt"
	"strings"
	"testing"

	"github.com/campaignd/dispatch/platform/errs"
)

func TestChannelValid(t *testing.T) {
	t.Parallel()
	tests := []struct {
		ch   Channel
		want bool
	}{
		{"sms", true},
		{"whatsapp", true},
		{"", false},
		{"SMS", false},
		{"WhatsApp", false},
		{" sms", false},
		{"sms ", false},
		{"email", false},
		{"sms,whatsapp", false},
	}
	for _, tt := range tests {
		t.Run(fmt.Sprintf("%q", tt.ch), func(t *testing.T) {
			if got := tt.ch.Valid(); got != tt.want {
				t.Errorf("Channel(%q).Valid() = %v, want %v", tt.ch, got, tt.want)
			}
			got, err := Parse("channel", string(tt.ch))
			if tt.want {
				if err != nil || got != tt.ch {
					t.Errorf("Parse() = %v, want nil", err)
				}
				return
			}
			var e *errs.Error
			if !errors.As(err, &e) || e.Code != errs.CodeValidation || e.Details["field"] != "channel" ||
				!strings.Contains(e.Message, "channel") {
				t.Errorf("Parse() = %#v, want a VALIDATION_ERROR naming channel", err)
			}
		})
	}
}
