package twilio

import (
	"net/url"
	"testing"

	"github.com/google/go-cmp/cmp"

	"github.com/campaignd/dispatch/messaging/provider"
	"github.com/campaignd/dispatch/platform/channel"
)

func TestParseStatus(t *testing.T) {
	t.Parallel()
	// callback is a status callback as Twilio posts it, with extras we
	// ignore.
	callback := func(status, errorCode string) url.Values {
		v := url.Values{
			"MessageSid": {"SM1"}, "MessageStatus": {status}, "SmsSid": {"SM1"}, "SmsStatus": {status},
			"AccountSid": {testSID}, "From": {"+15017122661"}, "To": {"+254712000001"}, "ApiVersion": {"2010-04-01"},
		}
		if errorCode != "" {
			v.Set("ErrorCode", errorCode)
		}
		return v
	}
	receipt := func(status provider.ReceiptStatus, word, errorCode string, optOut bool) provider.Receipt {
		return provider.Receipt{Provider: "twilio", MessageID: "SM1", Status: status, ProviderStatus: word, Error: errorCode, OptOut: optOut}
	}
	tests := []struct {
		name    string
		form    url.Values
		want    provider.Receipt
		wantErr bool
	}{
		{"delivered", callback("delivered", ""), receipt(provider.Delivered, "delivered", "", false), false},
		{"read", callback("read", ""), receipt(provider.Delivered, "read", "", false), false},
		{"undelivered", callback("undelivered", "30003"), receipt(provider.Undelivered, "undelivered", "30003", false), false},
		{"failed", callback("failed", "30007"), receipt(provider.Undelivered, "failed", "30007", false), false},
		{"failed without a code", callback("failed", ""), receipt(provider.Undelivered, "failed", "", false), false},
		{"failed, recipient sent STOP", callback("failed", "21610"), receipt(provider.Undelivered, "failed", "21610", true), false},
		{"queued", callback("queued", ""), receipt("", "queued", "", false), false},
		{"accepted", callback("accepted", ""), receipt("", "accepted", "", false), false},
		{"scheduled", callback("scheduled", ""), receipt("", "scheduled", "", false), false},
		{"sending", callback("sending", ""), receipt("", "sending", "", false), false},
		{"sent", callback("sent", ""), receipt("", "sent", "", false), false},
		{"canceled", callback("canceled", ""), receipt("", "canceled", "", false), false},
		{"partially_delivered", callback("partially_delivered", ""), receipt("", "partially_delivered", "", false), false},
		{"legacy names only", url.Values{"SmsSid": {"SM1"}, "SmsStatus": {"delivered"}}, receipt(provider.Delivered, "delivered", "", false), false},
		{"new names win", url.Values{"MessageSid": {"SM1"}, "SmsSid": {"SMold"}, "MessageStatus": {"undelivered"}, "SmsStatus": {"sent"}, "ErrorCode": {"30005"}},
			receipt(provider.Undelivered, "undelivered", "30005", false), false},
		{"no sid", url.Values{"MessageStatus": {"delivered"}}, provider.Receipt{}, true},
		{"no status", url.Values{"MessageSid": {"SM1"}}, provider.Receipt{}, true},
		{"empty", url.Values{}, provider.Receipt{}, true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			got, err := ParseStatus(tt.form)
			if (err != nil) != tt.wantErr {
				t.Fatalf("ParseStatus error = %v, want error %v", err, tt.wantErr)
			}
			if diff := cmp.Diff(tt.want, got); diff != "" {
				t.Errorf("Receipt (-want +got):\n%s", diff)
			}
		})
	}
}

func TestParseInbound(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name    string
		form    url.Values
		want    provider.Inbound
		wantErr bool
	}{
		{
			name: "sms",
			form: url.Values{"MessageSid": {"SM1"}, "From": {"+254712000001"}, "To": {"+15017122661"}, "Body": {"STOP"}, "NumMedia": {"0"}},
			want: provider.Inbound{Provider: "twilio", Channel: channel.SMS, From: "+254712000001", Body: "STOP"},
		},
		{
			name: "whatsapp",
			form: url.Values{"From": {"whatsapp:+254712000001"}, "To": {"whatsapp:+14155238886"}, "Body": {"Habari"}, "ProfileName": {"Ana"}, "WaId": {"254712000001"}},
			want: provider.Inbound{Provider: "twilio", Channel: channel.WhatsApp, From: "+254712000001", Body: "Habari"},
		},
		{
			name: "media only, no body",
			form: url.Values{"From": {"+254712000001"}, "NumMedia": {"1"}, "MediaUrl0": {"https://api.twilio.com/x"}},
			want: provider.Inbound{Provider: "twilio", Channel: channel.SMS, From: "+254712000001"},
		},
		{name: "no from", form: url.Values{"Body": {"hi"}}, wantErr: true},
		{name: "whatsapp prefix alone", form: url.Values{"From": {"whatsapp:"}, "Body": {"hi"}}, wantErr: true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			got, err := ParseInbound(tt.form)
			if (err != nil) != tt.wantErr {
				t.Fatalf("ParseInbound error = %v, want error %v", err, tt.wantErr)
			}
			if diff := cmp.Diff(tt.want, got); diff != "" {
				t.Errorf("Inbound (-want +got):\n%s", diff)
			}
		})
	}
}
