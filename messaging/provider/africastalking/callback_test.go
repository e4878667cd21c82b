package africastalking

import (
	"errors"
	"net/url"
	"testing"

	"github.com/google/go-cmp/cmp"

	"github.com/campaignd/dispatch/messaging/provider"
	"github.com/campaignd/dispatch/platform/channel"
)

func TestParseDelivery(t *testing.T) {
	t.Parallel()
	report := func(status, reason string) url.Values {
		v := url.Values{
			"id": {"ATXid_abc123"}, "status": {status}, "phoneNumber": {"+254711000111"},
			"networkCode": {"63902"}, "retryCount": {"0"},
		}
		if reason != "" {
			v.Set("failureReason", reason)
		}
		return v
	}
	receipt := func(status provider.ReceiptStatus, word, reason string, optOut bool) provider.Receipt {
		return provider.Receipt{Provider: Name, MessageID: "ATXid_abc123", Status: status, ProviderStatus: word, Error: reason, OptOut: optOut}
	}
	tests := []struct {
		name string
		form url.Values
		want provider.Receipt
	}{
		{"success", report("Success", ""), receipt(provider.Delivered, "Success", "", false)},
		{"rejected", report("Rejected", "UserDoesNotExist"), receipt(provider.Undelivered, "Rejected", "UserDoesNotExist", false)},
		{"failed", report("Failed", "DeliveryFailure"), receipt(provider.Undelivered, "Failed", "DeliveryFailure", false)},
		{"failed without reason", report("Failed", ""), receipt(provider.Undelivered, "Failed", "", false)},
		{"absent subscriber", report("AbsentSubscriber", ""), receipt(provider.Undelivered, "AbsentSubscriber", "", false)},
		{"expired", report("Expired", ""), receipt(provider.Undelivered, "Expired", "", false)},
		{"blacklisted", report("Rejected", "UserInBlackList"), receipt(provider.Undelivered, "Rejected", "UserInBlackList", true)},
		{"do not disturb", report("Failed", "DoNotDisturbRejection"), receipt(provider.Undelivered, "Failed", "DoNotDisturbRejection", true)},
		{"not subscribed", report("Rejected", "UserNotSubscribedToProduct"), receipt(provider.Undelivered, "Rejected", "UserNotSubscribedToProduct", true)},
		{"sent", report("Sent", ""), receipt("", "Sent", "", false)},
		{"submitted", report("Submitted", ""), receipt("", "Submitted", "", false)},
		{"buffered", report("Buffered", ""), receipt("", "Buffered", "", false)},
		{"unknown word", report("Teleported", ""), receipt("", "Teleported", "", false)},
		{"minimal", url.Values{"id": {"ATXid_abc123"}, "status": {"Success"}}, receipt(provider.Delivered, "Success", "", false)},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			got, err := ParseDelivery(tt.form)
			if err != nil {
				t.Fatalf("ParseDelivery: %v", err)
			}
			if diff := cmp.Diff(tt.want, got); diff != "" {
				t.Errorf("receipt (-want +got):\n%s", diff)
			}
		})
	}
}

func TestParseDeliveryInvalid(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name string
		form url.Values
	}{
		{"empty", url.Values{}},
		{"no id", url.Values{"status": {"Success"}}},
		{"blank id", url.Values{"id": {" "}, "status": {"Success"}}},
		{"no status", url.Values{"id": {"ATXid_abc123"}}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			if _, err := ParseDelivery(tt.form); !errors.Is(err, ErrInvalidCallback) {
				t.Errorf("err = %v, want ErrInvalidCallback", err)
			}
		})
	}
}

func TestParseInbound(t *testing.T) {
	t.Parallel()
	form := func(from string) url.Values {
		return url.Values{"from": {from}, "to": {"40404"}, "text": {"STOP please"}, "date": {"2026-03-01 12:00:00"}, "id": {"in_1"}}
	}
	inbound := func(from string) provider.Inbound {
		return provider.Inbound{Provider: Name, Channel: channel.SMS, From: from, Body: "STOP please"}
	}
	tests := []struct {
		name string
		form url.Values
		want provider.Inbound
	}{
		{"e164", form("+254711000111"), inbound("+254711000111")},
		{"digits only", form("254711000111"), inbound("+254711000111")},
		{"space-padded", form(" 254711000111 "), inbound("+254711000111")},
		{"alphanumeric kept", form("SAFARICOM"), inbound("SAFARICOM")},
		{"empty text", url.Values{"from": {"+254711000111"}}, provider.Inbound{Provider: Name, Channel: channel.SMS, From: "+254711000111"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			got, err := ParseInbound(tt.form)
			if err != nil {
				t.Fatalf("ParseInbound: %v", err)
			}
			if diff := cmp.Diff(tt.want, got); diff != "" {
				t.Errorf("inbound (-want +got):\n%s", diff)
			}
		})
	}
	t.Run("no from", func(t *testing.T) {
		t.Parallel()
		if _, err := ParseInbound(url.Values{"text": {"hi"}}); !errors.Is(err, ErrInvalidCallback) {
			t.Errorf("err = %v, want ErrInvalidCallback", err)
		}
	})
}
