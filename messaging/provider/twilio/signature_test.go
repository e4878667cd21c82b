package twilio

import (
	"net/url"
	"testing"
)

// The vectors are Twilio's published examples (PROVIDERS.md §4).
func TestSignature(t *testing.T) {
	const token = "12345"
	const u = "https://mycompany.com/myapp.php?foo=1&bar=2"
	base := func() url.Values {
		return url.Values{
			"CallSid": {"CA1234567890ABCDE"}, "Caller": {"+14158675309"}, "Digits": {"1234"},
			"From": {"+14158675309"}, "To": {"+18005551212"},
		}
	}
	docs := base()
	docs.Set("Caller", "+12349013030")
	docs.Set("From", "+12349013030")
	more := base()
	more.Set("Reason", "Participant")
	more.Set("ReasonConferenceEnded", "test")
	tests := []struct {
		name   string
		params url.Values
		want   string
	}{
		{"twilio-php", base(), "RSOYDt4T1cUTdK1PDd93/VVr8B8="},
		{"docs example", docs, "0/KCTR6DLpKmkAf8muzZqo1nDgQ="},
		{"twilio-go", more, "vOEb5UThFn24KEfnOFLQY2AE5FY="},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := Signature(token, u, tt.params); got != tt.want {
				t.Fatalf("Signature = %q, want %q", got, tt.want)
			}
			if !ValidSignature(token, u, tt.params, tt.want) {
				t.Fatal("ValidSignature rejected the published signature")
			}
			changed := url.Values{}
			for k, v := range tt.params {
				changed[k] = append([]string(nil), v...)
			}
			changed.Set("Digits", "1235")
			if ValidSignature(token, u, changed, tt.want) {
				t.Fatal("ValidSignature accepted a changed parameter")
			}
			if ValidSignature("54321", u, tt.params, tt.want) {
				t.Fatal("ValidSignature accepted another token")
			}
		})
	}
}

func TestValidSignatureDefaultPort(t *testing.T) {
	p := url.Values{"A": {"1"}}
	sig := Signature("tok", "https://example.com:443/hook", p)
	if !ValidSignature("tok", "https://example.com/hook", p, sig) {
		t.Fatal("signature over the URL with :443 not accepted for the URL without it")
	}
	if ValidSignature("tok", "https://example.com/hook", p, "") {
		t.Fatal("empty signature accepted")
	}
}
